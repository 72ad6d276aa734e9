//! Applying one command to the ledger in one Postgres transaction: the
//! decision (transfer row), the entries, the balances, the outbox event and
//! the consumer offset commit together or not at all.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::messages::{TransferCompleted, TransferKind, TransferRejected, V1};
use schemas::{AccountId, Command, Currency, Event, Money, RejectionReason, TransferId};
use sqlx::{PgConnection, PgPool, Row as _};

use crate::decide::{self, AccountKind, AccountState, AccountStatus};

/// Where a message sits in Kafka, and so the offset to store once it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub cluster_id: String,
    pub consumer_group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Rejected(RejectionReason),
    /// The same command was decided before (a redelivery); nothing changed.
    AlreadyDecided,
    /// The transfer id was decided before for a different request; the new
    /// one is refused with `idempotency_key_reused` and nothing is applied.
    IdempotencyKeyReused,
}

/// A command reduced to the movement it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Movement {
    transfer_id: TransferId,
    kind: TransferKind,
    source_account_id: AccountId,
    destination_account_id: AccountId,
    money: Money,
    requested_at: DateTime<Utc>,
}

impl From<&Command> for Movement {
    fn from(command: &Command) -> Self {
        match command {
            Command::TransferRequested(request) => Self {
                transfer_id: request.transfer_id,
                kind: TransferKind::Transfer,
                source_account_id: request.source_account_id,
                destination_account_id: request.destination_account_id,
                money: request.money,
                requested_at: request.requested_at,
            },
            Command::AccountDeposited(deposit) => Self {
                transfer_id: deposit.transfer_id,
                kind: TransferKind::Deposit,
                source_account_id: AccountId::cash_in(deposit.money.currency()),
                destination_account_id: deposit.account_id,
                money: deposit.money,
                requested_at: deposit.requested_at,
            },
        }
    }
}

fn kind_code(kind: TransferKind) -> &'static str {
    match kind {
        TransferKind::Transfer => "transfer",
        TransferKind::Deposit => "deposit",
    }
}

/// Applies `command`, read at `position`, exactly once.
///
/// # Errors
/// Database errors; the transaction is rolled back and the caller retries.
#[tracing::instrument(skip_all, fields(transfer_id = %command.transfer_id(), partition = position.partition, offset = position.offset), err)]
pub async fn apply(pool: &PgPool, command: &Command, position: &Position) -> Result<Outcome, sqlx::Error> {
    let movement = Movement::from(command);
    let mut transaction = pool.begin().await?;
    let outcome = decide_and_write(&mut transaction, &movement, position).await?;
    store_offset(&mut transaction, position).await?;
    transaction.commit().await?;
    Ok(outcome)
}

async fn decide_and_write(
    connection: &mut PgConnection,
    movement: &Movement,
    position: &Position,
) -> Result<Outcome, sqlx::Error> {
    if let Some(previous) = load_previous(connection, movement.transfer_id).await? {
        if previous == (movement.kind, movement.source_account_id, movement.destination_account_id, movement.money) {
            return Ok(Outcome::AlreadyDecided);
        }
        // Not recorded in `transfers`: that row belongs to the first request.
        // The refusal is told to the world through the outbox.
        write_event(connection, &rejected_event(movement, RejectionReason::IdempotencyKeyReused)).await?;
        return Ok(Outcome::IdempotencyKeyReused);
    }

    let accounts = lock_accounts(connection, &[movement.source_account_id, movement.destination_account_id]).await?;
    let find = |id: AccountId| accounts.iter().find(|account| account.id == id);
    let decision = decide::decide_movement(
        movement.money,
        movement.source_account_id,
        movement.destination_account_id,
        find(movement.source_account_id),
        find(movement.destination_account_id),
    );

    let (status, reason) = match &decision {
        Ok(_) => ("completed", None),
        Err(reason) => ("rejected", Some(reason.code())),
    };
    sqlx::query(
        r"insert into transfers (id, kind, source_account_id, destination_account_id, amount, currency,
                                 status, rejection_reason, requested_at, kafka_topic, kafka_partition, kafka_offset)
          values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(movement.transfer_id.as_uuid())
    .bind(kind_code(movement.kind))
    .bind(movement.source_account_id.as_uuid())
    .bind(movement.destination_account_id.as_uuid())
    .bind(movement.money.amount().value())
    .bind(movement.money.currency().code())
    .bind(status)
    .bind(reason)
    .bind(movement.requested_at)
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset)
    .execute(&mut *connection)
    .await?;

    match decision {
        Ok(entries) => {
            decide::assert_balanced(&entries);
            let account_ids: Vec<uuid::Uuid> = entries.iter().map(|entry| entry.account_id.as_uuid()).collect();
            let amounts: Vec<Decimal> = entries.iter().map(|entry| entry.amount).collect();
            let currencies: Vec<&str> = entries.iter().map(|entry| entry.currency.code()).collect();
            let balances_after: Vec<Decimal> = entries.iter().map(|entry| entry.balance_after).collect();
            sqlx::query(
                r"insert into entries (transfer_id, account_id, amount, currency, balance_after)
                  select $1, account_id, amount, currency, balance_after
                  from unnest($2::uuid[], $3::numeric[], $4::text[], $5::numeric[])
                       as entry (account_id, amount, currency, balance_after)",
            )
            .bind(movement.transfer_id.as_uuid())
            .bind(&account_ids)
            .bind(&amounts)
            .bind(&currencies)
            .bind(&balances_after)
            .execute(&mut *connection)
            .await?;
            sqlx::query(
                r"update accounts set balance = accounts.balance + change.amount, updated_at = now()
                  from unnest($1::uuid[], $2::numeric[]) as change (account_id, amount)
                  where accounts.id = change.account_id",
            )
            .bind(&account_ids)
            .bind(&amounts)
            .execute(&mut *connection)
            .await?;
            write_event(connection, &completed_event(movement)).await?;
            Ok(Outcome::Completed)
        }
        Err(reason) => {
            write_event(connection, &rejected_event(movement, reason)).await?;
            Ok(Outcome::Rejected(reason))
        }
    }
}

type PreviousRequest = (TransferKind, AccountId, AccountId, Money);

async fn load_previous(
    connection: &mut PgConnection,
    transfer_id: TransferId,
) -> Result<Option<PreviousRequest>, sqlx::Error> {
    let Some(row) = sqlx::query(
        r"select kind, source_account_id, destination_account_id, amount, currency
          from transfers where id = $1",
    )
    .bind(transfer_id.as_uuid())
    .fetch_optional(&mut *connection)
    .await?
    else {
        return Ok(None);
    };
    let kind = match row.try_get::<&str, _>("kind")? {
        "deposit" => TransferKind::Deposit,
        _ => TransferKind::Transfer,
    };
    let currency = parse_currency(row.try_get("currency")?)?;
    let money = Money::new(row.try_get("amount")?, currency).map_err(|error| decode_error("amount", error))?;
    Ok(Some((
        kind,
        AccountId::from_uuid(row.try_get("source_account_id")?),
        AccountId::from_uuid(row.try_get("destination_account_id")?),
        money,
    )))
}

/// Locks the accounts in ascending id order: every processor takes its locks
/// in the same global order, so two transfers in opposite directions cannot
/// deadlock.
async fn lock_accounts(connection: &mut PgConnection, ids: &[AccountId]) -> Result<Vec<AccountState>, sqlx::Error> {
    let mut ids: Vec<uuid::Uuid> = ids.iter().map(AccountId::as_uuid).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query(
        r"select id, currency, kind, status, balance, held, overdraft_limit
          from accounts where id = any($1) order by id for update",
    )
    .bind(&ids)
    .fetch_all(&mut *connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(AccountState {
                id: AccountId::from_uuid(row.try_get("id")?),
                currency: parse_currency(row.try_get("currency")?)?,
                kind: match row.try_get::<&str, _>("kind")? {
                    "system" => AccountKind::System,
                    _ => AccountKind::Customer,
                },
                status: match row.try_get::<&str, _>("status")? {
                    "active" => AccountStatus::Active,
                    "frozen" => AccountStatus::Frozen,
                    _ => AccountStatus::Closed,
                },
                balance: row.try_get("balance")?,
                held: row.try_get("held")?,
                overdraft_limit: row.try_get("overdraft_limit")?,
            })
        })
        .collect()
}

fn parse_currency(code: &str) -> Result<Currency, sqlx::Error> {
    code.trim().parse().map_err(|error| decode_error("currency", error))
}

fn decode_error(column: &str, error: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.to_owned(), source: Box::new(error) }
}

fn completed_event(movement: &Movement) -> Event {
    Event::TransferCompleted(TransferCompleted {
        version: V1,
        transfer_id: movement.transfer_id,
        kind: movement.kind,
        source_account_id: movement.source_account_id,
        destination_account_id: movement.destination_account_id,
        money: movement.money,
        completed_at: Utc::now(),
    })
}

fn rejected_event(movement: &Movement, reason: RejectionReason) -> Event {
    Event::TransferRejected(TransferRejected {
        version: V1,
        transfer_id: movement.transfer_id,
        kind: movement.kind,
        reason,
        source_account_id: movement.source_account_id,
        destination_account_id: movement.destination_account_id,
        money: movement.money,
        rejected_at: Utc::now(),
    })
}

/// Queues an event for the outbox relay, keyed by the account it is about
/// (the one debited, or the one funded by a deposit).
async fn write_event(connection: &mut PgConnection, event: &Event) -> Result<(), sqlx::Error> {
    let key = match event {
        Event::TransferCompleted(TransferCompleted { kind: TransferKind::Deposit, destination_account_id, .. })
        | Event::TransferRejected(TransferRejected { kind: TransferKind::Deposit, destination_account_id, .. }) => {
            destination_account_id
        }
        Event::TransferCompleted(TransferCompleted { source_account_id, .. })
        | Event::TransferRejected(TransferRejected { source_account_id, .. }) => source_account_id,
    };
    let payload = serde_json::to_value(event).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    sqlx::query(r"insert into outbox (destination, event_type, message_key, payload) values ('events', $1, $2, $3)")
        .bind(event.type_name())
        .bind(key.to_string())
        .bind(payload)
        .execute(connection)
        .await?;
    Ok(())
}

/// Records that every message of the partition up to `position` is done.
/// It never moves backwards: a late, redelivered message (whose effect is a
/// no-op) must not rewind the partition.
///
/// # Errors
/// Database errors.
pub async fn store_offset(connection: &mut PgConnection, position: &Position) -> Result<(), sqlx::Error> {
    sqlx::query(
        r"insert into consumer_offsets (cluster_id, consumer_group, topic, partition, next_offset)
          values ($1, $2, $3, $4, $5)
          on conflict (cluster_id, consumer_group, topic, partition) do update
          set next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset), updated_at = now()",
    )
    .bind(&position.cluster_id)
    .bind(&position.consumer_group)
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset + 1)
    .execute(connection)
    .await?;
    Ok(())
}

/// The stored next offsets of `topic` for this cluster and group, by partition.
///
/// # Errors
/// Database errors.
pub async fn load_offsets(
    pool: &PgPool,
    cluster_id: &str,
    consumer_group: &str,
    topic: &str,
) -> Result<Vec<(i32, i64)>, sqlx::Error> {
    sqlx::query_as(
        r"select partition, next_offset from consumer_offsets
          where cluster_id = $1 and consumer_group = $2 and topic = $3",
    )
    .bind(cluster_id)
    .bind(consumer_group)
    .bind(topic)
    .fetch_all(pool)
    .await
}

/// How many partitions of `topic` have offsets stored under another cluster
/// id: a sign the broker was replaced and its topics started empty.
///
/// # Errors
/// Database errors.
pub async fn offsets_of_other_clusters(
    pool: &PgPool,
    cluster_id: &str,
    consumer_group: &str,
    topic: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        r"select count(*) from consumer_offsets
          where cluster_id <> $1 and consumer_group = $2 and topic = $3",
    )
    .bind(cluster_id)
    .bind(consumer_group)
    .bind(topic)
    .fetch_one(pool)
    .await
}
