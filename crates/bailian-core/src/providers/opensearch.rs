//! OpenSearch AI Search Open Platform text generation (seed 003):
//! `POST {host}/v3/openapi/workspaces/{workspace}/text-generation/{service_id}` with
//! `{"messages", "stream", "enable_search", "csi_level", "parameters": {...}}`, answered by
//! `{"request_id", "latency", "result": {"text", "search_results"}, "usage"}`; errors are
//! `{"request_id", "latency", "code", "message"}` with the HTTP status of OpenSearch's status
//! code table (`parse_error_body` reads that shape). Keys are `OS-...`, sent as a Bearer token.

use super::sse::Event;
use super::{malformed, parse, ChatOutcome, ChatRequest};
use crate::error::AiError;
use crate::registry::{Api, ModelSpec};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Params that go at the top level of the body; the rest of the model params go in
/// `parameters` (seed 003's request table).
const TOP_LEVEL: &[&str] = &["enable_search", "csi_level"];
const IN_PARAMETERS: &[&str] = &[
    "seed",
    "max_tokens",
    "top_p",
    "top_k",
    "repetition_penalty",
    "presence_penalty",
    "temperature",
    "stop",
    "search_return_result",
    "search_top_k",
    "search_way",
];

/// The service URL; `workspace` is checked at deploy time to be a plain name.
pub fn url(host: &str, workspace: &str, service_id: &str) -> String {
    format!("{}/v3/openapi/workspaces/{workspace}/text-generation/{service_id}", host.trim_end_matches('/'))
}

/// A request. OpenSearch streams only when asked (no service is stream-only).
pub fn chat_request(
    spec: &ModelSpec,
    url: &str,
    messages: Vec<Value>,
    params: &Map<String, Value>,
) -> ChatRequest {
    let stream = params.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), stream.into());
    for key in TOP_LEVEL {
        if let Some(v) = params.get(*key) {
            body.insert((*key).into(), v.clone());
        }
    }
    let parameters: Map<String, Value> =
        IN_PARAMETERS.iter().filter_map(|k| params.get(*k).map(|v| ((*k).to_string(), v.clone()))).collect();
    if !parameters.is_empty() {
        body.insert("parameters".into(), Value::Object(parameters));
    }
    ChatRequest {
        model_type: spec.model_type,
        url: url.to_string(),
        body: Value::Object(body),
        stream,
        api: Api::OpenSearch,
    }
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    request_id: Option<String>,
    result: Option<ResultBody>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
}

#[derive(Deserialize)]
struct ResultBody {
    text: Option<String>,
    #[serde(default)]
    search_results: Option<Value>,
}

fn outcome(model: &str, model_type: &str, r: Response, raw: &[u8]) -> Result<ChatOutcome, AiError> {
    if r.result.is_none() && r.code.is_some() && r.message.is_some() {
        return Err(super::stream_error(model, raw));
    }
    let result = r.result.ok_or_else(|| malformed(model, "no result in the response"))?;
    let text = result.text.ok_or_else(|| malformed(model, "result.text is missing or null"))?;
    ChatOutcome {
        content: text,
        usage: r.usage,
        model: Some(model_type.to_string()),
        request_id: r.request_id,
        search_results: result.search_results.filter(|s| !s.is_null()),
        ..ChatOutcome::default()
    }
    .check_text(model)
}

/// A non-stream answer.
pub fn parse_chat(model: &str, model_type: &str, body: &[u8]) -> Result<ChatOutcome, AiError> {
    let r: Response = parse(model, body)?;
    outcome(model, model_type, r, body)
}

/// A streamed answer: seed 003 says each output is the whole sequence generated so far and
/// the last one the complete result, so the last event is the answer. The wire format of
/// the stream is not documented; events are read as server-sent events, one response object
/// per `data:` (as OpenSearch's other streaming APIs send them). The stream has no end
/// marker: the end of the body ends it.
#[derive(Default)]
pub struct StreamAssembler {
    last: Option<ChatOutcome>,
}

impl StreamAssembler {
    pub fn feed(&mut self, model: &str, model_type: &str, event: &Event) -> Result<(), AiError> {
        let data = event.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let r: Response = parse(model, data.as_bytes())?;
        let mut next = outcome(model, model_type, r, data.as_bytes())?;
        // Usage may come with the last output only; keep what an earlier one said.
        if next.usage.is_none() {
            next.usage = self.last.as_mut().and_then(|l| l.usage.take());
        }
        self.last = Some(next);
        Ok(())
    }

    pub fn finish(self, model: &str) -> Result<ChatOutcome, AiError> {
        self.last.ok_or_else(|| malformed(model, "the stream ended without any output"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{find_at, Provider};
    use serde_json::json;

    #[test]
    fn body_puts_parameters_where_seed_003_does() {
        let spec = find_at(Provider::OpenSearch, "deepseek-r1").unwrap();
        let params = json!({"temperature": 0.5, "top_k": 50, "enable_search": true, "csi_level": "loose",
                            "search_top_k": 5, "timeout": 3});
        let r = chat_request(
            spec,
            &url("http://h.example/", "default", "deepseek-r1"),
            vec![json!({"role": "user", "content": "hi"})],
            params.as_object().unwrap(),
        );
        assert_eq!(r.url, "http://h.example/v3/openapi/workspaces/default/text-generation/deepseek-r1");
        assert_eq!(
            r.body,
            json!({"messages": [{"role": "user", "content": "hi"}], "stream": false, "enable_search": true,
                   "csi_level": "loose", "parameters": {"temperature": 0.5, "top_k": 50, "search_top_k": 5}})
        );
    }

    #[test]
    fn answers_errors_and_streams() {
        let ok = br#"{"request_id": "r1", "latency": 5.1, "result": {"text": "Zhengzhou", "search_results": [{"url": "u"}]},
                      "usage": {"output_tokens": 2, "input_tokens": 3, "total_tokens": 5}}"#;
        let o = parse_chat("m", "qwen-max", ok).unwrap();
        assert_eq!(
            (o.content.as_str(), o.request_id.as_deref(), o.tokens().total_tokens),
            ("Zhengzhou", Some("r1"), 5)
        );
        assert_eq!(o.search_results, Some(json!([{"url": "u"}])));
        let e = parse_chat(
            "m",
            "qwen-max",
            br#"{"request_id": "r", "latency": 0, "code": "InvalidParameter", "message": "bad"}"#,
        )
        .unwrap_err();
        assert!(matches!(e, AiError::Provider { status: 400, .. }), "{e:?}");
        let mut s = StreamAssembler::default();
        for text in ["Zh", "Zheng", "Zhengzhou"] {
            let data = json!({"request_id": "r", "result": {"text": text}}).to_string();
            s.feed("m", "qwen-max", &Event { data }).unwrap();
        }
        assert_eq!(s.finish("m").unwrap().content, "Zhengzhou");
        assert!(StreamAssembler::default().finish("m").is_err());
    }
}
