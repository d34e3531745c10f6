//! DashScope's native text rerank over real HTTP.

mod common;

use bailian_standin::{Config, Fault, Standin};
use common::{error_of, post, send, Reply};
use serde_json::{json, Value};

const RERANK: &str = "/api/v1/services/rerank/text-rerank/text-rerank";

fn start() -> Standin {
    Standin::start(Config::default()).unwrap()
}

async fn rerank(s: &Standin, model: &str, query: &str, documents: Value, parameters: Value) -> Reply {
    let body =
        json!({"model": model, "input": {"query": query, "documents": documents}, "parameters": parameters});
    post(&s.root_url(), RERANK, &body).await
}

const QUERY: &str = "What is a text rerank model?";

fn documents() -> Value {
    json!([
        "Text rerank models sort documents by relevance.",
        "Quantum computing is a frontier field.",
        "A rerank model reorders what a retriever found.",
    ])
}

#[tokio::test]
async fn documents_come_back_best_first() {
    let s = start();
    let r = rerank(&s, "gte-rerank-v2", QUERY, documents(), json!({})).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    // Query words: what, is, a, text, rerank, model. Document 2 has four of them, 0 and 1 two
    // each: the tie keeps their order.
    assert_eq!(
        v["output"]["results"],
        json!([
            {"index": 2, "relevance_score": 0.6667},
            {"index": 0, "relevance_score": 0.3333},
            {"index": 1, "relevance_score": 0.3333},
        ])
    );
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(v["request_id"].as_str().unwrap().starts_with("standin-"));
    let mut inputs = vec![QUERY.to_string()];
    inputs.extend(documents().as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()));
    assert_eq!(s.requests()[0].inputs, inputs);
    assert_eq!(s.requests()[0].model, "gte-rerank-v2");
    let stats = s.stats();
    assert_eq!(
        (stats.rerank_requests, stats.chat_requests, stats.embedding_requests, stats.inputs),
        (1, 0, 0, 4)
    );

    let v = rerank(
        &s,
        "qwen3-rerank",
        QUERY,
        documents(),
        json!({"top_n": 2, "return_documents": true,
        "instruct": "Given a web search query, retrieve relevant passages that answer the query."}),
    )
    .await
    .json();
    assert_eq!(
        v["output"]["results"],
        json!([
            {"index": 2, "relevance_score": 0.6667, "document": {"text": "A rerank model reorders what a retriever found."}},
            {"index": 0, "relevance_score": 0.3333, "document": {"text": "Text rerank models sort documents by relevance."}},
        ])
    );
    let v = rerank(&s, "gte-rerank-v2", QUERY, documents(), json!({"top_n": 10})).await.json();
    assert_eq!(v["output"]["results"].as_array().unwrap().len(), 3, "top_n beyond the documents: all");
}

#[tokio::test]
async fn limits_and_empty_inputs() {
    let s = start();
    let many = |n: usize| json!((0..n).map(|i| format!("doc {i}")).collect::<Vec<_>>());
    for model in ["gte-rerank-v2", "qwen3-rerank"] {
        let r = rerank(&s, model, "doc", many(500), json!({"top_n": 1})).await;
        assert_eq!(r.status, 200, "{model}: 500 documents are allowed");
        let (status, code, msg) = error_of(&rerank(&s, model, "doc", many(501), json!({})).await);
        assert_eq!((status, code.as_str()), (400, "InvalidParameter"), "{model}");
        assert!(msg.contains("at most 500 documents"), "{msg}");
    }
    let refused = [
        (json!({"model": "gte-rerank-v2", "input": {"query": "", "documents": ["a"]}}), "input.query"),
        (json!({"model": "gte-rerank-v2", "input": {"query": "q", "documents": []}}), "input.documents"),
        (json!({"model": "gte-rerank-v2", "input": {"query": "q", "documents": [1]}}), "input.documents"),
        (
            json!({"model": "gte-rerank-v2", "input": {"query": "q", "documents": ["a"]}, "parameters": {"top_n": 0}}),
            "top_n",
        ),
        (
            json!({"model": "gte-rerank-v2", "input": {"query": "q", "documents": ["a"]}, "parameters": {"return_documents": "yes"}}),
            "return_documents",
        ),
    ];
    for (body, what) in refused {
        let r = post(&s.root_url(), RERANK, &body).await;
        let (status, code, msg) = error_of(&r);
        assert_eq!((status, code.as_str()), (400, "InvalidParameter"), "{body}");
        assert!(msg.contains(what), "{msg}");
        assert!(r.json()["request_id"].is_string());
    }
    let r = post(&s.root_url(), RERANK, &json!({"model": "gte-rerank-v2"})).await;
    assert_eq!(
        error_of(&r),
        (400, "BadRequest.EmptyInput".into(), "Required input parameter missing from request.".into())
    );
    // gte-rerank-v2 takes 30,000 input tokens a request: query tokens × documents + document tokens.
    let long = "word ".repeat(600);
    let r = rerank(&s, "gte-rerank-v2", &long, many(100), json!({})).await;
    assert_eq!(error_of(&r).0, 400);
    assert_eq!(rerank(&s, "qwen3-rerank", &long, many(100), json!({})).await.status, 200);
}

#[tokio::test]
async fn models_keys_and_faults() {
    let s = start();
    for model in ["gte-rerank-v9", "qwen-plus", "text-embedding-v4"] {
        let r = rerank(&s, model, QUERY, documents(), json!({})).await;
        assert_eq!(error_of(&r), (400, "InvalidParameter".into(), "Model not exist.".into()), "{model}");
    }
    let r = rerank(&s, "", QUERY, documents(), json!({})).await;
    assert_eq!(error_of(&r).1, "BadRequest.EmptyModel");
    let r = send(&s.root_url(), "POST", RERANK, "bad", "{}").await;
    assert_eq!(error_of(&r), (401, "InvalidApiKey".into(), "Invalid API-key provided.".into()));
    s.configure(|c| c.unavailable_models = vec!["qwen3-rerank".into()]);
    let r = rerank(&s, "qwen3-rerank", QUERY, documents(), json!({})).await;
    assert_eq!(error_of(&r), (404, "ModelNotFound".into(), "Model can not be found.".into()));

    // Scripts key on the query (the first input), or on a document.
    s.script(QUERY, vec![Fault::Status(500), Fault::Malformed, Fault::Status(429)]);
    let r = rerank(&s, "gte-rerank-v2", QUERY, documents(), json!({})).await;
    assert_eq!(error_of(&r).0, 500);
    assert_eq!(error_of(&r).1, "InternalError");
    let r = rerank(&s, "gte-rerank-v2", QUERY, documents(), json!({})).await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(r.body.as_ref().unwrap()).is_err(), "malformed");
    let r = rerank(&s, "gte-rerank-v2", QUERY, documents(), json!({})).await;
    assert_eq!(error_of(&r).1, "Throttling.RateQuota");
    assert_eq!(rerank(&s, "gte-rerank-v2", QUERY, documents(), json!({})).await.status, 200);
    s.script("Quantum computing is a frontier field.", vec![Fault::Delay(50)]);
    let r = rerank(&s, "gte-rerank-v2", QUERY, documents(), json!({})).await;
    assert_eq!(r.status, 200);
    let last = s.requests().into_iter().last().unwrap();
    assert!(last.finished_ms - last.received_ms >= 50.0, "{last:?}");
    assert_eq!(last.fault.as_deref(), Some("Delay(50)"));
}
