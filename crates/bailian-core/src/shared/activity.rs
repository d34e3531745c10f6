//! One slot per backend with AI work in progress: what `ai_activity` shows.
//!
//! A backend claims a slot the first time it calls a model and gives it back when it exits.
//! Only the owner writes its slot, with plain atomic stores, so updating it costs no lock;
//! a reader may see one field a moment newer than another, which a live view can live with.
//! A slot belongs to a statement (or a column job's CALL) by its start time: the view shows
//! it while that statement is still the backend's current one in `pg_stat_activity`.

use super::{Name, Table};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
#[repr(C)]
pub struct ActivitySlot {
    pid: AtomicU32,
    database: AtomicU32,
    role: AtomicU32,
    /// Requests waiting for the rate limiter right now.
    waiting: AtomicU32,
    /// The statement's start (PostgreSQL timestamp, µs since 2000-01-01).
    statement_start: AtomicI64,
    model_name: [AtomicU64; 8],
    job: [AtomicU64; 8],
    requests: AtomicU64,
    in_flight: AtomicI64,
    retries: AtomicU64,
    throttled: AtomicU64,
    tokens: AtomicU64,
    cost_nano_yuan: AtomicU64,
    cost_unknown: AtomicU32,
    _pad: AtomicU32,
    rows_done: AtomicI64,
    /// -1: unknown.
    rows_total: AtomicI64,
    job_started_us: AtomicI64,
}

/// A copy of a slot, for the view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivityRow {
    pub pid: u32,
    pub database: u32,
    pub role: u32,
    pub statement_start: i64,
    pub model_name: String,
    pub job: String,
    pub requests: u64,
    pub in_flight: i64,
    pub retries: u64,
    pub throttled: u64,
    pub tokens: u64,
    pub cost_nano_yuan: Option<u64>,
    pub rows_done: i64,
    pub rows_total: Option<i64>,
    pub job_started_us: i64,
    pub waiting: bool,
}

fn store_name(to: &[AtomicU64; 8], s: &str) {
    let n = Name::new(s);
    for (i, w) in to.iter().enumerate() {
        w.store(u64::from_le_bytes(n.0[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8])), Relaxed);
    }
}

fn load_name(from: &[AtomicU64; 8]) -> String {
    let mut n = Name::default();
    for (i, w) in from.iter().enumerate() {
        n.0[i * 8..i * 8 + 8].copy_from_slice(&w.load(Relaxed).to_le_bytes());
    }
    n.as_str().to_string()
}

pub struct Activity(Table<ActivitySlot>);

impl Activity {
    pub(crate) fn bytes(len: u32) -> usize {
        Table::<ActivitySlot>::bytes(len)
    }

    /// # Safety
    /// As `Table::over`.
    pub(crate) unsafe fn over(mem: *mut u8, len: u32) -> Activity {
        Activity(Table::over(mem, len))
    }

    /// This backend's slot: the one it holds, or a free one. None when all are taken
    /// (there is one per backend PostgreSQL may start, so only leaked slots can fill it).
    pub fn claim(&'static self, pid: u32) -> Option<Slot> {
        let index = self.0.with(|rows| {
            let i = rows
                .iter()
                .position(|r| r.pid.load(Relaxed) == pid)
                .or_else(|| rows.iter().position(|r| r.pid.load(Relaxed) == 0))?;
            let r = &rows[i];
            r.pid.store(pid, Relaxed);
            Some(i)
        })?;
        Some(Slot { slot: self.0.row(index)?, pid })
    }

    /// Gives back `pid`'s slot (at backend exit), or any slot whose backend `alive` says is
    /// gone.
    pub fn release(&self, pid: u32) {
        self.0.with(|rows| {
            for r in rows.iter().filter(|r| r.pid.load(Relaxed) == pid) {
                r.pid.store(0, Relaxed);
            }
        })
    }

    pub fn rows(&self) -> Vec<ActivityRow> {
        (0..self.0.len())
            .filter_map(|i| self.0.row(i))
            .filter(|s| s.pid.load(Relaxed) != 0)
            .map(|s| ActivityRow {
                pid: s.pid.load(Relaxed),
                database: s.database.load(Relaxed),
                role: s.role.load(Relaxed),
                statement_start: s.statement_start.load(Relaxed),
                model_name: load_name(&s.model_name),
                job: load_name(&s.job),
                requests: s.requests.load(Relaxed),
                in_flight: s.in_flight.load(Relaxed).max(0),
                retries: s.retries.load(Relaxed),
                throttled: s.throttled.load(Relaxed),
                tokens: s.tokens.load(Relaxed),
                cost_nano_yuan: (s.cost_unknown.load(Relaxed) == 0).then(|| s.cost_nano_yuan.load(Relaxed)),
                rows_done: s.rows_done.load(Relaxed),
                rows_total: Some(s.rows_total.load(Relaxed)).filter(|t| *t >= 0),
                job_started_us: s.job_started_us.load(Relaxed),
                waiting: s.waiting.load(Relaxed) > 0,
            })
            .collect()
    }
}

/// A backend's own slot.
pub struct Slot {
    slot: &'static ActivitySlot,
    pid: u32,
}

impl Slot {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A new statement: counters from zero.
    pub fn begin(&self, database: u32, role: u32, statement_start: i64) {
        let s = self.slot;
        if s.statement_start.load(Relaxed) == statement_start && s.role.load(Relaxed) == role {
            return;
        }
        s.database.store(database, Relaxed);
        s.role.store(role, Relaxed);
        s.statement_start.store(statement_start, Relaxed);
        // A statement's row shows none of the last one's: its model is set by the account
        // that makes the first call (a job begins before it has one).
        store_name(&s.model_name, "");
        store_name(&s.job, "");
        for c in [&s.requests, &s.retries, &s.throttled, &s.tokens, &s.cost_nano_yuan] {
            c.store(0, Relaxed);
        }
        s.in_flight.store(0, Relaxed);
        s.cost_unknown.store(0, Relaxed);
        s.waiting.store(0, Relaxed);
        s.rows_done.store(0, Relaxed);
        s.rows_total.store(-1, Relaxed);
    }

    pub fn model(&self, model_name: &str) {
        store_name(&self.slot.model_name, model_name);
    }

    /// A column job: its name and how many rows it has to do (None: not known yet).
    pub fn job(&self, name: &str, rows_total: Option<i64>, started_us: i64) {
        store_name(&self.slot.job, name);
        self.slot.rows_total.store(rows_total.unwrap_or(-1), Relaxed);
        self.slot.job_started_us.store(started_us, Relaxed);
    }

    pub fn rows_done(&self, done: i64) {
        self.slot.rows_done.store(done, Relaxed);
    }

    pub fn sent(&self, retry: bool) {
        self.slot.requests.fetch_add(1, Relaxed);
        self.slot.in_flight.fetch_add(1, Relaxed);
        if retry {
            self.slot.retries.fetch_add(1, Relaxed);
        }
    }

    pub fn answered(&self, throttled: bool, tokens: u64, cost_nano_yuan: Option<u64>) {
        let s = self.slot;
        s.in_flight.fetch_sub(1, Relaxed);
        if throttled {
            s.throttled.fetch_add(1, Relaxed);
        }
        s.tokens.fetch_add(tokens, Relaxed);
        match cost_nano_yuan {
            Some(c) => {
                s.cost_nano_yuan.fetch_add(c, Relaxed);
            }
            None if tokens > 0 => s.cost_unknown.store(1, Relaxed),
            None => {}
        }
    }

    pub fn waiting(&self, starts: bool) {
        if starts {
            self.slot.waiting.fetch_add(1, Relaxed);
        } else {
            let _ = self.slot.waiting.fetch_update(Relaxed, Relaxed, |w| w.checked_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_caps, Region};

    #[test]
    fn a_slot_shows_its_statement_and_is_given_back() {
        let r = Region::private(test_caps());
        let s = r.activity.claim(42).unwrap();
        s.begin(5, 10, 777);
        s.model("chat");
        s.sent(false);
        s.sent(true);
        s.answered(false, 12, Some(100));
        s.waiting(true);
        let rows = r.activity.rows();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.pid, row.requests, row.in_flight, row.retries, row.tokens), (42, 2, 1, 1, 12));
        assert_eq!(row.model_name, "chat");
        assert_eq!(row.cost_nano_yuan, Some(100));
        assert!(row.waiting);
        // A new statement starts from zero, with no model until its first call names one.
        s.begin(5, 10, 778);
        assert_eq!(r.activity.rows()[0].requests, 0);
        assert_eq!(r.activity.rows()[0].model_name, "");
        r.activity.release(42);
        assert!(r.activity.rows().is_empty());
        // Every slot can be claimed, then no more.
        let n = r.capacities().backends;
        for pid in 1..=n {
            assert!(r.activity.claim(pid).is_some());
        }
        assert!(r.activity.claim(n + 1).is_none());
    }
}
