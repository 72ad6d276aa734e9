-- PIN attempts are reserved before the hash is checked (issue #10, defect 2).
-- Reading the lock first and counting a wrong PIN after the check let a
-- burst of N parallel requests make N guesses. Now one UPDATE reserves an
-- attempt only while pin_failed_attempts + pin_attempts_in_flight is below
-- five and PIN use is not locked; the check's outcome releases it (right
-- PIN) or turns it into a wrong attempt. pin_attempt_reserved_at is the
-- newest reservation: reservations much older than any request belong to a
-- check that died with its process, and count as wrong attempts.
alter table users
    add column pin_attempts_in_flight integer not null default 0 check (pin_attempts_in_flight >= 0),
    add column pin_attempt_reserved_at timestamptz;

-- A step-up token pays for one transfer (issue #10, defect 16): its id
-- (the JWT's jti) is recorded with the transfer it paid for, before that
-- transfer is published. The same token again is accepted only for the
-- same transfer (a retry). Rows are useless once the token has expired
-- (5 minutes) and are pruned per user as new ones are spent.
create table step_up_uses (
    id uuid primary key,
    user_id uuid not null references users (id),
    transfer_id uuid not null,
    expires_at timestamptz not null
);

create index step_up_uses_user_expiry on step_up_uses (user_id, expires_at);
