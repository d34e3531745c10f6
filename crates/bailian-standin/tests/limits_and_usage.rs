//! Rate limits per key and model and the 429s they answer with, over real HTTP.

mod common;

use bailian_standin::{Config, Standin};
use common::{error_of, send, Reply};
use serde_json::{json, Value};
use std::time::Duration;

const CHAT: &str = "/compatible-mode/v1/chat/completions";
const EMBEDDINGS: &str = "/compatible-mode/v1/embeddings";
const MULTIMODAL: &str = "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding";
const RERANK: &str = "/api/v1/services/rerank/text-rerank/text-rerank";
const A: &str = "sk-key-a-0001";
const B: &str = "sk-key-b-0002";

fn start(config: Config) -> Standin {
    Standin::start(config).unwrap()
}

async fn call(s: &Standin, path: &str, key: &str, body: Value) -> Reply {
    send(&s.root_url(), "POST", path, key, &body.to_string()).await
}

async fn chat(s: &Standin, key: &str, model: &str, text: &str) -> Reply {
    call(s, CHAT, key, json!({"model": model, "messages": [{"role": "user", "content": text}]})).await
}

async fn mm(s: &Standin, key: &str, model: &str, text: &str) -> Reply {
    call(s, MULTIMODAL, key, json!({"model": model, "input": {"contents": [{"text": text}]}})).await
}

async fn rerank(s: &Standin, key: &str) -> Reply {
    let body = json!({"model": "gte-rerank-v2",
        "input": {"query": "red fox", "documents": ["a red fox", "a blue whale"]}});
    call(s, RERANK, key, body).await
}

fn faults(s: &Standin) -> Vec<Option<String>> {
    s.requests().into_iter().map(|r| r.fault).collect()
}

#[tokio::test]
async fn request_limits_are_per_key_and_per_model() {
    // 60 per minute is one per second, for each key and model on its own.
    let s = start(Config { rpm_limit: Some(60), ..Config::default() });
    assert_eq!(chat(&s, A, "qwen-plus", "one").await.status, 200);
    let refused = chat(&s, A, "qwen-plus", "two").await;
    assert_eq!(
        error_of(&refused),
        (429, "limit_requests".into(), "Requests rate limit exceeded, please try again later.".into())
    );
    assert_eq!(refused.json()["error"]["type"], "limit_requests");
    assert_eq!(refused.retry_after, None, "Bailian documents no Retry-After; none unless configured");
    assert_eq!(chat(&s, B, "qwen-plus", "two").await.status, 200, "another key has its own windows");
    assert_eq!(chat(&s, A, "qwen-flash", "two").await.status, 200, "another model has its own");

    // The native APIs refuse in their own shape.
    assert_eq!(rerank(&s, A).await.status, 200);
    let refused = rerank(&s, A).await;
    assert_eq!(
        error_of(&refused),
        (429, "Throttling.RateQuota".into(), "Requests rate limit exceeded, please try again later.".into())
    );

    let stats = s.stats();
    assert_eq!(
        (stats.requests, stats.rate_limited, stats.chat_requests, stats.rerank_requests),
        (6, 2, 3, 1)
    );
    let f = faults(&s);
    assert_eq!((f[1].as_deref(), f[5].as_deref()), (Some("rps limit"), Some("rps limit")));
}

#[tokio::test]
async fn the_second_refuses_a_burst_under_the_minute_limit() {
    // 600 per minute: ten per second. Twenty at once are far under the minute's 600.
    let s = start(Config { rpm_limit: Some(600), retry_after_secs: Some(1.0), ..Config::default() });
    let root = s.root_url();
    let burst: Vec<_> = (0..20)
        .map(|i| {
            let root = root.clone();
            let body = json!({"model": "text-embedding-v4", "input": [format!("burst {i}")]}).to_string();
            tokio::spawn(async move { send(&root, "POST", EMBEDDINGS, A, &body).await })
        })
        .collect();
    let mut replies = Vec::new();
    for r in burst {
        replies.push(r.await.unwrap());
    }
    let admitted = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(admitted + refused.len(), 20);
    assert!(admitted >= 10, "one second's worth is admitted at once: {admitted}");
    assert!(refused.len() >= 5, "the rest of the burst is refused: {}", refused.len());
    for r in &refused {
        assert_eq!(error_of(r).1, "limit_requests");
        // The wait is at most 100 ms, rounded up to whole seconds.
        assert_eq!(r.retry_after.as_deref(), Some("1"));
    }
    assert!(s.requests().iter().filter(|r| r.status == 429).all(|r| r.fault.as_deref() == Some("rps limit")));
    assert_eq!(s.stats().embedding_requests, admitted as u64, "refused requests are not served");

    // A second later the bucket has room again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = call(&s, EMBEDDINGS, A, json!({"model": "text-embedding-v4", "input": ["later"]})).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn token_limits_refuse_with_insufficient_quota() {
    // 600 tokens per minute: 10 per second.
    let s = start(Config { tpm_limit: Some(600), ..Config::default() });
    let prompt = "x".repeat(40);
    let r = chat(&s, A, "qwen-long", &prompt).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["usage"]["total_tokens"].as_u64().unwrap() >= 10);
    // The answer filled the second: the next request is refused though the minute has room.
    let refused = chat(&s, A, "qwen-long", "again").await;
    assert_eq!(
        error_of(&refused),
        (
            429,
            "insufficient_quota".into(),
            "You exceeded your current quota, please check your plan and billing details.".into()
        )
    );
    assert_eq!(refused.json()["error"]["type"], "insufficient_quota");
    assert_eq!(faults(&s)[1].as_deref(), Some("tps limit"));

    // Embeddings count their input; the native shape names the quota.
    let r = mm(&s, A, "multimodal-embedding-v1", &prompt).await;
    assert_eq!((r.status, r.json()["usage"]["input_tokens"].as_u64()), (200, Some(10)));
    assert_eq!(
        error_of(&mm(&s, A, "multimodal-embedding-v1", "x").await),
        (
            429,
            "Throttling.AllocationQuota".into(),
            "Allocated quota exceeded, please increase your quota limit.".into()
        )
    );

    // The minute: an answer of 600 tokens or more fills it; a second later, with the second's
    // window empty again, the minute still refuses.
    let big = "y".repeat(4 * 600);
    assert_eq!(chat(&s, B, "qwen-long", &big).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    s.configure(|c| c.retry_after_secs = Some(1.0));
    let refused = chat(&s, B, "qwen-long", "more").await;
    assert_eq!(error_of(&refused).1, "insufficient_quota");
    assert_eq!(s.requests().last().unwrap().fault.as_deref(), Some("tpm limit"));
    let wait: u64 = refused.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((57..=59).contains(&wait), "until the big answer leaves the minute: {wait}");

    assert_eq!(s.stats().rate_limited, 3);
}
