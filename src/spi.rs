//! The SPI pieces a procedure that commits needs and pgrx does not wrap: its own non-atomic
//! connection (so it may `COMMIT`), and subtransactions that let one failing statement be
//! rolled back without losing the rest of the transaction.

use crate::entry::sqlstate_text as code_text;
use bailian_core::AiError;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

/// A non-atomic SPI connection for the running procedure; pgrx's `Spi::connect` opens nested
/// (atomic) connections inside it as usual. Closed on drop, also when an error unwinds.
pub struct NonAtomicSpi {
    /// False for a connection whose caller owns the transaction (`connect_atomic`).
    commits: bool,
}

impl NonAtomicSpi {
    pub fn connect() -> Result<NonAtomicSpi, AiError> {
        // SAFETY: opens a connection of this call's own; the guard closes it.
        let rc = unsafe { pg_sys::SPI_connect_ext(pg_sys::SPI_OPT_NONATOMIC as i32) };
        if rc != pg_sys::SPI_OK_CONNECT as i32 {
            return Err(AiError::Internal { message: format!("SPI_connect_ext failed ({rc})") });
        }
        Ok(NonAtomicSpi { commits: true })
    }

    /// A connection on which `commit` commits nothing: for a background worker, which has
    /// no portal for SPI_commit to hand its snapshot to and commits when the work returns.
    pub fn connect_atomic() -> Result<NonAtomicSpi, AiError> {
        // SAFETY: as in connect.
        let rc = unsafe { pg_sys::SPI_connect() };
        if rc != pg_sys::SPI_OK_CONNECT as i32 {
            return Err(AiError::Internal { message: format!("SPI_connect failed ({rc})") });
        }
        Ok(NonAtomicSpi { commits: false })
    }

    /// Whether `commit` commits (false for `connect_atomic`'s connection).
    pub fn commits(&self) -> bool {
        self.commits
    }

    /// Commits the transaction; the connection stays open in the new one.
    pub fn commit(&self) {
        if !self.commits {
            return;
        }
        // SAFETY: this connection is non-atomic and, nested connections being closed when
        // their closures return, it is the innermost one.
        unsafe { pg_sys::SPI_commit() };
    }
}

impl Drop for NonAtomicSpi {
    fn drop(&mut self) {
        // SAFETY: closes the connection opened in connect(). On an error unwinding through
        // here, pgrx has already flushed PostgreSQL's error state; SPI_finish only pops the
        // connection, and the transaction abort that follows finds nothing left to clean.
        unsafe { pg_sys::SPI_finish() };
    }
}

/// An internal subtransaction, as a plpgsql `BEGIN ... EXCEPTION` block makes one: release it
/// to keep its work, roll it back to undo it. Dropping it without either rolls it back.
///
/// It may stay open across several steps of a job, each in a scratch memory context of its
/// own; so ending it restores the memory context current when it ends (ending a
/// subtransaction switches to the parent's CurTransactionContext), and the resource owner
/// current when it began (a subtransaction never spans a commit).
pub struct SubTransaction {
    owner: pg_sys::ResourceOwner,
    open: bool,
}

impl SubTransaction {
    pub fn begin() -> SubTransaction {
        // SAFETY: plain reads of the current memory context and resource owner, then
        // BeginInternalSubTransaction, which switches both; the memory context is switched
        // back so statements run where the caller allocates (as plpgsql does).
        unsafe {
            let memory = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(memory);
            SubTransaction { owner, open: true }
        }
    }

    pub fn release(mut self) {
        self.open = false;
        // SAFETY: the subtransaction begun above is the current one; the caller's memory
        // context and resource owner are restored after it ends.
        unsafe {
            let memory = pg_sys::CurrentMemoryContext;
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(memory);
            pg_sys::CurrentResourceOwner = self.owner;
        }
    }

    pub fn rollback(mut self) {
        self.open = false;
        self.abort();
    }

    fn abort(&self) {
        // SAFETY: as in release(); rolling back releases what the subtransaction acquired
        // (locks, buffers, nested SPI connections) through its resource owner.
        unsafe {
            let memory = pg_sys::CurrentMemoryContext;
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(memory);
            pg_sys::CurrentResourceOwner = self.owner;
        }
    }
}

impl Drop for SubTransaction {
    fn drop(&mut self) {
        if self.open {
            self.abort();
        }
    }
}

/// A memory context for what one step of a long job allocates (datums built for a statement,
/// values read back), emptied after each step. Without it, such allocations land in the
/// procedure's SPI context, which lives as long as the CALL: a job over 100,000 rows would
/// keep every row's vector.
pub struct Scratch(pg_sys::MemoryContext);

impl Scratch {
    pub fn new() -> Scratch {
        // SAFETY: a child of TopMemoryContext, so it outlives the job's commits; deleted on
        // drop (also when an error unwinds through its owner).
        Scratch(unsafe {
            pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                c"pg_bailian job step".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            )
        })
    }

    /// Runs `f` with this context current and keeps what it allocates (until `reset`).
    pub fn keep<T>(&self, f: impl FnOnce() -> T) -> T {
        // SAFETY: the context is alive (owned by self).
        let back = Back(unsafe { pg_sys::MemoryContextSwitchTo(self.0) });
        let out = f();
        drop(back);
        out
    }

    /// Frees what `keep` kept.
    pub fn reset(&self) {
        // SAFETY: the context is alive and not current (keep and run switch back).
        unsafe { pg_sys::MemoryContextReset(self.0) };
    }

    /// Runs `f` with this context current, then empties it (nothing allocated in the step
    /// is used after it: results are Rust values).
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let out = self.keep(f);
        self.reset();
        out
    }
}

/// Switches back to the memory context current before a `Scratch` step, which outlives it;
/// also when the step unwinds, so the scratch context is never left current.
struct Back(pg_sys::MemoryContext);

impl Drop for Back {
    fn drop(&mut self) {
        // SAFETY: a context that was current when the step began, and outlives the step.
        unsafe { pg_sys::MemoryContextSwitchTo(self.0) };
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: deletes the context created in new(); run() never leaves it current.
        unsafe { pg_sys::MemoryContextDelete(self.0) };
    }
}

/// A statement prepared once per backend and kept (`SPI_keepplan`) in `cell`: for lookups a
/// call makes per row. Its SQL must name everything with its schema; a plan whose table was
/// recreated is replanned by PostgreSQL. `f` runs it.
pub fn with_kept_plan<T>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Option<pgrx::spi::OwnedPreparedStatement>>>,
    sql: &str,
    types: &[pgrx::PgOid],
    f: impl FnOnce(&pgrx::spi::OwnedPreparedStatement) -> Result<T, pgrx::spi::Error>,
) -> Result<T, pgrx::spi::Error> {
    if cell.with(|p| p.borrow().is_none()) {
        let plan = pgrx::spi::Spi::connect_mut(|c| c.prepare_mut(sql, types).map(|p| p.keep()))?;
        cell.with(|p| *p.borrow_mut() = Some(plan));
    }
    cell.with(|p| match p.borrow().as_ref() {
        Some(plan) => f(plan),
        None => Err(pgrx::spi::Error::NoTupleTable),
    })
}

/// How an error raised inside a subtransaction is to be treated.
pub enum Caught {
    /// The statement failed for a reason of its own (a constraint, a trigger, a value the
    /// target rejects, a lock it could not get): the subtransaction is rolled back and the
    /// caller goes on. Carries "SQLSTATE: message".
    Statement(String),
}

/// Runs `f` in the open subtransaction `sub`. A PostgreSQL error of the kinds a single row
/// can cause (see `row_level`) comes back as `Err(Caught)` after rolling `sub` back; any other
/// error (a cancel, running out of memory or disk, an internal error) rolls back and
/// continues unwinding, ending the statement as it would without the subtransaction.
pub fn try_in<T>(
    sub: SubTransaction,
    f: impl FnOnce() -> T + std::panic::UnwindSafe,
) -> (Result<T, Caught>, Option<SubTransaction>) {
    try_in_catching(sub, row_level_code, f)
}

/// `try_in`, catching the errors whose SQLSTATE `caught` accepts.
pub fn try_in_catching<T>(
    sub: SubTransaction,
    caught: fn(&str) -> bool,
    f: impl FnOnce() -> T + std::panic::UnwindSafe,
) -> (Result<T, Caught>, Option<SubTransaction>) {
    // The subtransaction is taken by whichever of the two closures ends it.
    let sub = std::panic::AssertUnwindSafe(std::cell::RefCell::new(Some(sub)));
    let result = PgTryBuilder::new(|| Ok(f()))
        .catch_others(|e| {
            if let Some(s) = sub.borrow_mut().take() {
                s.rollback();
            }
            match &e {
                CaughtError::PostgresError(report) | CaughtError::ErrorReport(report)
                    if caught(&code_text(report.sql_error_code())) =>
                {
                    Err(Caught::Statement(format!(
                        "{}: {}",
                        code_text(report.sql_error_code()),
                        report.message()
                    )))
                }
                _ => e.rethrow(),
            }
        })
        .execute();
    (result, sub.0.into_inner())
}

/// Errors one row's statement can cause without saying anything about the others: data
/// exceptions (22), integrity violations (23), trigger and check-option failures (09, 27, 44),
/// plpgsql RAISE (P0), serialization failures and deadlocks (40), a lock not available (55P03).
/// Everything else (a cancel, a read-only transaction, resources, internal errors) ends the job.
pub fn row_level_code(text: &str) -> bool {
    // 54000: a value of this row passes a limit (pg_bailian's, or PostgreSQL's 1 GB).
    matches!(text.get(..2), Some("22" | "23" | "09" | "27" | "44" | "P0" | "40"))
        || text == "55P03"
        || text == "54000"
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_row_level_errors_are_caught() {
        use pgrx::PgSqlErrorCode as C;
        assert!(super::row_level_code(&super::code_text(C::ERRCODE_CHECK_VIOLATION)));
        assert!(super::row_level_code(&super::code_text(C::ERRCODE_RAISE_EXCEPTION)));
        assert!(super::row_level_code(&super::code_text(C::ERRCODE_LOCK_NOT_AVAILABLE)));
        assert!(!super::row_level_code(&super::code_text(C::ERRCODE_QUERY_CANCELED)));
        assert!(!super::row_level_code(&super::code_text(C::ERRCODE_READ_ONLY_SQL_TRANSACTION)));
        assert!(!super::row_level_code(&super::code_text(C::ERRCODE_OUT_OF_MEMORY)));
    }
}
