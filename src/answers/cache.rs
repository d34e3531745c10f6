//! The answer cache: answers of deployments made with `cache => true`, kept in
//! `bailian.answer_cache` under their key (`bailian_core::answers`), until they expire
//! (`pg_bailian.cache_ttl`) or the cache outgrows `pg_bailian.cache_max_size` (oldest first).
//!
//! An answer is paid for when it arrives, whatever becomes of the statement that asked for
//! it, so it must be kept even when that statement fails or is rolled back: a row written in
//! the caller's transaction would vanish with it, and PostgreSQL has no autonomous
//! transactions. So an answer goes first to the inbox, a file per answer under
//! `$PGDATA/pg_bailian/answer_inbox/<database>/<cache table>/` (the cache table's OID, so a
//! dropped and recreated extension never reads an older one's files), named by its key,
//! written under a temporary name then renamed, and carrying a SHA-256 of its answer (a file
//! cut short by a crash is never read as an answer). Files are not transactional: they stay
//! whatever the caller's transaction does. As pg_stat_statements keeps its query texts in a
//! file beside the data, the inbox is the server's own: no role reads it, and it holds
//! answers only, never a key.
//!
//! A later statement that uses the cache moves the inbox into the table, as the catalog
//! owner, in an internal subtransaction whose failure (a concurrent undeploy, a lock) is
//! swallowed: it never fails the caller's statement. One backend of a database moves at a
//! time (it locks the table, which no role without privileges on it can do), not in a
//! transaction that sees one snapshot (REPEATABLE READ or SERIALIZABLE, where rows moved by
//! others meanwhile would be invisible and their moves would conflict), and not in a
//! read-only or parallel one. The files moved are removed when the transaction commits, and
//! kept when the work that moved them is rolled back, to the savepoint (tracked through
//! subtransaction callbacks). Until then, a lookup that misses the table reads the file.
//! The inbox holds at most `MAX_INBOX_FILES` files per database: past that, answers are
//! given but not kept.
//!
//! Reads happen only on behalf of a call a role makes to a deployment it may call (the cache
//! is consulted after the deployment is loaded for that call), so a role is given only answers
//! it could have asked for itself.

use bailian_core::answers::{self, AnswerKey, Kept};
use bailian_core::meter::Usage;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const INBOX: &str = "pg_bailian/answer_inbox";
const MAGIC: &[u8; 8] = b"PGBAC002";
/// Files moved into the table by one statement at most, so no statement pays for a backlog.
const INGEST_FILES: usize = 2000;
/// Inbox files of a database at most (answers past them are given, not kept).
const MAX_INBOX_FILES: usize = 100_000;

/// What a statement's cache work needs, read once per statement: writing answers happens
/// inside the runtime, where nothing of PostgreSQL may be called.
#[derive(Clone)]
struct Context {
    /// The statement and transaction (a job's CALL commits as it goes: each of its
    /// transactions moves what the one before left in the inbox), and the catalog generation.
    scope: (i64, i64, u64),
    dir: PathBuf,
    ttl_us: i64,
    /// Whether answers may be written: not on a standby, nor past MAX_INBOX_FILES.
    writable: bool,
    owner: pg_sys::Oid,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
    /// Inbox files moved into the table by the current transaction, with the subtransaction
    /// that owns the move: removed at the top-level commit, forgotten when their
    /// subtransaction is rolled back.
    static MOVED: RefCell<Vec<(pg_sys::SubTransactionId, PathBuf)>> = const { RefCell::new(Vec::new()) };
    static CALLBACKS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static EVICTED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    /// Whether this backend wrote inbox files since it last moved the inbox.
    static WROTE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The inbox's files, counted at most once every few seconds (a count lists 256 directories).
fn inbox_count(dir: &Path) -> usize {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    thread_local! {
        static COUNTED: std::cell::Cell<Option<(std::time::Instant, usize)>> = const { std::cell::Cell::new(None) };
    }
    if let Some((at, n)) = COUNTED.with(|c| c.get()).filter(|(at, _)| at.elapsed() < EVERY) {
        let _ = at;
        return n;
    }
    let n = inbox_files(dir).len();
    COUNTED.with(|c| c.set(Some((std::time::Instant::now(), n))));
    n
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

const WHERE: &str = "
SELECT n.nspowner, c.oid FROM pg_catalog.pg_namespace n
  JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid
 WHERE n.nspname OPERATOR(pg_catalog.=) 'bailian' AND c.relname OPERATOR(pg_catalog.=) 'answer_cache'";

/// The catalog owner and this database's inbox; None where the catalog has no cache table
/// (a version before 0.6, not yet updated).
fn place() -> Option<(pg_sys::Oid, PathBuf)> {
    let row = Spi::connect(|c| {
        let rows = c.select(WHERE, Some(1), &[])?;
        match rows.into_iter().next() {
            Some(r) => Ok::<_, pgrx::spi::Error>(Some((r.get::<pg_sys::Oid>(1)?, r.get::<pg_sys::Oid>(2)?))),
            None => Ok(None),
        }
    })
    .ok()
    .flatten()?;
    let (Some(owner), Some(table)) = row else { return None };
    // SAFETY: a plain read of this backend's database; the working directory of every
    // backend and background worker is the data directory.
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    Some((owner, PathBuf::from(INBOX).join(db.to_string()).join(table.to_u32().to_string())))
}

/// Opens the statement's cache context (moving the inbox into the table first, once per
/// statement, where that is safe: see the module doc).
fn context() -> Option<Context> {
    let scope = crate::catalog::stamp();
    if let Some(c) = CONTEXT.with(|c| c.borrow().clone()).filter(|c| c.scope == scope) {
        return Some(c);
    }
    let (owner, dir) = place()?;
    // SAFETY: plain reads of the backend's recovery state and transaction flags.
    let (recovery, read_only, parallel, snapshot) = unsafe {
        (
            pg_sys::RecoveryInProgress(),
            pg_sys::XactReadOnly,
            pg_sys::IsInParallelMode(),
            pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32,
        )
    };
    let files = inbox_count(&dir);
    let c = Context {
        scope,
        dir,
        ttl_us: crate::guc::cache_ttl_secs().saturating_mul(1_000_000),
        writable: !recovery && files < MAX_INBOX_FILES,
        owner,
    };
    CONTEXT.with(|cell| *cell.borrow_mut() = Some(c.clone()));
    // Files this backend wrote since it last moved them, or any another left (as last counted).
    let pending = WROTE.with(|w| w.get()) || files > 0;
    if pending && !recovery && !read_only && !parallel && !snapshot {
        WROTE.with(|w| w.set(false));
        ingest(&c, INGEST_FILES);
    }
    Some(c)
}

const LOOKUP: &str = "
SELECT answer FROM bailian.answer_cache
 WHERE key OPERATOR(pg_catalog.=) $1 AND model_name OPERATOR(pg_catalog.=) $2
   AND expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()";

thread_local! {
    /// The lookup, prepared once per backend (a call may look up every row's answer). Its
    /// SQL names everything with its schema; a plan whose table was recreated is replanned.
    static LOOKUP_PLAN: RefCell<Option<pgrx::spi::OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// The answer the cache holds for `key` of the deployment `model_name`.
pub fn lookup(model_name: &str, key: &AnswerKey) -> Option<(Kept, Usage)> {
    let c = context()?;
    let stored: Option<Vec<u8>> = crate::catalog::as_role(c.owner, || {
        use pgrx::{PgBuiltInOids, PgOid};
        let types = [PgOid::BuiltIn(PgBuiltInOids::BYTEAOID), PgOid::BuiltIn(PgBuiltInOids::TEXTOID)];
        crate::spi::with_kept_plan(&LOOKUP_PLAN, LOOKUP, &types, |plan| {
            Spi::connect(|client| {
                let rows = client.select(plan, Some(1), &[key.to_vec().into(), model_name.into()])?;
                match rows.into_iter().next() {
                    Some(r) => r.get::<Vec<u8>>(1),
                    None => Ok(None),
                }
            })
        })
    })
    .ok()
    .flatten();
    if let Some(bytes) = stored {
        return answers::decode(&bytes);
    }
    let file = read_file(&file_of(&c.dir, key))?;
    (file.model == model_name && file.expires > now_us()).then_some(())?;
    answers::decode(&file.answer)
}

const LOOKUP_MANY: &str = "
SELECT key, answer FROM bailian.answer_cache
 WHERE key OPERATOR(pg_catalog.=) ANY ($1) AND model_name OPERATOR(pg_catalog.=) $2
   AND expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()";

/// The answers the cache holds for `keys` of `model_name`, in one query (then the inbox
/// files of those it has not).
pub fn lookup_many(model_name: &str, keys: &[AnswerKey]) -> Vec<(AnswerKey, (Kept, Usage))> {
    let Some(c) = context() else { return Vec::new() };
    let wanted: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    // Planned with its values each time (not kept): a plan made once, while the cache was
    // small, could scan the whole table for every pack once it is large.
    let rows: Vec<(Vec<u8>, Vec<u8>)> = crate::catalog::as_role(c.owner, || {
        Spi::connect(|client| {
            let rows = client.select(LOOKUP_MANY, None, &[wanted.into(), model_name.into()])?;
            let mut out = Vec::new();
            for r in rows {
                if let (Some(k), Some(a)) = (r.get::<Vec<u8>>(1)?, r.get::<Vec<u8>>(2)?) {
                    out.push((k, a));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_default();
    let mut found: Vec<(AnswerKey, (Kept, Usage))> =
        rows.into_iter().filter_map(|(k, a)| Some((k.try_into().ok()?, answers::decode(&a)?))).collect();
    for key in keys {
        if found.iter().any(|(k, _)| k == key) {
            continue;
        }
        let Some(file) = read_file(&file_of(&c.dir, key)) else { continue };
        if file.model == model_name && file.expires > now_us() {
            if let Some(answer) = answers::decode(&file.answer) {
                found.push((*key, answer));
            }
        }
    }
    found
}

/// Keeps an answer that arrived: into the inbox. Runs inside the runtime (see `Context`).
pub fn store(model_name: &str, key: &AnswerKey, kept: &Kept, usage: &Usage) {
    let Some(c) = CONTEXT.with(|c| c.borrow().clone()) else { return };
    if !c.writable {
        return;
    }
    let created = now_us();
    let answer = answers::encode(kept, usage);
    let mut file = Vec::with_capacity(answer.len() + 80 + model_name.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&(model_name.len().min(u16::MAX as usize) as u16).to_le_bytes());
    file.extend_from_slice(&model_name.as_bytes()[..model_name.len().min(u16::MAX as usize)]);
    file.extend_from_slice(&created.to_le_bytes());
    file.extend_from_slice(&created.saturating_add(c.ttl_us).to_le_bytes());
    file.extend_from_slice(&(answer.len() as u64).to_le_bytes());
    file.extend_from_slice(&answers::digest(&answer));
    file.extend_from_slice(&answer);
    WROTE.with(|w| w.set(true));
    if let Err(e) = write_file(&file_of(&c.dir, key), &file) {
        // The answer is still given; only a later call will pay for it again.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("pg_bailian: could not keep an answer in the answer cache inbox: {e}");
        }
    }
}

/// Where the inbox keeps the answer of `key`: in one of 256 directories by the key's first
/// byte, so that no directory grows large (a file system looks a name up in a directory by
/// reading its blocks: a directory of every answer would make each write slower).
fn file_of(dir: &Path, key: &AnswerKey) -> PathBuf {
    let name = answers::hex(key);
    dir.join(&name[..2]).join(name)
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let Some(dir) = path.parent() else { return Err(std::io::ErrorKind::InvalidInput.into()) };
    std::fs::create_dir_all(dir)?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("tmp.{}.{n}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// An inbox file as written.
struct InboxFile {
    model: String,
    created: i64,
    expires: i64,
    answer: Vec<u8>,
}

/// The model, times and length of an inbox file, read from its header alone.
fn read_header(f: &mut impl Read) -> Option<(String, i64, i64, u64)> {
    let mut head = [0u8; 10];
    f.read_exact(&mut head).ok()?;
    if &head[..8] != MAGIC {
        return None;
    }
    let mut name = vec![0u8; u16::from_le_bytes([head[8], head[9]]) as usize];
    f.read_exact(&mut name).ok()?;
    let mut numbers = [0u8; 24];
    f.read_exact(&mut numbers).ok()?;
    let n = |i: usize| numbers[8 * i..8 * i + 8].try_into().ok();
    Some((
        String::from_utf8(name).ok()?,
        i64::from_le_bytes(n(0)?),
        i64::from_le_bytes(n(1)?),
        u64::from_le_bytes(n(2)?),
    ))
}

/// A whole inbox file, checked against its SHA-256; None for one damaged, cut short or gone.
fn read_file(path: &Path) -> Option<InboxFile> {
    let mut f = std::fs::File::open(path).ok()?;
    let (model, created, expires, len) = read_header(&mut f)?;
    let mut sum = [0u8; 32];
    f.read_exact(&mut sum).ok()?;
    let mut answer = Vec::new();
    f.take(len.saturating_add(1)).read_to_end(&mut answer).ok()?;
    (answer.len() as u64 == len && answers::digest(&answer) == sum).then_some(InboxFile {
        model,
        created,
        expires,
        answer,
    })
}

/// Inbox files by key (temporary files being written are not theirs yet).
fn inbox_files(dir: &Path) -> Vec<(AnswerKey, PathBuf)> {
    let Ok(shards) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files = Vec::new();
    for shard in shards.filter_map(Result::ok) {
        let Ok(entries) = std::fs::read_dir(shard.path()) else { continue };
        files.extend(
            entries
                .filter_map(Result::ok)
                .filter_map(|e| Some((answers::from_hex(e.file_name().to_str()?)?, e.path()))),
        );
    }
    files
}

/// Only one backend of a database moves the inbox at a time; a role without privileges on
/// the cache table cannot take this lock (as it could an advisory lock) to stop it.
const LOCK: &str = "LOCK TABLE bailian.answer_cache IN SHARE UPDATE EXCLUSIVE MODE NOWAIT";

/// A file's answer, for a model still deployed (`move_files` drops the others with their file).
/// The deployed models are read apart, through the catalog: on a Citus cluster bailian.models
/// is a reference table, which no statement writing this node's own table may read.
const INSERT: &str = "
INSERT INTO bailian.answer_cache (key, model_name, answer, created_at, expires_at)
VALUES ($1, $2, $3, pg_catalog.to_timestamp($4 OPERATOR(pg_catalog./) 1e6::pg_catalog.float8),
        pg_catalog.to_timestamp($5 OPERATOR(pg_catalog./) 1e6::pg_catalog.float8))
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

/// Moves up to `limit` inbox files into the table (see the module doc); now and then removes
/// the expired entries and, past the size bound, the oldest. Whatever fails here is the
/// cache's business, not the caller's: the subtransaction is rolled back and the files stay.
fn ingest(c: &Context, limit: usize) {
    // SAFETY: a plain read of the current subtransaction's id.
    let parent = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let sub = crate::spi::SubTransaction::begin();
    let work = std::panic::AssertUnwindSafe(|| crate::catalog::as_role(c.owner, || move_files(c, limit)));
    // Everything but a cancel or a shutdown (57), resources (53) or an internal error (XX).
    let caught = |code: &str| !matches!(code.get(..2), Some("57" | "53" | "XX"));
    match crate::spi::try_in_catching(sub, caught, work) {
        (Ok(Ok(moved)), Some(sub)) => {
            sub.release();
            remove_at_commit(parent, moved);
        }
        (Ok(Err(e)), Some(sub)) => {
            sub.rollback();
            pgrx::debug1!("pg_bailian: the answer inbox was not moved into the cache this time: {e}");
        }
        (result, _) => {
            if let Err(crate::spi::Caught::Statement(e)) = result {
                pgrx::debug1!("pg_bailian: the answer inbox was not moved into the cache this time: {e}");
            }
        }
    }
}

/// The SQL of `ingest`, in its subtransaction: the files it moved (or dropped as damaged).
fn move_files(c: &Context, limit: usize) -> Result<Vec<PathBuf>, pgrx::spi::Error> {
    let max_bytes = crate::guc::cache_max_bytes();
    let Ok(deployed) = crate::catalog::model_names() else { return Ok(Vec::new()) };
    let deployed: std::collections::HashSet<String> = deployed.into_iter().collect();
    Spi::connect_mut(|client| {
        client.update(LOCK, None, &[])?;
        let mut moved = Vec::new();
        for (key, path) in inbox_files(&c.dir).into_iter().take(limit) {
            // A damaged file can never be read, and an undeployed model's answer never given:
            // they go too.
            if let Some(f) = read_file(&path).filter(|f| deployed.contains(&f.model)) {
                client.update(
                    INSERT,
                    None,
                    &[
                        key.to_vec().into(),
                        f.model.into(),
                        f.answer.into(),
                        f.created.into(),
                        f.expires.into(),
                    ],
                )?;
            }
            moved.push(path);
        }
        let due = EVICTED.with(|e| e.get().is_none_or(|at| at.elapsed() >= EVICT_EVERY));
        if due || limit == usize::MAX {
            client.update(EXPIRE, None, &[])?;
            client.update(EVICT, None, &[(max_bytes.min(i64::MAX as u64) as i64).into()])?;
            EVICTED.with(|e| e.set(Some(std::time::Instant::now())));
            forget_older_inboxes(&c.dir);
        }
        Ok(moved)
    })
}

/// The inboxes of this database's earlier cache tables (an extension dropped and created
/// again) are never read: removed.
fn forget_older_inboxes(dir: &Path) {
    let (Some(parent), Some(current)) = (dir.parent(), dir.file_name()) else { return };
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.filter_map(Result::ok) {
        if e.file_name() != current && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn remove_at_commit(owner: pg_sys::SubTransactionId, paths: Vec<PathBuf>) {
    MOVED.with(|m| m.borrow_mut().extend(paths.into_iter().map(|p| (owner, p))));
    if !CALLBACKS.with(|c| c.replace(true)) {
        // SAFETY: registers callbacks for the life of the backend, once.
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(at_sub_end), std::ptr::null_mut());
        }
    }
}

/// # Safety
/// Called by PostgreSQL at the end of every transaction, with its event; touches only this
/// backend's list of moved files.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            for (_, path) in MOVED.with(|m| std::mem::take(&mut *m.borrow_mut())) {
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

/// # Safety
/// Called by PostgreSQL at the end of every subtransaction: a move committed into its parent
/// becomes the parent's; a move rolled back with it is forgotten (its rows are gone, its files
/// must stay).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_sub_end(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => MOVED.with(|m| {
            for (owner, _) in m.borrow_mut().iter_mut().filter(|(o, _)| *o == sub) {
                *owner = parent;
            }
        }),
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            MOVED.with(|m| m.borrow_mut().retain(|(o, _)| *o != sub))
        }
        _ => {}
    }
}

/// Inbox entries not yet in the table, by model: (count, bytes), from their headers.
pub fn pending_by_model() -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut by_model = std::collections::BTreeMap::new();
    let Some((_, dir)) = place() else { return by_model };
    for (_, path) in inbox_files(&dir) {
        let header = std::fs::File::open(&path).ok().and_then(|mut f| read_header(&mut f));
        if let Some((name, _, _, len)) = header {
            let n: &mut (i64, i64) = by_model.entry(name).or_default();
            n.0 += 1;
            n.1 += len as i64;
        }
    }
    by_model
}

/// Removes the inbox files of `model_name`; returns how many.
pub fn clear_inbox(model_name: &str) -> i64 {
    let Some((_, dir)) = place() else { return 0 };
    let mut n = 0;
    for (_, path) in inbox_files(&dir) {
        let header = std::fs::File::open(&path).ok().and_then(|mut f| read_header(&mut f));
        if header.is_some_and(|(name, ..)| name == model_name) && std::fs::remove_file(&path).is_ok() {
            n += 1;
        }
    }
    n
}
