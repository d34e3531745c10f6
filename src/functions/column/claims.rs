//! Claims on rows a column job has read but not yet written, so that two sessions filling the
//! same column never send the same row.
//!
//! A job holds no row locks while its requests are in flight (they would block writers to
//! those rows for as long as the provider takes), and it commits every batch; another session
//! could then pick the same rows up and pay for them twice. A claim is a session-level lock (it
//! survives commits) on (table, target column, key), taken when the row is read and released
//! once the row's outcome is written. A written row stays protected until its commit by the
//! row lock its UPDATE holds: another job reading it before then skips it as locked, and after
//! the commit sees it filled. A row that failed keeps its claim until the job ends, so that a
//! session reading behind this one does not pay for the same failure again.
//!
//! Claims are advisory locks in PostgreSQL's shared lock table, in a space of their own
//! (`pg_locks` shows them as locktype advisory, classid = the table's oid, objsubid = 20562):
//! `pg_advisory_lock` and friends use objsubid 1 and 2, so no SQL call can take or block a
//! claim, nor wait on one. At most a job's chunk and one page read ahead (and its failed rows)
//! are held; they are released on every way out, including an error unwinding
//! through the job, and a backend that exits releases them anyway.

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
    /// Claims of failed rows, released when the job ends.
    kept: HashSet<Claim>,
}

/// The advisory-lock space of claims ("PR" for pg_bailian rows): not 1 or 2, the spaces of
/// pg_advisory_lock(bigint) and pg_advisory_lock(int, int).
const CLAIM_SPACE: u16 = 0x5052;

impl Claims {
    pub fn new(table: pg_sys::Oid, column: i16) -> Claims {
        Claims { table, column, held: HashSet::new(), kept: HashSet::new() }
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
        // SET_LOCKTAG_INT32's layout, in a space of our own (field4).
        pg_sys::LOCKTAG {
            // SAFETY: MyDatabaseId is set at connection start and never changes afterwards.
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: self.table.to_u32(),
            locktag_field3: claim.0,
            locktag_field4: CLAIM_SPACE,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        }
    }

    /// Takes the claim unless another session holds it (never waits). A claim this job
    /// already holds (two keys hashing alike) counts as taken: the second row waits for a
    /// later CALL rather than share the first one's claim.
    pub fn try_take(&mut self, claim: Claim) -> bool {
        if self.held.contains(&claim) || self.kept.contains(&claim) {
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
                // Not ours by the sets above, so left by a job of this session that ended
                // without releasing it (it cannot be; be safe): undo the extra count.
                // SAFETY: releases the count just added.
                unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as i32, true) };
                false
            }
            _ => false,
        }
    }

    /// Keeps a failed row's claim until the job ends.
    pub fn keep_until_the_end(&mut self, claim: Claim) {
        if self.held.remove(&claim) {
            self.kept.insert(claim);
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
        let all = std::mem::take(&mut self.held).into_iter().chain(std::mem::take(&mut self.kept));
        for claim in all {
            let tag = self.tag(claim);
            // SAFETY: as in release(); also safe while an error unwinds (pgrx has flushed the
            // error state, and releasing a lock only touches the lock manager's tables).
            unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as i32, true) };
        }
    }
}
