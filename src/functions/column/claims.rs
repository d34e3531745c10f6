//! Claims on rows a column job has read but not yet settled, so that two sessions filling the
//! same column never send the same row.
//!
//! A job holds no row locks while its requests are in flight (they would block writers to
//! those rows for as long as the provider takes), and it commits every batch; another session
//! could then pick the same rows up and pay for them twice. A claim is a session-level lock (it
//! survives commits) on (table, target column, key), taken when the row is read. A row the job
//! wrote keeps its claim until the write commits (or, when a batch is larger than a chunk, until
//! the job needs room for the next chunk's claims; its UPDATE's row lock protects it until the
//! commit then). Every other row gives its claim back as soon as its outcome is settled,
//! a failed row included: the job never reads a row twice (it pages in key order), so it
//! needs no claim to remember its own failures, and the lock table never holds more than a
//! job's chunk and one page read ahead (the next chunk's first rows, whose requests start
//! while this chunk's are in flight, among them), however many rows fail. A session reading
//! behind this one may then try a row this job failed on: a fresh attempt, as a new CALL
//! would make.
//!
//! A row whose claim another session holds is not counted as done: the job defers it
//! (`Reader::deferred` in the job engine) and comes back to it once its main pass is over,
//! waiting for the claim if it must (`wait_for`). It waits only while it holds no claim and
//! no uncommitted write, so no cycle of waits can run through claims: a deadlock is
//! impossible, and a cancel or statement_timeout ends the wait as any lock wait. So a claim
//! names its row only through a hash, and two keys hashing alike cost a wait, never a row.
//!
//! Claims are advisory locks in PostgreSQL's shared lock table, in a space of their own
//! (`pg_locks` shows them as locktype advisory, objsubid = 20562, classid = the table's oid,
//! and a 64-bit hash of the database, the target column and the key split over `database`
//! (its high half, so that column names no database) and `objid` (its low half)):
//! `pg_advisory_lock` and friends use objsubid 1 and 2, so no SQL call can take or block a
//! claim, nor wait on one. They are released on every way out, including an error unwinding
//! through the job (a wait that a cancel ends included), and a backend that exits releases
//! them anyway.

use bailian_core::AiError;
use pgrx::pg_sys;
use std::collections::HashSet;

/// One row's claim: the 64-bit hash of its database, target column and key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Claim(u64);

/// The claims a job holds.
pub struct Claims {
    table: pg_sys::Oid,
    database: u32,
    column: i16,
    held: HashSet<Claim>,
    /// Held claims of rows written since the last commit (see the module doc).
    written: Vec<Claim>,
}

/// The advisory-lock space of claims ("PR" for pg_bailian rows): not 1 or 2, the spaces of
/// pg_advisory_lock(bigint) and pg_advisory_lock(int, int).
const CLAIM_SPACE: u16 = 0x5052;

/// FNV-1a (64-bit) over the database, the target column and the key's text. Stable across
/// backends and releases (it is written out here, not taken from std). The input is
/// unambiguous: key texts are UTF-8, which never holds the bytes 0xFE (a NULL part) and 0xFF
/// (after every part). Not collision-resistant, and it need not be: see the module doc.
fn claim_hash(database: u32, column: i16, key: &[Option<String>]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&database.to_le_bytes());
    eat(&column.to_le_bytes());
    for part in key {
        match part {
            Some(text) => eat(text.as_bytes()),
            None => eat(&[0xFE]),
        }
        eat(&[0xFF]);
    }
    h
}

impl Claims {
    pub fn new(table: pg_sys::Oid, column: i16) -> Claims {
        // SAFETY: MyDatabaseId is set at connection start and never changes afterwards.
        let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
        Claims { table, database, column, held: HashSet::new(), written: Vec::new() }
    }

    /// The claim for the row with these key values.
    pub fn claim_of(&self, key: &[Option<String>]) -> Claim {
        Claim(claim_hash(self.database, self.column, key))
    }

    fn tag(&self, claim: Claim) -> pg_sys::LOCKTAG {
        // The hash over field1 and field3, the table in field2 (pg_locks' classid), in a
        // space of our own (field4).
        pg_sys::LOCKTAG {
            locktag_field1: (claim.0 >> 32) as u32,
            locktag_field2: self.table.to_u32(),
            locktag_field3: claim.0 as u32,
            locktag_field4: CLAIM_SPACE,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        }
    }

    /// Takes the claim unless it is held (never waits). A claim this job already holds (two
    /// keys hashing alike) counts as held: the second row is deferred like any other.
    pub fn try_take(&mut self, claim: Claim) -> bool {
        if self.held.contains(&claim) {
            return false;
        }
        let tag = self.tag(claim);
        // SAFETY: a non-blocking session-level advisory lock, as pg_try_advisory_lock takes.
        let got = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, true, true) };
        self.acquired(
            claim,
            got == pg_sys::LockAcquireResult::LOCKACQUIRE_OK,
            got == pg_sys::LockAcquireResult::LOCKACQUIRE_ALREADY_HELD,
        )
    }

    /// Waits for the claim, which the job may do only while it holds none (see the module
    /// doc). A cancel, a statement_timeout or a deadlock report ends the wait with an ERROR
    /// (a panic that unwinds through the job); the aborting transaction takes the wait
    /// off the lock's queue.
    pub fn wait_for(&mut self, claim: Claim) -> Result<(), AiError> {
        if !self.held.is_empty() {
            return Err(AiError::Internal {
                message: format!("a job waited for a claim holding {} others", self.held.len()),
            });
        }
        let tag = self.tag(claim);
        // SAFETY: a blocking session-level advisory lock, as pg_advisory_lock takes; the wait
        // services interrupts, and an ERROR it raises is turned into a panic by pgrx.
        let got = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, true, false) };
        let ok = got == pg_sys::LockAcquireResult::LOCKACQUIRE_OK;
        if self.acquired(claim, ok, got == pg_sys::LockAcquireResult::LOCKACQUIRE_ALREADY_HELD) {
            Ok(())
        } else {
            Err(AiError::Internal { message: "a claim waited for was not granted".into() })
        }
    }

    /// Records what LockAcquire answered: granted (`ok`), or `already` held by this session.
    /// Returns whether the job now holds the claim.
    fn acquired(&mut self, claim: Claim, ok: bool, already: bool) -> bool {
        if already {
            // Not in `held`, yet this session holds it: left by an earlier job whose wait for
            // it a cancel ended just as it was granted. PostgreSQL then keeps the lock for the
            // aborted wait (LockErrorCleanup grants an awaited lock it finds granted), and a
            // session lock outlives the transaction, after the job's Drop has run. No other
            // session can hold it, so the job adopts it: the count just added goes, the one
            // held is released like any other claim of the job.
            // SAFETY: releases the count just added; the session keeps the one it held.
            unsafe { pg_sys::LockRelease(&self.tag(claim), pg_sys::ExclusiveLock as i32, true) };
        }
        if ok || already {
            self.held.insert(claim);
        }
        ok || already
    }

    /// Keeps a written row's claim until the write commits (`release_written`).
    pub fn written(&mut self, claim: Claim) {
        if self.held.contains(&claim) {
            self.written.push(claim);
        }
    }

    /// How many claims of written rows are held.
    pub fn written_count(&self) -> usize {
        self.written.len()
    }

    /// After a commit, or to make room: the written rows' claims go.
    pub fn release_written(&mut self) {
        for claim in std::mem::take(&mut self.written) {
            self.release(claim);
        }
    }

    pub fn release(&mut self, claim: Claim) {
        if self.held.remove(&claim) {
            let tag = self.tag(claim);
            // SAFETY: releases a session lock this job took in try_take or wait_for.
            unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as i32, true) };
        }
    }
}

thread_local! {
    /// Claims of rows written by a job whose caller commits (`hold_written_until_transaction_end`).
    static AT_END: std::cell::RefCell<Vec<pg_sys::LOCKTAG>> = const { std::cell::RefCell::new(Vec::new()) };
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Claims {
    /// For a job that does not commit (a background worker's, whose caller commits): the
    /// written rows keep their claims until the transaction ends, committed or not.
    pub fn hold_written_until_transaction_end(&mut self) {
        let written = std::mem::take(&mut self.written);
        let mut tags: Vec<pg_sys::LOCKTAG> = Vec::with_capacity(written.len());
        for claim in written {
            if self.held.remove(&claim) {
                tags.push(self.tag(claim));
            }
        }
        if tags.is_empty() {
            return;
        }
        AT_END.with(|a| a.borrow_mut().extend(tags));
        if !CALLBACK.with(|c| c.replace(true)) {
            // SAFETY: registers a callback for the life of the backend, once.
            unsafe { pg_sys::RegisterXactCallback(Some(release_at_end), std::ptr::null_mut()) };
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn release_at_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PARALLEL_ABORT
    ) {
        for tag in AT_END.with(|a| std::mem::take(&mut *a.borrow_mut())) {
            // SAFETY: releases a session lock a job took and handed over; the commit's writes
            // are visible by now (the callback runs after the transaction's end is recorded).
            unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as i32, true) };
        }
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        for claim in std::mem::take(&mut self.held) {
            let tag = self.tag(claim);
            // SAFETY: as in release(); also safe while an error unwinds (pgrx has flushed the
            // error state, and releasing a lock only touches the lock manager's tables).
            unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as i32, true) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::claim_hash;

    fn key(parts: &[Option<&str>]) -> Vec<Option<String>> {
        parts.iter().map(|p| p.map(str::to_string)).collect()
    }

    #[test]
    fn the_hash_tells_apart_what_only_its_framing_tells_apart() {
        let h = |parts: &[Option<&str>]| claim_hash(5, 3, &key(parts));
        assert_ne!(h(&[Some("ab")]), h(&[Some("a"), Some("b")]));
        assert_ne!(h(&[Some("")]), h(&[None]));
        assert_ne!(h(&[None, Some("x")]), h(&[Some("x"), None]));
        // The database and the column are part of it.
        assert_ne!(claim_hash(5, 3, &key(&[Some("7")])), claim_hash(6, 3, &key(&[Some("7")])));
        assert_ne!(claim_hash(5, 3, &key(&[Some("7")])), claim_hash(5, 4, &key(&[Some("7")])));
        // Stable: the same in every backend and release (FNV-1a 64 of these bytes).
        assert_eq!(claim_hash(0, 0, &[]), {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for _ in 0..6 {
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            h
        });
    }

    #[test]
    fn no_collision_among_a_million_integer_keys() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1_000_000u32 {
            assert!(seen.insert(claim_hash(16384, 4, &[Some(i.to_string())])), "{i}");
        }
    }
}
