//! `ledgerctl dev`: the whole stack in one process, for a laptop.
//!
//! It hosts librdkafka's mock cluster (unless `KAFKA_BROKERS` names a real
//! broker), creates and migrates the database, registers a well-known
//! development API client, and runs ingest, processor and outbox relay until
//! Ctrl-C or SIGTERM. Unless `LEDGERLINE_PROVIDER_BASE_URL` names a payment
//! provider, it also runs the fake provider, which settles every payout. Never point it at production data: the development
//! client's secret is public.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use argon2::password_hash::rand_core::{OsRng, RngCore as _};
use outbox_relay::fake_provider::FakeProvider;
use outbox_relay::provider::ProviderConfig;
use platform::kafka::{KafkaConfig, MockKafka};
use platform::postgres::DatabaseConfig;
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

/// The development client, the same on every start so the README's
/// walkthrough works verbatim.
pub(crate) const DEV_CLIENT_ID: Uuid = Uuid::from_u128(0xde00_0000_0000_4000_8000_0000_0000_0001);
pub(crate) const DEV_CLIENT_SECRET_DEFAULT: &str = "ledgerline-dev-secret";
const DEV_STAFF_EMAIL_DEFAULT: &str = "admin@ledgerline.dev";
const DEV_STAFF_PASSWORD_DEFAULT: &str = "ledgerline-dev-admin";
/// The relay's credentials at the embedded fake payment provider.
const FAKE_PROVIDER_CLIENT_ID: &str = "ledgerline-dev";
const FAKE_PROVIDER_SECRET: &str = "fake-provider-dev-secret";
const FAKE_PROVIDER_CALLBACK_SECRET: &str = "fake-provider-dev-callback-secret";

#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Where ingest listens.
    #[arg(long, env = "LEDGERLINE_HTTP_ADDR", default_value = ingest::IngestConfig::HTTP_ADDR_DEFAULT)]
    http_addr: SocketAddr,
    /// Partitions of the command topic on the mock cluster.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The development client's secret.
    #[arg(long, env = "LEDGERLINE_DEV_CLIENT_SECRET", default_value = DEV_CLIENT_SECRET_DEFAULT)]
    client_secret: String,
    /// The development staff member's email (an admin of the dashboard).
    #[arg(long, env = "LEDGERLINE_DEV_STAFF_EMAIL", default_value = DEV_STAFF_EMAIL_DEFAULT)]
    staff_email: String,
    /// Their password (at least 12 characters).
    #[arg(long, env = "LEDGERLINE_DEV_STAFF_PASSWORD", default_value = DEV_STAFF_PASSWORD_DEFAULT)]
    staff_password: String,
    /// Where the processor serves `/metrics`, `/health/live` and
    /// `/health/ready` (ingest's page is `LEDGERLINE_METRICS_ADDR`).
    #[arg(long, env = "LEDGERLINE_DEV_PROCESSOR_METRICS_ADDR")]
    processor_metrics_addr: Option<SocketAddr>,
    /// Where the outbox relay serves them.
    #[arg(long, env = "LEDGERLINE_DEV_RELAY_METRICS_ADDR")]
    relay_metrics_addr: Option<SocketAddr>,
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let shutdown = platform::shutdown::token_on_signal();

    let database = DatabaseConfig::from_env()?;
    database.create_database_if_missing().await?;
    let pool = database.connect().await?;
    schemas::MIGRATOR.run(&pool).await.context("migrating the database")?;

    // The mock cluster lives as long as this binding.
    let (kafka, _mock) = match KafkaConfig::from_env()? {
        Some(kafka) => {
            kafka.create_topics(args.partitions, 1).await?;
            (kafka, None)
        }
        None => {
            let topics = KafkaConfig::topics_from_env()?;
            let mock = MockKafka::start(1, &topics, args.partitions)?;
            (mock.kafka_config(topics), Some(mock))
        }
    };

    let secret = SecretString::from(args.client_secret);
    let hasher = ingest::support::passwords::SecretHasher::new(ingest::support::passwords::Argon2Cost::from_env()?)?;
    ingest::domain::clients::upsert_client(
        &pool,
        &hasher,
        DEV_CLIENT_ID,
        "ledgerctl-dev",
        &secret,
        ingest::domain::clients::Scope::ALL,
    )
    .await?;
    dev_staff(&pool, &hasher, &args.staff_email, &args.staff_password).await?;

    // A fresh signing key per start unless one is configured: tokens from an
    // earlier run stop working, which is what a developer expects.
    let mut random = [0_u8; 32];
    OsRng.fill_bytes(&mut random);
    let generated = SecretString::from(random.iter().map(|byte| format!("{byte:02x}")).collect::<String>());
    let mut relay_config = outbox_relay::RelayConfig::from_env(kafka.clone())?;
    // A developer's webhook receiver is on this machine: allowed here unless
    // said otherwise (production refuses private addresses by default).
    if std::env::var_os("LEDGERLINE_WEBHOOK_PRIVATE_NETWORKS_ALLOWED").is_none() {
        relay_config.webhooks.private_networks_allowed = true;
    }
    // Lives as long as this binding.
    let fake_provider = match relay_config.provider {
        Some(_) => None,
        None => {
            let any_port: SocketAddr = "127.0.0.1:0".parse()?;
            let provider = FakeProvider::start(any_port, FAKE_PROVIDER_CLIENT_ID, FAKE_PROVIDER_SECRET).await?;
            relay_config.provider = Some(ProviderConfig {
                name: "fake".into(),
                base_url: provider.base_url(),
                token_url: provider.token_url(),
                client_id: FAKE_PROVIDER_CLIENT_ID.into(),
                client_secret: SecretString::from(FAKE_PROVIDER_SECRET.to_owned()),
                timeout_ms: 10_000,
                token_refresh_margin_s: 60,
            });
            Some(provider)
        }
    };
    let mut ingest_config = ingest::IngestConfig::from_env(kafka.clone(), Some(generated))?;
    if std::env::var_os("LEDGERLINE_WEBHOOK_PRIVATE_NETWORKS_ALLOWED").is_none() {
        ingest_config.webhook_private_networks_allowed = true;
    }
    ingest_config.http_addr = args.http_addr;
    // Plain HTTP on this machine: the dashboard's cookie cannot be Secure
    // (the page footer says so). With TLS configured it stays Secure.
    if ingest_config.tls.is_none() {
        ingest_config.dashboard.cookie_secure = false;
    }
    if fake_provider.is_some() && ingest_config.provider_callback.is_none() {
        ingest_config.provider_callback = Some(ingest::config::ProviderCallback {
            name: "fake".into(),
            secret: SecretString::from(FAKE_PROVIDER_CALLBACK_SECRET.to_owned()),
            tolerance_s: 300,
        });
    }
    // A pool per service, as when they run as separate processes: a
    // processor batch or a relay round never waits for a connection that an
    // HTTP request holds, nor the other way round.
    let application = ingest::Application::build(&ingest_config, pool).await?;
    let address = application.local_addr()?;
    if let Some(provider) = &fake_provider {
        provider.set_callbacks(&format!("http://{address}/v1/providers/fake/callbacks"), FAKE_PROVIDER_CALLBACK_SECRET);
    }

    let provider_url = relay_config.provider.as_ref().map(|provider| provider.base_url.clone()).unwrap_or_default();

    let processor_config = processor::ProcessorConfig::from_env(kafka.clone())?;
    let group = processor_config.consumer_group.clone();
    let processor_pool = database.connect().await?;
    let mut processor = processor::Processor::start(processor_config, processor_pool.clone())?;
    // The partition monitor stores lag and commit latency for the dashboard.
    let health_interval = processor::health::interval_from_env()?;
    processor::health::spawn_monitor(
        &kafka,
        group,
        processor_pool.clone(),
        processor.metrics(),
        health_interval,
        shutdown.clone(),
    )?;
    if let Some(address) = args.processor_metrics_addr {
        let metrics = processor.metrics();
        let render = {
            let metrics = std::sync::Arc::clone(&metrics);
            platform::metrics::render_with(move || metrics.render())
        };
        let ready: platform::metrics::Ready = std::sync::Arc::new(move || {
            let (metrics, pool) = (std::sync::Arc::clone(&metrics), processor_pool.clone());
            Box::pin(async move { processor::health::readiness(&metrics, &pool, health_interval).await })
        });
        platform::metrics::spawn_with_health(address, render, ready, shutdown.clone()).await?;
    }
    let relay_pool = database.connect().await?;
    let relay_metrics = std::sync::Arc::new(outbox_relay::RelayMetrics::default());
    if let Some(address) = args.relay_metrics_addr {
        let readiness = outbox_relay::Readiness::new(relay_pool.clone(), &kafka)?;
        let ready: platform::metrics::Ready = std::sync::Arc::new(move || {
            let readiness = readiness.clone();
            Box::pin(async move { readiness.problems().await })
        });
        let (metrics, pool) = (std::sync::Arc::clone(&relay_metrics), relay_pool.clone());
        let render: platform::metrics::Render = std::sync::Arc::new(move || {
            let (metrics, pool) = (std::sync::Arc::clone(&metrics), pool.clone());
            Box::pin(async move { outbox_relay::render_metrics(&metrics, &pool).await })
        });
        platform::metrics::spawn_with_health(address, render, ready, shutdown.clone()).await?;
    }
    let relay = tokio::spawn(outbox_relay::run_with_metrics(relay_config, relay_pool, shutdown.clone(), relay_metrics));
    let server = tokio::spawn(application.run_until(shutdown.clone()));
    // The first consumer-group join takes a few seconds; a transfer sent
    // before it would wait in Kafka. Announce readiness only after it.
    if !processor.wait_until_assigned(Duration::from_secs(60)).await {
        tracing::warn!("the processor has no partitions yet; commands wait in Kafka until it has");
    }

    println!();
    println!("Ledgerline is running.");
    println!("  API            http://{address}");
    println!(
        "  Kafka          {}  (topics {}, {}, {})",
        kafka.brokers, kafka.topics.commands, kafka.topics.commands_dlq, kafka.topics.events
    );
    println!("  Payouts        via {provider_url}");
    println!("  API client     client_id={DEV_CLIENT_ID}");
    println!("                 client_secret={}", secret.expose_secret());
    println!(
        "  Get a token    curl -s -X POST http://{address}/v1/oauth/token -d grant_type=client_credentials -d client_id={DEV_CLIENT_ID} -d client_secret={}",
        secret.expose_secret()
    );
    println!("  Dashboard      http://{address}/admin");
    println!("  Staff sign-in  {} / {}  (admin)", args.staff_email, args.staff_password);
    println!("Press Ctrl-C to stop.");
    println!();

    tokio::select! {
        () = shutdown.cancelled() => {}
        result = processor.wait() => {
            tracing::error!(?result, "the processor stopped");
            shutdown.cancel();
        }
    }
    shutdown.cancel();
    let server_result = server.await.context("joining the HTTP server")?;
    let processor_result = processor.stop().await;
    let relay_result = relay.await.context("joining the relay")?;
    server_result?;
    processor_result?;
    relay_result?;
    println!("Ledgerline stopped cleanly.");
    Ok(())
}

/// Creates (or resets) the development staff member: an admin with the
/// given password, unfrozen, for the dashboard.
async fn dev_staff(
    pool: &sqlx::PgPool,
    hasher: &ingest::support::passwords::SecretHasher,
    email: &str,
    password: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(password.chars().count() >= 12, "the staff password has at least 12 characters");
    let hash = hasher.hash_blocking(SecretString::from(password.to_owned())).await?;
    sqlx::query!(
        r"insert into users (id, email, password_hash, role) values ($1, $2, $3, 'admin')
          on conflict (email) do update set password_hash = excluded.password_hash, role = 'admin', disabled_at = null",
        Uuid::new_v4(),
        email.trim().to_lowercase(),
        hash,
    )
    .execute(pool)
    .await
    .context("creating the development staff member")?;
    Ok(())
}
