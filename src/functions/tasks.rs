//! ai_gen_structured, the task functions built on it (ai_classify, ai_extract, ai_mask,
//! ai_summarize, ai_fix_grammar, ai_sentiment, ai_rank), ai_similarity, and ai_set_prompt.
//! The prompts, schemas and answer reading are `bailian_core::tasks`; this is argument
//! decoding and the request.

use super::arg;
use super::calls::{self, get, Answer, Args, Finish, Kernel, OnError, Prepared};
use super::generate::{call_params, prompt_request};
use crate::backend::Target;
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::deploy::Deployment;
use bailian_core::params::{accepted_names, Phase};
use bailian_core::registry::{ModelSpec, Task, Thinking};
use bailian_core::structured::Format;
use bailian_core::tasks::{self as task, Ask, Input, TaskFn};
use bailian_core::{limits, AiError};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::{json, Value};
use std::sync::Arc;

sql_entry!(pg_finfo_pg_bailian_gen_structured, pg_bailian_gen_structured, gen_structured);
sql_entry!(pg_finfo_pg_bailian_classify, pg_bailian_classify, classify);
sql_entry!(pg_finfo_pg_bailian_extract, pg_bailian_extract, extract);
sql_entry!(pg_finfo_pg_bailian_mask, pg_bailian_mask, mask);
sql_entry!(pg_finfo_pg_bailian_summarize, pg_bailian_summarize, summarize);
sql_entry!(pg_finfo_pg_bailian_fix_grammar, pg_bailian_fix_grammar, fix_grammar);
sql_entry!(pg_finfo_pg_bailian_sentiment, pg_bailian_sentiment, sentiment);
sql_entry!(pg_finfo_pg_bailian_rank, pg_bailian_rank, rank);
sql_entry!(pg_finfo_pg_bailian_similarity, pg_bailian_similarity, similarity);
sql_entry!(pg_finfo_pg_bailian_set_prompt, pg_bailian_set_prompt, set_prompt);

fn gen_structured(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::GenStructured, fcinfo)
}
fn classify(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Task(TaskFn::Classify), fcinfo)
}
fn extract(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Task(TaskFn::Extract), fcinfo)
}
fn mask(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Task(TaskFn::Mask), fcinfo)
}
fn summarize(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Task(TaskFn::Summarize), fcinfo)
}
fn fix_grammar(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Task(TaskFn::FixGrammar), fcinfo)
}
fn sentiment(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Task(TaskFn::Sentiment), fcinfo)
}
fn rank(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Task(TaskFn::Rank), fcinfo)
}
fn similarity(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Similarity, fcinfo)
}

/// `spec` can answer in a requested format: a Bailian chat model that takes `response_format`
/// and can answer without thinking (Bailian's structured-output guide: not in thinking mode).
pub(crate) fn check_spec(spec: &ModelSpec, model: &str, function: &str) -> Result<(), AiError> {
    let takes_format = accepted_names(spec, Phase::Call).contains(&"response_format");
    if !takes_format || spec.thinking == Thinking::Always {
        let why = if takes_format { "always thinks" } else { "takes no response_format" };
        return Err(AiError::invalid_with_hint(
            format!(
                "{function} cannot use model \"{model}\": {} {why}, and {function} needs Bailian's structured output",
                spec.model_type
            ),
            "Deploy a Qwen chat model that supports structured output, e.g. qwen-plus, qwen-flash or qwen3-max.",
        ));
    }
    Ok(())
}

/// The request params for a structured call: `format` as response_format, and thinking off
/// where it can be switched (structured output is refused in thinking mode).
fn with_format(
    d: &Deployment,
    mut merged: serde_json::Map<String, Value>,
    format: &Format,
) -> serde_json::Map<String, Value> {
    merged.insert("response_format".into(), format.response_format.clone());
    if matches!(d.spec.thinking, Thinking::Switchable { .. }) {
        merged.insert("enable_thinking".into(), Value::Bool(false));
    }
    merged
}

/// ai_gen_structured(model_name, prompt, response_format, on_error, params).
pub(crate) fn prepare_gen_structured(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(prompt)) = (get::<String>(args, 0), get::<String>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let Some(response_format) = get::<JsonB>(args, 2) else {
        return Err(AiError::NullArgument {
            message: "response_format must not be NULL: pass a JSON Schema or {\"type\": \"json_object\"}"
                .into(),
        });
    };
    let on_error = match get::<String>(args, 3).map(|m| m.trim().to_ascii_lowercase()).as_deref() {
        None => None,
        Some("capture") => Some(OnError::Capture),
        Some("skip") => Some(OnError::Skip),
        Some("abort") => Some(OnError::Raise),
        Some(other) => {
            return Err(AiError::invalid(format!(
                "invalid on_error \"{}\"; allowed: 'capture' (the error as {{\"error\": {{...}}}}), 'skip' (NULL), 'abort' (raise), or NULL for pg_bailian.on_error",
                limits::shown(other)
            )))
        }
    };
    let d = catalog::load_for(&model, "ai_gen_structured", &[Task::Chat])?;
    check_spec(d.spec, &d.name, "ai_gen_structured")?;
    let format = Format::parse(&response_format.0)?;
    let given = get::<JsonB>(args, 4);
    if given.as_ref().and_then(|p| p.0.get("enable_thinking")) == Some(&Value::Bool(true)) {
        return Err(AiError::invalid_with_hint(
            "ai_gen_structured cannot think: Bailian's structured output works only with thinking off",
            "Drop enable_thinking from params: structured calls run with thinking off on the models where it can be switched.",
        ));
    }
    if given.as_ref().is_some_and(|p| p.0.get("response_format").is_some()) {
        return Err(AiError::invalid(
            "ai_gen_structured takes the format as its response_format argument, not in params",
        ));
    }
    // A deployed response_format (for ai_gen) gives way to the argument.
    let merged = call_params(&d, given)?;
    let merged = with_format(&d, merged, &format);
    let request = prompt_request(&d, &prompt, &merged)?;
    Ok(Prepared::Chat {
        target: Arc::new(Target::new(&d, &merged)?),
        request,
        finish: Finish::Structured { model, format: Arc::new(format), on_error },
    })
}

/// A task function's call: (model_name, content, ...) with the function's other arguments.
pub(crate) fn prepare_task(function: TaskFn, args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(content)) = (args.model_name(), get::<String>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let input = match function {
        TaskFn::Classify | TaskFn::Extract | TaskFn::Mask => {
            let Some(labels) = get::<Vec<Option<String>>>(args, 2) else {
                return Err(AiError::NullArgument {
                    message: format!("labels of {} must not be NULL", function.sql_name()),
                });
            };
            Input::Labeled { content, labels: task::check_labels(function, &labels)? }
        }
        TaskFn::Summarize => {
            let Some(max_words) = get::<i32>(args, 2) else {
                return Err(AiError::NullArgument {
                    message: "max_words of ai_summarize must not be NULL".into(),
                });
            };
            Input::Summarize { content, max_words: task::check_max_words(max_words)? }
        }
        TaskFn::FixGrammar | TaskFn::Sentiment => Input::Text { content },
        TaskFn::Rank => {
            let Some(document) = get::<String>(args, 2) else { return Ok(Prepared::Done(Answer::Null)) };
            Input::Rank { query: content, document }
        }
    };
    // Nothing to classify, extract or rewrite: NULL, as ai_embed gives for '', and no request
    // (the arguments above are checked all the same).
    let empty = match &input {
        Input::Labeled { content, .. } | Input::Summarize { content, .. } | Input::Text { content } => {
            content.is_empty()
        }
        Input::Rank { query, document } => query.is_empty() || document.is_empty(),
    };
    if empty {
        return Ok(Prepared::Done(Answer::Null));
    }
    let name = function.sql_name();
    if let Input::Rank { query, document } = &input {
        let d = catalog::load_for(&model, name, &[Task::Chat, Task::Rerank])?;
        if d.spec.task == Task::Rerank {
            // A rerank model answers the question itself; no prompt, no schema.
            return Ok(Prepared::Rerank {
                target: Arc::new(Target::new(&d, &d.params)?),
                url: d.rerank_url(),
                query: query.clone(),
                document: document.clone(),
            });
        }
    }
    let d = catalog::load_for(&model, name, &[Task::Chat])?;
    check_spec(d.spec, &d.name, name)?;
    let prompt = d.prompts.get(name).map(String::as_str).unwrap_or(function.default_prompt());
    let ask = Ask::new(function, prompt, input, crate::backend::cancel_pending)?;
    // The instruction is the system message: a deployed "system" persona would compete with it.
    let mut merged = d.params.clone();
    merged.remove("system");
    let merged = with_format(&d, merged, &ask.format);
    let messages =
        vec![json!({"role": "system", "content": ask.system}), json!({"role": "user", "content": ask.user})];
    let request = d.chat_request(messages, &merged)?;
    Ok(Prepared::Chat {
        target: Arc::new(Target::new(&d, &merged)?),
        request,
        finish: Finish::Task { model, ask: Arc::new(ask) },
    })
}

/// ai_similarity(model_name, a, b): both texts in one embeddings request.
pub(crate) fn prepare_similarity(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(a), Some(b)) = (args.model_name(), get::<String>(args, 1), get::<String>(args, 2))
    else {
        return Ok(Prepared::Done(Answer::Null));
    };
    if a.is_empty() || b.is_empty() {
        return Ok(Prepared::Done(Answer::Null));
    }
    let d = catalog::load_for(&model, "ai_similarity", &[Task::Embedding])?;
    let embedding = Arc::new(d.embedding_model());
    Ok(Prepared::Similarity { target: Arc::new(Target::new(&d, &d.params)?), model: embedding, a, b })
}

/// ai_set_prompt(model_name, function_name, prompt): a DBA's replacement for one task
/// function's prompt on one model; NULL goes back to the default.
fn set_prompt(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(model) = arg::<String>(fcinfo, 0) else {
        return Err(AiError::NullArgument { message: "model_name must not be NULL".into() });
    };
    let Some(function_name) = arg::<String>(fcinfo, 1) else {
        return Err(AiError::NullArgument { message: "function_name must not be NULL".into() });
    };
    let Some(function) = TaskFn::from_sql_name(&function_name) else {
        let names: Vec<&str> = TaskFn::ALL.iter().map(|t| t.sql_name()).collect();
        return Err(AiError::invalid(format!(
            "\"{}\" has no prompt to set; allowed: {}",
            limits::shown(&function_name),
            names.join(", ")
        )));
    };
    let prompt = arg::<String>(fcinfo, 2);
    if let Some(p) = &prompt {
        function.check_prompt(p)?;
    }
    catalog::set_prompt(&model, function.sql_name(), prompt.as_deref(), |spec| {
        if spec.task != Task::Chat {
            return Err(AiError::invalid_with_hint(
                format!(
                    "model \"{model}\" has task {} ({}); task prompts are for the chat models the task functions use",
                    spec.task, spec.model_type
                ),
                "SELECT model_name, task FROM ai_models shows each model's task.",
            ));
        }
        check_spec(spec, &model, function.sql_name())
    })?;
    Ok(None)
}

/// In the extension's internal schema (created by sql/catalog.sql; pgrx's own CREATE SCHEMA
/// IF NOT EXISTS finds it there).
#[pg_schema]
mod bailian {
    use bailian_core::tasks::TaskFn;
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// The default prompt of every task function, for the `ai_prompts` view.
    #[allow(clippy::type_complexity)]
    #[pg_extern(name = "default_prompts", immutable, parallel_safe)]
    fn default_prompts() -> TableIterator<
        'static,
        (
            name!(function_name, String),
            name!(prompt, String),
            name!(placeholders, Vec<String>),
            name!(response_schema, JsonB),
        ),
    > {
        TableIterator::new(TaskFn::ALL.into_iter().map(|t| {
            let example: Vec<String> =
                if t.placeholders().contains(&"labels") { vec!["<label>".into()] } else { vec![] };
            (
                t.sql_name().to_string(),
                t.default_prompt().to_string(),
                t.placeholders().iter().map(|p| format!("{{{p}}}")).collect(),
                JsonB(t.schema(&example)),
            )
        }))
    }

    /// The rows of the `ai_default_models` view (see `functions::defaults`).
    #[allow(clippy::type_complexity)]
    #[pg_extern(name = "default_model_choices", stable)]
    fn default_model_choices() -> TableIterator<
        'static,
        (
            name!(function_name, String),
            name!(tasks, Vec<String>),
            name!(model_name, Option<String>),
            name!(set_by, Option<String>),
            name!(set_at, Option<pgrx::datum::TimestampWithTimeZone>),
            name!(effective_model, Option<String>),
            name!(source, String),
        ),
    > {
        TableIterator::new(crate::functions::defaults::choice_rows())
    }
}
