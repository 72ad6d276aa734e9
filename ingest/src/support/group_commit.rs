//! Group commit: the writes of many requests in one statement and one
//! commit, each request still waiting for its own answer.
//!
//! A transaction per request costs a round trip, a commit and (when it is
//! durable) a WAL flush each; at a few thousand requests a second that is
//! the ceiling of the front door, not the work itself. A [`GroupCommit`]
//! queues the requests' items; each of its workers takes what has queued
//! (at most `batch_size_max`), writes it with one call of its flush
//! function, and answers every waiter with its own result. Nothing waits to
//! fill a batch: an idle service writes a lone request at once, a busy one
//! writes together what queued while the previous flush ran. The guarantee
//! a request gets is unchanged: it is answered only after its item's
//! transaction committed (or failed, and then it gets the error).

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::ApiError;

/// Limits of one group commit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupCommitLimits {
    /// Flushes running at once (each on its own connection).
    pub workers: usize,
    /// Items written by one flush at most.
    pub batch_size_max: usize,
    /// Items queued at most; a request past it waits for room.
    pub queue_max: usize,
}

type Answer<O> = oneshot::Sender<Result<O, Arc<sqlx::Error>>>;

/// The queue's receiving end, shared by the workers.
type Queue<I, O> = Arc<Mutex<mpsc::Receiver<(I, Answer<O>)>>>;

/// A queue of items written in groups; see the module docs.
#[derive(Debug)]
pub(crate) struct GroupCommit<I, O> {
    name: &'static str,
    queue: mpsc::Sender<(I, Answer<O>)>,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        Self { name: self.name, queue: self.queue.clone() }
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts the workers. `flush` writes a batch and returns one output per
    /// item, in the items' order. The workers end when every handle is
    /// dropped and the queue is empty.
    ///
    /// # Panics
    /// When a limit is zero.
    pub(crate) fn spawn<F, Fut>(name: &'static str, limits: GroupCommitLimits, flush: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, sqlx::Error>> + Send + 'static,
    {
        assert!(limits.workers > 0 && limits.batch_size_max > 0 && limits.queue_max > 0, "{name}: zero limit");
        let (queue, receiver) = mpsc::channel(limits.queue_max);
        let receiver = Arc::new(Mutex::new(receiver));
        let flush = Arc::new(flush);
        for _ in 0..limits.workers {
            tokio::spawn(work(name, limits.batch_size_max, Arc::clone(&receiver), Arc::clone(&flush)));
        }
        Self { name, queue }
    }

    /// Queues `item` and waits until the batch holding it is written.
    ///
    /// # Errors
    /// The flush's error (every item of a failed batch gets it), or 500
    /// when the workers are gone.
    pub(crate) async fn submit(&self, item: I) -> Result<O, ApiError> {
        let (answer, answered) = oneshot::channel();
        let gone = || ApiError::Internal(anyhow::anyhow!("the {} group commit has stopped", self.name));
        self.queue.send((item, answer)).await.map_err(|_| gone())?;
        match answered.await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(ApiError::Internal(anyhow::Error::new(error).context(self.name))),
            Err(_) => Err(gone()),
        }
    }
}

async fn work<I, O, F, Fut>(name: &'static str, batch_size_max: usize, receiver: Queue<I, O>, flush: Arc<F>)
where
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Result<Vec<O>, sqlx::Error>>,
{
    let mut batch = Vec::with_capacity(batch_size_max);
    loop {
        {
            // One worker at a time takes what has queued; the others flush
            // meanwhile, so a flush never waits behind another's.
            let mut receiver = receiver.lock().await;
            if receiver.recv_many(&mut batch, batch_size_max).await == 0 {
                return;
            }
        }
        let (items, answers): (Vec<I>, Vec<Answer<O>>) = batch.drain(..).unzip();
        let count = items.len();
        match flush(items).await {
            Ok(outputs) if outputs.len() == count => {
                for (answer, output) in answers.into_iter().zip(outputs) {
                    // A waiter that gave up (its request was cancelled) is
                    // no error: its item is written all the same.
                    let _ = answer.send(Ok(output));
                }
            }
            Ok(outputs) => {
                let error = Arc::new(sqlx::Error::Protocol(format!(
                    "{name}: a flush of {count} items returned {} outputs",
                    outputs.len()
                )));
                for answer in answers {
                    let _ = answer.send(Err(Arc::clone(&error)));
                }
            }
            Err(error) => {
                tracing::warn!(%error, batch = count, "{name}: a group commit failed");
                let error = Arc::new(error);
                for answer in answers {
                    let _ = answer.send(Err(Arc::clone(&error)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn limits(workers: usize) -> GroupCommitLimits {
        GroupCommitLimits { workers, batch_size_max: 8, queue_max: 64 }
    }

    #[tokio::test]
    async fn each_waiter_gets_its_own_output_and_busy_queues_are_written_together() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&flushes);
        let doubling = GroupCommit::spawn("doubling", limits(1), move |items: Vec<u32>| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                // Slow enough that the others queue behind the first flush.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(items.into_iter().map(|item| item * 2).collect())
            }
        });
        let waiters: Vec<_> = (0..40u32)
            .map(|item| {
                let doubling = doubling.clone();
                tokio::spawn(async move { (item, doubling.submit(item).await.expect("flushed")) })
            })
            .collect();
        for waiter in waiters {
            let (item, output) = waiter.await.expect("joined");
            assert_eq!(output, item * 2);
        }
        let flushes = flushes.load(Ordering::Relaxed);
        assert!(flushes >= 40 / 8, "a flush writes at most batch_size_max items: {flushes}");
        assert!(flushes < 40, "queued items are written together, not one by one: {flushes} flushes");
    }

    #[tokio::test]
    async fn every_item_of_a_failed_flush_gets_the_error() {
        let failing = GroupCommit::spawn("failing", limits(2), |_items: Vec<u32>| async {
            Err::<Vec<u32>, _>(sqlx::Error::PoolTimedOut)
        });
        for item in 0..3 {
            assert!(failing.submit(item).await.is_err());
        }
    }

    #[tokio::test]
    async fn a_flush_that_answers_for_the_wrong_number_of_items_fails_them_all() {
        let short = GroupCommit::spawn("short", limits(1), |_items: Vec<u32>| async { Ok(Vec::<u32>::new()) });
        assert!(short.submit(1).await.is_err());
    }
}
