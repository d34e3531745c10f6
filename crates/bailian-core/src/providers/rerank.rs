//! Bailian's text rerank API (DashScope native; the text-rerank API reference):
//! `POST {root}/services/rerank/text-rerank/text-rerank` with `{"model", "input": {"query",
//! "documents": [...]}, "parameters": {"return_documents": false}}`, answered by
//! `{"output": {"results": [{"index", "relevance_score"}]}, "usage": {"total_tokens"},
//! "request_id"}`, results sorted by score. `ai_rank` sends one document per request.

use super::{malformed, parse, Usage};
use crate::error::AiError;
use serde::Deserialize;
use serde_json::{json, Value};

pub const PATH: &str = "/services/rerank/text-rerank/text-rerank";

pub fn body(model_type: &str, query: &str, documents: &[&str]) -> Value {
    json!({
        "model": model_type,
        "input": {"query": query, "documents": documents},
        "parameters": {"return_documents": false},
    })
}

#[derive(Deserialize)]
struct Response {
    output: Output,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Output {
    results: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    relevance_score: f64,
}

/// Each document's relevance score in [0, 1], in the order the documents were sent.
pub fn scores(model: &str, body: &[u8], expected: usize) -> Result<(Vec<f64>, Usage), AiError> {
    let r: Response = parse(model, body)?;
    let mut out: Vec<Option<f64>> = vec![None; expected];
    for item in r.output.results {
        let Some(slot) = out.get_mut(item.index) else {
            return Err(malformed(
                model,
                format!("output.results names document {} of {expected}", item.index),
            ));
        };
        if !(0.0..=1.0).contains(&item.relevance_score) {
            return Err(malformed(
                model,
                format!(
                    "relevance_score {} of document {} is outside [0, 1]",
                    item.relevance_score, item.index
                ),
            ));
        }
        *slot = Some(item.relevance_score);
    }
    let scores = out
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.ok_or_else(|| malformed(model, format!("output.results has no score for document {i}")))
        })
        .collect::<Result<Vec<f64>, AiError>>()?;
    Ok((scores, r.usage.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_scores_in_input_order() {
        assert_eq!(
            body("gte-rerank-v2", "q", &["a", "b"]),
            json!({"model": "gte-rerank-v2", "input": {"query": "q", "documents": ["a", "b"]},
                   "parameters": {"return_documents": false}})
        );
        let answer = br#"{"output": {"results": [{"index": 1, "relevance_score": 0.9},
                          {"index": 0, "relevance_score": 0.1}]}, "usage": {"total_tokens": 7}}"#;
        let (s, usage) = scores("m", answer, 2).unwrap();
        assert_eq!(s, [0.1, 0.9]);
        assert_eq!(usage.total_tokens, 7);
    }

    #[test]
    fn answers_that_do_not_fit_are_malformed() {
        for body in [
            &br#"{"output": {"results": [{"index": 3, "relevance_score": 0.5}]}}"#[..],
            br#"{"output": {"results": []}}"#,
            br#"{"output": {"results": [{"index": 0, "relevance_score": 1.5}]}}"#,
            br#"{"output": {}}"#,
        ] {
            assert_eq!(scores("m", body, 1).unwrap_err().sqlstate(), "ZBM01");
        }
    }
}
