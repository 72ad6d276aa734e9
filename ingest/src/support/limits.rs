//! Token-bucket rate limits: per API client on every authenticated route,
//! per client IP on the token endpoint (where nobody is authenticated yet,
//! and a password-guessing client would aim).
//!
//! Each key has a bucket of `burst` tokens refilled at `per_minute`; a
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

use crate::error::ApiError;

/// Thousandths of a token per token.
const MILLI: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per minute.
    pub per_minute: u64,
    /// The bucket's size: how many requests may come at once.
    pub burst: u64,
}

impl RateLimit {
    #[must_use]
    pub const fn per_second(rate: u64, burst: u64) -> Self {
        Self { per_minute: rate.saturating_mul(60), burst }
    }

    /// Thousandths of a token earned in `elapsed_ms`: `per_minute` tokens
    /// are `per_minute` × 1000 thousandths per 60 000 ms.
    fn earned(self, elapsed_ms: u64) -> u64 {
        elapsed_ms.saturating_mul(self.per_minute) / 60
    }
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

    /// What `bucket` holds at `now`, refills included.
    fn level(&self, bucket: &Bucket, now: Instant) -> u64 {
        let elapsed_ms = u64::try_from(now.duration_since(bucket.refilled_at).as_millis()).unwrap_or(u64::MAX);
        bucket.milli_tokens.saturating_add(self.limit.earned(elapsed_ms)).min(self.capacity())
    }

    /// Takes a token for `key`.
    ///
    /// # Errors
    /// 429 `rate_limited`, with the seconds until a token is there (at
    /// least 1), when the bucket is empty.
    pub fn admit(&self, key: &K) -> Result<(), ApiError> {
        self.check_at(key, Instant::now()).map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= self.keys_max {
            let capacity = self.capacity();
            buckets.retain(|_, bucket| self.level(bucket, now) < capacity);
            if buckets.len() >= self.keys_max {
                return Err(1);
            }
        }
        let capacity = self.capacity();
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { milli_tokens: capacity, refilled_at: now });
        bucket.milli_tokens = self.level(bucket, now);
        bucket.refilled_at = now;
        if bucket.milli_tokens >= MILLI {
            bucket.milli_tokens -= MILLI;
            return Ok(());
        }
        let missing = MILLI - bucket.milli_tokens;
        let wait_ms = missing.saturating_mul(60).div_ceil(self.limit.per_minute.max(1));
        Err(wait_ms.div_ceil(1_000).max(1))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_keys_are_apart() {
        let limiter = RateLimiter::new(RateLimit::per_second(2, 3), 100);
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
        let limiter = RateLimiter::new(RateLimit::per_second(1, 1), 100);
        let start = Instant::now();
        assert_eq!(limiter.check_at(&1, start), Ok(()));
        assert_eq!(limiter.check_at(&1, start + Duration::from_millis(10)), Err(1));
        // A rate of zero (which config refuses) never refills; it is told
        // as the longest wait of the slowest rate, a minute.
        let stopped = RateLimiter::new(RateLimit::per_second(0, 1), 100);
        assert_eq!(stopped.check_at(&1, start), Ok(()));
        assert_eq!(stopped.check_at(&1, start), Err(60));
    }

    #[test]
    fn slow_rates_count_in_minutes() {
        let limiter = RateLimiter::new(RateLimit { per_minute: 6, burst: 1 }, 100);
        let start = Instant::now();
        assert_eq!(limiter.check_at(&1, start), Ok(()));
        assert_eq!(limiter.check_at(&1, start + Duration::from_secs(1)), Err(9), "one token per 10 s");
        assert_eq!(limiter.check_at(&1, start + Duration::from_secs(10)), Ok(()));
    }

    #[test]
    fn the_map_is_bounded_and_idle_buckets_make_room() {
        let limiter = RateLimiter::new(RateLimit::per_second(10, 1), 2);
        let start = Instant::now();
        assert_eq!(limiter.check_at(&1, start), Ok(()));
        assert_eq!(limiter.check_at(&2, start), Ok(()));
        assert_eq!(limiter.check_at(&3, start), Err(1), "full of busy keys: the newcomer waits");
        assert_eq!(limiter.check_at(&3, start + Duration::from_secs(1)), Ok(()), "idle buckets were dropped");
    }
}
