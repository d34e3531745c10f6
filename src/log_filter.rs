//! Keeping API keys out of the server log and `pg_stat_activity`.
//!
//! `SELECT ai_deploy_model(..., 'sk-...')` quotes a key, and PostgreSQL writes the statement of
//! a failed query to the log (`STATEMENT:`), its context (`CONTEXT: SQL statement "..."`) and,
//! with `log_statement` or `log_min_duration_statement`, the statement itself. Hiding the
//! statement in our own ereport calls (`errhidestmt`) would not do: an error PostgreSQL raises
//! while the function runs (a read-only transaction, a lock or statement timeout, a cancel)
//! does not go through our code. So one mechanism covers every message:
//!
//! - an `emit_log_hook` sees every message on its way to the server log. While
//!   `ai_deploy_model` (or `register_external_model`, whose config quotes the key) runs, and for the error that ends it (its own or PostgreSQL's), the
//!   message keeps neither the statement nor its context. The flag is cleared when the
//!   function returns successfully, or by the (sub)transaction abort that follows an error:
//!   PostgreSQL reports an error before it aborts, so the hook still sees the flag for that
//!   error, and an error caught by a plpgsql EXCEPTION block (never reported) does not leave
//!   it set.
//! - the same hook replaces anything shaped like a Bailian key (`sk-` and 8 or more key
//!   characters) in message, detail, hint, context and internal query with its hint, in place
//!   and on bytes (the hint is never longer than the token: nothing is allocated while an
//!   error is being reported, and any server encoding works), and hides the statement when
//!   it holds such a token.
//! - `pg_stat_activity.query` is rewritten with the keys replaced while the function runs, so
//!   the text left there after the statement (an idle session shows its last query) holds
//!   none.
//!
//! Out of reach: what PostgreSQL logs or reports before this library is loaded in a backend
//! (the first statement of a session, unless `pg_bailian` is in `shared_preload_libraries` or
//! `session_preload_libraries`), and keys that are not shaped like Bailian keys outside
//! `ai_deploy_model`. `env:` and `file:` keys avoid the question entirely.

use bailian_core::secret::{has_key_token, scrub_keys, scrub_keys_in_place};
use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

/// True while `ai_deploy_model` or `register_external_model` runs or its error is on the way out.
static SECRET_STATEMENT: AtomicBool = AtomicBool::new(false);

static mut PREVIOUS_HOOK: pg_sys::emit_log_hook_type = None;

/// Installs the hook and the callbacks that clear the flag; once, from `_PG_init`.
pub fn install() {
    // SAFETY: _PG_init runs once per process on the backend's only thread, before any query
    // of ours; chaining the previous hook is the documented protocol for emit_log_hook.
    unsafe {
        PREVIOUS_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit_log_hook);
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

/// Marks the running statement as quoting a secret until `succeeded`, or, when it fails,
/// until its error has been reported (the abort callbacks below clear the flag).
pub struct SecretStatement(());

impl SecretStatement {
    pub fn begin() -> SecretStatement {
        SECRET_STATEMENT.store(true, Ordering::Relaxed);
        redact_activity();
        SecretStatement(())
    }

    pub fn succeeded(self) {
        SECRET_STATEMENT.store(false, Ordering::Relaxed);
    }
}

unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT || event == pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT {
        SECRET_STATEMENT.store(false, Ordering::Relaxed);
    }
}

unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        SECRET_STATEMENT.store(false, Ordering::Relaxed);
    }
}

unsafe extern "C-unwind" fn emit_log_hook(edata: *mut pg_sys::ErrorData) {
    // Nothing may unwind out of a hook PostgreSQL calls while reporting an error.
    // SAFETY: edata is the ErrorData being reported, valid for this call.
    let _ = std::panic::catch_unwind(|| unsafe { filter(edata) });
    // SAFETY: PREVIOUS_HOOK was set once in install(); chaining it is the hook protocol.
    if let Some(previous) = unsafe { PREVIOUS_HOOK } {
        // SAFETY: the previous hook expects the same ErrorData.
        unsafe { previous(edata) };
    }
}

/// # Safety
/// `edata` must point to the ErrorData being reported.
unsafe fn filter(edata: *mut pg_sys::ErrorData) {
    // SAFETY: per the function's contract.
    let e = unsafe { &mut *edata };
    if SECRET_STATEMENT.load(Ordering::Relaxed) {
        e.hide_stmt = true;
        e.hide_ctx = true;
    } else if !e.hide_stmt && statement_quotes_a_key() {
        e.hide_stmt = true;
    }
    for field in [e.message, e.detail, e.detail_log, e.hint, e.context, e.internalquery] {
        // SAFETY: each is NULL or a NUL-terminated string palloc'd for this report.
        unsafe { redact_in_place(field) };
    }
}

fn statement_quotes_a_key() -> bool {
    // SAFETY: debug_query_string is NULL or the NUL-terminated text of the current query.
    let query = unsafe { pg_sys::debug_query_string };
    if query.is_null() {
        return false;
    }
    // SAFETY: as above.
    has_key_token(unsafe { CStr::from_ptr(query) }.to_bytes())
}

/// Overwrites key-shaped tokens of the C string at `s` with their hints.
///
/// # Safety
/// `s` must be NULL or a writable NUL-terminated string.
unsafe fn redact_in_place(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    // SAFETY: per the function's contract: the string and its terminator are ours to write.
    let bytes = unsafe {
        let len = CStr::from_ptr(s).to_bytes().len();
        std::slice::from_raw_parts_mut(s.cast::<u8>(), len)
    };
    let len = scrub_keys_in_place(bytes);
    if len < bytes.len() {
        bytes[len] = 0;
    }
}

/// Rewrites this backend's `pg_stat_activity.query` without key-shaped tokens.
fn redact_activity() {
    // SAFETY: debug_query_string is NULL or the current query's text.
    let query = unsafe { pg_sys::debug_query_string };
    if query.is_null() {
        return;
    }
    // SAFETY: as above.
    let text = unsafe { CStr::from_ptr(query) }.to_string_lossy().into_owned();
    let redacted = scrub_keys(&text);
    if redacted == text {
        return;
    }
    let Ok(redacted) = CString::new(redacted) else { return };
    // SAFETY: pgstat_report_activity copies the string into this backend's status entry; the
    // query id it resets is put back, so monitoring still sees the running query's id.
    unsafe {
        let query_id = pg_sys::pgstat_get_my_query_id();
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, redacted.as_ptr());
        pg_sys::pgstat_report_query_id(query_id, true);
    }
}
