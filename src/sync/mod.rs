//! Syncs: AI columns that stay current by themselves.
//!
//! A sync keeps `target = expression` for every row of a table where its filter holds.
//! - **Finding work.** A BEFORE trigger (`trigger`) on INSERT, and on UPDATE of the columns the
//!   expression or filter reads (when one of them really changed), makes the row's target
//!   NULL and queues its key in `ai_sync_queue`, in the changing transaction: no query ever
//!   sees new content beside an answer computed from the old one, and a rollback takes the
//!   queue entry back with the change. Triggers rather than logical decoding: they see the
//!   change inside its own transaction (decoding sees it only after the commit, when the
//!   stale value has already been visible), and they need no replication slot or `wal_level`.
//! - **Filling it.** A fill (`fill`) marks up to `RUN_ROWS` queued entries with a run id,
//!   then runs the job engine of `ai_update` over the rows they name (batched, concurrent,
//!   per-row failures kept, budgets and shared limits honoured), as the sync's owner with the
//!   search_path the sync was created with. Entries of rows that were filled, failed for good
//!   or are no longer to fill are removed; a row changed during the fill has its entry's run
//!   cleared by the trigger, so the entry stays for the next fill.
//! - **Who fills.** A launcher (`worker`) starts one background worker per database; each polls
//!   its syncs every `POLL` and is woken at once by `ai_sync_create`, `ai_sync_resume` and the
//!   commit of a change the trigger queued (`wake`). Without `shared_preload_libraries` there
//!   are no workers, and `CALL ai_sync_run(name)` fills a sync in the caller's session. Two
//!   fills of one sync at once (the worker and a CALL) share the rows through the job engine's
//!   claims: no row is sent twice.
//! - **Trouble.** A provider outage (calls failing with a transient code after retries) leaves
//!   the rows queued and backs off (1 s doubling to 60 s, state `failing`); a spent budget
//!   waits (`waiting for budget`); anything about the sync itself (its table or column gone,
//!   its owner dropped, a privilege revoked) stops it with the error (`stopped`) until
//!   `ai_sync_resume`. A row that fails for good is listed in `ai_sync_errors` and not retried
//!   until it changes or the sync is resumed.
//!
//! Chunk syncs (`ai_sync_chunks`) add a destination table of chunks, kept by a trigger function
//! generated for the sync and owned by its creator; the destination's embedding column is then
//! an ordinary column sync.

mod fill;
mod manage;
mod trigger;
pub mod wake;
mod worker;

use crate::catalog::as_catalog_owner;
use bailian_core::AiError;
use pgrx::pg_sys;
use pgrx::prelude::*;

pub use worker::register_launcher;

/// Entries one fill takes at most: bounds a fill's memory (its failures and locked keys) and
/// how long a writer changing one of its rows can wait behind it.
pub const RUN_ROWS: i64 = 1000;

fn spi(e: pgrx::spi::SpiError) -> AiError {
    AiError::Internal { message: format!("sync query failed: {e}") }
}

/// The quoted schema of the extension (where `ai_sync_queue` is).
fn ext_schema() -> Result<String, AiError> {
    let name = Spi::connect(|c| {
        c.select(
            "SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_extension e \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
              WHERE e.extname OPERATOR(pg_catalog.=) 'pg_bailian'",
            Some(1),
            &[],
        )?
        .first()
        .get_one::<String>()
    })
    .map_err(spi)?;
    name.map(|n| crate::functions::column::quote_ident(&n))
        .ok_or_else(|| AiError::Internal { message: "extension pg_bailian not found".into() })
}

fn queue_table() -> Result<String, AiError> {
    Ok(format!("{}.ai_sync_queue", ext_schema()?))
}

/// A sync as its catalog row says.
#[derive(Clone, Debug)]
pub struct Def {
    pub name: String,
    pub kind: String,
    pub relid: pg_sys::Oid,
    pub target: String,
    pub expression: String,
    pub filter: Option<String>,
    pub owner: String,
    /// None when the role no longer exists.
    pub owner_oid: Option<pg_sys::Oid>,
    pub search_path: String,
    /// The relid the sync's rows were last queued for (None: never, e.g. restored).
    pub scanned_relid: Option<pg_sys::Oid>,
    pub state: Option<String>,
    pub source: Option<pg_sys::Oid>,
}

/// The sync named `name`, read as the catalog owner.
pub fn load(name: &str) -> Result<Option<Def>, AiError> {
    as_catalog_owner(|| {
        Spi::connect(|c| {
            let rows = c.select(
                "SELECT s.kind, s.table_name::pg_catalog.oid, s.target_column::pg_catalog.text, s.expression, s.filter,
                        s.owner::pg_catalog.text,
                        (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) s.owner),
                        s.search_path, s.paused, st.relid, st.state, s.source_table::pg_catalog.oid
                   FROM bailian.syncs s
                   LEFT JOIN bailian.sync_state st ON st.sync_name OPERATOR(pg_catalog.=) s.sync_name
                  WHERE s.sync_name OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[name.into()],
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            let r = rows.first();
            Ok(Some(Def {
                name: name.to_string(),
                kind: r.get::<String>(1)?.unwrap_or_default(),
                relid: r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::Oid::INVALID),
                target: r.get::<String>(3)?.unwrap_or_default(),
                expression: r.get::<String>(4)?.unwrap_or_default(),
                filter: r.get::<String>(5)?,
                owner: r.get::<String>(6)?.unwrap_or_default(),
                owner_oid: r.get::<pg_sys::Oid>(7)?,
                search_path: r.get::<String>(8)?.unwrap_or_default(),
                scanned_relid: r.get::<pg_sys::Oid>(10)?,
                state: r.get::<String>(11)?,
                source: r.get::<pg_sys::Oid>(12)?,
            }))
        })
        .map_err(spi)
    })
}

/// The sync `name`, or an error naming the ones there are to see.
fn load_existing(name: &str) -> Result<Def, AiError> {
    load(name)?.ok_or_else(|| {
        AiError::invalid_with_hint(
            format!("no sync named \"{name}\""),
            "SELECT sync_name FROM ai_syncs lists the syncs you may see.",
        )
    })
}

/// Whether the current user has the privileges of `def`'s owner (a superuser has).
fn may_manage(def: &Def) -> bool {
    match def.owner_oid {
        // SAFETY: plain catalog lookups for the current user and an existing role.
        Some(owner) => unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), owner) },
        None => unsafe { pg_sys::superuser() },
    }
}

fn check_manage(def: &Def, what: &str) -> Result<(), AiError> {
    if may_manage(def) {
        return Ok(());
    }
    Err(AiError::NotAllowed {
        message: format!("{what}: sync \"{}\" belongs to role \"{}\"", def.name, def.owner),
        hint: "Only its owner, a member of that role or a superuser may change it.".into(),
    })
}

/// Runs `f` as `owner` with `search_path` set as the sync was created with (restored after,
/// also when `f` raises): what the sync's expression and filter run with, never more. The
/// security-restricted context keeps the user's SQL from changing the session (SET ROLE, new
/// temporary objects) for the syncs run after it.
fn as_owner<T>(owner: pg_sys::Oid, search_path: &str, f: impl FnOnce() -> T) -> T {
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_search_path(&self.0);
        }
    }
    let _restore = Restore(current_search_path());
    set_search_path(search_path);
    crate::catalog::as_role(owner, f)
}

fn current_search_path() -> String {
    // SAFETY: GetConfigOption returns a pointer into the GUC's own storage, copied at once.
    unsafe {
        let p = pg_sys::GetConfigOption(c"search_path".as_ptr(), false, false);
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

fn set_search_path(path: &str) {
    let Ok(value) = std::ffi::CString::new(path) else { return };
    // SAFETY: a session-level SET of a string GUC, as SET search_path does; the value is
    // copied by the GUC machinery.
    unsafe {
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
            true,
            0,
            false,
        );
    }
}

/// Records what a fill found, as the catalog owner. A sync's first state row says its rows
/// were never queued for any table (relid 0, see `mark_scanned`).
fn save_state(
    name: &str,
    state: &str,
    filled: i64,
    failed: i64,
    error: Option<(&str, &str)>,
    retry_in: Option<f64>,
) -> Result<(), AiError> {
    let (code, message) = match error {
        Some((c, m)) => (Some(c.to_string()), Some(m.to_string())),
        None => (None, None),
    };
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                "INSERT INTO bailian.sync_state AS st (sync_name, relid, state, rows_filled, rows_failed, last_error,
                                                      last_sqlstate, last_run, retry_at, backoff)
                 VALUES ($1, 0, $2, $3, $4, $5, $6, pg_catalog.now(),
                         pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $7), COALESCE($7, 0))
                 ON CONFLICT (sync_name) DO UPDATE
                    SET state = EXCLUDED.state,
                        rows_filled = st.rows_filled OPERATOR(pg_catalog.+) EXCLUDED.rows_filled,
                        rows_failed = st.rows_failed OPERATOR(pg_catalog.+) EXCLUDED.rows_failed,
                        last_error = COALESCE(EXCLUDED.last_error, st.last_error),
                        last_sqlstate = COALESCE(EXCLUDED.last_sqlstate, st.last_sqlstate),
                        last_run = EXCLUDED.last_run, retry_at = EXCLUDED.retry_at, backoff = EXCLUDED.backoff",
                None,
                &[
                    name.into(),
                    state.into(),
                    filled.into(),
                    failed.into(),
                    message.into(),
                    code.into(),
                    retry_in.into(),
                ],
            )
            .map(drop)
        })
        .map_err(spi)
    })
}

/// The sync's rows of table `relid` are all queued: a restore (a new oid) queues them again.
fn mark_scanned(name: &str, relid: pg_sys::Oid) -> Result<(), AiError> {
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                "INSERT INTO bailian.sync_state (sync_name, relid) VALUES ($1, $2)
                 ON CONFLICT (sync_name) DO UPDATE SET relid = EXCLUDED.relid",
                None,
                &[name.into(), relid.into()],
            )
            .map(drop)
        })
        .map_err(spi)
    })
}

/// The last backoff of a sync (0 when none).
fn backoff_of(name: &str) -> f64 {
    as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT backoff FROM bailian.sync_state WHERE sync_name OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[name.into()],
            )
            .and_then(|r| if r.is_empty() { Ok(None) } else { r.first().get_one::<f64>() })
        })
        .ok()
        .flatten()
        .unwrap_or(0.0)
    })
}
