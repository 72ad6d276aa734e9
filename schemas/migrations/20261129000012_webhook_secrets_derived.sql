-- Webhook signing secrets need not be stored: with
-- LEDGERLINE_WEBHOOK_SECRETS_KEYS configured, an endpoint's secret is derived
-- from a key the database never sees, its id and a random nonce; only the
-- nonce and the key's id are kept. Endpoints registered before (or without
-- the keys) keep their stored secret.
alter table webhook_endpoints alter column secret drop not null;
alter table webhook_endpoints add column secret_nonce bytea;
alter table webhook_endpoints add column secret_key_id text;
alter table webhook_endpoints add constraint webhook_endpoints_one_secret check (
    (secret is not null and secret_nonce is null and secret_key_id is null)
    or (secret is null and secret_nonce is not null and secret_key_id is not null)
);
