-- What the payment provider said about each payout, as the outbox relay (a
-- synchronous answer, a status lookup) or ingest (a signed callback) heard
-- it, written before the `payout.outcome` command is published.
--
-- This table is how the processor knows that a settlement came from the
-- provider: a `payout.outcome` command settles a payout only when its
-- result is recorded here. Upstream apps may publish to `ledger.commands`
-- but have no access to the database, so a forged outcome settles nothing.
-- One row per (payout, result): a second, contradicting result is a second
-- row, and the processor raises the conflict instead of dropping it.
create table payout_outcomes (
    payment_id uuid not null,
    result text not null check (result in ('settled', 'rejected')),
    -- `relay` (the provider's answer to the order or to a status lookup) or
    -- `callback` (the provider's signed callback).
    origin text not null check (origin in ('relay', 'callback')),
    provider_reference text,
    -- The provider's reason code of a refusal.
    provider_code text,
    reported_at timestamptz not null default now(),
    primary key (payment_id, result)
);
