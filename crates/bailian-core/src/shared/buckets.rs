//! Rate-limit buckets shared by every backend: one per (API key, model, host), because that
//! is what Bailian counts (per account and model, all keys and users together; research
//! §2.1). A deployment's requests-per-minute and tokens-per-minute hold for the bucket as a
//! whole, however many backends, batch nodes and column jobs use it.
//!
//! Requests are paced, not counted per minute: Bailian also enforces its limits per second
//! (RPS = RPM/60), so a minute's worth sent in a burst is refused even under the minute total.
//! Each request reserves the next start time (`next_request`) and waits for it outside any
//! lock; the reservation is a GCRA with no burst. Pacing runs at `PACE` of the limit: a
//! request that leaves a few milliseconds late (its backend was busy writing rows) must not
//! put one request too many into the provider's one-second window.
//!
//! Tokens are known only from answers, so they are charged after the fact (`record_tokens`):
//! a token clock (`token_tat`) moves ahead by each answer's tokens at the per-minute rate, and
//! a request may start once the clock is less than `TOKEN_TOLERANCE` ahead of now.
//!
//! A 429 pauses the bucket (`throttled`): every backend's next request waits for the pause,
//! and requests already reserved for during it are re-queued after it, evenly, instead of
//! all firing at its end.

use super::{monotonic_ns, nanos, Table};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Share of a limit the pacing uses (see the module doc).
pub const PACE: f64 = 0.98;

/// How far ahead of now the token clock may be when a request starts: one second's worth of
/// tokens, the window Bailian's per-second enforcement looks at.
pub const TOKEN_TOLERANCE: Duration = Duration::from_secs(1);

/// A bucket nobody used for this long may be given to another key.
const IDLE_REUSE: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Default, Debug)]
#[repr(C)]
pub struct BucketRow {
    /// `BucketKey`; 0 = free.
    key: u64,
    /// The limits its last user deployed (each request paces by its own deployment's).
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
    next_request_ns: u64,
    token_tat_ns: u64,
    paused_until_ns: u64,
    last_used_ns: u64,
    /// Requests started and 429s seen through this bucket, since it was claimed.
    pub requests: u64,
    pub throttled: u64,
    /// Backends waiting for their turn right now.
    pub waiting: u32,
    _pad: u32,
}

/// Which bucket a request counts against: a digest of (API key, model, host), so the key
/// itself never reaches shared memory. Never 0 (0 marks a free row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketKey(pub u64);

impl BucketKey {
    pub fn new(api_key: &[u8], model_type: &str, host: &str) -> BucketKey {
        let mut h = Sha256::new();
        for part in [api_key, model_type.as_bytes(), host.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let d = h.finalize();
        let k = u64::from_le_bytes(d[..8].try_into().unwrap_or([1; 8]));
        BucketKey(k.max(1))
    }
}

pub struct Buckets(Table<BucketRow>);

/// What a bucket looks like now, for `ai_rate_limits`.
#[derive(Clone, Copy, Debug)]
pub struct BucketView {
    pub key: u64,
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
    pub requests: u64,
    pub throttled: u64,
    pub waiting: u32,
    /// How long from now the bucket is paused by a 429 (zero when not).
    pub paused_for: Duration,
}

impl Buckets {
    pub(crate) fn bytes(len: u32) -> usize {
        Table::<BucketRow>::bytes(len)
    }

    /// # Safety
    /// As `Table::over`.
    pub(crate) unsafe fn over(mem: *mut u8, len: u32) -> Buckets {
        Buckets(Table::over(mem, len))
    }

    /// A limiter for `key`, pacing at `rpm`/`tpm` (None: that dimension unlimited). None
    /// when every row is taken by a bucket in use (`pg_bailian.max_rate_buckets`).
    pub fn limiter(&'static self, key: BucketKey, rpm: Option<u32>, tpm: Option<u32>) -> Option<Limiter> {
        let now = monotonic_ns();
        let index = self.0.with(|rows| {
            if let Some(i) = rows.iter().position(|r| r.key == key.0) {
                return Some(i);
            }
            let idle = |r: &BucketRow| {
                r.waiting == 0
                    && r.next_request_ns.max(r.paused_until_ns).max(r.token_tat_ns) < now
                    && now.saturating_sub(r.last_used_ns) > nanos(IDLE_REUSE)
            };
            let i = rows.iter().position(|r| r.key == 0).or_else(|| {
                rows.iter()
                    .enumerate()
                    .filter(|(_, r)| idle(r))
                    .min_by_key(|(_, r)| r.last_used_ns)
                    .map(|(i, _)| i)
            })?;
            rows[i] = BucketRow { key: key.0, last_used_ns: now, ..BucketRow::default() };
            Some(i)
        })?;
        let spacing = rpm.filter(|r| *r > 0).map(|r| (60e9 / f64::from(r) / PACE) as u64);
        let ns_per_token = tpm.filter(|t| *t > 0).map(|t| 60e9 / f64::from(t));
        Some(Limiter { buckets: self, index, key, rpm, tpm, spacing, ns_per_token })
    }

    pub fn view(&self) -> Vec<BucketView> {
        let now = monotonic_ns();
        self.0.with(|rows| {
            rows.iter()
                .filter(|r| r.key != 0)
                .map(|r| BucketView {
                    key: r.key,
                    requests_per_minute: r.requests_per_minute,
                    tokens_per_minute: r.tokens_per_minute,
                    requests: r.requests,
                    throttled: r.throttled,
                    waiting: r.waiting,
                    paused_for: Duration::from_nanos(r.paused_until_ns.saturating_sub(now)),
                })
                .collect()
        })
    }
}

/// One deployment's handle on its bucket.
pub struct Limiter {
    buckets: &'static Buckets,
    index: usize,
    key: BucketKey,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    spacing: Option<u64>,
    ns_per_token: Option<f64>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("rpm", &self.rpm).field("tpm", &self.tpm).finish()
    }
}

/// What a reservation says: go now, or wait until this monotonic instant.
enum Turn {
    Go,
    At(u64),
}

impl Limiter {
    pub fn is_unlimited(&self) -> bool {
        self.spacing.is_none() && self.ns_per_token.is_none()
    }

    /// Runs `f` on this limiter's row, re-claiming it if another key took it over (it was
    /// idle past `IDLE_REUSE`).
    fn with_row<R>(&self, now: u64, f: impl FnOnce(&mut BucketRow) -> R) -> R {
        self.buckets.0.with(|rows| {
            let row = &mut rows[self.index];
            if row.key != self.key.0 {
                *row = BucketRow { key: self.key.0, ..BucketRow::default() };
            }
            row.last_used_ns = now;
            row.requests_per_minute = self.rpm.unwrap_or(0);
            row.tokens_per_minute = self.tpm.unwrap_or(0);
            f(row)
        })
    }

    fn token_gate(&self, row: &BucketRow) -> u64 {
        match self.ns_per_token {
            Some(_) => row.token_tat_ns.saturating_sub(nanos(TOKEN_TOLERANCE)),
            None => 0,
        }
    }

    /// Reserves the next start time.
    fn reserve(&self, now: u64, row: &mut BucketRow) -> u64 {
        let slot = now.max(row.paused_until_ns).max(self.token_gate(row));
        let slot = match self.spacing {
            Some(spacing) => {
                let slot = slot.max(row.next_request_ns);
                row.next_request_ns = slot.saturating_add(spacing);
                slot
            }
            None => slot,
        };
        row.waiting += 1;
        slot
    }

    /// After waiting until `slot`: go, or (a 429 paused the bucket meanwhile, or answers
    /// used up the tokens) the new time to wait for.
    fn recheck(&self, slot: u64) -> Turn {
        let now = monotonic_ns();
        self.with_row(now, |row| {
            if row.paused_until_ns > slot.max(now) {
                // Paused while we waited: queue again after the pause, evenly.
                row.waiting = row.waiting.saturating_sub(1);
                return Turn::At(self.reserve(now, row));
            }
            let gate = self.token_gate(row);
            if gate > now {
                return Turn::At(gate);
            }
            row.waiting = row.waiting.saturating_sub(1);
            row.requests += 1;
            Turn::Go
        })
    }

    /// Waits for this request's turn; `waiting` is told when a wait starts and ends (for
    /// `ai_activity`). Cancel-safe: a dropped wait gives up its turn without holding
    /// anything (the reserved start time is simply not used).
    pub async fn acquire(&self, waiting: &(dyn Fn(bool) + Sync)) {
        if self.is_unlimited() {
            return;
        }
        let now = monotonic_ns();
        let mut slot = self.with_row(now, |row| self.reserve(now, row));
        let mut guard = Waiting { limiter: self, done: false };
        let mut told = false;
        loop {
            let now = monotonic_ns();
            if slot > now {
                if !told {
                    waiting(true);
                    told = true;
                }
                tokio::time::sleep(Duration::from_nanos(slot - now)).await;
            }
            match self.recheck(slot) {
                Turn::Go => break,
                Turn::At(next) => slot = next,
            }
        }
        guard.done = true;
        if told {
            waiting(false);
        }
    }

    /// Charges an answer's tokens to the bucket's token clock.
    pub fn record_tokens(&self, tokens: u64) {
        let Some(per_token) = self.ns_per_token else { return };
        if tokens == 0 {
            return;
        }
        let now = monotonic_ns();
        self.with_row(now, |row| {
            row.token_tat_ns = row.token_tat_ns.max(now).saturating_add((tokens as f64 * per_token) as u64);
        });
    }

    /// A 429 through this bucket: every user of it waits `pause` from now.
    pub fn throttled(&self, pause: Duration) {
        let now = monotonic_ns();
        self.with_row(now, |row| {
            row.paused_until_ns = row.paused_until_ns.max(now.saturating_add(nanos(pause)));
            row.throttled += 1;
        });
    }
}

/// Takes a dropped wait (a cancel) off the bucket's waiting count.
struct Waiting<'a> {
    limiter: &'a Limiter,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            let now = monotonic_ns();
            self.limiter.with_row(now, |row| row.waiting = row.waiting.saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_caps, Region};
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn region() -> &'static Region {
        Region::private(test_caps())
    }

    #[test]
    fn keys_differ_by_each_part_and_are_never_zero() {
        let a = BucketKey::new(b"sk-1", "qwen-plus", "h");
        assert_ne!(a, BucketKey::new(b"sk-2", "qwen-plus", "h"));
        assert_ne!(a, BucketKey::new(b"sk-1", "qwen-max", "h"));
        assert_ne!(a, BucketKey::new(b"sk-1", "qwen-plus", "g"));
        // Length-prefixed: moving a byte between parts changes the key.
        assert_ne!(BucketKey::new(b"ab", "c", ""), BucketKey::new(b"a", "bc", ""));
        assert_ne!(a.0, 0);
    }

    #[tokio::test]
    async fn requests_are_paced_below_the_limit() {
        let r = region();
        let l = r.buckets.limiter(BucketKey(7), Some(6000), None).unwrap();
        let start = Instant::now();
        for _ in 0..21 {
            l.acquire(&|_| {}).await;
        }
        // 6000/min = 10 ms apart, at PACE: 20 gaps of 10.2 ms.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
    }

    /// Several threads (what several backends are) share one bucket: together they go no
    /// faster than one.
    #[test]
    fn one_bucket_paces_every_user_together() {
        let r = region();
        let start = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    let l = r.buckets.limiter(BucketKey(9), Some(6000), None).unwrap();
                    rt.block_on(async {
                        for _ in 0..10 {
                            l.acquire(&|_| {}).await;
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 40 requests, 39 gaps of ~10.2 ms.
        assert!(start.elapsed() >= Duration::from_millis(390), "{:?}", start.elapsed());
        let v = r.buckets.view();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].requests, 40);
        assert_eq!(v[0].waiting, 0);
    }

    #[tokio::test]
    async fn a_429_pauses_every_user_of_the_bucket() {
        let r = region();
        let a = r.buckets.limiter(BucketKey(11), Some(60_000), None).unwrap();
        let b = r.buckets.limiter(BucketKey(11), Some(60_000), None).unwrap();
        a.throttled(Duration::from_millis(150));
        let start = Instant::now();
        b.acquire(&|_| {}).await;
        assert!(start.elapsed() >= Duration::from_millis(140), "{:?}", start.elapsed());
        assert_eq!(r.buckets.view()[0].throttled, 1);
    }

    #[tokio::test]
    async fn tokens_hold_back_the_next_request() {
        let r = region();
        // 60,000 tokens/min = 1 ms per token; 1,300 tokens put the clock 1.3 s ahead, 0.3 s
        // past the tolerance.
        let l = r.buckets.limiter(BucketKey(13), None, Some(60_000)).unwrap();
        l.acquire(&|_| {}).await;
        l.record_tokens(1_300);
        let start = Instant::now();
        let told = std::sync::Mutex::new(Vec::new());
        l.acquire(&|w| told.lock().unwrap().push(w)).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(280) && took < Duration::from_millis(800), "{took:?}");
        assert_eq!(*told.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn a_full_table_says_so_and_idle_buckets_are_reused() {
        let r = region();
        let n = r.capacities().buckets as u64;
        for k in 1..=n {
            assert!(r.buckets.limiter(BucketKey(k), Some(60), None).is_some());
        }
        assert!(r.buckets.limiter(BucketKey(n + 1), Some(60), None).is_none());
        // An existing key still gets its bucket.
        assert!(r.buckets.limiter(BucketKey(1), Some(60), None).is_some());
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_no_waiter_behind() {
        let r = region();
        let l = Arc::new(r.buckets.limiter(BucketKey(21), Some(60), None).unwrap());
        l.acquire(&|_| {}).await;
        let l2 = l.clone();
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), async move { l2.acquire(&|_| {}).await }).await;
        assert!(waiting.is_err(), "the second request waits a second");
        assert_eq!(r.buckets.view()[0].waiting, 0);
    }
}
