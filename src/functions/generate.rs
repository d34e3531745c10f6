//! ai_gen (both forms), ai_chat, ai_gen_audio and ai_translate: everything that asks a chat
//! or translation model.

use super::calls::{self, get, Answer, Args, Finish, Kernel, Prepared};
use crate::backend::Target;
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::deploy::Deployment;
use bailian_core::params::{self, Phase};
use bailian_core::providers::{self, compatible, ChatRequest};
use bailian_core::registry::Task;
use bailian_core::template::{self, TemplateError};
use bailian_core::AiError;
use pgrx::{pg_sys, JsonB};
use serde_json::{json, Map, Value};
use std::sync::Arc;

sql_entry!(pg_finfo_pg_bailian_gen, pg_bailian_gen, gen);
sql_entry!(pg_finfo_pg_bailian_gen_default, pg_bailian_gen_default, gen_default);
sql_entry!(pg_finfo_pg_bailian_translate, pg_bailian_translate, translate);
sql_entry!(pg_finfo_pg_bailian_chat, pg_bailian_chat, chat_fn);
sql_entry!(pg_finfo_pg_bailian_gen_audio, pg_bailian_gen_audio, gen_audio);
sql_entry!(pg_finfo_pg_bailian_gen_prompt, pg_bailian_gen_prompt, gen_prompt);
sql_entry!(pg_finfo_pg_bailian_gen_prompt_default, pg_bailian_gen_prompt_default, gen_prompt_default);

/// Per-call params checked for the model, then laid over the deployed ones.
pub(crate) fn call_params(d: &Deployment, given: Option<JsonB>) -> Result<Map<String, Value>, AiError> {
    let given = given.map(|j| j.0).unwrap_or(Value::Null);
    let call = params::validate(d.spec, &given, Phase::Call)?;
    Ok(params::merge(&d.params, &call))
}

/// The request for one prompt, as `ai_gen` and the batch and column paths send it.
pub(crate) fn prompt_request(
    d: &Deployment,
    prompt: &str,
    merged: &Map<String, Value>,
) -> Result<ChatRequest, AiError> {
    d.chat_request(providers::prompt_messages(prompt, merged), merged)
}

fn gen(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Gen, fcinfo)
}

fn gen_default(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::GenDefault, fcinfo)
}

fn gen_prompt(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::GenPrompt, fcinfo)
}

fn gen_prompt_default(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::GenPromptDefault, fcinfo)
}

fn chat_fn(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Chat, fcinfo)
}

fn gen_audio(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::GenAudio, fcinfo)
}

fn translate(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Translate, fcinfo)
}

/// A chat request to `d` for one prompt, answered as text.
fn ask(d: &Arc<Deployment>, prompt: &str, merged: &Map<String, Value>) -> Result<Prepared, AiError> {
    let request = prompt_request(d, prompt, merged)?;
    Ok(Prepared::Chat { target: Arc::new(Target::new(d, merged)?), request, finish: Finish::Text })
}

pub(crate) fn prepare_gen(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(prompt)) = (get::<String>(args, 0), get::<String>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let d = catalog::load_for(&model, "ai_gen", &[Task::Chat])?;
    let merged = call_params(&d, get::<JsonB>(args, 2))?;
    ask(&d, &prompt, &merged)
}

pub(crate) fn prepare_gen_default(args: &dyn Args) -> Result<Prepared, AiError> {
    let Some(prompt) = get::<String>(args, 0) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let model = catalog::default_model("ai_gen")?;
    let d = catalog::load_for(&model, "ai_gen", &[Task::Chat])?;
    ask(&d, &prompt, &d.params)
}

/// A prompt object (`prompt(template, VARIADIC args)`, or Hologres' own
/// `{"prompt", "args", "parameters"}`) as the prompt text, rendered by ai_prompt's renderer
/// (bounded the same way), and its per-call parameters.
fn render_prompt_object(object: &Value) -> Result<(String, Option<Value>), AiError> {
    let p = bailian_core::hologres::prompt_object(object)?;
    let args: Vec<Option<&str>> = p.args.iter().map(Option::as_deref).collect();
    let text = template::positional(&p.template, &args, crate::backend::cancel_pending).map_err(|e| match e {
        TemplateError::Mistake(e) => AiError::invalid_with_hint(
            format!("ai_gen: the template of the prompt object {e}"),
            "Placeholders are {0}, {1}, ... for the prompt object's args; write {{ and }} for literal braces.",
        ),
        TemplateError::Stopped(e) => e,
    })?;
    Ok((text, p.parameters))
}

/// The prompt object's "parameters", overridden key by key by the call's params.
fn object_params(parameters: Option<Value>, given: Option<JsonB>) -> Option<JsonB> {
    match (parameters, given) {
        (None, given) => given,
        (Some(p), None) => Some(JsonB(p)),
        (Some(Value::Object(mut p)), Some(JsonB(Value::Object(g)))) => {
            p.extend(g);
            Some(JsonB(Value::Object(p)))
        }
        // A params that is not an object is refused by the params check, as for ai_gen.
        (Some(_), Some(given)) => Some(given),
    }
}

pub(crate) fn prepare_gen_prompt(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(object)) = (get::<String>(args, 0), get::<JsonB>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let d = catalog::load_for(&model, "ai_gen", &[Task::Chat])?;
    let (prompt, parameters) = render_prompt_object(&object.0)?;
    let merged = call_params(&d, object_params(parameters, get::<JsonB>(args, 2)))?;
    ask(&d, &prompt, &merged)
}

pub(crate) fn prepare_gen_prompt_default(args: &dyn Args) -> Result<Prepared, AiError> {
    let Some(object) = get::<JsonB>(args, 0) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let (prompt, parameters) = render_prompt_object(&object.0)?;
    let model = catalog::default_model("ai_gen")?;
    let d = catalog::load_for(&model, "ai_gen", &[Task::Chat])?;
    let merged = call_params(&d, object_params(parameters, None))?;
    ask(&d, &prompt, &merged)
}

pub(crate) fn prepare_chat(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(messages)) = (get::<String>(args, 0), get::<JsonB>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let d = catalog::load_for(&model, "ai_chat", &[Task::Chat])?;
    let merged = call_params(&d, get::<JsonB>(args, 2))?;
    if merged.contains_key("images") {
        return Err(AiError::invalid_with_hint(
            "parameter \"images\" is for ai_gen; ai_chat takes images as content parts of the messages",
            "Write {\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"https://...\"}}, {\"type\": \"text\", \"text\": \"...\"}]}.",
        ));
    }
    let messages = providers::check_messages(d.spec, &messages.0, &merged)?;
    let request = d.chat_request(messages, &merged)?;
    Ok(Prepared::Chat { target: Arc::new(Target::new(&d, &merged)?), request, finish: Finish::Json })
}

/// The voice Qwen-Omni speaks with when params name none: `Cherry`, the voice of Bailian's
/// Qwen-Omni examples.
const DEFAULT_VOICE: &str = "Cherry";

pub(crate) fn prepare_gen_audio(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(prompt)) = (get::<String>(args, 0), get::<String>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let d = catalog::load_for(&model, "ai_gen_audio", &[Task::Chat])?;
    if !d.spec.speaks() {
        return Err(AiError::invalid_with_hint(
            format!(
                "ai_gen_audio cannot use model \"{model}\": {} does not answer with audio",
                d.spec.model_type
            ),
            "Deploy a Qwen-Omni model (SELECT model_type FROM ai_supported_models() WHERE 'audio' = ANY(outputs)).",
        ));
    }
    let mut merged = call_params(&d, get::<JsonB>(args, 2))?;
    let voice = merged
        .get("voice")
        .or_else(|| merged.get("audio").and_then(|a| a.get("voice")))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_VOICE)
        .to_string();
    merged.remove("voice");
    merged.insert("modalities".into(), json!(["text", "audio"]));
    merged.insert("audio".into(), json!({"voice": voice, "format": "wav"}));
    let request = prompt_request(&d, &prompt, &merged)?;
    Ok(Prepared::Chat {
        target: Arc::new(Target::new(&d, &merged)?),
        request,
        finish: Finish::Audio { model },
    })
}

pub(crate) fn prepare_translate(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(content)) = (args.model_name(), get::<String>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let Some(target_lang) = get::<String>(args, 2).filter(|t| !t.trim().is_empty()) else {
        return Err(AiError::invalid("target_lang must be a language name or code, e.g. 'English' or 'en'"));
    };
    let d = catalog::load_for(&model, "ai_translate", &[Task::Translation, Task::Chat])?;
    let merged = call_params(&d, get::<JsonB>(args, 3))?;
    if d.spec.task == Task::Chat {
        return ask(&d, &compatible::translation_prompt(&content, &target_lang), &merged);
    }
    let request =
        compatible::translation_request(d.spec.model_type, d.endpoint(), &content, &target_lang, &merged);
    Ok(Prepared::Chat { target: Arc::new(Target::new(&d, &merged)?), request, finish: Finish::Text })
}
