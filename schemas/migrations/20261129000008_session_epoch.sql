-- Access tokens carry the user's session epoch; bumping it (a freeze, a
-- password change or reset) ends every access token issued before, at once
-- and without comparing clocks.
alter table users add column session_epoch integer not null default 0;

-- A refresh token carries the epoch of the session it began in; one of an
-- earlier epoch refreshes nothing, even if it was issued while the epoch
-- was moving on (a refresh racing a password change or a freeze).
alter table refresh_tokens add column session_epoch integer not null default 0;
