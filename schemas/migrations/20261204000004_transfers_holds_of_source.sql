-- no-transaction
-- What an account had held at an instant: its holds and payouts by time.
create index concurrently if not exists transfers_holds_of_source
    on transfers (source_account_id, decided_at) where kind in ('hold', 'payout');
