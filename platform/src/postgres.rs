//! The Postgres pool, and creating the database in development.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};

use crate::config::{self, ConfigError};

/// The database of the development stack and the default everywhere.
pub const DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/ledgerline";

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`; it may hold a password, so it is a secret.
    pub url: SecretString,
    /// `LEDGERLINE_DB_POOL_SIZE_MAX`: connections per service.
    pub pool_size_max: u32,
    /// `LEDGERLINE_DB_ACQUIRE_TIMEOUT_MS`: how long a request waits for a connection.
    pub acquire_timeout_ms: u64,
    /// `LEDGERLINE_DB_STATEMENT_TIMEOUT_MS`: the server cancels a statement
    /// of this service's connections that runs longer (`statement_timeout`).
    pub statement_timeout_ms: u64,
    /// `LEDGERLINE_DB_LOCK_TIMEOUT_MS`: and one that waits longer for a lock
    /// (`lock_timeout`), so a stray lock fails the work instead of hanging it.
    pub lock_timeout_ms: u64,
}

impl DatabaseConfig {
    /// Above any statement of the services' normal work (the slowest, a
    /// processor batch, takes well under a second), below "hung".
    pub const STATEMENT_TIMEOUT_MS_DEFAULT: u64 = 30_000;
    /// Row locks are held for a batch or a request at most.
    pub const LOCK_TIMEOUT_MS_DEFAULT: u64 = 10_000;

    /// # Errors
    /// When a variable is malformed or out of range.
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = config::secret_optional("DATABASE_URL")?.unwrap_or_else(|| SecretString::from(DATABASE_URL_DEFAULT));
        Ok(Self {
            url,
            pool_size_max: config::limit("LEDGERLINE_DB_POOL_SIZE_MAX", 10, 1..=200)?,
            acquire_timeout_ms: config::limit("LEDGERLINE_DB_ACQUIRE_TIMEOUT_MS", 5_000, 10..=60_000)?,
            statement_timeout_ms: config::limit(
                "LEDGERLINE_DB_STATEMENT_TIMEOUT_MS",
                Self::STATEMENT_TIMEOUT_MS_DEFAULT,
                100..=3_600_000,
            )?,
            lock_timeout_ms: config::limit(
                "LEDGERLINE_DB_LOCK_TIMEOUT_MS",
                Self::LOCK_TIMEOUT_MS_DEFAULT,
                10..=3_600_000,
            )?,
        })
    }

    /// The same server and credentials, another database.
    #[must_use]
    pub fn with_url(&self, url: &str) -> Self {
        Self { url: SecretString::from(url.to_owned()), ..self.clone() }
    }

    fn connect_options(&self) -> anyhow::Result<PgConnectOptions> {
        // The error of a bad URL would echo the URL, password included.
        PgConnectOptions::from_str(self.url.expose_secret())
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid postgres:// URL"))
    }

    /// Opens the pool and checks one connection works.
    ///
    /// # Errors
    /// When the URL is malformed or the server cannot be reached.
    pub async fn connect(&self) -> anyhow::Result<PgPool> {
        let options = self.connect_options()?.log_statements(tracing::log::LevelFilter::Trace).options([
            ("statement_timeout", format!("{}ms", self.statement_timeout_ms)),
            ("lock_timeout", format!("{}ms", self.lock_timeout_ms)),
        ]);
        PgPoolOptions::new()
            .max_connections(self.pool_size_max)
            .acquire_timeout(Duration::from_millis(self.acquire_timeout_ms))
            .connect_with(options)
            .await
            .context("connecting to Postgres (DATABASE_URL)")
    }

    /// Creates the database named in the URL if it does not exist, by way of
    /// the server's `postgres` maintenance database. For development only:
    /// production databases are provisioned by their operators.
    ///
    /// # Errors
    /// When the server cannot be reached or the creation fails.
    pub async fn create_database_if_missing(&self) -> anyhow::Result<()> {
        let options = self.connect_options()?;
        let name = options.get_database().unwrap_or("postgres").to_owned();
        let mut maintenance = options
            .database("postgres")
            .connect()
            .await
            .context("connecting to the maintenance database `postgres`")?;
        let exists =
            sqlx::query_scalar!(r#"select exists (select 1 from pg_database where datname = $1) as "exists!""#, &name)
                .fetch_one(&mut maintenance)
                .await
                .context("looking the database up")?;
        if !exists {
            let statement = format!("create database \"{}\"", name.replace('"', "\"\""));
            sqlx::raw_sql(&statement)
                .execute(&mut maintenance)
                .await
                .with_context(|| format!("creating database {name}"))?;
            tracing::info!(database = %name, "created the database");
        }
        maintenance.close().await.ok();
        Ok(())
    }
}

/// The longest a readiness probe waits for Postgres.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether Postgres answers a trivial query within [`PROBE_TIMEOUT`], for
/// the services' readiness: `None` when it does, else what is wrong.
pub async fn probe(pool: &PgPool) -> Option<String> {
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::query_scalar!("select 1 as probe").fetch_one(pool)).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(format!("Postgres does not answer: {error}")),
        Err(_) => Some(format!("Postgres does not answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}
