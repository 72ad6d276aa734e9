//! argon2id for every secret a person or program proves it knows:
//! customers' passwords, transaction PINs and API clients' secrets.
//!
//! The cost comes from configuration ([`Argon2Cost`]). Each hash carries its
//! own parameters (PHC string), so raising the cost later keeps existing
//! hashes valid: they are checked with the cost they were made with.
//!
//! Hashing is slow on purpose, so it runs on the blocking pool. Checking a
//! secret for an unknown user or client checks a dummy hash of the same cost,
//! so "no such account" takes as long as "wrong secret".
//!
//! Customers' secrets (passwords, PINs) and API clients' secrets are hashed
//! with separate permits: anyone on the internet can make ingest check a
//! password, so a flood of logins or PIN entries must not stop upstream apps
//! from getting tokens. A client secret that verified is remembered for a
//! while ([`ClientSecretCache`]), so a client asking for tokens again costs
//! no argon2 at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use platform::config::{self, ConfigError};
use secrecy::{ExposeSecret as _, SecretString};

/// The cost of one argon2id hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    /// `LEDGERLINE_ARGON2_MEMORY_KIB`: memory per hash, in KiB.
    pub memory_kib: u32,
    /// `LEDGERLINE_ARGON2_ITERATIONS`: passes over that memory.
    pub iterations: u32,
    /// `LEDGERLINE_ARGON2_PARALLELISM`: lanes.
    pub parallelism: u32,
    /// `LEDGERLINE_ARGON2_CONCURRENCY_MAX`: customers' hashes (passwords,
    /// PINs) computed at once; more wait. Bounds memory (`memory_kib` each)
    /// and CPU under a flood of logins with made-up emails, which no
    /// per-account limit catches.
    pub concurrency_max: usize,
    /// `LEDGERLINE_ARGON2_CLIENT_CONCURRENCY_MAX`: API clients' secrets
    /// checked at once, apart from the customers' permits, so token issuance
    /// never waits behind logins.
    pub client_concurrency_max: usize,
    /// `LEDGERLINE_CLIENT_SECRET_CACHE_TTL_S`: how long a client secret that
    /// verified is taken without argon2 (0: never). The stored client is
    /// read on every token request all the same, so disabling a client or
    /// changing its secret takes effect at once.
    pub client_secret_cache_ttl_s: u64,
    /// `LEDGERLINE_CLIENT_SECRET_CACHE_ENTRIES_MAX`: clients remembered at
    /// most (a bound on the cache's memory); past it, new ones are checked
    /// with argon2 every time until entries expire.
    pub client_secret_cache_entries_max: usize,
}

impl Default for Argon2Cost {
    /// OWASP's first recommendation for argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            concurrency_max: 4,
            client_concurrency_max: 2,
            client_secret_cache_ttl_s: 300,
            client_secret_cache_entries_max: 10_000,
        }
    }
}

impl Argon2Cost {
    /// # Errors
    /// When a variable is malformed or below OWASP's weakest recommended
    /// setting (7 MiB with 5 passes), or so high a login would take seconds.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Self {
            memory_kib: config::limit("LEDGERLINE_ARGON2_MEMORY_KIB", defaults.memory_kib, 1024..=1024 * 1024)?,
            iterations: config::limit("LEDGERLINE_ARGON2_ITERATIONS", defaults.iterations, 1..=20)?,
            parallelism: config::limit("LEDGERLINE_ARGON2_PARALLELISM", defaults.parallelism, 1..=16)?,
            concurrency_max: config::limit("LEDGERLINE_ARGON2_CONCURRENCY_MAX", defaults.concurrency_max, 1..=256)?,
            client_concurrency_max: config::limit(
                "LEDGERLINE_ARGON2_CLIENT_CONCURRENCY_MAX",
                defaults.client_concurrency_max,
                1..=256,
            )?,
            client_secret_cache_ttl_s: config::limit(
                "LEDGERLINE_CLIENT_SECRET_CACHE_TTL_S",
                defaults.client_secret_cache_ttl_s,
                0..=3_600,
            )?,
            client_secret_cache_entries_max: config::limit(
                "LEDGERLINE_CLIENT_SECRET_CACHE_ENTRIES_MAX",
                defaults.client_secret_cache_entries_max,
                1..=1_000_000,
            )?,
        }
        .checked()
    }

    /// # Errors
    /// When the memory and passes are below OWASP's recommendations.
    pub fn checked(self) -> Result<Self, ConfigError> {
        let cost = self;
        if cost.memory_kib < 7 * 1024 {
            return Err(ConfigError::new("LEDGERLINE_ARGON2_MEMORY_KIB", "at least 7168 KiB (7 MiB)"));
        }
        // OWASP's table trades memory for passes: 7 MiB needs 5 passes,
        // 9 MiB 4, 12 MiB 3, 19 MiB 2, 46 MiB 1.
        let iterations_min = match cost.memory_kib {
            m if m >= 46 * 1024 => 1,
            m if m >= 19 * 1024 => 2,
            m if m >= 12 * 1024 => 3,
            m if m >= 9 * 1024 => 4,
            _ => 5,
        };
        if cost.iterations < iterations_min {
            return Err(ConfigError::new(
                "LEDGERLINE_ARGON2_ITERATIONS",
                format!("with {} KiB of memory, at least {iterations_min} passes are needed", cost.memory_kib),
            ));
        }
        Ok(cost)
    }
}

/// Hashes and checks secrets with one configured cost.
#[derive(Debug, Clone)]
pub struct SecretHasher {
    argon2: Argon2<'static>,
    /// Checked when there is no stored hash, so that costs the same time.
    dummy_hash: Arc<str>,
    /// For customers' secrets: passwords and PINs.
    permits: Arc<tokio::sync::Semaphore>,
    /// For API clients' secrets only.
    client_permits: Arc<tokio::sync::Semaphore>,
    client_cache: Arc<ClientSecretCache>,
}

impl SecretHasher {
    /// # Errors
    /// When argon2 refuses the parameters.
    pub fn new(cost: Argon2Cost) -> anyhow::Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|error| anyhow::anyhow!("argon2 parameters: {error}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let permits = Arc::new(tokio::sync::Semaphore::new(cost.concurrency_max));
        let client_permits = Arc::new(tokio::sync::Semaphore::new(cost.client_concurrency_max));
        let client_cache = Arc::new(ClientSecretCache::new(
            Duration::from_secs(cost.client_secret_cache_ttl_s),
            cost.client_secret_cache_entries_max,
        ));
        let mut hasher = Self { argon2, dummy_hash: Arc::from(""), permits, client_permits, client_cache };
        hasher.dummy_hash =
            Arc::from(hasher.hash(&SecretString::from("not-a-real-secret-only-for-timing".to_owned()))?);
        Ok(hasher)
    }

    /// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    ///
    /// # Errors
    /// When hashing fails.
    pub fn hash(&self, secret: &SecretString) -> anyhow::Result<String> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2
            .hash_password(secret.expose_secret().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| anyhow::anyhow!("hashing a secret: {error}"))
    }

    /// [`SecretHasher::hash`] on the blocking pool: argon2id spends tens of
    /// milliseconds of CPU, which must not stall the runtime's workers.
    ///
    /// # Errors
    /// When hashing fails or the blocking task is lost.
    pub async fn hash_blocking(&self, secret: SecretString) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await.context("the hasher is closed")?;
        let hasher = self.clone();
        tokio::task::spawn_blocking(move || hasher.hash(&secret)).await.context("hashing a secret")?
    }

    /// Whether a stored hash was made with another cost than the configured
    /// one: after a successful check, store a new hash of the secret. Until
    /// then a known account answers at its old cost and an unknown one at
    /// the new cost, which a stopwatch could tell apart.
    #[must_use]
    pub fn needs_rehash(&self, hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(hash) else { return true };
        let Ok(stored) = Params::try_from(&parsed) else { return true };
        let wanted = self.argon2.params();
        parsed.algorithm != argon2::ARGON2ID_IDENT
            || (stored.m_cost(), stored.t_cost(), stored.p_cost())
                != (wanted.m_cost(), wanted.t_cost(), wanted.p_cost())
    }

    /// Whether `secret` matches the stored `hash`, checked on the blocking
    /// pool with the parameters recorded in the hash. With no hash (an unknown
    /// user or client) the dummy hash is checked and the answer is false.
    /// Takes one of the customers' permits: for passwords and PINs.
    ///
    /// # Errors
    /// When the blocking task is lost.
    pub async fn verify(&self, hash: Option<String>, secret: SecretString) -> anyhow::Result<bool> {
        self.verify_with(&self.permits, hash, secret).await
    }

    /// [`SecretHasher::verify`] for API client `client_id`'s secret, with the
    /// clients' own permits, and without argon2 when the same secret verified
    /// against the same stored hash within the cache's lifetime.
    ///
    /// # Errors
    /// When the blocking task is lost.
    pub async fn verify_client_secret(
        &self,
        client_id: uuid::Uuid,
        hash: Option<String>,
        secret: SecretString,
    ) -> anyhow::Result<bool> {
        let Some(stored) = hash else {
            return self.verify_with(&self.client_permits, None, secret).await;
        };
        let remembered = ClientSecretCache::key(&stored, &secret);
        if self.client_cache.holds(client_id, &remembered, Instant::now()) {
            return Ok(true);
        }
        let matches = self.verify_with(&self.client_permits, Some(stored), secret).await?;
        if matches {
            self.client_cache.remember(client_id, remembered, Instant::now());
        }
        Ok(matches)
    }

    async fn verify_with(
        &self,
        permits: &tokio::sync::Semaphore,
        hash: Option<String>,
        secret: SecretString,
    ) -> anyhow::Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let argon2 = self.argon2.clone();
        let _permit = permits.acquire().await.context("the hasher is closed")?;
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| argon2.verify_password(secret.expose_secret().as_bytes(), &parsed).is_ok())
        })
        .await
        .context("verifying a secret")?;
        Ok(known && matches)
    }
}

/// What a remembered client secret is compared by: SHA-256 digests of the
/// stored hash and of the secret presented. A new secret (a new hash, with
/// a new salt) matches no entry; nothing in memory reveals a secret (client
/// secrets are 256 random bits, so their digest cannot be searched).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RememberedSecret {
    stored_hash: [u8; 32],
    secret: [u8; 32],
}

/// Client secrets that verified lately, by client id: one entry per client,
/// at most `entries_max`, each good for `ttl`. Only a success is
/// remembered, and only for the exact stored hash it was checked against.
#[derive(Debug)]
pub struct ClientSecretCache {
    ttl: Duration,
    entries_max: usize,
    entries: Mutex<HashMap<uuid::Uuid, (RememberedSecret, Instant)>>,
}

impl ClientSecretCache {
    fn new(ttl: Duration, entries_max: usize) -> Self {
        Self { ttl, entries_max, entries: Mutex::new(HashMap::new()) }
    }

    fn key(stored_hash: &str, secret: &SecretString) -> RememberedSecret {
        use sha2::Digest as _;
        RememberedSecret {
            stored_hash: sha2::Sha256::digest(stored_hash.as_bytes()).into(),
            secret: sha2::Sha256::digest(secret.expose_secret().as_bytes()).into(),
        }
    }

    fn holds(&self, client_id: uuid::Uuid, wanted: &RememberedSecret, now: Instant) -> bool {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(&client_id).is_some_and(|(remembered, verified_at)| {
            now.duration_since(*verified_at) < self.ttl
                && digests_equal(&remembered.stored_hash, &wanted.stored_hash)
                && digests_equal(&remembered.secret, &wanted.secret)
        })
    }

    fn remember(&self, client_id: uuid::Uuid, remembered: RememberedSecret, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !entries.contains_key(&client_id) && entries.len() >= self.entries_max {
            entries.retain(|_, (_, verified_at)| now.duration_since(*verified_at) < self.ttl);
            if entries.len() >= self.entries_max {
                return;
            }
        }
        entries.insert(client_id, (remembered, now));
    }
}

/// Compares two digests in time independent of where they differ.
fn digests_equal(left: &[u8; 32], right: &[u8; 32]) -> bool {
    left.iter().zip(right).fold(0_u8, |difference, (a, b)| difference | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> SecretHasher {
        SecretHasher::new(Argon2Cost { memory_kib: 1024, iterations: 1, ..Argon2Cost::default() }).expect("hasher")
    }

    #[test]
    fn the_configured_cost_is_recorded_in_the_hash() {
        let hash = cheap().hash(&SecretString::from("llsk_correct".to_owned())).expect("hashes");
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
    }

    #[tokio::test]
    async fn a_hash_verifies_its_secret_only_and_with_its_own_cost() {
        let secret = SecretString::from("llsk_correct".to_owned());
        let hash = cheap().hash(&secret).expect("hashes");
        // A hasher with another cost still checks it: the cost is read from the hash.
        let other =
            SecretHasher::new(Argon2Cost { memory_kib: 2048, iterations: 2, ..Argon2Cost::default() }).expect("hasher");
        assert!(other.needs_rehash(&hash), "made with another cost");
        assert!(!cheap().needs_rehash(&hash));
        assert!(other.verify(Some(hash.clone()), secret.clone()).await.expect("verifies"));
        assert!(!other.verify(Some(hash), SecretString::from("llsk_wrong".to_owned())).await.expect("verifies"));
        // No stored hash never matches, not even the dummy's own secret.
        let dummy = SecretString::from("not-a-real-secret-only-for-timing".to_owned());
        assert!(!other.verify(None, dummy).await.expect("verifies"));
    }

    #[tokio::test]
    async fn a_client_secret_is_checked_while_every_customer_permit_is_taken() {
        let hasher = cheap();
        let secret = SecretString::from("llsk_correct".to_owned());
        let hash = hasher.hash(&secret).expect("hashes");
        let customers = u32::try_from(Argon2Cost::default().concurrency_max).expect("small");
        let _taken = hasher.permits.acquire_many(customers).await.expect("permits");
        // Hung forever before clients had permits of their own; the bound
        // only turns a hang into a failure.
        let checked = tokio::time::timeout(
            Duration::from_secs(30),
            hasher.verify_client_secret(uuid::Uuid::new_v4(), Some(hash), secret),
        )
        .await
        .expect("not held back by customers' hashing");
        assert!(checked.expect("verifies"));
    }

    #[tokio::test]
    async fn a_remembered_client_secret_needs_no_permit_and_matches_only_itself() {
        let hasher = cheap();
        let client = uuid::Uuid::new_v4();
        let secret = SecretString::from("llsk_correct".to_owned());
        let hash = hasher.hash(&secret).expect("hashes");
        assert!(
            !hasher
                .verify_client_secret(client, Some(hash.clone()), "llsk_wrong".to_owned().into())
                .await
                .expect("verifies")
        );
        assert!(hasher.verify_client_secret(client, Some(hash.clone()), secret.clone()).await.expect("verifies"));
        let clients = u32::try_from(Argon2Cost::default().client_concurrency_max).expect("small");
        let _taken = hasher.client_permits.acquire_many(clients).await.expect("permits");
        let remembered = tokio::time::timeout(
            Duration::from_secs(30),
            hasher.verify_client_secret(client, Some(hash.clone()), secret.clone()),
        )
        .await
        .expect("answered from the cache, without a permit");
        assert!(remembered.expect("verifies"));

        let cache = &hasher.client_cache;
        let now = Instant::now();
        let other_hash = hasher.hash(&secret).expect("hashes");
        assert!(cache.holds(client, &ClientSecretCache::key(&hash, &secret), now));
        assert!(
            !cache.holds(client, &ClientSecretCache::key(&hash, &"llsk_wrong".to_owned().into()), now),
            "another secret"
        );
        assert!(!cache.holds(client, &ClientSecretCache::key(&other_hash, &secret), now), "the secret was set again");
        assert!(!cache.holds(uuid::Uuid::new_v4(), &ClientSecretCache::key(&hash, &secret), now), "another client");
        let later = now + Duration::from_secs(Argon2Cost::default().client_secret_cache_ttl_s);
        assert!(!cache.holds(client, &ClientSecretCache::key(&hash, &secret), later), "expired");
    }

    #[test]
    fn the_client_secret_cache_is_bounded_and_expired_entries_make_room() {
        let cache = ClientSecretCache::new(Duration::from_secs(10), 2);
        let key = |text: &str| ClientSecretCache::key("stored", &text.to_owned().into());
        let (first, second, third) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let start = Instant::now();
        cache.remember(first, key("a"), start);
        cache.remember(second, key("b"), start);
        cache.remember(third, key("c"), start);
        assert!(!cache.holds(third, &key("c"), start), "full: not remembered");
        let later = start + Duration::from_secs(10);
        cache.remember(third, key("c"), later);
        assert!(cache.holds(third, &key("c"), later), "expired entries made room");
        let off = ClientSecretCache::new(Duration::ZERO, 2);
        off.remember(first, key("a"), start);
        assert!(!off.holds(first, &key("a"), start), "a TTL of 0 remembers nothing");
    }

    #[test]
    fn weak_settings_are_refused() {
        let cost = |memory_kib, iterations| Argon2Cost { memory_kib, iterations, ..Argon2Cost::default() };
        assert!(cost(1024, 10).checked().is_err());
        assert!(cost(9 * 1024, 3).checked().is_err());
        assert!(cost(19 * 1024, 1).checked().is_err());
        assert!(cost(9 * 1024, 4).checked().is_ok());
        assert!(cost(46 * 1024, 1).checked().is_ok());
        assert!(Argon2Cost::default().checked().is_ok());
    }
}
