-- no-transaction
-- Pruning finds delivered rows past their retention by delivery time,
-- without reading the rest of the table. The processor's inserts (pending
-- rows) never enter this index.
create index concurrently if not exists outbox_delivered on outbox (delivered_at) where delivered_at is not null;
