//! The answer cache: answers of deployments made with `cache => true`, kept in
//! `bailian.answer_cache` under their key (`bailian_core::answers`), until they expire
//! (`pg_bailian.cache_ttl`) or the cache outgrows `pg_bailian.cache_max_size` (oldest first).
//!
//! An answer is paid for when it arrives, whatever becomes of the statement that asked for
//! it, so it must be kept even when that statement fails or is rolled back: a row written in
//! the caller's transaction would vanish with it, and PostgreSQL has no autonomous
//! transactions. So an answer goes first to the inbox, a file per answer under
//! `$PGDATA/pg_bailian/answer_inbox/<database>/`, named by its key and written under a
//! temporary name then renamed (a reader sees a whole file or none). Files are not
//! transactional: they stay whatever the caller's transaction does. A later statement that
//! uses the cache in a writable transaction moves the inbox into the table (as the catalog
//! owner, one backend per database at a time) and removes the files once that transaction
//! commits; until then a lookup that misses the table reads the inbox file of its key. As
//! pg_stat_statements keeps its query texts in a file beside the data, the inbox is the
//! server's own: no role reads it, and it holds answers only, never a key.
//!
//! Reads happen only on behalf of a call a role makes to a deployment it may call (the cache
//! is consulted after the deployment is loaded for that call), so a role is given only answers
//! it could have asked for itself. A crash loses nothing but inbox files being written.

use bailian_core::answers::{self, AnswerKey, Kept};
use bailian_core::meter::Usage;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

const INBOX: &str = "pg_bailian/answer_inbox";
const MAGIC: &[u8; 8] = b"PGBAC001";
/// Files moved into the table by one statement at most, so no statement pays for a backlog.
const INGEST_FILES: usize = 2000;
/// Identifies the advisory lock of a database's ingestion (with the database's OID).
const INGEST_LOCK: i64 = 21022;

/// What a statement's cache work needs, read once per statement: writing answers happens
/// inside the runtime, where nothing of PostgreSQL may be called.
#[derive(Clone)]
struct Context {
    scope: (i64, u64),
    dir: PathBuf,
    ttl_us: i64,
    /// Whether answers may be written: not on a standby.
    writable: bool,
    owner: pg_sys::Oid,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
    /// Inbox files moved into the table by the current transaction: removed at its commit.
    static MOVED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn inbox_dir() -> PathBuf {
    // SAFETY: a plain read of this backend's database; the working directory of every
    // backend and background worker is the data directory.
    PathBuf::from(INBOX).join(unsafe { pg_sys::MyDatabaseId }.to_u32().to_string())
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Opens the statement's cache context (moving the inbox into the table first, once per
/// statement, when the transaction may write).
fn context() -> Context {
    let (statement, _, generation) = crate::catalog::stamp();
    if let Some(c) = CONTEXT.with(|c| c.borrow().clone()).filter(|c| c.scope == (statement, generation)) {
        return c;
    }
    // SAFETY: plain reads of the backend's recovery state and transaction flags.
    let (recovery, read_only, parallel) =
        unsafe { (pg_sys::RecoveryInProgress(), pg_sys::XactReadOnly, pg_sys::IsInParallelMode()) };
    let c = Context {
        scope: (statement, generation),
        dir: inbox_dir(),
        ttl_us: crate::guc::cache_ttl_secs().saturating_mul(1_000_000),
        writable: !recovery,
        owner: crate::catalog::catalog_owner(),
    };
    CONTEXT.with(|cell| *cell.borrow_mut() = Some(c.clone()));
    if !recovery && !read_only && !parallel {
        if let Err(e) = ingest(&c, INGEST_FILES) {
            pgrx::debug1!("pg_bailian: the answer inbox was not moved into the cache this time: {e}");
        }
    }
    c
}

const LOOKUP: &str = "
SELECT answer FROM bailian.answer_cache
 WHERE key OPERATOR(pg_catalog.=) $1 AND model_name OPERATOR(pg_catalog.=) $2
   AND expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()";

/// The answer the cache holds for `key` of the deployment `model_name`.
pub fn lookup(model_name: &str, key: &AnswerKey) -> Option<(Kept, Usage)> {
    let c = context();
    let stored: Option<Vec<u8>> = crate::catalog::as_role(c.owner, || {
        Spi::connect(|client| {
            client
                .select(LOOKUP, Some(1), &[key.to_vec().into(), model_name.into()])?
                .first()
                .get_one::<Vec<u8>>()
        })
    })
    .ok()
    .flatten();
    if let Some(bytes) = stored {
        return answers::decode(&bytes);
    }
    let (name, _, expires, answer) = read_file(&c.dir.join(answers::hex(key)))?;
    (name == model_name && expires > now_us()).then_some(())?;
    answers::decode(&answer)
}

/// Keeps an answer that arrived: into the inbox. Runs inside the runtime (see `Context`).
pub fn store(model_name: &str, key: &AnswerKey, kept: &Kept, usage: &Usage) {
    let Some(c) = CONTEXT.with(|c| c.borrow().clone()) else { return };
    if !c.writable {
        return;
    }
    let created = now_us();
    let mut file = Vec::with_capacity(64 + model_name.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&(model_name.len() as u16).to_le_bytes());
    file.extend_from_slice(model_name.as_bytes());
    file.extend_from_slice(&created.to_le_bytes());
    file.extend_from_slice(&created.saturating_add(c.ttl_us).to_le_bytes());
    file.extend_from_slice(&answers::encode(kept, usage));
    if let Err(e) = write_file(&c.dir, &answers::hex(key), &file) {
        // The answer is still given; only a later call will pay for it again.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("pg_bailian: could not keep an answer in the answer cache inbox: {e}");
        }
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("tmp.{}.{n}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// (model_name, created, expires, answer) of an inbox file; None for one damaged or gone.
fn read_file(path: &Path) -> Option<(String, i64, i64, Vec<u8>)> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.get(..8)? != MAGIC {
        return None;
    }
    let n = u16::from_le_bytes(bytes.get(8..10)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(bytes.get(10..10 + n)?).ok()?.to_string();
    let at = 10 + n;
    let created = i64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
    let expires = i64::from_le_bytes(bytes.get(at + 8..at + 16)?.try_into().ok()?);
    Some((name, created, expires, bytes.get(at + 16..)?.to_vec()))
}

/// Inbox files by key (temporary files being written are not theirs yet).
fn inbox_files(dir: &Path) -> Vec<(AnswerKey, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let key = parse_hex(name.to_str()?)?;
            Some((key, e.path()))
        })
        .collect()
}

fn parse_hex(s: &str) -> Option<AnswerKey> {
    if s.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// An answer of a model undeployed since it was kept is dropped with its file.
const INSERT: &str = "
INSERT INTO bailian.answer_cache (key, model_name, answer, created_at, expires_at)
SELECT $1, m.model_name, $3, pg_catalog.to_timestamp($4 OPERATOR(pg_catalog./) 1e6::float8),
       pg_catalog.to_timestamp($5 OPERATOR(pg_catalog./) 1e6::float8)
  FROM bailian.models m WHERE m.model_name OPERATOR(pg_catalog.=) $2
ON CONFLICT (key) DO UPDATE SET model_name = EXCLUDED.model_name, answer = EXCLUDED.answer,
    created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at";

const EXPIRE: &str = "
DELETE FROM bailian.answer_cache WHERE expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()";

/// The newest entries that fit in $1 bytes stay; the rest go.
const EVICT: &str = "
DELETE FROM bailian.answer_cache c USING (
    SELECT key, pg_catalog.sum(pg_catalog.octet_length(answer)) OVER (ORDER BY created_at DESC, key) AS running
      FROM bailian.answer_cache) o
 WHERE c.key OPERATOR(pg_catalog.=) o.key AND o.running OPERATOR(pg_catalog.>) $1";

/// How often a backend removes the expired entries and, past the size bound, the oldest
/// (each is a scan of the whole cache).
const EVICT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

thread_local! {
    static EVICTED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Moves up to `limit` inbox files into the table, in the current transaction, and now and
/// then removes the expired and, past the size bound, the oldest entries. Another backend
/// doing it now: nothing. Returns how many files were moved.
fn ingest(c: &Context, limit: usize) -> Result<usize, pgrx::spi::Error> {
    let files = inbox_files(&c.dir);
    if files.is_empty() {
        return Ok(0);
    }
    let max_bytes = crate::guc::cache_max_bytes();
    crate::catalog::as_role(c.owner, || {
        Spi::connect_mut(|client| {
            // SAFETY: a plain read of this backend's database.
            let db = i64::from(unsafe { pg_sys::MyDatabaseId }.to_u32());
            let locked = client
                .update(
                    "SELECT pg_catalog.pg_try_advisory_xact_lock($1::int4, $2::int4)",
                    Some(1),
                    &[(INGEST_LOCK as i32).into(), (db as i32).into()],
                )?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            if !locked {
                return Ok(0);
            }
            let mut moved = Vec::new();
            for (key, path) in files.into_iter().take(limit) {
                // A damaged file is dropped: it can never be read.
                let Some((name, created, expires, answer)) = read_file(&path) else {
                    moved.push(path);
                    continue;
                };
                client.update(
                    INSERT,
                    None,
                    &[key.to_vec().into(), name.into(), answer.into(), created.into(), expires.into()],
                )?;
                moved.push(path);
            }
            let due = EVICTED.with(|e| e.get().is_none_or(|at| at.elapsed() >= EVICT_EVERY));
            if due || limit == usize::MAX {
                client.update(EXPIRE, None, &[])?;
                client.update(EVICT, None, &[(max_bytes as i64).into()])?;
                EVICTED.with(|e| e.set(Some(std::time::Instant::now())));
            }
            let n = moved.len();
            remove_at_commit(moved);
            Ok(n)
        })
    })
}

fn remove_at_commit(paths: Vec<PathBuf>) {
    MOVED.with(|m| m.borrow_mut().extend(paths));
    if !CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers a callback for the life of the backend, once.
        unsafe { pg_sys::RegisterXactCallback(Some(at_end), std::ptr::null_mut()) };
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            for path in MOVED.with(|m| std::mem::take(&mut *m.borrow_mut())) {
                // Gone already (another backend moved it first): nothing to do.
                let _ = std::fs::remove_file(path);
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            // Still in the inbox: moved again by a later transaction.
            MOVED.with(|m| m.borrow_mut().clear());
        }
        _ => {}
    }
}

/// Inbox entries not yet in the table, by model: (count, bytes).
pub fn pending_by_model() -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut by_model = std::collections::BTreeMap::new();
    for (_, path) in inbox_files(&inbox_dir()) {
        if let Some((name, _, _, answer)) = read_file(&path) {
            let n: &mut (i64, i64) = by_model.entry(name).or_default();
            n.0 += 1;
            n.1 += answer.len() as i64;
        }
    }
    by_model
}

/// Removes the inbox files of `model_name`; returns how many.
pub fn clear_inbox(model_name: &str) -> i64 {
    let mut n = 0;
    for (_, path) in inbox_files(&inbox_dir()) {
        if read_file(&path).is_some_and(|(name, ..)| name == model_name)
            && std::fs::remove_file(&path).is_ok()
        {
            n += 1;
        }
    }
    n
}
