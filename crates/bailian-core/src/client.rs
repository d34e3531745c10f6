//! The HTTP client for Bailian's compatible-mode API: one pooled keep-alive client, the retry
//! loop, and the mapping of every failure to an `AiError` with the key scrubbed out.

use crate::error::AiError;
use crate::ratelimit::RateLimiter;
use crate::request::{self, EmbeddingModel, Usage};
use crate::retry::{parse_retry_after, RetryPolicy};
use crate::secret::ApiKey;
use bytes::Bytes;
use serde_json::Value;
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
    pub limiter: Option<&'a RateLimiter>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

/// A connection that has not opened after this long is not going to; failing early lets the
/// retry policy try a fresh one instead of sitting out the whole request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
            .build()
            .map_err(|e| AiError::Internal { message: format!("cannot build the HTTP client: {e}") })?;
        Ok(Client { http })
    }

    /// `POST {endpoint}{path}` with retries; returns the body of the first success.
    pub async fn post(&self, call: &Call<'_>, path: &str, body: &Value) -> Result<Bytes, AiError> {
        let url = format!("{}{path}", call.endpoint);
        let payload = bytes_of(body);
        let mut attempt: u32 = 1;
        loop {
            if let Some(limiter) = call.limiter {
                limiter.acquire_request().await;
            }
            let failure = match self.attempt(call, &url, payload.clone()).await {
                Ok(v) => return Ok(v),
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

    async fn attempt(&self, call: &Call<'_>, url: &str, payload: Vec<u8>) -> Result<Bytes, Failure> {
        let sent = self
            .http
            .post(url)
            .bearer_auth(call.key.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(call.timeout)
            .body(payload)
            .send()
            .await;
        let response = sent.map_err(|e| transport_failure(call, e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response.bytes().await.map_err(|e| transport_failure(call, e))?;
        if !status.is_success() {
            let parsed = request::parse_error_body(&body);
            let message = if parsed.message.is_empty() {
                status.canonical_reason().unwrap_or("no message").to_string()
            } else {
                parsed.message
            };
            return Err(Failure {
                error: AiError::Provider {
                    model: call.model.into(),
                    status: status.as_u16(),
                    code: call.key.redact(if parsed.code.is_empty() { "-" } else { &parsed.code }),
                    message: call.key.redact(&message),
                    request_id: parsed.request_id.map(|r| call.key.redact(&r)),
                },
                retry_after,
            });
        }
        Ok(body)
    }

    /// `ai_gen`: the assistant's text.
    pub async fn chat(&self, call: &Call<'_>, body: &Value) -> Result<(String, Usage), AiError> {
        let v = self.post(call, "/chat/completions", body).await?;
        let out = request::parse_chat(call.model, &v)?;
        if let Some(limiter) = call.limiter {
            limiter.record_tokens(out.1.total_tokens);
        }
        Ok(out)
    }

    /// `ai_embed`: one vector per input, in input order.
    pub async fn embed(
        &self,
        call: &Call<'_>,
        body: &Value,
        expected: usize,
        dimension: Option<u32>,
    ) -> Result<Vec<Vec<f32>>, AiError> {
        let v = self.post(call, "/embeddings", body).await?;
        let (vectors, usage) = request::parse_embeddings(call.model, &v, expected, dimension)?;
        if let Some(limiter) = call.limiter {
            limiter.record_tokens(usage.total_tokens);
        }
        Ok(vectors)
    }
}

/// Embeds `inputs` in one request; when Bailian refuses the whole request with a 400 (one
/// input it will not take, such as data_inspection_failed), each input is sent alone so
/// only the offending ones fail. Results are per input, in order.
pub async fn embed_each(
    client: &Client,
    call: &Call<'_>,
    model: &EmbeddingModel,
    inputs: &[&str],
) -> Vec<Result<Vec<f32>, AiError>> {
    match client.embed(call, &model.body(inputs), inputs.len(), model.dimension).await {
        Ok(vectors) => vectors.into_iter().map(Ok).collect(),
        Err(AiError::Provider { status: 400, .. }) if inputs.len() > 1 => {
            let mut out = Vec::with_capacity(inputs.len());
            for input in inputs {
                let one = client.embed(call, &model.body(&[input]), 1, model.dimension).await;
                out.push(one.map(|mut v| v.remove(0)));
            }
            out
        }
        Err(e) => vec![Err(e); inputs.len()],
    }
}

fn bytes_of(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_default()
}

struct Failure {
    error: AiError,
    retry_after: Option<Duration>,
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
            detail: call.key.redact(&detail),
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
