//! Usage counters per (database, role, model, model type, function): what `ai_usage` shows.
//!
//! Fixed capacity (`pg_bailian.max_usage_entries`). When every row is taken, a new key's
//! counts go to one overflow row (shown with NULL role and model, function '(other)') rather
//! than evicting anyone's history: totals stay right, only the breakdown is lost, and the
//! overflow row says so.
//!
//! Latency is kept as a histogram of √2-wide classes, so p50 and p95 are reported as the upper
//! bound of their class (within 41% above the true value, never below it); the maximum is
//! exact.

use super::{unix_us, Name, Table};
use std::mem::size_of;
use std::time::Duration;

pub const LATENCY_CLASSES: usize = 40;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UsageKey {
    pub database: u32,
    pub role: u32,
    pub model_name: Name,
    pub model_type: Name,
    pub function: Name,
}

/// What one event adds. Tokens are as the provider reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UsageDelta {
    pub calls: u64,
    pub requests: u64,
    pub inputs: u64,
    pub failures: u64,
    pub retries: u64,
    pub throttled: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// In nano-yuan; None when the model has no price (the row's cost becomes unknown).
    pub cost_nano_yuan: Option<u64>,
    pub latency: Option<Duration>,
    /// Calls answered by another call's request of the same statement or job.
    pub shared_calls: u64,
    /// Calls answered from the answer cache.
    pub cache_hits: u64,
    /// What the shared calls and cache hits would have cost, in nano-yuan.
    pub saved_nano_yuan: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct UsageRow {
    /// 0 free, 1 in use, 2 the overflow row.
    pub state: u32,
    /// Whether some request of this row had no price.
    pub cost_unknown: u32,
    pub key: UsageKey,
    pub calls: u64,
    pub requests: u64,
    pub inputs: u64,
    pub failures: u64,
    pub retries: u64,
    pub throttled: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_nano_yuan: u64,
    pub latency_max_us: u64,
    pub latency: [u64; LATENCY_CLASSES],
    pub first_used_us: i64,
    pub last_used_us: i64,
    // Added in 0.6.0, at the end: a row saved by an older version is a prefix of this one
    // (see `decode`).
    pub shared_calls: u64,
    pub cache_hits: u64,
    pub saved_nano_yuan: u64,
}

impl Default for UsageRow {
    fn default() -> Self {
        // SAFETY: UsageRow is plain integers and byte arrays; all-zero is a valid (free) row.
        unsafe { std::mem::zeroed() }
    }
}

const STATE_USED: u32 = 1;
const STATE_OVERFLOW: u32 = 2;

/// The class of a latency: class i holds latencies up to `class_bound(i)`.
fn class_of(us: u64) -> usize {
    (0..LATENCY_CLASSES - 1).find(|&i| us <= class_bound_us(i)).unwrap_or(LATENCY_CLASSES - 1)
}

/// 1 ms × √2^i, in microseconds.
pub fn class_bound_us(i: usize) -> u64 {
    (1000.0 * 2f64.powf(i as f64 / 2.0)) as u64
}

impl UsageRow {
    fn add(&mut self, d: &UsageDelta, now_us: i64) {
        self.calls += d.calls;
        self.requests += d.requests;
        self.inputs += d.inputs;
        self.failures += d.failures;
        self.retries += d.retries;
        self.throttled += d.throttled;
        self.prompt_tokens += d.prompt_tokens;
        self.completion_tokens += d.completion_tokens;
        self.cached_tokens += d.cached_tokens;
        self.reasoning_tokens += d.reasoning_tokens;
        self.shared_calls += d.shared_calls;
        self.cache_hits += d.cache_hits;
        self.saved_nano_yuan = self.saved_nano_yuan.saturating_add(d.saved_nano_yuan);
        match d.cost_nano_yuan {
            Some(c) => self.cost_nano_yuan = self.cost_nano_yuan.saturating_add(c),
            None if d.prompt_tokens + d.completion_tokens > 0 => self.cost_unknown = 1,
            None => {}
        }
        if let Some(l) = d.latency {
            let us = u64::try_from(l.as_micros()).unwrap_or(u64::MAX);
            self.latency[class_of(us)] += 1;
            self.latency_max_us = self.latency_max_us.max(us);
        }
        if self.first_used_us == 0 {
            self.first_used_us = now_us;
        }
        self.last_used_us = now_us;
    }

    pub fn is_overflow(&self) -> bool {
        self.state == STATE_OVERFLOW
    }

    /// The latency at or below which `p` (0..1) of the timed requests finished: the upper
    /// bound of its class, at most the maximum. None without timed requests.
    pub fn latency_percentile(&self, p: f64) -> Option<Duration> {
        let n: u64 = self.latency.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((p * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(class_bound_us(i).min(self.latency_max_us)));
            }
        }
        Some(Duration::from_micros(self.latency_max_us))
    }

    pub fn cost_nano_yuan(&self) -> Option<u64> {
        (self.cost_unknown == 0).then_some(self.cost_nano_yuan)
    }
}

/// `len` rows for keys, and one more for the overflow.
pub struct UsageTable(Table<UsageRow>);

impl UsageTable {
    pub(crate) fn bytes(len: u32) -> usize {
        Table::<UsageRow>::bytes(len + 1)
    }

    /// # Safety
    /// As `Table::over`.
    pub(crate) unsafe fn over(mem: *mut u8, len: u32) -> UsageTable {
        UsageTable(Table::over(mem, len + 1))
    }

    /// Adds `d` to `key`'s row. `hint` is where the caller found the key last time (a row
    /// index, checked under the lock); returns where it is now.
    pub fn add(&self, key: &UsageKey, d: &UsageDelta, hint: Option<usize>) -> usize {
        let now = unix_us();
        self.0.with(|rows| {
            let (overflow, keyed) = rows.split_last_mut().expect("the overflow row always exists");
            let keyed_len = keyed.len();
            if let Some(i) =
                hint.filter(|&i| i < keyed_len && keyed[i].state == STATE_USED && keyed[i].key == *key)
            {
                keyed[i].add(d, now);
                return i;
            }
            if let Some(i) = keyed.iter().position(|r| r.state == STATE_USED && r.key == *key) {
                keyed[i].add(d, now);
                return i;
            }
            if let Some(i) = keyed.iter().position(|r| r.state == 0) {
                keyed[i] = UsageRow { state: STATE_USED, key: *key, ..UsageRow::default() };
                keyed[i].add(d, now);
                return i;
            }
            if overflow.state != STATE_OVERFLOW {
                *overflow = UsageRow { state: STATE_OVERFLOW, ..UsageRow::default() };
            }
            overflow.add(d, now);
            keyed_len
        })
    }

    /// Every row in use, the overflow row last (when it was used).
    pub fn rows(&self) -> Vec<UsageRow> {
        self.0.with(|rows| rows.iter().filter(|r| r.state != 0).copied().collect())
    }

    /// Forgets the rows `which` selects (the overflow row counts as database 0).
    pub fn reset(&self, which: impl Fn(&UsageRow) -> bool) -> u64 {
        self.0.with(|rows| {
            let mut n = 0;
            for r in rows.iter_mut().filter(|r| r.state != 0 && which(r)) {
                *r = UsageRow::default();
                n += 1;
            }
            n
        })
    }

    /// Puts saved rows back (at startup): keyed rows into free rows, anything that does not
    /// fit (a smaller `max_usage_entries` than when saved) into the overflow row.
    pub fn restore(&self, saved: &[UsageRow]) {
        self.0.with(|rows| {
            let (overflow, keyed) = rows.split_last_mut().expect("the overflow row always exists");
            let mut free = keyed.iter_mut().filter(|r| r.state == 0);
            for s in saved {
                let slot = if s.state == STATE_USED { free.next() } else { None };
                match slot {
                    Some(r) => *r = *s,
                    None => {
                        if overflow.state != STATE_OVERFLOW {
                            *overflow = UsageRow { state: STATE_OVERFLOW, ..UsageRow::default() };
                        }
                        merge(overflow, s);
                    }
                }
            }
        })
    }
}

fn merge(into: &mut UsageRow, r: &UsageRow) {
    into.calls += r.calls;
    into.requests += r.requests;
    into.inputs += r.inputs;
    into.failures += r.failures;
    into.retries += r.retries;
    into.throttled += r.throttled;
    into.prompt_tokens += r.prompt_tokens;
    into.completion_tokens += r.completion_tokens;
    into.cached_tokens += r.cached_tokens;
    into.reasoning_tokens += r.reasoning_tokens;
    into.cost_nano_yuan += r.cost_nano_yuan;
    into.shared_calls += r.shared_calls;
    into.cache_hits += r.cache_hits;
    into.saved_nano_yuan += r.saved_nano_yuan;
    into.cost_unknown |= r.cost_unknown;
    into.latency_max_us = into.latency_max_us.max(r.latency_max_us);
    for (a, b) in into.latency.iter_mut().zip(r.latency.iter()) {
        *a += b;
    }
    if into.first_used_us == 0 || (r.first_used_us != 0 && r.first_used_us < into.first_used_us) {
        into.first_used_us = r.first_used_us;
    }
    into.last_used_us = into.last_used_us.max(r.last_used_us);
}

/// The file format the counters are saved in at shutdown: a magic and version, the row size
/// (a layout change makes old files unreadable, not misread), then the rows as they are in
/// memory. Read back only by the same build's layout.
const FILE_MAGIC: &[u8; 8] = b"PGBUSE01";

pub fn encode(rows: &[UsageRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + std::mem::size_of_val(rows));
    out.extend_from_slice(FILE_MAGIC);
    out.extend_from_slice(&(size_of::<UsageRow>() as u32).to_le_bytes());
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for r in rows {
        // SAFETY: UsageRow is repr(C) plain data; viewing it as bytes reads initialized
        // memory (padding-free: every field is 4 or 8 bytes or a byte array, in order).
        let bytes =
            unsafe { std::slice::from_raw_parts((r as *const UsageRow).cast::<u8>(), size_of::<UsageRow>()) };
        out.extend_from_slice(bytes);
    }
    out
}

/// The layout of a row before 0.6.0 appended its last three counters.
const ROW_SIZE_0_5: usize = size_of::<UsageRow>() - 3 * size_of::<u64>();

/// The rows of a saved file, or None if it is not one this build wrote. A file of 0.5's
/// layout (the same row without its last three counters) reads with those counters at 0, so
/// an upgrade that restarts the server keeps its usage history.
pub fn decode(data: &[u8]) -> Option<Vec<UsageRow>> {
    let size = size_of::<UsageRow>();
    if data.len() < 16 || &data[..8] != FILE_MAGIC {
        return None;
    }
    let row_size = u32::from_le_bytes(data[8..12].try_into().ok()?) as usize;
    let count = u32::from_le_bytes(data[12..16].try_into().ok()?) as usize;
    if (row_size != size && row_size != ROW_SIZE_0_5) || data.len() != 16 + count.checked_mul(row_size)? {
        return None;
    }
    let mut rows = Vec::with_capacity(count);
    for chunk in data[16..].chunks_exact(row_size) {
        let mut r = UsageRow::default();
        // SAFETY: any bytes are a valid UsageRow (integers and byte arrays only); the copy
        // is one saved row, at most a whole row long (row_size <= size).
        unsafe {
            std::ptr::copy_nonoverlapping(chunk.as_ptr(), (&mut r as *mut UsageRow).cast::<u8>(), row_size)
        };
        if r.state != STATE_USED && r.state != STATE_OVERFLOW {
            return None;
        }
        rows.push(r);
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::super::{test_caps, Region};
    use super::*;

    fn key(role: u32, function: &str) -> UsageKey {
        UsageKey {
            database: 5,
            role,
            model_name: Name::new("chat"),
            model_type: Name::new("qwen-plus"),
            function: Name::new(function),
        }
    }

    fn delta(tokens: u64, ms: u64) -> UsageDelta {
        UsageDelta {
            calls: 1,
            requests: 1,
            prompt_tokens: tokens,
            completion_tokens: 1,
            cost_nano_yuan: Some(tokens * 800),
            latency: Some(Duration::from_millis(ms)),
            ..UsageDelta::default()
        }
    }

    #[test]
    fn counts_add_up_per_key() {
        let r = Region::private(test_caps());
        let h = r.usage.add(&key(10, "ai_gen"), &delta(5, 10), None);
        r.usage.add(&key(10, "ai_gen"), &delta(7, 20), Some(h));
        r.usage.add(&key(11, "ai_gen"), &delta(1, 30), Some(h));
        let rows = r.usage.rows();
        assert_eq!(rows.len(), 2);
        let a = rows.iter().find(|r| r.key.role == 10).unwrap();
        assert_eq!((a.calls, a.prompt_tokens, a.completion_tokens), (2, 12, 2));
        assert_eq!(a.cost_nano_yuan(), Some(12 * 800));
        assert_eq!(a.latency_max_us, 20_000);
        assert!(a.first_used_us > 0 && a.last_used_us >= a.first_used_us);
    }

    #[test]
    fn an_unpriced_request_makes_the_cost_unknown() {
        let r = Region::private(test_caps());
        r.usage.add(&key(1, "ai_gen"), &delta(5, 1), None);
        r.usage.add(&key(1, "ai_gen"), &UsageDelta { prompt_tokens: 3, ..UsageDelta::default() }, None);
        assert_eq!(r.usage.rows()[0].cost_nano_yuan(), None);
    }

    #[test]
    fn percentiles_never_understate() {
        let mut row = UsageRow::default();
        for ms in 1..=100 {
            row.add(&delta(0, ms), 1);
        }
        let p50 = row.latency_percentile(0.5).unwrap();
        let p95 = row.latency_percentile(0.95).unwrap();
        assert!(p50 >= Duration::from_millis(50) && p50 <= Duration::from_millis(71), "{p50:?}");
        assert!(p95 >= Duration::from_millis(95) && p95 <= Duration::from_millis(100), "{p95:?}");
        assert_eq!(row.latency_percentile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(UsageRow::default().latency_percentile(0.5), None);
    }

    #[test]
    fn a_full_table_counts_new_keys_in_the_overflow_row() {
        let r = Region::private(test_caps());
        let n = r.capacities().usage_entries;
        for role in 0..n + 3 {
            r.usage.add(&key(role, "ai_embed"), &delta(1, 1), None);
        }
        let rows = r.usage.rows();
        assert_eq!(rows.len() as u32, n + 1);
        let over = rows.iter().find(|r| r.is_overflow()).unwrap();
        assert_eq!(over.calls, 3);
        assert_eq!(rows.iter().map(|r| r.calls).sum::<u64>(), u64::from(n + 3));
    }

    #[test]
    fn saved_rows_come_back_and_garbage_is_refused() {
        let r = Region::private(test_caps());
        r.usage.add(&key(1, "ai_gen"), &delta(5, 3), None);
        r.usage.add(&key(2, "ai_embed"), &delta(6, 4), None);
        let file = encode(&r.usage.rows());
        let back = decode(&file).unwrap();
        let r2 = Region::private(test_caps());
        r2.usage.restore(&back);
        assert_eq!(r2.usage.rows(), r.usage.rows());
        assert!(decode(&file[..file.len() - 1]).is_none());
        assert!(decode(b"not a usage file").is_none());
        let mut bad = file.clone();
        bad[16] = 9; // a state no row has
        assert!(decode(&bad).is_none());
    }

    #[test]
    fn reset_forgets_only_what_it_is_asked_to() {
        let r = Region::private(test_caps());
        r.usage.add(&key(1, "ai_gen"), &delta(5, 3), None);
        let mut other = key(1, "ai_gen");
        other.database = 6;
        r.usage.add(&other, &delta(5, 3), None);
        assert_eq!(r.usage.reset(|row| row.key.database == 5), 1);
        assert_eq!(r.usage.rows().len(), 1);
    }

    #[test]
    fn a_file_of_the_0_5_layout_reads_with_the_new_counters_at_zero() {
        let row = UsageRow {
            state: STATE_USED,
            calls: 7,
            last_used_us: 42,
            shared_calls: 9,
            ..UsageRow::default()
        };
        let whole = encode(&[row]);
        let mut old = whole[..16 + ROW_SIZE_0_5].to_vec();
        old[8..12].copy_from_slice(&(ROW_SIZE_0_5 as u32).to_le_bytes());
        let read = decode(&old).unwrap();
        assert_eq!((read[0].calls, read[0].last_used_us, read[0].shared_calls), (7, 42, 0));
        assert_eq!(decode(&whole).unwrap()[0].shared_calls, 9);
        let mut odd = old.clone();
        odd[8..12].copy_from_slice(&((ROW_SIZE_0_5 - 8) as u32).to_le_bytes());
        assert_eq!(decode(&odd), None);
    }
}
