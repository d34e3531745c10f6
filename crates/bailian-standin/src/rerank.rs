//! DashScope's native text rerank (`POST /api/v1/services/rerank/text-rerank/text-rerank`).
//!
//! Source: the text-rerank API reference
//! (https://www.alibabacloud.com/help/en/model-studio/text-rerank-api): the request
//! (`input.query`, `input.documents`, `parameters.return_documents` default false,
//! `parameters.top_n` default all, `parameters.instruct` for qwen3-rerank), the answer
//! (`output.results[]` of `index`, `relevance_score`, `document.text` when asked, best first;
//! `usage.total_tokens`; `request_id`) and the per-model limits (see `models::rerank`).
//! Clients read the same fields (cherry-studio's DashscopeReranker, rig-bailian's rerank.rs).
//! Refusals use the native shape; their wording is not documented and each is a guess in the
//! style of the stand-in's other native refusals.

use crate::embedding::words_of;
use crate::errors::{invalid, request_id, Api, UNKNOWN_MODEL};
use crate::models;
use crate::request::Outcome;
use crate::tokens::approx_tokens;
use serde_json::{json, Value};
use std::collections::HashSet;

/// What the request log and scripts key on: the query, then each document.
pub(crate) fn inputs_of(body: &Value) -> Vec<String> {
    let query = body.pointer("/input/query").and_then(Value::as_str).map(str::to_string);
    let documents = body.pointer("/input/documents").and_then(Value::as_array).into_iter().flatten();
    query.into_iter().chain(documents.map(|d| d.as_str().unwrap_or_default().to_string())).collect()
}

/// The stand-in's relevance of `document` to `query`: the share of the query's distinct words
/// (`words_of`) the document has, to 4 decimals; 0 for a query without words. Chat's "rank"
/// schemas score the same way, so both routes agree.
pub(crate) fn relevance(query: &str, document: &str) -> f64 {
    let query: HashSet<String> = words_of(query).into_iter().collect();
    if query.is_empty() {
        return 0.0;
    }
    let document: HashSet<String> = words_of(document).into_iter().collect();
    let shared = query.intersection(&document).count();
    (shared as f64 / query.len() as f64 * 10_000.0).round() / 10_000.0
}

pub(crate) fn rerank(body: &Value, model: &str, id: u64) -> Outcome {
    let bad = |m: &str| invalid(Api::Native, m, id);
    let Some(spec) = models::rerank(model) else {
        return bad(UNKNOWN_MODEL);
    };
    let Some(input) = body.get("input").filter(|i| !i.is_null()) else {
        return crate::errors::empty_input(id);
    };
    let Some(query) = input.get("query").and_then(Value::as_str).filter(|q| !q.trim().is_empty()) else {
        return bad("input.query must be a non-empty string.");
    };
    let documents: Option<Vec<&str>> =
        input.get("documents").and_then(Value::as_array).and_then(|d| d.iter().map(Value::as_str).collect());
    let Some(documents) = documents.filter(|d| !d.is_empty()) else {
        return bad("input.documents must be a non-empty array of strings.");
    };
    if documents.len() > spec.max_documents {
        return bad(&format!(
            "input.documents can contain at most {} documents for {model}, got {}.",
            spec.max_documents,
            documents.len()
        ));
    }
    let params = body.get("parameters").filter(|p| !p.is_null()).cloned().unwrap_or(json!({}));
    if !params.is_object() {
        return bad("parameters must be an object.");
    }
    let return_documents = match params.get("return_documents") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad("parameters.return_documents must be a boolean."),
    };
    let top_n = match params.get("top_n") {
        None | Some(Value::Null) => documents.len(),
        Some(n) => match n.as_u64().filter(|n| *n >= 1) {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => return bad("parameters.top_n must be a positive integer."),
        },
    };
    // The reference lists instruct for qwen3-rerank only and says nothing of what gte-rerank-v2
    // does with it; ignoring it there is the likelier behaviour.
    if spec.instructs && params.get("instruct").is_some_and(|i| !i.is_null() && !i.is_string()) {
        return bad("parameters.instruct must be a string.");
    }
    let query_tokens = approx_tokens(query);
    let tokens =
        query_tokens * documents.len() as u64 + documents.iter().map(|d| approx_tokens(d)).sum::<u64>();
    if tokens > spec.max_request_tokens {
        return bad(&format!(
            "The input is too long for {model}: query tokens × documents + document tokens is {tokens}, more than {}.",
            spec.max_request_tokens
        ));
    }

    let mut ranked: Vec<(usize, f64)> =
        documents.iter().enumerate().map(|(i, d)| (i, relevance(query, d))).collect();
    // A stable sort: equal scores keep the documents' order.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let results: Vec<Value> = ranked
        .into_iter()
        .take(top_n)
        .map(|(index, score)| {
            let mut result = json!({"index": index, "relevance_score": score});
            if return_documents {
                result["document"] = json!({"text": documents[index]});
            }
            result
        })
        .collect();
    Outcome::Respond {
        status: 200,
        body: json!({
            "output": {"results": results},
            "usage": {"total_tokens": tokens},
            "request_id": request_id(id),
        }),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevance_is_the_share_of_query_words() {
        assert_eq!(relevance("What is a rerank model?", "A rerank model sorts documents."), 0.6);
        assert_eq!(relevance("red fox", "RED"), 0.5);
        assert_eq!(relevance("a b c", "c"), 0.3333);
        assert_eq!(relevance("...", "anything"), 0.0);
        assert_eq!(relevance("文本排序", "排序模型"), 0.5);
    }
}
