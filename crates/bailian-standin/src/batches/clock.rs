//! The batch service's clock. Bailian takes minutes to hours over a batch and expires it
//! after its completion window (24 hours to 14 days); no test can wait that long, so the
//! stand-in's batches run on a clock of their own whose hour lasts `Config::batch_hour_ms`
//! real milliseconds. Its seconds are what batch and file objects show as timestamps: it
//! starts at the wall clock's Unix time, so at real speed they are today's, and at test speed
//! a 24-hour batch still shows `expires_at` 86,400 seconds after `created_at`.
//!
//! The speed may change while the stand-in runs (`Standin::configure`): the clock is
//! re-anchored the first time it is read at the new speed, so it never runs backwards.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A real hour, in milliseconds.
const REAL_HOUR_MS: f64 = 3_600_000.0;

/// The fastest the clock runs: an hour in a microsecond. A speed of zero, negative or NaN
/// would stop time or run it backwards.
const MIN_HOUR_MS: f64 = 0.001;

pub(crate) struct Clock {
    anchor: Mutex<Anchor>,
}

struct Anchor {
    real: Instant,
    /// Service seconds at `real`.
    service: f64,
    hour_ms: f64,
}

impl Clock {
    pub(crate) fn new(hour_ms: f64) -> Clock {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        Clock { anchor: Mutex::new(Anchor { real: Instant::now(), service: unix, hour_ms: sane(hour_ms) }) }
    }

    /// Service seconds now, at `hour_ms` real milliseconds per service hour.
    pub(crate) fn now(&self, hour_ms: f64) -> f64 {
        let hour_ms = sane(hour_ms);
        let mut a = self.anchor.lock().unwrap();
        let real = Instant::now();
        let service = a.service + real.duration_since(a.real).as_secs_f64() * speed(a.hour_ms);
        if hour_ms != a.hour_ms {
            *a = Anchor { real, service, hour_ms };
        }
        service
    }
}

/// How long `service_secs` of service time last in real time at `hour_ms`, at most `cap`.
pub(crate) fn real(service_secs: f64, hour_ms: f64, cap: Duration) -> Duration {
    let secs = service_secs.max(0.0) / speed(sane(hour_ms));
    Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
}

fn sane(hour_ms: f64) -> f64 {
    if hour_ms.is_finite() {
        hour_ms.max(MIN_HOUR_MS)
    } else {
        REAL_HOUR_MS
    }
}

/// Service seconds per real second.
fn speed(hour_ms: f64) -> f64 {
    REAL_HOUR_MS / hour_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_clock_runs_ahead_and_never_back() {
        let clock = Clock::new(REAL_HOUR_MS);
        let start = clock.now(REAL_HOUR_MS);
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((start - unix).abs() < 5.0, "starts at the wall clock");
        // An hour per millisecond: 10 ms are ten hours.
        clock.now(1.0);
        std::thread::sleep(Duration::from_millis(10));
        let later = clock.now(1.0);
        assert!(later - start >= 10.0 * 3600.0, "{}", later - start);
        // Back to real speed: time goes on from there.
        assert!(clock.now(REAL_HOUR_MS) >= later);
        assert!(clock.now(f64::NAN) >= later, "a speed that is not a number is real time");
        assert!(clock.now(-5.0) >= later);
    }

    #[test]
    fn service_time_in_real_time() {
        let cap = Duration::from_millis(50);
        assert_eq!(real(3600.0, 10.0, cap), Duration::from_millis(10));
        assert_eq!(real(7200.0, 3_600_000.0, cap), cap, "capped");
        assert_eq!(real(-1.0, 10.0, cap), Duration::ZERO);
        assert_eq!(real(f64::INFINITY, 10.0, cap), cap);
        assert_eq!(real(1.0, f64::INFINITY, cap), Duration::from_secs(1).min(cap));
    }
}
