//! ai_embed.

use super::arg;
use super::generate::call_params;
use crate::backend::{self, Target};
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::registry::Task;
use bailian_core::request;
use bailian_core::AiError;
use pgrx::{pg_sys, IntoDatum};

sql_entry!(pg_finfo_pg_bailian_embed, pg_bailian_embed, embed);

fn embed(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(content)) = (arg::<String>(fcinfo, 0), arg::<String>(fcinfo, 1)) else {
        return Ok(None);
    };
    if content.is_empty() {
        return Ok(None);
    }
    let d = catalog::load_for(&model, "ai_embed", &[Task::Embedding])?;
    let dimension = d.dimension();
    let choosable = d.spec.dimensions.len() > 1;
    let body = request::embedding_body(d.spec.model_type, &[content.as_str()], dimension, choosable);
    let target = Target::new(&d, &call_params(&d, None)?)?;
    let mut vectors =
        backend::run(&target, |client, call| async move { client.embed(&call, &body, 1, dimension).await })?;
    Ok(vectors.pop().into_datum())
}
