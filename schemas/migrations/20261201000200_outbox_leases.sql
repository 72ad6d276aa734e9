-- Relay rows are leased, not locked, while they are delivered (issue #10,
-- defect 6). A relay used to hold one transaction open for a whole round,
-- across every HTTP call and Kafka send in it: a slow webhook endpoint kept
-- a transaction open for minutes, holding back vacuum on hot rows. Now a
-- relay claims rows in a short transaction that leases them, calls out
-- with no transaction open, and records the outcomes in another short one.
--
-- claimed_until: the lease. Until then no other relay claims the row, nor
--   (for destinations kept in order per key) a later row of its key. A
--   relay that dies mid-round leaves its rows to others when it expires.
-- claim_token: the claim that holds the lease; a relay records outcomes
--   only for rows its own claim still holds, so one whose lease ran out
--   cannot overwrite what another relay did with the row since.
-- claims: how many claims took the row and may have delivered it (a claim
--   that did not try the row gives its count back). Above zero, a payment
--   may have reached the provider even though nothing was recorded (the
--   relay died) or an operator reset `attempts` (a retry of a dead row):
--   the relay asks the provider about it before ordering it again.
-- outcome: what the destination answered, where it matters: a payment's
--   `settled:<reference>`, `rejected:<reason>` or `pending:<reference>`.
alter table outbox
    add column claimed_until timestamptz,
    add column claim_token uuid,
    add column claims integer not null default 0,
    add column outcome text;
