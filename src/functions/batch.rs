//! ai_embed_batch and ai_gen_batch: arrays in, one row per element out, in input order.

use super::arg;
use super::calls::{Answer, OnError};
use super::generate::call_params;
use super::many;
use crate::catalog;
use crate::entry::sql_entry;
use crate::srf::materialize;
use bailian_core::registry::Task;
use bailian_core::AiError;
use pgrx::{pg_sys, IntoDatum, JsonB};

sql_entry!(pg_finfo_pg_bailian_embed_batch, pg_bailian_embed_batch, embed_batch);
sql_entry!(pg_finfo_pg_bailian_gen_batch, pg_bailian_gen_batch, gen_batch);

fn ord(i: usize) -> Option<pg_sys::Datum> {
    ((i + 1) as i32).into_datum()
}

/// A failure (after retries) fails the call, there being no error column to put it in;
/// under pg_bailian.on_error = 'null' that element's embedding is NULL, with a WARNING.
fn embed_batch(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(contents)) = (arg::<String>(fcinfo, 0), arg::<Vec<Option<String>>>(fcinfo, 1))
    else {
        return materialize(fcinfo, []).map(|_| None);
    };
    let d = catalog::load_for(&model, "ai_embed_batch", &[Task::Embedding])?;
    let texts: Vec<Option<&str>> = contents.iter().map(Option::as_deref).collect();
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    let on_error = OnError::session();
    // Raised once every request is done: nothing is reported from inside the wait.
    let mut warnings = Vec::new();
    many::embed_texts(&d, &texts, |i, result| {
        match on_error.settle(result.map(Answer::Vector))? {
            Answer::Vector(v) => vectors[i] = Some(v),
            Answer::Warned(e) => warnings.push(e),
            _ => {}
        }
        Ok(())
    })?;
    for e in warnings {
        crate::entry::warn(e);
    }
    materialize(fcinfo, vectors.into_iter().enumerate().map(|(i, v)| vec![ord(i), v.into_datum()]))?;
    Ok(None)
}

/// A prompt that fails keeps its row, with the error (SQLSTATE and message) beside it.
fn gen_batch(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(prompts)) = (arg::<String>(fcinfo, 0), arg::<Vec<Option<String>>>(fcinfo, 1))
    else {
        return materialize(fcinfo, []).map(|_| None);
    };
    let d = catalog::load_for(&model, "ai_gen_batch", &[Task::Chat])?;
    let merged = call_params(&d, arg::<JsonB>(fcinfo, 2))?;
    let mut out: Vec<(Option<String>, Option<String>)> = vec![(None, None); prompts.len()];
    many::generate(&d, &merged, &prompts, |i, result| {
        out[i] = match result {
            Ok(text) => (Some(text), None),
            Err(AiError::Interrupted) => return Err(AiError::Interrupted),
            Err(e) => (None, Some(format!("{}: {e}", e.sqlstate()))),
        };
        Ok(())
    })?;
    materialize(
        fcinfo,
        out.into_iter()
            .enumerate()
            .map(|(i, (text, error))| vec![ord(i), text.into_datum(), error.into_datum()]),
    )?;
    Ok(None)
}
