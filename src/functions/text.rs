//! ai_chunk and ai_prompt: text functions that ask no model.

use super::arg;
use crate::entry::sql_entry;
use bailian_core::{chunk, template, AiError};
use pgrx::{pg_sys, IntoDatum};

sql_entry!(pg_finfo_pg_bailian_chunk, pg_bailian_chunk, chunk_fn);
sql_entry!(pg_finfo_pg_bailian_prompt, pg_bailian_prompt, prompt_fn);

/// Largest chunk_size: a piece larger than 1 MB of text is no chunk for an embedding model.
const MAX_CHUNK_SIZE: i32 = 1 << 20;

/// ai_chunk(content, chunk_size, overlap) (STRICT: no argument is NULL here).
fn chunk_fn(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(content), Some(size), Some(overlap)) =
        (arg::<String>(fcinfo, 0), arg::<i32>(fcinfo, 1), arg::<i32>(fcinfo, 2))
    else {
        return Ok(None);
    };
    if !(1..=MAX_CHUNK_SIZE).contains(&size) {
        return Err(AiError::invalid(format!(
            "chunk_size must be between 1 and {MAX_CHUNK_SIZE} characters, got {size}"
        )));
    }
    if overlap < 0 || overlap >= size {
        return Err(AiError::invalid(format!(
            "overlap must be at least 0 and less than chunk_size ({size}), got {overlap}"
        )));
    }
    // SAFETY: plain reads of sig_atomic_t flags, on the backend's thread; a pending cancel
    // ends the work with AiError::Interrupted, which raises PostgreSQL's own error.
    let interrupted = || unsafe { pg_sys::QueryCancelPending != 0 || pg_sys::ProcDiePending != 0 };
    Ok(chunk::chunks(&content, size as usize, overlap as usize, interrupted)?.into_datum())
}

/// ai_prompt(template, VARIADIC args): `{0}` is the first argument, `{{` a literal brace.
fn prompt_fn(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(template) = arg::<String>(fcinfo, 0) else { return Ok(None) };
    let args = arg::<Vec<Option<String>>>(fcinfo, 1).unwrap_or_default();
    let text = template::positional(&template, &args).map_err(|e| {
        AiError::invalid_with_hint(
            format!("ai_prompt: the template {e}"),
            "Placeholders are {0}, {1}, ... for the arguments after the template; write {{ and }} for literal braces.",
        )
    })?;
    Ok(text.into_datum())
}
