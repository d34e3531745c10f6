//! Request bodies for the compatible-mode API and the parsing of its answers. Pure functions:
//! what goes on the wire is decided here and unit-tested without a network.

use crate::error::AiError;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Chat parameters copied verbatim into the request body.
const CHAT_BODY_KEYS: &[&str] =
    &["temperature", "top_p", "max_tokens", "seed", "stop", "enable_thinking", "modalities", "audio"];

/// `POST {base}/chat/completions` for `ai_gen`: an optional system message from params, then
/// the prompt as the user message (as content parts when images are attached).
pub fn chat_body(model_type: &str, prompt: &str, params: &Map<String, Value>) -> Value {
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
    let mut body = Map::new();
    body.insert("model".into(), model_type.into());
    body.insert("messages".into(), Value::Array(messages));
    for key in CHAT_BODY_KEYS {
        if let Some(v) = params.get(*key) {
            body.insert((*key).into(), v.clone());
        }
    }
    Value::Object(body)
}

/// Qwen-MT: exactly one user message and `translation_options` (no system message: the
/// translation models reject one).
pub fn translation_body(
    model_type: &str,
    content: &str,
    target_lang: &str,
    params: &Map<String, Value>,
) -> Value {
    let mut options = Map::new();
    options.insert("source_lang".into(), params.get("source_lang").cloned().unwrap_or_else(|| "auto".into()));
    options.insert("target_lang".into(), target_lang.into());
    for key in ["terms", "tm_list", "domains"] {
        if let Some(v) = params.get(key) {
            options.insert(key.into(), v.clone());
        }
    }
    json!({
        "model": model_type,
        "messages": [{"role": "user", "content": content}],
        "translation_options": Value::Object(options),
    })
}

/// `ai_translate` on a chat model: the same chat request with an instruction around the text.
pub fn translation_prompt(content: &str, target_lang: &str) -> String {
    format!(
        "Translate the following text into {target_lang}. Reply with the translation only, \
         without quotes or explanations.\n\n{content}"
    )
}

/// What an embeddings request needs to know about the deployed model.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingModel {
    pub model_type: &'static str,
    /// The dimension asked for (deployed or the model's default).
    pub dimension: Option<u32>,
    /// Whether the model offers a choice of dimension (and so accepts `dimensions`).
    pub choosable: bool,
}

impl EmbeddingModel {
    pub fn body(&self, inputs: &[&str]) -> Value {
        embedding_body(self.model_type, inputs, self.dimension, self.choosable)
    }
}

/// `POST {base}/embeddings`. `dimensions` is sent only to models that offer a choice: the
/// fixed-size models reject the field.
pub fn embedding_body(model_type: &str, inputs: &[&str], dimension: Option<u32>, choosable: bool) -> Value {
    let mut body = json!({"model": model_type, "input": inputs, "encoding_format": "float"});
    if let (Some(d), true) = (dimension, choosable) {
        body["dimensions"] = d.into();
    }
    body
}

/// Token counts from a response's `usage`, for the client-side token rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub total_tokens: u64,
}

/// Details quote the provider (a JSON value, serde's echo of a string it did not expect), so
/// they are kept short and free of NUL like any provider text.
const MAX_DETAIL_CHARS: usize = 300;

fn malformed(model: &str, detail: impl Into<String>) -> AiError {
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

// Responses are deserialized straight into these shapes (no intermediate `Value` tree):
// an embedding of 1024 floats is parsed once, into the Vec it is returned in.

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<ChatChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: Option<ChatMessage>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Value,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: Option<usize>,
    embedding: Vec<f32>,
}

fn parse<'a, T: Deserialize<'a>>(model: &str, body: &'a [u8]) -> Result<T, AiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            malformed(model, format!("the body is not JSON ({e})"))
        } else {
            malformed(model, format!("unexpected response shape ({e})"))
        }
    })
}

/// The assistant text of a chat completion.
pub fn parse_chat(model: &str, body: &[u8]) -> Result<(String, Usage), AiError> {
    let r: ChatResponse = parse(model, body)?;
    let message = r
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message)
        .ok_or_else(|| malformed(model, "no choices[0].message in the response"))?;
    let text = match message.content {
        Value::String(s) => s,
        // Some multimodal models answer with content parts.
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
        }
        Value::Null => return Err(malformed(model, "choices[0].message.content is missing or null")),
        other => return Err(malformed(model, format!("choices[0].message.content is not text: {other}"))),
    };
    // Unlike an error message, the answer is the result: replacing the NUL would hand back a
    // text the model did not write, so it is refused instead.
    if let Some(at) = text.find('\0') {
        return Err(malformed(
            model,
            format!(
                "choices[0].message.content contains a NUL character (U+0000) at byte {at}, \
                 which PostgreSQL text cannot hold"
            ),
        ));
    }
    Ok((text, r.usage.unwrap_or_default()))
}

/// The vectors of an embeddings response, in input order, each checked for its length.
pub fn parse_embeddings(
    model: &str,
    body: &[u8],
    expected: usize,
    dimension: Option<u32>,
) -> Result<(Vec<Vec<f32>>, Usage), AiError> {
    let r: EmbeddingResponse = parse(model, body)?;
    if r.data.len() != expected {
        return Err(malformed(model, format!("{} embeddings for {expected} inputs", r.data.len())));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (pos, item) in r.data.into_iter().enumerate() {
        let index = item.index.unwrap_or(pos);
        if index >= expected {
            return Err(malformed(
                model,
                format!("data[{pos}] has index {index}, beyond the {expected} inputs"),
            ));
        }
        if let Some(d) = dimension {
            if item.embedding.len() != d as usize {
                return Err(malformed(
                    model,
                    format!("data[{pos}].embedding has {} values, expected {d}", item.embedding.len()),
                ));
            }
        }
        check_finite(model, pos, index, &item.embedding)?;
        if out[index].replace(item.embedding).is_some() {
            return Err(malformed(model, format!("index {index} appears twice")));
        }
    }
    let vectors =
        out.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| malformed(model, "an index is missing"))?;
    Ok((vectors, r.usage.unwrap_or_default()))
}

/// JSON numbers beyond f32's range (1e39) parse, as infinity: serde narrows the f64 it reads
/// with `as f32`. JSON itself has no NaN or infinity, so this is the way one gets in; `real[]`
/// would store it and every distance computed with it would be NaN.
fn check_finite(model: &str, pos: usize, index: usize, embedding: &[f32]) -> Result<(), AiError> {
    match embedding.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(at) => Err(malformed(
            model,
            format!(
                "data[{pos}] (index {index}) embedding[{at}] is not a finite 32-bit float \
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn chat_body_carries_system_and_params() {
        let b = chat_body(
            "qwen-plus",
            "hi",
            &params(
                json!({"system": "Be brief.", "temperature": 0.3, "max_tokens": 5, "timeout": 3, "max_retries": 1}),
            ),
        );
        assert_eq!(
            b,
            json!({"model": "qwen-plus", "messages": [
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                "temperature": 0.3, "max_tokens": 5})
        );
    }

    #[test]
    fn images_become_content_parts() {
        let b = chat_body("qwen3-vl-plus", "what is this?", &params(json!({"images": ["https://a/b.png"]})));
        assert_eq!(
            b["messages"][0]["content"],
            json!([{"type": "image_url", "image_url": {"url": "https://a/b.png"}}, {"type": "text", "text": "what is this?"}])
        );
    }

    #[test]
    fn translation_body_is_one_user_message() {
        let b = translation_body(
            "qwen-mt-plus",
            "我看到这个视频后没有笑",
            "English",
            &params(json!({"terms": [{"source": "a", "target": "b"}], "domains": "IT"})),
        );
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
        assert_eq!(
            b["translation_options"],
            json!({"source_lang": "auto", "target_lang": "English", "terms": [{"source": "a", "target": "b"}], "domains": "IT"})
        );
    }

    #[test]
    fn embedding_body_dimensions_only_when_choosable() {
        assert_eq!(embedding_body("text-embedding-v4", &["a", "b"], Some(256), true)["dimensions"], 256);
        assert!(embedding_body("text-embedding-v1", &["a"], Some(1536), false).get("dimensions").is_none());
    }

    #[test]
    fn parses_responses_and_errors() {
        let bytes = |v: Value| serde_json::to_vec(&v).unwrap();
        let chat = bytes(
            json!({"choices": [{"message": {"role": "assistant", "content": "ok"}}], "usage": {"total_tokens": 9}}),
        );
        assert_eq!(parse_chat("m", &chat).unwrap(), ("ok".into(), Usage { total_tokens: 9 }));
        assert!(parse_chat("m", &bytes(json!({"choices": []}))).is_err());
        let e = parse_chat("m", b"{\"choices\": [trunc").unwrap_err();
        assert!(e.to_string().contains("the body is not JSON"), "{e}");
        let emb = bytes(
            json!({"data": [{"index": 1, "embedding": [3.0, 4.0]}, {"index": 0, "embedding": [1.0, 2.0]}]}),
        );
        let (v, _) = parse_embeddings("m", &emb, 2, Some(2)).unwrap();
        assert_eq!(v, vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert!(parse_embeddings("m", &emb, 3, Some(2)).is_err());
        assert!(parse_embeddings("m", &emb, 2, Some(3)).is_err());
        let dup =
            bytes(json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}));
        assert!(parse_embeddings("m", &dup, 2, None).is_err());
        let e = parse_embeddings("m", &bytes(json!({"data": [{"embedding": ["x"]}]})), 1, None).unwrap_err();
        assert!(e.to_string().contains("unexpected response shape"), "{e}");
        let e = parse_error_body(br#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"r1"}"#);
        assert_eq!(
            e,
            ErrorBody {
                code: "invalid_api_key".into(),
                message: "bad".into(),
                request_id: Some("r1".into())
            }
        );
        let e = parse_error_body(br#"{"code":"Throttling","message":"slow down","request_id":"r2"}"#);
        assert_eq!(e.code, "Throttling");
        assert_eq!(parse_error_body(b"<html>502</html>").message, "<html>502</html>");
    }

    #[test]
    fn nul_is_refused_in_answers_and_replaced_in_errors() {
        let chat = br#"{"choices": [{"message": {"content": "ab\u0000c"}}]}"#;
        let e = parse_chat("m", chat).unwrap_err();
        assert_eq!(e.sqlstate(), "ZBM01");
        assert!(e.to_string().contains("NUL character (U+0000) at byte 2"), "{e}");
        let parts = br#"{"choices": [{"message": {"content": [{"text": "a"}, {"text": "\u0000"}]}}]}"#;
        assert!(parse_chat("m", parts).is_err());
        let e = parse_error_body(
            br#"{"error": {"message": "x\u0000y", "code": "c\u0000"}, "request_id": "\u0000"}"#,
        );
        assert_eq!((e.message.as_str(), e.code.as_str()), ("x\u{FFFD}y", "c\u{FFFD}"));
        assert_eq!(e.request_id.as_deref(), Some("\u{FFFD}"));
        assert_eq!(parse_error_body(b"bad\0gateway").message, "bad\u{FFFD}gateway");
    }

    #[test]
    fn embeddings_must_be_finite_f32() {
        let body =
            br#"{"data": [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": [0.5, -1e39]}]}"#;
        let e = parse_embeddings("m", body, 2, Some(2)).unwrap_err();
        assert_eq!(e.sqlstate(), "ZBM01");
        assert!(e.to_string().contains("data[1] (index 1) embedding[1] is not a finite"), "{e}");
        let edge = br#"{"data": [{"embedding": [3.4e38, -3.4e38, 1e-50]}]}"#;
        assert!(parse_embeddings("m", edge, 1, Some(3)).is_ok());
    }

    #[test]
    fn details_quoting_the_provider_are_short() {
        let long =
            format!(r#"{{"choices": [{{"message": {{"content": {{"k": "{}"}}}}}}]}}"#, "x".repeat(10_000));
        let AiError::MalformedResponse { detail, .. } = parse_chat("m", long.as_bytes()).unwrap_err() else {
            panic!("not malformed")
        };
        assert!(detail.chars().count() <= MAX_DETAIL_CHARS + 4, "{}", detail.len());
    }
}
