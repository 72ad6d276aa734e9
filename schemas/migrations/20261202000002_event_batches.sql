-- The processor writes a batch's ledger events as one outbox row
-- (event_type 'events.batch', key 'ledger', the events as a JSON array of
-- {key, type, event}) instead of one row per event; the relay publishes
-- each event as a Kafka message of its own. Rows of one event (written
-- before, and by tests and tools) keep working as they did.

-- Upgrade order: relays first (a relay from before this migration would
-- publish a batch row as one message keyed 'ledger'), then processors.

set local lock_timeout = '10s';

-- A batch row is a few hundred kilobytes, stored out of line (TOAST).
-- pglz took 8-11 ms to compress one of 1,000 events on the benchmark
-- machine, lz4 3-4 ms (as fast as storing it uncompressed, and a fifth of
-- the bytes). Servers built without lz4 keep the default.
do $$
begin
    alter table outbox alter column payload set compression lz4;
exception when feature_not_supported then
    raise notice 'lz4 is not available on this server: outbox payloads stay pglz-compressed';
end
$$;

-- Every ledger event, one row per event whether it was written alone or in
-- a batch, with its id as the relay publishes it (`ledgerline-event-id`):
-- the row's id, or `<row id>.<event_index>` inside a batch (from 0). For operators
-- looking for an event, the relay's webhook fan-out and the tests.
create view outbox_events as
select event.id as outbox_id,
       event.id::text as event_id,
       0::bigint as event_index,
       event.event_type,
       event.message_key,
       event.payload,
       event.created_at,
       event.delivered_at,
       event.dead_at
from outbox event
where event.destination = 'events' and event.event_type <> 'events.batch'
union all
select batch.id,
       batch.id::text || '.' || (element.ordinality - 1)::text,
       element.ordinality - 1,
       element.value ->> 'type',
       element.value ->> 'key',
       element.value -> 'event',
       batch.created_at,
       batch.delivered_at,
       batch.dead_at
from outbox batch
cross join lateral json_array_elements(batch.payload) with ordinality as element (value, ordinality)
where batch.destination = 'events' and batch.event_type = 'events.batch';
