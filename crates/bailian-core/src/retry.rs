//! When to try again and how long to wait first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; attempts = max_retries + 1.
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

/// Jitter keeps at least this share of the backoff, so the schedule stays predictable
/// (tests time it) while concurrent clients still spread out.
const JITTER_FLOOR: f64 = 0.75;

/// The longest `Retry-After` we honour; past this a provider is asking for an outage-length
/// pause that a statement should not sit through silently.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl RetryPolicy {
    /// Backoff before retry number `retry` (1-based): initial * 2^(retry-1), capped at
    /// max_delay, scaled by a random factor in [0.75, 1].
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self.initial_delay.as_secs_f64() * 2f64.powi(retry.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(capped * (JITTER_FLOOR + (1.0 - JITTER_FLOOR) * unit_random()))
    }

    /// The wait before retry `retry`, honouring the provider's Retry-After when it asks for
    /// longer than our backoff.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(retry);
        match retry_after {
            Some(ra) => backoff.max(ra.min(MAX_RETRY_AFTER)),
            None => backoff,
        }
    }
}

/// A uniform number in [0, 1) from a splitmix64 sequence seeded by the clock; retries need
/// spread, not cryptographic quality.
fn unit_random() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses a Retry-After header: delay-seconds (HTTP-dates are not used by Bailian).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: f64, max: f64) -> RetryPolicy {
        RetryPolicy {
            max_retries: 10,
            initial_delay: Duration::from_secs_f64(initial),
            max_delay: Duration::from_secs_f64(max),
        }
    }

    #[test]
    fn exponential_capped_with_bounded_jitter() {
        let p = policy(0.5, 3.0);
        for _ in 0..200 {
            let within = |d: Duration, nominal: f64| {
                let s = d.as_secs_f64();
                s >= nominal * JITTER_FLOOR - 1e-9 && s <= nominal + 1e-9
            };
            assert!(within(p.backoff(1), 0.5));
            assert!(within(p.backoff(2), 1.0));
            assert!(within(p.backoff(3), 2.0));
            assert!(within(p.backoff(4), 3.0));
            assert!(within(p.backoff(40), 3.0));
        }
    }

    #[test]
    fn jitter_varies() {
        let p = policy(8.0, 60.0);
        let samples: std::collections::HashSet<u128> = (0..50).map(|_| p.backoff(1).as_micros()).collect();
        assert!(samples.len() > 10);
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let p = policy(0.5, 1.0);
        assert!(p.delay(1, Some(Duration::from_secs(3))) == Duration::from_secs(3));
        assert!(p.delay(1, Some(Duration::from_millis(10))) <= Duration::from_millis(500));
        assert_eq!(p.delay(1, Some(Duration::from_secs(3600))), MAX_RETRY_AFTER);
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
