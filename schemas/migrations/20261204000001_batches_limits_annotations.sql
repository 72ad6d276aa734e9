-- Multi-leg transfers (transfer.batch), spending limits, and what upstream
-- apps attach to a transfer (a reference, metadata, a reversal's reason).

-- A batch's own row says how it was decided; its legs are rows of kind
-- 'transfer' whose related transfer is the batch, with the entries. The
-- batch row itself names no single source, destination or amount.
alter table transfers drop constraint transfers_kind_check;
alter table transfers add constraint transfers_kind_check
    check (kind in ('transfer', 'deposit', 'hold', 'post', 'void', 'reversal', 'payout', 'batch'));
alter table transfers drop constraint transfers_known_unless_rejected;
alter table transfers add constraint transfers_known_unless_rejected check (
    status = 'rejected' or kind = 'batch'
    or (source_account_id is not null and destination_account_id is not null
        and amount is not null and currency is not null)
);

alter table transfers
    -- A bank reference (SEPA characters, at most 140) and bounded metadata,
    -- validated by the command's parser, stored as given.
    add column reference text check (char_length(reference) between 1 and 140),
    add column metadata jsonb,
    -- Why a reversal corrected its original.
    add column reversal_reason text,
    -- The leg (from 0) whose refusal refused a batch.
    add column rejected_leg smallint check (rejected_leg >= 0),
    -- Which spending limit a `limit_exceeded` refusal hit.
    add column exceeded_limit text check (exceeded_limit in ('per_transfer', 'rolling_24h')),
    -- When a hold or payout stopped being held (posted, voided, expired):
    -- what a balance as of an earlier instant counts as held.
    add column settled_at timestamptz;

-- Holds settled before this column existed: by the decision of what settled
-- them, else (an expiry, which writes no row) by their expiry.
update transfers hold set settled_at = coalesce(
    (select min(settling.decided_at) from transfers settling
     where settling.related_transfer_id = hold.id and settling.status = 'completed'
       and settling.kind in ('post', 'void')),
    hold.expires_at,
    hold.decided_at)
where hold.kind in ('hold', 'payout') and hold.status in ('posted', 'voided', 'expired');

-- Spending limits, in the account's currency; null is no limit.
alter table accounts
    add column per_transfer_max numeric(38, 4) check (per_transfer_max > 0),
    add column rolling_24h_max numeric(38, 4) check (rolling_24h_max > 0);

-- An entry's time is when it was written, under its account's lock, not
-- when its batch's transaction began: so one account's entries are in the
-- same order by time as by id, and a balance as of an instant is the
-- balance after the last entry written by then.
alter table entries alter column created_at set default statement_timestamp();
