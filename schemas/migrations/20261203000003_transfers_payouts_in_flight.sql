-- no-transaction
-- Payouts waiting for the provider's outcome (the dashboard counts them
-- every second): few at any time. Built concurrently.
create index concurrently if not exists transfers_payouts_in_flight on transfers (requested_at)
    where kind = 'payout' and status = 'held';
