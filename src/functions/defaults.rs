//! The model-less forms of the AI functions (Hologres' `ai_embed(content)`,
//! `ai_classify(content, labels)`, ...), `ai_set_default_model`, and the rows of the
//! `ai_default_models` view.
//!
//! A model-less call is the form with a model_name, given the function's default model
//! (`catalog::default_model`) as its first argument (`calls::Kernel::ModelLess`): the same
//! checks, the same request, the same answer, and the AI Batch node batches it like any call.

use super::arg;
use super::calls::{self, Kernel, ModelLess};
use super::tasks::check_spec;
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::registry::Task;
use bailian_core::tasks::TaskFn;
use bailian_core::{limits, AiError};
use pgrx::pg_sys;

macro_rules! model_less {
    ($($finfo:ident, $name:ident, $body:ident, $form:expr;)*) => {
        $(
            sql_entry!($finfo, $name, $body);
            fn $body(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
                calls::call_now(Kernel::ModelLess($form), fcinfo)
            }
        )*
    };
}

model_less! {
    pg_finfo_pg_bailian_embed_default, pg_bailian_embed_default, embed_default, ModelLess::Embed;
    pg_finfo_pg_bailian_translate_default, pg_bailian_translate_default, translate_default, ModelLess::Translate;
    pg_finfo_pg_bailian_classify_default, pg_bailian_classify_default, classify_default, ModelLess::Task(TaskFn::Classify);
    pg_finfo_pg_bailian_extract_default, pg_bailian_extract_default, extract_default, ModelLess::Task(TaskFn::Extract);
    pg_finfo_pg_bailian_mask_default, pg_bailian_mask_default, mask_default, ModelLess::Task(TaskFn::Mask);
    pg_finfo_pg_bailian_summarize_default, pg_bailian_summarize_default, summarize_default, ModelLess::Task(TaskFn::Summarize);
    pg_finfo_pg_bailian_fix_grammar_default, pg_bailian_fix_grammar_default, fix_grammar_default, ModelLess::Task(TaskFn::FixGrammar);
    pg_finfo_pg_bailian_sentiment_default, pg_bailian_sentiment_default, sentiment_default, ModelLess::Task(TaskFn::Sentiment);
    pg_finfo_pg_bailian_rank_default, pg_bailian_rank_default, rank_default, ModelLess::Task(TaskFn::Rank);
    pg_finfo_pg_bailian_similarity_default, pg_bailian_similarity_default, similarity_default, ModelLess::Similarity;
}

sql_entry!(pg_finfo_pg_bailian_set_default_model, pg_bailian_set_default_model, set_default_model);

/// ai_set_default_model(function_name, model_name): NULL model_name unsets.
fn set_default_model(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(function_name) = arg::<String>(fcinfo, 0) else {
        return Err(AiError::NullArgument { message: "function_name must not be NULL".into() });
    };
    let Some(&(function, _, tasks)) = catalog::model_less(function_name.trim()) else {
        let names: Vec<&str> = catalog::MODEL_LESS.iter().map(|(f, _, _)| *f).collect();
        return Err(AiError::invalid(format!(
            "\"{}\" has no model-less form; allowed: {}",
            limits::shown(&function_name),
            names.join(", ")
        )));
    };
    let model = arg::<String>(fcinfo, 1);
    catalog::set_default_model(function, model.as_deref(), |spec| {
        let name = model.as_deref().unwrap_or_default();
        if !tasks.contains(&spec.task) {
            return Err(AiError::WrongTask {
                model: name.to_string(),
                model_type: spec.model_type.to_string(),
                task: spec.task.to_string(),
                function: function.to_string(),
                allowed: format!(
                    "{function} needs a model whose task is {}; SELECT model_name, task FROM ai_models shows each model's task.",
                    tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" or ")
                ),
            });
        }
        // The task functions answer through structured output (ai_rank also on a rerank model).
        if TaskFn::from_sql_name(function).is_some() && spec.task == Task::Chat {
            check_spec(spec, name, function)?;
        }
        Ok(())
    })?;
    Ok(Some(pgrx::fcinfo::pg_return_void()))
}

/// One row of the `ai_default_models` view.
pub(crate) type ChoiceRow = (
    String,
    Vec<String>,
    Option<String>,
    Option<String>,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<String>,
    String,
);

/// The rows of the `ai_default_models` view: one per model-less function, computed by the
/// code the calls resolve their model with.
pub(crate) fn choice_rows() -> Vec<ChoiceRow> {
    let choices = catalog::choices(None).unwrap_or_else(|e| pgrx::error!("{e}"));
    choices
        .into_iter()
        .map(|c| {
            let (effective, source) = match c.effective {
                Ok((model, why)) => (Some(model), why),
                Err(e) => (None, e.to_string()),
            };
            let (model, by, at) = match c.set {
                Some((m, by, at)) => (Some(m), Some(by), Some(at)),
                None => (None, None, None),
            };
            (
                c.function.to_string(),
                c.tasks.iter().map(|t| t.as_str().to_string()).collect(),
                model,
                by,
                at,
                effective,
                source,
            )
        })
        .collect()
}
