//! When to try again and how long to wait first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

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
        let jittered = capped * (JITTER_FLOOR + (1.0 - JITTER_FLOOR) * unit_random());
        // Near Duration::MAX the f64 round trip can land past what a Duration holds (where
        // `from_secs_f64` panics) or a few nanoseconds past max_delay; both end at max_delay.
        Duration::try_from_secs_f64(jittered).map_or(self.max_delay, |d| d.min(self.max_delay))
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

/// Parses a Retry-After header (RFC 9110 section 10.2.3) as the wait it asks for, at most
/// `MAX_RETRY_AFTER`: delay-seconds, or an HTTP-date (a date already past asks for no wait).
/// None for anything else: empty, negative, NaN, `inf`, exponents, garbage. The header comes
/// from whatever answers at base_url (a gateway, a proxy), so every value must be survivable.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now())
}

/// [`parse_retry_after`] with the current time passed in, so HTTP-dates are testable.
pub fn parse_retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(secs) = delay_seconds(value) {
        return Some(secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

/// `1*DIGIT`, as RFC 9110 has it, and also `1*DIGIT "." 1*DIGIT` (some servers send
/// fractions). A plain f64 parse would also take "inf", "NaN", "1e9" and "-1"; a digit string
/// too long for an f64 parses as infinity, which the clamp below turns into the cap.
fn delay_seconds(value: &str) -> Option<Duration> {
    let (whole, fraction) = match value.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (value, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !fraction.is_none_or(digits) {
        return None;
    }
    let secs: f64 = value.parse().ok()?;
    // Clamped before it becomes a Duration: `from_secs_f64` panics past u64::MAX seconds.
    Duration::try_from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())).ok()
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
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn retry_after_seconds_are_digits_and_capped() {
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("120"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("99999999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after(&"9".repeat(400)), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after(&format!("1.{}", "9".repeat(400))), Some(Duration::from_secs(2)));
        for bad in [
            "", " ", "-1", "-0", "+1", "1e3", "inf", "NaN", "infinity", ".5", "5.", "1.2.3", "0x10", "1 2",
            "soon", "１",
        ] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_dates_count_from_now() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let at = |v: &str| parse_retry_after_at(v, now);
        assert_eq!(at("Wed, 21 Oct 2015 07:28:30 GMT"), Some(Duration::from_secs(30)));
        // The two obsolete forms RFC 9110 still requires recipients to accept.
        assert_eq!(at("Wednesday, 21-Oct-15 07:28:05 GMT"), Some(Duration::from_secs(5)));
        assert_eq!(at("Wed Oct 21 07:28:10 2015"), Some(Duration::from_secs(10)));
        assert_eq!(at("Wed, 21 Oct 2015 07:27:00 GMT"), Some(Duration::ZERO), "past means now");
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(at("Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(at("Wed, 21 Oct 2015 07:28:00"), None, "no zone");
        assert_eq!(at("Wed, 32 Oct 2015 07:28:00 GMT"), None);
        // Today's clock, through the public entry point.
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
    }

    #[test]
    fn delays_never_panic_at_the_extremes() {
        let extremes =
            [Duration::ZERO, Duration::from_nanos(1), Duration::from_secs(u64::MAX / 2), Duration::MAX];
        for initial in extremes {
            for max in extremes {
                let p = RetryPolicy { max_retries: u32::MAX, initial_delay: initial, max_delay: max };
                for retry in [0, 1, 2, 31, 64, u32::MAX] {
                    assert!(p.backoff(retry) <= max);
                    for ra in [None, Some(Duration::ZERO), Some(Duration::MAX)] {
                        assert!(p.delay(retry, ra) <= max.max(MAX_RETRY_AFTER));
                    }
                }
            }
        }
    }
}
