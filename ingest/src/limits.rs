//! Token-bucket rate limits: per API client on every authenticated route,
//! per client IP on the token endpoint (where nobody is authenticated yet,
//! and a password-guessing client would aim).
//!
//! Each key has a bucket of `burst` tokens refilled at `rate_per_s`; a
//! request takes one, and an empty bucket answers 429 with `Retry-After`.
//! Buckets live in this process: with several ingest instances behind a
//! load balancer, a client's effective limit is the sum over instances.
//! The map is bounded: past `keys_max` keys, idle (full) buckets are
//! dropped, and if none is idle a new key waits like an empty bucket.
//! Integer arithmetic in thousandths of a token: no floats in this code.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// Thousandths of a token per token.
const MILLI: u64 = 1_000;

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Tokens added per second.
    pub rate_per_s: u64,
    /// The bucket's size: how many requests may come at once.
    pub burst: u64,
}

#[derive(Debug)]
struct Bucket {
    milli_tokens: u64,
    refilled_at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter<K> {
    limit: RateLimit,
    keys_max: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    #[must_use]
    pub fn new(limit: RateLimit, keys_max: usize) -> Self {
        Self { limit, keys_max, buckets: Mutex::new(HashMap::new()) }
    }

    fn capacity(&self) -> u64 {
        self.limit.burst.max(1) * MILLI
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed_ms = u64::try_from(now.duration_since(bucket.refilled_at).as_millis()).unwrap_or(u64::MAX);
        // rate_per_s tokens per second is rate_per_s thousandths per ms.
        let added = elapsed_ms.saturating_mul(self.limit.rate_per_s);
        bucket.milli_tokens = bucket.milli_tokens.saturating_add(added).min(self.capacity());
        bucket.refilled_at = now;
    }

    /// Takes a token for `key`, or says in how many seconds one will be there.
    ///
    /// # Errors
    /// The seconds to wait (at least 1) when the bucket is empty.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= self.keys_max {
            let capacity = self.capacity();
            buckets.retain(|_, bucket| {
                let elapsed_ms = u64::try_from(now.duration_since(bucket.refilled_at).as_millis()).unwrap_or(u64::MAX);
                bucket.milli_tokens.saturating_add(elapsed_ms.saturating_mul(self.limit.rate_per_s)) < capacity
            });
            if buckets.len() >= self.keys_max {
                return Err(1);
            }
        }
        let capacity = self.capacity();
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { milli_tokens: capacity, refilled_at: now });
        self.refill(bucket, now);
        if bucket.milli_tokens >= MILLI {
            bucket.milli_tokens -= MILLI;
            return Ok(());
        }
        let missing = MILLI - bucket.milli_tokens;
        let wait_ms = missing.div_ceil(self.limit.rate_per_s.max(1));
        Err(wait_ms.div_ceil(1_000).max(1))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_keys_are_apart() {
        let limiter = RateLimiter::new(RateLimit { rate_per_s: 2, burst: 3 }, 100);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at(&"a", start), Ok(()));
        }
        assert_eq!(limiter.check_at(&"a", start), Err(1), "empty: a token in 0.5 s, told as 1 s");
        assert_eq!(limiter.check_at(&"b", start), Ok(()), "another key has its own bucket");
        assert_eq!(limiter.check_at(&"a", start + Duration::from_millis(499)), Err(1));
        assert_eq!(limiter.check_at(&"a", start + Duration::from_millis(500)), Ok(()));
        // Long idle: back to the burst, never above it.
        let later = start + Duration::from_secs(3_600);
        for _ in 0..3 {
            assert_eq!(limiter.check_at(&"a", later), Ok(()));
        }
        assert!(limiter.check_at(&"a", later).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limiter = RateLimiter::new(RateLimit { rate_per_s: 1, burst: 1 }, 100);
        let start = Instant::now();
        assert_eq!(limiter.check_at(&1, start), Ok(()));
        assert_eq!(limiter.check_at(&1, start + Duration::from_millis(10)), Err(1));
        let slow = RateLimiter::new(RateLimit { rate_per_s: 0, burst: 1 }, 100);
        assert_eq!(slow.check_at(&1, start), Ok(()));
        assert_eq!(slow.check_at(&1, start), Err(1));
    }

    #[test]
    fn the_map_is_bounded_and_idle_buckets_make_room() {
        let limiter = RateLimiter::new(RateLimit { rate_per_s: 10, burst: 1 }, 2);
        let start = Instant::now();
        assert_eq!(limiter.check_at(&1, start), Ok(()));
        assert_eq!(limiter.check_at(&2, start), Ok(()));
        assert_eq!(limiter.check_at(&3, start), Err(1), "full of busy keys: the newcomer waits");
        assert_eq!(limiter.check_at(&3, start + Duration::from_secs(1)), Ok(()), "idle buckets were dropped");
    }
}
