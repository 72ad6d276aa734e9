-- Commands the processor sent to the dead-letter topic, as far as they could
-- be identified (a `transfer_id` or `command_id` in the payload), so that
-- the status a client reads is "dead-lettered, with this reason" rather than
-- "accepted" forever. A dead-lettered command is not decided: if a replay
-- after a fix applies it, its `transfers` or `account_commands` row is the
-- answer from then on.
create table dead_lettered_commands (
    command_id uuid primary key,
    command_type text,
    account_id uuid,
    reason text not null,
    detail text not null,
    kafka_topic text not null,
    kafka_partition integer not null,
    kafka_offset bigint not null,
    dead_lettered_at timestamptz not null default now()
);
