//! Rate shares given back by the nodes of a Citus column job that have finished their part.
//!
//! A column job on a distributed table gives each node holding rows its share of the work as
//! its share of each deployment's rate, so that the nodes together keep to the account's
//! limit. A node can finish early (its rows' answers were shared or cached, its requests were
//! smaller, it had failures): it then tells the job's other nodes, which record the share it
//! released here, in their own shared memory, and scale their shares up by it
//! (`Released::scaled`). The nodes still running then use the whole limit between them again,
//! in the proportions they had.
//!
//! A job (one round of it) is named by a random 64-bit id the coordinator makes; only the
//! job's nodes learn it. Entries are a fixed table, written under a lock (a release, rare) and
//! read without one (each call a running part makes). An entry is free again when its node's
//! part finishes (`forget`), or once nobody has read or released it for `STALE_SECONDS` (a
//! running part reads it at every call, so a live job's entry stays). When every entry is
//! taken a release is dropped and the job's nodes keep their first shares: dropping is always
//! the safe direction; crediting a release to another job never happens.

use super::Lock;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Jobs tracked at once per node.
pub const JOBS: usize = 64;

/// An entry nobody has read or released into for this long is free for another job.
pub const STALE_SECONDS: u64 = 600;

/// Shares are kept in millionths, so that releases add up atomically.
const UNIT: f64 = 1e6;

#[repr(C)]
struct Entry {
    /// 0: free.
    job: AtomicU64,
    /// Millionths of the deployment's rate released by the job's finished nodes.
    released: AtomicU64,
    /// Seconds (wall clock) of the last release or read.
    touched: AtomicU64,
}

/// The table; all zeros is empty, so shared memory zeroed at startup is a valid one.
#[repr(C)]
pub struct Released {
    /// Held to claim, add to or free an entry.
    lock: Lock,
    entries: [Entry; JOBS],
}

impl Released {
    pub const fn size() -> usize {
        std::mem::size_of::<Released>()
    }

    /// An empty table on the heap (tests).
    pub fn new() -> Box<Released> {
        // SAFETY: every field is an atomic integer, for which all zeros is a valid value.
        unsafe { Box::new(std::mem::zeroed()) }
    }

    /// Records that a node of `job` finished and released `share` (0, 1] of the rate.
    /// False when the table has no room for the job (the release is dropped).
    pub fn release(&self, job: u64, share: f64, now_seconds: u64) -> bool {
        if job == 0 || !(share > 0.0 && share <= 1.0) {
            return false;
        }
        let amount = (share * UNIT).round() as u64;
        let _guard = self.lock.lock();
        let entry = self.entries.iter().find(|e| e.job.load(SeqCst) == job).or_else(|| {
            let entry = self.entries.iter().find(|e| {
                e.job.load(SeqCst) == 0 || now_seconds.saturating_sub(e.touched.load(SeqCst)) > STALE_SECONDS
            })?;
            // Unnamed first: a reader of the old job that read its amount after this sees the
            // name change and takes nothing (`released`).
            entry.job.store(0, SeqCst);
            entry.released.store(0, SeqCst);
            entry.touched.store(now_seconds, SeqCst);
            entry.job.store(job, SeqCst);
            Some(entry)
        });
        let Some(entry) = entry else { return false };
        entry.touched.store(now_seconds, SeqCst);
        entry.released.fetch_add(amount, SeqCst);
        true
    }

    /// Frees `job`'s entry: this node's part of it has finished, and nobody here reads it.
    pub fn forget(&self, job: u64) {
        if job == 0 {
            return;
        }
        let _guard = self.lock.lock();
        if let Some(e) = self.entries.iter().find(|e| e.job.load(SeqCst) == job) {
            e.job.store(0, SeqCst);
            e.released.store(0, SeqCst);
        }
    }

    /// The share of the rate `job`'s finished nodes released (0 when none, or not known),
    /// keeping its entry from going stale.
    pub fn released(&self, job: u64, now_seconds: u64) -> f64 {
        if job == 0 {
            return 0.0;
        }
        for e in &self.entries {
            if e.job.load(SeqCst) != job {
                continue;
            }
            let amount = e.released.load(SeqCst);
            // Still this job's: the amount read was its own (an entry is unnamed before it
            // is reset).
            if e.job.load(SeqCst) != job {
                return 0.0;
            }
            // Written only when a second has passed: every call of a running part reads this,
            // from every backend of the node.
            if e.touched.load(SeqCst) < now_seconds {
                e.touched.fetch_max(now_seconds, SeqCst);
            }
            return amount as f64 / UNIT;
        }
        0.0
    }

    /// A running node's share of `job`, first `share`, scaled up by what the finished nodes
    /// released: the nodes still running keep their proportions and together use what the
    /// whole job had. At most 1.
    pub fn scaled(&self, job: u64, share: f64, now_seconds: u64) -> f64 {
        let released = self.released(job, now_seconds);
        if released <= 0.0 {
            return share;
        }
        // Never below the node's own share: releases can only raise it (and a release a
        // stranger made up cannot divide by zero).
        let left = (1.0 - released).max(share).max(f64::EPSILON);
        (share / left).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_node_gives_its_share_to_the_running_ones_in_proportion() {
        let t = Released::new();
        assert_eq!(t.scaled(7, 0.25, 100), 0.25);
        assert!(t.release(7, 0.5, 100));
        // Three nodes had 0.5, 0.25, 0.25: the two left now have half each.
        assert!((t.scaled(7, 0.25, 100) - 0.5).abs() < 1e-9);
        assert!(t.release(7, 0.25, 101));
        assert!((t.scaled(7, 0.25, 101) - 1.0).abs() < 1e-9);
        // Other jobs are untouched.
        assert_eq!(t.scaled(8, 0.25, 101), 0.25);
        // Forgotten when this node's part ends.
        t.forget(7);
        assert_eq!(t.scaled(7, 0.25, 102), 0.25);
    }

    #[test]
    fn shares_stay_within_one_whatever_is_released() {
        let t = Released::new();
        for _ in 0..5 {
            t.release(3, 1.0, 10);
        }
        assert_eq!(t.scaled(3, 0.1, 10), 1.0);
        assert_eq!(t.scaled(3, 1e-9, 10), 1.0);
        assert!(!t.release(3, 0.0, 10));
        assert!(!t.release(3, 1.5, 10));
        assert!(!t.release(3, f64::NAN, 10));
        assert!(!t.release(0, 0.5, 10));
        assert_eq!(t.released(0, 10), 0.0);
    }

    #[test]
    fn a_full_table_drops_releases_until_an_entry_goes_stale() {
        let t = Released::new();
        for job in 1..=JOBS as u64 {
            assert!(t.release(job, 0.5, 1000));
        }
        assert!(!t.release(999, 0.5, 1000));
        assert_eq!(t.scaled(999, 0.5, 1000), 0.5);
        // A job whose running part keeps reading its entry keeps it.
        let later = 1000 + STALE_SECONDS + 1;
        assert!((t.released(1, 1000 + STALE_SECONDS) - 0.5).abs() < 1e-9);
        // Long after, a new job takes a stale entry, without the old job's releases.
        assert!(t.release(999, 0.25, later));
        assert!((t.released(999, later) - 0.25).abs() < 1e-9);
        assert!((t.released(1, later) - 0.5).abs() < 1e-9, "the entry read last stayed");
    }

    #[test]
    fn concurrent_releases_of_many_jobs_are_never_credited_to_another() {
        let t: &'static Released = Box::leak(Released::new());
        let jobs = 3 * JOBS as u64;
        let threads: Vec<_> = (0..8u64)
            .map(|n| {
                std::thread::spawn(move || {
                    for round in 0..200u64 {
                        let job = 1 + (n * 7919 + round * 31) % jobs;
                        // Job j's nodes release j millionths each time (a multiple of j is
                        // all its entry may hold), and time moves on so that entries go
                        // stale and are taken over by other jobs.
                        let now = round * STALE_SECONDS / 20;
                        t.release(job, job as f64 / UNIT, now);
                        let units = (t.released(job, now) * UNIT).round() as u64;
                        assert_eq!(units % job, 0, "job {job}'s entry holds {units} millionths");
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
    }
}
