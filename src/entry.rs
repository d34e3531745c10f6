//! SQL entry points that can raise pg_bailian's own SQLSTATEs.
//!
//! pgrx's `#[pg_extern]` can only report the SQLSTATEs its enum knows, so the functions that
//! raise `ZBxxx` codes are plain V1 fmgr functions declared in `sql/functions.sql`. Each runs
//! its body inside pgrx's guard (panics and PostgreSQL errors from the body are reported as
//! usual) and, if the body returns an `AiError`, raises it here from a frame that owns
//! nothing, which is what makes the longjmp out of Rust sound.

use bailian_core::AiError;
use pgrx::pg_sys;
use std::ffi::{c_char, c_int, CString};

/// Declares `pg_finfo_$name` and `$name` for a body `fn(FunctionCallInfo) -> Result<Option<Datum>, AiError>`.
/// (A body whose arguments may hold an API key marks itself with
/// `log_filter::SecretStatement`, which keeps the statement out of the server log.)
macro_rules! sql_entry {
    ($finfo:ident, $name:ident, $body:path) => {
        #[no_mangle]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
            const V1: ::pgrx::pg_sys::Pg_finfo_record = ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        #[no_mangle]
        #[doc(hidden)]
        pub unsafe extern "C-unwind" fn $name(
            fcinfo: ::pgrx::pg_sys::FunctionCallInfo,
        ) -> ::pgrx::pg_sys::Datum {
            // SAFETY: called by PostgreSQL's fmgr with a valid fcinfo, on the backend thread.
            const WHERE: $crate::entry::Location = $crate::entry::Location {
                function: concat!(stringify!($name), "\0"),
                file: concat!(file!(), "\0"),
                line: line!(),
            };
            unsafe { $crate::entry::run(fcinfo, $body, &WHERE) }
        }
    };
}
pub(crate) use sql_entry;

pub type Body = fn(pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError>;

/// Where an error is reported from, for `\set VERBOSITY verbose` (NUL-terminated strings).
pub struct Location {
    pub function: &'static str,
    pub file: &'static str,
    pub line: u32,
}

/// An error on its way out, as plain text only.
struct Report {
    code: c_int,
    message: CString,
    detail: Option<CString>,
    hint: Option<CString>,
}

/// Most bytes of a message, detail or hint: whatever a message quotes, an error stays small in
/// the client, the log and a WARNING (the pieces quoting a caller's value cut it shorter).
const MAX_REPORT_BYTES: usize = 8 * 1024;

fn cstring(mut s: String) -> CString {
    if s.len() > MAX_REPORT_BYTES {
        let mut end = MAX_REPORT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

impl From<AiError> for Report {
    fn from(e: AiError) -> Report {
        Report {
            code: make_sqlstate(&e.sqlstate()),
            message: cstring(e.to_string()),
            detail: e.detail().map(cstring),
            hint: e.hint().map(cstring),
        }
    }
}

/// PostgreSQL's MAKE_SQLSTATE: six bits per character.
fn make_sqlstate(code: &str) -> c_int {
    code.bytes()
        .take(5)
        .enumerate()
        .fold(0, |acc, (i, b)| acc | ((c_int::from(b.wrapping_sub(b'0')) & 0x3F) << (6 * i)))
}

/// MAKE_SQLSTATE undone: the five characters of a pgrx error code.
pub fn sqlstate_text(code: pgrx::PgSqlErrorCode) -> String {
    let n = code as i32;
    (0..5).map(|i| char::from(b'0'.wrapping_add(((n >> (6 * i)) & 0x3F) as u8))).collect()
}

/// # Safety
/// `fcinfo` must be the valid call info PostgreSQL passed to the entry point.
pub unsafe fn run(fcinfo: pg_sys::FunctionCallInfo, body: Body, at: &'static Location) -> pg_sys::Datum {
    // SAFETY: called from the entry point's own frame, which owns nothing.
    match unsafe { guard(at, || body(fcinfo)) } {
        Some(datum) => datum,
        None => {
            // SAFETY: fcinfo is valid for the duration of the call.
            unsafe { (*fcinfo).isnull = true };
            pg_sys::Datum::from(0)
        }
    }
}

/// Runs `body` inside pgrx's guard (panics and PostgreSQL errors raised in it are reported
/// as usual) and raises the `AiError` it returns with its SQLSTATE. A cancel or termination
/// (`AiError::Interrupted`) is raised as PostgreSQL's own error.
///
/// # Safety
/// Must be called from the outermost Rust frame of a callback PostgreSQL made (an fmgr entry
/// point, an executor node's method): raising longjmps over that frame.
pub unsafe fn guard<T>(at: &'static Location, body: impl FnOnce() -> Result<T, AiError>) -> T {
    let outcome: Result<T, Report> = unsafe {
        pgrx::pgrx_extern_c_guard(|| match body() {
            Ok(v) => Ok(v),
            Err(AiError::Interrupted) => {
                // PostgreSQL raises its own error for the pending cancel or termination
                // (statement timeout, pg_cancel_backend, pg_terminate_backend).
                pgrx::check_for_interrupts!();
                Err(Report::from(AiError::Interrupted))
            }
            Err(e) => Err(Report::from(e)),
        })
    };
    match outcome {
        Ok(v) => v,
        Err(report) => unsafe { raise(report, at) },
    }
}

const WARN_AT: Location = Location { function: "warn\0", file: concat!(file!(), "\0"), line: line!() };

/// Raises `e` as a WARNING with its own SQLSTATE, detail and hint, saying the value became
/// NULL (pg_bailian.on_error = 'null'), and returns.
pub fn warn(e: AiError) {
    // An inference error's own hint is advice to set what is already set.
    let hint = match e.hint().filter(|_| !matches!(e, AiError::Inference { .. })) {
        Some(h) => format!("The value is NULL because pg_bailian.on_error is 'null'. {h}"),
        None => "The value is NULL because pg_bailian.on_error is 'null'.".into(),
    };
    let report = Report { hint: Some(cstring(hint)), ..Report::from(e) };
    // SAFETY: at WARNING level errfinish emits the report and returns; it ends with
    // CHECK_FOR_INTERRUPTS, which would longjmp over the Rust frames above for a pending
    // cancel, so interrupts are held (HOLD_INTERRUPTS) around it and serviced at the next
    // check, where the caller's own waits and pgrx's guards expect them.
    unsafe {
        pg_sys::InterruptHoldoffCount += 1;
        report_at(pg_sys::WARNING as c_int, report, &WARN_AT);
        pg_sys::InterruptHoldoffCount -= 1;
    }
}

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errdetail(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// Raises `report` as an ERROR.
///
/// # Safety
/// Must be called from the outermost Rust frame of an fmgr entry point: `errfinish` longjmps
/// over it, so nothing with a destructor may be alive above this call.
unsafe fn raise(report: Report, at: &'static Location) -> ! {
    // SAFETY: as this function's contract says.
    unsafe { report_at(pg_sys::PGERROR as c_int, report, at) };
    unreachable!("errfinish returned for an ERROR")
}

/// Reports `report` at `elevel` (the Rust strings are freed before errfinish, which longjmps
/// for ERROR).
///
/// # Safety
/// For ERROR, as for `raise`: nothing with a destructor may be alive above the caller's frame.
unsafe fn report_at(elevel: c_int, report: Report, at: &Location) {
    let percent_s = c"%s".as_ptr();
    // SAFETY: the err* calls follow ereport's protocol; errmsg and friends copy their
    // arguments into the error context, so the Rust strings can be freed before errfinish.
    unsafe {
        if errstart(elevel, std::ptr::null()) {
            errcode(report.code);
            errmsg(percent_s, report.message.as_ptr());
            if let Some(d) = &report.detail {
                errdetail(percent_s, d.as_ptr());
            }
            if let Some(h) = &report.hint {
                errhint(percent_s, h.as_ptr());
            }
            drop(report);
            errfinish(at.file.as_ptr().cast(), at.line as c_int, at.function.as_ptr().cast());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlstate_encoding_matches_postgres() {
        // ERRCODE_QUERY_CANCELED = MAKE_SQLSTATE('5','7','0','1','4')
        assert_eq!(super::make_sqlstate("57014"), pgrx::PgSqlErrorCode::ERRCODE_QUERY_CANCELED as i32);
        assert_eq!(
            super::make_sqlstate("22023"),
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32
        );
        for code in ["22001", "57014", "P0001", "55P03", "XX000"] {
            let packed = super::make_sqlstate(code);
            let back = pgrx::PgSqlErrorCode::from(packed);
            assert_eq!(super::sqlstate_text(back), code);
        }
    }
}
