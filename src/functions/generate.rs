//! ai_gen (both forms) and ai_translate.

use super::arg;
use crate::backend::{self, Target};
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::deploy::Deployment;
use bailian_core::params::{self, Phase};
use bailian_core::registry::Task;
use bailian_core::request;
use bailian_core::AiError;
use pgrx::{pg_sys, IntoDatum, JsonB};
use serde_json::{Map, Value};

sql_entry!(pg_finfo_pg_bailian_gen, pg_bailian_gen, gen);
sql_entry!(pg_finfo_pg_bailian_gen_default, pg_bailian_gen_default, gen_default);
sql_entry!(pg_finfo_pg_bailian_translate, pg_bailian_translate, translate);

/// Per-call params checked for the model, then laid over the deployed ones.
pub(crate) fn call_params(d: &Deployment, given: Option<JsonB>) -> Result<Map<String, Value>, AiError> {
    let given = given.map(|j| j.0).unwrap_or(Value::Null);
    let call = params::validate(d.spec, &given, Phase::Call)?;
    Ok(params::merge(&d.params, &call))
}

/// Sends a chat-completions `body` and returns the assistant's text.
fn complete(d: &Deployment, body: Value, merged: &Map<String, Value>) -> Result<String, AiError> {
    let target = Target::new(d, merged)?;
    backend::run(&target, |client, call| async move { client.chat(&call, &body).await.map(|(text, _)| text) })
}

fn chat(d: &Deployment, prompt: &str, merged: &Map<String, Value>) -> Result<String, AiError> {
    complete(d, request::chat_body(d.spec.model_type, prompt, merged), merged)
}

fn gen(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(prompt)) = (arg::<String>(fcinfo, 0), arg::<String>(fcinfo, 1)) else {
        return Ok(None);
    };
    let d = catalog::load_for(&model, "ai_gen", &[Task::Chat])?;
    let merged = call_params(&d, arg::<JsonB>(fcinfo, 2))?;
    Ok(chat(&d, &prompt, &merged)?.into_datum())
}

fn gen_default(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(prompt) = arg::<String>(fcinfo, 0) else {
        return Ok(None);
    };
    let model = catalog::default_chat_model()?;
    let d = catalog::load_for(&model, "ai_gen", &[Task::Chat])?;
    Ok(chat(&d, &prompt, &d.params)?.into_datum())
}

fn translate(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(content)) = (arg::<String>(fcinfo, 0), arg::<String>(fcinfo, 1)) else {
        return Ok(None);
    };
    let Some(target_lang) = arg::<String>(fcinfo, 2).filter(|t| !t.trim().is_empty()) else {
        return Err(AiError::invalid("target_lang must be a language name or code, e.g. 'English' or 'en'"));
    };
    let d = catalog::load_for(&model, "ai_translate", &[Task::Translation, Task::Chat])?;
    let merged = call_params(&d, arg::<JsonB>(fcinfo, 3))?;
    if d.spec.task == Task::Chat {
        return Ok(chat(&d, &request::translation_prompt(&content, &target_lang), &merged)?.into_datum());
    }
    let body = request::translation_body(d.spec.model_type, &content, &target_lang, &merged);
    Ok(complete(&d, body, &merged)?.into_datum())
}
