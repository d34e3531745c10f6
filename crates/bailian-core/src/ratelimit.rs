//! Client-side rate limits per deployed model: requests are spaced evenly (so a job at the
//! provider's limit does not burst into 429s), and tokens are kept under a per-minute budget.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct RateLimiter {
    /// Gap between request starts; None = no request limit.
    spacing: Option<Duration>,
    tokens_per_minute: Option<u64>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_request: Option<Instant>,
    /// (when, tokens) of responses inside the last minute.
    tokens: VecDeque<(Instant, u64)>,
    tokens_in_window: u64,
}

impl RateLimiter {
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Self {
        RateLimiter {
            spacing: requests_per_minute
                .filter(|r| *r > 0)
                .map(|r| Duration::from_secs_f64(60.0 / f64::from(r))),
            tokens_per_minute: tokens_per_minute.filter(|t| *t > 0).map(u64::from),
            state: Mutex::new(State::default()),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.spacing.is_none() && self.tokens_per_minute.is_none()
    }

    /// Waits for this request's turn. The slot is reserved before sleeping, so concurrent
    /// callers queue in order instead of waking together.
    pub async fn acquire_request(&self) {
        if let Some(spacing) = self.spacing {
            let slot = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let slot = s.next_request.map_or(now, |n| n.max(now));
                s.next_request = Some(slot + spacing);
                slot
            };
            tokio::time::sleep_until(slot).await;
        }
        if let Some(budget) = self.tokens_per_minute {
            loop {
                let wait = {
                    let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    let now = Instant::now();
                    s.expire(now);
                    if s.tokens_in_window < budget {
                        None
                    } else {
                        s.tokens.front().map(|(t, _)| *t + WINDOW - now)
                    }
                };
                match wait {
                    None => break,
                    Some(d) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
                }
            }
        }
    }

    /// Counts the tokens a response reported against the per-minute budget.
    pub fn record_tokens(&self, tokens: u64) {
        if self.tokens_per_minute.is_none() || tokens == 0 {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.tokens.push_back((Instant::now(), tokens));
        s.tokens_in_window += tokens;
    }
}

impl State {
    fn expire(&mut self, now: Instant) {
        while let Some((t, n)) = self.tokens.front().copied() {
            if now.duration_since(t) < WINDOW {
                break;
            }
            self.tokens.pop_front();
            self.tokens_in_window -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_evenly() {
        let l = RateLimiter::new(Some(600), None);
        let start = Instant::now();
        for _ in 0..11 {
            l.acquire_request().await;
        }
        // 600/min = one every 100 ms; the first goes at once.
        assert_eq!(Instant::now() - start, Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn token_budget_blocks_until_the_window_moves() {
        let l = RateLimiter::new(None, Some(100));
        l.acquire_request().await;
        l.record_tokens(100);
        let start = Instant::now();
        l.acquire_request().await;
        assert!(Instant::now() - start >= Duration::from_secs(59));
    }

    #[test]
    fn no_limits_means_unlimited() {
        assert!(RateLimiter::new(None, None).is_unlimited());
        assert!(!RateLimiter::new(Some(1), None).is_unlimited());
    }
}
