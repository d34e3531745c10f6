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
//! job's nodes learn it. Entries are a fixed table of atomics, reused once a job has released
//! nothing for `STALE_SECONDS`; when every entry is taken by live jobs a release is dropped and
//! the job's nodes keep their first shares, which is always safe.

use std::sync::atomic::{AtomicU64, Ordering};

/// Jobs tracked at once per node.
pub const JOBS: usize = 64;

/// An entry not released into for this long is free for another job. A job running longer
/// than this after its first release loses the boost (its nodes go back to their first shares).
pub const STALE_SECONDS: u64 = 6 * 3600;

/// Shares are kept in millionths, so that releases add up atomically.
const UNIT: f64 = 1e6;

#[repr(C)]
struct Entry {
    /// 0: free.
    job: AtomicU64,
    /// Millionths of the deployment's rate released by the job's finished nodes.
    released: AtomicU64,
    /// Seconds (wall clock) of the last release.
    touched: AtomicU64,
}

/// The table; all zeros is empty, so shared memory zeroed at startup is a valid one.
#[repr(C)]
pub struct Released {
    entries: [Entry; JOBS],
}

impl Released {
    pub const fn size() -> usize {
        std::mem::size_of::<Released>()
    }

    /// An empty table on the heap (tests, and a backend without shared memory).
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
        let entry = self.entries.iter().find(|e| e.job.load(Ordering::Acquire) == job).or_else(|| {
            self.entries.iter().find(|e| {
                let was = e.job.load(Ordering::Acquire);
                let free =
                    was == 0 || now_seconds.saturating_sub(e.touched.load(Ordering::Acquire)) > STALE_SECONDS;
                // The entry is reset before the job is named in it: a reader that finds the
                // job finds no other job's releases.
                free && {
                    e.released.store(0, Ordering::Release);
                    e.job.compare_exchange(was, job, Ordering::AcqRel, Ordering::Acquire).is_ok()
                }
            })
        });
        let Some(entry) = entry else { return false };
        entry.touched.store(now_seconds, Ordering::Release);
        entry.released.fetch_add(amount, Ordering::AcqRel);
        true
    }

    /// The share of the rate `job`'s finished nodes released (0 when none, or not known).
    pub fn released(&self, job: u64) -> f64 {
        if job == 0 {
            return 0.0;
        }
        self.entries
            .iter()
            .find(|e| e.job.load(Ordering::Acquire) == job)
            .map_or(0.0, |e| e.released.load(Ordering::Acquire) as f64 / UNIT)
    }

    /// A running node's share of `job`, first `share`, scaled up by what the finished nodes
    /// released: the nodes still running keep their proportions and together use what the
    /// whole job had. At most 1.
    pub fn scaled(&self, job: u64, share: f64) -> f64 {
        let released = self.released(job);
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
        assert_eq!(t.scaled(7, 0.25), 0.25);
        assert!(t.release(7, 0.5, 100));
        // Three nodes had 0.5, 0.25, 0.25: the two left now have half each.
        assert!((t.scaled(7, 0.25) - 0.5).abs() < 1e-9);
        assert!(t.release(7, 0.25, 101));
        assert!((t.scaled(7, 0.25) - 1.0).abs() < 1e-9);
        // Other jobs are untouched.
        assert_eq!(t.scaled(8, 0.25), 0.25);
    }

    #[test]
    fn shares_stay_within_one_whatever_is_released() {
        let t = Released::new();
        for _ in 0..5 {
            t.release(3, 1.0, 10);
        }
        assert_eq!(t.scaled(3, 0.1), 1.0);
        assert_eq!(t.scaled(3, 1e-9), 1.0);
        assert!(!t.release(3, 0.0, 10));
        assert!(!t.release(3, 1.5, 10));
        assert!(!t.release(3, f64::NAN, 10));
        assert!(!t.release(0, 0.5, 10));
        assert_eq!(t.released(0), 0.0);
    }

    #[test]
    fn a_full_table_drops_releases_until_an_entry_goes_stale() {
        let t = Released::new();
        for job in 1..=JOBS as u64 {
            assert!(t.release(job, 0.5, 1000));
        }
        assert!(!t.release(999, 0.5, 1000));
        assert_eq!(t.scaled(999, 0.5), 0.5);
        // Long after, a new job takes a stale entry, without the old job's releases.
        let later = 1000 + STALE_SECONDS + 1;
        assert!(t.release(999, 0.25, later));
        assert!((t.released(999) - 0.25).abs() < 1e-9);
    }
}
