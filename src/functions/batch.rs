//! ai_embed_batch and ai_gen_batch: arrays in, one row per element out, in input order.

use super::arg;
use super::calls::{Answer, OnError, MAX_ARGUMENT_BYTES};
use super::generate::call_params;
use super::many;
use crate::catalog;
use crate::entry::sql_entry;
use crate::srf::materialize;
use bailian_core::registry::Task;
use bailian_core::{limits, AiError};
use pgrx::{pg_sys, IntoDatum, JsonB};

sql_entry!(pg_finfo_pg_bailian_embed_batch, pg_bailian_embed_batch, embed_batch);
sql_entry!(pg_finfo_pg_bailian_gen_batch, pg_bailian_gen_batch, gen_batch);

fn ord(i: usize) -> Option<pg_sys::Datum> {
    ((i + 1) as i32).into_datum()
}

/// Most elements one call takes: each costs its answer's memory until the call returns.
const MAX_ELEMENTS: usize = 100_000;

/// The array argument `n` of `function`, borrowed where PostgreSQL holds it, after the checks
/// that bound what the call builds from it: its size (as an AI call's argument) and its
/// number of elements.
fn elements<'a>(
    fcinfo: pg_sys::FunctionCallInfo,
    n: usize,
    function: &str,
) -> Result<Option<pgrx::Array<'a, &'a str>>, AiError> {
    let Some(datum) = arg::<pg_sys::Datum>(fcinfo, n) else { return Ok(None) };
    // SAFETY: argument n is a text[] (a varlena); only its header is read.
    let bytes = unsafe { pg_sys::toast_raw_datum_size(datum) };
    limits::check(&format!("argument {} of {function}", n + 1), bytes as u128, MAX_ARGUMENT_BYTES)?;
    let Some(array) = arg::<pgrx::Array<'a, &'a str>>(fcinfo, n) else { return Ok(None) };
    if array.len() > MAX_ELEMENTS {
        return Err(AiError::invalid_with_hint(
            format!("{function} takes at most {MAX_ELEMENTS} elements; {} were given", array.len()),
            "Split the array, or fill a column with CALL ai_update, which works through any number of rows.",
        ));
    }
    Ok(Some(array))
}

/// Adds an answer's bytes to what the call holds; past half of `pg_bailian.max_batch_memory`
/// the call stops with 54000.
fn hold(held: &mut u64, bytes: usize, function: &str) -> Result<(), AiError> {
    *held += bytes as u64;
    let budget = crate::guc::answers_budget();
    if *held > budget {
        return Err(AiError::LimitExceeded {
            what: format!(
                "the answers of {function} (half of pg_bailian.max_batch_memory; split the array, or use CALL ai_update)"
            ),
            needed: *held,
            limit_bytes: budget,
        });
    }
    Ok(())
}

/// A failure (after retries) fails the call, there being no error column to put it in;
/// under pg_bailian.on_error = 'null' that element's embedding is NULL, with a WARNING.
fn embed_batch(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(array)) = (arg::<String>(fcinfo, 0), elements(fcinfo, 1, "ai_embed_batch")?)
    else {
        return materialize(fcinfo, []).map(|_| None);
    };
    let mut texts = limits::vec_with_capacity("ai_embed_batch's inputs", array.len())?;
    texts.extend(array.iter());
    let d = catalog::load_for(&model, "ai_embed_batch", &[Task::Embedding])?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    let on_error = OnError::session();
    // Raised once every request is done: nothing is reported from inside the wait.
    let mut warnings = Vec::new();
    let mut held = 0;
    crate::backend::as_function("ai_embed_batch", || {
        many::embed_texts(&d, &texts, |i, result| {
            match on_error.settle(result.map(Answer::Vector))? {
                Answer::Vector(v) => {
                    hold(&mut held, 4 * v.len(), "ai_embed_batch")?;
                    vectors[i] = Some(v);
                }
                Answer::Warned(e) => warnings.push(e),
                _ => {}
            }
            Ok(())
        })
    })?;
    for e in warnings {
        crate::entry::warn(e);
    }
    materialize(fcinfo, vectors.into_iter().enumerate().map(|(i, v)| vec![ord(i), v.into_datum()]))?;
    Ok(None)
}

/// A prompt that fails keeps its row, with the error (SQLSTATE and message) beside it.
fn gen_batch(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(array)) = (arg::<String>(fcinfo, 0), elements(fcinfo, 1, "ai_gen_batch")?) else {
        return materialize(fcinfo, []).map(|_| None);
    };
    let mut prompts = limits::vec_with_capacity("ai_gen_batch's prompts", array.len())?;
    prompts.extend(array.iter());
    let d = catalog::load_for(&model, "ai_gen_batch", &[Task::Chat])?;
    let merged = call_params(&d, arg::<JsonB>(fcinfo, 2))?;
    let mut out: Vec<(Option<String>, Option<String>)> = vec![(None, None); prompts.len()];
    let mut held = 0;
    crate::backend::as_function("ai_gen_batch", || {
        many::generate(&d, &merged, &prompts, |i, result| {
            out[i] = match result {
                Ok(text) => {
                    hold(&mut held, text.len(), "ai_gen_batch")?;
                    (Some(text), None)
                }
                Err(AiError::Interrupted) => return Err(AiError::Interrupted),
                Err(e) => (None, Some(format!("{}: {e}", e.sqlstate()))),
            };
            Ok(())
        })
    })?;
    materialize(
        fcinfo,
        out.into_iter()
            .enumerate()
            .map(|(i, (text, error))| vec![ord(i), text.into_datum(), error.into_datum()]),
    )?;
    Ok(None)
}
