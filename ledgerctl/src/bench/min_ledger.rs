//! The minimal Postgres ledger: the yardstick of what one Postgres session
//! can do for a ledger at all, so the processor's rate reads as a share of
//! it.
//!
//! Exactly the shape the throughput issue defines, and nothing more:
//! `accounts(id bigint primary key, balance bigint) with (fillfactor = 70)`,
//! `transfers(id uuid primary key, debit, credit, amount, debit_after,
//! credit_after, created_at)` with an index on `(debit, created_at)` and one
//! on `(credit, created_at)` (an account's history, either side), and one
//! transaction per [`CHUNK_TRANSFERS`] transfers, each a single statement
//! that inserts them with both balances after and applies the summed balance
//! change of every touched account. One session. No overdraft check, no
//! idempotency, no events, no Kafka: everything the real ledger must do on
//! top is what the ratio to this ceiling pays for.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use uuid::Uuid;

use super::{Server, Workload};

/// The minimal ledger's database, dropped and recreated by every run.
pub(super) const DATABASE: &str = "ledgerline_bench_min";
/// Transfers per transaction (and statement).
pub(super) const CHUNK_TRANSFERS: usize = 2_000;
/// What each account starts with, in cents: more than the workload can
/// take from any one of them, though nothing here would refuse an overdraft.
const OPENING_BALANCE_CENTS: i64 = 100_000_000;
/// The longest one chunk may take.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(120);

const CREATE_SQL: &str = r"
    create table accounts (id bigint primary key, balance bigint not null) with (fillfactor = 70);
    create table transfers (
        id uuid primary key,
        debit bigint not null,
        credit bigint not null,
        amount bigint not null,
        debit_after bigint not null,
        credit_after bigint not null,
        created_at timestamptz not null
    );
    create index transfers_debit on transfers (debit, created_at);
    create index transfers_credit on transfers (credit, created_at);";

/// One chunk: legs in order (debit before credit within a transfer), each
/// account's summed change applied once, the running balance of each leg
/// from the balance before the chunk, and the transfers inserted with both.
const APPLY_SQL: &str = r"
    with batch as (
        select * from unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
                      with ordinality as b (id, debit, credit, amount, n)
    ),
    legs as (
        select n, 1 as side, debit as account, -amount as delta from batch
        union all
        select n, 2, credit, amount from batch
    ),
    changes as (
        select account, sum(delta) as delta from legs group by account
    ),
    updated as (
        update accounts set balance = accounts.balance + changes.delta
        from changes where accounts.id = changes.account
        returning accounts.id, accounts.balance - changes.delta as before
    ),
    running as (
        select legs.n, legs.side,
               updated.before + sum(legs.delta) over (partition by legs.account order by legs.n, legs.side) as after
        from legs join updated on updated.id = legs.account
    )
    insert into transfers (id, debit, credit, amount, debit_after, credit_after, created_at)
    select batch.id, batch.debit, batch.credit, batch.amount, debit.after, credit.after, now()
    from batch
    join running debit on debit.n = batch.n and debit.side = 1
    join running credit on credit.n = batch.n and credit.side = 2";

/// One chunk's columns, built before the clock starts.
#[derive(Debug, Default)]
struct Chunk {
    ids: Vec<Uuid>,
    debits: Vec<i64>,
    credits: Vec<i64>,
    amounts: Vec<i64>,
}

/// Applies the workload to a fresh minimal ledger and returns how long the
/// applying took. Checks afterwards that the balances still sum to what they
/// started with and that every transfer is there.
pub(super) async fn measure(server: &Server, workload: Workload, accounts: u64) -> anyhow::Result<Duration> {
    eprintln!("{DATABASE}: creating it with {accounts} accounts");
    server.recreate_database(DATABASE).await?;
    let pool = server.connect(DATABASE).await?;
    sqlx::raw_sql(CREATE_SQL).execute(&pool).await.context("creating the minimal ledger")?;
    let count = i64::try_from(accounts).context("too many accounts")?;
    // Runtime queries, here and below: the minimal ledger's own tables (`CREATE_SQL`) are not the
    // migrated schema the macros check against.
    sqlx::query("insert into accounts (id, balance) select id, $2 from generate_series(1, $1::bigint) as id")
        .bind(count)
        .bind(OPENING_BALANCE_CENTS)
        .execute(&pool)
        .await
        .context("creating the accounts")?;
    sqlx::raw_sql("vacuum analyze accounts").execute(&pool).await.context("analyzing the accounts")?;

    let mut chunks = Vec::new();
    let mut chunk = Chunk::default();
    let mut transfers = 0_i64;
    for transfer in workload {
        chunk.ids.push(transfer.transfer_id);
        chunk.debits.push(i64::try_from(transfer.source_number).context("an account number")?);
        chunk.credits.push(i64::try_from(transfer.destination_number).context("an account number")?);
        chunk.amounts.push(transfer.amount_cents);
        transfers += 1;
        if chunk.ids.len() == CHUNK_TRANSFERS {
            chunks.push(std::mem::take(&mut chunk));
        }
    }
    if !chunk.ids.is_empty() {
        chunks.push(chunk);
    }

    eprintln!("{DATABASE}: applying {transfers} transfers, {CHUNK_TRANSFERS} per statement, one session (timed)");
    let mut connection = pool.acquire().await?;
    // Planned for each execution: from the sixth on, Postgres would reuse a
    // generic plan, which knows no array's length, estimates the CTEs at a
    // handful of rows and joins them in nested loops (measured: 45 ms per
    // chunk with a custom plan, 460 ms with the generic one).
    sqlx::raw_sql("set plan_cache_mode = force_custom_plan")
        .execute(&mut *connection)
        .await
        .context("setting plan_cache_mode")?;
    let started = Instant::now();
    for chunk in &chunks {
        let apply = async {
            let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
            // Runtime: the minimal ledger's tables, not the migrated schema.
            sqlx::query(APPLY_SQL)
                .bind(&chunk.ids)
                .bind(&chunk.debits)
                .bind(&chunk.credits)
                .bind(&chunk.amounts)
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await
        };
        tokio::time::timeout(CHUNK_TIMEOUT, apply)
            .await
            .with_context(|| format!("a chunk took over {} s", CHUNK_TIMEOUT.as_secs()))?
            .context("applying a chunk of the minimal ledger")?;
    }
    let elapsed = started.elapsed();
    drop(connection);

    // Runtime: the minimal ledger's tables, not the migrated schema.
    let (stored, total): (i64, Option<sqlx::types::Decimal>) =
        sqlx::query_as("select (select count(*) from transfers), (select sum(balance) from accounts)")
            .fetch_one(&pool)
            .await
            .context("checking the minimal ledger")?;
    anyhow::ensure!(stored == transfers, "{DATABASE}: {stored} transfers stored, {transfers} expected");
    let expected = sqlx::types::Decimal::from(count) * sqlx::types::Decimal::from(OPENING_BALANCE_CENTS);
    anyhow::ensure!(total == Some(expected), "{DATABASE}: the balances sum to {total:?}, not {expected}");
    pool.close().await;
    Ok(elapsed)
}
