//! The background workers of syncs.
//!
//! The **launcher** (registered at preload, restarted by the postmaster if it dies) starts one
//! **worker** per database: at once for a database a sync asked for (`wake::want`), and for
//! every database that allows connections when it starts and every `PROBE` after, and for a
//! database where a synced table changed (the trigger wakes it at commit). A worker whose
//! database has no syncs (or no pg_bailian) exits at once, one whose syncs have nothing
//! queued after `IDLE_EXIT`; one that exits
//! with an error is started again after `RESTART_DELAY`, so an error repeating cannot become a
//! busy loop. A worker killed hard makes the postmaster restart the cluster (as for any
//! backend), after which the launcher starts the workers again and they go on with what is
//! queued: the queue and the states are tables.
//!
//! A worker connects as the bootstrap superuser, to read the catalog and the queue; each
//! sync's SQL runs as the sync's owner, in a security-restricted context (`super::as_owner`).
//! Every wait is on the latch, which SIGTERM (and the postmaster's death) sets.

use super::fill;
use bailian_core::AiError;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgTryBuilder};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a worker looks for queued rows when nothing woke it.
const POLL: Duration = Duration::from_millis(200);
/// How often the launcher looks at every database for syncs.
const PROBE: Duration = Duration::from_secs(60);
/// How long a worker whose syncs have nothing queued stays before it exits (one whose database
/// has no syncs exits at once): it holds one of `max_worker_processes` and a connection that
/// keeps DROP DATABASE waiting. A change to a synced table wakes the launcher at its commit.
const IDLE_EXIT: Duration = Duration::from_secs(30);
const RESTART_DELAY: Duration = Duration::from_secs(5);
/// Workers the launcher starts at most per second.
const STARTS_PER_TICK: usize = 4;

unsafe extern "C-unwind" {
    /// PostgreSQL's SIGTERM handler for backends (postgres.c), itself: pgrx's `pg_sys::die`
    /// is a Rust wrapper, which a signal handler must not be.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

/// From `_PG_init` at preload: registers the launcher.
pub fn register_launcher() {
    // SAFETY: read in _PG_init, on the postmaster's only thread.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("pg_bailian sync launcher")
        .set_type("pg_bailian sync launcher")
        .set_library("pg_bailian")
        .set_function("pg_bailian_sync_launcher")
        // A connection to no database (for the shared catalog pg_database) is still one.
        .enable_spi_access()
        .set_start_time(pgrx::bgworkers::BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_DELAY))
        .load();
}

/// Databases that allow connections (templates excluded), read from the shared catalog.
fn databases() -> Vec<pg_sys::Oid> {
    let mut out = Vec::new();
    // SAFETY: a catalog scan of pg_database in a transaction of its own, as autovacuum's
    // launcher does; GETSTRUCT of a pg_database heap tuple is a FormData_pg_database.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let form = pg_sys::GETSTRUCT(tup) as pg_sys::Form_pg_database;
            if (*form).datallowconn && !(*form).datistemplate {
                out.push((*form).oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        pg_sys::CommitTransactionCommand();
    }
    out
}

fn start_worker(db: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("pg_bailian sync worker for database {}", db.to_u32()))
        .set_type("pg_bailian sync worker")
        .set_library("pg_bailian")
        .set_function("pg_bailian_sync_worker")
        .set_argument(Some(pg_sys::Datum::from(db.to_u32() as usize)))
        .enable_spi_access()
        .set_start_time(pgrx::bgworkers::BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        // SAFETY: a plain read of this process's pid.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_bailian_sync_launcher(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    super::wake::register_launcher();
    let mut running: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    let mut started: HashMap<u32, Instant> = HashMap::new();
    // Databases to look at, started a few a tick: a probe of a database without syncs ends at
    // once, and a cluster of many databases must not take every worker slot at the same time.
    let mut pending: Vec<pg_sys::Oid> = Vec::new();
    let mut probed: Option<Instant> = None;
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloading the configuration file, as any process does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        running.retain(|_, w| {
            matches!(w.pid(), Ok(_) | Err(pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted))
        });
        // Wanted databases first: a sync just made or resumed waits for nothing else; then
        // those whose worker failed.
        let active: Vec<pg_sys::Oid> =
            super::wake::active().into_iter().filter(|db| !running.contains_key(&db.to_u32())).collect();
        if !active.is_empty() {
            // A database dropped while its worker ran is forgotten, not started for again.
            let existing = databases();
            for db in active {
                if !existing.contains(&db) {
                    super::wake::forget(db);
                } else if !pending.contains(&db) {
                    pending.insert(0, db);
                }
            }
        }
        for db in super::wake::take_wanted().into_iter().rev() {
            pending.retain(|d| *d != db);
            pending.insert(0, db);
        }
        if probed.is_none_or(|p| p.elapsed() >= PROBE) {
            probed = Some(Instant::now());
            for db in databases() {
                if !pending.contains(&db) {
                    pending.push(db);
                }
            }
        }
        let mut starts = 0;
        let mut left = Vec::new();
        for db in std::mem::take(&mut pending) {
            let key = db.to_u32();
            if running.contains_key(&key) {
                continue;
            }
            if starts >= STARTS_PER_TICK || started.get(&key).is_some_and(|t| t.elapsed() < RESTART_DELAY) {
                left.push(db);
                continue;
            }
            started.insert(key, Instant::now());
            starts += 1;
            match start_worker(db) {
                Some(w) => {
                    running.insert(key, w);
                }
                None => {
                    // No free worker slot now: try again next tick.
                    left.push(db);
                    starts = STARTS_PER_TICK;
                }
            }
        }
        pending = left;
        started.retain(|_, t| t.elapsed() < RESTART_DELAY);
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            break;
        }
    }
}

/// Runs `f` in a transaction of its own with a snapshot; an error is rolled back and
/// answered as (SQLSTATE, message).
fn transaction<T>(f: impl FnOnce() -> Result<T, AiError>) -> Result<T, (String, String)> {
    pgrx::check_for_interrupts!();
    // SAFETY: the worker is between transactions here; the snapshot pushed is popped on both
    // paths (an error's abort pops it too).
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let f = std::panic::AssertUnwindSafe(f);
    let result = PgTryBuilder::new(move || {
        let f = f;
        match (f.0)() {
            Ok(v) => Ok(v),
            Err(AiError::Interrupted) => {
                // A SIGTERM seen inside a wait: PostgreSQL ends the worker now.
                pgrx::check_for_interrupts!();
                Err((AiError::Interrupted.sqlstate(), AiError::Interrupted.to_string()))
            }
            Err(e) => Err((e.sqlstate(), e.to_string())),
        }
    })
    .catch_others(|e| match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
            Err((crate::entry::sqlstate_text(r.sql_error_code()), r.message().to_string()))
        }
        CaughtError::RustPanic { ereport, .. } => Err(("XX000".to_string(), ereport.message().to_string())),
    })
    .execute();
    // SAFETY: ends the transaction begun above: commits it, or aborts it after an error
    // (PostgreSQL's error state was flushed by pgrx when the error was caught).
    unsafe {
        match &result {
            Ok(_) => {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            // Out of any subtransaction a fill's job had open, too.
            Err(_) => pg_sys::AbortOutOfAnyTransaction(),
        }
    }
    result
}

/// The syncs of this database to fill now: not paused or stopped, not backing off, and with
/// queued rows (or never scanned for this table); and whether any has work for later. None
/// when the database has no syncs.
fn due() -> Result<Option<(Vec<String>, bool)>, AiError> {
    let queue = match super::queue_table() {
        Ok(q) => q,
        Err(_) => return Ok(None),
    };
    Spi::connect(|c| {
        let installed = c
            .select(
                "SELECT pg_catalog.to_regclass('bailian.syncs') IS NOT NULL AND EXISTS (
                     SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_bailian')",
                Some(1),
                &[],
            )?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false);
        if !installed {
            return Ok(None);
        }
        let any = !c.select("SELECT FROM bailian.syncs LIMIT 1", Some(1), &[])?.is_empty();
        if !any {
            return Ok(None);
        }
        let rows = c.select(
            &format!(
                "SELECT s.sync_name FROM bailian.syncs s
                   LEFT JOIN bailian.sync_state st ON st.sync_name OPERATOR(pg_catalog.=) s.sync_name
                  WHERE NOT s.paused AND COALESCE(st.state, 'running') OPERATOR(pg_catalog.<>) 'stopped'
                    AND (st.retry_at IS NULL OR st.retry_at OPERATOR(pg_catalog.<=) pg_catalog.now())
                    AND (st.sync_name IS NULL OR st.relid OPERATOR(pg_catalog.<>) s.table_name::pg_catalog.oid
                         OR NOT EXISTS (SELECT FROM pg_catalog.pg_class c
                                         WHERE c.oid OPERATOR(pg_catalog.=) s.table_name::pg_catalog.oid)
                         OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) s.owner)
                         OR EXISTS (SELECT FROM {queue} q WHERE q.sync_name OPERATOR(pg_catalog.=) s.sync_name
                                      AND q.relid OPERATOR(pg_catalog.=) s.table_name::pg_catalog.oid
                                      AND (q.not_before IS NULL OR q.not_before OPERATOR(pg_catalog.<=) pg_catalog.now())))
                  ORDER BY s.sync_name"
            ),
            None,
            &[],
        )?;
        let names = rows.map(|r| r.get::<String>(1).map(|v| v.unwrap_or_default())).collect::<Result<Vec<_>, _>>()?;
        // Work later: rows queued (also those waiting out a delay) or a retry scheduled.
        let later = c
            .select(
                &format!(
                    "SELECT EXISTS (SELECT FROM bailian.syncs s
                                      LEFT JOIN bailian.sync_state st ON st.sync_name OPERATOR(pg_catalog.=) s.sync_name
                                     WHERE NOT s.paused AND COALESCE(st.state, 'running') OPERATOR(pg_catalog.<>) 'stopped'
                                       AND (st.retry_at IS NOT NULL
                                            OR EXISTS (SELECT FROM {queue} q WHERE q.sync_name OPERATOR(pg_catalog.=) s.sync_name)))"
                ),
                Some(1),
                &[],
            )?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false);
        Ok(Some((names, later)))
    })
    .map_err(super::spi)
}

/// One fill of the sync `name` in this worker: scan if needed, mark, fill, record, each in a
/// transaction of its own. Answers whether it took rows (so the worker looks again at once).
fn fill_once(name: &str) -> bool {
    let def = match transaction(|| super::load(name)) {
        Ok(Some(def)) => def,
        _ => return false,
    };
    if let Ok(Some((code, message))) = transaction(|| Ok(fill::blocked(&def))) {
        let _ = transaction(|| super::save_state(&def.name, "stopped", 0, 0, Some((&code, &message)), None));
        return false;
    }
    if def.scanned_relid != Some(def.relid) {
        if let Err((code, message)) = transaction(|| fill::scan(&def)) {
            let _ = transaction(|| fill::record(&def, 0, Err((code.clone(), message.clone()))));
            return false;
        }
    }
    let (run, taken) = match transaction(|| fill::mark(&def)) {
        Ok(v) => v,
        Err(_) => return false,
    };
    if taken == 0 {
        return false;
    }
    let outcome = transaction(|| fill::fill(&def, run, true));
    if let Err((code, message)) = &outcome {
        pgrx::log!("pg_bailian sync \"{}\": {code} {message}", def.name);
    }
    let _ = transaction(|| fill::record(&def, run, outcome));
    // Whatever the owner's SQL set for the session (set_config(..., false) is not a restricted
    // operation) goes back to the defaults before another owner's fill.
    let _ = transaction(|| {
        // SAFETY: DISCARD ALL's reset of every setting, in a transaction.
        unsafe { pg_sys::ResetAllOptions() };
        Ok(())
    });
    taken >= super::RUN_ROWS
}

/// One worker per database: a session advisory lock on (this module's class, the database).
fn only_worker(db: pg_sys::Oid) -> bool {
    transaction(|| {
        Spi::connect_mut(|c| {
            c.update(
                "SELECT pg_catalog.pg_try_advisory_lock(21021, $1::pg_catalog.int4)",
                Some(1),
                &[(db.to_u32() as i32).into()],
            )?
            .first()
            .get_one::<bool>()
        })
        .map_err(super::spi)
    })
    .ok()
    .flatten()
    .unwrap_or(false)
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_bailian_sync_worker(arg: pg_sys::Datum) {
    // SIGTERM is PostgreSQL's own `die`, as for a backend: the next interrupt check ends the
    // worker wherever it is (a fill's requests in flight included), not only between passes.
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SAFETY: installing a signal handler of PostgreSQL's in this process, before any work.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
    let db = pg_sys::Oid::from(arg.value() as u32);
    // SAFETY: connects this worker to its database as the bootstrap superuser, once.
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnectionByOid(
            db,
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            0,
        )
    };
    if !only_worker(db) {
        // Another worker serves this database (a launcher restarted while it ran).
        return;
    }
    super::wake::register_worker(db, true);
    // SAFETY: registers a callback for this process's exit, with the database as its argument.
    unsafe { pg_sys::before_shmem_exit(Some(withdraw), pg_sys::Datum::from(db.to_u32() as usize)) };
    let mut last_work = Instant::now();
    let mut more = false;
    loop {
        // Waits service interrupts: a SIGTERM ends the worker here (or at any other check).
        if !more && !BackgroundWorker::wait_latch(Some(POLL)) {
            break;
        }
        pgrx::check_for_interrupts!();
        if BackgroundWorker::sighup_received() {
            // SAFETY: as in the launcher.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        more = false;
        match transaction(due) {
            Ok(Some((names, later))) => {
                if !names.is_empty() || later {
                    last_work = Instant::now();
                    super::wake::set_active(db);
                }
                for name in names {
                    pgrx::check_for_interrupts!();
                    more |= fill_once(&name);
                }
                if !more && last_work.elapsed() >= IDLE_EXIT {
                    // Nothing queued for a while: the slot goes back; a change wakes the
                    // launcher at its commit (the trigger's `wake::want_at_commit`).
                    break;
                }
            }
            _ => break,
        }
    }
    super::wake::register_worker(db, false);
}

/// At the worker's exit, however it exits: its latch is withdrawn (its slot stays active
/// unless it exited because its database has no syncs, so that a failed worker is started
/// again).
#[pg_guard]
unsafe extern "C-unwind" fn withdraw(_code: i32, arg: pg_sys::Datum) {
    super::wake::withdraw_latch(pg_sys::Oid::from(arg.value() as u32));
}
