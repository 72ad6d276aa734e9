-- Webhooks: API clients register endpoints for the event types they want;
-- the relay signs and POSTs each matching event (Standard Webhooks).
create table webhook_endpoints (
    id uuid primary key,
    api_client_id uuid not null references api_clients (id),
    url text not null check (length(url) between 8 and 2000),
    event_types text[] not null check (cardinality(event_types) between 1 and 32),
    -- The signing secret (`whsec_` + base64 of 32 random bytes). Kept in
    -- clear because the relay signs with it; the database is the trust
    -- boundary, as for the JWT key's environment.
    secret text not null,
    created_at timestamptz not null default now(),
    disabled_at timestamptz
);

create index webhook_endpoints_client on webhook_endpoints (api_client_id) where disabled_at is null;

-- The relay fans an event out into one 'webhooks' row per matching endpoint
-- when it publishes the event, keyed by endpoint (ordered per endpoint).
alter table outbox drop constraint outbox_destination_check;
alter table outbox add constraint outbox_destination_check
    check (destination in ('events', 'payments', 'webhooks'));
