//! OpenSearch AI Search Open Platform text generation
//! (`POST /v3/openapi/workspaces/{workspace}/text-generation/{service_id}`), per seed 003 and
//! the platform's status-code page: keys `OS-...`, errors
//! `{"request_id", "latency", "code", "message"}`, answers
//! `{"request_id", "latency", "result": {"text", "search_results"?}, "usage"}`. Refusals other
//! than ServiceIdNotExist are `InvalidParameter` with wording of the stand-in's own (the seed
//! gives the rules, not the messages).

use crate::chat::{chat_reply, check_stop, last_user, stop_at};
use crate::errors::{coded_body, invalid, respond, Api};
use crate::models;
use crate::request::Outcome;
use crate::stream;
use crate::tokens::approx_tokens;
use crate::usage::Tokens;
use serde_json::{json, Value};

/// The answer the stand-in gives a service for `prompt`: the same as compatible-mode chat.
pub(crate) fn generate(body: &Value, service: &str, id: u64) -> Outcome {
    let bad = |m: &str| invalid(Api::OpenSearch, m, id);
    let Some(ceiling) = models::opensearch_service(service) else {
        return respond(
            400,
            coded_body(Api::OpenSearch, "ServiceIdNotExist", "service_id is not exist.", id),
        );
    };
    let messages = match check_messages(body) {
        Ok(m) => m,
        Err(m) => return bad(&m),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad("stream must be a boolean."),
    };
    let search = match body.get("enable_search") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad("enable_search must be a boolean."),
    };
    if let Some(level) = body.get("csi_level").filter(|v| !v.is_null()) {
        if !matches!(level.as_str(), Some("none" | "loose" | "strict" | "rigorous")) {
            return bad("csi_level should be one of [none, loose, strict, rigorous]");
        }
    }
    let params = body.get("parameters").cloned().unwrap_or(json!({}));
    if !params.is_object() {
        return bad("parameters must be an object.");
    }
    if let Err(m) = check_parameters(&params, ceiling) {
        return bad(&m);
    }
    let prompt =
        last_user(messages).and_then(|m| m.get("content")).and_then(Value::as_str).unwrap_or_default();
    let mut text = chat_reply(service, prompt, 0);
    if let Some(cut) = stop_at(&params, &text) {
        text.truncate(cut);
    }
    if let Some(max) = params.get("max_tokens").and_then(Value::as_u64) {
        let words: Vec<&str> = text.split(' ').collect();
        if words.len() as u64 > max {
            text = words[..max as usize].join(" ");
        }
    }
    // "Hanya deepseek-r1 yang didukung": enable_search elsewhere does nothing (the seed names
    // no error for it). Results come back only when search_return_result asks for them.
    let results = (search
        && service == "deepseek-r1"
        && params.get("search_return_result").and_then(Value::as_bool).unwrap_or(false))
    .then(|| search_results(prompt, params.get("search_top_k").and_then(Value::as_u64).unwrap_or(5)));
    let input_tokens: u64 = messages
        .iter()
        .map(|m| approx_tokens(m.get("content").and_then(Value::as_str).unwrap_or_default()))
        .sum();
    let answer = |text: &str| {
        let output_tokens = approx_tokens(text);
        let mut result = json!({"text": text});
        if let Some(r) = &results {
            result["search_results"] = r.clone();
        }
        json!({
            "request_id": crate::errors::request_id(id),
            "latency": 1.0,
            "result": result,
            "usage": {"output_tokens": output_tokens, "input_tokens": input_tokens, "total_tokens": input_tokens + output_tokens},
        })
    };
    if !stream {
        return Outcome::Respond { status: 200, body: answer(&text), retry_after: None };
    }
    // "setiap keluaran adalah seluruh urutan yang dihasilkan hingga saat itu, dengan keluaran
    // terakhir menjadi hasil lengkap akhir": every event carries the whole text so far. The
    // wire format is not documented; these are `data:` events as compatible mode sends, with
    // no end marker, the last event being the complete result.
    let mut so_far = String::new();
    let events = stream::pieces(&text)
        .into_iter()
        .map(|piece| {
            so_far.push_str(piece);
            stream::event(&answer(&so_far))
        })
        .collect();
    let tokens = Tokens::of_answer(&answer(&text)).unwrap_or_default();
    Outcome::Stream { events, broken: false, tokens }
}

/// The event an OpenSearch stream ends with when moderation stops it (`Fault::StreamError`):
/// the platform's error body as an event. Not documented; a guess from the seed's shapes.
pub(crate) fn moderation_event(id: u64) -> bytes::Bytes {
    stream::event(&coded_body(
        Api::OpenSearch,
        "DataInspectionFailed",
        "Output data may contain inappropriate content.",
        id,
    ))
}

/// Seed 003: system only as messages[0]; then user and assistant alternate; the last is user.
fn check_messages(body: &Value) -> Result<&[Value], String> {
    let Some(messages) = body.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return Err("messages must be a non-empty array.".into());
    };
    let mut expect = "user";
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if !m.get("content").is_some_and(Value::is_string) {
            return Err(format!("messages[{i}].content must be a string."));
        }
        match role {
            "system" if i == 0 => continue,
            "system" => return Err("system message can only be the first message.".into()),
            "user" | "assistant" if role == expect => {
                expect = if role == "user" { "assistant" } else { "user" };
            }
            "user" | "assistant" => {
                return Err(format!(
                    "messages[{i}]: user and assistant messages must alternate, starting with user."
                ))
            }
            other => {
                return Err(format!(
                    "messages[{i}]: role should be one of [system, user, assistant], got '{other}'."
                ))
            }
        }
    }
    if messages.last().and_then(|m| m.get("role")).and_then(Value::as_str) != Some("user") {
        return Err("the last message must be from user.".into());
    }
    Ok(messages)
}

/// Ranges from seed 003: top_p in (0, 1) open, temperature [0, 2), presence_penalty
/// [-2, 2], max_tokens up to the service's ceiling, seed an unsigned 64-bit integer.
fn check_parameters(p: &Value, ceiling: Option<u64>) -> Result<(), String> {
    let get = |k: &str| p.get(k).filter(|v| !v.is_null());
    if let Some(v) = get("search_return_result") {
        if !v.is_boolean() {
            return Err("parameters.search_return_result must be a boolean.".into());
        }
    }
    if let Some(v) = get("search_top_k") {
        if v.as_u64().is_none_or(|k| k < 1) {
            return Err("parameters.search_top_k must be a positive integer.".into());
        }
    }
    if let Some(v) = get("search_way") {
        if !matches!(v.as_str(), Some("normal" | "fast" | "full")) {
            return Err("parameters.search_way should be one of [normal, fast, full]".into());
        }
    }
    if let Some(v) = get("seed") {
        if v.as_u64().is_none() {
            return Err("parameters.seed must be an unsigned 64-bit integer.".into());
        }
    }
    if let Some(v) = get("max_tokens") {
        let max = ceiling.unwrap_or(u64::MAX);
        if !v.as_u64().is_some_and(|m| m >= 1 && m <= max) {
            return Err(match ceiling {
                Some(c) => format!("Range of max_tokens should be [1, {c}]"),
                None => "max_tokens must be a positive integer.".into(),
            });
        }
    }
    if let Some(v) = get("top_p") {
        if !v.as_f64().is_some_and(|x| x > 0.0 && x < 1.0) {
            return Err("Range of top_p should be (0.0, 1.0)".into());
        }
    }
    if let Some(v) = get("top_k") {
        if v.as_u64().is_none() {
            return Err("parameters.top_k must be a non-negative integer.".into());
        }
    }
    if let Some(v) = get("repetition_penalty") {
        if !v.is_number() {
            return Err("parameters.repetition_penalty must be a number.".into());
        }
    }
    if let Some(v) = get("presence_penalty") {
        if !v.as_f64().is_some_and(|x| (-2.0..=2.0).contains(&x)) {
            return Err("Range of presence_penalty should be [-2.0, 2.0]".into());
        }
    }
    if let Some(v) = get("temperature") {
        if !v.as_f64().is_some_and(|x| (0.0..2.0).contains(&x)) {
            return Err("Range of temperature should be [0.0, 2.0)".into());
        }
    }
    if let Some(v) = get("stop") {
        check_stop(v)?;
    }
    Ok(())
}

fn search_results(query: &str, k: u64) -> Value {
    (1..=k.min(20))
        .map(|i| {
            json!({
                "title": format!("Result {i} for {query}"),
                "url": format!("https://search.standin.invalid/{i}"),
                "snippet": format!("Snippet {i} about {query}"),
            })
        })
        .collect()
}
