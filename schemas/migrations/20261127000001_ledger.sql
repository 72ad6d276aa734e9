-- The ledger: API clients, accounts, transfers, their double-entry lines,
-- the transactional outbox, and the processor's Kafka offsets.
--
-- Money columns are numeric(38, 4): exact, and wide enough for every sum of
-- amounts bounded by schemas::Amount::MAX_UNITS. No currency we support has
-- more than 3 minor-unit digits.

-- Upstream applications (the mobile banking backend, payroll, partners).
-- They authenticate with the OAuth2 client-credentials grant.
create table api_clients (
    id uuid primary key,
    name text not null check (length(name) between 1 and 200),
    -- argon2id PHC string; the secret itself is shown once and never stored.
    secret_hash text not null,
    scopes text[] not null,
    created_at timestamptz not null default now(),
    disabled_at timestamptz
);

create table accounts (
    id uuid primary key,
    currency char(3) not null,
    -- System accounts (cash-in, clearing, fees) balance deposits and
    -- external payments; they may go negative by design.
    kind text not null check (kind in ('customer', 'system')),
    system_role text check ((kind = 'system') = (system_role is not null)),
    status text not null default 'active' check (status in ('active', 'frozen', 'closed')),
    balance numeric(38, 4) not null default 0,
    held numeric(38, 4) not null default 0 check (held >= 0),
    overdraft_limit numeric(38, 4) not null default 0 check (overdraft_limit >= 0),
    owner_client_id uuid references api_clients (id),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    -- The last line of defence against an overdraft: the processor checks
    -- first and records a rejection, so this should never fire.
    constraint accounts_within_limit check (
        kind = 'system' or balance - held + overdraft_limit >= 0
    )
);

create unique index accounts_one_system_role_per_currency
    on accounts (system_role, currency) where kind = 'system';
create index accounts_owner on accounts (owner_client_id) where owner_client_id is not null;

-- One system cash-in account per supported currency, with fixed ids so that
-- every environment agrees on them: 00000000-0000-0000-0001-<currency as hex>.
insert into accounts (id, currency, kind, system_role)
select ('00000000-0000-0000-0001-' || lpad(encode(convert_to(code, 'UTF8'), 'hex'), 12, '0'))::uuid,
       code, 'system', 'cash_in'
from unnest(array['EUR', 'USD', 'GBP', 'CHF', 'JPY', 'SEK', 'NOK', 'DKK', 'PLN', 'KWD']) as code;

-- Every command the processor has decided, applied or rejected. The primary
-- key makes a redelivered command a no-op.
create table transfers (
    id uuid primary key,
    kind text not null check (kind in ('transfer', 'deposit')),
    -- No foreign keys on the accounts: a rejection for an unknown account is
    -- recorded too.
    source_account_id uuid not null,
    destination_account_id uuid not null,
    amount numeric(38, 4) not null check (amount > 0),
    currency char(3) not null,
    status text not null check (status in ('completed', 'rejected')),
    rejection_reason text check ((status = 'rejected') = (rejection_reason is not null)),
    requested_at timestamptz not null,
    decided_at timestamptz not null default now(),
    -- Where the command came from, to trace it back to the log.
    kafka_topic text not null,
    kafka_partition integer not null,
    kafka_offset bigint not null
);

create index transfers_source on transfers (source_account_id, decided_at);
create index transfers_destination on transfers (destination_account_id, decided_at);

-- Double entry: every completed transfer has entries summing to zero per
-- currency. A negative amount is a debit, a positive one a credit.
create table entries (
    id bigint generated always as identity primary key,
    transfer_id uuid not null references transfers (id),
    account_id uuid not null references accounts (id),
    amount numeric(38, 4) not null check (amount <> 0),
    currency char(3) not null,
    -- The account's balance right after this entry, for statements.
    balance_after numeric(38, 4) not null,
    created_at timestamptz not null default now()
);

create index entries_account on entries (account_id, id);
create index entries_transfer on entries (transfer_id);

-- The transactional outbox: written in the same transaction as the ledger
-- change it reports, delivered afterwards by the outbox relay.
create table outbox (
    id bigint generated always as identity primary key,
    -- Where the row goes: 'events' is the ledger.events topic.
    destination text not null check (destination in ('events')),
    event_type text not null,
    message_key text not null,
    payload jsonb not null,
    created_at timestamptz not null default now(),
    delivered_at timestamptz,
    attempts integer not null default 0,
    last_error text
);

create index outbox_pending on outbox (id) where delivered_at is null;

-- The processor's position in each partition: the offset of the next message
-- to apply, stored in the same transaction as the ledger change. Keyed by
-- the Kafka cluster id, because a new cluster starts with empty topics.
create table consumer_offsets (
    cluster_id text not null,
    consumer_group text not null,
    topic text not null,
    partition integer not null check (partition >= 0),
    next_offset bigint not null check (next_offset >= 0),
    updated_at timestamptz not null default now(),
    primary key (cluster_id, consumer_group, topic, partition)
);

-- Requests ingest accepted over HTTP, by derived transfer id: a retry with
-- the same Idempotency-Key and body gets the same answer, one with another
-- body is refused at the edge, and the status endpoint can say "accepted"
-- before the processor has decided.
create table accepted_requests (
    transfer_id uuid primary key,
    api_client_id uuid not null references api_clients (id),
    idempotency_key text not null,
    -- The canonical JSON of the request, compared on a retry.
    request jsonb not null,
    created_at timestamptz not null default now(),
    -- Set once the command is durably in Kafka; until then the request is
    -- not accepted and a retry publishes again.
    published_at timestamptz
);
