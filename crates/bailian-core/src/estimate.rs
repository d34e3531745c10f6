//! What a request would cost before it is sent (`ai_estimate`): the texts its body carries
//! (to count their tokens) and the most output it may produce.

use crate::registry::{ModelSpec, Task};
use serde_json::Value;

/// Every text a request body sends to the model: message contents (plain or as text parts),
/// embedding and rerank inputs, OpenSearch messages. Images, audio and video are not text
/// and are not counted (their tokens depend on the provider's decoding).
pub fn request_texts(body: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    collect(body, &mut out);
    out
}

fn collect<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("content" | "text" | "query" | "input" | "prompt", Value::String(s)) => out.push(s),
                    ("documents" | "input" | "texts", Value::Array(items)) => {
                        for item in items {
                            match item {
                                Value::String(s) => out.push(s),
                                other => collect(other, out),
                            }
                        }
                    }
                    ("messages" | "content" | "input" | "contents", _) => collect(v, out),
                    _ => {}
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        _ => {}
    }
}

/// The most output tokens the request may be answered with: its `max_tokens` (top level or
/// in `parameters`), else the model's documented cap; 0 for models that answer with no
/// tokens (embeddings, rerank). None when nothing bounds it.
pub fn max_output_tokens(spec: &ModelSpec, body: &Value) -> Option<u64> {
    if matches!(spec.task, Task::Embedding | Task::Rerank) {
        return Some(0);
    }
    body.get("max_tokens")
        .or_else(|| body.pointer("/parameters/max_tokens"))
        .and_then(Value::as_u64)
        .or(spec.max_tokens_cap.map(u64::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn texts_of_every_body_shape() {
        let chat = json!({"model": "m", "messages": [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}, {"type": "text", "text": "what is it"}]}]});
        assert_eq!(request_texts(&chat), vec!["be brief", "what is it"]);
        assert_eq!(request_texts(&json!({"model": "e", "input": ["a", "b"]})), vec!["a", "b"]);
        assert_eq!(request_texts(&json!({"input": "a"})), vec!["a"]);
        let rerank = json!({"input": {"query": "q", "documents": ["d1", "d2"]}});
        assert_eq!(request_texts(&rerank), vec!["d1", "d2", "q"]);
        let mm = json!({"input": {"contents": [{"text": "t"}, {"image": "http://i"}]}});
        assert_eq!(request_texts(&mm), vec!["t"]);
    }
}
