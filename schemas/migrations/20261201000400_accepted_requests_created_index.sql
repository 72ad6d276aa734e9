-- no-transaction
-- Retention (ingest's pruning task, LEDGERLINE_ACCEPTED_REQUESTS_RETENTION_S)
-- finds recorded requests past their retention by creation time, a batch
-- at a time, without reading the rest of the table. Requests arrive in
-- time order, so the index grows at its right edge: cheap to maintain on
-- the request path. Built concurrently: ingest keeps recording requests
-- meanwhile (one statement per file, since CONCURRENTLY cannot share a
-- transaction).
create index concurrently if not exists accepted_requests_created on accepted_requests (created_at);
