//! Claims on rows a column job has read but not yet written, so that two sessions filling the
//! same column never send the same row.
//!
//! A job commits every batch, which releases its row locks while later rows are still queued
//! or on the wire; another session could then pick those rows up and pay for them twice. A
//! claim is a session-level advisory lock (it survives commits) on (table, target column,
//! key), taken when the row is read and released once the row's outcome is written or known.
//! A written row stays protected until its commit by the row lock its UPDATE holds: another
//! job reading it before then skips it as locked, and after the commit sees it filled.
//!
//! Claims live in PostgreSQL's shared lock table (as `pg_try_advisory_lock(int4, int4)`
//! would: `pg_locks` shows them with classid = the table's oid and objsubid = 2), at most a
//! job's read-ahead plus its requests in flight. They are released on every way out,
//! including an error unwinding through the job; a backend that exits releases them anyway.

use pgrx::pg_sys;
use std::collections::HashSet;

/// One row's claim.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Claim(u32);

/// The claims a job holds.
pub struct Claims {
    table: pg_sys::Oid,
    column: i16,
    held: HashSet<Claim>,
}

impl Claims {
    pub fn new(table: pg_sys::Oid, column: i16) -> Claims {
        Claims { table, column, held: HashSet::new() }
    }

    /// The claim for the row with these key values.
    pub fn claim_of(&self, key: &[Option<String>]) -> Claim {
        // FNV-1a over the target column and the key's text: stable across backends, and a
        // collision only makes two rows wait for each other, never lets one be sent twice.
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u32::from(*b);
                h = h.wrapping_mul(0x0100_0193);
            }
        };
        eat(&self.column.to_le_bytes());
        for part in key {
            match part {
                Some(text) => eat(text.as_bytes()),
                None => eat(&[0xFE]),
            }
            eat(&[0xFF]);
        }
        Claim(h)
    }

    fn tag(&self, claim: Claim) -> pg_sys::LOCKTAG {
        // SET_LOCKTAG_INT32(tag, table, hash): what pg_try_advisory_lock(int4, int4) locks.
        pg_sys::LOCKTAG {
            // SAFETY: MyDatabaseId is set at connection start and never changes afterwards.
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: self.table.to_u32(),
            locktag_field3: claim.0,
            locktag_field4: 2,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        }
    }

    /// Takes the claim unless another session holds it (never waits). A claim this job
    /// already holds (two keys hashing alike) counts as taken: the second row waits for a
    /// later CALL rather than share the first one's claim.
    pub fn try_take(&mut self, claim: Claim) -> bool {
        if self.held.contains(&claim) {
            return false;
        }
        let tag = self.tag(claim);
        // SAFETY: a non-blocking session-level advisory lock, as pg_try_advisory_lock takes.
        let got = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, true, true) };
        match got {
            pg_sys::LockAcquireResult::LOCKACQUIRE_OK => {
                self.held.insert(claim);
                true
            }
            pg_sys::LockAcquireResult::LOCKACQUIRE_ALREADY_HELD => {
                // The session held it already (the user's own advisory lock of the same
                // numbers): undo the extra count and leave the row alone.
                // SAFETY: releases the count just added.
                unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as i32, true) };
                false
            }
            _ => false,
        }
    }

    pub fn release(&mut self, claim: Claim) {
        if self.held.remove(&claim) {
            let tag = self.tag(claim);
            // SAFETY: releases a session lock this job took in try_take.
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
