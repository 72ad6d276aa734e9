-- no-transaction
-- A balance as of an instant and a statement's lines are an index seek and
-- a range of one account's entries by time; the rolling 24-hour spending
-- limit sums one account's debits of the last day the same way. Built
-- concurrently (the processor writes meanwhile), one statement per file: a
-- file of several runs as one implicit transaction.
create index concurrently if not exists entries_account_time on entries (account_id, created_at, id);
