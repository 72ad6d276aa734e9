-- no-transaction
-- The dashboard counts payout conflicts (a payout reported both paid and
-- refused) every second: from the refusals, a minority, each checked
-- against the primary key for a settlement. Built concurrently.
create index concurrently if not exists payout_outcomes_rejected on payout_outcomes (payment_id)
    where result = 'rejected';
