-- no-transaction
-- Rows of events and notifications keep their order per message key, not
-- per lane (issue #10, defect 12): a failing row holds back the later rows
-- of its own key only. A claim finds a key's first pending row (is it
-- waiting out a backoff, or leased to a relay?) through this index. Built
-- concurrently: the outbox takes the processor's inserts meanwhile.
create index concurrently if not exists outbox_key_order
    on outbox (destination, message_key, id)
    where delivered_at is null and dead_at is null;
