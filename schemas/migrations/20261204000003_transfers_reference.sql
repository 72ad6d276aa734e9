-- no-transaction
-- Transfers searched by their bank reference (few rows carry one).
create index concurrently if not exists transfers_reference on transfers (reference) where reference is not null;
