//! The ledger's invariants, checked against the database from scratch:
//! `ledgerctl verify` and the tests run them.

use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// Recomputes everything that must hold and returns each violation found,
/// as a sentence; empty when the ledger is sound.
///
/// # Errors
/// Database errors.
pub async fn problems(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let mut problems = Vec::new();

    let balances: Vec<(Uuid, Decimal, Decimal)> = sqlx::query_as(
        r"select a.id, a.balance, coalesce(e.total, 0)
          from accounts a
          left join (select account_id, sum(amount) as total from entries group by account_id) e on e.account_id = a.id
          where a.balance <> coalesce(e.total, 0)",
    )
    .fetch_all(pool)
    .await?;
    problems.extend(
        balances
            .into_iter()
            .map(|(id, stored, computed)| format!("account {id}: balance {stored} but its entries sum to {computed}")),
    );

    let unbalanced: Vec<(Uuid, String, Decimal)> = sqlx::query_as(
        r"select transfer_id, currency::text, sum(amount) from entries
          group by transfer_id, currency having sum(amount) <> 0",
    )
    .fetch_all(pool)
    .await?;
    problems.extend(
        unbalanced
            .into_iter()
            .map(|(id, currency, sum)| format!("transfer {id}: its {currency} entries sum to {sum}, not zero")),
    );

    // Money is created only by system accounts going negative, so every
    // currency's balances sum to zero.
    let created: Vec<(String, Decimal)> =
        sqlx::query_as("select currency::text, sum(balance) from accounts group by currency having sum(balance) <> 0")
            .fetch_all(pool)
            .await?;
    problems.extend(
        created.into_iter().map(|(currency, sum)| format!("{currency} is not conserved: balances sum to {sum}")),
    );

    let overdrawn: Vec<(Uuid, Decimal, Decimal, Decimal)> = sqlx::query_as(
        r"select id, balance, held, overdraft_limit from accounts
          where kind = 'customer' and balance - held + overdraft_limit < 0",
    )
    .fetch_all(pool)
    .await?;
    problems.extend(overdrawn.into_iter().map(|(id, balance, held, limit)| {
        format!("account {id} is below its limit: balance {balance}, held {held}, overdraft limit {limit}")
    }));

    let held: Vec<(Uuid, Decimal, Decimal)> = sqlx::query_as(
        r"select a.id, a.held, coalesce(h.total, 0)
          from accounts a
          left join (select source_account_id, sum(amount) as total from transfers
                     where kind in ('hold', 'payout') and status = 'held' group by source_account_id) h
                 on h.source_account_id = a.id
          where a.held <> coalesce(h.total, 0)",
    )
    .fetch_all(pool)
    .await?;
    problems
        .extend(held.into_iter().map(|(id, stored, pending)| {
            format!("account {id}: held {stored} but its pending holds sum to {pending}")
        }));

    // Money moves only in completed transfers, deposits, posts and
    // reversals, each with exactly one debit and one credit.
    let misbooked: Vec<(Uuid, String, String, i64)> = sqlx::query_as(
        r"select t.id, t.kind, t.status, count(e.id)
          from transfers t left join entries e on e.transfer_id = t.id
          group by t.id, t.kind, t.status
          having count(e.id) <> case when t.status = 'completed' and t.kind in ('transfer', 'deposit', 'post', 'reversal')
                                     then 2 else 0 end",
    )
    .fetch_all(pool)
    .await?;
    problems.extend(
        misbooked
            .into_iter()
            .map(|(id, kind, status, count)| format!("transfer {id} ({kind}, {status}) has {count} entries")),
    );
    // Entries have no foreign keys (their triggers would cost more than the
    // inserts); their references are checked here instead.
    let orphans: Vec<(i64, Uuid, Uuid)> = sqlx::query_as(
        r"select e.id, e.transfer_id, e.account_id from entries e
          where not exists (select 1 from transfers t where t.id = e.transfer_id)
             or not exists (select 1 from accounts a where a.id = e.account_id)
          limit 100",
    )
    .fetch_all(pool)
    .await?;
    problems.extend(orphans.into_iter().map(|(id, transfer, account)| {
        format!("entry {id} refers to a missing transfer {transfer} or account {account}")
    }));

    // An account's history shows its entries in id order, each with the
    // balance after it: every balance after must be the sum of the
    // account's entries up to it. Entries numbered out of the order they
    // were applied in (written before their account was locked, say) break
    // this even when every total is right.
    let out_of_order: Vec<(i64, Uuid, Decimal, Decimal)> = sqlx::query_as(
        r"select id, account_id, balance_after, running from (
              select id, account_id, balance_after,
                     sum(amount) over (partition by account_id order by id) as running
              from entries
          ) e
          where balance_after <> running
          order by id
          limit 100",
    )
    .fetch_all(pool)
    .await?;
    problems.extend(out_of_order.into_iter().map(|(id, account, stored, running)| {
        format!("entry {id} of account {account}: balance after {stored}, but its account's entries up to it sum to {running}")
    }));
    Ok(problems)
}
