//! `ledgerctl`, the operator's tool: migrate the database, create API
//! clients and topics, run the whole stack in one process (`dev`), and
//! benchmark the processor (`bench`) or load a running stack (`load`, a
//! library of its own in `load.rs` so the end-to-end tests drive it).

mod bench;
mod dev;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use platform::kafka::KafkaConfig;
use platform::postgres::DatabaseConfig;
use secrecy::ExposeSecret as _;

#[derive(Debug, Parser)]
#[command(name = "ledgerctl", version, about = "Operate a Ledgerline deployment")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the database migrations (DATABASE_URL).
    Migrate {
        /// Create the database first if it does not exist.
        #[arg(long)]
        create_database: bool,
    },
    /// Manage API clients.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Manage users' roles (DATABASE_URL); admins do the rest over the API.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Re-feed a range of the commands topic (KAFKA_BROKERS, DATABASE_URL):
    /// commands the ledger has no decision for are published again, those
    /// decided are counted and left; safe to repeat.
    Replay {
        #[arg(long, default_value_t = 0)]
        partition: i32,
        #[arg(long)]
        from_offset: i64,
        /// The offset after the last one to re-feed.
        #[arg(long)]
        to_offset: i64,
        /// Count only; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Read or replay dead-lettered commands (KAFKA_BROKERS).
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (what ingest serves at
    /// /openapi.json).
    Openapi,
    /// Manage Kafka topics (KAFKA_BROKERS).
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Run ingest, processor and outbox relay in one process, on an embedded
    /// Kafka mock cluster unless KAFKA_BROKERS is set.
    Dev(dev::DevArgs),
    /// Check the ledger's invariants (DATABASE_URL): balances equal their
    /// entries, every transfer balances, money is conserved per currency, no
    /// account is below its limit, held amounts match pending holds. Exits
    /// non-zero on any violation.
    Verify,
    /// Host only a Kafka mock cluster and print its bootstrap address, to
    /// explore with kcat or to run the tests in external-broker mode
    /// (`KAFKA_BROKERS=<address> cargo test`). It auto-creates topics.
    KafkaMock {
        /// Brokers in the cluster.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
    },
    /// Run only the fake payment provider (OAuth2 client credentials and
    /// payouts that settle), for demos and load runs against a stack of
    /// separate services (docker-compose's `demo` profile). Never for real
    /// money: it pays nobody.
    FakeProvider {
        /// Where it listens.
        #[arg(long, default_value = "127.0.0.1:8090")]
        addr: std::net::SocketAddr,
        /// The OAuth2 client the relay presents.
        #[arg(long, env = "LEDGERLINE_PROVIDER_CLIENT_ID", default_value = "ledgerline-demo")]
        client_id: String,
        #[arg(long, env = "LEDGERLINE_PROVIDER_CLIENT_SECRET")]
        client_secret: String,
    },
    /// Inspect the outbox (DATABASE_URL): backlog, failures, dead rows; put
    /// dead rows back for delivery.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Payouts (DATABASE_URL): those the payment provider reported both
    /// paid and refused, to reconcile with the provider.
    Payouts {
        #[command(subcommand)]
        command: PayoutsCommand,
    },
    /// Benchmarks on the Postgres server of DATABASE_URL, in databases of
    /// their own.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Sustained open-loop load against a running stack over HTTP
    /// (DATABASE_URL, KAFKA_BROKERS): latency from when each request was due
    /// to its decision on ledger.events, and an exactly-once audit at the
    /// end. Exits non-zero when the audit fails.
    Load(ledgerctl_load::LoadArgs),
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// Dead letters with their reason, oldest first, as JSON lines.
    List {
        #[arg(long, default_value_t = 0)]
        partition: i32,
        #[arg(long)]
        from_offset: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Publish dead letters again to the commands topic, as they were. Fix
    /// the cause first; a command decided before is a no-op.
    Replay {
        #[arg(long, default_value_t = 0)]
        partition: i32,
        #[arg(long)]
        from_offset: i64,
        /// The offset after the last one to replay (default: just the one).
        #[arg(long)]
        to_offset: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Give a registered user a role: how the first admin is made.
    SetRole {
        #[arg(long)]
        email: String,
        /// customer, support, admin or ops.
        #[arg(long)]
        role: String,
    },
    /// Unfreeze a user: the way back when every admin is frozen.
    Unfreeze {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Create an API client; its secret is printed once and never stored.
    Create {
        /// A human-readable name, e.g. "mobile-app".
        #[arg(long)]
        name: String,
        /// Space- or comma-separated scopes, e.g. "accounts:read transfers:write".
        #[arg(long)]
        scopes: String,
    },
}

#[derive(Debug, Subcommand)]
enum PayoutsCommand {
    /// Payouts with contradicting provider outcomes, newest first, as JSON
    /// lines; the ledger kept the first outcome (`ledger_status`).
    Conflicts {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Backlog, retrying and dead rows, age of the oldest pending row, and
    /// failures by destination and reason, as JSON.
    Status,
    /// The oldest dead rows with their last error, as JSON lines.
    Dead {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Put dead rows back in their lanes with a fresh attempt budget.
    Retry {
        /// Outbox ids of dead rows.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        ids: Vec<i64>,
        /// Every dead row.
        #[arg(long)]
        all_dead: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the command, dead-letter and event topics if missing.
    Create {
        /// Partitions of the command and event topics.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 3)]
        replication: i32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A benchmark's stdout is its result, which a log line would corrupt.
    if matches!(cli.command, Command::Bench { .. } | Command::Load(_)) {
        platform::telemetry::init_on_stderr();
    } else {
        platform::telemetry::init();
    }
    match cli.command {
        Command::Migrate { create_database } => {
            let database = DatabaseConfig::from_env()?;
            if create_database {
                database.create_database_if_missing().await?;
            }
            let pool = database.connect().await?;
            schemas::MIGRATOR.run(&pool).await.context("migrating the database")?;
            println!("migrations applied");
        }
        Command::Clients { command: ClientsCommand::Create { name, scopes } } => {
            let scopes = scopes
                .split([' ', ','])
                .filter(|text| !text.is_empty())
                .map(ingest::domain::clients::Scope::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(!scopes.is_empty(), "give at least one scope");
            let pool = DatabaseConfig::from_env()?.connect().await?;
            let hasher =
                ingest::support::passwords::SecretHasher::new(ingest::support::passwords::Argon2Cost::from_env()?)?;
            let client = ingest::domain::clients::create_client(&pool, &hasher, &name, &scopes).await?;
            println!("client_id={}", client.id);
            println!("client_secret={}", client.secret.expose_secret());
            eprintln!("Store the secret now: it is not shown again.");
        }
        Command::Topics { command: TopicsCommand::Create { partitions, replication } } => {
            let kafka = KafkaConfig::from_env()?.context("KAFKA_BROKERS is required")?;
            kafka.create_topics(partitions, replication).await?;
            println!("topics ready: {}, {}, {}", kafka.topics.commands, kafka.topics.commands_dlq, kafka.topics.events);
        }
        Command::Dev(args) => dev::run(args).await?,
        Command::Users { command: UsersCommand::SetRole { email, role } } => {
            let pool = DatabaseConfig::from_env()?.connect().await?;
            let before = ingest::domain::users::set_role_by_email(&pool, &email, &role).await?;
            println!("{email}: {before} -> {role}");
        }
        Command::Users { command: UsersCommand::Unfreeze { email } } => {
            let pool = DatabaseConfig::from_env()?.connect().await?;
            ingest::domain::users::unfreeze_by_email(&pool, &email).await?;
            println!("{email}: unfrozen");
        }
        Command::Replay { partition, from_offset, to_offset, dry_run } => {
            let kafka = KafkaConfig::from_env()?.context("KAFKA_BROKERS is required")?;
            let pool = DatabaseConfig::from_env()?.connect().await?;
            let report = processor::replay::refeed(&kafka, &pool, partition, from_offset, to_offset, dry_run).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::DeadLetters { command } => dead_letters(command).await?,
        Command::Openapi => {
            println!("{}", ingest::router::openapi().to_pretty_json()?);
        }
        Command::Verify => {
            let pool = DatabaseConfig::from_env()?.connect().await?;
            let problems = processor::verify::problems(&pool).await.context("verifying the ledger")?;
            if problems.is_empty() {
                println!("ledger verified: no violations");
            } else {
                for problem in &problems {
                    println!("VIOLATION {problem}");
                }
                anyhow::bail!("{} violation(s) found", problems.len());
            }
        }
        Command::KafkaMock { brokers } => {
            let topics = KafkaConfig::topics_from_env()?;
            let mock = platform::kafka::MockKafka::start(brokers, &topics, 4)?;
            println!("KAFKA_BROKERS={}", mock.bootstrap_servers());
            platform::shutdown::signal().await;
        }
        Command::FakeProvider { addr, client_id, client_secret } => {
            let provider = outbox_relay::fake_provider::FakeProvider::start(addr, &client_id, &client_secret).await?;
            println!("LEDGERLINE_PROVIDER_BASE_URL={}", provider.base_url());
            println!("LEDGERLINE_PROVIDER_TOKEN_URL={}", provider.token_url());
            platform::shutdown::signal().await;
        }
        Command::Outbox { command } => {
            let pool = DatabaseConfig::from_env()?.connect().await?;
            match command {
                OutboxCommand::Status => {
                    let status = outbox_relay::admin::status(&pool).await.context("reading the outbox")?;
                    println!("{}", serde_json::to_string_pretty(&status)?);
                }
                OutboxCommand::Dead { limit } => {
                    for row in outbox_relay::admin::dead_rows(&pool, limit).await.context("reading the outbox")? {
                        println!("{}", serde_json::to_string(&row)?);
                    }
                }
                OutboxCommand::Retry { ids, all_dead } => {
                    let which = if all_dead {
                        outbox_relay::admin::Retry::AllDead
                    } else {
                        outbox_relay::admin::Retry::Ids(ids)
                    };
                    let count = outbox_relay::admin::retry(&pool, &which).await.context("retrying dead rows")?;
                    println!("{count} dead row(s) put back for delivery");
                }
            }
        }
        Command::Payouts { command: PayoutsCommand::Conflicts { limit } } => {
            let pool = DatabaseConfig::from_env()?.connect().await?;
            for conflict in platform::payouts::conflicts(&pool, limit).await.context("reading payout outcomes")? {
                println!("{}", serde_json::to_string(&conflict)?);
            }
        }
        Command::Bench { command } => bench::run(command).await?,
        Command::Load(args) => load(&args).await?,
    }
    Ok(())
}

/// `ledgerctl load`: Ctrl-C stops the sending; the drain, the audit and
/// the report still come.
async fn load(args: &ledgerctl_load::LoadArgs) -> anyhow::Result<()> {
    let config = ledgerctl_load::LoadConfig::from_args(args)?;
    let kafka = KafkaConfig::from_env()?.context("KAFKA_BROKERS is required (the load reads ledger.events)")?;
    let pool = DatabaseConfig::from_env()?.connect().await?;
    let stop = platform::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: draining, then the report");
                stop.cancel();
            }
        }
    });
    let outcome = ledgerctl_load::run(&config, &pool, &kafka, &stop).await?;
    if let Some(path) = &args.report {
        std::fs::write(path, ledgerctl_load::html_report(&outcome.report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string(&outcome.report)?);
    } else {
        print!("{}", outcome.report);
    }
    anyhow::ensure!(outcome.report.audit_ok, "the audit failed");
    Ok(())
}

/// Dead letters read from the DLQ topic, at most this many per command.
const DEAD_LETTERS_MAX: i64 = 10_000;

async fn dead_letters(command: DeadLettersCommand) -> anyhow::Result<()> {
    let kafka = KafkaConfig::from_env()?.context("KAFKA_BROKERS is required")?;
    let timeout = std::time::Duration::from_secs(30);
    let (partition, from_offset, limit) = match &command {
        DeadLettersCommand::List { partition, from_offset, limit } => (*partition, *from_offset, *limit),
        DeadLettersCommand::Replay { partition, from_offset, to_offset } => {
            (*partition, Some(*from_offset), to_offset.unwrap_or(from_offset + 1) - from_offset)
        }
    };
    anyhow::ensure!((1..=DEAD_LETTERS_MAX).contains(&limit), "read 1 to {DEAD_LETTERS_MAX} dead letters at a time");
    let reader = kafka.clone();
    let read = tokio::task::spawn_blocking(move || {
        let topic = reader.topics.commands_dlq.clone();
        reader.read_range(&topic, partition, from_offset, limit, timeout)
    })
    .await?
    .map_err(|error| anyhow::anyhow!("reading the dead-letter topic: {error}"))?;
    match command {
        DeadLettersCommand::List { .. } => {
            for message in &read.messages {
                let line = serde_json::json!({
                    "offset": message.offset,
                    "key": message.key.as_deref().map(String::from_utf8_lossy),
                    "reason": message.header("ledgerline-dlq-reason"),
                    "detail": message.header("ledgerline-dlq-detail"),
                    "source_partition": message.header("ledgerline-source-partition"),
                    "source_offset": message.header("ledgerline-source-offset"),
                    "payload": String::from_utf8_lossy(&message.payload),
                });
                println!("{line}");
            }
            eprintln!("{} dead letter(s); the topic ends at offset {}", read.messages.len(), read.end);
        }
        DeadLettersCommand::Replay { from_offset, .. } => {
            anyhow::ensure!(
                read.messages.first().is_some_and(|message| message.offset == from_offset),
                "no dead letter at offset {from_offset} (kept: {}..{})",
                read.start,
                read.end
            );
            let producer: rdkafka::producer::FutureProducer = kafka.producer().create()?;
            let (replayed, error) = platform::kafka::republish(
                &producer,
                &kafka.topics.commands,
                &kafka.topics.commands_dlq,
                partition,
                &read.messages,
                &format!("ledgerctl-{}", uuid::Uuid::new_v4()),
                std::time::Duration::from_millis(kafka.produce_timeout_ms),
            )
            .await;
            println!("replayed offsets {replayed:?}");
            if let Some(error) = error {
                return Err(error);
            }
        }
    }
    Ok(())
}
