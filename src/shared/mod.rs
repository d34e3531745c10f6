//! Where the cluster-wide state lives: PostgreSQL's shared memory when pg_bailian is in
//! `shared_preload_libraries`, else this backend's heap (the same structures, counting for
//! this backend alone). The structures themselves are `bailian_core::shared`; this module
//! only finds memory for them, saves what must survive a clean restart, and gives a backend's
//! activity slot back when it exits.
//!
//! A crash restart reinitializes shared memory and calls the startup hook again, possibly at
//! another address: so the region is a pointer the hook replaces, not a once-only cell.

pub mod accounting;
mod persist;

use bailian_core::shared::{Region, Released, Slot};
use pgrx::pg_sys;
use std::sync::atomic::{AtomicPtr, Ordering};

static SHARED: AtomicPtr<Region> = AtomicPtr::new(std::ptr::null_mut());

/// The region this backend counts in.
pub fn region() -> &'static Region {
    let p = SHARED.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: set by the startup hook to a leaked Region over shared memory that stays
        // mapped for the life of the process.
        return unsafe { &*p };
    }
    static PRIVATE: once_cell::sync::OnceCell<&'static Region> = once_cell::sync::OnceCell::new();
    PRIVATE.get_or_init(|| Region::private(crate::guc::capacities(1)))
}

/// Whether the state is the cluster's (preloaded) or this backend's.
pub fn cluster_wide() -> bool {
    region().cluster_wide
}

/// What the views say about the mode.
pub fn scope() -> &'static str {
    if cluster_wide() {
        "cluster"
    } else {
        "backend"
    }
}

const SEGMENT: &std::ffi::CStr = c"pg_bailian shared state";
const WAKE_SEGMENT: &std::ffi::CStr = c"pg_bailian sync wake-ups";
const RELEASED_SEGMENT: &std::ffi::CStr = c"pg_bailian released rate shares";

static RELEASED: AtomicPtr<Released> = AtomicPtr::new(std::ptr::null_mut());

/// The rate shares finished nodes of Citus column jobs gave back (`crate::citus::rate_share`);
/// None without preloading, where a job's part runs in a backend no other can reach, and
/// every node keeps its first share.
pub fn released() -> Option<&'static Released> {
    let p = RELEASED.load(Ordering::Acquire);
    // SAFETY: set by the startup hook to shared memory that stays mapped, zeroed when first
    // made (all zeros is an empty table).
    (!p.is_null()).then(|| unsafe { &*p })
}

static mut PREV_REQUEST: Option<unsafe extern "C-unwind" fn()> = None;
static mut PREV_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

/// From `_PG_init`: when preloading, asks for the shared memory and sets it up at startup.
pub fn install() {
    // SAFETY: read in _PG_init, on the postmaster's (or a backend's) only thread.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    // SAFETY: hooks are chained at preload, on the postmaster's only thread.
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup);
    }
}

fn capacities() -> bailian_core::shared::Capacities {
    // SAFETY: MaxBackends is final by the time shmem_request_hook runs (that is why the hook
    // exists, PostgreSQL 15+).
    let backends = unsafe { pg_sys::MaxBackends };
    crate::guc::capacities(u32::try_from(backends).unwrap_or(1))
}

/// Room for the region plus what aligning its start to 64 bytes may take.
fn segment_size() -> usize {
    Region::size(&capacities()) + 64
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request() {
    // SAFETY: chaining and RequestAddinShmemSpace are what this hook is for.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(segment_size());
        pg_sys::RequestAddinShmemSpace(crate::sync::wake::size() + 64);
        pg_sys::RequestAddinShmemSpace(Released::size() + 64);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup() {
    // SAFETY: the startup hook runs in the postmaster (and in EXEC_BACKEND children) with
    // shared memory mapped; AddinShmemInitLock (MainLWLockArray[21], lwlock.h) serializes
    // ShmemInitStruct as PostgreSQL's own modules do.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let size = segment_size();
        let mem = pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), size, &mut found).cast::<u8>();
        let aligned = mem.add(mem.align_offset(64));
        let region = Region::over(aligned, capacities(), found, true);
        let region: &'static Region = Box::leak(Box::new(region));
        SHARED.store((region as *const Region).cast_mut(), Ordering::Release);
        let mut wake_found = false;
        let wake =
            pg_sys::ShmemInitStruct(WAKE_SEGMENT.as_ptr(), crate::sync::wake::size() + 64, &mut wake_found)
                .cast::<u8>();
        crate::sync::wake::attach(wake.add(wake.align_offset(64)), wake_found);
        let mut released_found = false;
        let released =
            pg_sys::ShmemInitStruct(RELEASED_SEGMENT.as_ptr(), Released::size() + 64, &mut released_found)
                .cast::<u8>();
        let released = released.add(released.align_offset(64));
        if !released_found {
            std::ptr::write_bytes(released, 0, Released::size());
        }
        RELEASED.store(released.cast(), Ordering::Release);
        pg_sys::LWLockRelease(init_lock);
        if !found {
            persist::load(region);
        }
        if !pg_sys::IsUnderPostmaster {
            // The postmaster saves the counters when it shuts down cleanly.
            pg_sys::on_shmem_exit(Some(at_postmaster_exit), pg_sys::Datum::from(0));
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_postmaster_exit(code: i32, _arg: pg_sys::Datum) {
    // A crash (code != 0) saves nothing: what was counted since the last start is lost, as
    // with pg_stat_statements, rather than saving state a dying server may have torn. An
    // immediate stop is a crash too, though the postmaster exits with 0 after it: see
    // `persist::shut_down_cleanly`.
    if code != 0 || !crate::guc::save_usage() || !persist::shut_down_cleanly() {
        return;
    }
    let p = SHARED.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: as in `region`.
        persist::save(unsafe { &*p });
    }
}

// ---- this backend's activity slot ------------------------------------------------------

thread_local! {
    static SLOT: std::cell::OnceCell<Option<Slot>> = const { std::cell::OnceCell::new() };
}

/// This backend's activity slot, claimed on first use and given back at exit.
pub fn with_slot<R>(f: impl FnOnce(Option<&Slot>) -> R) -> R {
    SLOT.with(|cell| {
        let slot = cell.get_or_init(|| {
            // SAFETY: MyProcPid is set at backend start.
            let pid = u32::try_from(unsafe { pg_sys::MyProcPid }).unwrap_or(0);
            let slot = region().activity.claim(pid)?;
            // SAFETY: registering an exit callback from a backend, as extensions do.
            unsafe { pg_sys::before_shmem_exit(Some(release_slot), pg_sys::Datum::from(pid as usize)) };
            Some(slot)
        });
        f(slot.as_ref())
    })
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, arg: pg_sys::Datum) {
    let pid = arg.value() as u32;
    region().activity.release(pid);
}
