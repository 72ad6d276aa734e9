-- no-transaction
-- The dashboard overview's rates, latencies and chart read the transfers
-- decided in the last minutes. A BRIN index on the decision time costs the
-- batch writer almost nothing (one summary per 128 pages, rows arrive in
-- time order) and turns "the last 15 minutes" into a scan of the last
-- pages. Built concurrently: the processor writes transfers meanwhile.
create index concurrently if not exists transfers_decided_brin on transfers using brin (decided_at);
