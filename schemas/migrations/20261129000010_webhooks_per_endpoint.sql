-- no-transaction
-- Webhook rows wait per endpoint, not per lane: a failing endpoint holds
-- back its own later rows only, not those of the other endpoints that hash
-- to its lane. A failure pushes the endpoint's later rows' next attempt to
-- its own, so waiting rows are not due. This index finds a lane's due
-- webhook rows without reading the waiting ones; the next one finds an
-- endpoint's first and last pending rows. Built concurrently: the outbox
-- takes the processor's inserts meanwhile (one statement per file, since
-- CONCURRENTLY cannot share a transaction).
create index concurrently if not exists outbox_webhooks_due
    on outbox (lane, (coalesce(next_attempt_at, '-infinity'::timestamptz)))
    where destination = 'webhooks' and delivered_at is null and dead_at is null;
