-- What a batch of 2,000 transfers writes, made cheaper where it buys nothing.
-- Measured on the benchmark machine with EXPLAIN ANALYZE and per-statement
-- timings of the processor.

-- The per-account indexes on transfers cost about a third of the insert into
-- transfers (43 ms with them, 10 ms without) and serve no query: an
-- account's history is read from its entries (entries_account), which join
-- their transfer by primary key.
drop index transfers_source;
drop index transfers_destination;

-- The foreign-key triggers on entries cost more than the insert itself
-- (4,000 entries: 26 ms to insert, 42 ms in RI triggers). Entries are
-- written only by the processor, in the transaction that writes their
-- transfer and under the lock of their account; `ledgerctl verify` checks
-- that every entry's transfer and account exist.
alter table entries drop constraint entries_transfer_id_fkey;
alter table entries drop constraint entries_account_id_fkey;

-- The outbox is a queue of documents to forward, never queried by content
-- on the hot path: json (validated text) is cheaper to write than jsonb
-- (decomposed), and keeps each event byte for byte as the processor wrote it.
alter table outbox alter column payload type json using payload::json;

-- Every batch rewrites the balance of each account it touches. With room
-- left on each page, Postgres updates the row in place (a HOT update: no new
-- index entries, no index bloat), since no indexed column changes.
alter table accounts set (fillfactor = 70);
