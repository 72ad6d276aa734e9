-- Lanes by destination. A failing row holds back the rest of its lane, and
-- lanes were shared by every destination: a customer's webhook endpoint
-- that is down held back, for as long as it kept failing, the Kafka events
-- of the accounts hashed to its lane, payouts to the payment provider, and
-- password-reset mail. Each destination now has lanes of its own (128 in
-- all), so a failure holds back only rows of its own destination:
--   events 0-63, payments 64-79, notifications 80-87, webhooks 88-127.
-- The rows of one key for one destination still share one lane. Relays of
-- the previous version work lanes 0-63 only; run the new version before
-- relying on payouts, notifications and webhooks again.
--
-- This rewrites the outbox under an exclusive lock: the processor's inserts
-- wait until it is done. Run it in a quiet window, with delivered rows
-- pruned first if the table is large. It gives up after 10 s rather than
-- queue behind a long relay transaction (and hold everyone else up while
-- queued); run it again then.
set local lock_timeout = '10s';
drop index outbox_pending;
alter table outbox drop column lane;
alter table outbox add column lane smallint not null generated always as (
    case destination
        when 'events' then ((hashtext(destination || ':' || message_key) % 64) + 64) % 64
        when 'payments' then 64 + ((hashtext(destination || ':' || message_key) % 16) + 16) % 16
        when 'notifications' then 80 + ((hashtext(destination || ':' || message_key) % 8) + 8) % 8
        -- 'webhooks', the only other destination the check constraint allows.
        else 88 + ((hashtext(destination || ':' || message_key) % 40) + 40) % 40
    end
) stored;
create index outbox_pending on outbox (lane, id) where delivered_at is null and dead_at is null;
