//! ai_chunk and ai_prompt: text functions that ask no model.

use super::arg;
use crate::backend;
use crate::entry::sql_entry;
use bailian_core::template::{self, TemplateError};
use bailian_core::{chunk, limits, AiError};
use pgrx::{pg_sys, IntoDatum};

sql_entry!(pg_finfo_pg_bailian_chunk, pg_bailian_chunk, chunk_fn);
sql_entry!(pg_finfo_pg_bailian_prompt, pg_bailian_prompt, prompt_fn);

/// Largest chunk_size: a piece larger than 1 MB of text is no chunk for an embedding model.
const MAX_CHUNK_SIZE: i32 = 1 << 20;

/// ai_chunk(content, chunk_size, overlap) (STRICT: no argument is NULL here).
fn chunk_fn(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    // Borrowed, not copied: the text is read where PostgreSQL holds it.
    let (Some(content), Some(size), Some(overlap)) =
        (arg::<&str>(fcinfo, 0), arg::<i32>(fcinfo, 1), arg::<i32>(fcinfo, 2))
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
    // A pending cancel ends the work with AiError::Interrupted, which raises PostgreSQL's own
    // error.
    Ok(chunk::chunks(content, size as usize, overlap as usize, backend::cancel_pending)?.into_datum())
}

/// ai_prompt(template, VARIADIC args): `{0}` is the first argument, `{{` a literal brace.
/// The result's size is known from the template and the arguments' sizes before it is built
/// (see `template::render`); the arguments are borrowed where PostgreSQL holds them.
fn prompt_fn(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(template) = arg::<&str>(fcinfo, 0) else { return Ok(None) };
    let array = arg::<pgrx::Array<&str>>(fcinfo, 1);
    let args: Vec<Option<&str>> = match &array {
        Some(a) => {
            let mut v = limits::vec_with_capacity("ai_prompt's arguments", a.len())?;
            v.extend(a.iter());
            v
        }
        None => Vec::new(),
    };
    let text = template::positional(template, &args, backend::cancel_pending).map_err(|e| match e {
        TemplateError::Mistake(e) => AiError::invalid_with_hint(
            format!("ai_prompt: the template {e}"),
            "Placeholders are {0}, {1}, ... for the arguments after the template; write {{ and }} for literal braces.",
        ),
        TemplateError::Stopped(e) => e,
    })?;
    Ok(text.into_datum())
}
