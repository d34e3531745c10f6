//! Answers for the faults that model an endpoint a client must not trust (the variants of
//! `Fault` after `Reset`): bodies too large to hold, text PostgreSQL cannot store, numbers
//! beyond f32, any Retry-After value, redirects. Each is Bailian's normal answer with one
//! thing wrong, so a client test sees that one problem and no other.

use crate::chat;
use crate::opensearch;
use crate::request::{Kind, Outcome};
use crate::state::{Fault, LoggedRequest, Shared};
use crate::structured;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use serde_json::Value;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Where the padding goes in the serialized answer; split out again after serializing, so the
/// padding is never built as one string.
const PADDING_MARKER: &str = "@@standin-padding@@";

/// Where `NonFiniteEmbedding`'s literal goes: serde_json cannot write 1e39 into an f32 array
/// (it writes what it was given, and has no way to write an out-of-range number), so the
/// literal replaces a quoted marker in the text.
const LITERAL_MARKER: &str = "@@standin-literal@@";

/// What padding is made of: a JSON string of `x`, handed out in slices of this block.
static PADDING: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// Oversized: the 200 answer `body` with padding such that the whole is `bytes` long.
pub(crate) fn oversized(kind: Kind, mut body: Value, bytes: u64, content_length: bool) -> Outcome {
    // Text generation pads what a runaway generation makes long: the text.
    let text_at = match kind {
        Kind::Chat => Some("/choices/0/message/content"),
        Kind::OpenSearch => Some("/result/text"),
        Kind::Embeddings | Kind::MultimodalEmbedding | Kind::Rerank => None,
    };
    match text_at {
        Some(pointer) => {
            if let Some(content) = body.pointer_mut(pointer) {
                let text = content.as_str().unwrap_or_default();
                *content = Value::String(format!("{text}{PADDING_MARKER}"));
            }
        }
        None => {
            if let Some(fields) = body.as_object_mut() {
                fields.insert("x_standin_padding".into(), PADDING_MARKER.into());
            }
        }
    }
    let text = serde_json::to_string(&body).unwrap_or_default();
    let (prefix, suffix) = text.split_once(PADDING_MARKER).unwrap_or((&text, ""));
    Outcome::Padded {
        padding: bytes.saturating_sub((prefix.len() + suffix.len()) as u64),
        prefix: Bytes::from(prefix.to_string()),
        suffix: Bytes::from(suffix.to_string()),
        content_length,
    }
}

/// NulInContent: the answer with a NUL inside its text at `pointer` (serde_json writes
/// `\u0000`).
pub(crate) fn with_nul(mut body: Value, pointer: &str) -> Outcome {
    if let Some(content) = body.pointer_mut(pointer) {
        let text = content.as_str().unwrap_or_default();
        *content = Value::String(format!("{text}\u{0}and after the NUL"));
    }
    Outcome::Respond { status: 200, body, retry_after: None }
}

/// NonFiniteEmbedding: the embeddings answer (compatible `data` or native
/// `output.embeddings`) with the last value of the last vector written as `literal`.
pub(crate) fn with_literal(mut body: Value, literal: &str) -> Outcome {
    let vectors = if body.get("data").is_some() { "/data" } else { "/output/embeddings" };
    let last_value = body
        .pointer_mut(vectors)
        .and_then(Value::as_array_mut)
        .and_then(|data| data.last_mut())
        .and_then(|item| item.get_mut("embedding"))
        .and_then(Value::as_array_mut)
        .and_then(|values| values.last_mut());
    if let Some(value) = last_value {
        *value = LITERAL_MARKER.into();
    }
    let text = serde_json::to_string(&body).unwrap_or_default();
    let text = text.replacen(&format!("\"{LITERAL_MARKER}\""), literal, 1);
    Outcome::Raw { status: 200, headers: Vec::new(), content_type: "application/json", body: text.into() }
}

/// The faults that spoil a good answer rather than replace it. An answer that is already an
/// error (a bad parameter) is left alone: the request would have failed anyway. The stream
/// faults apply to streams only; the others to whole bodies only. `request` is the request's
/// body, for the faults that depend on what it asked (`response_format`).
pub(crate) fn spoil(fault: &Fault, kind: Kind, request: &Value, outcome: Outcome, id: u64) -> Outcome {
    if let Outcome::Stream { mut events, tokens, .. } = outcome {
        return match fault {
            Fault::StreamBreak { after } => {
                events.truncate(*after);
                Outcome::Stream { events, broken: true, tokens }
            }
            Fault::StreamError { after } => {
                events.truncate(*after);
                events.push(match kind {
                    Kind::OpenSearch => opensearch::moderation_event(id),
                    _ => chat::moderation_event(id),
                });
                Outcome::Stream { events, broken: false, tokens }
            }
            _ => Outcome::Stream { events, broken: false, tokens },
        };
    }
    let body = match outcome {
        Outcome::Respond { status: 200, body, .. } => body,
        other => return other,
    };
    match (fault, kind) {
        (Fault::Oversized { bytes, content_length }, _) => oversized(kind, body, *bytes, *content_length),
        (Fault::NulInContent, Kind::Chat) => with_nul(body, "/choices/0/message/content"),
        (Fault::NulInContent, Kind::OpenSearch) => with_nul(body, "/result/text"),
        (Fault::NonFiniteEmbedding { literal }, Kind::Embeddings | Kind::MultimodalEmbedding) => {
            with_literal(body, literal)
        }
        (Fault::NotJson | Fault::OffList | Fault::SchemaViolation, Kind::Chat) => Outcome::Respond {
            status: 200,
            body: structured::spoiled(fault, request, body),
            retry_after: None,
        },
        _ => Outcome::Respond { status: 200, body, retry_after: None },
    }
}

/// RateLimitedRaw: Bailian's 429 with `retry_after` as the header, byte for byte.
pub(crate) fn rate_limited_raw(retry_after: &str, body: &Value, entry: &mut LoggedRequest) -> Outcome {
    Outcome::Raw {
        status: 429,
        headers: header(RETRY_AFTER, retry_after, entry),
        content_type: "application/json",
        body: serde_json::to_vec(body).unwrap_or_default().into(),
    }
}

/// Redirect: what nginx answers for `return 302 <location>`.
pub(crate) fn redirect(status: u16, location: &str, entry: &mut LoggedRequest) -> Outcome {
    let status = if (300..=399).contains(&status) { status } else { 302 };
    let page = format!(
        "<html>\r\n<head><title>{status} Redirect</title></head>\r\n<body>\r\n\
         <center><h1>{status} Redirect</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    Outcome::Raw {
        status,
        headers: header(LOCATION, location, entry),
        content_type: "text/html",
        body: page.into(),
    }
}

/// The header if `value` can be one (visible ASCII, spaces, obs-text); else none, noted in
/// the request log so a test that scripted it can tell.
fn header(name: HeaderName, value: &str, entry: &mut LoggedRequest) -> Vec<(HeaderName, HeaderValue)> {
    match HeaderValue::from_bytes(value.as_bytes()) {
        Ok(v) => vec![(name, v)],
        Err(_) => {
            if let Some(fault) = entry.fault.as_mut() {
                fault.push_str(&format!(" ({name} left out: not a valid header value)"));
            }
            Vec::new()
        }
    }
}

/// The body of an `Outcome::Padded`: prefix, then padding in 64 kB slices of a static block,
/// then suffix, produced only as fast as the connection takes it. The length is declared
/// (hyper writes Content-Length from an exact size hint) or not (chunked encoding).
pub(crate) struct PaddedBody {
    prefix: Bytes,
    padding: u64,
    suffix: Bytes,
    declared: bool,
    shared: Arc<Shared>,
}

impl PaddedBody {
    pub(crate) fn new(
        prefix: Bytes,
        padding: u64,
        suffix: Bytes,
        declared: bool,
        shared: Arc<Shared>,
    ) -> Self {
        PaddedBody { prefix, padding, suffix, declared, shared }
    }

    fn remaining(&self) -> u64 {
        self.prefix.len() as u64 + self.padding + self.suffix.len() as u64
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.prefix.is_empty() {
            return Some(std::mem::take(&mut self.prefix));
        }
        if self.padding > 0 {
            let n = self.padding.min(PADDING.len() as u64);
            self.padding -= n;
            return Some(Bytes::from_static(&PADDING[..n as usize]));
        }
        (!self.suffix.is_empty()).then(|| std::mem::take(&mut self.suffix))
    }
}

impl Body for PaddedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let chunk = this.next_chunk();
        if let Some(c) = &chunk {
            this.shared.counters.oversized_bytes_sent.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining() == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.declared {
            SizeHint::with_exact(self.remaining())
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Config, Fault};
    use serde_json::json;

    fn drain(outcome: Outcome, declared: bool) -> (Vec<u8>, SizeHint) {
        let Outcome::Padded { prefix, padding, suffix, .. } = outcome else { panic!("not padded") };
        let mut body =
            PaddedBody::new(prefix, padding, suffix, declared, Arc::new(Shared::new(Config::default())));
        let hint = body.size_hint();
        let mut out = Vec::new();
        while let Some(chunk) = body.next_chunk() {
            out.extend_from_slice(&chunk);
        }
        assert!(body.is_end_stream());
        (out, hint)
    }

    #[test]
    fn oversized_bodies_are_valid_json_of_the_size_asked() {
        let chat = json!({"choices": [{"message": {"content": "Echo"}}], "id": "x"});
        let (bytes, hint) = drain(oversized(Kind::Chat, chat.clone(), 200_000, true), true);
        assert_eq!(bytes.len(), 200_000);
        assert_eq!(hint.exact(), Some(200_000));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(v["choices"][0]["message"]["content"].as_str().unwrap().starts_with("Echox"));
        let (_, hint) = drain(oversized(Kind::Chat, chat.clone(), 10, false), false);
        assert_eq!(hint.exact(), None, "chunked");
        let (bytes, _) = drain(oversized(Kind::Chat, chat.clone(), 10, false), false);
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), chat, "too small to pad: as is");
        let emb = json!({"data": [{"index": 0, "embedding": [0.5]}]});
        let (bytes, _) = drain(oversized(Kind::Embeddings, emb, 1000, false), false);
        assert_eq!(bytes.len(), 1000);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["data"][0]["embedding"], json!([0.5]));
    }

    #[test]
    fn literals_and_nuls_land_where_documented() {
        let emb = json!({"data": [{"embedding": [0.5, 0.5]}, {"embedding": [0.25, 0.25]}]});
        let Outcome::Raw { body, .. } = with_literal(emb, "1e39") else { panic!("not raw") };
        assert_eq!(&body[..], br#"{"data":[{"embedding":[0.5,0.5]},{"embedding":[0.25,1e39]}]}"#);
        let chat = json!({"choices": [{"message": {"content": "a"}}]});
        let Outcome::Respond { body, .. } = with_nul(chat, "/choices/0/message/content") else {
            panic!("not a response")
        };
        assert!(body.to_string().contains(r#""a\u0000and after the NUL""#), "{body}");
    }

    #[test]
    fn faults_have_a_stable_json_shape() {
        let shapes = [
            (
                Fault::Oversized { bytes: 5, content_length: true },
                json!({"oversized": {"bytes": 5, "content_length": true}}),
            ),
            (Fault::NulInContent, json!("nul_in_content")),
            (
                Fault::NonFiniteEmbedding { literal: "1e39".into() },
                json!({"non_finite_embedding": {"literal": "1e39"}}),
            ),
            (
                Fault::RateLimitedRaw { retry_after: "soon".into() },
                json!({"rate_limited_raw": {"retry_after": "soon"}}),
            ),
            (
                Fault::Redirect { status: 307, location: "/x".into() },
                json!({"redirect": {"status": 307, "location": "/x"}}),
            ),
        ];
        let shapes = shapes.into_iter().chain([
            (Fault::StreamBreak { after: 3 }, json!({"stream_break": {"after": 3}})),
            (Fault::StreamError { after: 2 }, json!({"stream_error": {"after": 2}})),
            (Fault::NotJson, json!("not_json")),
            (Fault::OffList, json!("off_list")),
            (Fault::SchemaViolation, json!("schema_violation")),
        ]);
        for (fault, shape) in shapes {
            assert_eq!(serde_json::to_value(&fault).unwrap(), shape);
            assert_eq!(serde_json::from_value::<Fault>(shape).unwrap(), fault);
        }
    }

    #[test]
    fn bad_header_values_are_left_out_and_logged() {
        let mut entry = LoggedRequest { fault: Some("RateLimitedRaw".into()), ..entry_like() };
        let Outcome::Raw { status, headers, .. } = rate_limited_raw("1\n2", &json!({}), &mut entry) else {
            panic!("not raw")
        };
        assert_eq!((status, headers.len()), (429, 0));
        assert!(entry.fault.unwrap().contains("retry-after left out"));
        let Outcome::Raw { status, headers, .. } = redirect(200, "/elsewhere", &mut entry_like()) else {
            panic!("not raw")
        };
        assert_eq!(status, 302);
        assert_eq!(headers[0].1, "/elsewhere");
    }

    fn entry_like() -> LoggedRequest {
        LoggedRequest {
            id: 1,
            path: String::new(),
            model: String::new(),
            auth_hint: String::new(),
            inputs: Vec::new(),
            body: Value::Null,
            status: 0,
            fault: None,
            received_ms: 0.0,
            finished_ms: 0.0,
        }
    }
}
