-- The bank's customers and staff, and their sessions.
create table users (
    id uuid primary key,
    -- Lower-cased at registration; unique.
    email text not null check (length(email) between 3 and 254),
    -- argon2id PHC string.
    password_hash text not null,
    role text not null default 'customer' check (role in ('customer', 'support', 'admin', 'ops')),
    created_at timestamptz not null default now(),
    password_changed_at timestamptz not null default now(),
    disabled_at timestamptz
);

create unique index users_email on users (email);

-- Refresh tokens rotate: each use marks the token used and issues the next
-- one of its family. A used token presented again means it was stolen: the
-- whole family is revoked. Only a SHA-256 of each token is stored.
create table refresh_tokens (
    id uuid primary key,
    family_id uuid not null,
    user_id uuid not null references users (id),
    token_hash bytea not null unique,
    issued_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz,
    revoked_at timestamptz
);

create index refresh_tokens_family on refresh_tokens (family_id);
