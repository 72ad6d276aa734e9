//! Waking the customers' long polls (`GET /v1/me/transfers/{id}?wait_ms=`)
//! from the ledger's decisions instead of a query every few milliseconds.
//!
//! One watcher per ingest instance holds one Postgres `LISTEN` connection on
//! the outbox's channel (`ledgerline_outbox`): every processor batch that
//! decides anything writes its events to the outbox in one statement, and
//! the outbox's trigger notifies once per statement, at commit. So a
//! notification means "something was decided": the watcher then asks, in
//! one query, which of the transfers being waited for are decided, and
//! wakes only their waiters. The processor's hot path pays nothing more.
//! Notifications can be missed (the connection drops, Postgres restarts),
//! so the watcher also looks every `fallback_poll_ms` while anyone waits.
//!
//! A waiter registers, then reads the status, then sleeps until woken or
//! its deadline: registering first means a decision committed after the
//! read always finds the waiter in the map. Waiters are bounded
//! (`waiters_max`); past that a status request answers at once, as if
//! `wait_ms` were 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::CancellationToken;
use platform::metrics::{IntCounter, IntGauge, Registry};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use uuid::Uuid;

/// The watcher's limits.
#[derive(Debug, Clone, Copy)]
pub struct DecisionWaitConfig {
    /// Status requests waiting at once, at most, per ingest instance.
    pub waiters_max: usize,
    /// How often the watcher looks while anyone waits, in case a
    /// notification was missed.
    pub fallback_poll_ms: u64,
}

impl Default for DecisionWaitConfig {
    fn default() -> Self {
        Self { waiters_max: 10_000, fallback_poll_ms: 1_000 }
    }
}

#[derive(Debug)]
struct Waiting {
    notify: Arc<Notify>,
    /// Requests waiting for this id (a client may poll one id twice).
    count: usize,
}

/// The transfers being waited for, and what the waiting cost.
#[derive(Debug)]
pub struct Decisions {
    waiting: Mutex<HashMap<Uuid, Waiting>>,
    /// Requests waiting now (changed under the `waiting` lock).
    waiters: IntGauge,
    config: DecisionWaitConfig,
    /// Status reads made by long polls (the first one and one per wake-up).
    status_reads: IntCounter,
    /// The watcher's queries for decided ids.
    watcher_queries: IntCounter,
    /// Long polls that answered at once because `waiters_max` were waiting.
    waiters_refused: IntCounter,
}

/// One waiting request; leaving it (drop) unregisters it.
#[derive(Debug)]
pub struct Registration {
    decisions: Arc<Decisions>,
    transfer_id: Uuid,
    notify: Arc<Notify>,
}

impl Registration {
    /// The handle to wait on; create its `notified()` future and `enable()`
    /// it before reading the status, so a wake-up in between is kept.
    #[must_use]
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Ok(mut waiting) = self.decisions.waiting.lock() else { return };
        self.decisions.waiters.dec();
        if let Some(entry) = waiting.get_mut(&self.transfer_id) {
            entry.count -= 1;
            if entry.count == 0 {
                waiting.remove(&self.transfer_id);
            }
        }
    }
}

impl Decisions {
    /// The waits of one ingest instance, counted in its `registry`.
    #[must_use]
    pub fn new(config: DecisionWaitConfig, registry: &Registry) -> Arc<Self> {
        use platform::metrics::{counter, gauge};
        Arc::new(Self {
            waiting: Mutex::new(HashMap::new()),
            waiters: gauge(registry, "ledgerline_long_poll_waiters", "Status requests waiting for a decision now"),
            config,
            status_reads: counter(
                registry,
                "ledgerline_long_poll_status_reads_total",
                "Status reads made for long polls: one on arrival, one per wake-up",
            ),
            watcher_queries: counter(
                registry,
                "ledgerline_long_poll_watcher_queries_total",
                "Queries of the decision watcher, one per notification or fallback poll while anyone waits",
            ),
            waiters_refused: counter(
                registry,
                "ledgerline_long_poll_waiters_refused_total",
                "Long polls answered at once because the most waiters already waited",
            ),
        })
    }

    /// Registers a waiter for `transfer_id`; `None` when `waiters_max`
    /// wait already.
    #[must_use]
    pub fn register(self: &Arc<Self>, transfer_id: Uuid) -> Option<Registration> {
        let mut waiting = self.waiting.lock().ok()?;
        let waiters_max = i64::try_from(self.config.waiters_max).unwrap_or(i64::MAX);
        if self.waiters.get() >= waiters_max {
            self.waiters_refused.inc();
            return None;
        }
        self.waiters.inc();
        let entry = waiting.entry(transfer_id).or_insert_with(|| Waiting { notify: Arc::new(Notify::new()), count: 0 });
        entry.count += 1;
        Some(Registration { decisions: Arc::clone(self), transfer_id, notify: Arc::clone(&entry.notify) })
    }

    /// Counts one status read made for a long poll.
    pub fn count_status_read(&self) {
        self.status_reads.inc();
    }

    fn waiting_ids(&self) -> Vec<Uuid> {
        self.waiting.lock().map(|waiting| waiting.keys().copied().collect()).unwrap_or_default()
    }

    fn wake(&self, decided: &[Uuid]) {
        let Ok(waiting) = self.waiting.lock() else { return };
        for id in decided {
            if let Some(entry) = waiting.get(id) {
                entry.notify.notify_waiters();
            }
        }
    }

    /// Watches for decisions until `shutdown`: one `LISTEN` connection, one
    /// query per wake-up while anyone waits.
    pub async fn watch(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        let fallback = Duration::from_millis(self.config.fallback_poll_ms);
        let mut listener: Option<PgListener> = None;
        while !shutdown.is_cancelled() {
            if listener.is_none() {
                match listen(&pool).await {
                    Ok(connected) => listener = Some(connected),
                    Err(error) => tracing::warn!(%error, "LISTEN for decisions failed; polling until it works"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(fallback) => {}
                received = async { listener.as_mut()?.recv().await.err() }, if listener.is_some() => {
                    if let Some(error) = received {
                        tracing::warn!(%error, "the LISTEN connection for decisions failed; reconnecting");
                        listener = None;
                    }
                }
            }
            // One query serves every notification that arrived meanwhile.
            if let Some(connected) = listener.as_mut() {
                while connected.next_buffered().is_some() {}
            }
            if let Err(error) = self.look(&pool).await {
                tracing::warn!(%error, "reading decisions for long polls");
            }
        }
    }

    /// Wakes the waiters whose transfer (or account command) is decided.
    async fn look(&self, pool: &PgPool) -> sqlx::Result<()> {
        let ids = self.waiting_ids();
        if ids.is_empty() {
            return Ok(());
        }
        self.watcher_queries.inc();
        let decided: Vec<Uuid> = sqlx::query_scalar!(
            r#"select id as "id!" from transfers where id = any($1)
              union all
              select id from account_commands where id = any($1)"#,
            &ids,
        )
        .fetch_all(pool)
        .await?;
        self.wake(&decided);
        Ok(())
    }
}

async fn listen(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(platform::outbox::NOTIFY_CHANNEL).await?;
    Ok(listener)
}
