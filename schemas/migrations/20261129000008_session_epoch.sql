-- Access tokens carry the user's session epoch; bumping it (a freeze, a
-- password change or reset) ends every access token issued before, at once
-- and without comparing clocks.
alter table users add column session_epoch integer not null default 0;
