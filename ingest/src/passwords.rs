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

use std::sync::Arc;

use anyhow::Context as _;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret as _, SecretString};

use platform::config::{self, ConfigError};

/// The cost of one argon2id hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    /// `LEDGERLINE_ARGON2_MEMORY_KIB`: memory per hash, in KiB.
    pub memory_kib: u32,
    /// `LEDGERLINE_ARGON2_ITERATIONS`: passes over that memory.
    pub iterations: u32,
    /// `LEDGERLINE_ARGON2_PARALLELISM`: lanes.
    pub parallelism: u32,
    /// `LEDGERLINE_ARGON2_CONCURRENCY_MAX`: hashes computed at once; more
    /// wait. Bounds memory (`memory_kib` each) and CPU under a flood of
    /// logins with made-up emails, which no per-account limit catches.
    pub concurrency_max: usize,
}

impl Default for Argon2Cost {
    /// OWASP's first recommendation for argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1, concurrency_max: 4 }
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
    permits: Arc<tokio::sync::Semaphore>,
}

impl SecretHasher {
    /// # Errors
    /// When argon2 refuses the parameters.
    pub fn new(cost: Argon2Cost) -> anyhow::Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|error| anyhow::anyhow!("argon2 parameters: {error}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let permits = Arc::new(tokio::sync::Semaphore::new(cost.concurrency_max));
        let mut hasher = Self { argon2, dummy_hash: Arc::from(""), permits };
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
    ///
    /// # Errors
    /// When the blocking task is lost.
    pub async fn verify(&self, hash: Option<String>, secret: SecretString) -> anyhow::Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let argon2 = self.argon2.clone();
        let _permit = self.permits.acquire().await.context("the hasher is closed")?;
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| argon2.verify_password(secret.expose_secret().as_bytes(), &parsed).is_ok())
        })
        .await
        .context("verifying a secret")?;
        Ok(known && matches)
    }
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
