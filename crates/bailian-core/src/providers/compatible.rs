//! Bailian's OpenAI-compatible mode: `{base}/chat/completions` (plain and streamed) and
//! `{base}/embeddings`.

use super::sse::Event;
use super::{malformed, order_vectors, parse, ChatOutcome, ChatRequest, Usage};
use crate::error::AiError;
use crate::registry::{Api, ModelSpec, Thinking};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Chat parameters sent at the top level of the body, as Bailian's compatible mode takes them
/// (the OpenAI SDK's `extra_body` merges into the top level too).
const CHAT_BODY_KEYS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "repetition_penalty",
    "enable_thinking",
    "thinking_budget",
    "enable_search",
    "search_options",
    "response_format",
    "modalities",
    "audio",
];

/// Whether a call must stream: the model answers only as a stream (QwQ, Qwen-Omni), or a
/// hybrid model is asked to think (Bailian refuses thinking without a stream), or the caller
/// asked for it. A caller's `"stream": false` where a stream is required is an error rather
/// than a request Bailian would refuse.
pub fn needs_stream(spec: &ModelSpec, params: &Map<String, Value>) -> Result<bool, AiError> {
    let asked = params.get("stream").and_then(Value::as_bool);
    let thinking = match spec.thinking {
        Thinking::Switchable { default_on } => {
            params.get("enable_thinking").and_then(Value::as_bool).unwrap_or(default_on)
        }
        Thinking::Never | Thinking::Always => false,
    };
    let speaking = spec.speaks()
        && params.get("modalities").and_then(Value::as_array).is_some_and(|m| m.iter().any(|v| v == "audio"));
    let required = if spec.stream_only {
        Some(format!("{} answers only as a stream", spec.model_type))
    } else if thinking {
        Some(format!("{} thinks only in a stream (enable_thinking is on)", spec.model_type))
    } else if speaking {
        Some(format!("{} speaks only in a stream (modalities includes audio)", spec.model_type))
    } else {
        None
    };
    match (required, asked) {
        (Some(why), Some(false)) => Err(AiError::invalid(format!(
            "parameter \"stream\" cannot be false here: {why}; leave \"stream\" out"
        ))),
        (Some(_), _) => Ok(true),
        (None, asked) => Ok(asked.unwrap_or(false)),
    }
}

/// `POST {base}/chat/completions` with `messages`; streamed when `needs_stream` says so, with
/// `stream_options.include_usage` so the usage arrives in a last chunk.
pub fn chat_request(
    spec: &ModelSpec,
    base: &str,
    messages: Vec<Value>,
    params: &Map<String, Value>,
) -> Result<ChatRequest, AiError> {
    let stream = needs_stream(spec, params)?;
    check_json_mode(&messages, params)?;
    let mut body = Map::new();
    body.insert("model".into(), spec.model_type.into());
    body.insert("messages".into(), Value::Array(messages));
    for key in CHAT_BODY_KEYS {
        if let Some(v) = params.get(*key) {
            body.insert((*key).into(), v.clone());
        }
    }
    if let Some(voice) = params.get("voice") {
        let mut audio = params.get("audio").and_then(Value::as_object).cloned().unwrap_or_default();
        audio.insert("voice".into(), voice.clone());
        audio.entry("format").or_insert_with(|| "wav".into());
        body.insert("audio".into(), Value::Object(audio));
    }
    if stream {
        body.insert("stream".into(), true.into());
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(ChatRequest {
        model_type: spec.model_type,
        url: format!("{base}/chat/completions"),
        body: Value::Object(body),
        stream,
        api: Api::Compatible,
    })
}

/// Bailian's structured-output guide: JSON-object mode needs the word "JSON" somewhere in the
/// messages, or the request is refused. Checked here so the error names the cause before
/// anything is sent.
fn check_json_mode(messages: &[Value], params: &Map<String, Value>) -> Result<(), AiError> {
    let json_object = params.get("response_format").and_then(|r| r.get("type")).and_then(Value::as_str)
        == Some("json_object");
    if !json_object {
        return Ok(());
    }
    let mentions = |v: &Value| v.as_str().is_some_and(|s| s.to_ascii_lowercase().contains("json"));
    let said = messages.iter().any(|m| match m.get("content") {
        Some(Value::Array(parts)) => parts.iter().any(|p| p.get("text").is_some_and(mentions)),
        Some(c) => mentions(c),
        None => false,
    });
    if said {
        Ok(())
    } else {
        Err(AiError::invalid_with_hint(
            "response_format {\"type\": \"json_object\"} needs the word JSON in the messages; Bailian refuses the request otherwise",
            "Say in the prompt or the system message that the answer is JSON, e.g. \"Answer in JSON.\"",
        ))
    }
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

/// `translation_body` as a request to `{base}/chat/completions`.
pub fn translation_request(
    model_type: &'static str,
    base: &str,
    content: &str,
    target_lang: &str,
    params: &Map<String, Value>,
) -> ChatRequest {
    ChatRequest {
        model_type,
        url: format!("{base}/chat/completions"),
        body: translation_body(model_type, content, target_lang, params),
        stream: false,
        api: Api::Compatible,
    }
}

/// `ai_translate` on a chat model: the same chat request with an instruction around the text.
pub fn translation_prompt(content: &str, target_lang: &str) -> String {
    format!(
        "Translate the following text into {target_lang}. Reply with the translation only, \
         without quotes or explanations.\n\n{content}"
    )
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

// Responses are deserialized straight into these shapes (no intermediate `Value` tree):
// an embedding of 1024 floats is parsed once, into the Vec it is returned in.

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<ChatChoice>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: Option<ChatMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Value,
    #[serde(default)]
    reasoning_content: Option<String>,
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
    #[serde(deserialize_with = "super::f32_through_f64")]
    embedding: Vec<f32>,
}

/// Text from `content`: a string, or the text of content parts (some multimodal models
/// answer with parts).
fn content_text(model: &str, field: &str, content: Value) -> Result<String, AiError> {
    match content {
        Value::String(s) => Ok(s),
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("")),
        Value::Null => Err(malformed(model, format!("{field} is missing or null"))),
        other => Err(malformed(model, format!("{field} is not text: {other}"))),
    }
}

/// A (non-stream) chat completion.
pub fn parse_chat(model: &str, body: &[u8]) -> Result<ChatOutcome, AiError> {
    let r: ChatResponse = parse(model, body)?;
    let choice = r.choices.into_iter().next();
    let finish_reason = choice.as_ref().and_then(|c| c.finish_reason.clone());
    let message = choice
        .and_then(|c| c.message)
        .ok_or_else(|| malformed(model, "no choices[0].message in the response"))?;
    let content = content_text(model, "choices[0].message.content", message.content)?;
    ChatOutcome {
        content,
        reasoning_content: message.reasoning_content.filter(|r| !r.is_empty()),
        finish_reason,
        usage: r.usage,
        model: r.model,
        request_id: r.id,
        ..ChatOutcome::default()
    }
    .check_text(model)
}

/// Chunks of a streamed chat completion, assembled into what the same call without a stream
/// would have answered. The stream is complete at `data: [DONE]`.
#[derive(Default)]
pub struct StreamAssembler {
    out: ChatOutcome,
    transcript: String,
    audio_b64: String,
    done: bool,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    id: Option<String>,
    /// An error reported in the stream after the 200 status line.
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    audio: Option<AudioDelta>,
}

#[derive(Deserialize)]
struct AudioDelta {
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    transcript: Option<String>,
}

impl StreamAssembler {
    /// Takes one event; an error event becomes the call's error.
    pub fn feed(&mut self, model: &str, event: &Event) -> Result<(), AiError> {
        if self.done {
            return Ok(());
        }
        if event.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if event.data.trim().is_empty() {
            return Ok(());
        }
        let chunk: Chunk = parse(model, event.data.as_bytes())?;
        if chunk.error.is_some()
            || (chunk.code.is_some() && chunk.message.is_some() && chunk.choices.is_empty())
        {
            return Err(super::stream_error(model, event.data.as_bytes()));
        }
        if chunk.model.is_some() {
            self.out.model = chunk.model;
        }
        if chunk.id.is_some() {
            self.out.request_id = chunk.id;
        }
        if chunk.usage.as_ref().is_some_and(|u| !u.is_null()) {
            self.out.usage = chunk.usage;
        }
        let Some(choice) = chunk.choices.into_iter().next() else { return Ok(()) };
        if choice.finish_reason.is_some() {
            self.out.finish_reason = choice.finish_reason;
        }
        let Some(delta) = choice.delta else { return Ok(()) };
        if let Some(content) = delta.content.filter(|c| !c.is_null()) {
            self.out.content.push_str(&content_text(model, "choices[0].delta.content", content)?);
        }
        if let Some(r) = delta.reasoning_content {
            self.out.reasoning_content.get_or_insert_with(String::new).push_str(&r);
        }
        if let Some(audio) = delta.audio {
            if let Some(t) = audio.transcript {
                self.transcript.push_str(&t);
            }
            if let Some(d) = audio.data {
                // Bailian's Qwen-Omni guide joins the `data` strings and decodes the whole:
                // a piece need not be valid base64 on its own.
                self.audio_b64.push_str(d.trim());
            }
        }
        Ok(())
    }

    /// Whether the closing `[DONE]` arrived.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The assembled answer. A spoken answer's text is its transcript.
    pub fn finish(mut self, model: &str) -> Result<ChatOutcome, AiError> {
        if self.out.content.is_empty() && !self.transcript.is_empty() {
            self.out.content = std::mem::take(&mut self.transcript);
        }
        if !self.audio_b64.is_empty() {
            self.out.audio_pcm =
                base64::engine::general_purpose::STANDARD.decode(self.audio_b64.as_bytes()).map_err(|e| {
                    malformed(model, format!("the joined choices[0].delta.audio.data is not base64 ({e})"))
                })?;
        }
        self.out.check_text(model)
    }
}

/// The vectors of an embeddings response, in input order, each checked for its length.
pub fn parse_embeddings(
    model: &str,
    body: &[u8],
    expected: usize,
    dimension: Option<u32>,
) -> Result<(Vec<Vec<f32>>, Usage), AiError> {
    let r: EmbeddingResponse = parse(model, body)?;
    let items = r.data.into_iter().map(|i| (i.index, i.embedding)).collect();
    Ok((order_vectors(model, "data", items, expected, dimension)?, r.usage.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::super::{parse_error_body, ErrorBody, MAX_DETAIL_CHARS};
    use super::*;
    use crate::registry::find;

    /// The body `ai_gen` sends for one prompt.
    fn chat_body(model_type: &str, prompt: &str, params: &Map<String, Value>) -> Value {
        let spec = find(model_type).unwrap();
        chat_request(spec, "", super::super::prompt_messages(prompt, params), params).unwrap().body
    }

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
    fn streams_where_bailian_requires_it() {
        let req = |model: &str, p: Value| chat_request(find(model).unwrap(), "http://b", vec![], &params(p));
        assert!(!req("qwen-plus", json!({})).unwrap().stream);
        for (model, p) in [
            ("qwq-plus", json!({})),
            ("qwen3-omni-flash", json!({})),
            ("qwen-plus", json!({"enable_thinking": true})),
            ("glm-4.6", json!({})),
            ("qwen-max", json!({"stream": true})),
        ] {
            let r = req(model, p.clone()).unwrap();
            assert!(r.stream, "{model} {p}");
            assert_eq!(r.body["stream"], true);
            assert_eq!(r.body["stream_options"], json!({"include_usage": true}));
        }
        assert!(!req("glm-4.6", json!({"enable_thinking": false})).unwrap().stream);
        let e = req("qwq-plus", json!({"stream": false})).unwrap_err();
        assert!(e.to_string().contains("qwq-plus answers only as a stream"), "{e}");
        let b =
            req("qwen3-omni-flash", json!({"modalities": ["text", "audio"], "voice": "Ethan"})).unwrap().body;
        assert_eq!(b["audio"], json!({"voice": "Ethan", "format": "wav"}));
        assert!(b.get("voice").is_none());
    }

    #[test]
    fn json_mode_needs_the_word_json() {
        let spec = find("qwen-plus").unwrap();
        let p = params(json!({"response_format": {"type": "json_object"}}));
        let msgs = |t: &str| vec![json!({"role": "user", "content": t})];
        assert!(chat_request(spec, "", msgs("list three colours"), &p)
            .unwrap_err()
            .to_string()
            .contains("word JSON"));
        let ok = chat_request(spec, "", msgs("list three colours as Json"), &p).unwrap();
        assert_eq!(ok.body["response_format"], json!({"type": "json_object"}));
    }

    #[test]
    fn stream_chunks_assemble_into_one_answer() {
        let mut a = StreamAssembler::default();
        let chunks = [
            json!({"id": "chatcmpl-1", "model": "qwq-plus", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}], "usage": null}),
            json!({"id": "chatcmpl-1", "choices": [{"delta": {"reasoning_content": "think "}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"delta": {"reasoning_content": "more"}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"delta": {"content": "Hel"}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]}),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}),
        ];
        for c in chunks {
            a.feed("m", &Event { data: c.to_string() }).unwrap();
        }
        assert!(!a.is_done());
        a.feed("m", &Event { data: "[DONE]".into() }).unwrap();
        assert!(a.is_done());
        let out = a.finish("m").unwrap();
        assert_eq!(out.content, "Hello");
        assert_eq!(out.reasoning_content.as_deref(), Some("think more"));
        assert_eq!(out.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            (out.tokens().total_tokens, out.request_id.as_deref(), out.model.as_deref()),
            (3, Some("chatcmpl-1"), Some("qwq-plus"))
        );
    }

    #[test]
    fn stream_audio_and_errors() {
        let mut a = StreamAssembler::default();
        for c in [
            json!({"choices": [{"delta": {"content": "Hi"}}]}),
            json!({"choices": [{"delta": {"audio": {"data": "AQID", "expires_at": 1, "id": "a"}}}]}),
            json!({"choices": [{"delta": {"audio": {"data": "BA=="}}}]}),
        ] {
            a.feed("m", &Event { data: c.to_string() }).unwrap();
        }
        let out = a.finish("m").unwrap();
        assert_eq!((out.content.as_str(), out.audio_pcm.as_slice()), ("Hi", &[1u8, 2, 3, 4][..]));
        let mut a = StreamAssembler::default();
        let e = a
            .feed(
                "m",
                &Event { data: r#"{"error": {"code": "data_inspection_failed", "message": "no"}}"#.into() },
            )
            .unwrap_err();
        assert!(matches!(e, AiError::Provider { status: 400, .. }), "{e:?}");
        let mut a = StreamAssembler::default();
        let piece = r#"{"choices": [{"delta": {"audio": {"data": "!!"}}}]}"#;
        a.feed("m", &Event { data: piece.into() }).unwrap();
        assert!(a.finish("m").unwrap_err().to_string().contains("not base64"));
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
        let out = parse_chat("m", &chat).unwrap();
        assert_eq!((out.content.as_str(), out.tokens().total_tokens), ("ok", 9));
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
        assert!(e.to_string().contains("content contains a NUL character (U+0000) at byte 2"), "{e}");
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
