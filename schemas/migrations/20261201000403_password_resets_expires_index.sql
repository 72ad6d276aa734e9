-- no-transaction
-- Retention (LEDGERLINE_EXPIRED_TOKENS_GRACE_S) finds password resets long
-- expired, a batch at a time. Built concurrently: reset requests insert
-- meanwhile.
create index concurrently if not exists password_resets_expires on password_resets (expires_at);
