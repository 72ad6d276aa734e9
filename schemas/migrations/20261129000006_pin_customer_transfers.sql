-- The transaction PIN, and transfers customers submit themselves.

-- argon2id PHC of the PIN. Five wrong PINs in a row lock PIN use until
-- pin_locked_until.
alter table users
    add column pin_hash text,
    add column pin_failed_attempts integer not null default 0 check (pin_failed_attempts >= 0),
    add column pin_locked_until timestamptz;

-- A request is accepted from an API client or from a customer.
alter table accepted_requests
    alter column api_client_id drop not null,
    add column user_id uuid references users (id),
    add constraint accepted_requests_one_requester check ((api_client_id is null) <> (user_id is null));
