-- An endpoint that has been failing without a success for a long time (by
-- default three days) is disabled when another of its webhooks dies: its
-- backlog would otherwise grow without end (each row waits out its retries
-- behind the previous one). `failing_since` is set by the first failure the
-- endpoint causes (not the relay's own: a missing key, a bad payload) and
-- cleared by the next delivery. The client sees the endpoint disabled, with
-- the reason, and registers it again once it works.
alter table webhook_endpoints add column last_delivered_at timestamptz;
alter table webhook_endpoints add column failing_since timestamptz;
alter table webhook_endpoints add column disabled_reason text
    check (disabled_reason in ('removed', 'failing'));
update webhook_endpoints set disabled_reason = 'removed' where disabled_at is not null;
