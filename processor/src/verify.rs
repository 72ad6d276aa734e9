//! The ledger's invariants, checked against the database from scratch:
//! `ledgerctl verify` and the tests run them.

use sqlx::PgPool;

/// Recomputes everything that must hold and returns each violation found,
/// as a sentence; empty when the ledger is sound.
///
/// # Errors
/// Database errors.
pub async fn problems(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let mut problems = Vec::new();
    problems.extend(balances_off_their_entries(pool).await?);
    problems.extend(unbalanced_transfers(pool).await?);
    problems.extend(currencies_not_conserved(pool).await?);
    problems.extend(accounts_below_their_limit(pool).await?);
    problems.extend(held_off_pending_holds(pool).await?);
    problems.extend(misbooked_transfers(pool).await?);
    problems.extend(orphan_entries(pool).await?);
    problems.extend(entries_out_of_order(pool).await?);
    Ok(problems)
}

/// Accounts whose balance is not the sum of their entries.
async fn balances_off_their_entries(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    // `a` is the preserved side of the left join, so its columns are never
    // null; the macro's inference cannot tell.
    let rows = sqlx::query!(
        r#"select a.id as "id!", a.balance as "balance!", coalesce(e.total, 0) as "computed!"
          from accounts a
          left join (select account_id, sum(amount) as total from entries group by account_id) e on e.account_id = a.id
          where a.balance <> coalesce(e.total, 0)"#,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| format!("account {}: balance {} but its entries sum to {}", row.id, row.balance, row.computed))
        .collect())
}

/// Transfers whose entries in a currency do not sum to zero.
async fn unbalanced_transfers(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select transfer_id, currency::text as "currency!", sum(amount) as "sum!" from entries
          group by transfer_id, currency having sum(amount) <> 0"#,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| format!("transfer {}: its {} entries sum to {}, not zero", row.transfer_id, row.currency, row.sum))
        .collect())
}

/// Currencies whose balances do not sum to zero. Money is created only by
/// system accounts going negative, so every currency's balances sum to
/// zero.
async fn currencies_not_conserved(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select currency::text as "currency!", sum(balance) as "sum!"
          from accounts group by currency having sum(balance) <> 0"#,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| format!("{} is not conserved: balances sum to {}", row.currency, row.sum)).collect())
}

/// Customer accounts that spent past their overdraft limit.
async fn accounts_below_their_limit(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query!(
        r"select id, balance, held, overdraft_limit from accounts
          where kind = 'customer' and balance - held + overdraft_limit < 0",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            format!(
                "account {} is below its limit: balance {}, held {}, overdraft limit {}",
                row.id, row.balance, row.held, row.overdraft_limit
            )
        })
        .collect())
}

/// Accounts whose held amount is not the sum of their pending holds and
/// payouts.
async fn held_off_pending_holds(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select a.id, a.held, coalesce(h.total, 0) as "pending!"
          from accounts a
          left join (select source_account_id, sum(amount) as total from transfers
                     where kind in ('hold', 'payout') and status = 'held' group by source_account_id) h
                 on h.source_account_id = a.id
          where a.held <> coalesce(h.total, 0)"#,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| format!("account {}: held {} but its pending holds sum to {}", row.id, row.held, row.pending))
        .collect())
}

/// Transfers with another number of entries than their kind and status
/// call for. Money moves only in completed transfers, deposits, posts and
/// reversals, each with exactly one debit and one credit.
async fn misbooked_transfers(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select t.id, t.kind, t.status, count(e.id) as "count!"
          from transfers t left join entries e on e.transfer_id = t.id
          group by t.id, t.kind, t.status
          having count(e.id) <> case when t.status = 'completed' and t.kind in ('transfer', 'deposit', 'post', 'reversal')
                                     then 2 else 0 end"#,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| format!("transfer {} ({}, {}) has {} entries", row.id, row.kind, row.status, row.count))
        .collect())
}

/// Entries that refer to a missing transfer or account, at most 100.
/// Entries have no foreign keys (their triggers would cost more than the
/// inserts); their references are checked here instead.
async fn orphan_entries(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query!(
        r"select e.id, e.transfer_id, e.account_id from entries e
          where not exists (select 1 from transfers t where t.id = e.transfer_id)
             or not exists (select 1 from accounts a where a.id = e.account_id)
          limit 100",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            format!("entry {} refers to a missing transfer {} or account {}", row.id, row.transfer_id, row.account_id)
        })
        .collect())
}

/// Entries whose balance after is not the sum of their account's entries
/// up to them, at most 100. An account's history shows its entries in id
/// order, each with the balance after it; entries numbered out of the order
/// they were applied in (written before their account was locked, say)
/// break this even when every total is right.
async fn entries_out_of_order(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select id, account_id, balance_after, running as "running!"
          from (
              select id, account_id, balance_after,
                     sum(amount) over (partition by account_id order by id) as running
              from entries
          ) e
          where balance_after <> running
          order by id
          limit 100"#,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            format!(
                "entry {} of account {}: balance after {}, but its account's entries up to it sum to {}",
                row.id, row.account_id, row.balance_after, row.running
            )
        })
        .collect())
}
