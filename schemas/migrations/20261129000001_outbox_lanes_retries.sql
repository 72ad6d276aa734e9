-- The outbox relay at production strength: ordered lanes, retries with
-- backoff, dead rows, and a wake-up on insert.

-- A lane groups the rows of many message keys (accounts); the rows of one
-- key for one destination always share a lane, and destinations hash apart,
-- so a payment provider that is down does not hold back Kafka events. One relay at a time works a lane (a transaction
-- advisory lock), in id order, and a failing row holds back the rest of its
-- lane: that is how the events of one account stay ordered while several
-- relays run side by side. 64 lanes bound the parallelism; changing the
-- count needs a drained outbox, since rows would change lanes.
alter table outbox
    add column lane smallint not null generated always as (((hashtext(destination || ':' || message_key) % 64) + 64) % 64) stored,
    -- Null: due now. Set after a failed attempt, with backoff and jitter.
    add column next_attempt_at timestamptz,
    -- Set after attempts_max failures: the row leaves its lane for an
    -- operator to inspect and retry (`ledgerctl outbox retry`).
    add column dead_at timestamptz,
    -- A stable reason for the last failure, for metrics by destination and
    -- reason; last_error keeps the full text.
    add column last_error_code text;

drop index outbox_pending;
-- The relay reads the head of every lane, then a lane's rows in id order.
create index outbox_pending on outbox (lane, id) where delivered_at is null and dead_at is null;
create index outbox_dead on outbox (id) where dead_at is not null and delivered_at is null;

-- Relays LISTEN on this channel and poll only as a fallback. One
-- notification per inserting statement (the processor inserts a batch's
-- events in one statement), delivered at commit.
create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('ledgerline_outbox', '');
    return null;
end
$$;

create trigger outbox_notify after insert on outbox for each statement execute function outbox_notify();
