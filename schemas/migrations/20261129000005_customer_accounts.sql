-- Accounts a customer opened for themself (an API client's accounts keep
-- owner_client_id). Set once, at opening: the processor's balance updates
-- never touch it, so the foreign key costs nothing on the hot path.
alter table accounts add column owner_user_id uuid references users (id);
create index accounts_owner_user on accounts (owner_user_id) where owner_user_id is not null;
