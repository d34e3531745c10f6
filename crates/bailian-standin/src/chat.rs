//! Compatible-mode chat (`/chat/completions`): the request checks Bailian documents, the
//! deterministic answer, and its two forms, one JSON body or a stream of chunks.
//!
//! Sources: the text-generation overview (seed 001), the streaming, deep-thinking, Qwen-Omni,
//! web-search and error-code pages of Model Studio (`response_format` is `structured`'s).
//! Where a refusal's wording is not documented, the message says what is wrong in the style
//! of the documented ones, and the comment says it is a guess.

use crate::audio;
use crate::cache;
use crate::errors::{invalid, Api};
use crate::models::{self, Thinking};
use crate::request::Outcome;
use crate::stream;
use crate::structured;
use crate::tokens::approx_tokens;
use crate::usage::Tokens;
use serde_json::{json, Value};

/// Observed on the wire with the trailing space (OpenManus#330, ragflow#5912); the
/// error-code page prints it without.
pub(crate) const STREAM_ONLY: &str =
    "This model only support stream mode, please enable the stream parameter to access the model. ";
/// Error-code page, 400 InvalidParameter.
pub(crate) const THINKING_NEEDS_STREAM: &str =
    "parameter.enable_thinking must be set to false for non-streaming calls";
/// Error-code page.
pub(crate) const NO_SEARCH: &str = "This model does not support enable_search.";

const CREATED: u64 = 1_726_127_645;

/// The stand-in's deterministic chat answer to `prompt`.
pub fn chat_reply(model: &str, prompt: &str, images: usize) -> String {
    if images > 0 {
        format!("Echo from {model} ({images} images): {prompt}")
    } else {
        format!("Echo from {model}: {prompt}")
    }
}

/// The stand-in's deterministic reasoning (`reasoning_content`) before answering `prompt`.
pub fn reasoning_reply(model: &str, prompt: &str) -> String {
    format!("{model} considers the question: {prompt}")
}

/// The stand-in's deterministic "translation": the glossary applied, tagged with the pair.
pub fn translation_reply(text: &str, source: &str, target: &str, terms: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (s, t) in terms {
        out = out.replace(s.as_str(), t);
    }
    format!("[{source}->{target}] {out}")
}

/// The text of a message's content: a string, or the text parts of a content-part array,
/// and how many images it carries.
pub(crate) fn content_text(content: &Value) -> (String, usize) {
    match content {
        Value::String(s) => (s.clone(), 0),
        Value::Array(parts) => {
            let text = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("");
            let images =
                parts.iter().filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url")).count();
            (text, images)
        }
        _ => (String::new(), 0),
    }
}

pub(crate) fn last_user(messages: &[Value]) -> Option<&Value> {
    messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
}

/// What a validated request asks for.
struct Plan<'a> {
    model: &'a str,
    stream: bool,
    include_usage: bool,
    n: u64,
    content: String,
    reasoning: Option<String>,
    finish: &'static str,
    prompt_tokens: u64,
    /// Of the prompt tokens, those the implicit cache had (`cache`).
    cached_tokens: u64,
    voice: Option<String>,
}

/// How a chat request reached the model.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Channel {
    /// A request answered as it is made (compatible mode, and the Batch Chat host, which
    /// holds the connection and answers the same way).
    Live,
    /// A line of a Batch File batch.
    BatchFile,
}

/// The answer to a chat request whose first `cached_tokens` prompt tokens were found in the
/// implicit cache.
pub(crate) fn chat(body: &Value, model: &str, id: u64, cached_tokens: u64) -> Outcome {
    match plan(body, model, id, Channel::Live) {
        Ok(plan) => {
            let plan = Plan { cached_tokens: cached_tokens.min(plan.prompt_tokens), ..plan };
            if plan.stream {
                let tokens = Tokens::of_usage(&usage(&plan));
                Outcome::Stream { events: stream_events(&plan, id), broken: false, tokens }
            } else {
                completion(&plan, id)
            }
        }
        Err(refusal) => refusal,
    }
}

/// The answer to one line of a Batch File batch (`/v1/chat/completions`): the live answer
/// to the same body, whole. The batch runs what live calls refuse without a stream (it
/// lists qwq-plus, which answers only as a stream live, and thinking models, whose batch
/// output carries `reasoning_content`: research §1.3, §1.7, §1.8). No context cache (batch
/// work gets no cache discount, §1.10). A line that asks to stream is refused: the docs do
/// not say what Bailian does with one, OpenAI's Batch API does not stream, and a refusal
/// shows a client that left it in.
pub(crate) fn batch_line(body: &Value, model: &str, id: u64) -> Outcome {
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return invalid(Api::Compatible, "stream is not supported by the Batch API.", id);
    }
    match plan(body, model, id, Channel::BatchFile) {
        Ok(plan) => completion(&plan, id),
        Err(refusal) => refusal,
    }
}

/// The answer of `batch-test-model` at `/v1/chat/ds-test` to any line: the fixed text the
/// Batch File page documents, without a `role` (as its example shows), and no usage to bill
/// (the test mode is free, research §1.4).
pub(crate) fn batch_test_line(model: &str, id: u64) -> Outcome {
    Outcome::Respond {
        status: 200,
        body: json!({
            "choices": [{"finish_reason": "stop", "index": 0, "message": {"content": "This is a test result."}}],
            "object": "chat.completion",
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "created": CREATED,
            "model": model,
            "id": format!("chatcmpl-standin-{id}"),
        }),
        retry_after: None,
    }
}

/// The messages as the implicit cache sees them: (role, text) each (`cache::blocks`).
pub(crate) fn cache_blocks(body: &Value) -> cache::Blocks {
    let messages = body.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let texts: Vec<(&str, String)> = messages
        .iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            (role, content_text(m.get("content").unwrap_or(&Value::Null)).0)
        })
        .collect();
    cache::blocks(texts.iter().map(|(role, text)| (*role, text.as_str())))
}

/// A request that marks content for the explicit cache (`"cache_control"` on a content part,
/// context-cache page), which rules out the implicit one.
pub(crate) fn uses_explicit_cache(body: &Value) -> bool {
    let messages = body.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .any(|p| p.get("cache_control").is_some())
}

fn plan<'a>(body: &Value, model: &'a str, id: u64, channel: Channel) -> Result<Plan<'a>, Outcome> {
    let bad = |m: &str| invalid(Api::Compatible, m, id);
    let Some(messages) = body.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return Err(bad("messages must be a non-empty array."));
    };
    check_messages(messages, model).map_err(|m| bad(&m))?;
    check_sampling(body, model).map_err(|m| bad(&m))?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream must be a boolean.")),
    };
    let include_usage =
        stream && body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let n = match body.get("n") {
        None | Some(Value::Null) => 1,
        // SDK docstring: n in 1-4; the message is a guess in the style of the documented ones.
        Some(v) => {
            v.as_u64().filter(|n| (1..=4).contains(n)).ok_or_else(|| bad("Range of n should be [1, 4]"))?
        }
    };
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| approx_tokens(&content_text(m.get("content").unwrap_or(&Value::Null)).0))
        .sum();

    if model.starts_with("qwen-mt-") {
        let content = translation(body, messages).map_err(|m| bad(&m))?;
        return Ok(Plan {
            model,
            stream,
            include_usage,
            n,
            content,
            reasoning: None,
            finish: "stop",
            prompt_tokens,
            cached_tokens: 0,
            voice: None,
        });
    }

    let batch = channel == Channel::BatchFile;
    if models::stream_only(model) && !stream && !batch {
        return Err(bad(STREAM_ONLY));
    }
    let enable_thinking = match body.get("enable_thinking") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(bad("enable_thinking must be a boolean.")),
    };
    let thinks = match models::thinking(model) {
        Thinking::Never => false,
        Thinking::Always => true,
        Thinking::Hybrid { default } => {
            let on = enable_thinking.unwrap_or(default);
            if on && !stream && !batch {
                return Err(bad(THINKING_NEEDS_STREAM));
            }
            on
        }
    };
    let budget = match body.get("thinking_budget") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let max = models::max_thinking_budget(model);
            let message = format!(
                "The thinking_budget parameter must be a positive integer and not greater than {max}"
            );
            Some(v.as_u64().filter(|b| (1..=max).contains(b)).ok_or_else(|| bad(&message))?)
        }
    };
    let format = structured::format(body).map_err(|m| bad(&m))?;
    if thinks && format.is_json() {
        return Err(bad(structured::JSON_WITH_THINKING));
    }
    check_search(body, model).map_err(|m| bad(&m))?;
    let voice = check_audio(body, model).map_err(|m| bad(&m))?;

    let Some(user) = last_user(messages) else {
        return Err(bad("messages must contain a user message."));
    };
    let (text, images) = content_text(user.get("content").unwrap_or(&Value::Null));
    let mut answer = chat_reply(model, &text, images);
    let mut finish = "stop";
    if let Some(cut) = stop_at(body, &answer) {
        answer.truncate(cut);
    }
    if let Some(max) = body.get("max_tokens").and_then(Value::as_u64) {
        let words: Vec<&str> = answer.split(' ').collect();
        if words.len() as u64 > max {
            answer = words[..max as usize].join(" ");
            finish = "length";
        }
    }
    let system = messages
        .first()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("system"))
        .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)).0)
        .unwrap_or_default();
    let content = structured::shaped(&format, messages, &text, &system, answer).map_err(|m| bad(&m))?;
    let reasoning = thinks.then(|| {
        let r = reasoning_reply(model, &text);
        match budget {
            Some(b) => r.split(' ').take(b as usize).collect::<Vec<_>>().join(" "),
            None => r,
        }
    });
    Ok(Plan {
        model,
        stream,
        include_usage,
        n,
        content,
        reasoning,
        finish,
        prompt_tokens,
        cached_tokens: 0,
        voice,
    })
}

/// The roles and content parts compatible mode takes. A system message may only come first
/// (the DashScope API reference: "如果设置系统消息，请放在messages列表的第一位"; the wording of
/// the refusal is a guess, the one Qwen's own chat template raises).
fn check_messages(messages: &[Value], model: &str) -> Result<(), String> {
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        match role {
            "system" if i > 0 => return Err("System message must be at the beginning.".into()),
            "system" | "user" | "assistant" | "tool" => {}
            other => return Err(format!("Role must be in [system, user, assistant, tool], got '{other}'.")),
        }
        match m.get("content") {
            Some(Value::String(_)) => {}
            // An assistant turn that only calls tools has no content.
            None | Some(Value::Null) if role == "assistant" => {}
            Some(Value::Array(parts)) => {
                for part in parts {
                    check_part(part, model)?;
                }
            }
            _ => return Err(format!("messages[{i}].content must be a string or an array of content parts.")),
        }
    }
    Ok(())
}

fn check_part(part: &Value, model: &str) -> Result<(), String> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "text" if part.get("text").is_some_and(Value::is_string) => Ok(()),
        "image_url" => {
            let url = part.pointer("/image_url/url").and_then(Value::as_str).unwrap_or_default();
            if url.is_empty() {
                Err("image_url.url must be a non-empty string.".into())
            } else {
                Ok(())
            }
        }
        "input_audio" | "video_url" | "video" if models::sees_images(model) => Ok(()),
        _ => Err(format!("Unsupported content part of type '{kind}'.")),
    }
}

/// Ranges from the API reference and the SDK docstring (`generation.py`). temperature and
/// top_p keep the stand-in's earlier wording; max_tokens and thinking_budget use the
/// error-code page's; the others are guesses in the same style.
fn check_sampling(body: &Value, model: &str) -> Result<(), String> {
    let num = |k: &str| body.get(k).filter(|v| !v.is_null());
    if let Some(t) = num("temperature") {
        if !t.as_f64().is_some_and(|t| (0.0..2.0).contains(&t)) {
            return Err("Range of temperature should be [0.0, 2.0)".into());
        }
    }
    if let Some(p) = num("top_p") {
        if !p.as_f64().is_some_and(|p| p > 0.0 && p <= 1.0) {
            return Err("Range of top_p should be (0.0, 1.0]".into());
        }
    }
    if let Some(p) = num("presence_penalty") {
        if !p.as_f64().is_some_and(|p| (-2.0..=2.0).contains(&p)) {
            return Err("Range of presence_penalty should be [-2.0, 2.0]".into());
        }
    }
    if let Some(p) = num("repetition_penalty") {
        if !p.as_f64().is_some_and(|p| p > 0.0) {
            return Err("repetition_penalty should be greater than 0.0".into());
        }
    }
    // top_k above 100 (or unset) turns top-k sampling off; it is still an integer.
    if let Some(k) = num("top_k") {
        if k.as_u64().is_none() {
            return Err("top_k should be a non-negative integer".into());
        }
    }
    // seed is documented as an unsigned integer.
    if let Some(s) = num("seed") {
        if s.as_u64().is_none() {
            return Err("seed should be a non-negative integer".into());
        }
    }
    if let Some(m) = num("max_tokens") {
        let max = models::max_output_tokens(model);
        if !m.as_u64().is_some_and(|m| (1..=max).contains(&m)) {
            return Err(format!("Range of max_tokens should be [1, {max}]"));
        }
    }
    if let Some(stop) = num("stop") {
        check_stop(stop)?;
    }
    Ok(())
}

/// stop: a string, or an array of strings, or of token ids, or of token-id arrays, never a
/// mix of strings and ids (seed 003, the same parameter as the DashScope API reference).
pub(crate) fn check_stop(stop: &Value) -> Result<(), String> {
    let message =
        "stop should be a string or an array of strings or token ids, and cannot mix strings and token ids";
    match stop {
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            let strings = items.iter().all(Value::is_string);
            let ids = items.iter().all(|i| {
                i.is_u64() || i.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_u64))
            });
            if strings || ids {
                Ok(())
            } else {
                Err(message.into())
            }
        }
        _ => Err(message.into()),
    }
}

/// Where the first stop string begins in `answer`, if any (the text is cut before it).
pub(crate) fn stop_at(body: &Value, answer: &str) -> Option<usize> {
    let stops: Vec<&str> = match body.get("stop") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| answer.find(s)).min()
}

/// enable_search and search_options are top-level fields (web-search page). Compatible mode
/// returns no sources (same page), so accepting them changes nothing in the answer.
fn check_search(body: &Value, model: &str) -> Result<(), String> {
    match body.get("enable_search") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) if !models::searches(model) => return Err(NO_SEARCH.into()),
        Some(Value::Bool(true)) => {}
        Some(_) => return Err("enable_search must be a boolean.".into()),
    }
    if let Some(options) = body.get("search_options").filter(|v| !v.is_null()) {
        let Some(options) = options.as_object() else {
            return Err("search_options must be an object.".into());
        };
        if let Some(s) = options.get("search_strategy") {
            if !matches!(s.as_str(), Some("turbo" | "max" | "agent" | "agent_max")) {
                return Err(
                    "search_options.search_strategy should be one of [turbo, max, agent, agent_max]".into()
                );
            }
        }
        if options.get("forced_search").is_some_and(|f| !f.is_boolean()) {
            return Err("search_options.forced_search must be a boolean.".into());
        }
    }
    Ok(())
}

/// modalities and audio (Qwen-Omni page): audio output needs a voice of the model and the
/// format "wav". The refusals' wording is a guess; the page only says non-wav formats and
/// unknown voices are not supported.
fn check_audio(body: &Value, model: &str) -> Result<Option<String>, String> {
    let Some(modalities) = body.get("modalities").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Some(list) = modalities
        .as_array()
        .filter(|l| !l.is_empty() && l.iter().all(|m| matches!(m.as_str(), Some("text" | "audio"))))
    else {
        return Err("modalities should be [\"text\"] or [\"text\", \"audio\"]".into());
    };
    if !list.iter().any(|m| m == "audio") {
        return Ok(None);
    }
    if !models::is_omni(model) {
        return Err(format!("The model `{model}` does not support audio output."));
    }
    let voice = body.pointer("/audio/voice").and_then(Value::as_str).unwrap_or_default();
    if !models::voices(model).contains(&voice) {
        return Err(format!(
            "The voice `{voice}` is not supported by {model}; supported: {:?}",
            models::voices(model)
        ));
    }
    if body.pointer("/audio/format").and_then(Value::as_str) != Some("wav") {
        return Err("audio.format only supports \"wav\"".into());
    }
    Ok(Some(voice.to_string()))
}

fn translation(body: &Value, messages: &[Value]) -> Result<String, String> {
    let Some(options) = body.get("translation_options") else {
        return Err("translation_options is required for Qwen-MT models.".into());
    };
    if messages.len() != 1 || messages[0].get("role").and_then(Value::as_str) != Some("user") {
        return Err("Qwen-MT models take exactly one user message.".into());
    }
    let Some(target) = options.get("target_lang").and_then(Value::as_str) else {
        return Err("translation_options.target_lang is required.".into());
    };
    let source = options.get("source_lang").and_then(Value::as_str).unwrap_or("auto");
    let terms: Vec<(String, String)> = options
        .get("terms")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    Some((t.get("source")?.as_str()?.to_string(), t.get("target")?.as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    let (text, _) = content_text(&messages[0]["content"]);
    Ok(translation_reply(&text, source, target, &terms))
}

/// The answer's `usage` (API reference, response object; research §3.1): the tokens of every
/// message's text, and of each choice's content and reasoning. Reasoning tokens are counted
/// inside `completion_tokens` and reported in `completion_tokens_details.reasoning_tokens`;
/// cached tokens inside `prompt_tokens` and reported in `prompt_tokens_details.cached_tokens`
/// (context-cache page). The details appear only when they are not zero: whether Bailian sends
/// `cached_tokens: 0` on a miss is not documented, and every `*_details` field is optional.
fn usage(plan: &Plan) -> Value {
    let reasoning_tokens = plan.reasoning.as_deref().map(approx_tokens).unwrap_or(0);
    let completion_tokens = (approx_tokens(&plan.content) + reasoning_tokens) * plan.n;
    let mut usage = json!({
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": plan.prompt_tokens + completion_tokens,
    });
    if plan.cached_tokens > 0 {
        usage["prompt_tokens_details"] = json!({"cached_tokens": plan.cached_tokens});
    }
    if plan.reasoning.is_some() {
        usage["completion_tokens_details"] = json!({"reasoning_tokens": reasoning_tokens * plan.n});
    }
    usage
}

fn completion(plan: &Plan, id: u64) -> Outcome {
    let choices: Vec<Value> = (0..plan.n)
        .map(|i| {
            let mut message = json!({"role": "assistant", "content": plan.content});
            // DeepSeek page: the thinking steps are in reasoning_content, also without stream.
            if let Some(r) = &plan.reasoning {
                message["reasoning_content"] = json!(r);
            }
            json!({"message": message, "finish_reason": plan.finish, "index": i, "logprobs": null})
        })
        .collect();
    Outcome::Respond {
        status: 200,
        body: json!({
            "choices": choices,
            "object": "chat.completion",
            "usage": usage(plan),
            "created": CREATED,
            "system_fingerprint": null,
            "model": plan.model,
            "id": format!("chatcmpl-standin-{id}"),
        }),
        retry_after: None,
    }
}

/// The chunks of a streamed answer, in the streaming page's shape: a first chunk with the
/// role, reasoning pieces (thinking models), content pieces, audio (Qwen-Omni with audio
/// output), a last chunk with finish_reason, the usage chunk when asked, `[DONE]`.
fn stream_events(plan: &Plan, id: u64) -> Vec<bytes::Bytes> {
    let chunk = |choices: Value, usage: Value| {
        stream::event(&json!({
            "choices": choices,
            "object": "chat.completion.chunk",
            "usage": usage,
            "created": CREATED,
            "system_fingerprint": null,
            "model": plan.model,
            "id": format!("chatcmpl-standin-{id}"),
        }))
    };
    let delta = |i: u64, delta: Value, finish: Option<&str>| json!([{"delta": delta, "finish_reason": finish, "index": i, "logprobs": null}]);
    let thinking = plan.reasoning.is_some();
    let mut events = Vec::new();
    for i in 0..plan.n {
        let first = if thinking {
            json!({"content": null, "role": "assistant", "reasoning_content": ""})
        } else {
            json!({"content": "", "role": "assistant"})
        };
        events.push(chunk(delta(i, first, None), Value::Null));
        if let Some(reasoning) = &plan.reasoning {
            for piece in stream::pieces(reasoning) {
                events.push(chunk(
                    delta(i, json!({"content": null, "reasoning_content": piece}), None),
                    Value::Null,
                ));
            }
        }
        for piece in stream::pieces(&plan.content) {
            let d = if thinking {
                json!({"content": piece, "reasoning_content": null})
            } else {
                json!({"content": piece})
            };
            events.push(chunk(delta(i, d, None), Value::Null));
        }
        if let Some(voice) = &plan.voice {
            // The page documents only `data`; id, expires_at and transcript are left out.
            for data in audio::chunks(&audio::audio_pcm(&plan.content, voice)) {
                events.push(chunk(delta(i, json!({"audio": {"data": data}}), None), Value::Null));
            }
        }
        events.push(chunk(delta(i, json!({"content": ""}), Some(plan.finish)), Value::Null));
    }
    if plan.include_usage {
        events.push(chunk(json!([]), usage(plan)));
    }
    events.push(stream::done());
    events
}

/// The event a compatible-mode stream ends with when output moderation stops it
/// (`Fault::StreamError`). Mid-stream errors are not documented; the OpenAI SDK raises
/// `APIError` for any event whose JSON has an `error` key, so this is what a client sees.
pub(crate) fn moderation_event(id: u64) -> bytes::Bytes {
    stream::event(&json!({
        "error": {
            "message": "Output data may contain inappropriate content.",
            "type": "data_inspection_failed",
            "param": null,
            "code": "data_inspection_failed",
        },
        "id": format!("chatcmpl-standin-{id}"),
        "request_id": crate::errors::request_id(id),
    }))
}
