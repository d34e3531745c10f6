//! Request handling: routing, the steps every model request goes through (key, body,
//! counters, rate limit, faults, latency), the file and batch API's requests (key, then
//! `files` or `batches`), and the control endpoints under `/_standin/`. What each endpoint
//! answers lives in its own module: `chat`, `embedding`, `multimodal`, `rerank`,
//! `opensearch`, `files`, `batches`.

use crate::batches::{self, Forced};
use crate::chat;
use crate::embedding::{self, fnv1a};
use crate::errors::{self, invalid, status_error, Api};
use crate::faults::{self, PaddedBody};
use crate::files;
use crate::limits::Dimension;
use crate::models;
use crate::multimodal;
use crate::opensearch;
use crate::request::{inputs_of, Kind, Outcome};
use crate::rerank;
use crate::state::{Account, Config, Fault, LoggedRequest, Shared};
use crate::stream::SseBody;
use crate::usage::{key_hint, Billing, Ending, Tokens};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body held in memory, one generated as it is sent (`Fault::Oversized`), or a stream of
/// server-sent events.
pub(crate) type AnyBody = Either<Full<Bytes>, Either<PaddedBody, SseBody>>;

fn full(bytes: Bytes) -> AnyBody {
    Either::Left(Full::new(bytes))
}

fn json_response(status: u16, body: &Value, retry_after: Option<f64>) -> Response<AnyBody> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    if let Some(ra) = retry_after {
        builder = builder.header("retry-after", format!("{}", ra.max(0.0).ceil() as u64));
    }
    builder.body(full(Bytes::from(serde_json::to_vec(body).unwrap_or_default()))).unwrap()
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

/// Where a request goes: which endpoint, and for OpenSearch the service in the path.
struct Route {
    kind: Kind,
    service: String,
}

const MULTIMODAL_EMBEDDING_PATH: &str =
    "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding";
const TEXT_RERANK_PATH: &str = "/api/v1/services/rerank/text-rerank/text-rerank";

fn route(path: &str) -> Option<Route> {
    let plain = |kind| Some(Route { kind, service: String::new() });
    if path == MULTIMODAL_EMBEDDING_PATH {
        return plain(Kind::MultimodalEmbedding);
    }
    if path == TEXT_RERANK_PATH {
        return plain(Kind::Rerank);
    }
    // {host}/v3/openapi/workspaces/{workspace_name}/text-generation/{service_id} (seed 003).
    if let Some(rest) = path.strip_prefix("/v3/openapi/workspaces/") {
        let mut parts = rest.split('/');
        if let (Some(ws), Some("text-generation"), Some(service), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            if !ws.is_empty() && !service.is_empty() {
                return Some(Route { kind: Kind::OpenSearch, service: service.to_string() });
            }
        }
        return None;
    }
    if path.ends_with("/chat/completions") {
        plain(Kind::Chat)
    } else if path.ends_with("/embeddings") {
        plain(Kind::Embeddings)
    } else {
        None
    }
}

/// Where compatible mode's file and batch APIs live (research §1.1).
const COMPATIBLE_BASE: &str = "/compatible-mode/v1";

/// The file and batch APIs: which one, and the rest of the path (`""`, `/{id}`, ...).
#[derive(Clone, Copy)]
enum Management {
    Files,
    Batches,
}

fn management(path: &str) -> Option<(Management, &str)> {
    let rest = path.strip_prefix(COMPATIBLE_BASE)?;
    let under = |api: &str| rest.strip_prefix(api).filter(|r| r.is_empty() || r.starts_with('/'));
    under("/files")
        .map(|r| (Management::Files, r))
        .or_else(|| under("/batches").map(|r| (Management::Batches, r)))
}

fn bearer(req: &Request<Incoming>) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string()
}

/// Whether `key` may call `api` under `config`.
fn authorized(config: &Config, api: Api, key: &str) -> bool {
    key_fits(api, key) && config.accepted_keys.as_ref().is_none_or(|keys| keys.iter().any(|k| k == key))
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
    if let Some((api, rest)) = management(&path) {
        let rest = rest.to_string();
        return manage(shared, req, api, &path, &rest).await;
    }
    let Some(route) = route(&path) else {
        let body = if path.starts_with("/api/v1/") {
            // DashScope's answer for a path it has no service at (dify-official-plugins#2236).
            errors::coded_body(
                Api::Native,
                "InvalidParameter",
                "url error, please check url！ For details, see: https://help.aliyun.com/zh/model-studio/error-code#error-url",
                0,
            )
        } else {
            errors::no_such_path(0)
        };
        let status = if path.starts_with("/api/v1/") { 400 } else { 404 };
        return Ok(json_response(status, &body, None));
    };
    let auth = bearer(&req);
    let id = shared.next_id();
    let mut guard = InFlight::new(shared.clone(), id, &path, &auth);
    let body = req.into_body().collect().await?.to_bytes();
    let outcome = answer(&shared, &route, &auth, &body, id, &mut guard).await;
    match outcome {
        Outcome::Respond { status, body, retry_after } => {
            guard.finish(status);
            Ok(json_response(status, &body, retry_after))
        }
        Outcome::Raw { status, headers, content_type, body } => {
            guard.finish(status);
            raw_response(status, content_type, headers, full(body))
        }
        Outcome::Padded { prefix, padding, suffix, content_length } => {
            guard.finish(200);
            let body = PaddedBody::new(prefix, padding, suffix, content_length, shared.clone());
            raw_response(200, "application/json", Vec::new(), Either::Right(Either::Left(body)))
        }
        Outcome::Stream { events, broken, .. } => {
            guard.finish(200);
            let delay = Duration::from_millis(shared.config.lock().unwrap().stream_chunk_delay_ms);
            let on_sent = report_as_sent(&shared, &guard.entry, guard.billing, &events);
            let body = SseBody::new(events, delay, broken, on_sent);
            let headers = vec![(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))];
            raw_response(200, "text/event-stream", headers, Either::Right(Either::Right(body)))
        }
        Outcome::Reset => {
            guard.finish(0);
            Err("connection reset by the stand-in (fault)".into())
        }
    }
}

/// A request to the file or batch API: the key, then what `files` or `batches` answers. It is
/// logged and counted like any request, but it is no model's and costs nothing, so it is not
/// in the usage book.
async fn manage(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    api: Management,
    path: &str,
    rest: &str,
) -> Result<Response<AnyBody>, BoxError> {
    let method = req.method().as_str().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let auth = bearer(&req);
    let id = shared.next_id();
    let mut guard = InFlight::new(shared.clone(), id, path, &auth);
    guard.metered = false;
    let body = req.into_body().collect().await?.to_bytes();
    let config = shared.config.lock().unwrap().clone();
    let outcome = if config.batch_chat {
        // The Batch Chat host has no file or batch API: Batch File is the normal host's.
        errors::respond(404, errors::no_such_path(id))
    } else if !authorized(&config, Api::Compatible, &auth) {
        errors::unauthorized(Api::Compatible, &auth, config.echo_key_in_errors, id)
    } else {
        let account = Account::of(&auth);
        match api {
            Management::Files => {
                files::handle(&shared, &config, &account, &method, rest, &query, &content_type, &body, id)
            }
            Management::Batches => batches::handle(&shared, &account, &method, rest, &query, &body, id),
        }
    };
    match outcome {
        Outcome::Respond { status, body, retry_after } => {
            guard.finish(status);
            Ok(json_response(status, &body, retry_after))
        }
        Outcome::Raw { status, headers, content_type, body } => {
            guard.finish(status);
            raw_response(status, content_type, headers, full(body))
        }
        Outcome::Padded { .. } | Outcome::Stream { .. } | Outcome::Reset => {
            guard.finish(500);
            let body = status_error(Api::Compatible, 500, id, "");
            Ok(json_response(500, &body, None))
        }
    }
}

/// What counts a stream's usage as its events are sent: each event that carries a `usage`
/// object adds what it reports beyond the previous one (an OpenSearch event carries the usage
/// so far, a compatible-mode stream only its last chunk), so a stream counts the usage of the
/// last such event it sent.
fn report_as_sent(
    shared: &Arc<Shared>,
    entry: &LoggedRequest,
    billing: Billing,
    events: &[Bytes],
) -> Box<dyn FnMut(usize) + Send> {
    let per_event: Vec<Option<Tokens>> = events.iter().map(|e| usage_of_event(e)).collect();
    if per_event.iter().all(Option::is_none) {
        return Box::new(|_| {});
    }
    let (shared, model, hint) = (shared.clone(), entry.model.clone(), entry.auth_hint.clone());
    let mut sent: Option<Tokens> = None;
    Box::new(move |i| {
        if let Some(Some(tokens)) = per_event.get(i) {
            let before = sent.unwrap_or_default();
            shared.usage.reported(&model, &hint, billing, &tokens.since(&before), sent.is_none());
            sent = Some(*tokens);
        }
    })
}

/// The usage an SSE event (`data: {...}`) carries, if any.
fn usage_of_event(event: &[u8]) -> Option<Tokens> {
    // Most chunks carry `"usage":null` or nothing: skip them without parsing.
    if !event.windows(9).any(|w| w == b"\"usage\":{") {
        return None;
    }
    let json = event.strip_prefix(b"data: ")?;
    serde_json::from_slice::<Value>(json).ok().as_ref().and_then(Tokens::of_answer)
}

/// Logs the request when it ends, counts it in the usage book, and counts it as aborted if
/// the client went away first (hyper drops the handler future when the connection closes).
struct InFlight {
    shared: Arc<Shared>,
    entry: LoggedRequest,
    done: bool,
    /// The limit that refused it, if one did.
    refused_by: Option<Dimension>,
    /// Counted in the usage book (a model request; not a file or batch request).
    metered: bool,
    /// At which price: the Batch Chat host's requests are batch work.
    billing: Billing,
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
        let billing = if shared.config.lock().unwrap().batch_chat { Billing::Batch } else { Billing::Live };
        InFlight { shared, entry, done: false, refused_by: None, metered: true, billing }
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
        let ending = match (self.done, self.entry.status, self.refused_by) {
            (false, _, _) | (true, 0, _) => Ending::Unanswered,
            (true, _, Some(Dimension::Requests)) => Ending::RpmLimit,
            (true, _, Some(Dimension::Tokens)) => Ending::TpmLimit,
            (true, status, None) => Ending::Status(status),
        };
        if self.metered {
            self.shared.usage.ended(&self.entry.model, &self.entry.auth_hint, self.billing, ending);
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

/// What the Batch Chat host refuses (`Config::batch_chat`): anything but chat, which it alone
/// serves (404, as for a path it has not), and a model outside its list (research §1.13). How
/// Bailian refuses that model is not documented: a 404 in the compatible-mode shape, in the
/// words of the stand-in's other models a path does not serve.
fn batch_chat_refusal(kind: Kind, model: &str, id: u64) -> Option<Outcome> {
    if kind != Kind::Chat {
        return Some(errors::respond(404, errors::no_such_path(id)));
    }
    // Without a model the request is refused as anywhere else ("Model not specified.").
    if model.is_empty() || models::batch_chat(model) {
        return None;
    }
    Some(errors::refuse(
        404,
        "model_not_supported",
        &format!("The model `{model}` is not supported by Batch Chat."),
        id,
    ))
}

/// The key prefix each API issues: `sk-` for Model Studio, `OS-` for OpenSearch (seed 003).
fn key_fits(api: Api, key: &str) -> bool {
    match api {
        Api::OpenSearch => key.starts_with("OS-"),
        _ => key.starts_with("sk-"),
    }
}

async fn answer(
    shared: &Shared,
    route: &Route,
    key: &str,
    raw: &[u8],
    id: u64,
    guard: &mut InFlight,
) -> Outcome {
    // The latency counts from here: the stand-in's own work before it answers (parsing the
    // request, its checks) is part of it, as a service's time to answer includes its own.
    let arrived = Instant::now();
    let entry = &mut guard.entry;
    let kind = route.kind;
    let api = kind.api();
    let config: Config = shared.config.lock().unwrap().clone();
    let parsed = serde_json::from_slice::<Value>(raw);
    // The model is known before the key is checked, so a refused key counts under it.
    entry.model = match (kind, &parsed) {
        (Kind::OpenSearch, _) => route.service.clone(),
        (_, Ok(body)) => body.get("model").and_then(Value::as_str).unwrap_or_default().to_string(),
        (_, Err(_)) => String::new(),
    };
    let model = entry.model.clone();
    if !authorized(&config, api, key) {
        return errors::unauthorized(api, key, config.echo_key_in_errors, id);
    }
    let body = match parsed {
        Ok(v) => v,
        Err(e) if api == Api::OpenSearch => return invalid(api, &format!("JSON parse error: {e}"), id),
        Err(_) => return invalid(api, "The request body is not valid JSON.", id),
    };
    let inputs = inputs_of(kind, &body);
    entry.inputs = inputs.clone();
    if config.log_bodies {
        entry.body = body.clone();
    }

    if config.batch_chat {
        if let Some(refusal) = batch_chat_refusal(kind, &model, id) {
            return refusal;
        }
    }

    // The stand-in has no accounts: a key is its account, and is kept only as a hash. The
    // Batch Chat host queues requests rather than refusing them (research §1.13): the live
    // limits do not apply there.
    let account = fnv1a(key.as_bytes());
    let (rpm, tpm) = if config.batch_chat { (None, None) } else { (config.rpm_limit, config.tpm_limit) };
    if let Err(refusal) = shared.limits.admit(account, &model, rpm, tpm, Instant::now()) {
        shared.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        entry.fault = Some(refusal.fault().into());
        guard.refused_by = Some(refusal.dimension);
        let body = match refusal.dimension {
            Dimension::Requests => status_error(api, 429, id, &model),
            Dimension::Tokens => errors::quota_exceeded(api, id),
        };
        return Outcome::Respond {
            status: 429,
            body,
            retry_after: config.retry_after_secs.map(|_| refusal.wait.as_secs_f64()),
        };
    }
    let c = &shared.counters;
    match kind {
        Kind::Chat | Kind::OpenSearch => c.chat_requests.fetch_add(1, Ordering::Relaxed),
        Kind::Embeddings | Kind::MultimodalEmbedding => c.embedding_requests.fetch_add(1, Ordering::Relaxed),
        Kind::Rerank => c.rerank_requests.fetch_add(1, Ordering::Relaxed),
    };
    c.inputs.fetch_add(inputs.len() as u64, Ordering::Relaxed);
    shared.usage.inputs(&model, &entry.auth_hint, guard.billing, inputs.len() as u64);

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
        tokio::time::sleep(Duration::from_millis(latency).saturating_sub(arrived.elapsed())).await;
    }
    match fault {
        Some(Fault::Status(429)) => {
            return Outcome::Respond {
                status: 429,
                body: status_error(api, 429, id, &model),
                retry_after: config.retry_after_secs,
            }
        }
        Some(Fault::Status(s)) => {
            return Outcome::Respond { status: s, body: status_error(api, s, id, &model), retry_after: None }
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            return Outcome::Respond {
                status: 429,
                body: status_error(api, 429, id, &model),
                retry_after: Some(retry_after_secs),
            }
        }
        Some(Fault::Inspection) => return errors::respond(400, errors::inspection(api, id)),
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
            return faults::rate_limited_raw(&retry_after, &status_error(api, 429, id, &model), entry)
        }
        Some(Fault::Redirect { status, location }) => return faults::redirect(status, &location, entry),
        Some(Fault::Hang)
        | Some(Fault::Delay(_))
        | Some(Fault::Oversized { .. })
        | Some(Fault::NulInContent)
        | Some(Fault::NonFiniteEmbedding { .. })
        | Some(Fault::StreamBreak { .. })
        | Some(Fault::StreamError { .. })
        | Some(Fault::NotJson)
        | Some(Fault::OffList)
        | Some(Fault::SchemaViolation)
        | None => {}
    }
    if model.is_empty() {
        return match api {
            Api::Compatible => invalid(api, "Model not specified.", id),
            // Model Studio's status-code page: 400 BadRequest.EmptyModel.
            _ => errors::respond(
                400,
                errors::coded_body(
                    api,
                    "BadRequest.EmptyModel",
                    "Required parameter \"model\" missing from request.",
                    id,
                ),
            ),
        };
    }
    if config.unavailable_models.contains(&model) {
        // OpenSearch names an unknown service 400 ServiceIdNotExist (status-code page).
        let status = if api == Api::OpenSearch { 400 } else { 404 };
        return Outcome::Respond { status, body: status_error(api, 404, id, &model), retry_after: None };
    }
    // Implicit cache: chat with the models that have it, unless the request asks for the
    // explicit cache, which excludes it (context-cache page: one or the other per request).
    let blocks = (kind == Kind::Chat
        && config.implicit_cache
        && models::implicit_cache(&model)
        && !chat::uses_explicit_cache(&body))
    .then(|| chat::cache_blocks(&body));
    let cached = blocks.as_ref().map_or(0, |b| shared.cache.hit(account, &model, b));
    let outcome = match kind {
        Kind::Chat => chat::chat(&body, &model, id, cached),
        Kind::Embeddings => embedding::embeddings(&body, &model, &inputs, id),
        Kind::MultimodalEmbedding => multimodal::embed(&body, &model, id),
        Kind::OpenSearch => opensearch::generate(&body, &model, id),
        Kind::Rerank => rerank::rerank(&body, &model, id),
    };
    // An answer (not a refusal) uses its tokens, reported or not, and leaves its prompt in the
    // cache.
    let answered = match &outcome {
        Outcome::Respond { status: 200..=299, body, .. } => Some(Tokens::of_answer(body)),
        Outcome::Stream { tokens, .. } => Some(Some(*tokens)),
        _ => None,
    };
    if let Some(tokens) = answered {
        let total = tokens.map_or(0, |t| t.total_tokens);
        shared.limits.answered(account, &model, total, tpm, Instant::now());
        if let Some(blocks) = &blocks {
            shared.cache.keep(account, &model, blocks);
        }
    }
    let outcome = match fault {
        Some(fault) => faults::spoil(&fault, kind, &body, outcome, id),
        None => outcome,
    };
    // A whole answer's usage is counted as it is handed over (a stream's, event by event, in
    // `handle`). The faults that spoil a 200 keep its usage as it was.
    let whole_answer = match &outcome {
        Outcome::Respond { status, .. } | Outcome::Raw { status, .. } => (200..300).contains(status),
        Outcome::Padded { .. } => true,
        Outcome::Stream { .. } | Outcome::Reset => false,
    };
    if let (true, Some(Some(tokens))) = (whole_answer, answered) {
        shared.usage.reported(&model, &entry.auth_hint, guard.billing, &tokens, true);
    }
    outcome
}

fn control_endpoint(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Response<AnyBody> {
    let ok = |v: Value| json_response(200, &v, None);
    let bad = |m: String| json_response(400, &json!({"error": m}), None);
    match (method, path) {
        ("GET", "stats") => ok(serde_json::to_value(shared.stats()).unwrap()),
        ("GET", "requests") => ok(serde_json::to_value(&*shared.log.lock().unwrap()).unwrap()),
        ("GET", "usage") => ok(serde_json::to_value(shared.usage.rows()).unwrap()),
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
        // `{}` releases every held batch, `{"id": "batch_..."}` one.
        ("POST", "batches/release") => {
            let id = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
            ok(json!({"released": shared.batches.release(id.as_deref())}))
        }
        (method, batch) if batch.starts_with("batches/") => {
            let parts: Vec<&str> = batch.split('/').collect();
            let forced = match (method, parts.as_slice()) {
                ("GET", [_, id]) => {
                    return match shared.batches.object(id) {
                        Some(object) => ok(object),
                        None => json_response(404, &json!({"error": format!("no batch {id}")}), None),
                    }
                }
                ("POST", [_, id, "expire"]) => (id, Forced::Expire),
                ("POST", [_, id, "fail"]) => (id, Forced::Fail),
                _ => {
                    return json_response(
                        404,
                        &json!({"error": format!("no control endpoint {method} /_standin/{path}")}),
                        None,
                    )
                }
            };
            let (id, forced) = forced;
            if shared.batches.force(id, forced) {
                ok(json!({"batch": id, "forced": format!("{forced:?}").to_lowercase()}))
            } else {
                bad(format!("batch {id} does not exist or is no longer validating or in progress"))
            }
        }
        _ => json_response(
            404,
            &json!({"error": format!("no control endpoint {method} /_standin/{path}")}),
            None,
        ),
    }
}
