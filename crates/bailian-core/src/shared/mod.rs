//! The state pg_bailian keeps for the whole cluster: rate-limit buckets, usage counters,
//! budget spending and live activity, laid out in one fixed-size region of plain memory.
//!
//! The region is the same whether it lives in PostgreSQL's shared memory (with
//! `shared_preload_libraries = 'pg_bailian'`, every backend maps it) or in one backend's heap
//! (without preloading: the same code, but each backend counts alone). Nothing here knows
//! which; the extension's `shared` module decides and says so in the views.
//!
//! Everything in the region is fixed-size plain data: no pointers (each process maps the
//! segment at its own address), no allocation, nothing that can fail or unwind while a lock is
//! held. Each table has one spin lock (`Lock`) held for a few dozen instructions at most; no
//! wait, no I/O and no PostgreSQL call ever happens under it, so a backend killed at any point
//! cannot leave it held except by dying inside that window, after which the postmaster
//! reinitializes shared memory anyway (a crash restart).

pub mod activity;
pub mod buckets;
pub mod budgets;
pub mod released;
pub mod usage;

use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use activity::{Activity, ActivityRow, Slot};
pub use buckets::{BucketKey, Buckets, Limiter};
pub use budgets::{BudgetKey, BudgetRow, Budgets, Spent};
pub use released::Released;
pub use usage::{UsageDelta, UsageKey, UsageRow, UsageTable};

/// How many of each kind of entry the region holds (`pg_bailian.max_rate_buckets`,
/// `pg_bailian.max_usage_entries`, `pg_bailian.max_budgets`, and one activity slot per
/// backend PostgreSQL may start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Capacities {
    pub buckets: u32,
    pub usage_entries: u32,
    pub budgets: u32,
    pub backends: u32,
}

const MAGIC: u64 = 0x7067_6261_696c_6e01; // "pgbailn" + layout version 1

#[repr(C)]
struct Header {
    magic: u64,
    caps: Capacities,
    /// Changes whenever a budget is set or dropped anywhere in the cluster, so backends
    /// reload their budget definitions at their next statement.
    budget_generation: AtomicU64,
}

/// A test-and-set lock for a table of the region. Critical sections are a few dozen
/// instructions, so spinning (then yielding) beats sleeping; no code that can fail runs
/// under it.
#[repr(C)]
pub struct Lock(AtomicU32);

impl Lock {
    fn lock(&self) -> Guard<'_> {
        let mut spins = 0u32;
        while self.0.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Guard(self)
    }
}

struct Guard<'a>(&'a Lock);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        (self.0).0.store(0, Ordering::Release);
    }
}

/// A table of `T` under one lock. In the region: the lock (padded to a cache line), then
/// `len` rows. `T` is plain data for which all-zero bytes are a valid (free) row, only
/// touched while the lock is held. This struct is per process (it holds addresses).
pub struct Table<T> {
    lock: *const Lock,
    rows: *mut T,
    len: u32,
}

// SAFETY: rows are only reached under the table's lock (or, for activity slots, through
// atomics), wherever the Table handle is.
unsafe impl<T> Send for Table<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Table<T> {}

impl<T> Table<T> {
    const ROWS_AT: usize = 64;

    pub(crate) fn bytes(len: u32) -> usize {
        Self::ROWS_AT + len as usize * size_of::<T>()
    }

    /// # Safety
    /// `mem` must point at `Table::<T>::bytes(len)` bytes of the region, aligned to 64 and
    /// zeroed before first use, mapped for the rest of the process.
    pub(crate) unsafe fn over(mem: *mut u8, len: u32) -> Table<T> {
        Table { lock: mem.cast::<Lock>(), rows: mem.add(Self::ROWS_AT).cast::<T>(), len }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `f` over the rows with the table locked. `f` must be short and must not panic
    /// (it only does arithmetic on plain data).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> R {
        // SAFETY: `lock` points into the region, which outlives every Table.
        let _g = unsafe { &*self.lock }.lock();
        // SAFETY: `rows` points at `len` rows inside the region (valid when zeroed, see
        // `over`); the lock gives this caller the only access for the closure's length.
        let rows = unsafe { std::slice::from_raw_parts_mut(self.rows, self.len as usize) };
        f(rows)
    }

    /// Row `i` for reading and writing its atomics without the lock (activity slots: each
    /// is written by its own backend only).
    pub(crate) fn row(&self, i: usize) -> Option<&T> {
        // SAFETY: in bounds, inside the region; callers only touch atomic fields this way.
        (i < self.len as usize).then(|| unsafe { &*self.rows.add(i) })
    }
}

/// The region: a header, then the tables, each a lock and its rows. Send + Sync: all access
/// goes through the tables' locks or atomics.
pub struct Region {
    header: *const Header,
    pub buckets: Buckets,
    pub usage: UsageTable,
    pub budgets: Budgets,
    pub activity: Activity,
    /// Whether this region is the cluster's (shared memory) or this backend's alone.
    pub cluster_wide: bool,
}

// SAFETY: every mutable access to the region's memory goes through a Lock or an atomic.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

fn align_up(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

/// Offsets of each part of a region with `caps`; (offsets, total size).
fn layout(caps: &Capacities) -> ([usize; 5], usize) {
    let mut at = size_of::<Header>();
    let mut place = |size: usize, align: usize| {
        at = align_up(at, align.max(64));
        let here = at;
        at += size;
        here
    };
    let buckets = place(Buckets::bytes(caps.buckets), align_of::<u64>());
    let usage = place(UsageTable::bytes(caps.usage_entries), align_of::<u64>());
    let budgets = place(Budgets::bytes(caps.budgets), align_of::<u64>());
    let activity = place(Activity::bytes(caps.backends), align_of::<u64>());
    let end = place(0, 8);
    ([0, buckets, usage, budgets, activity], end)
}

impl Region {
    /// Bytes a region with `caps` needs.
    pub fn size(caps: &Capacities) -> usize {
        layout(caps).1
    }

    /// Lays a region out in `mem` (zeroed here), or attaches to the one already there when
    /// `initialized` (another process laid it out; its header must agree with `caps`).
    ///
    /// # Safety
    /// `mem` must point at `Region::size(caps)` writable bytes, aligned to 64, that stay
    /// mapped for the rest of the process, and that nothing else writes except through a
    /// `Region` over the same memory.
    pub unsafe fn over(mem: *mut u8, caps: Capacities, initialized: bool, cluster_wide: bool) -> Region {
        let (offsets, size) = layout(&caps);
        let header = mem.cast::<Header>();
        if !initialized {
            std::ptr::write_bytes(mem, 0, size);
            header.write(Header { magic: MAGIC, caps, budget_generation: AtomicU64::new(1) });
        }
        debug_assert_eq!((*header).magic, MAGIC);
        Region {
            header,
            buckets: Buckets::over(mem.add(offsets[1]), caps.buckets),
            usage: UsageTable::over(mem.add(offsets[2]), caps.usage_entries),
            budgets: Budgets::over(mem.add(offsets[3]), caps.budgets),
            activity: Activity::over(mem.add(offsets[4]), caps.backends),
            cluster_wide,
        }
    }

    /// A region in this process's heap, for a backend without the shared one (and tests).
    /// Leaked on purpose: it lives as long as the process, like shared memory.
    pub fn private(caps: Capacities) -> &'static Region {
        let size = Region::size(&caps);
        let words = vec![0u64; size.div_ceil(8) + 8].leak();
        let base = words.as_mut_ptr().cast::<u8>();
        let aligned = base.wrapping_add(base.align_offset(64));
        // SAFETY: `words` is leaked (lives forever), zeroed, and has room for the region
        // after aligning its start to 64 (8 spare words).
        Box::leak(Box::new(unsafe { Region::over(aligned, caps, false, false) }))
    }

    pub fn capacities(&self) -> Capacities {
        // SAFETY: the header is written once before any Region over it exists.
        unsafe { (*self.header).caps }
    }

    pub fn budget_generation(&self) -> u64 {
        // SAFETY: as in `capacities`; the field is atomic.
        unsafe { (*self.header).budget_generation.load(Ordering::Acquire) }
    }

    pub fn bump_budget_generation(&self) {
        // SAFETY: as in `capacities`; the field is atomic.
        unsafe { (*self.header).budget_generation.fetch_add(1, Ordering::AcqRel) };
    }
}

/// Nanoseconds on the clock every process of the machine shares (CLOCK_MONOTONIC), so one
/// backend's "not before" means the same instant to another.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Microseconds since the Unix epoch, for "first used", "last used" and period boundaries.
pub fn unix_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// `d` in nanoseconds, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A fixed-size, NUL-padded name (a PostgreSQL `name` is at most 63 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Name(pub [u8; 64]);

impl Name {
    /// `s` cut at 63 bytes (on a character boundary).
    pub fn new(s: &str) -> Name {
        let mut cut = s.len().min(63);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut b = [0u8; 64];
        b[..cut].copy_from_slice(&s.as_bytes()[..cut]);
        Name(b)
    }

    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(64);
        std::str::from_utf8(&self.0[..end]).unwrap_or("")
    }
}

impl Default for Name {
    fn default() -> Self {
        Name([0; 64])
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[cfg(test)]
pub(crate) fn test_caps() -> Capacities {
    Capacities { buckets: 8, usage_entries: 8, budgets: 4, backends: 4 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cut_on_character_boundaries() {
        assert_eq!(Name::new("qwen-plus").as_str(), "qwen-plus");
        let long = "模".repeat(30);
        let n = Name::new(&long);
        assert_eq!(n.as_str(), "模".repeat(21));
    }

    #[test]
    fn two_regions_over_one_memory_see_each_other() {
        let caps = test_caps();
        let size = Region::size(&caps);
        let mem = vec![0u64; size / 8 + 16].leak();
        let base = mem.as_mut_ptr().cast::<u8>();
        let base = base.wrapping_add(base.align_offset(64));
        // SAFETY: leaked, zeroed, large enough and aligned; two Regions over the same memory
        // are what two backends are.
        let (a, b) = unsafe { (Region::over(base, caps, false, true), Region::over(base, caps, true, true)) };
        assert_eq!(b.capacities(), caps);
        let g = a.budget_generation();
        b.bump_budget_generation();
        assert_eq!(a.budget_generation(), g + 1);
    }
}
