//! Bailian's rate limits as the rate-limit page states them (research §2.1, S8a/S8b): counted
//! per account and per model, all keys of an account together; in two dimensions, requests
//! (RPM) and tokens (TPM: input plus output, embeddings input only); and also enforced per
//! second, RPS = RPM/60 and TPS = TPM/60, so a burst is refused even when the minute's total
//! is under its limit. The stand-in has no accounts, so a key stands for its account: each
//! (key, model) has its own windows.
//!
//! How each window counts is not documented; the stand-in's choices:
//! - requests per minute: a sliding 60-second window of the requests admitted;
//! - requests per second: RPS as a rate, a bucket of one second's requests (at least one)
//!   that refills at RPS (the generic cell rate algorithm). A strict sliding one-second
//!   window would refuse about half the requests of a client that spaces them exactly 60/RPM
//!   seconds apart, the moment a few microseconds of jitter brings the eleventh of them
//!   inside the second of the first (measured over loopback: 31 of 50 at 600 per minute);
//!   a bucket refuses a burst and never a client that keeps to the rate;
//! - tokens per minute and per second: sliding 60-second and 1-second windows of the tokens
//!   of answered requests (a request's tokens are known only once it is answered), and a
//!   request is refused while a window already holds its budget or more.
//!
//! A refused request counts in no window. A window counts from when its limit is set.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);

/// Which dimension refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dimension {
    /// RPM or RPS: 429 limit_requests / Throttling.RateQuota.
    Requests,
    /// TPM or TPS: 429 insufficient_quota / Throttling.AllocationQuota.
    Tokens,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Refusal {
    pub dimension: Dimension,
    /// The per-second check refused, not the per-minute one.
    pub per_second: bool,
    /// Until the window that refused has room again (for Retry-After).
    pub wait: Duration,
}

impl Refusal {
    /// What the request log says of it.
    pub(crate) fn fault(&self) -> &'static str {
        match (self.dimension, self.per_second) {
            (Dimension::Requests, false) => "rpm limit",
            (Dimension::Requests, true) => "rps limit",
            (Dimension::Tokens, false) => "tpm limit",
            (Dimension::Tokens, true) => "tps limit",
        }
    }
}

#[derive(Default)]
struct Windows {
    /// Admission times of the last minute (while an RPM limit is set).
    requests: VecDeque<Instant>,
    /// The per-second bucket: when it will be empty (the theoretical arrival time).
    empty_at: Option<Instant>,
    /// (answered at, tokens) of the last minute (while a TPM limit is set).
    tokens: VecDeque<(Instant, u64)>,
    tokens_in_minute: u64,
}

impl Windows {
    fn expire(&mut self, now: Instant) {
        while self.requests.front().is_some_and(|t| now.duration_since(*t) >= MINUTE) {
            self.requests.pop_front();
        }
        while let Some(&(t, n)) = self.tokens.front() {
            if now.duration_since(t) < MINUTE {
                break;
            }
            self.tokens.pop_front();
            self.tokens_in_minute -= n;
        }
    }

    /// How long until the tokens of entries younger than `window` drop below `budget`.
    fn tokens_wait(&self, now: Instant, window: Duration, budget: f64) -> Option<Duration> {
        let recent: Vec<(Instant, u64)> =
            self.tokens.iter().rev().take_while(|(t, _)| now.duration_since(*t) < window).copied().collect();
        let mut sum: u64 = recent.iter().map(|(_, n)| n).sum();
        if (sum as f64) < budget {
            return None;
        }
        // Oldest first: the window has room once enough of them have left it.
        for (t, n) in recent.iter().rev() {
            sum -= n;
            if (sum as f64) < budget {
                return Some((*t + window).saturating_duration_since(now));
            }
        }
        Some(window)
    }
}

#[derive(Default)]
pub(crate) struct Limits {
    windows: Mutex<HashMap<(u64, String), Windows>>,
}

impl Limits {
    /// Admits a request of `key` (a hash of it) to `model` under these limits, counting it,
    /// or says which limit refuses it and for how long.
    pub(crate) fn admit(
        &self,
        key: u64,
        model: &str,
        rpm: Option<u32>,
        tpm: Option<u32>,
        now: Instant,
    ) -> Result<(), Refusal> {
        if rpm.is_none() && tpm.is_none() {
            return Ok(());
        }
        let mut all = self.windows.lock().unwrap();
        let w = all.entry((key, model.to_string())).or_default();
        w.expire(now);
        let refuse = |dimension, per_second, wait| Err(Refusal { dimension, per_second, wait });
        let mut empty_at = None;
        if let Some(rpm) = rpm {
            if w.requests.len() as u64 >= u64::from(rpm) {
                let wait =
                    w.requests.front().map_or(MINUTE, |t| (*t + MINUTE).saturating_duration_since(now));
                return refuse(Dimension::Requests, false, wait);
            }
            // Each request fills the bucket by one interval, 60/RPM seconds, and it drains in
            // real time; it holds one second's requests, or one request under 60 per minute.
            let interval = Duration::from_nanos(60_000_000_000 / u64::from(rpm));
            let capacity = interval.max(SECOND);
            let from = w.empty_at.map_or(now, |e| e.max(now));
            let filled = from.duration_since(now) + interval;
            if filled > capacity {
                return refuse(Dimension::Requests, true, filled - capacity);
            }
            empty_at = Some(from + interval);
        }
        if let Some(tpm) = tpm {
            let budget = f64::from(tpm);
            if let Some(wait) = w.tokens_wait(now, MINUTE, budget) {
                return refuse(Dimension::Tokens, false, wait);
            }
            if let Some(wait) = w.tokens_wait(now, SECOND, budget / 60.0) {
                return refuse(Dimension::Tokens, true, wait);
            }
        }
        if empty_at.is_some() {
            w.requests.push_back(now);
            w.empty_at = empty_at;
        }
        Ok(())
    }

    /// Counts the tokens of an answered request against (key, model)'s token windows.
    pub(crate) fn answered(&self, key: u64, model: &str, tokens: u64, tpm: Option<u32>, now: Instant) {
        if tpm.is_none() || tokens == 0 {
            return;
        }
        let mut all = self.windows.lock().unwrap();
        let w = all.entry((key, model.to_string())).or_default();
        w.expire(now);
        w.tokens.push_back((now, tokens));
        w.tokens_in_minute += tokens;
    }

    pub(crate) fn clear(&self) {
        self.windows.lock().unwrap().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_client_at_the_rate_passes_and_a_burst_does_not() {
        let l = Limits::default();
        let t0 = Instant::now();
        // 600 per minute: one every 100 ms, with a little jitter either way, for two seconds.
        for i in 0..20u64 {
            let jitter = if i % 2 == 0 { 1 } else { 0 };
            assert_eq!(l.admit(1, "m", Some(600), None, at(t0, i * 100 + jitter)), Ok(()), "{i}");
        }
        // A burst: ten at once fill the bucket (one second's worth), the eleventh is refused.
        let l = Limits::default();
        for i in 0..10 {
            assert!(l.admit(1, "m", Some(600), None, t0).is_ok(), "{i}");
        }
        let r = l.admit(1, "m", Some(600), None, t0).unwrap_err();
        assert_eq!((r.dimension, r.per_second), (Dimension::Requests, true));
        assert_eq!(r.wait, Duration::from_millis(100));
        assert!(l.admit(2, "m", Some(600), None, t0).is_ok(), "another key has its own");
        assert!(l.admit(1, "n", Some(600), None, t0).is_ok(), "another model has its own");
        assert!(l.admit(1, "m", Some(600), None, at(t0, 100)).is_ok(), "a slot frees each 100 ms");
    }

    #[test]
    fn the_minute_window_refuses_what_the_second_lets_through() {
        let l = Limits::default();
        let t0 = Instant::now();
        // 120 per minute, 2 per second: a burst of two, then one every 500 ms keeps to the
        // second's rate, and the 121st request within the minute is refused by the minute.
        for ms in [0, 0].into_iter().chain((1..=118u64).map(|k| k * 500)) {
            assert!(l.admit(1, "m", Some(120), None, at(t0, ms)).is_ok(), "{ms}");
        }
        let r = l.admit(1, "m", Some(120), None, at(t0, 59_500)).unwrap_err();
        assert_eq!((r.dimension, r.per_second), (Dimension::Requests, false));
        assert_eq!(r.wait, Duration::from_millis(500));
        assert!(l.admit(1, "m", Some(120), None, at(t0, 60_000)).is_ok());
        // Faster than the rate, the second refuses first.
        let l = Limits::default();
        let refused =
            (0..60u64).filter(|k| l.admit(1, "m", Some(120), None, at(t0, k * 400)).is_err()).count();
        assert!(refused > 0);
        // Under 60 per minute the bucket still holds one request: 30 per minute is one per 2 s.
        let l = Limits::default();
        assert!(l.admit(1, "m", Some(30), None, t0).is_ok());
        assert!(l.admit(1, "m", Some(30), None, at(t0, 1_500)).is_err());
        assert!(l.admit(1, "m", Some(30), None, at(t0, 2_000)).is_ok());
    }

    #[test]
    fn tokens_refuse_once_a_window_holds_its_budget() {
        let l = Limits::default();
        let t0 = Instant::now();
        // 6,000 per minute: 100 per second.
        assert!(l.admit(1, "m", None, Some(6_000), t0).is_ok());
        l.answered(1, "m", 99, Some(6_000), t0);
        assert!(l.admit(1, "m", None, Some(6_000), t0).is_ok(), "under the second's budget");
        l.answered(1, "m", 1, Some(6_000), at(t0, 200));
        let r = l.admit(1, "m", None, Some(6_000), at(t0, 300)).unwrap_err();
        assert_eq!((r.dimension, r.per_second), (Dimension::Tokens, true));
        assert_eq!(r.wait, Duration::from_millis(700), "until the 99 leave the second");
        assert!(l.admit(1, "m", None, Some(6_000), at(t0, 1_000)).is_ok());
        // The minute: 6,000 answered over a few seconds.
        l.answered(1, "m", 5_900, Some(6_000), at(t0, 1_000));
        let r = l.admit(1, "m", None, Some(6_000), at(t0, 5_000)).unwrap_err();
        assert_eq!((r.dimension, r.per_second), (Dimension::Tokens, false));
        assert_eq!(r.wait, Duration::from_millis(55_000), "until the first 99 leave the minute");
        assert!(l.admit(1, "m", None, Some(6_000), at(t0, 61_000)).is_ok());
    }
}
