-- Webhook rows wait per endpoint, not per lane: a failing endpoint holds
-- back its own later rows only, not those of the other endpoints that hash
-- to its lane. A failure pushes the endpoint's later rows' next attempt to
-- its own, so waiting rows are simply not due; these indexes find a lane's
-- due webhook rows, and check that no earlier row of the same endpoint is
-- still waiting, without walking the waiting ones.
create index outbox_webhooks_due on outbox (lane, (coalesce(next_attempt_at, '-infinity'::timestamptz)))
    where destination = 'webhooks' and delivered_at is null and dead_at is null;
create index outbox_webhooks_endpoint on outbox (message_key, id)
    where destination = 'webhooks' and delivered_at is null and dead_at is null;
