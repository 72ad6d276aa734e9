-- no-transaction
-- Retention (LEDGERLINE_AUDIT_RETENTION_S) finds audit events past their
-- retention by time, a batch at a time. Built concurrently: the audit log
-- takes logins meanwhile.
create index concurrently if not exists audit_log_at on audit_log (at);
