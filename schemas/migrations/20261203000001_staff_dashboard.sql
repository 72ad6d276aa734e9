-- The staff dashboard (/admin): its sign-in sessions, and what the
-- processors store for its overview. (Its indexes on the hot tables are
-- built concurrently, in the migrations after this one.)

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
