-- no-transaction
-- A transfer's detail page (dashboard) finds the outbox rows its batch
-- wrote (same transaction, so the same `created_at` as the transfer's
-- `decided_at`) and the webhook rows fanned out after: a time-range read.
-- A few rows per batch, so the index costs the batch writer next to
-- nothing. Built concurrently: the processor and the relay write meanwhile.
create index concurrently if not exists outbox_created on outbox (created_at);
