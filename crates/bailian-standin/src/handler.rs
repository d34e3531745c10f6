//! Request handling: the control endpoints under `/_standin/` and the two model endpoints.

use crate::embedding::embedding_for;
use crate::faults::{self, PaddedBody};
use crate::state::{Config, Fault, LoggedRequest, Shared};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body held in memory, or one generated as it is sent (`Fault::Oversized`).
pub(crate) type AnyBody = Either<Full<Bytes>, PaddedBody>;

fn json_response(status: u16, body: &Value, retry_after: Option<f64>) -> Response<AnyBody> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    if let Some(ra) = retry_after {
        builder = builder.header("retry-after", format!("{}", ra.max(0.0).ceil() as u64));
    }
    builder.body(Either::Left(Full::new(Bytes::from(serde_json::to_vec(body).unwrap_or_default())))).unwrap()
}

fn raw_response(
    status: u16,
    content_type: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: AnyBody,
) -> Result<Response<AnyBody>, BoxError> {
    let mut builder = Response::builder().status(status).header("content-type", content_type);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    Ok(builder.body(body)?)
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<AnyBody>, BoxError> {
    let path = req.uri().path().to_string();
    if let Some(control) = path.strip_prefix("/_standin/") {
        let method = req.method().clone();
        let body = req.into_body().collect().await?.to_bytes();
        return Ok(control_endpoint(&shared, method.as_str(), control, &body));
    }
    let kind = if path.ends_with("/chat/completions") {
        Kind::Chat
    } else if path.ends_with("/embeddings") {
        Kind::Embeddings
    } else {
        let body = error_body("Not found", "invalid_request_error", "NotFound", None, 0);
        return Ok(json_response(404, &body, None));
    };
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let id = shared.next_id();
    let mut guard = InFlight::new(shared.clone(), id, &path, &auth);
    let body = req.into_body().collect().await?.to_bytes();
    let outcome = answer(&shared, kind, &auth, &body, id, &mut guard.entry).await;
    match outcome {
        Outcome::Respond { status, body, retry_after } => {
            guard.finish(status);
            Ok(json_response(status, &body, retry_after))
        }
        Outcome::Raw { status, headers, content_type, body } => {
            guard.finish(status);
            raw_response(status, content_type, headers, Either::Left(Full::new(body)))
        }
        Outcome::Padded { prefix, padding, suffix, content_length } => {
            guard.finish(200);
            let body = PaddedBody::new(prefix, padding, suffix, content_length, shared.clone());
            raw_response(200, "application/json", Vec::new(), Either::Right(body))
        }
        Outcome::Reset => {
            guard.finish(0);
            Err("connection reset by the stand-in (fault)".into())
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Chat,
    Embeddings,
}

pub(crate) enum Outcome {
    Respond {
        status: u16,
        body: Value,
        retry_after: Option<f64>,
    },
    /// A body written as is, with extra headers (`Fault::Malformed` and the untrusted-endpoint
    /// faults).
    Raw {
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        content_type: &'static str,
        body: Bytes,
    },
    /// 200 with a body of `prefix`, `padding` bytes of `x`, `suffix`, generated as it is sent.
    Padded {
        prefix: Bytes,
        padding: u64,
        suffix: Bytes,
        content_length: bool,
    },
    Reset,
}

/// Logs the request when it ends, and counts it as aborted if the client went away first
/// (hyper drops the handler future when the connection closes).
struct InFlight {
    shared: Arc<Shared>,
    entry: LoggedRequest,
    done: bool,
}

impl InFlight {
    fn new(shared: Arc<Shared>, id: u64, path: &str, auth: &str) -> InFlight {
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let now = shared.counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.counters.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        let entry = LoggedRequest {
            id,
            path: path.to_string(),
            model: String::new(),
            auth_hint: key_hint(auth),
            inputs: Vec::new(),
            body: Value::Null,
            status: 0,
            fault: None,
            received_ms: shared.ms_since_start(),
            finished_ms: 0.0,
        };
        InFlight { shared, entry, done: false }
    }

    fn finish(&mut self, status: u16) {
        self.done = true;
        self.entry.status = status;
        if status != 0 {
            self.shared.count_status(status);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            self.shared.counters.aborted.fetch_add(1, Ordering::Relaxed);
            self.entry.fault.get_or_insert_with(|| "client went away".into());
        }
        self.entry.finished_ms = self.shared.ms_since_start();
        let entry = std::mem::replace(
            &mut self.entry,
            LoggedRequest {
                id: 0,
                path: String::new(),
                model: String::new(),
                auth_hint: String::new(),
                inputs: Vec::new(),
                body: Value::Null,
                status: 0,
                fault: None,
                received_ms: 0.0,
                finished_ms: 0.0,
            },
        );
        self.shared.log.lock().unwrap().push(entry);
    }
}

fn key_hint(key: &str) -> String {
    let tail: String = key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    if key.is_empty() {
        String::new()
    } else {
        format!("{}...{tail}", &key[..key.len().min(3)])
    }
}

fn error_body(message: &str, kind: &str, code: &str, param: Option<&str>, id: u64) -> Value {
    json!({
        "error": {"message": message, "type": kind, "param": param, "code": code},
        "request_id": format!("standin-{id}"),
    })
}

fn status_error(status: u16, id: u64, model: &str) -> Value {
    match status {
        400 => error_body(
            "<400> InternalError.Algo.InvalidParameter: The request is invalid.",
            "invalid_request_error",
            "invalid_parameter_error",
            None,
            id,
        ),
        401 => {
            error_body("Incorrect API key provided. ", "invalid_request_error", "invalid_api_key", None, id)
        }
        403 => error_body("Access denied.", "invalid_request_error", "access_denied", None, id),
        404 => error_body(
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            "model_not_found",
            None,
            id,
        ),
        429 => error_body(
            "Requests rate limit exceeded, please try again later.",
            "limit_requests",
            "limit_requests",
            None,
            id,
        ),
        503 => error_body(
            "The service is temporarily unavailable.",
            "server_error",
            "ServiceUnavailable",
            None,
            id,
        ),
        s if s >= 500 => error_body(
            "An internal error has occured, please try again later.",
            "internal_error",
            "internal_error",
            None,
            id,
        ),
        _ => error_body("The request failed.", "invalid_request_error", "invalid_request_error", None, id),
    }
}

fn invalid_parameter(message: &str, id: u64) -> Outcome {
    Outcome::Respond {
        status: 400,
        body: error_body(message, "invalid_request_error", "invalid_parameter_error", None, id),
        retry_after: None,
    }
}

/// The text of a message's content: a string, or the text parts of a content-part array.
fn content_text(content: &Value) -> (String, usize) {
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

fn inputs_of(kind: Kind, body: &Value) -> Vec<String> {
    match kind {
        Kind::Chat => body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")))
            .map(|m| vec![content_text(m.get("content").unwrap_or(&Value::Null)).0])
            .unwrap_or_default(),
        Kind::Embeddings => match body.get("input") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
            _ => Vec::new(),
        },
    }
}

async fn answer(
    shared: &Shared,
    kind: Kind,
    key: &str,
    raw: &[u8],
    id: u64,
    entry: &mut LoggedRequest,
) -> Outcome {
    let config: Config = shared.config.lock().unwrap().clone();
    let authorized = key.starts_with("sk-")
        && config.accepted_keys.as_ref().is_none_or(|keys| keys.iter().any(|k| k == key));
    if !authorized {
        let message = if config.echo_key_in_errors {
            format!("Incorrect API key provided: {key}. You can find your API key in the console.")
        } else {
            "Incorrect API key provided. ".to_string()
        };
        return Outcome::Respond {
            status: 401,
            body: error_body(&message, "invalid_request_error", "invalid_api_key", None, id),
            retry_after: None,
        };
    }
    let body: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(_) => return invalid_parameter("The request body is not valid JSON.", id),
    };
    let model = body.get("model").and_then(Value::as_str).unwrap_or_default().to_string();
    let inputs = inputs_of(kind, &body);
    entry.model = model.clone();
    entry.inputs = inputs.clone();
    if config.log_bodies {
        entry.body = body.clone();
    }
    let c = &shared.counters;
    match kind {
        Kind::Chat => c.chat_requests.fetch_add(1, Ordering::Relaxed),
        Kind::Embeddings => c.embedding_requests.fetch_add(1, Ordering::Relaxed),
    };
    c.inputs.fetch_add(inputs.len() as u64, Ordering::Relaxed);

    if let Err(wait) = shared.admit(config.rpm_limit) {
        c.rate_limited.fetch_add(1, Ordering::Relaxed);
        entry.fault = Some("rpm limit".into());
        return Outcome::Respond {
            status: 429,
            body: status_error(429, id, &model),
            retry_after: config.retry_after_secs.map(|_| wait),
        };
    }

    let mut latency = config.latency_ms;
    let fault = shared.take_scripted(&inputs).or_else(|| {
        let r = shared.random();
        if r < config.fail_rate_500 {
            Some(Fault::Status(500))
        } else if r < config.fail_rate_500 + config.fail_rate_429 {
            Some(Fault::Status(429))
        } else {
            None
        }
    });
    entry.fault = fault.as_ref().map(|f| format!("{f:?}"));
    if let Some(Fault::Delay(ms)) = fault {
        latency += ms;
    }
    if matches!(fault, Some(Fault::Hang)) {
        latency = 3_600_000;
    }
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match fault {
        Some(Fault::Status(429)) => {
            return Outcome::Respond {
                status: 429,
                body: status_error(429, id, &model),
                retry_after: config.retry_after_secs,
            }
        }
        Some(Fault::Status(s)) => {
            return Outcome::Respond { status: s, body: status_error(s, id, &model), retry_after: None }
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            return Outcome::Respond {
                status: 429,
                body: status_error(429, id, &model),
                retry_after: Some(retry_after_secs),
            }
        }
        Some(Fault::Inspection) => {
            return Outcome::Respond {
                status: 400,
                body: error_body(
                    "Input data may contain inappropriate content.",
                    "data_inspection_failed",
                    "data_inspection_failed",
                    None,
                    id,
                ),
                retry_after: None,
            }
        }
        Some(Fault::Malformed) => {
            return Outcome::Raw {
                status: 200,
                headers: Vec::new(),
                content_type: "application/json",
                body: Bytes::from_static(b"{\"choices\": [truncated"),
            }
        }
        Some(Fault::Reset) => return Outcome::Reset,
        Some(Fault::RateLimitedRaw { retry_after }) => {
            return faults::rate_limited_raw(&retry_after, &status_error(429, id, &model), entry)
        }
        Some(Fault::Redirect { status, location }) => return faults::redirect(status, &location, entry),
        Some(Fault::Hang)
        | Some(Fault::Delay(_))
        | Some(Fault::Oversized { .. })
        | Some(Fault::NulInContent)
        | Some(Fault::NonFiniteEmbedding { .. })
        | None => {}
    }
    if model.is_empty() {
        return invalid_parameter("Model not specified.", id);
    }
    if config.unavailable_models.contains(&model) {
        return Outcome::Respond { status: 404, body: status_error(404, id, &model), retry_after: None };
    }
    let outcome = match kind {
        Kind::Chat => chat(&body, &model, id),
        Kind::Embeddings => embeddings(&body, &model, &inputs, id),
    };
    match fault {
        Some(fault) => spoil(&fault, kind, outcome),
        None => outcome,
    }
}

/// The faults that spoil a good answer rather than replace it. An answer that is already an
/// error (a bad parameter) is left alone: the request would have failed anyway.
fn spoil(fault: &Fault, kind: Kind, outcome: Outcome) -> Outcome {
    let body = match outcome {
        Outcome::Respond { status: 200, body, .. } => body,
        other => return other,
    };
    match (fault, kind) {
        (Fault::Oversized { bytes, content_length }, _) => {
            faults::oversized(kind, body, *bytes, *content_length)
        }
        (Fault::NulInContent, Kind::Chat) => faults::with_nul(body),
        (Fault::NonFiniteEmbedding { literal }, Kind::Embeddings) => faults::with_literal(body, literal),
        _ => Outcome::Respond { status: 200, body, retry_after: None },
    }
}

fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// The stand-in's deterministic chat answer to `prompt`.
pub fn chat_reply(model: &str, prompt: &str, images: usize) -> String {
    if images > 0 {
        format!("Echo from {model} ({images} images): {prompt}")
    } else {
        format!("Echo from {model}: {prompt}")
    }
}

/// The stand-in's deterministic "translation": the glossary applied, tagged with the pair.
pub fn translation_reply(text: &str, source: &str, target: &str, terms: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (s, t) in terms {
        out = out.replace(s.as_str(), t);
    }
    format!("[{source}->{target}] {out}")
}

fn completion(model: &str, content: String, prompt_tokens: u64, finish: &str, id: u64) -> Outcome {
    let completion_tokens = approx_tokens(&content);
    Outcome::Respond {
        status: 200,
        body: json!({
            "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": finish, "index": 0, "logprobs": null}],
            "object": "chat.completion",
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
            "created": 1_726_127_645,
            "system_fingerprint": null,
            "model": model,
            "id": format!("chatcmpl-standin-{id}"),
        }),
        retry_after: None,
    }
}

fn chat(body: &Value, model: &str, id: u64) -> Outcome {
    let Some(messages) = body.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return invalid_parameter("messages must be a non-empty array.", id);
    };
    if let Some(t) = body.get("temperature") {
        if !t.as_f64().is_some_and(|t| (0.0..2.0).contains(&t)) {
            return invalid_parameter("Range of temperature should be [0.0, 2.0)", id);
        }
    }
    if let Some(p) = body.get("top_p") {
        if !p.as_f64().is_some_and(|p| p > 0.0 && p <= 1.0) {
            return invalid_parameter("Range of top_p should be (0.0, 1.0]", id);
        }
    }
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| approx_tokens(&content_text(m.get("content").unwrap_or(&Value::Null)).0))
        .sum();
    if model.starts_with("qwen-mt-") {
        let Some(options) = body.get("translation_options") else {
            return invalid_parameter("translation_options is required for Qwen-MT models.", id);
        };
        if messages.len() != 1 || messages[0].get("role").and_then(Value::as_str) != Some("user") {
            return invalid_parameter("Qwen-MT models take exactly one user message.", id);
        }
        let Some(target) = options.get("target_lang").and_then(Value::as_str) else {
            return invalid_parameter("translation_options.target_lang is required.", id);
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
        return completion(
            model,
            translation_reply(&text, source, target, &terms),
            prompt_tokens,
            "stop",
            id,
        );
    }
    let Some(user) = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return invalid_parameter("messages must contain a user message.", id);
    };
    let (text, images) = content_text(user.get("content").unwrap_or(&Value::Null));
    let mut reply = chat_reply(model, &text, images);
    let mut finish = "stop";
    if let Some(max) = body.get("max_tokens").and_then(Value::as_u64) {
        let words: Vec<&str> = reply.split(' ').collect();
        if words.len() as u64 > max {
            reply = words[..max as usize].join(" ");
            finish = "length";
        }
    }
    completion(model, reply, prompt_tokens, finish, id)
}

/// Inputs one request may carry, as the compatible-mode API documents it.
fn max_batch(model: &str) -> usize {
    if model == "text-embedding-v1" || model == "text-embedding-v2" {
        25
    } else {
        10
    }
}

fn dimensions_of(model: &str) -> (&'static [usize], usize) {
    match model {
        "text-embedding-v4" => (&[2048, 1536, 1024, 768, 512, 256, 128, 64], 1024),
        "text-embedding-v3" => (&[1024, 768, 512, 256, 128, 64], 1024),
        "text-embedding-v1" | "text-embedding-v2" => (&[1536], 1536),
        "qwen3-vl-embedding" => (&[2560, 2048, 1536, 1024, 768, 512, 256], 2560),
        "tongyi-embedding-vision-plus" => (&[1152], 1152),
        "tongyi-embedding-vision-flash" => (&[768], 768),
        _ => (&[1024], 1024),
    }
}

fn embeddings(body: &Value, model: &str, inputs: &[String], id: u64) -> Outcome {
    if inputs.is_empty() || inputs.iter().any(String::is_empty) {
        return invalid_parameter(
            "<400> InternalError.Algo.InvalidParameter: Value error, input should not be empty.",
            id,
        );
    }
    let limit = max_batch(model);
    if inputs.len() > limit {
        return invalid_parameter(
            &format!("<400> InternalError.Algo.InvalidParameter: Value error, batch size is invalid, it should not be larger than {limit}."),
            id,
        );
    }
    let (allowed, default) = dimensions_of(model);
    let dim = match body.get("dimensions") {
        None => default,
        Some(d) => match d.as_u64().map(|d| d as usize).filter(|d| allowed.contains(d)) {
            Some(d) => d,
            None => {
                return invalid_parameter(
                    &format!("<400> InternalError.Algo.InvalidParameter: Value error, dimensions should be one of {allowed:?}."),
                    id,
                )
            }
        },
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embedding_for(text, dim)}))
        .collect();
    let tokens: u64 = inputs.iter().map(|t| approx_tokens(t)).sum();
    Outcome::Respond {
        status: 200,
        body: json!({
            "data": data,
            "model": model,
            "object": "list",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "id": format!("standin-{id}"),
        }),
        retry_after: None,
    }
}

fn control_endpoint(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Response<AnyBody> {
    let ok = |v: Value| json_response(200, &v, None);
    let bad = |m: String| json_response(400, &json!({"error": m}), None);
    match (method, path) {
        ("GET", "stats") => ok(serde_json::to_value(shared.stats()).unwrap()),
        ("GET", "requests") => ok(serde_json::to_value(&*shared.log.lock().unwrap()).unwrap()),
        ("GET", "config") => ok(serde_json::to_value(&*shared.config.lock().unwrap()).unwrap()),
        ("POST", "config") => {
            let patch: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return bad(e.to_string()),
            };
            let mut config = shared.config.lock().unwrap();
            let mut current = serde_json::to_value(&*config).unwrap();
            if let (Some(cur), Some(p)) = (current.as_object_mut(), patch.as_object()) {
                for (k, v) in p {
                    cur.insert(k.clone(), v.clone());
                }
            }
            match serde_json::from_value::<Config>(current) {
                Ok(c) => {
                    *config = c;
                    ok(serde_json::to_value(&*config).unwrap())
                }
                Err(e) => bad(e.to_string()),
            }
        }
        ("POST", "script") => {
            #[derive(serde::Deserialize)]
            struct Script {
                input: String,
                faults: Vec<Fault>,
            }
            match serde_json::from_slice::<Script>(body) {
                Ok(s) => {
                    shared.script(&s.input, s.faults);
                    ok(json!({"scripted": s.input}))
                }
                Err(e) => bad(e.to_string()),
            }
        }
        ("POST", "reset") => {
            shared.reset();
            ok(json!({"reset": true}))
        }
        _ => json_response(
            404,
            &json!({"error": format!("no control endpoint {method} /_standin/{path}")}),
            None,
        ),
    }
}
