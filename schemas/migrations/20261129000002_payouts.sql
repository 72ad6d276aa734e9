-- Payouts to other banks through a payment provider (`transfer.external`).

-- A payout holds the source's funds like a hold, but has no expiry: only the
-- provider's answer settles it (a post, or a void that gives the money back).
alter table transfers drop constraint transfers_kind_check;
alter table transfers add constraint transfers_kind_check
    check (kind in ('transfer', 'deposit', 'hold', 'post', 'void', 'reversal', 'payout'));

-- One external-clearing account per currency, with fixed ids like cash-in:
-- 00000000-0000-0000-0002-<currency as hex>. Settled payouts are credited to
-- it; it stands for the money on its way out through the provider.
insert into accounts (id, currency, kind, system_role)
select ('00000000-0000-0000-0002-' || lpad(encode(convert_to(code, 'UTF8'), 'hex'), 12, '0'))::uuid,
       code, 'system', 'external_clearing'
from unnest(array['EUR', 'USD', 'GBP', 'CHF', 'JPY', 'SEK', 'NOK', 'DKK', 'PLN', 'KWD']) as code;

-- The relay delivers 'payments' rows to the provider.
alter table outbox drop constraint outbox_destination_check;
alter table outbox add constraint outbox_destination_check check (destination in ('events', 'payments'));
