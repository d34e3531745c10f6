//! Waking the sync workers: a small shared-memory area (set up with the rest of pg_bailian's
//! shared state at preload) that holds the launcher's latch and, per database, whether a sync
//! asked for a worker and the latch of the worker serving it. Without preloading there is no
//! area and nothing to wake.

use pgrx::pg_sys;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

/// Databases tracked at once; beyond that the launcher's periodic look at every database still
/// finds their syncs, within `worker::PROBE`.
const DATABASES: usize = 64;

#[repr(C)]
struct Database {
    oid: AtomicU32,
    wanted: AtomicBool,
    /// The worker's latch (a pointer into shared memory), 0 when none runs.
    latch: AtomicUsize,
    /// Set while the database has syncs to fill: a worker that ends without clearing it (it
    /// failed) is started again by the launcher.
    active: AtomicBool,
}

#[repr(C)]
pub struct Area {
    launcher: AtomicUsize,
    databases: [Database; DATABASES],
}

static AREA: AtomicPtr<Area> = AtomicPtr::new(std::ptr::null_mut());

pub fn size() -> usize {
    std::mem::size_of::<Area>()
}

/// From the shared-memory startup hook: `mem` is `size()` bytes of shared memory, zeroed when
/// `found` is false (all zeros is the empty area: atomics of 0).
///
/// # Safety
/// `mem` must stay mapped for the life of the process and be aligned for `Area`.
pub unsafe fn attach(mem: *mut u8, found: bool) {
    if !found {
        // SAFETY: the caller gives size() writable bytes.
        unsafe { std::ptr::write_bytes(mem, 0, size()) };
    }
    AREA.store(mem.cast(), Ordering::Release);
}

fn area() -> Option<&'static Area> {
    let p = AREA.load(Ordering::Acquire);
    // SAFETY: set by attach to shared memory that stays mapped.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Whether workers exist at all (pg_bailian was preloaded).
pub fn available() -> bool {
    area().is_some()
}

fn set_latch(latch: usize) {
    if latch != 0 {
        // SAFETY: the pointer is a PGPROC's latch in shared memory, published by its owner;
        // SetLatch on a latch whose process exited is harmless (it is owned by no one, or by
        // the process that reused the PGPROC, which then wakes once for nothing).
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

fn slot(area: &Area, db: u32, claim: bool) -> Option<&Database> {
    if let Some(d) = area.databases.iter().find(|d| d.oid.load(Ordering::Acquire) == db) {
        return Some(d);
    }
    if !claim {
        return None;
    }
    area.databases.iter().find(|d| d.oid.compare_exchange(0, db, Ordering::AcqRel, Ordering::Acquire).is_ok())
}

/// A sync of database `db` has work or changed: its worker (or the launcher, to start one)
/// looks now rather than at its next poll.
pub fn want(db: pg_sys::Oid) {
    let Some(area) = area() else { return };
    if let Some(d) = slot(area, db.to_u32(), true) {
        let worker = d.latch.load(Ordering::Acquire);
        if worker != 0 {
            // A worker runs: it looks now (the launcher need not).
            set_latch(worker);
            return;
        }
        d.wanted.store(true, Ordering::Release);
    }
    set_latch(area.launcher.load(Ordering::Acquire));
}

/// The databases whose syncs asked for a worker since the last call.
pub fn take_wanted() -> Vec<pg_sys::Oid> {
    let Some(area) = area() else { return Vec::new() };
    let mut out = Vec::new();
    for d in area.databases.iter().filter(|d| d.wanted.swap(false, Ordering::AcqRel)) {
        let oid = d.oid.load(Ordering::Acquire);
        if oid != 0 {
            out.push(pg_sys::Oid::from(oid));
        }
        // A slot with no worker is given back once taken: databases come and go.
        if d.latch.load(Ordering::Acquire) == 0 && !d.active.load(Ordering::Acquire) {
            let _ = d.oid.compare_exchange(oid, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }
    out
}

/// The launcher publishes its latch.
pub fn register_launcher() {
    if let Some(area) = area() {
        // SAFETY: MyLatch is this process's latch, in its PGPROC for a background worker.
        area.launcher.store(unsafe { pg_sys::MyLatch } as usize, Ordering::Release);
    }
}

/// A database's worker publishes its latch (0 to withdraw it when it exits).
pub fn register_worker(db: pg_sys::Oid, running: bool) {
    let Some(area) = area() else { return };
    if let Some(d) = slot(area, db.to_u32(), running) {
        // SAFETY: as in register_launcher.
        let latch = if running { (unsafe { pg_sys::MyLatch }) as usize } else { 0 };
        d.latch.store(latch, Ordering::Release);
        if !running {
            d.active.store(false, Ordering::Release);
        }
        if !running && !d.wanted.load(Ordering::Acquire) && !d.active.load(Ordering::Acquire) {
            let _ = d.oid.compare_exchange(db.to_u32(), 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

thread_local! {
    static AT_COMMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A database that no longer exists gives its slot back.
pub fn forget(db: pg_sys::Oid) {
    let Some(area) = area() else { return };
    if let Some(d) = slot(area, db.to_u32(), false) {
        d.active.store(false, Ordering::Release);
        d.wanted.store(false, Ordering::Release);
        d.latch.store(0, Ordering::Release);
        let _ = d.oid.compare_exchange(db.to_u32(), 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// A worker that exits withdraws its latch.
pub fn withdraw_latch(db: pg_sys::Oid) {
    let Some(area) = area() else { return };
    if let Some(d) = slot(area, db.to_u32(), false) {
        d.latch.store(0, Ordering::Release);
    }
}

/// A worker says its database has syncs (so that it is started again if it fails).
pub fn set_active(db: pg_sys::Oid) {
    let Some(area) = area() else { return };
    if let Some(d) = slot(area, db.to_u32(), true) {
        d.active.store(true, Ordering::Release);
    }
}

/// Databases whose syncs a worker was filling.
pub fn active() -> Vec<pg_sys::Oid> {
    let Some(area) = area() else { return Vec::new() };
    area.databases
        .iter()
        .filter(|d| d.active.load(Ordering::Acquire))
        .map(|d| pg_sys::Oid::from(d.oid.load(Ordering::Acquire)))
        .filter(|o| *o != pg_sys::Oid::INVALID)
        .collect()
}

/// `want` this database once the current transaction commits (not before: a worker started
/// now would not see the sync yet and would exit), and not at all if it aborts.
pub fn want_at_commit() {
    if !available() {
        return;
    }
    AT_COMMIT.with(|p| p.set(true));
    if !CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers a callback for the life of the backend, once.
        unsafe { pg_sys::RegisterXactCallback(Some(at_end), std::ptr::null_mut()) };
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT if AT_COMMIT.with(|p| p.replace(false)) => {
            // SAFETY: a plain read of this backend's database.
            want(unsafe { pg_sys::MyDatabaseId });
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            AT_COMMIT.with(|p| p.set(false));
        }
        _ => {}
    }
}
