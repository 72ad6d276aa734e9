-- no-transaction
-- An endpoint's pending webhook rows in id order: its first (is it waiting
-- out a backoff?) and its last (what a new row inherits). See the previous
-- migration.
create index concurrently if not exists outbox_webhooks_endpoint
    on outbox (message_key, id)
    where destination = 'webhooks' and delivered_at is null and dead_at is null;
