//! ai_embed.

use super::arg;
use crate::backend::{self, Target};
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::registry::Task;
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
    let model = d.embedding_model();
    let body = model.body(&[content.as_str()]);
    let target = Target::new(&d, &d.params)?;
    let mut vectors =
        backend::run(
            &target,
            |client, call| async move { client.embed(&call, &body, 1, model.dimension).await },
        )?;
    Ok(vectors.pop().into_datum())
}
