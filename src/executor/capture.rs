//! Capture mode: how `ai_update` keeps one row's failed AI call from failing the batch.
//!
//! A job (`functions::column`) computes a batch of rows with one query through AI Batch
//! nodes. Raised as usual, the first row's error would end that query, and with it the
//! batch. So the job names its query here; the planner hook marks the chain of AI Batch nodes
//! at the top of that query's plan (each returns rows one for one, in order, so the n-th row
//! one of them returns is the n-th row of the query), and while the job fetches, a marked
//! node hands a call's error to `record` with the row's position and gives the call NULL.
//! The job then reports that row as failed and writes nothing for it.
//!
//! Only the plan of that exact query text is marked, so a query planned while the job runs
//! (a trigger's, a function's) raises its errors as always; and a marked node raises them
//! too when no job is collecting (it cannot run then, but nothing relies on that).

use bailian_core::AiError;
use std::cell::RefCell;
use std::ffi::{c_char, CStr};

/// Errors captured during a fetch: (row position, error).
pub type Captured = Vec<(u64, AiError)>;

thread_local! {
    static QUERY: RefCell<Option<String>> = const { RefCell::new(None) };
    static SINK: RefCell<Option<Captured>> = const { RefCell::new(None) };
    static ROUND: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// While alive, plans of `sql` get capturing AI Batch nodes (always batched, reading ahead
/// the whole window, whatever `pg_bailian.batch_execution` says).
pub struct Marked(());

pub fn mark(sql: &str) -> Marked {
    QUERY.with(|q| *q.borrow_mut() = Some(sql.to_string()));
    Marked(())
}

impl Drop for Marked {
    fn drop(&mut self) {
        QUERY.with(|q| *q.borrow_mut() = None);
        SINK.with(|s| *s.borrow_mut() = None);
        ROUND.with(|r| r.set(0));
        super::carry::clear();
    }
}

/// Whether a job's query is marked: its nodes may carry what they read ahead (`carry`).
pub(super) fn marked() -> bool {
    QUERY.with(|q| q.borrow().is_some())
}

/// A marked node at its end: the rows one round of its requests in flight carries
/// (`pg_bailian.max_concurrency` × the inputs per request it packed).
pub(super) fn note_round(rows: usize) {
    ROUND.with(|r| r.set(r.get().max(rows)));
}

/// The rows one round of requests carried in the marked query's last run (0 before any):
/// a chunk of whole rounds keeps every request slot busy to its end.
pub fn round() -> usize {
    ROUND.with(|r| r.get())
}

/// Whether the query being planned is the marked one.
pub(super) fn is_marked(query_string: *const c_char) -> bool {
    if query_string.is_null() {
        return false;
    }
    QUERY.with(|q| match q.borrow().as_deref() {
        // SAFETY: the planner's query string is NUL-terminated and outlives planning.
        Some(sql) => unsafe { CStr::from_ptr(query_string) }.to_bytes() == sql.as_bytes(),
        None => false,
    })
}

/// Runs `fetch` collecting the errors marked nodes capture: (0-based position of the row in
/// the query's output since its start, error). If `fetch` unwinds, what it captured is dropped with it.
pub fn collect<T>(fetch: impl FnOnce() -> T) -> (T, Captured) {
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            SINK.with(|s| *s.borrow_mut() = None);
        }
    }
    SINK.with(|s| *s.borrow_mut() = Some(Vec::new()));
    let stop = Stop;
    let out = fetch();
    let captured = SINK.with(|s| s.borrow_mut().take()).unwrap_or_default();
    drop(stop);
    (out, captured)
}

/// A marked node's failed call at row `position`: kept for the job (Ok), or handed back to
/// be raised when no job is collecting.
pub(super) fn record(position: u64, error: AiError) -> Result<(), AiError> {
    SINK.with(|s| match s.borrow_mut().as_mut() {
        Some(sink) => {
            sink.push((position, error));
            Ok(())
        }
        None => Err(error),
    })
}
