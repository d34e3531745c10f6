//! The providers pg_bailian talks to, one module each: Bailian's compatible mode
//! (`compatible`), Bailian's DashScope-native multimodal embeddings (`multimodal`) and
//! OpenSearch's text generation (`opensearch`), plus what they share: server-sent events
//! (`sse`), WAV assembly for spoken answers (`wav`), the outcome of a chat call, and error
//! bodies. Pure functions: what goes on the wire is decided here and unit-tested without a
//! network.

pub mod compatible;
pub mod multimodal;
pub mod opensearch;
pub mod rerank;
pub mod sse;
pub mod wav;

use crate::error::AiError;
use crate::params::kind;
use crate::registry::{Api, ModelSpec, Provider};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Embedding values read as f64, then narrowed: a number beyond f32 becomes infinite and is
/// refused with its position by `order_vectors`. Read as f32 directly, serde_json (with the
/// `float_roundtrip` feature the JSON Schema crate turns on) fails the whole body instead.
pub(crate) fn f32_through_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
    let wide = <Vec<f64> as serde::Deserialize>::deserialize(d)?;
    Ok(wide.into_iter().map(|x| x as f32).collect())
}
/// What one chat call produced, whichever provider answered and whether it streamed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatOutcome {
    pub content: String,
    pub reasoning_content: Option<String>,
    pub finish_reason: Option<String>,
    /// The provider's `usage` object as it sent it.
    pub usage: Option<Value>,
    pub model: Option<String>,
    pub request_id: Option<String>,
    /// OpenSearch's `result.search_results`, when web search returned them.
    pub search_results: Option<Value>,
    /// Spoken answer (Qwen-Omni): 16-bit little-endian mono PCM, as streamed.
    pub audio_pcm: Vec<u8>,
}

impl ChatOutcome {
    /// The tokens the answer reported (none when it sent no `usage`).
    pub fn tokens(&self) -> Usage {
        self.usage.as_ref().map(Usage::of).unwrap_or_default()
    }

    /// `ai_chat`'s result.
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "content": self.content,
            "reasoning_content": self.reasoning_content,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "model": self.model,
            "request_id": self.request_id,
        });
        if let Some(results) = &self.search_results {
            out["search_results"] = results.clone();
        }
        out
    }

    /// Refuses text PostgreSQL cannot store. Unlike an error message, the answer is the
    /// result: replacing the NUL would hand back a text the model did not write.
    pub(crate) fn check_text(self, model: &str) -> Result<ChatOutcome, AiError> {
        refuse_nul(model, "content", &self.content)?;
        if let Some(r) = &self.reasoning_content {
            refuse_nul(model, "reasoning_content", r)?;
        }
        Ok(ChatOutcome {
            finish_reason: self.finish_reason.map(|s| without_nul(&s)),
            model: self.model.map(|s| without_nul(&s)),
            request_id: self.request_id.map(|s| without_nul(&s)),
            ..self
        })
    }
}

pub(crate) fn refuse_nul(model: &str, field: &str, text: &str) -> Result<(), AiError> {
    match text.find('\0') {
        None => Ok(()),
        Some(at) => Err(malformed(
            model,
            format!(
                "{field} contains a NUL character (U+0000) at byte {at}, which PostgreSQL text cannot hold"
            ),
        )),
    }
}

/// A chat request ready to send.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub model_type: &'static str,
    pub url: String,
    pub body: Value,
    /// Sent with `"stream": true` and read as server-sent events.
    pub stream: bool,
    pub api: Api,
}

/// One input of an embedding request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbedInput<'a> {
    Text(&'a str),
    /// An https URL or a `data:image/...;base64,` URI.
    Image(&'a str),
}

/// How embedding requests to a deployed model are made.
#[derive(Clone, Debug)]
pub struct EmbeddingModel {
    pub model_type: &'static str,
    pub api: Api,
    /// Where requests go: `{base}/embeddings` or the native multimodal endpoint.
    pub url: String,
    /// The dimension asked for (deployed or the model's default).
    pub dimension: Option<u32>,
    /// Whether the model offers a choice of dimension (and so accepts the field).
    pub choosable: bool,
    /// Inputs one request may carry.
    pub per_request: usize,
}

impl EmbeddingModel {
    pub fn body(&self, inputs: &[EmbedInput<'_>]) -> Value {
        match self.api {
            Api::MultimodalEmbedding => multimodal::body(self, inputs),
            _ => {
                let texts: Vec<&str> = inputs
                    .iter()
                    .map(|i| match i {
                        EmbedInput::Text(t) | EmbedInput::Image(t) => *t,
                    })
                    .collect();
                compatible::embedding_body(self.model_type, &texts, self.dimension, self.choosable)
            }
        }
    }

    pub fn parse(
        &self,
        model: &str,
        body: &[u8],
        expected: usize,
    ) -> Result<(Vec<Vec<f32>>, Usage), AiError> {
        match self.api {
            Api::MultimodalEmbedding => multimodal::parse(model, body, expected, self.dimension),
            _ => compatible::parse_embeddings(model, body, expected, self.dimension),
        }
    }
}

/// Vectors by `(index, embedding)` as a provider listed them, put in input order and checked:
/// one per input, each of the expected length and finite.
pub(crate) fn order_vectors(
    model: &str,
    field: &str,
    items: Vec<(Option<usize>, Vec<f32>)>,
    expected: usize,
    dimension: Option<u32>,
) -> Result<Vec<Vec<f32>>, AiError> {
    if items.len() != expected {
        return Err(malformed(model, format!("{} embeddings for {expected} inputs", items.len())));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (pos, (index, embedding)) in items.into_iter().enumerate() {
        let index = index.unwrap_or(pos);
        if index >= expected {
            return Err(malformed(
                model,
                format!("{field}[{pos}] has index {index}, beyond the {expected} inputs"),
            ));
        }
        if let Some(d) = dimension {
            if embedding.len() != d as usize {
                return Err(malformed(
                    model,
                    format!("{field}[{pos}].embedding has {} values, expected {d}", embedding.len()),
                ));
            }
        }
        check_finite(model, field, pos, index, &embedding)?;
        if out[index].replace(embedding).is_some() {
            return Err(malformed(model, format!("index {index} appears twice")));
        }
    }
    out.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| malformed(model, "an index is missing"))
}

/// The messages of a one-prompt call: an optional system message from params, then the prompt
/// as the user message (as content parts when images are attached).
pub fn prompt_messages(prompt: &str, params: &Map<String, Value>) -> Vec<Value> {
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = params.get("system").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": system}));
    }
    let content = match params.get("images").and_then(Value::as_array) {
        Some(images) if !images.is_empty() => {
            let mut parts: Vec<Value> =
                images.iter().map(|url| json!({"type": "image_url", "image_url": {"url": url}})).collect();
            parts.push(json!({"type": "text", "text": prompt}));
            Value::Array(parts)
        }
        _ => Value::String(prompt.to_string()),
    };
    messages.push(json!({"role": "user", "content": content}));
    messages
}

/// Token counts from a response's `usage` (every provider's shape).
pub use crate::meter::Usage;

/// Details quote the provider (a JSON value, serde's echo of a string it did not expect), so
/// they are kept short and free of NUL like any provider text.
pub(crate) const MAX_DETAIL_CHARS: usize = 300;

pub(crate) fn malformed(model: &str, detail: impl Into<String>) -> AiError {
    let detail = without_nul(&detail.into());
    let detail = match detail.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((cut, _)) => format!("{} ...", &detail[..cut]),
        None => detail,
    };
    AiError::MalformedResponse { model: model.into(), detail }
}

/// What stands for U+0000 in provider text that only goes into messages (error codes, error
/// messages, request ids): PostgreSQL text cannot hold NUL, and a message with one would be
/// cut short where it is turned into a C string.
const NUL_REPLACEMENT: &str = "\u{FFFD}";

/// `text` with every NUL replaced by U+FFFD, the replacement character.
pub fn without_nul(text: &str) -> String {
    text.replace('\0', NUL_REPLACEMENT)
}

pub(crate) fn parse<'a, T: Deserialize<'a>>(model: &str, body: &'a [u8]) -> Result<T, AiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            malformed(model, format!("the body is not JSON ({e})"))
        } else {
            malformed(model, format!("unexpected response shape ({e})"))
        }
    })
}

/// JSON numbers beyond f32's range (1e39) parse, as infinity: serde narrows the f64 it reads
/// with `as f32`. JSON itself has no NaN or infinity, so this is the way one gets in; `real[]`
/// would store it and every distance computed with it would be NaN.
fn check_finite(
    model: &str,
    field: &str,
    pos: usize,
    index: usize,
    embedding: &[f32],
) -> Result<(), AiError> {
    match embedding.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(at) => Err(malformed(
            model,
            format!(
                "{field}[{pos}] (index {index}) embedding[{at}] is not a finite 32-bit float \
                 (the number is beyond f32's range of about 3.4e38)"
            ),
        )),
    }
}

/// The pieces of an error body, in the compatible-mode shape
/// `{"error":{"message","type","param","code"},"request_id"}` or the DashScope-native one
/// `{"code","message","request_id"}`.
#[derive(Debug, Default, PartialEq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

/// Never fails: any body becomes at least a message (the first 200 characters of the body
/// when it is not JSON). The pieces carry no NUL.
pub fn parse_error_body(body: &[u8]) -> ErrorBody {
    let text = |v: Option<&Value>| without_nul(v.and_then(Value::as_str).unwrap_or_default());
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let err = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
            let mut code = text(err.get("code"));
            if code.is_empty() {
                code = text(err.get("type"));
            }
            ErrorBody {
                code,
                message: text(err.get("message")),
                request_id: v.get("request_id").or(v.get("id")).and_then(Value::as_str).map(without_nul),
            }
        }
        Err(_) => {
            let raw = String::from_utf8_lossy(body);
            let snippet: String = raw.chars().take(200).collect();
            ErrorBody { code: String::new(), message: without_nul(snippet.trim()), request_id: None }
        }
    }
}

/// An error reported inside a stream, after the 200 status line. Bailian documents none for
/// compatible mode; the OpenAI SDK raises any `data:` object with an `error` key (and
/// DashScope-native streams send `event: error` with `{"code","message","request_id"}`), so
/// both are taken as the call's error. Having no status of its own, it gets the one its code
/// implies, so the retry policy treats it as it would the same error before the stream.
pub(crate) fn stream_error(model: &str, data: &[u8]) -> AiError {
    let parsed = parse_error_body(data);
    let code = parsed.code.to_ascii_lowercase();
    let status = if code.contains("inspection") || code.contains("invalid") {
        400
    } else if code.contains("throttl") || code.contains("limit") || code.contains("quota") {
        429
    } else {
        500
    };
    AiError::Provider {
        model: model.into(),
        status,
        code: if parsed.code.is_empty() { "stream_error".into() } else { parsed.code },
        message: if parsed.message.is_empty() {
            "an error event in the stream".into()
        } else {
            parsed.message
        },
        request_id: parsed.request_id,
    }
}

/// The most messages one `ai_chat` call may carry.
const MAX_MESSAGES: usize = 10_000;

/// Checks `ai_chat`'s `messages` for `spec` and returns them ready to send: an array of
/// `{"role", "content"}` objects, `system` only first (Bailian and seed 003 both say so), at
/// least one `user` message and the last one from the user; content is text, or for models
/// that take images, an array of `text` and `image_url` parts (OpenAI's shape, which
/// compatible mode takes). OpenSearch (seed 003) wants plain text and user and assistant
/// turns that alternate. A `system` in params is put first when the messages have none.
pub fn check_messages(
    spec: &ModelSpec,
    messages: &Value,
    params: &Map<String, Value>,
) -> Result<Vec<Value>, AiError> {
    let bad = |what: String| {
        AiError::invalid_with_hint(
            format!("invalid messages: {what}"),
            "messages is a JSON array like [{\"role\": \"system\", \"content\": \"...\"}, {\"role\": \"user\", \"content\": \"...\"}].",
        )
    };
    let Some(list) = messages.as_array() else {
        return Err(bad(format!("expected a JSON array, got {}", kind(messages))));
    };
    if list.is_empty() || list.len() > MAX_MESSAGES {
        return Err(bad(format!("expected 1 to {MAX_MESSAGES} messages, got {}", list.len())));
    }
    let opensearch = spec.provider == Provider::OpenSearch;
    let mut out = Vec::with_capacity(list.len() + 1);
    if let (Some(system), false) = (
        params.get("system").and_then(Value::as_str),
        list[0].get("role").and_then(Value::as_str) == Some("system"),
    ) {
        out.push(json!({"role": "system", "content": system}));
    }
    let mut previous: Option<&str> = None;
    for (i, m) in list.iter().enumerate() {
        let Some(o) = m.as_object() else {
            return Err(bad(format!("messages[{i}] is {}, not an object", kind(m))));
        };
        if let Some(k) = o.keys().find(|k| *k != "role" && *k != "content") {
            return Err(bad(format!("messages[{i}] has key \"{k}\"; a message has only role and content")));
        }
        let role = o.get("role").and_then(Value::as_str).unwrap_or_default();
        match role {
            "system" if i > 0 => {
                return Err(bad(format!("messages[{i}] is a system message; only the first may be")))
            }
            "system" | "user" | "assistant" => {}
            _ => {
                return Err(bad(format!(
                    "messages[{i}].role must be \"system\", \"user\" or \"assistant\", got {}",
                    o.get("role").map_or("nothing".into(), Value::to_string)
                )))
            }
        }
        if opensearch && role != "system" && previous == Some(role) {
            return Err(bad(format!(
                "messages[{i}] is a second {role} message in a row; OpenSearch wants user and assistant turns to alternate"
            )));
        }
        previous = Some(role);
        match o.get("content") {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::Array(parts)) if !opensearch && !parts.is_empty() => {
                for (j, p) in parts.iter().enumerate() {
                    check_part(spec, p).map_err(|why| bad(format!("messages[{i}].content[{j}] {why}")))?;
                }
            }
            other => {
                let allowed = if opensearch || !spec.accepts_images() {
                    "a non-empty string"
                } else {
                    "a non-empty string or a non-empty array of text and image_url parts"
                };
                return Err(bad(format!(
                    "messages[{i}].content must be {allowed}, got {}",
                    other.map_or("nothing", kind)
                )));
            }
        }
        out.push(m.clone());
    }
    if previous != Some("user") {
        return Err(bad("the last message must be from the user".into()));
    }
    Ok(out)
}

fn check_part(spec: &ModelSpec, p: &Value) -> Result<(), String> {
    match p.get("type").and_then(Value::as_str) {
        Some("text") if p.get("text").and_then(Value::as_str).is_some() && p.as_object().is_some_and(|o| o.len() == 2) => Ok(()),
        Some("image_url") if spec.accepts_images() => {
            let url = p.get("image_url").and_then(|u| u.get("url")).and_then(Value::as_str).unwrap_or_default();
            if is_image_ref(url) {
                Ok(())
            } else {
                Err("needs image_url.url: an http(s) URL or a data:image/...;base64, URI".into())
            }
        }
        Some("image_url") => Err(format!("is an image, and {} takes text only", spec.model_type)),
        _ => Err("must be {\"type\": \"text\", \"text\": \"...\"} or {\"type\": \"image_url\", \"image_url\": {\"url\": \"...\"}}".into()),
    }
}

/// An image reference Bailian takes: an http(s) URL or a base64 data URI of an image.
pub fn is_image_ref(s: &str) -> bool {
    let lower = s.get(..11).unwrap_or(s).to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")) && s.len() > 8
        || lower.starts_with("data:image/") && s.contains(";base64,")
}

/// The format of image bytes, from their signature (`jpeg`, `png`, `bmp`, `webp`, `tiff`);
/// None for bytes that are not an image format the multimodal models take.
pub fn image_format(bytes: &[u8]) -> Option<&'static str> {
    Some(if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "jpeg"
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "png"
    } else if bytes.starts_with(b"BM") && bytes.len() > 14 {
        "bmp"
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "webp"
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        "tiff"
    } else {
        return None;
    })
}

/// A data URI for image bytes of `format` (as `image_format` names it).
pub fn image_data_uri_as(format: &str, bytes: &[u8]) -> String {
    use base64::Engine;
    format!("data:image/{format};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A data URI for image bytes, its type detected from their signature; None for bytes that
/// are not an image format the multimodal models take (JPEG, PNG, BMP, WEBP, TIFF).
pub fn image_data_uri(bytes: &[u8]) -> Option<String> {
    image_format(bytes).map(|format| image_data_uri_as(format, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{find, find_at};

    fn check(model: &str, v: Value) -> Result<Vec<Value>, String> {
        check_messages(find(model).unwrap(), &v, &Map::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn messages_are_checked_before_sending() {
        let turn = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"}]);
        assert_eq!(check("qwen-plus", turn.clone()).unwrap().len(), 4);
        assert!(check("qwen-plus", json!({"role": "user"}))
            .unwrap_err()
            .contains("expected a JSON array, got an object"));
        assert!(check("qwen-plus", json!([])).unwrap_err().contains("1 to 10000 messages"));
        assert!(check("qwen-plus", json!([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}]))
            .unwrap_err()
            .contains("messages[1] is a system message"));
        assert!(check("qwen-plus", json!([{"role": "tool", "content": "a"}]))
            .unwrap_err()
            .contains("messages[0].role"));
        assert!(check(
            "qwen-plus",
            json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
        )
        .unwrap_err()
        .contains("last message must be from the user"));
        assert!(check("qwen-plus", json!([{"role": "user", "content": ""}]))
            .unwrap_err()
            .contains("non-empty string"));
        assert!(check("qwen-plus", json!([{"role": "user", "content": "a", "name": "x"}]))
            .unwrap_err()
            .contains("key \"name\""));
        let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}, {"type": "text", "text": "what?"}]}]);
        assert!(check("qwen3-vl-plus", image.clone()).is_ok());
        assert!(check("qwen-plus", image).unwrap_err().contains("takes text only"));
        let os = find_at(Provider::OpenSearch, "qwen-max").unwrap();
        let two_users = json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]);
        assert!(check_messages(os, &two_users, &Map::new()).unwrap_err().to_string().contains("alternate"));
        let with_system = check_messages(
            os,
            &json!([{"role": "user", "content": "a"}]),
            json!({"system": "S"}).as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(with_system[0], json!({"role": "system", "content": "S"}));
    }

    #[test]
    fn image_bytes_become_data_uris() {
        assert_eq!(
            image_data_uri(b"\x89PNG\r\n\x1a\nrest").unwrap(),
            "data:image/png;base64,iVBORw0KGgpyZXN0"
        );
        assert!(image_data_uri(&[0xFF, 0xD8, 0xFF, 0xE0]).unwrap().starts_with("data:image/jpeg;base64,"));
        assert!(image_data_uri(b"GIF89a").is_none());
        assert!(image_data_uri(b"").is_none());
        assert!(is_image_ref("data:image/png;base64,AAAA") && is_image_ref("https://x/y.png"));
        assert!(!is_image_ref("ftp://x") && !is_image_ref("data:text/plain;base64,AA"));
    }
}
