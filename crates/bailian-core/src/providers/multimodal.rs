//! Bailian's DashScope-native multimodal embedding API, which serves the models compatible
//! mode does not (`multimodal-embedding-v1`, `tongyi-embedding-vision-*`,
//! `qwen3-vl-embedding`; compatible `/embeddings` answers them 404 model_not_supported):
//! `POST {root}/services/embeddings/multimodal-embedding/multimodal-embedding` with
//! `{"model", "input": {"contents": [{"text"} | {"image"}]}, "parameters": {"dimension"}}`,
//! answered by `{"output": {"embeddings": [{"index", "embedding", "type"}]}, "usage",
//! "request_id"}` (Bailian's multimodal embedding API reference). Each content gets its own
//! vector (no `enable_fusion`).

use super::{order_vectors, EmbedInput, EmbeddingModel, Usage};
use crate::error::AiError;
use serde::Deserialize;
use serde_json::{json, Value};

pub const PATH: &str = "/services/embeddings/multimodal-embedding/multimodal-embedding";

/// The native API root (`.../api/v1`) for a compatible-mode base URL: Bailian serves both
/// under one host (`/compatible-mode/v1` and `/api/v1`). A base that already is a native
/// root is taken as is; any other path says nothing about where the native API lives.
pub fn native_root(base: &str) -> Option<String> {
    let base = base.trim_end_matches('/');
    if let Some(host) = base.strip_suffix("/compatible-mode/v1") {
        return Some(format!("{host}/api/v1"));
    }
    base.ends_with("/api/v1").then(|| base.to_string())
}

pub fn body(model: &EmbeddingModel, inputs: &[EmbedInput<'_>]) -> Value {
    let contents: Vec<Value> = inputs
        .iter()
        .map(|i| match i {
            EmbedInput::Text(t) => json!({"text": t}),
            EmbedInput::Image(uri) => json!({"image": uri}),
        })
        .collect();
    let mut body = json!({"model": model.model_type, "input": {"contents": contents}});
    if let (Some(d), true) = (model.dimension, model.choosable) {
        body["parameters"] = json!({"dimension": d});
    }
    body
}

#[derive(Deserialize)]
struct Response {
    output: Output,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Output {
    embeddings: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: Option<usize>,
    #[serde(deserialize_with = "super::f32_through_f64")]
    embedding: Vec<f32>,
}

/// The vectors, in input order, each checked like compatible mode's.
pub fn parse(
    model: &str,
    body: &[u8],
    expected: usize,
    dimension: Option<u32>,
) -> Result<(Vec<Vec<f32>>, Usage), AiError> {
    let r: Response = super::parse(model, body)?;
    let items = r.output.embeddings.into_iter().map(|i| (i.index, i.embedding)).collect();
    Ok((order_vectors(model, "output.embeddings", items, expected, dimension)?, r.usage.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Api;

    #[test]
    fn native_root_follows_the_compatible_base() {
        assert_eq!(
            native_root("https://dashscope.aliyuncs.com/compatible-mode/v1").as_deref(),
            Some("https://dashscope.aliyuncs.com/api/v1")
        );
        assert_eq!(native_root("http://127.0.0.1:9/api/v1/").as_deref(), Some("http://127.0.0.1:9/api/v1"));
        assert_eq!(native_root("https://gw.example/v1"), None);
    }

    #[test]
    fn bodies_and_answers() {
        let m = EmbeddingModel {
            model_type: "tongyi-embedding-vision-plus",
            api: Api::MultimodalEmbedding,
            url: String::new(),
            dimension: Some(256),
            choosable: true,
            per_request: 8,
        };
        assert_eq!(
            body(&m, &[EmbedInput::Text("a"), EmbedInput::Image("data:image/png;base64,AA==")]),
            json!({"model": "tongyi-embedding-vision-plus",
                   "input": {"contents": [{"text": "a"}, {"image": "data:image/png;base64,AA=="}]},
                   "parameters": {"dimension": 256}})
        );
        let fixed = EmbeddingModel { choosable: false, ..m };
        assert!(body(&fixed, &[EmbedInput::Text("a")]).get("parameters").is_none());
        let answer = br#"{"output": {"embeddings": [{"index": 1, "embedding": [3, 4], "type": "image"},
            {"index": 0, "embedding": [1, 2], "type": "text"}]}, "usage": {"input_tokens": 3}, "request_id": "r"}"#;
        let (v, _) = parse("m", answer, 2, Some(2)).unwrap();
        assert_eq!(v, vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert!(parse("m", answer, 2, Some(3)).is_err());
        assert!(parse("m", br#"{"output": {}}"#, 1, None).is_err());
    }
}
