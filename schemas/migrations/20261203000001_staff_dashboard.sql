-- The staff dashboard (/admin): its sign-in sessions, and the indexes its
-- overview reads every second.

-- A staff member's browser session. The cookie holds a random token; only
-- its SHA-256 is stored. A session ends on logout, after `idle` without a
-- request, after `absolute` since sign-in (both enforced by ingest), or when
-- the user's session epoch moves (frozen, password changed).
create table staff_sessions (
    id uuid primary key,
    token_hash bytea not null unique,
    user_id uuid not null references users (id),
    -- Sent back in every state-changing form (CSRF).
    csrf_token text not null,
    session_epoch integer not null,
    created_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    ended_at timestamptz
);

create index staff_sessions_user on staff_sessions (user_id);
create index staff_sessions_created on staff_sessions (created_at);

-- The overview's rates, latencies and chart read the transfers decided in
-- the last minutes. A BRIN index on the decision time costs the batch
-- writer almost nothing (one summary per 128 pages, rows arrive in time
-- order) and turns "the last 15 minutes" into a scan of the last pages.
create index transfers_decided_brin on transfers using brin (decided_at);

-- Payouts waiting for the provider's outcome: few at any time.
create index transfers_payouts_in_flight on transfers (requested_at) where kind = 'payout' and status = 'held';

-- What the processors' partition monitors saw last, for the dashboard
-- (which reads only Postgres): each partition's lag and whether it is
-- stopped, and each processor instance's recent commit latency. Written
-- every monitor round (seconds apart), never on the batch path.
create table processor_partitions (
    topic text not null,
    partition integer not null check (partition >= 0),
    lag bigint not null check (lag >= 0),
    stopped boolean not null,
    observed_at timestamptz not null default now(),
    primary key (topic, partition)
);

create table processor_instances (
    id uuid primary key,
    consumer_group text not null,
    started_at timestamptz not null,
    -- Over the instance's most recent batches; null before its first.
    commit_p50_us bigint,
    commit_p99_us bigint,
    batches_total bigint not null,
    commands_total bigint not null,
    observed_at timestamptz not null default now()
);

-- A transfer's detail page finds the outbox rows its batch wrote (same
-- transaction, so the same `created_at` as the transfer's `decided_at`) and
-- the webhook rows fanned out after: a time-range read. A few rows per
-- batch, so the index costs the batch writer next to nothing.
create index outbox_created on outbox (created_at);
