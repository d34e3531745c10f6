//! The SQL functions. Each body decodes its arguments, calls the catalog and bailian-core,
//! and returns a Datum; `entry::sql_entry!` makes it an fmgr function.

mod batch;
mod cache;
pub(crate) mod calls;
mod citus;
pub(crate) mod column;
mod defaults;
mod deploy;
pub(crate) mod embed;
pub(crate) mod generate;
mod many;
mod operating;
mod supported;
pub(crate) mod tasks;
mod text;
pub(crate) mod tokens;

use pgrx::datum::FromDatum;
use pgrx::pg_sys;

/// Argument `n`, or None for SQL NULL.
pub(crate) fn arg<T: FromDatum>(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<T> {
    // SAFETY: fcinfo is the live call info of the running function, and each body reads only
    // the arguments its CREATE FUNCTION declares, with their declared types.
    unsafe { pgrx::fcinfo::pg_getarg::<T>(fcinfo, n) }
}

/// A `name` argument (a NameData, not a text), or None for NULL.
pub(crate) fn name_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<String> {
    let datum = arg::<pg_sys::Datum>(fcinfo, n)?;
    // SAFETY: the declared type of argument n is `name`: the datum points to a NameData, a
    // NUL-terminated array of NAMEDATALEN bytes.
    let name = unsafe { std::ffi::CStr::from_ptr(datum.cast_mut_ptr::<std::ffi::c_char>()) };
    Some(name.to_string_lossy().into_owned())
}
