//! ai_gen (both forms), ai_chat, ai_gen_audio and ai_translate: everything that asks a chat
//! or translation model.

use super::arg;
use crate::backend::{self, Target};
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::deploy::Deployment;
use bailian_core::params::{self, Phase};
use bailian_core::providers::{self, compatible, wav, ChatOutcome, ChatRequest};
use bailian_core::registry::Task;
use bailian_core::AiError;
use pgrx::{pg_sys, IntoDatum, JsonB};
use serde_json::{json, Map, Value};

sql_entry!(pg_finfo_pg_bailian_gen, pg_bailian_gen, gen);
sql_entry!(pg_finfo_pg_bailian_gen_default, pg_bailian_gen_default, gen_default);
sql_entry!(pg_finfo_pg_bailian_translate, pg_bailian_translate, translate);
sql_entry!(pg_finfo_pg_bailian_chat, pg_bailian_chat, chat_fn);
sql_entry!(pg_finfo_pg_bailian_gen_audio, pg_bailian_gen_audio, gen_audio);

/// Per-call params checked for the model, then laid over the deployed ones.
pub(crate) fn call_params(d: &Deployment, given: Option<JsonB>) -> Result<Map<String, Value>, AiError> {
    let given = given.map(|j| j.0).unwrap_or(Value::Null);
    let call = params::validate(d.spec, &given, Phase::Call)?;
    Ok(params::merge(&d.params, &call))
}

/// Sends `request` and returns what the model answered.
fn complete(
    d: &Deployment,
    request: ChatRequest,
    merged: &Map<String, Value>,
) -> Result<ChatOutcome, AiError> {
    let target = Target::new(d, merged)?;
    backend::run(&target, |client, call| async move { client.chat(&call, &request).await })
}

/// The request for one prompt, as `ai_gen` and the batch and column paths send it.
pub(crate) fn prompt_request(
    d: &Deployment,
    prompt: &str,
    merged: &Map<String, Value>,
) -> Result<ChatRequest, AiError> {
    d.chat_request(providers::prompt_messages(prompt, merged), merged)
}

fn ask(d: &Deployment, prompt: &str, merged: &Map<String, Value>) -> Result<String, AiError> {
    Ok(complete(d, prompt_request(d, prompt, merged)?, merged)?.content)
}

fn gen(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(prompt)) = (arg::<String>(fcinfo, 0), arg::<String>(fcinfo, 1)) else {
        return Ok(None);
    };
    let d = catalog::load_for(&model, "ai_gen", &[Task::Chat])?;
    let merged = call_params(&d, arg::<JsonB>(fcinfo, 2))?;
    Ok(ask(&d, &prompt, &merged)?.into_datum())
}

fn gen_default(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(prompt) = arg::<String>(fcinfo, 0) else {
        return Ok(None);
    };
    let model = catalog::default_chat_model()?;
    let d = catalog::load_for(&model, "ai_gen", &[Task::Chat])?;
    Ok(ask(&d, &prompt, &d.params)?.into_datum())
}

fn chat_fn(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(messages)) = (arg::<String>(fcinfo, 0), arg::<JsonB>(fcinfo, 1)) else {
        return Ok(None);
    };
    let d = catalog::load_for(&model, "ai_chat", &[Task::Chat])?;
    let merged = call_params(&d, arg::<JsonB>(fcinfo, 2))?;
    if merged.contains_key("images") {
        return Err(AiError::invalid_with_hint(
            "parameter \"images\" is for ai_gen; ai_chat takes images as content parts of the messages",
            "Write {\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"https://...\"}}, {\"type\": \"text\", \"text\": \"...\"}]}.",
        ));
    }
    let messages = providers::check_messages(d.spec, &messages.0, &merged)?;
    let out = complete(&d, d.chat_request(messages, &merged)?, &merged)?;
    Ok(JsonB(out.to_json()).into_datum())
}

/// The voice Qwen-Omni speaks with when params name none: `Cherry`, the voice of Bailian's
/// Qwen-Omni examples.
const DEFAULT_VOICE: &str = "Cherry";

fn gen_audio(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(prompt)) = (arg::<String>(fcinfo, 0), arg::<String>(fcinfo, 1)) else {
        return Ok(None);
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
    let mut merged = call_params(&d, arg::<JsonB>(fcinfo, 2))?;
    let voice = merged
        .get("voice")
        .or_else(|| merged.get("audio").and_then(|a| a.get("voice")))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_VOICE)
        .to_string();
    merged.remove("voice");
    merged.insert("modalities".into(), json!(["text", "audio"]));
    merged.insert("audio".into(), json!({"voice": voice, "format": "wav"}));
    let out = complete(&d, prompt_request(&d, &prompt, &merged)?, &merged)?;
    if out.audio_pcm.is_empty() {
        return Err(AiError::MalformedResponse {
            model: model.clone(),
            detail: "the answer carried no audio (no choices[0].delta.audio.data in the stream)".into(),
        });
    }
    Ok(wav::wav_from_pcm16(&out.audio_pcm, wav::OMNI_SAMPLE_RATE).into_datum())
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
        return Ok(ask(&d, &compatible::translation_prompt(&content, &target_lang), &merged)?.into_datum());
    }
    let request =
        compatible::translation_request(d.spec.model_type, d.endpoint(), &content, &target_lang, &merged);
    Ok(complete(&d, request, &merged)?.content.into_datum())
}
