-- Two-phase transfers (hold → post or void, with expiry), reversals, and
-- account commands (freeze, unfreeze, close, overdraft limit).

alter table transfers drop constraint transfers_kind_check;
alter table transfers add constraint transfers_kind_check
    check (kind in ('transfer', 'deposit', 'hold', 'post', 'void', 'reversal'));

-- A hold's row moves from 'held' to 'posted', 'voided' or 'expired'; every
-- other row is 'completed' or 'rejected' for good.
alter table transfers drop constraint transfers_status_check;
alter table transfers add constraint transfers_status_check
    check (status in ('completed', 'rejected', 'held', 'posted', 'voided', 'expired'));

-- A rejected post, void or reversal may name nothing the ledger knows (an
-- unknown hold): the accounts and the amount are then unknown too.
alter table transfers alter column source_account_id drop not null;
alter table transfers alter column destination_account_id drop not null;
alter table transfers alter column amount drop not null;
alter table transfers alter column currency drop not null;
alter table transfers add constraint transfers_known_unless_rejected check (
    status = 'rejected'
    or (source_account_id is not null and destination_account_id is not null
        and amount is not null and currency is not null)
);

alter table transfers
    -- A post's or void's hold; a reversal's original transfer.
    add column related_transfer_id uuid,
    -- When a pending hold is released by the processor.
    add column expires_at timestamptz,
    -- How much of a hold was posted.
    add column settled_amount numeric(38, 4),
    -- The canonical JSON of the command, compared when the id comes again.
    add column request_fingerprint text not null default '';

alter table transfers add constraint transfers_hold_has_expiry check ((kind = 'hold') = (expires_at is not null));

-- At most one completed reversal per transfer.
create unique index transfers_one_reversal
    on transfers (related_transfer_id) where kind = 'reversal' and status = 'completed';

-- The expiry sweep reads pending holds by expiry.
create index transfers_pending_holds on transfers (expires_at) where kind = 'hold' and status = 'held';

-- Account commands, applied or rejected, by command id: a redelivery is a no-op.
create table account_commands (
    id uuid primary key,
    account_id uuid not null,
    command_type text not null,
    status text not null check (status in ('completed', 'rejected')),
    rejection_reason text check ((status = 'rejected') = (rejection_reason is not null)),
    request_fingerprint text not null,
    requested_at timestamptz not null,
    decided_at timestamptz not null default now(),
    kafka_topic text not null,
    kafka_partition integer not null,
    kafka_offset bigint not null
);

create index account_commands_account on account_commands (account_id, decided_at);
