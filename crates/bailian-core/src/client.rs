//! The HTTP client for every provider: one pooled keep-alive client, the retry loop, plain and
//! streamed (server-sent events) answers, and the mapping of every failure to an `AiError`
//! with the key scrubbed out.
//!
//! Whatever answers at `base_url` is not trusted: it may be Bailian, a gateway, a proxy or a
//! typo'd host. A body is read only up to `Call::max_response_bytes` (it lands in the memory of
//! a PostgreSQL backend), a redirect is not followed (it would send the prompt, and for the
//! same host the key, somewhere nobody deployed), and the parsers in `providers` refuse what
//! PostgreSQL cannot store. Nothing the provider sends can make this code panic.
//!
//! A stream is one attempt like any request: `Call::timeout` covers it from connect to its
//! last event, a stream that breaks or ends before its end marker is retried like a broken
//! connection, and dropping the future (a cancel) closes the connection at once.

use crate::error::{AiError, ResponseLimit};
use crate::meter::{Meter, Usage};
use crate::providers::{
    self, compatible, opensearch, sse, ChatOutcome, ChatRequest, EmbedInput, EmbeddingModel,
};
use crate::registry::Api;
use crate::retry::{parse_retry_after, RetryPolicy};
use crate::secret::ApiKey;
use crate::shared::Limiter;
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Everything one request to one deployed model needs.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    /// The deployed model_name, for messages.
    pub model: &'a str,
    /// Base URL without a trailing slash, e.g. `https://dashscope.aliyuncs.com/compatible-mode/v1`.
    pub endpoint: &'a str,
    pub key: &'a ApiKey,
    /// Per attempt, from connect to the last byte of the body.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// The bucket this call's requests are paced by (shared by every backend when the
    /// shared state is there).
    pub limiter: Option<&'a Limiter>,
    /// Who counts this call's requests, tokens and cost (and may refuse to send one).
    pub meter: Option<&'a dyn Meter>,
    /// The largest response body read, in bytes (`pg_bailian.max_response_size`). A success
    /// body that declares or turns out to be larger fails with `AiError::ResponseTooLarge`
    /// (not retried: the same question gets the same size of answer) as soon as that is
    /// known, without reading the rest.
    pub max_response_bytes: u64,
    /// The most bytes the answers this client is reading may hold together (half of
    /// `pg_bailian.max_batch_memory`; 0: no bound). An answer whose next bytes would pass it
    /// fails with `AiError::ResponseTooLarge` (`ResponseLimit::InFlight`).
    pub answers_budget: u64,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Bytes of the bodies being read now, by every request of this client (of the backend).
    held: Arc<AtomicU64>,
}

/// Bytes one body holds of `Client::held`, given back when the reading ends, however it ends
/// (a cancelled future drops it too).
struct Held<'a> {
    total: &'a AtomicU64,
    bytes: u64,
}

impl Held<'_> {
    /// Counts `n` more bytes; refused (and not counted) past the call's budget.
    fn add(&mut self, call: &Call<'_>, n: u64) -> Result<(), AiError> {
        let before = self.total.fetch_add(n, Ordering::Relaxed);
        if call.answers_budget > 0 && before.saturating_add(n) > call.answers_budget {
            self.total.fetch_sub(n, Ordering::Relaxed);
            return Err(AiError::ResponseTooLarge {
                model: call.model.into(),
                limit_bytes: call.answers_budget,
                limit: ResponseLimit::InFlight,
            });
        }
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A connection that has not opened after this long is not going to; failing early lets the
/// retry policy try a fresh one instead of sitting out the whole request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Of an error (non-2xx) body, only this much is read. What we use of it (code, message,
/// request id) is a few hundred bytes, and the status alone decides what the error is.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

/// Buffer reserved up front from a declared Content-Length: a length that lies costs at most
/// this, while an honest one of any allowed size still needs few reallocations.
const MAX_PREALLOCATION: u64 = 8 << 20;

/// How much of a redirect's Location a message shows.
const MAX_LOCATION_CHARS: usize = 200;

impl Client {
    pub fn new() -> Result<Client, AiError> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("pg_bailian/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(60))
            // base_url alone decides where prompts and the key go. A redirect to another host
            // would carry the prompt there (307/308 resend the body), and reqwest keeps the
            // Authorization header when the host stays the same, even from https to http.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AiError::Internal { message: format!("cannot build the HTTP client: {e}") })?;
        Ok(Client { http, held: Arc::new(AtomicU64::new(0)) })
    }

    /// Bytes of the bodies being read now (for tests and benchmarks).
    pub fn bytes_held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// `POST url` with retries; `read` turns a 2xx response into the result, returned with
    /// how long its attempt took. `inputs` is what the request carries (for the meter).
    async fn send<T, F, Fut>(
        &self,
        call: &Call<'_>,
        url: &str,
        body: &Value,
        inputs: u64,
        read: F,
    ) -> Result<(T, Duration), AiError>
    where
        F: Fn(reqwest::Response) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        if let Some(e) = call.meter.and_then(|m| m.intercept(body, inputs)) {
            return Err(e);
        }
        let payload = Bytes::from(bytes_of(body));
        let mut attempt: u32 = 1;
        loop {
            if let Some(limiter) = call.limiter {
                let waiting = |starts: bool| {
                    if let Some(m) = call.meter {
                        m.waiting(starts)
                    }
                };
                limiter.acquire(&waiting).await;
            }
            if let Some(m) = call.meter {
                if let Err(e) = m.admit() {
                    m.gave_up();
                    return Err(e);
                }
                m.sent(inputs, attempt > 1);
            }
            let started = tokio::time::Instant::now();
            let request = Exchange {
                method: reqwest::Method::POST,
                url,
                body: Some(("application/json", payload.clone())),
            };
            let failure = match self.attempt(call, &request).await {
                Ok(response) => match read(response).await {
                    Ok(v) => return Ok((v, started.elapsed())),
                    Err(f) => f,
                },
                Err(f) => f,
            };
            let status = match &failure.error {
                AiError::Provider { status, .. } => Some(*status),
                _ => None,
            };
            if let Some(m) = call.meter {
                m.failed(status, started.elapsed());
            }
            let retry = failure.error.is_retryable() && attempt <= call.retry.max_retries;
            let delay = call.retry.delay(attempt, failure.retry_after);
            if status == Some(429) {
                // Every user of the bucket backs off, not only this request.
                if let Some(limiter) = call.limiter {
                    limiter.throttled(delay);
                }
            }
            if retry {
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
            if let Some(m) = call.meter {
                m.gave_up();
            }
            return Err(final_error(call, failure.error, attempt));
        }
    }

    /// Counts an answer's tokens: against the bucket's token budget and with the meter.
    fn answered(call: &Call<'_>, usage: &Usage, latency: Duration) {
        if let Some(limiter) = call.limiter {
            limiter.record_tokens(usage.total_tokens);
        }
        if let Some(m) = call.meter {
            m.answered(usage, latency);
        }
    }

    /// `POST url` with retries; returns the body of the first success.
    pub async fn post(&self, call: &Call<'_>, url: &str, body: &Value) -> Result<Bytes, AiError> {
        Ok(self.post_timed(call, url, body, 1).await?.0)
    }

    async fn post_timed(
        &self,
        call: &Call<'_>,
        url: &str,
        body: &Value,
        inputs: u64,
    ) -> Result<(Bytes, Duration), AiError> {
        self.send(call, url, body, inputs, |response| read_success_body(call, &self.held, response)).await
    }

    async fn attempt(&self, call: &Call<'_>, request: &Exchange<'_>) -> Result<reqwest::Response, Failure> {
        let mut builder = self
            .http
            .request(request.method.clone(), request.url)
            .bearer_auth(call.key.expose())
            .timeout(call.timeout);
        if let Some((content_type, payload)) = &request.body {
            builder = builder.header(reqwest::header::CONTENT_TYPE, *content_type).body(payload.clone());
        }
        let response = builder.send().await.map_err(|e| transport_failure(call, e))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(Failure { error: redirect_error(call, request.url, &response), retry_after: None });
        }
        if !status.is_success() {
            return Err(provider_failure(call, response).await);
        }
        Ok(response)
    }

    /// A request that is not a model call (Bailian's file and batch API, `batchfile`): sent
    /// with the call's key, timeout, retry policy and response cap, and read whole; not paced
    /// by the call's limiter nor told to its meter, since it carries no tokens. It is retried
    /// like a model call, POSTs included, as the OpenAI SDK that Bailian's docs use retries
    /// its file and batch calls.
    pub(crate) async fn exchange(&self, call: &Call<'_>, request: &Exchange<'_>) -> Result<Bytes, AiError> {
        let mut attempt: u32 = 1;
        loop {
            let failure = match self.attempt(call, request).await {
                Ok(response) => match read_success_body(call, &self.held, response).await {
                    Ok(body) => return Ok(body),
                    Err(f) => f,
                },
                Err(f) => f,
            };
            if failure.error.is_retryable() && attempt <= call.retry.max_retries {
                tokio::time::sleep(call.retry.delay(attempt, failure.retry_after)).await;
                attempt += 1;
                continue;
            }
            return Err(final_error(call, failure.error, attempt));
        }
    }

    /// A chat call (`ai_gen`, `ai_chat`, `ai_translate`, `ai_gen_audio`), plain or streamed as
    /// `request` says.
    pub async fn chat(&self, call: &Call<'_>, request: &ChatRequest) -> Result<ChatOutcome, AiError> {
        if request.stream {
            let (out, latency) = self
                .send(call, &request.url, &request.body, 1, |response| {
                    read_stream(call, &self.held, request, response)
                })
                .await?;
            Self::answered(call, &out.tokens(), latency);
            return Ok(out);
        }
        let (body, latency) = self.post_timed(call, &request.url, &request.body, 1).await?;
        let parsed = parse_plain(call, request, &body);
        // An answer we cannot use was still answered, and billed: its usage counts.
        let usage = match &parsed {
            Ok(out) => out.tokens(),
            Err(_) => usage_of_body(&body),
        };
        Self::answered(call, &usage, latency);
        parsed.map_err(|e| redacted(call, e))
    }

    /// Each document's relevance to `query` by a rerank model at `url`, in document order.
    pub async fn rerank(
        &self,
        call: &Call<'_>,
        model_type: &str,
        url: &str,
        query: &str,
        documents: &[&str],
    ) -> Result<Vec<f64>, AiError> {
        let body = crate::providers::rerank::body(model_type, query, documents);
        let (v, latency) = self.post_timed(call, url, &body, documents.len() as u64).await?;
        let parsed = crate::providers::rerank::scores(call.model, &v, documents.len());
        let usage = parsed.as_ref().map_or_else(|_| usage_of_body(&v), |(_, u)| *u);
        Self::answered(call, &usage, latency);
        Ok(parsed.map_err(|e| redacted(call, e))?.0)
    }

    /// One vector per input, in input order.
    pub async fn embed(
        &self,
        call: &Call<'_>,
        model: &EmbeddingModel,
        inputs: &[EmbedInput<'_>],
    ) -> Result<Vec<Vec<f32>>, AiError> {
        let (v, latency) =
            self.post_timed(call, &model.url, &model.body(inputs), inputs.len() as u64).await?;
        let parsed = model.parse(call.model, &v, inputs.len());
        let usage = parsed.as_ref().map_or_else(|_| usage_of_body(&v), |(_, u)| *u);
        Self::answered(call, &usage, latency);
        Ok(parsed.map_err(|e| redacted(call, e))?.0)
    }
}

/// The `usage` of an answer body we could not otherwise use (none if it is not JSON).
fn usage_of_body(body: &[u8]) -> Usage {
    serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("usage").map(Usage::of)).unwrap_or_default()
}

/// A whole (non-stream) answer, by the provider that sent it.
fn parse_plain(call: &Call<'_>, request: &ChatRequest, body: &[u8]) -> Result<ChatOutcome, AiError> {
    match request.api {
        Api::OpenSearch => opensearch::parse_chat(call.model, request.model_type, body),
        _ => compatible::parse_chat(call.model, body),
    }
}

/// Assembles a streamed answer. Bytes count against `max_response_bytes` as they arrive. A
/// 2xx answer that is not an event stream (a gateway that ignored `stream`) is read whole.
async fn read_stream(
    call: &Call<'_>,
    held: &AtomicU64,
    request: &ChatRequest,
    mut response: reqwest::Response,
) -> Result<ChatOutcome, Failure> {
    let plain = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
    let fail = |error: AiError| Failure { error: redacted(call, error), retry_after: None };
    if plain {
        let body = read_success_body(call, held, response).await?;
        return parse_plain(call, request, &body).map_err(fail);
    }
    let mut decoder = sse::Decoder::default();
    let mut events = Vec::new();
    let mut assembler = match request.api {
        Api::OpenSearch => Assembler::OpenSearch(opensearch::StreamAssembler::default()),
        _ => Assembler::Compatible(compatible::StreamAssembler::default()),
    };
    // What the assembler keeps grows with the bytes read (the answer's text, audio pieces),
    // so the bytes read are what this answer holds.
    let mut holding = Held { total: held, bytes: 0 };
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Err(transport_failure(call, e)),
        };
        if holding.bytes + chunk.len() as u64 > call.max_response_bytes {
            return Err(Failure {
                error: AiError::ResponseTooLarge {
                    model: call.model.into(),
                    limit_bytes: call.max_response_bytes,
                    limit: ResponseLimit::OneAnswer,
                },
                retry_after: None,
            });
        }
        holding.add(call, chunk.len() as u64).map_err(|error| Failure { error, retry_after: None })?;
        decoder.feed(&chunk, &mut events);
        for event in events.drain(..) {
            assembler.feed(call.model, request.model_type, &event).map_err(fail)?;
        }
    }
    decoder.finish(&mut events);
    for event in events.drain(..) {
        assembler.feed(call.model, request.model_type, &event).map_err(fail)?;
    }
    assembler.finish(call).map_err(|error| Failure { error, retry_after: None })
}

enum Assembler {
    Compatible(compatible::StreamAssembler),
    OpenSearch(opensearch::StreamAssembler),
}

impl Assembler {
    fn feed(&mut self, model: &str, model_type: &str, event: &sse::Event) -> Result<(), AiError> {
        match self {
            Assembler::Compatible(a) => a.feed(model, event),
            Assembler::OpenSearch(a) => a.feed(model, model_type, event),
        }
    }

    /// The answer; an error of a retryable kind (a stream cut short) is retried.
    fn finish(self, call: &Call<'_>) -> Result<ChatOutcome, AiError> {
        match self {
            // Without `[DONE]` the answer may be cut short anywhere: retried like a broken
            // connection rather than returned incomplete.
            Assembler::Compatible(a) if !a.is_done() => Err(AiError::Connect {
                model: call.model.into(),
                endpoint: call.endpoint.into(),
                detail: "the stream ended before its last event (data: [DONE])".into(),
                attempts: 1,
            }),
            Assembler::Compatible(a) => a.finish(call.model).map_err(|e| redacted(call, e)),
            Assembler::OpenSearch(a) => a.finish(call.model).map_err(|e| redacted(call, e)),
        }
    }
}

/// Embeds `inputs` in one request; when the provider refuses the whole request with a 400
/// (one input it will not take, such as data_inspection_failed), each input is sent alone so
/// only the offending ones fail. Results are per input, in order.
/// The embeddings of `a` and `b`: one request where the model takes two inputs at once, two
/// where it takes one (`multimodal-embedding-v1`).
pub async fn embed_pair(
    client: &Client,
    call: &Call<'_>,
    model: &EmbeddingModel,
    a: &str,
    b: &str,
) -> Result<Vec<Vec<f32>>, AiError> {
    if model.per_request >= 2 {
        return client.embed(call, model, &[EmbedInput::Text(a), EmbedInput::Text(b)]).await;
    }
    let mut first = client.embed(call, model, &[EmbedInput::Text(a)]).await?;
    first.extend(client.embed(call, model, &[EmbedInput::Text(b)]).await?);
    Ok(first)
}

pub async fn embed_each(
    client: &Client,
    call: &Call<'_>,
    model: &EmbeddingModel,
    inputs: &[EmbedInput<'_>],
) -> Vec<Result<Vec<f32>, AiError>> {
    match client.embed(call, model, inputs).await {
        Ok(vectors) => vectors.into_iter().map(Ok).collect(),
        Err(AiError::Provider { status: 400, .. }) if inputs.len() > 1 => {
            let mut out = Vec::with_capacity(inputs.len());
            for input in inputs {
                let one = client.embed(call, model, std::slice::from_ref(input)).await;
                out.push(one.map(|mut v| v.remove(0)));
            }
            out
        }
        Err(e) => vec![Err(e); inputs.len()],
    }
}

/// A body as far as it was read: all of it, or the first `limit` bytes of a longer one.
enum Capped {
    Complete(Bytes),
    Over(Bytes),
}

/// Reads `response`'s body chunk by chunk and stops as soon as it goes past `limit`, so an
/// endless or huge body costs at most `limit` bytes plus one chunk, however long it is. With
/// `holding`, the bytes count against the client's budget for answers being read.
async fn read_capped(
    call: &Call<'_>,
    mut response: reqwest::Response,
    limit: u64,
    mut holding: Option<Held<'_>>,
) -> Result<Capped, Failure> {
    let reserve = response.content_length().unwrap_or(0).min(limit).min(MAX_PREALLOCATION);
    if let Some(holding) = holding.as_mut() {
        holding.add(call, reserve).map_err(|error| Failure { error, retry_after: None })?;
    }
    let mut body = BytesMut::with_capacity(usize::try_from(reserve).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_failure(call, e))? {
        // `body` never holds more than `limit`, so `room` cannot underflow.
        let room = limit - body.len() as u64;
        if chunk.len() as u64 > room {
            // Dropping `response` on return closes the connection instead of draining it.
            body.extend_from_slice(&chunk[..room as usize]);
            return Ok(Capped::Over(body.freeze()));
        }
        if let Some(holding) = holding.as_mut() {
            let more = (body.len() + chunk.len()) as u64;
            if more > holding.bytes {
                holding
                    .add(call, more - holding.bytes)
                    .map_err(|error| Failure { error, retry_after: None })?;
            }
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Complete(body.freeze()))
}

/// The body of a 2xx answer, refused as soon as it is known to exceed the cap: at once when
/// Content-Length says so, else when the bytes read go past it (chunked encoding).
async fn read_success_body(
    call: &Call<'_>,
    held: &AtomicU64,
    response: reqwest::Response,
) -> Result<Bytes, Failure> {
    let too_large = || Failure {
        error: AiError::ResponseTooLarge {
            model: call.model.into(),
            limit_bytes: call.max_response_bytes,
            limit: ResponseLimit::OneAnswer,
        },
        retry_after: None,
    };
    if response.content_length().is_some_and(|n| n > call.max_response_bytes) {
        return Err(too_large());
    }
    let holding = Held { total: held, bytes: 0 };
    match read_capped(call, response, call.max_response_bytes, Some(holding)).await? {
        Capped::Complete(body) => Ok(body),
        Capped::Over(_) => Err(too_large()),
    }
}

/// A non-2xx answer as `AiError::Provider`, with the provider's code, message and request id
/// from its body, scrubbed of keys.
///
/// Only the first `ERROR_BODY_LIMIT` bytes (or the cap, if smaller) are read, and an error
/// body larger than that is not an error of its own: its status is what matters (a 429 must
/// stay retryable, a 401 must still say the key is wrong), while ResponseTooLarge would hide
/// it. The prefix is still good for a message (they are cut to 200 characters when the body
/// is not JSON anyway).
async fn provider_failure(call: &Call<'_>, response: reqwest::Response) -> Failure {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    // At most 64 kB each: not counted against the budget for answers.
    let body = match read_capped(call, response, call.max_response_bytes.min(ERROR_BODY_LIMIT), None).await {
        Ok(Capped::Complete(body) | Capped::Over(body)) => body,
        Err(failure) => return failure,
    };
    let parsed = providers::parse_error_body(&body);
    let message = if parsed.message.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_string()
    } else {
        parsed.message
    };
    let code = if parsed.code.is_empty() { "-".to_string() } else { parsed.code };
    let error = AiError::Provider {
        model: call.model.into(),
        status: status.as_u16(),
        code,
        message,
        request_id: parsed.request_id,
    };
    Failure { error: redacted(call, error), retry_after }
}

/// A 3xx answer, which is not followed (see `Client::new`) and not retried: the same request
/// gets the same redirect. Its status stays in the SQLSTATE (ZB301, ZB302, ...).
fn redirect_error(call: &Call<'_>, url: &str, response: &reqwest::Response) -> AiError {
    let location = response.headers().get(reqwest::header::LOCATION).map(|v| v.as_bytes());
    AiError::Provider {
        model: call.model.into(),
        status: response.status().as_u16(),
        code: "redirect".into(),
        message: format!(
            "the endpoint answered with a redirect {}, which was not followed (pg_bailian \
             follows no redirects); deploy the model with the base_url requests should go to",
            describe_location(call, url, location)
        ),
        request_id: None,
    }
}

/// Where a redirect points, for a message: resolved against the request URL, without user
/// info, query or fragment (where tokens travel), scrubbed of keys and cut short.
fn describe_location(call: &Call<'_>, url: &str, location: Option<&[u8]>) -> String {
    let Some(raw) = location else { return "without a Location".into() };
    let target = std::str::from_utf8(raw).ok().and_then(|l| reqwest::Url::parse(url).ok()?.join(l).ok());
    let Some(mut target) = target else { return "to a Location that is not a URL".into() };
    let _ = target.set_username("");
    let _ = target.set_password(None);
    target.set_query(None);
    target.set_fragment(None);
    let shown: String = call.key.redact(target.as_str()).chars().take(MAX_LOCATION_CHARS).collect();
    format!("to {}", providers::without_nul(&shown))
}

/// A parse error's detail may quote the body, and a gateway may echo the request (its
/// Authorization header included): the key is scrubbed out, whatever its shape.
pub(crate) fn redacted(call: &Call<'_>, e: AiError) -> AiError {
    match e {
        AiError::MalformedResponse { model, detail } => {
            AiError::MalformedResponse { model, detail: call.key.redact(&detail) }
        }
        AiError::Provider { model, status, code, message, request_id } => AiError::Provider {
            model,
            status,
            code: call.key.redact(&code),
            message: call.key.redact(&message),
            request_id: request_id.map(|r| call.key.redact(&r)),
        },
        other => other,
    }
}

fn bytes_of(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_default()
}

struct Failure {
    error: AiError,
    retry_after: Option<Duration>,
}

/// One HTTP request: its method, URL and body (content type and bytes), if it has one.
pub(crate) struct Exchange<'a> {
    pub method: reqwest::Method,
    pub url: &'a str,
    pub body: Option<(&'a str, Bytes)>,
}

/// A reqwest error, described by its innermost cause ("Connection refused") rather than the
/// outer "error sending request" wrapper.
fn transport_failure(call: &Call<'_>, e: reqwest::Error) -> Failure {
    let error = if e.is_timeout() {
        AiError::Timeout { model: call.model.into(), timeout: call.timeout, attempts: 1 }
    } else {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        if e.is_body() || e.is_decode() {
            detail = format!("connection broken while reading the response: {detail}");
        }
        AiError::Connect {
            model: call.model.into(),
            endpoint: call.endpoint.into(),
            detail: call.key.redact(&providers::without_nul(&detail)),
            attempts: 1,
        }
    };
    Failure { error, retry_after: None }
}

/// The error reported once the retry loop stops, carrying the number of attempts made.
fn final_error(call: &Call<'_>, error: AiError, attempts: u32) -> AiError {
    match error {
        AiError::Provider { status, code, message, .. } if status == 429 || status >= 500 => {
            AiError::RetriesExhausted {
                model: call.model.into(),
                attempts,
                last: format!("HTTP {status} {code}: {message}"),
            }
        }
        AiError::Timeout { model, timeout, .. } => AiError::Timeout { model, timeout, attempts },
        AiError::Connect { model, endpoint, detail, .. } => {
            AiError::Connect { model, endpoint, detail, attempts }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "sk-unittest0123456789";

    fn describe(key: &ApiKey, location: &[u8]) -> String {
        let call = Call {
            model: "m",
            endpoint: "https://gw.example/compatible-mode/v1",
            key,
            timeout: Duration::from_secs(1),
            retry: RetryPolicy { max_retries: 0, initial_delay: Duration::ZERO, max_delay: Duration::ZERO },
            limiter: None,
            meter: None,
            max_response_bytes: 1024,
            answers_budget: 0,
        };
        describe_location(&call, "https://gw.example/compatible-mode/v1/chat/completions", Some(location))
    }

    #[test]
    fn locations_are_shown_without_secrets() {
        let key = ApiKey::new(KEY);
        assert_eq!(
            describe(&key, b"https://user:pw@other.example/v1/chat?token=abc#frag"),
            "to https://other.example/v1/chat"
        );
        assert_eq!(describe(&key, b"/login"), "to https://gw.example/login");
        let shown = describe(&key, format!("https://x.example/{KEY}/sk-another12345678").as_bytes());
        assert!(!shown.contains("unittest0123456789") && !shown.contains("another12345678"), "{shown}");
        assert_eq!(describe(&key, b"http://[bad"), "to a Location that is not a URL");
        assert_eq!(describe(&key, b"\xff\xfe"), "to a Location that is not a URL");
    }

    proptest! {
        // The Location header is provider bytes: any of them make a short message without NUL
        // or key, and no panic.
        #[test]
        fn any_location_is_safe_to_show(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let shown = describe(&ApiKey::new(KEY), &raw);
            prop_assert!(!shown.contains('\0'));
            prop_assert!(!shown.contains("unittest0123456789"));
            prop_assert!(shown.chars().count() <= MAX_LOCATION_CHARS + 3);
        }

        #[test]
        fn any_location_string_is_safe_to_show(raw in "\\PC*") {
            let shown = describe(&ApiKey::new(KEY), raw.as_bytes());
            prop_assert!(!shown.contains('\0'));
            prop_assert!(shown.chars().count() <= MAX_LOCATION_CHARS + 3);
        }

        #[test]
        fn a_key_anywhere_in_a_location_is_not_shown(before in "\\PC{0,40}", after in "\\PC{0,40}") {
            let shown = describe(&ApiKey::new(KEY), format!("{before}{KEY}{after}").as_bytes());
            prop_assert!(!shown.contains("unittest0123456789"), "{}", shown);
        }
    }
}
