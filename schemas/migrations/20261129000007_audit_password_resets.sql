-- Security events, for admins to read, and password resets.

create table audit_log (
    id bigint generated always as identity primary key,
    at timestamptz not null default now(),
    -- login.succeeded, login.failed, pin.failed, pin.locked, password.changed, …
    action text not null,
    actor_user_id uuid,
    actor_client_id uuid,
    -- The user the event is about, when known.
    subject_user_id uuid,
    ip text,
    request_id text,
    detail jsonb not null default '{}'
);

create index audit_log_subject on audit_log (subject_user_id, id) where subject_user_id is not null;

-- Single-use reset tokens, stored as SHA-256 only, valid 30 minutes.
create table password_resets (
    id uuid primary key,
    user_id uuid not null references users (id),
    token_hash bytea not null unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz
);

-- Messages to people (the reset link) go through the outbox to the bank's
-- notification service.
alter table outbox drop constraint outbox_destination_check;
alter table outbox add constraint outbox_destination_check
    check (destination in ('events', 'payments', 'webhooks', 'notifications'));
