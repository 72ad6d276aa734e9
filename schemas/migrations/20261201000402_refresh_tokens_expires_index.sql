-- no-transaction
-- Retention (LEDGERLINE_EXPIRED_TOKENS_GRACE_S) finds refresh tokens long
-- expired, a batch at a time. Built concurrently: logins and refreshes
-- insert meanwhile.
create index concurrently if not exists refresh_tokens_expires on refresh_tokens (expires_at);
