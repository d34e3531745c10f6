//! Rate limits per key and model, the 429s they answer with, and the usage the stand-in counts
//! against the usage its answers carried, over real HTTP.

mod common;

use bailian_standin::{chat_reply, key_hint, reasoning_reply, Config, Fault, Standin, Tokens, UsageRow};
use common::{error_of, send, Reply};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const CHAT: &str = "/compatible-mode/v1/chat/completions";
const EMBEDDINGS: &str = "/compatible-mode/v1/embeddings";
const MULTIMODAL: &str = "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding";
const RERANK: &str = "/api/v1/services/rerank/text-rerank/text-rerank";
const A: &str = "sk-key-a-0001";
const B: &str = "sk-key-b-0002";
const OS_KEY: &str = "OS-key-0003";

fn start(config: Config) -> Standin {
    Standin::start(config).unwrap()
}

/// The stand-in's token count: four characters a token, at least one.
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
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

    let a = s.usage_of("qwen-plus", &key_hint(A));
    assert_eq!((a.requests, a.answered, a.rate_limited_rpm, a.rate_limited_tpm, a.errors), (2, 1, 1, 0, 0));
    assert_eq!(a.statuses, BTreeMap::from([(200, 1), (429, 1)]));
    assert_eq!(a.inputs, 1, "a refused request's input is not counted");
    assert_eq!(s.usage_of("qwen-plus", &key_hint(B)).answered, 1);
    assert_eq!(s.usage_of("gte-rerank-v2", &key_hint(A)).rate_limited_rpm, 1);
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
    let u = s.usage_of("text-embedding-v4", &key_hint(A));
    assert_eq!((u.answered, u.rate_limited_rpm), (admitted as u64, refused.len() as u64));
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

    let a = s.usage_of("qwen-long", &key_hint(A));
    assert_eq!((a.answered, a.rate_limited_tpm, a.rate_limited_rpm), (1, 1, 0));
    assert_eq!(s.usage_of("multimodal-embedding-v1", &key_hint(A)).rate_limited_tpm, 1);
    assert_eq!(s.usage_of("qwen-long", &key_hint(B)).rate_limited_tpm, 1);
    assert_eq!(s.stats().rate_limited, 3);
}

/// The usage an answer the test received carried: a JSON body's `usage`, or the last event
/// of a stream that has one; none for an error or a body cut short.
fn reported(r: &Reply) -> Option<Value> {
    if r.status != 200 || r.body.is_err() {
        return None;
    }
    let usage = |v: &Value| v.get("usage").filter(|u| u.is_object()).cloned();
    if r.text().starts_with("data: ") {
        r.events().iter().rev().find_map(usage)
    } else {
        usage(&r.json())
    }
}

/// Sums of the usage fields, by the names each API documents.
fn sum(usages: &[Value]) -> (Tokens, u64) {
    let mut t = Tokens::default();
    for u in usages {
        let n = |p: &str| u.pointer(p).and_then(Value::as_u64);
        let prompt = n("/prompt_tokens").or(n("/input_tokens")).unwrap_or(0);
        let completion = n("/completion_tokens").or(n("/output_tokens")).unwrap_or(0);
        t.prompt_tokens += prompt;
        t.completion_tokens += completion;
        t.total_tokens += n("/total_tokens").unwrap_or(prompt + completion);
        t.cached_tokens += n("/prompt_tokens_details/cached_tokens").unwrap_or(0);
        t.reasoning_tokens += n("/completion_tokens_details/reasoning_tokens").unwrap_or(0);
    }
    (t, usages.len() as u64)
}

#[tokio::test]
async fn usage_sums_what_the_answers_carried() {
    // A pause between events, so a stream that breaks has sent its headers and first events.
    let s = start(Config { stream_chunk_delay_ms: 2, ..Config::default() });
    let system = "You answer questions about the house rules. ".repeat(30);
    let messages =
        |text: &str| json!([{"role": "system", "content": system}, {"role": "user", "content": text}]);
    let stream = json!({"include_usage": true});
    s.script("boom", vec![Fault::Status(500)]);
    s.script("cut", vec![Fault::StreamBreak { after: 2 }]);
    let requests: Vec<(&str, &str, &str, Value)> = vec![
        ("qwen-plus", A, CHAT, json!({"model": "qwen-plus", "messages": messages("one")})),
        // The same long system prompt again: a cache hit.
        ("qwen-plus", A, CHAT, json!({"model": "qwen-plus", "messages": messages("two"), "n": 2})),
        (
            "qwen-plus",
            A,
            CHAT,
            json!({"model": "qwen-plus", "messages": messages("three"), "stream": true, "stream_options": stream}),
        ),
        // Without include_usage a stream reports nothing.
        ("qwen-plus", A, CHAT, json!({"model": "qwen-plus", "messages": messages("four"), "stream": true})),
        ("qwen-plus", B, CHAT, json!({"model": "qwen-plus", "messages": messages("five")})),
        (
            "qwq-plus",
            A,
            CHAT,
            json!({"model": "qwq-plus", "messages": messages("why"), "stream": true, "stream_options": stream}),
        ),
        ("deepseek-r1", A, CHAT, json!({"model": "deepseek-r1", "messages": messages("how")})),
        (
            "text-embedding-v4",
            A,
            EMBEDDINGS,
            json!({"model": "text-embedding-v4", "input": ["a b", "c d e f g h i j"]}),
        ),
        (
            "qwen3-vl-embedding",
            A,
            MULTIMODAL,
            json!({"model": "qwen3-vl-embedding", "input": {"contents": [{"text": "a red car"}, {"text": "two"}]}}),
        ),
        (
            "gte-rerank-v2",
            A,
            RERANK,
            json!({"model": "gte-rerank-v2", "input": {"query": "red fox", "documents": ["a red fox", "whale"]}}),
        ),
        (
            "qwen-max",
            OS_KEY,
            "/v3/openapi/workspaces/w/text-generation/qwen-max",
            json!({"messages": messages("os")}),
        ),
        (
            "qwen-max",
            OS_KEY,
            "/v3/openapi/workspaces/w/text-generation/qwen-max",
            json!({"messages": messages("os stream"), "stream": true}),
        ),
        // Refused, failed, and a stream cut before its usage chunk: nothing reported.
        ("qwen-plus", A, CHAT, json!({"model": "qwen-plus", "messages": messages("hot"), "temperature": 5})),
        ("qwen-plus", A, CHAT, json!({"model": "qwen-plus", "messages": messages("boom")})),
        (
            "qwen-plus",
            A,
            CHAT,
            json!({"model": "qwen-plus", "messages": messages("cut"), "stream": true, "stream_options": stream}),
        ),
    ];
    let mut seen: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    let mut statuses: BTreeMap<(String, String), Vec<u16>> = BTreeMap::new();
    for (model, key, path, body) in requests {
        let r = call(&s, path, key, body).await;
        let row = (model.to_string(), key_hint(key));
        statuses.entry(row.clone()).or_default().push(r.status);
        seen.entry(row).or_default().extend(reported(&r));
    }
    let rows = s.usage();
    assert_eq!(rows.len(), statuses.len(), "{rows:?}");
    for row in &rows {
        let key = (row.model.clone(), row.key_hint.clone());
        let (tokens, answers) = sum(&seen[&key]);
        assert_eq!(row.usage.tokens, tokens, "{key:?}");
        assert_eq!(row.usage.answers_with_usage, answers, "{key:?}");
        let got = &statuses[&key];
        assert_eq!(row.usage.requests, got.len() as u64, "{key:?}");
        assert_eq!(row.usage.answered, got.iter().filter(|s| **s == 200).count() as u64, "{key:?}");
        assert_eq!(row.usage.errors, got.iter().filter(|s| **s != 200).count() as u64, "{key:?}");
    }
    let a = s.usage_of("qwen-plus", &key_hint(A));
    assert_eq!((a.answered, a.errors, a.answers_with_usage), (5, 2, 3));
    assert!(a.tokens.cached_tokens >= 2 * 256, "the second and third hit the cache: {a:?}");
    assert!(s.usage_of("qwq-plus", &key_hint(A)).tokens.reasoning_tokens > 0);
    assert!(s.usage_of("deepseek-r1", &key_hint(A)).tokens.reasoning_tokens > 0);
    let inputs: BTreeMap<&str, u64> = rows.iter().map(|r| (r.model.as_str(), r.usage.inputs)).collect();
    assert_eq!(
        (inputs["text-embedding-v4"], inputs["qwen3-vl-embedding"], inputs["gte-rerank-v2"]),
        (2, 2, 3)
    );

    // The totals, and the same rows over HTTP.
    let total = s.usage_total();
    assert_eq!(total.requests, 15);
    assert_eq!(total.tokens.total_tokens, rows.iter().map(|r| r.usage.tokens.total_tokens).sum::<u64>());
    let over_http = send(&s.root_url(), "GET", "/_standin/usage", A, "").await;
    let over_http: Vec<UsageRow> = serde_json::from_str(&over_http.text()).unwrap();
    assert_eq!(over_http, rows);
    s.reset();
    assert!(s.usage().is_empty());
}

async fn ask(s: &Standin, key: &str, model: &str, system: &str, text: &str, stream: bool) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let r = call(s, CHAT, key, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    reported(&r).expect("usage")
}

#[tokio::test]
async fn reasoning_and_cached_tokens() {
    let s = start(Config::default());
    // Reasoning is counted inside completion_tokens and reported on its own.
    let u = ask(&s, A, "deepseek-r1", "Be brief.", "why", false).await;
    let (reasoning, content) = (reasoning_reply("deepseek-r1", "why"), chat_reply("deepseek-r1", "why", 0));
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], json!(tokens(&reasoning)));
    assert_eq!(u["completion_tokens"], json!(tokens(&reasoning) + tokens(&content)));
    assert_eq!(u["prompt_tokens"], json!(tokens("Be brief.") + tokens("why")));
    assert_eq!(
        u["total_tokens"],
        json!(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    let u = ask(&s, A, "qwq-plus", "Be brief.", "why", true).await;
    assert_eq!(
        u["completion_tokens_details"]["reasoning_tokens"],
        json!(tokens(&reasoning_reply("qwq-plus", "why")))
    );
    assert!(ask(&s, A, "qwen-plus", "Be brief.", "why", false)
        .await
        .get("completion_tokens_details")
        .is_none());

    // Implicit cache: 350 tokens of system prompt; a hit is whole blocks of 256.
    let system = "Rules! ".repeat(200);
    assert_eq!(tokens(&system), 350);
    let first = ask(&s, A, "qwen-plus", &system, "first", false).await;
    assert!(first.get("prompt_tokens_details").is_none(), "nothing cached yet: {first}");
    let second = ask(&s, A, "qwen-plus", &system, "second", false).await;
    assert_eq!(second["prompt_tokens_details"]["cached_tokens"], json!(256));
    assert_eq!(
        second["prompt_tokens"],
        json!(350 + tokens("second")),
        "cached tokens are part of the prompt's"
    );
    let streamed = ask(&s, A, "qwen-plus", &system, "third", true).await;
    assert_eq!(streamed["prompt_tokens_details"]["cached_tokens"], json!(256));
    // The cache is the key's and the model's; -latest and snapshots have none.
    assert!(ask(&s, B, "qwen-plus", &system, "fourth", false).await.get("prompt_tokens_details").is_none());
    for model in ["qwen-plus-latest", "qwen-long"] {
        ask(&s, A, model, &system, "fifth", false).await;
        let u = ask(&s, A, model, &system, "sixth", false).await;
        assert!(u.get("prompt_tokens_details").is_none(), "{model}: {u}");
    }
    // A shared prefix under 256 tokens is not cached.
    let short = "Short rules. ".repeat(70);
    assert!(tokens(&short) < 256);
    ask(&s, A, "qwen-flash", &short, "a", false).await;
    assert!(ask(&s, A, "qwen-flash", &short, "b", false).await.get("prompt_tokens_details").is_none());
    // A request that marks content for the explicit cache gets no implicit hit.
    let explicit = json!({"model": "qwen-plus", "messages": [
        {"role": "system", "content": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "seventh"}]});
    let r = call(&s, CHAT, A, explicit).await;
    assert!(r.json()["usage"].get("prompt_tokens_details").is_none(), "{}", r.text());

    assert_eq!(s.usage_of("qwen-plus", &key_hint(A)).tokens.cached_tokens, 512);
    // Off in the configuration, and gone after a reset.
    s.configure(|c| c.implicit_cache = false);
    assert!(ask(&s, A, "qwen-plus", &system, "eighth", false).await.get("prompt_tokens_details").is_none());
    s.configure(|c| c.implicit_cache = true);
    assert_eq!(
        ask(&s, A, "qwen-plus", &system, "ninth", false).await["prompt_tokens_details"]["cached_tokens"],
        json!(256)
    );
    s.reset();
    assert!(ask(&s, A, "qwen-plus", &system, "tenth", false).await.get("prompt_tokens_details").is_none());
}
