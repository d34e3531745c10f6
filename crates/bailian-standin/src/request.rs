//! What a model request is and what answering it comes to: the endpoint it went to
//! (`Kind`), the inputs the request log and scripted faults key on, and the `Outcome` each
//! endpoint module hands back. Every endpoint module and the batch runner use these; only
//! `handler` turns an outcome into HTTP.

use crate::chat::{content_text, last_user};
use crate::errors::Api;
use crate::multimodal;
use crate::rerank;
use crate::usage::Tokens;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Kind {
    /// Compatible-mode `/chat/completions`.
    Chat,
    /// Compatible-mode `/embeddings`.
    Embeddings,
    /// DashScope's native multimodal embedding.
    MultimodalEmbedding,
    /// DashScope's native text rerank.
    Rerank,
    /// OpenSearch's text generation.
    OpenSearch,
}

impl Kind {
    pub(crate) fn api(self) -> Api {
        match self {
            Kind::Chat | Kind::Embeddings => Api::Compatible,
            Kind::MultimodalEmbedding | Kind::Rerank => Api::Native,
            Kind::OpenSearch => Api::OpenSearch,
        }
    }
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
    /// 200 `text/event-stream` with these events; `broken` drops the connection after them.
    /// `tokens`: the whole answer's usage, whether or not an event reports it (the token
    /// limits count it).
    Stream {
        events: Vec<Bytes>,
        broken: bool,
        tokens: Tokens,
    },
    Reset,
}

/// What the request log and scripted faults key on: the last user message for chat and
/// OpenSearch, each input for embeddings (images as `image:` and the first 40 characters of
/// the URL or data URI, videos likewise), the query and then each document for rerank.
pub(crate) fn inputs_of(kind: Kind, body: &Value) -> Vec<String> {
    let messages = || body.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    match kind {
        Kind::Chat | Kind::OpenSearch => last_user(messages())
            .map(|m| vec![content_text(m.get("content").unwrap_or(&Value::Null)).0])
            .unwrap_or_default(),
        Kind::Embeddings => match body.get("input") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
            _ => Vec::new(),
        },
        Kind::MultimodalEmbedding => multimodal::inputs_of(body),
        Kind::Rerank => rerank::inputs_of(body),
    }
}
