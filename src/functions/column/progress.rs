//! What a column job has done, reported as it goes (a NOTICE per commit) and at the end.

use std::time::Instant;

/// Failures reported by key per commit; the rest are counted only.
const REPORTED_PER_COMMIT: usize = 5;

/// Keys of locked rows kept for the end-of-job recheck and report.
pub const LOCKED_KEYS_KEPT: usize = 1000;

pub type Key = Vec<Option<String>>;

pub struct Progress {
    procedure: &'static str,
    key_columns: String,
    target_column: String,
    pub total: i64,
    pub filled: i64,
    pub failed: i64,
    /// Filled or changed by someone else since the job counted it.
    pub skipped: i64,
    /// Rows another job on the same column had claimed, or filled while this one ran.
    pub other_session: i64,
    /// Rows another transaction held locked; their keys (up to LOCKED_KEYS_KEPT).
    pub locked: Vec<Key>,
    locked_beyond: i64,
    /// Every failed row with its reason, kept when a sync asked (`keep_failures`): a sync's
    /// fill takes at most a run's rows (`sync::fill::RUN_ROWS`), so this stays small.
    pub failures: Option<Vec<(Key, String)>>,
    reported: usize,
    /// The first failed rows with their reasons (a node's part of a job on a distributed
    /// table reports them to the coordinator).
    first_failures: Vec<(String, String)>,
    started: Instant,
}

/// Failed rows kept by key for `reported_failures`.
const FIRST_FAILURES_KEPT: usize = 10;

pub fn show_key(key: &Key) -> String {
    key.iter().map(|k| k.as_deref().unwrap_or("NULL")).collect::<Vec<_>>().join(", ")
}

impl Progress {
    pub fn new(procedure: &'static str, key_columns: String, target_column: String, total: i64) -> Progress {
        Progress {
            procedure,
            key_columns,
            target_column,
            total,
            filled: 0,
            failed: 0,
            skipped: 0,
            other_session: 0,
            locked: Vec::new(),
            locked_beyond: 0,
            failures: None,
            reported: 0,
            first_failures: Vec::new(),
            started: Instant::now(),
        }
    }

    pub fn locked_count(&self) -> i64 {
        self.locked.len() as i64 + self.locked_beyond
    }

    /// The first failed rows (their keys as text) and why.
    pub fn reported_failures(&self) -> Vec<(String, String)> {
        self.first_failures.clone()
    }

    pub fn done(&self) -> i64 {
        self.filled + self.failed + self.skipped + self.other_session + self.locked_count()
    }

    pub fn failure(&mut self, key: &Key, reason: &str) {
        self.failed += 1;
        if self.first_failures.len() < FIRST_FAILURES_KEPT {
            self.first_failures.push((show_key(key), reason.to_string()));
        }
        if let Some(kept) = self.failures.as_mut() {
            kept.push((key.clone(), reason.to_string()));
        }
        if self.reported < REPORTED_PER_COMMIT {
            self.reported += 1;
            pgrx::warning!(
                "{}: row ({})=({}) failed: {reason}",
                self.procedure,
                self.key_columns,
                show_key(key)
            );
        }
    }

    pub fn locked(&mut self, key: Key) {
        if self.locked.len() < LOCKED_KEYS_KEPT {
            self.locked.push(key);
        } else {
            self.locked_beyond += 1;
        }
    }

    /// After a commit: the progress line.
    pub fn committed(&mut self) {
        self.reported = 0;
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let done = self.done();
        let rate = done as f64 / elapsed;
        pgrx::notice!(
            "{}: {done}/{} rows ({:.1} %), {:.1} rows/s, ETA {:.1} s",
            self.procedure,
            self.total,
            100.0 * done as f64 / self.total.max(1) as f64,
            rate,
            (self.total - done).max(0) as f64 / rate.max(0.001)
        );
    }

    pub fn finish(&self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        pgrx::notice!(
            "{}: finished in {:.1} s: {} filled, {} failed, {} skipped, {} locked by other transactions, \
             {} done by another session, {:.1} rows/s",
            self.procedure,
            elapsed,
            self.filled,
            self.failed,
            self.skipped,
            self.locked_count(),
            self.other_session,
            self.done() as f64 / elapsed.max(0.001)
        );
        // A sync's fill (which keeps its failures) says nothing more: its failed rows are in
        // ai_sync_errors, and its locked rows stay queued for the next pass.
        if self.failures.is_some() {
            return;
        }
        if self.failed > 0 {
            pgrx::warning!(
                "{}: {} rows failed and keep a NULL {}; CALL {} again to retry them",
                self.procedure,
                self.failed,
                self.target_column,
                self.procedure
            );
        }
        if self.locked_count() > 0 {
            let examples: Vec<String> =
                self.locked.iter().take(5).map(|k| format!("({})", show_key(k))).collect();
            pgrx::warning!(
                "{}: {} rows were skipped because another transaction holds them locked (({})={}{}); \
                 CALL {} again once it ends",
                self.procedure,
                self.locked_count(),
                self.key_columns,
                examples.join(", "),
                if self.locked_count() > 5 { ", ..." } else { "" },
                self.procedure
            );
        }
    }
}
