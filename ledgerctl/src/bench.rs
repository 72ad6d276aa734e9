//! `ledgerctl bench processor`: how fast the processor applies transfers,
//! next to two yardsticks measured on the same Postgres server in the same run.
//!
//! 1. The processor: N transfer commands pre-filled into an in-process Kafka
//!    mock cluster, then applied by a processor in a child process
//!    (`bench processor-worker`), so its peak RSS is its own and not the mock
//!    cluster's, which holds every message in memory.
//! 2. pgbench's TPC-B: what the server does with small write transactions.
//! 3. The SQL ceiling: the same transfers applied by one set-based statement
//!    per chunk of 2,000, with no Kafka and no per-transfer logic.
//! 4. The minimal Postgres ledger ([`min_ledger`]): the same transfers on
//!    the smallest schema a ledger can have, one statement per 2,000.
//!
//! With `--processors N`, a one-processor run of the same workload too, for
//! the scaling ratio.
//!
//! It drops and recreates its own databases (`ledgerline_bench`,
//! `ledgerline_bench_sql`, `ledgerline_bench_min`, `ledgerline_pgbench`) on the server of
//! `DATABASE_URL`, and touches no other. Progress goes to stderr; stdout
//! carries only the result, so `--json` output can be piped.

use std::collections::VecDeque;
use std::io::Read as _;
use std::process::Stdio;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use platform::kafka::{KafkaConfig, MockKafka};
use platform::postgres::DatabaseConfig;
use processor::{Processor, ProcessorConfig};
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use schemas::messages::{TransferRequested, V1};
use schemas::{AccountId, Command, Currency, Money, Topics, TransferId};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};
use uuid::Uuid;

mod load;
mod min_ledger;

/// The most transfers one run may generate.
const TRANSFERS_MAX: u64 = 100_000_000;
/// The most accounts one run may create; at least two, so a transfer has a
/// source and a distinct destination.
const ACCOUNTS_MAX: u64 = 10_000_000;
/// What each account is funded with: far more than its share of the
/// workload's debits (10 EUR at most each), so no transfer is rejected.
const FUNDING_PER_ACCOUNT_EUR: &str = "1000000.00";
/// The seed of the workload, so the processor and the SQL ceiling apply the
/// very same transfers.
const WORKLOAD_SEED: u64 = 0x6c65_6467_6572_6265;
/// The largest transfer of the workload, in cents (10.00 EUR).
const TRANSFER_AMOUNT_MAX_CENTS: i64 = 1_000;
/// The account paid by `--hot-share` of the transfers: account number 1.
const HOT_MERCHANT_NUMBER: u64 = 1;

const PROCESSOR_DATABASE: &str = "ledgerline_bench";
const SQL_DATABASE: &str = "ledgerline_bench_sql";
const PGBENCH_DATABASE: &str = "ledgerline_pgbench";
/// The mock cluster is fresh every run, so a fixed namespace cannot collide.
const TOPIC_NAMESPACE: &str = "bench";

/// Connections of each pool the bench opens: the processor and the SQL
/// ceiling each write on one connection at a time, so a few suffice.
const POOL_SIZE_MAX: u32 = 4;
/// How long a query waits for a pooled connection.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Deliveries awaited at most at once while pre-filling the topic: bounds
/// the parent's memory, and stays far below librdkafka's own queue limit
/// (100,000 messages), so enqueuing never fails for a full queue.
const PRODUCE_IN_FLIGHT_MAX: usize = 10_000;
/// How often the pre-fill reports progress.
const PRODUCE_PROGRESS_EVERY: u64 = 100_000;

/// The longest the processor may take to join the group and get partitions.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the worker reads the processor's command counter.
const COUNTER_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often the worker reports progress.
const PROGRESS_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// The worker gives up when the counter stands still this long.
const PROGRESS_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// What the parent allows the worker beyond its own timeouts (start, join,
/// stop) before killing it.
const WORKER_EXIT_MARGIN: Duration = Duration::from_secs(120);
/// How often a running child process is checked for exit.
const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(100);

const PGBENCH: &str = "pgbench";
const PGBENCH_SCALE: u32 = 10;
const PGBENCH_CLIENTS: u32 = 8;
const PGBENCH_THREADS: u32 = 2;
/// The longest `pgbench -i` may take (scale 10 takes seconds).
const PGBENCH_INIT_TIMEOUT: Duration = Duration::from_secs(600);
/// What a pgbench run may take beyond its `-T` duration.
const PGBENCH_RUN_MARGIN: Duration = Duration::from_secs(120);

/// Transfers per transaction (and per statement) of the SQL ceiling.
const SQL_CHUNK_TRANSFERS: u64 = 2_000;
/// The longest one chunk of the SQL ceiling may take.
const SQL_CHUNK_TIMEOUT: Duration = Duration::from_secs(120);
/// Rows per insert while loading the staging table (untimed).
const STAGING_ROWS_PER_INSERT: usize = 10_000;
/// The longest the setup of a ledger database (accounts, deposits) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(1_800);
/// The longest the invariant check after a run may take.
const LEDGER_CHECK_TIMEOUT: Duration = Duration::from_secs(1_800);

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchCommand {
    /// Measure the processor's throughput against pgbench TPC-B and a
    /// set-based SQL ceiling, on the server of DATABASE_URL.
    Processor(ProcessorArgs),
    /// The processor half of `bench processor`, run as its child process.
    #[command(hide = true)]
    ProcessorWorker(WorkerArgs),
    /// Find the rate the whole stack sustains under `ledgerctl load` (and,
    /// with --curve, the curve around it), against pgbench TPC-B on the
    /// server of DATABASE_URL.
    Load(load::LoadBenchArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProcessorArgs {
    /// Transfer commands to apply.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=TRANSFERS_MAX))]
    transfers: u64,
    /// Customer EUR accounts the transfers move money between.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(2..=ACCOUNTS_MAX))]
    accounts: u64,
    /// Fraction of the transfers (0 to 1) paid to one "hot merchant" account.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    hot_share: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Duration of the pgbench TPC-B run, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pgbench_seconds: u64,
    /// Partitions of the command topic. By default enough that no partition
    /// holds more than the mock cluster keeps (see `MOCK_PARTITION_BYTES_MAX`).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1024))]
    partitions: Option<i32>,
    /// The longest the processor may take to apply every transfer, in seconds.
    #[arg(long, default_value_t = 7_200, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    processor_timeout_s: u64,
    /// Processors in one consumer group applying the transfers together.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    processors: u64,
    /// Commands per batch (`LEDGERLINE_PROCESSOR_BATCH_SIZE_MAX`): fewer
    /// shorten each commit, more amortise each batch's round trips.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    batch_size_max: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// The mock cluster the parent hosts.
    #[arg(long)]
    brokers: String,
    /// The database on the server of DATABASE_URL. The URL itself stays in
    /// the environment, out of the process list: it may hold a password.
    #[arg(long)]
    database: String,
    #[arg(long)]
    topic_namespace: String,
    /// Commands to wait for.
    #[arg(long)]
    expect: u64,
    /// The longest to wait for them, in seconds.
    #[arg(long)]
    timeout_s: u64,
    /// Processors in the consumer group.
    #[arg(long, default_value_t = 1)]
    processors: usize,
    #[arg(long, default_value_t = 1_000)]
    batch_size_max: usize,
}

fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&share) { Ok(share) } else { Err(format!("{share} is not between 0 and 1")) }
}

pub(crate) async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Processor(args) => run_bench(args).await,
        BenchCommand::ProcessorWorker(args) => run_worker(args).await,
        BenchCommand::Load(args) => load::run(args).await,
    }
}

async fn run_bench(args: ProcessorArgs) -> anyhow::Result<()> {
    let server = Server::from_env()?;
    let processor = measure_processor(&server, &args, args.processors).await?;
    // The scaling ratio needs one processor on the same machine in the same hour.
    let one_processor = if args.processors > 1 { Some(measure_processor(&server, &args, 1).await?) } else { None };
    let pgbench_tps = measure_pgbench(&server, args.pgbench_seconds).await?;
    let ceiling_elapsed = measure_sql_ceiling(&server, &args).await?;
    let min_ledger_elapsed =
        min_ledger::measure(&server, Workload::new(args.transfers, args.accounts, args.hot_share), args.accounts)
            .await?;
    let report = BenchReport::new(
        &args,
        &processor,
        one_processor.as_ref(),
        Yardsticks { pgbench_tps, ceiling_elapsed, min_ledger_elapsed },
    );
    if args.json {
        println!("{}", serde_json::to_string(&report).context("serializing the report")?);
    } else {
        report.print_table();
    }
    Ok(())
}

/// The Postgres server of `DATABASE_URL`; the bench uses its address and
/// credentials, never its database.
struct Server {
    options: PgConnectOptions,
    /// For pgbench, which takes it from the environment only.
    password: Option<SecretString>,
}

impl Server {
    fn from_env() -> anyhow::Result<Self> {
        let url = DatabaseConfig::from_env()?.url;
        // The error of a bad URL would echo the URL, password included.
        let options = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid postgres:// URL"))?;
        Ok(Self { options, password: url_password(url.expose_secret()).map(SecretString::from) })
    }

    /// A pool on `database` of this server.
    async fn connect(&self, database: &str) -> anyhow::Result<PgPool> {
        // Set-based statements on a million rows are slow on purpose; sqlx
        // would warn about each.
        let options =
            self.options.clone().database(database).log_slow_statements(tracing::log::LevelFilter::Off, Duration::ZERO);
        PgPoolOptions::new()
            .max_connections(POOL_SIZE_MAX)
            .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to database {database}"))
    }

    /// Drops `database` if it exists and creates it empty.
    async fn recreate_database(&self, database: &str) -> anyhow::Result<()> {
        let mut maintenance = self
            .options
            .clone()
            .database("postgres")
            .connect()
            .await
            .context("connecting to the maintenance database `postgres`")?;
        // `with (force)` ends sessions an interrupted earlier run left behind.
        sqlx::raw_sql(&format!("drop database if exists {database} with (force)"))
            .execute(&mut maintenance)
            .await
            .with_context(|| format!("dropping database {database}"))?;
        sqlx::raw_sql(&format!("create database {database}"))
            .execute(&mut maintenance)
            .await
            .with_context(|| format!("creating database {database}"))?;
        maintenance.close().await.ok();
        Ok(())
    }

    /// A fresh, migrated ledger database with `accounts` funded customer
    /// accounts.
    async fn create_ledger(&self, database: &str, accounts: u64) -> anyhow::Result<PgPool> {
        eprintln!("{database}: creating it with {accounts} funded accounts");
        self.recreate_database(database).await?;
        let pool = self.connect(database).await?;
        schemas::MIGRATOR.run(&pool).await.with_context(|| format!("migrating {database}"))?;
        tokio::time::timeout(SETUP_TIMEOUT, create_funded_accounts(&pool, accounts))
            .await
            .with_context(|| format!("creating the accounts took over {} s", SETUP_TIMEOUT.as_secs()))??;
        Ok(pool)
    }

    /// `pgbench` against the bench's own database, with this server's
    /// address and user.
    fn pgbench(&self, arguments: &[&str]) -> std::process::Command {
        let host = self
            .options
            .get_socket()
            .map_or_else(|| self.options.get_host().to_owned(), |socket| socket.display().to_string());
        let mut command = std::process::Command::new(PGBENCH);
        command
            .args(["-h", &host, "-p", &self.options.get_port().to_string(), "-U", self.options.get_username()])
            .args(arguments)
            .arg(PGBENCH_DATABASE);
        if let Some(password) = &self.password {
            command.env("PGPASSWORD", password.expose_secret());
        }
        command
    }
}

/// The password in a `postgres://user:password@host/…` URL, percent-decoded.
fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let (user_info, _) = authority.rsplit_once('@')?;
    let (_, password) = user_info.split_once(':')?;
    let mut decoded = Vec::with_capacity(password.len());
    let mut bytes = password.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let high = char::from(bytes.next()?).to_digit(16)?;
            let low = char::from(bytes.next()?).to_digit(16)?;
            decoded.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            decoded.push(byte);
        }
    }
    String::from_utf8(decoded).ok()
}

/// The id of bench account `number` (1-based). The SQL that creates the
/// accounts computes the same ids ([`ACCOUNT_ID_SQL`]), so the workload can
/// name them without reading them back.
fn account_id(number: u64) -> Uuid {
    Uuid::from_u128(0xbe4c_0000_0000_4000_8000_0000_0000_0000 | u128::from(number))
}

/// [`account_id`] in SQL, of the series value `number`.
const ACCOUNT_ID_SQL: &str = "('be4c0000-0000-4000-8000-' || lpad(to_hex(number), 12, '0'))::uuid";
/// The id of the deposit that funded account `number`.
const DEPOSIT_ID_SQL: &str = "('be4cd000-0000-4000-8000-' || lpad(to_hex(number), 12, '0'))::uuid";

/// Creates the customer accounts set-based, each funded the way the ledger
/// records a deposit: a `deposit` transfer from the EUR cash-in account, a
/// debit entry on cash-in and a credit entry on the account, and both
/// balances updated. So every balance equals the sum of its entries from the
/// start, and the invariant check after a run covers the setup too.
async fn create_funded_accounts(pool: &PgPool, accounts: u64) -> anyhow::Result<()> {
    let count = i64::try_from(accounts).context("too many accounts")?;
    let funding = Decimal::from_str_exact(FUNDING_PER_ACCOUNT_EUR).context("the funding amount")?;
    let cash_in = AccountId::cash_in(Currency::EUR).as_uuid();
    let mut transaction = pool.begin().await?;
    // Runtime queries: their SQL is spliced from the id constants by `format!`.
    sqlx::query(&format!(
        r"insert into accounts (id, currency, kind, balance)
          select {ACCOUNT_ID_SQL}, 'EUR', 'customer', $2 from generate_series(1, $1::bigint) as number"
    ))
    .bind(count)
    .bind(funding)
    .execute(&mut *transaction)
    .await
    .context("creating the accounts")?;
    sqlx::query(&format!(
        r"insert into transfers (id, kind, source_account_id, destination_account_id, amount, currency,
                                 status, requested_at, kafka_topic, kafka_partition, kafka_offset)
          select {DEPOSIT_ID_SQL}, 'deposit', $3, {ACCOUNT_ID_SQL}, $2, 'EUR',
                 'completed', now(), 'bench-setup', 0, 0
          from generate_series(1, $1::bigint) as number"
    ))
    .bind(count)
    .bind(funding)
    .bind(cash_in)
    .execute(&mut *transaction)
    .await
    .context("recording the deposits")?;
    // Cash-in's entries carry its running balance, as if the deposits had
    // been applied one by one in account order.
    sqlx::query(&format!(
        r"insert into entries (transfer_id, account_id, amount, currency, balance_after)
          select {DEPOSIT_ID_SQL}, leg.account_id, leg.amount, 'EUR', leg.balance_after
          from generate_series(1, $1::bigint) as number,
               (select balance from accounts where id = $3) as cash_in,
               lateral (values (1, $3, -$2, cash_in.balance - $2 * number),
                               (2, {ACCOUNT_ID_SQL}, $2, $2)) as leg (side, account_id, amount, balance_after)
          order by number, leg.side"
    ))
    .bind(count)
    .bind(funding)
    .bind(cash_in)
    .execute(&mut *transaction)
    .await
    .context("recording the deposit entries")?;
    // The casts name the types the binds had: the macro's check leaves `$2 * $1` ambiguous without them.
    sqlx::query!(
        "update accounts set balance = balance - $2::numeric * $1::bigint, updated_at = now() where id = $3",
        count,
        funding,
        cash_in,
    )
    .execute(&mut *transaction)
    .await
    .context("debiting cash-in")?;
    // The workload names accounts by `account_id`; make sure the SQL agrees.
    let known = sqlx::query_scalar!(
        r#"select count(*) as "known!" from accounts where id = any($1)"#,
        &[account_id(1), account_id(accounts)][..],
    )
    .fetch_one(&mut *transaction)
    .await?;
    anyhow::ensure!(known == 2, "the accounts created in SQL do not have the ids the workload uses");
    transaction.commit().await?;
    Ok(())
}

/// One transfer of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedTransfer {
    transfer_id: Uuid,
    /// The accounts' numbers, from 1: the minimal ledger's ids.
    source_number: u64,
    destination_number: u64,
    source_account_id: Uuid,
    destination_account_id: Uuid,
    amount: Decimal,
    /// `amount` in cents: the minimal ledger's integer minor units.
    amount_cents: i64,
}

impl PlannedTransfer {
    fn to_command(&self) -> anyhow::Result<Command> {
        Ok(Command::TransferRequested(TransferRequested {
            version: V1,
            transfer_id: TransferId::from_uuid(self.transfer_id),
            source_account_id: AccountId::from_uuid(self.source_account_id),
            destination_account_id: AccountId::from_uuid(self.destination_account_id),
            money: Money::new(self.amount, Currency::EUR).context("a planned amount is not valid money")?,
            metadata: None,
            reference: None,
            requested_at: chrono::Utc::now(),
        }))
    }
}

/// The transfers of a run, generated lazily (a million need not sit in
/// memory) and from a fixed seed (the processor and the SQL ceiling apply
/// the same ones): random v4 ids, random distinct accounts, random amounts
/// from 0.01 to 10.00 EUR, and a share of them paid to the hot merchant.
#[derive(Debug)]
struct Workload {
    random: StdRng,
    accounts: u64,
    hot_share: f64,
    remaining: u64,
}

impl Workload {
    fn new(transfers: u64, accounts: u64, hot_share: f64) -> Self {
        Self { random: StdRng::seed_from_u64(WORKLOAD_SEED), accounts, hot_share, remaining: transfers }
    }
}

impl Iterator for Workload {
    type Item = PlannedTransfer;

    fn next(&mut self) -> Option<PlannedTransfer> {
        self.remaining = self.remaining.checked_sub(1)?;
        let destination = if self.random.gen_bool(self.hot_share) {
            HOT_MERCHANT_NUMBER
        } else {
            self.random.gen_range(1..=self.accounts)
        };
        // Uniform over the other accounts: draw among one fewer and skip the
        // destination.
        let mut source = self.random.gen_range(1..self.accounts);
        if source >= destination {
            source += 1;
        }
        let mut id = [0_u8; 16];
        self.random.fill_bytes(&mut id);
        let amount_cents = self.random.gen_range(1..=TRANSFER_AMOUNT_MAX_CENTS);
        Some(PlannedTransfer {
            transfer_id: uuid::Builder::from_random_bytes(id).into_uuid(),
            source_number: source,
            destination_number: destination,
            source_account_id: account_id(source),
            destination_account_id: account_id(destination),
            amount: Decimal::new(amount_cents, 2),
            amount_cents,
        })
    }
}

/// What the worker measured, one JSON line on its stdout.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerReport {
    commands: u64,
    dead_letters: u64,
    elapsed_s: f64,
    commit_p99_ms: Option<f64>,
    batches: u64,
    rss_peak_mb: f64,
    /// Batches by how they took their account locks (`first`, `late`,
    /// `late_rebalanced`, `late_redecided`), summed over the processors.
    batches_by_locking: std::collections::BTreeMap<String, u64>,
}

/// The processor's run as the parent saw it.
#[derive(Debug)]
struct ProcessorRun {
    worker: WorkerReport,
    rejected: u64,
}

/// librdkafka's mock cluster keeps at most 5 MiB per partition and deletes
/// older messages beyond that (`rdkafka_mock.c`), like a retention limit. A
/// pre-filled topic must stay below it, or commands vanish unapplied.
const MOCK_PARTITION_BYTES_MAX: u64 = 5 * 1024 * 1024;

/// A generous upper bound of one command's size on the mock's log.
const COMMAND_BYTES_MAX: u64 = 512;

impl ProcessorArgs {
    /// The partitions the command topic needs so that no partition overflows
    /// the mock's log: at least 4, and with room to spare.
    fn partitions(&self) -> anyhow::Result<i32> {
        let needed = (self.transfers * COMMAND_BYTES_MAX).div_ceil(MOCK_PARTITION_BYTES_MAX * 3 / 4);
        let needed = i32::try_from(needed.max(4)).context("too many partitions")?;
        match self.partitions {
            None => Ok(needed),
            Some(partitions) if partitions >= needed => Ok(partitions),
            Some(partitions) => anyhow::bail!(
                "{partitions} partitions cannot hold {} commands on the mock cluster (5 MiB each); use at least {needed}",
                self.transfers
            ),
        }
    }
}

async fn measure_processor(server: &Server, args: &ProcessorArgs, processors: u64) -> anyhow::Result<ProcessorRun> {
    let pool = server.create_ledger(PROCESSOR_DATABASE, args.accounts).await?;
    let topics = Topics::namespaced(TOPIC_NAMESPACE);
    let partitions = args.partitions()?;
    let mock = MockKafka::start(1, &topics, partitions)?;
    let kafka = mock.kafka_config(topics);
    eprintln!(
        "processor: publishing {} commands to {} ({} partitions)",
        args.transfers, kafka.topics.commands, partitions
    );
    publish(&kafka, Workload::new(args.transfers, args.accounts, args.hot_share)).await?;

    eprintln!("processor: applying them in a child process ({processors} processors)");
    let mut worker = std::process::Command::new(std::env::current_exe().context("locating the ledgerctl binary")?);
    worker.args([
        "bench",
        "processor-worker",
        "--brokers",
        &kafka.brokers,
        "--database",
        PROCESSOR_DATABASE,
        "--topic-namespace",
        TOPIC_NAMESPACE,
        "--expect",
        &args.transfers.to_string(),
        "--timeout-s",
        &args.processor_timeout_s.to_string(),
        "--processors",
        &processors.to_string(),
        "--batch-size-max",
        &args.batch_size_max.to_string(),
    ]);
    let timeout = Duration::from_secs(args.processor_timeout_s) + ASSIGNMENT_TIMEOUT + WORKER_EXIT_MARGIN;
    let output = run_child(worker, timeout, "the processor worker").await?;
    // The worker is done with the messages; free them before the next phases.
    drop(mock);
    let line = output.lines().rev().find(|line| !line.trim().is_empty()).context("the worker printed no result")?;
    let worker: WorkerReport =
        serde_json::from_str(line).with_context(|| format!("parsing the worker's result {line:?}"))?;
    anyhow::ensure!(
        worker.dead_letters == 0,
        "the processor dead-lettered {} commands (see its log above); the measurement is void",
        worker.dead_letters
    );
    let rejected = check_ledger(&pool, PROCESSOR_DATABASE, args.transfers).await?;
    Ok(ProcessorRun { worker, rejected })
}

/// Publishes the workload to the command topic, keyed as ingest keys it,
/// with at most [`PRODUCE_IN_FLIGHT_MAX`] deliveries outstanding.
async fn publish(kafka: &KafkaConfig, workload: Workload) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka.producer().create().context("creating the bench producer")?;
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::with_capacity(PRODUCE_IN_FLIGHT_MAX);
    let mut published: u64 = 0;
    for transfer in workload {
        let command = transfer.to_command()?;
        let payload = serde_json::to_vec(&command).context("serializing a command")?;
        let key = command.partition_key().to_string();
        if in_flight.len() >= PRODUCE_IN_FLIGHT_MAX
            && let Some(oldest) = in_flight.pop_front()
        {
            delivered(oldest).await?;
        }
        let delivery = producer
            .send_result(FutureRecord::to(&kafka.topics.commands).key(&key).payload(&payload))
            .map_err(|(error, _)| anyhow::Error::new(error).context("enqueuing a command"))?;
        in_flight.push_back(delivery);
        published += 1;
        if published.is_multiple_of(PRODUCE_PROGRESS_EVERY) {
            eprintln!("processor: {published} commands published");
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        delivered(delivery).await?;
    }
    Ok(())
}

async fn delivered(delivery: DeliveryFuture) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(anyhow::Error::new(error).context("the mock cluster refused a command")),
        Err(_) => anyhow::bail!("the producer dropped a delivery"),
    }
}

/// The child process: runs a processor until it has decided `expect`
/// commands, and prints what it measured as one JSON line.
async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let pool = Server::from_env()?.connect(&args.database).await?;
    let kafka = KafkaConfig::new(args.brokers, Topics::namespaced(&args.topic_namespace));
    let mut processors = (0..args.processors.max(1))
        .map(|_| {
            let mut config = ProcessorConfig::new(kafka.clone());
            config.batch_size_max = args.batch_size_max;
            Processor::start(config, pool.clone())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for processor in &processors {
        anyhow::ensure!(
            processor.wait_until_assigned(ASSIGNMENT_TIMEOUT).await,
            "a processor got no partitions within {} s",
            ASSIGNMENT_TIMEOUT.as_secs()
        );
    }
    let metrics: Vec<_> = processors.iter().map(Processor::metrics).collect();
    let commands_total = || metrics.iter().map(|metrics| metrics.commands_total()).sum::<u64>();
    let dead_letters_total = || metrics.iter().map(|metrics| metrics.dead_letters_total()).sum::<u64>();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let (mut last_count, mut last_progress, mut last_report) = (0, started, started);
    loop {
        // A dead-lettered command is done too; the parent refuses the run.
        let count = commands_total() + dead_letters_total();
        if count >= args.expect {
            break;
        }
        let now = Instant::now();
        if count > last_count {
            (last_count, last_progress) = (count, now);
        }
        anyhow::ensure!(now < deadline, "only {count} of {} commands applied within {} s", args.expect, args.timeout_s);
        anyhow::ensure!(
            now.duration_since(last_progress) < PROGRESS_STALL_TIMEOUT,
            "no command applied for {} s ({count} of {})",
            PROGRESS_STALL_TIMEOUT.as_secs(),
            args.expect
        );
        if now.duration_since(last_report) >= PROGRESS_REPORT_INTERVAL {
            eprintln!("processor: {count} of {} commands after {:.0} s", args.expect, started.elapsed().as_secs_f64());
            last_report = now;
        }
        let waits = processors.iter_mut().map(|processor| Box::pin(processor.wait()));
        tokio::select! {
            (result, _, _) = futures::future::select_all(waits) => {
                anyhow::bail!("a processor stopped on its own: {result:?}")
            }
            () = tokio::time::sleep(COUNTER_POLL_INTERVAL) => {}
        }
    }
    let elapsed = started.elapsed();
    for processor in processors {
        processor.stop().await.context("stopping a processor")?;
    }
    let report = WorkerReport {
        commands: commands_total(),
        dead_letters: dead_letters_total(),
        elapsed_s: elapsed.as_secs_f64(),
        // With several processors, the worst of their p99s.
        commit_p99_ms: metrics
            .iter()
            .filter_map(|metrics| metrics.commit_latency_quantile(990))
            .max()
            .map(milliseconds),
        batches: metrics.iter().map(|metrics| metrics.batches_total()).sum(),
        rss_peak_mb: kibibytes_to_mebibytes(peak_rss_kib()?),
        batches_by_locking: processor::Locking::ALL
            .into_iter()
            .map(|locking| {
                (locking.code().to_owned(), metrics.iter().map(|metrics| metrics.lockings_total(locking)).sum())
            })
            .collect(),
    };
    println!("{}", serde_json::to_string(&report).context("serializing the worker's result")?);
    Ok(())
}

/// This process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:")).context("no VmHWM in /proc/self/status")?;
    line.trim().trim_end_matches("kB").trim().parse().context("parsing VmHWM")
}

#[allow(clippy::float_arithmetic)] // A unit conversion for display; no money involved.
fn kibibytes_to_mebibytes(kibibytes: u64) -> f64 {
    kibibytes as f64 / 1024.0
}

#[allow(clippy::float_arithmetic)] // A unit conversion for display; no money involved.
fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs `pgbench -i` then a TPC-B run on a fresh database; returns its tps.
async fn measure_pgbench(server: &Server, seconds: u64) -> anyhow::Result<f64> {
    server.recreate_database(PGBENCH_DATABASE).await?;
    eprintln!("pgbench: initialising {PGBENCH_DATABASE} at scale {PGBENCH_SCALE}");
    let scale = PGBENCH_SCALE.to_string();
    run_child(server.pgbench(&["-i", "-q", "-s", &scale]), PGBENCH_INIT_TIMEOUT, "pgbench -i").await?;
    eprintln!("pgbench: TPC-B with {PGBENCH_CLIENTS} clients for {seconds} s");
    let (clients, threads, duration) = (PGBENCH_CLIENTS.to_string(), PGBENCH_THREADS.to_string(), seconds.to_string());
    let output = run_child(
        server.pgbench(&["-n", "-c", &clients, "-j", &threads, "-T", &duration]),
        Duration::from_secs(seconds) + PGBENCH_RUN_MARGIN,
        "pgbench",
    )
    .await?;
    parse_pgbench_tps(&output)
        .with_context(|| format!("no `tps = … (without initial connection time)` in pgbench's output:\n{output}"))
}

/// The tps of a pgbench run's summary (PostgreSQL 14 and later).
fn parse_pgbench_tps(output: &str) -> Option<f64> {
    output.lines().find_map(|line| {
        line.strip_prefix("tps = ")?.strip_suffix(" (without initial connection time)")?.trim().parse().ok()
    })
}

/// Applies the workload to a fresh ledger with set-based SQL only, in
/// chunks of [`SQL_CHUNK_TRANSFERS`]; returns how long the applying took.
async fn measure_sql_ceiling(server: &Server, args: &ProcessorArgs) -> anyhow::Result<Duration> {
    let pool = server.create_ledger(SQL_DATABASE, args.accounts).await?;
    eprintln!("{SQL_DATABASE}: staging {} transfers (untimed)", args.transfers);
    stage(&pool, Workload::new(args.transfers, args.accounts, args.hot_share)).await?;

    eprintln!("{SQL_DATABASE}: applying them in chunks of {SQL_CHUNK_TRANSFERS} (timed)");
    let transfers = i64::try_from(args.transfers).context("too many transfers")?;
    let chunk = i64::try_from(SQL_CHUNK_TRANSFERS).context("the chunk size")?;
    let started = Instant::now();
    let mut first = 1;
    while first <= transfers {
        let last = (first + chunk - 1).min(transfers);
        let apply = async {
            let mut transaction = pool.begin().await?;
            // Runtime: `bench_transfers` is created by the bench, not by the migrations the macros check against.
            sqlx::query(APPLY_CHUNK_SQL).bind(first).bind(last).execute(&mut *transaction).await?;
            transaction.commit().await
        };
        tokio::time::timeout(SQL_CHUNK_TIMEOUT, apply)
            .await
            .with_context(|| format!("a chunk took over {} s", SQL_CHUNK_TIMEOUT.as_secs()))?
            .with_context(|| format!("applying transfers {first} to {last}"))?;
        first = last + 1;
    }
    let elapsed = started.elapsed();
    check_ledger(&pool, SQL_DATABASE, args.transfers).await?;
    Ok(elapsed)
}

/// The staging table of the SQL ceiling: the workload, numbered.
const CREATE_STAGING_SQL: &str = r"
    create table bench_transfers (
        number bigint primary key,
        transfer_id uuid not null,
        source_account_id uuid not null,
        destination_account_id uuid not null,
        amount numeric(38, 4) not null,
        requested_at timestamptz not null default now()
    )";

/// Applies staged transfers `$1..=$2` in one statement: the transfer rows,
/// two entries per transfer carrying each account's running balance, and
/// one update per touched account with its summed change.
const APPLY_CHUNK_SQL: &str = r"
    with chunk as (
        select * from bench_transfers where number between $1 and $2
    ),
    new_transfers as (
        insert into transfers (id, kind, source_account_id, destination_account_id, amount, currency,
                               status, requested_at, kafka_topic, kafka_partition, kafka_offset)
        select transfer_id, 'transfer', source_account_id, destination_account_id, amount, 'EUR',
               'completed', requested_at, 'bench-sql', 0, number
        from chunk
    ),
    legs as (
        select transfer_id, number, 1 as side, source_account_id as account_id, -amount as amount from chunk
        union all
        select transfer_id, number, 2, destination_account_id, amount from chunk
    ),
    changes as (
        select account_id, sum(amount) as change from legs group by account_id
    ),
    updated as (
        update accounts set balance = accounts.balance + changes.change, updated_at = now()
        from changes where accounts.id = changes.account_id
        returning accounts.id, accounts.balance - changes.change as balance_before
    )
    insert into entries (transfer_id, account_id, amount, currency, balance_after)
    select legs.transfer_id, legs.account_id, legs.amount, 'EUR',
           updated.balance_before
               + sum(legs.amount) over (partition by legs.account_id order by legs.number, legs.side)
    from legs join updated on updated.id = legs.account_id
    order by legs.number, legs.side";

/// Loads the workload into the staging table, a few thousand rows per insert.
async fn stage(pool: &PgPool, workload: Workload) -> anyhow::Result<()> {
    sqlx::raw_sql(CREATE_STAGING_SQL).execute(pool).await.context("creating the staging table")?;
    let mut rows = StagingRows::default();
    for (index, transfer) in (1_i64..).zip(workload) {
        rows.numbers.push(index);
        rows.transfer_ids.push(transfer.transfer_id);
        rows.source_account_ids.push(transfer.source_account_id);
        rows.destination_account_ids.push(transfer.destination_account_id);
        rows.amounts.push(transfer.amount);
        if rows.numbers.len() >= STAGING_ROWS_PER_INSERT {
            rows.insert(pool).await?;
        }
    }
    rows.insert(pool).await?;
    // The chunks select by number range; fresh statistics make sure the
    // planner uses the primary key for it.
    sqlx::raw_sql("analyze bench_transfers").execute(pool).await.context("analyzing the staging table")?;
    Ok(())
}

#[derive(Debug, Default)]
struct StagingRows {
    numbers: Vec<i64>,
    transfer_ids: Vec<Uuid>,
    source_account_ids: Vec<Uuid>,
    destination_account_ids: Vec<Uuid>,
    amounts: Vec<Decimal>,
}

impl StagingRows {
    /// Inserts the rows held and empties them.
    async fn insert(&mut self, pool: &PgPool) -> anyhow::Result<()> {
        if self.numbers.is_empty() {
            return Ok(());
        }
        // Runtime: `bench_transfers` is created by the bench, not by the migrations the macros check against.
        sqlx::query(
            r"insert into bench_transfers (number, transfer_id, source_account_id, destination_account_id, amount)
              select * from unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::uuid[], $5::numeric[])",
        )
        .bind(&self.numbers)
        .bind(&self.transfer_ids)
        .bind(&self.source_account_ids)
        .bind(&self.destination_account_ids)
        .bind(&self.amounts)
        .execute(pool)
        .await
        .context("staging transfers")?;
        *self = Self::default();
        Ok(())
    }
}

/// Checks that a run left a sound ledger: every transfer of the workload
/// decided exactly once, and every invariant of `ledgerctl verify`. Returns
/// how many transfers were rejected.
async fn check_ledger(pool: &PgPool, database: &str, transfers: u64) -> anyhow::Result<u64> {
    eprintln!("{database}: checking the ledger's invariants (untimed)");
    let queries = async {
        let counts = sqlx::query!(
            r#"select count(*) as "decided!", count(*) filter (where status = 'rejected') as "rejected!"
               from transfers where kind = 'transfer'"#
        )
        .fetch_one(pool)
        .await?;
        let (decided, rejected) = (counts.decided, counts.rejected);
        let problems = processor::verify::problems(pool).await?;
        Ok::<_, sqlx::Error>((decided, rejected, problems))
    };
    let (decided, rejected, problems) = tokio::time::timeout(LEDGER_CHECK_TIMEOUT, queries)
        .await
        .with_context(|| format!("the ledger check took over {} s", LEDGER_CHECK_TIMEOUT.as_secs()))?
        .with_context(|| format!("checking the ledger of {database}"))?;
    anyhow::ensure!(
        u64::try_from(decided) == Ok(transfers),
        "{database}: {decided} transfers decided, {transfers} expected"
    );
    anyhow::ensure!(problems.is_empty(), "{database}: {} violation(s), first: {}", problems.len(), problems[0]);
    u64::try_from(rejected).context("a negative count")
}

/// Runs a child process to its end, killing it if it outlives `timeout`.
/// Its stderr goes to ours (progress, errors); its stdout is returned.
async fn run_child(mut command: std::process::Command, timeout: Duration, what: &str) -> anyhow::Result<String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut stdout = child.stdout.take().with_context(|| format!("no stdout of {what}"))?;
    // Read on a thread of its own, so the child never blocks on a full pipe
    // while we poll it.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{what} did not finish within {} s; killed it", timeout.as_secs());
        }
        tokio::time::sleep(CHILD_POLL_INTERVAL).await;
    };
    let output = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader of {what}'s output panicked"))?
        .with_context(|| format!("reading the output of {what}"))?;
    anyhow::ensure!(status.success(), "{what} failed ({status})");
    Ok(output)
}

/// The result of a run, as printed.
#[derive(Debug, Serialize)]
struct BenchReport {
    transfers: u64,
    accounts: u64,
    hot_share: f64,
    partitions: i32,
    processors: u64,
    batch_size_max: u64,
    transfers_per_s: f64,
    elapsed_s: f64,
    batches: u64,
    batches_by_locking: std::collections::BTreeMap<String, u64>,
    commit_p99_ms: Option<f64>,
    rss_peak_mb: f64,
    rejected: u64,
    pgbench_tps: f64,
    pgbench_scale: u32,
    pgbench_clients: u32,
    pgbench_seconds: u64,
    ratio_vs_pgbench: f64,
    sql_ceiling_per_s: f64,
    sql_ceiling_elapsed_s: f64,
    sql_ceiling_chunk: u64,
    ratio_vs_ceiling: f64,
    min_ledger_per_s: f64,
    min_ledger_elapsed_s: f64,
    min_ledger_chunk: usize,
    /// The run with `--processors N` beside one processor's, same workload.
    one_processor_per_s: Option<f64>,
    ratio_vs_one_processor: Option<f64>,
    /// Reported under the issue's name too: the processor's rate over the
    /// minimal ledger's.
    ratio_vs_min_ledger: f64,
}

/// What the processor's rate is set against, measured in the same run.
struct Yardsticks {
    pgbench_tps: f64,
    ceiling_elapsed: Duration,
    min_ledger_elapsed: Duration,
}

impl BenchReport {
    #[allow(clippy::float_arithmetic)] // Rates and ratios of a measurement; no money involved.
    fn new(
        args: &ProcessorArgs,
        processor: &ProcessorRun,
        one_processor: Option<&ProcessorRun>,
        yardsticks: Yardsticks,
    ) -> Self {
        let Yardsticks { pgbench_tps, ceiling_elapsed, min_ledger_elapsed } = yardsticks;
        let transfers = args.transfers as f64;
        let transfers_per_s = transfers / processor.worker.elapsed_s;
        let sql_ceiling_per_s = transfers / ceiling_elapsed.as_secs_f64();
        let min_ledger_per_s = transfers / min_ledger_elapsed.as_secs_f64();
        let one_processor_per_s = one_processor.map(|run| transfers / run.worker.elapsed_s);
        Self {
            transfers: args.transfers,
            accounts: args.accounts,
            hot_share: args.hot_share,
            partitions: args.partitions().unwrap_or_default(),
            processors: args.processors,
            batch_size_max: args.batch_size_max,
            transfers_per_s,
            elapsed_s: processor.worker.elapsed_s,
            batches: processor.worker.batches,
            batches_by_locking: processor.worker.batches_by_locking.clone(),
            commit_p99_ms: processor.worker.commit_p99_ms,
            rss_peak_mb: processor.worker.rss_peak_mb,
            rejected: processor.rejected,
            pgbench_tps,
            pgbench_scale: PGBENCH_SCALE,
            pgbench_clients: PGBENCH_CLIENTS,
            pgbench_seconds: args.pgbench_seconds,
            ratio_vs_pgbench: transfers_per_s / pgbench_tps,
            sql_ceiling_per_s,
            sql_ceiling_elapsed_s: ceiling_elapsed.as_secs_f64(),
            sql_ceiling_chunk: SQL_CHUNK_TRANSFERS,
            ratio_vs_ceiling: transfers_per_s / sql_ceiling_per_s,
            min_ledger_per_s,
            min_ledger_elapsed_s: min_ledger_elapsed.as_secs_f64(),
            min_ledger_chunk: min_ledger::CHUNK_TRANSFERS,
            one_processor_per_s,
            ratio_vs_one_processor: one_processor_per_s.map(|one| transfers_per_s / one),
            ratio_vs_min_ledger: transfers_per_s / min_ledger_per_s,
        }
    }

    fn print_table(&self) {
        let commit_p99 = self.commit_p99_ms.map_or_else(|| "-".to_owned(), |millis| format!("{millis:.2} ms"));
        println!(
            "{} transfers between {} accounts, hot share {:.2}, {} partitions, batches of up to {}",
            self.transfers, self.accounts, self.hot_share, self.partitions, self.batch_size_max
        );
        println!(
            "  processor            {:>12.1} transfers/s  ({:.2} s, {} batches, commit p99 {commit_p99}, peak RSS {:.1} MB, {} rejected)",
            self.transfers_per_s, self.elapsed_s, self.batches, self.rss_peak_mb, self.rejected
        );
        let lockings: Vec<String> =
            self.batches_by_locking.iter().map(|(locking, batches)| format!("{locking} {batches}")).collect();
        println!("  batches by locking   {}", lockings.join(", "));
        println!(
            "  pgbench TPC-B        {:>12.1} tps          (scale {}, {} clients, {} s)",
            self.pgbench_tps, self.pgbench_scale, self.pgbench_clients, self.pgbench_seconds
        );
        println!(
            "  SQL ceiling          {:>12.1} transfers/s  ({:.2} s, {} transfers per statement)",
            self.sql_ceiling_per_s, self.sql_ceiling_elapsed_s, self.sql_ceiling_chunk
        );
        println!(
            "  minimal ledger       {:>12.1} transfers/s  ({:.2} s, {} transfers per statement, one session)",
            self.min_ledger_per_s, self.min_ledger_elapsed_s, self.min_ledger_chunk
        );
        if let Some(one) = self.one_processor_per_s {
            println!("  one processor        {one:>12.1} transfers/s  (same workload, same run)");
        }
        println!("  processor / pgbench  {:>12.3}", self.ratio_vs_pgbench);
        println!("  processor / ceiling  {:>12.3}", self.ratio_vs_ceiling);
        println!("  processor / minimal  {:>12.3}", self.ratio_vs_min_ledger);
        if let Some(ratio) = self.ratio_vs_one_processor {
            println!("  processors / one     {ratio:>12.3}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tps_without_connection_time_is_read_from_pgbench_output() {
        let output = "\
pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 6543
number of failed transactions: 0 (0.000%)
latency average = 6.113 ms
initial connection time = 15.273 ms
tps = 1308.654321 (without initial connection time)
";
        assert_eq!(parse_pgbench_tps(output), Some(1308.654321));
        assert_eq!(parse_pgbench_tps("tps = 12.5 (including connections establishing)"), None);
        assert_eq!(parse_pgbench_tps(""), None);
    }

    #[test]
    fn the_password_of_a_database_url_is_percent_decoded() {
        assert_eq!(url_password("postgres://postgres@127.0.0.1:5432/ledgerline"), None);
        assert_eq!(url_password("postgres://bench:s3cret@db:5432/ledgerline"), Some("s3cret".to_owned()));
        assert_eq!(url_password("postgresql://bench:p%40ss%3Aword@db/x?sslmode=disable"), Some("p@ss:word".to_owned()));
        assert_eq!(url_password("postgres://bench:bad%zz@db/x"), None);
    }

    #[test]
    fn account_ids_match_the_sql_that_creates_them() {
        // lpad(to_hex(255), 12, '0') is '0000000000ff'.
        assert_eq!(account_id(255).to_string(), "be4c0000-0000-4000-8000-0000000000ff");
        assert!(ACCOUNT_ID_SQL.contains("'be4c0000-0000-4000-8000-'"));
    }

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        let first: Vec<PlannedTransfer> = Workload::new(1_000, 50, 0.3).collect();
        let again: Vec<PlannedTransfer> = Workload::new(1_000, 50, 0.3).collect();
        assert_eq!(first.len(), 1_000);
        assert_eq!(first, again);
    }

    #[test]
    fn planned_transfers_are_valid_commands_between_distinct_accounts() {
        let minimum = Decimal::new(1, 2);
        let maximum = Decimal::new(TRANSFER_AMOUNT_MAX_CENTS, 2);
        let accounts: Vec<Uuid> = (1..=3).map(account_id).collect();
        for transfer in Workload::new(10_000, 3, 0.0) {
            assert_ne!(transfer.source_account_id, transfer.destination_account_id);
            assert!(accounts.contains(&transfer.source_account_id));
            assert!(accounts.contains(&transfer.destination_account_id));
            assert!((minimum..=maximum).contains(&transfer.amount), "{}", transfer.amount);
            assert_eq!(transfer.transfer_id.get_version_num(), 4);
            assert!(transfer.to_command().is_ok());
        }
    }

    #[test]
    fn every_transfer_pays_the_hot_merchant_at_a_hot_share_of_one() {
        let hot = account_id(HOT_MERCHANT_NUMBER);
        assert!(Workload::new(1_000, 10, 1.0).all(|transfer| transfer.destination_account_id == hot));
        let paid_to_hot = Workload::new(10_000, 1_000, 0.2).filter(|transfer| transfer.destination_account_id == hot);
        assert!((1_800..=2_200).contains(&paid_to_hot.count()));
    }

    #[test]
    fn a_hot_share_outside_zero_to_one_is_refused() {
        assert_eq!(parse_share("0.2"), Ok(0.2));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("lots").is_err());
    }
}
