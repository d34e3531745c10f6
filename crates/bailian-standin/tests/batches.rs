//! The Batch File API (`/files`, `/batches`) and the Batch Chat host over real HTTP: the
//! documented objects and refusals, batches that complete, fail validation, fail lines,
//! are held, cancelled, expired and failed, and the usage they are billed.

mod common;

use bailian_standin::{chat_reply, key_hint, Config, Fault, Standin};
use bytes::Bytes;
use common::{error_of, send, send_bytes, Reply, KEY};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const BASE: &str = "/compatible-mode/v1";
const CHAT: &str = "/v1/chat/completions";
const EMBEDDINGS: &str = "/v1/embeddings";

/// Batches at test speed: an hour of the service's clock in 100 ms, so a batch's phases take
/// well under a millisecond and a 24h window lasts 2.4 s.
fn fast() -> Config {
    Config { batch_hour_ms: 100.0, ..Config::default() }
}

fn start(config: Config) -> Standin {
    Standin::start(config).unwrap()
}

/// A multipart form as the OpenAI SDK (httpx) sends it: `purpose`, then `file`.
fn form(purpose: &str, filename: &str, content: &[u8]) -> (String, Bytes) {
    let boundary = "standin-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), Bytes::from(body))
}

async fn upload_as(s: &Standin, key: &str, purpose: &str, content: &[u8]) -> Reply {
    let (content_type, body) = form(purpose, "input.jsonl", content);
    send_bytes(&s.root_url(), "POST", &format!("{BASE}/files"), key, &content_type, body).await
}

async fn upload(s: &Standin, content: &str) -> String {
    let r = upload_as(s, KEY, "batch", content.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

async fn get(s: &Standin, path: &str) -> Reply {
    send(&s.root_url(), "GET", &format!("{BASE}{path}"), KEY, "").await
}

async fn post(s: &Standin, path: &str, body: Value) -> Reply {
    send(&s.root_url(), "POST", &format!("{BASE}{path}"), KEY, &body.to_string()).await
}

async fn create(s: &Standin, file: &str, endpoint: &str) -> Reply {
    post(s, "/batches", json!({"input_file_id": file, "endpoint": endpoint, "completion_window": "24h"}))
        .await
}

/// Creates a batch of `lines` and returns its id.
async fn batch_of(s: &Standin, endpoint: &str, lines: &[Value]) -> String {
    let file = upload(s, &jsonl(endpoint, lines)).await;
    let r = create(s, &file, endpoint).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// One request line per body, with custom_ids `r0`, `r1`, ...
fn jsonl(endpoint: &str, bodies: &[Value]) -> String {
    bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            json!({"custom_id": format!("r{i}"), "method": "POST", "url": endpoint, "body": body}).to_string()
                + "\n"
        })
        .collect()
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Polls the batch until `done` says so, for at most 10 s.
async fn until(s: &Standin, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(s, &format!("/batches/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let batch = r.json();
        if done(&batch) {
            return batch;
        }
        assert!(Instant::now() < deadline, "batch never got there: {batch}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ended(batch: &Value) -> bool {
    matches!(batch["status"].as_str(), Some("completed" | "failed" | "expired" | "cancelled"))
}

/// The lines of a result file by custom_id.
async fn results(s: &Standin, file: &Value) -> BTreeMap<String, Value> {
    let Some(file) = file.as_str() else { return BTreeMap::new() };
    let r = get(s, &format!("/files/{file}/content")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["custom_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[tokio::test]
async fn files_are_uploaded_listed_and_deleted() {
    let s = start(Config { max_file_bytes: 1_000, ..fast() });
    let content = jsonl(CHAT, &[ask("qwen-plus", "hi")]);
    let r = upload_as(&s, KEY, "batch", content.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let file = r.json();
    let id = file["id"].as_str().unwrap();
    assert!(id.starts_with("file-batch-"), "{id}");
    assert_eq!(
        (&file["object"], &file["purpose"], &file["status"], &file["filename"], &file["bytes"]),
        (&json!("file"), &json!("batch"), &json!("processed"), &json!("input.jsonl"), &json!(content.len()))
    );
    assert!(file["created_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(get(&s, &format!("/files/{id}")).await.json(), file);
    let list = get(&s, "/files").await.json();
    assert_eq!((list["object"].as_str(), list["data"][0]["id"].as_str()), (Some("list"), Some(id)));
    assert_eq!(list["has_more"], false);
    assert_eq!(s.file_bytes(id).unwrap(), content.as_bytes());

    // Only a batch's result files can be downloaded (S1).
    let r = get(&s, &format!("/files/{id}/content")).await;
    assert_eq!(error_of(&r).0, 400);

    // Another key is another account: it sees none of these files.
    let other = send(&s.root_url(), "GET", &format!("{BASE}/files/{id}"), "sk-other-account", "").await;
    assert_eq!(other.status, 404);
    let r = send(&s.root_url(), "GET", &format!("{BASE}/files"), "sk-other-account", "").await;
    assert_eq!(r.json()["data"], json!([]));

    // Refusals: the purpose, the size, the key, the form.
    let (status, code, message) = error_of(&upload_as(&s, KEY, "file-extract", b"x").await);
    assert_eq!((status, code.as_str()), (400, "invalid_parameter_error"));
    assert!(message.contains("purpose"), "{message}");
    let (status, code, _) = error_of(&upload_as(&s, KEY, "batch", &[b'x'; 1_001]).await);
    assert_eq!((status, code.as_str()), (400, "BadRequest.TooLarge"));
    assert_eq!(error_of(&upload_as(&s, "not-a-key", "batch", b"x").await).0, 401);
    let r = send(&s.root_url(), "POST", &format!("{BASE}/files"), KEY, "{}").await;
    assert_eq!(error_of(&r).0, 400, "not multipart");

    let r = send(&s.root_url(), "DELETE", &format!("{BASE}/files/{id}"), KEY, "").await;
    assert_eq!(r.json(), json!({"id": id, "object": "file", "deleted": true}));
    assert_eq!(get(&s, &format!("/files/{id}")).await.status, 404);
    assert_eq!(s.stats().files_uploaded, 1);
}

#[tokio::test]
async fn a_batch_answers_as_the_live_endpoints_do() {
    let s = start(fast());
    let bodies = vec![
        ask("qwen-plus", "one"),
        ask("qwen-plus", "two two"),
        json!({"model": "qwen-plus", "messages": [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "three"}], "max_tokens": 2}),
    ];
    let file = upload(&s, &jsonl(CHAT, &bodies)).await;
    let r = post(
        &s,
        "/batches",
        json!({"input_file_id": file, "endpoint": CHAT, "completion_window": "2d",
               "metadata": {"ds_name": "test", "ds_description": "a test batch"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("batch_"));
    assert_eq!(created["status"], "validating");
    assert_eq!(created["request_counts"], json!({"total": 0, "completed": 0, "failed": 0}));
    assert_eq!(created["metadata"]["ds_name"], "test");
    let t0 = created["created_at"].as_u64().unwrap();
    assert_eq!(created["expires_at"].as_u64(), Some(t0 + 48 * 3600));
    for field in
        ["in_progress_at", "finalizing_at", "completed_at", "output_file_id", "error_file_id", "errors"]
    {
        assert!(created[field].is_null(), "{field}");
    }

    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"], json!({"total": 3, "completed": 3, "failed": 0}));
    assert!(batch["error_file_id"].is_null());
    let times: Vec<u64> = ["created_at", "in_progress_at", "finalizing_at", "completed_at"]
        .iter()
        .map(|f| batch[f].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    for field in ["failed_at", "expired_at", "cancelling_at", "cancelled_at"] {
        assert!(batch[field].is_null(), "{field}");
    }
    let output_id = batch["output_file_id"].as_str().unwrap();
    assert!(output_id.starts_with("file-batch_output-"), "{output_id}");
    let meta = get(&s, &format!("/files/{output_id}")).await.json();
    assert_eq!(meta["purpose"], "batch_output");

    // Each line's body equals the live answer to the same request, but its id.
    let out = results(&s, &batch["output_file_id"]).await;
    assert_eq!(out.len(), 3);
    let mut batch_tokens = 0;
    for (i, body) in bodies.iter().enumerate() {
        let line = &out[&format!("r{i}")];
        assert_eq!(line["error"], Value::Null);
        assert_eq!(line["response"]["status_code"], 200);
        assert_eq!(line["id"], line["response"]["request_id"]);
        let live = post(&s, "/chat/completions", body.clone()).await.json();
        let answer = &line["response"]["body"];
        assert_eq!(answer["choices"], live["choices"], "r{i}");
        assert_eq!(answer["usage"], live["usage"], "r{i}");
        assert_eq!(answer["object"], "chat.completion");
        batch_tokens += answer["usage"]["total_tokens"].as_u64().unwrap();
    }
    assert_eq!(
        out["r0"]["response"]["body"]["choices"][0]["message"]["content"],
        chat_reply("qwen-plus", "one", 0)
    );
    // The output is not in input order (research §1.7: join on custom_id).
    let order: Vec<String> = get(&s, &format!("/files/{output_id}/content"))
        .await
        .text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["custom_id"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(order, ["r0", "r1", "r2"], "shuffled (deterministically)");

    // Billed as batch work, apart from the live requests made since.
    let batch_usage = s.batch_usage_of("qwen-plus", &key_hint(KEY));
    assert_eq!((batch_usage.requests, batch_usage.answered, batch_usage.inputs), (3, 3, 3));
    assert_eq!(batch_usage.tokens.total_tokens, batch_tokens);
    let live = s.usage_of("qwen-plus", &key_hint(KEY));
    assert_eq!((live.requests, live.tokens.total_tokens), (3, batch_tokens));
    assert_eq!(s.batch_usage_total().tokens.total_tokens, batch_tokens);
    let rows = s.usage();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let stats = s.stats();
    assert_eq!((stats.batches_created, stats.batch_lines_run, stats.files_uploaded), (1, 3, 1));
    assert_eq!(stats.chat_requests, 3, "only the live requests are chat requests");
}

#[tokio::test]
async fn embeddings_and_the_models_live_calls_refuse_without_a_stream() {
    let s = start(fast());
    let texts = ["a red fox", "a blue whale", "a green sea turtle"];
    let bodies: Vec<Value> =
        texts.iter().map(|t| json!({"model": "text-embedding-v4", "input": [t], "dimensions": 64})).collect();
    let id = batch_of(&s, EMBEDDINGS, &bodies).await;
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let out = results(&s, &batch["output_file_id"]).await;
    for (i, text) in texts.iter().enumerate() {
        let answer = &out[&format!("r{i}")]["response"]["body"];
        let vector: Vec<f32> = serde_json::from_value(answer["data"][0]["embedding"].clone()).unwrap();
        assert_eq!(vector, bailian_standin::embedding_for(text, 64));
    }

    // qwq-plus answers only as a stream live, and thinking models think only in one; a batch
    // runs both whole. A line that asks to stream fails.
    let bodies = vec![ask("qwq-plus", "why"), {
        let mut b = ask("qwq-plus", "stream me");
        b["stream"] = json!(true);
        b
    }];
    let live = post(&s, "/chat/completions", bodies[0].clone()).await;
    assert_eq!(live.status, 400, "live needs a stream");
    let id = batch_of(&s, CHAT, &bodies).await;
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["request_counts"], json!({"total": 2, "completed": 1, "failed": 1}), "{batch}");
    let out = results(&s, &batch["output_file_id"]).await;
    let message = &out["r0"]["response"]["body"]["choices"][0]["message"];
    assert_eq!(message["content"], chat_reply("qwq-plus", "why", 0));
    assert!(message["reasoning_content"].as_str().is_some_and(|r| !r.is_empty()));
    let errors = results(&s, &batch["error_file_id"]).await;
    assert_eq!(errors["r1"]["response"]["status_code"], 400);
    assert!(errors["r1"]["error"]["message"].as_str().unwrap().contains("stream"));
}

#[tokio::test]
async fn lines_the_live_endpoint_refuses_go_to_the_error_file() {
    let s = start(fast());
    s.script("boom", vec![Fault::Status(500)]);
    s.script("moderated", vec![Fault::Inspection]);
    let bodies = vec![
        ask("qwen-plus", "fine"),
        json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "hot"}], "temperature": 5}),
        ask("qwen-plus", "boom"),
        ask("qwen-plus", "moderated"),
    ];
    let id = batch_of(&s, CHAT, &bodies).await;
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["status"], "completed", "completed, with failed lines: {batch}");
    assert_eq!(batch["request_counts"], json!({"total": 4, "completed": 1, "failed": 3}));
    // The error file has the output's prefix too (S17).
    assert!(batch["error_file_id"].as_str().unwrap().starts_with("file-batch_output-"));
    let out = results(&s, &batch["output_file_id"]).await;
    assert_eq!(out.keys().collect::<Vec<_>>(), ["r0"]);
    let errors = results(&s, &batch["error_file_id"]).await;
    let failure = |id: &str| {
        let line = &errors[id];
        (
            line["response"]["status_code"].as_u64().unwrap(),
            line["error"]["code"].as_str().unwrap().to_string(),
            line["response"]["body"]["error"]["code"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(failure("r1"), (400, "invalid_parameter_error".into(), "invalid_parameter_error".into()));
    assert_eq!(errors["r1"]["error"]["message"], "Range of temperature should be [0.0, 2.0)");
    assert_eq!(failure("r2"), (500, "internal_error".into(), "internal_error".into()));
    assert_eq!(failure("r3"), (400, "data_inspection_failed".into(), "data_inspection_failed".into()));

    // Failed lines are booked as the errors they were, without tokens.
    let u = s.batch_usage_of("qwen-plus", &key_hint(KEY));
    assert_eq!((u.requests, u.answered, u.errors, u.answers_with_usage), (4, 1, 3, 1));
    assert_eq!(u.statuses, BTreeMap::from([(200, 1), (400, 2), (500, 1)]));
}

#[tokio::test]
async fn creating_a_batch_checks_what_it_is_given() {
    let s = start(fast());
    let file = upload(&s, &jsonl(CHAT, &[ask("qwen-plus", "hi")])).await;
    let refused = |body: Value| {
        let s = &s;
        async move { error_of(&post(s, "/batches", body).await) }
    };
    let good = json!({"input_file_id": file, "endpoint": CHAT, "completion_window": "24h"});
    for (key, value) in [
        ("endpoint", json!("/v1/responses")),
        ("completion_window", json!("23h")),
        ("completion_window", json!("15d")),
        ("completion_window", json!("24")),
        ("metadata", json!({"ds_name": "n".repeat(101)})),
        ("metadata", json!({"ds_description": 5})),
    ] {
        let mut body = good.clone();
        body[key] = value.clone();
        let (status, code, _) = refused(body).await;
        assert_eq!((status, code.as_str()), (400, "invalid_parameter_error"), "{key}: {value}");
    }
    assert_eq!(refused(json!({"endpoint": CHAT, "completion_window": "24h"})).await.0, 400);
    let mut body = good.clone();
    body["input_file_id"] = json!("file-batch-nope");
    assert_eq!(refused(body).await.0, 404);

    // A model the Batch API does not run is refused at once (S7).
    for (model, endpoint) in [("qwen-turbo", CHAT), ("text-embedding-v4", CHAT), ("qwen-plus", EMBEDDINGS)] {
        let file = upload(&s, &jsonl(endpoint, &[ask(model, "hi")])).await;
        let (status, code, message) = error_of(&create(&s, &file, endpoint).await);
        assert_eq!((status, code.as_str()), (404, "model_not_found"));
        assert_eq!(message, format!("The provided model {model} is not supported by the Batch API."));
    }
    assert_eq!(s.stats().batches_created, 0);
    let no_key = send(&s.root_url(), "POST", &format!("{BASE}/batches"), "", &good.to_string()).await;
    assert_eq!(no_key.status, 401);
}

#[tokio::test]
async fn a_file_that_breaks_the_rules_fails_its_batch() {
    let s = start(fast());
    // S17: the test model's batch with a line whose url is not one.
    let line = json!({"custom_id": "1", "method": "POST", "url": "/v1/chat/completion",
                      "body": {"model": "batch-test-model", "messages": [{"role": "user", "content": "hi"}]}});
    let file = upload(&s, &format!("{line}\n")).await;
    let id = create(&s, &file, "/v1/chat/ds-test").await.json()["id"].as_str().unwrap().to_string();
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(
        batch["errors"],
        json!({"object": "list", "data": [{"code": "url_not_found", "param": "url", "line": 1,
               "message": "The provided url '/v1/chat/completion' is not supported by the Batch API."}]})
    );
    assert!(batch["failed_at"].is_u64() && batch["in_progress_at"].is_null());
    assert_eq!(batch["request_counts"], json!({"total": 0, "completed": 0, "failed": 0}));
    assert!(batch["output_file_id"].is_null() && batch["error_file_id"].is_null());

    // Two models, and a custom_id twice.
    let mut text = jsonl(CHAT, &[ask("qwen-plus", "a"), ask("qwen-flash", "b")]);
    text.push_str(
        &json!({"custom_id": "r0", "method": "POST", "url": CHAT, "body": ask("qwen-plus", "c")}).to_string(),
    );
    let id = batch_of_text(&s, &text, CHAT).await;
    let batch = until(&s, &id, ended).await;
    let codes: Vec<(&str, u64)> = batch["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(codes, [("mismatched_model", 2), ("duplicate_custom_id", 3)]);
    assert_eq!(s.stats().batch_lines_run, 0);
    assert_eq!(s.batch_usage_total(), Default::default(), "nothing billed");

    // The configured limits: lines per file and bytes per line.
    s.configure(|c| {
        c.max_batch_lines = 2;
        c.max_batch_line_bytes = 200;
    });
    let three = jsonl(CHAT, &[ask("qwen-plus", "a"), ask("qwen-plus", "b"), ask("qwen-plus", "c")]);
    let id = batch_of_text(&s, &three, CHAT).await;
    assert_eq!(until(&s, &id, ended).await["errors"]["data"][0]["code"], "too_many_lines");
    let long = jsonl(CHAT, &[ask("qwen-plus", &"x".repeat(300))]);
    let id = batch_of_text(&s, &long, CHAT).await;
    assert_eq!(until(&s, &id, ended).await["errors"]["data"][0]["code"], "line_too_large");
}

async fn batch_of_text(s: &Standin, text: &str, endpoint: &str) -> String {
    let file = upload(s, text).await;
    let r = create(s, &file, endpoint).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_test_model_answers_its_fixed_text_for_free() {
    let s = start(fast());
    let id = batch_of(&s, "/v1/chat/ds-test", &[ask("batch-test-model", "hi")]).await;
    let batch = until(&s, &id, ended).await;
    let out = results(&s, &batch["output_file_id"]).await;
    assert_eq!(out["r0"]["response"]["body"]["choices"][0]["message"]["content"], "This is a test result.");
    assert_eq!(s.batch_usage_of("batch-test-model", &key_hint(KEY)).tokens, Default::default());
    // At the chat endpoint it is refused (S17: mismatched_test_url).
    let id = batch_of(&s, CHAT, &[ask("batch-test-model", "hi")]).await;
    assert_eq!(until(&s, &id, ended).await["errors"]["data"][0]["code"], "mismatched_test_url");
}

#[tokio::test]
async fn a_held_batch_waits_for_release_and_can_be_cancelled() {
    let s = start(Config { batch_hold: true, ..fast() });
    let lines = [ask("qwen-plus", "a"), ask("qwen-plus", "b")];
    let id = batch_of(&s, CHAT, &lines).await;
    let batch = until(&s, &id, |b| b["status"] == "in_progress").await;
    assert_eq!(batch["request_counts"]["total"], 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&s, &format!("/batches/{id}")).await.json()["status"], "in_progress", "still held");
    assert_eq!(s.stats().batch_lines_run, 0);

    // Cancelled: `cancelling`, then `cancelled` with every line not run in the error file and
    // counted failed (S17), nothing billed.
    let r = post(&s, &format!("/batches/{id}/cancel"), json!({})).await;
    assert_eq!(r.json()["status"], "cancelling");
    assert!(r.json()["cancelling_at"].is_u64());
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["status"], "cancelled");
    assert_eq!(batch["request_counts"], json!({"total": 2, "completed": 0, "failed": 2}));
    assert!(batch["output_file_id"].is_null() && batch["cancelled_at"].is_u64());
    let errors = results(&s, &batch["error_file_id"]).await;
    assert_eq!(errors["r0"]["error"]["code"], "batch_cancelled");
    assert_eq!(errors["r1"]["response"], Value::Null);
    assert_eq!(s.batch_usage_total().requests, 0);
    let (status, code, _) = error_of(&post(&s, &format!("/batches/{id}/cancel"), json!({})).await);
    assert_eq!((status, code.as_str()), (400, "UnsupportedOperation"), "an ended batch");

    // Released (in process, and over HTTP), a held batch runs to the end.
    let first = batch_of(&s, CHAT, &lines).await;
    let second = batch_of(&s, CHAT, &lines).await;
    until(&s, &second, |b| b["status"] == "in_progress").await;
    assert!(s.release_batch(&first));
    assert!(!s.release_batch(&first), "released already");
    assert_eq!(until(&s, &first, ended).await["status"], "completed");
    let r = send(&s.root_url(), "POST", "/_standin/batches/release", KEY, "{}").await;
    assert_eq!(r.json()["released"], 1);
    let batch = until(&s, &second, ended).await;
    assert_eq!(batch["request_counts"], json!({"total": 2, "completed": 2, "failed": 0}));
    assert_eq!(s.batch_usage_of("qwen-plus", &key_hint(KEY)).answered, 4);
}

#[tokio::test]
async fn a_batch_cancelled_midway_keeps_and_bills_the_lines_done() {
    // An hour in 10 ms, an hour a line, a window of 14 days (3.36 s): cancelled after a few
    // of its 200 lines, a batch keeps those.
    let s = start(Config { batch_hour_ms: 10.0, batch_line_secs: 3600.0, ..Config::default() });
    let lines: Vec<Value> = (0..200).map(|i| ask("qwen-plus", &format!("line {i}"))).collect();
    let file = upload(&s, &jsonl(CHAT, &lines)).await;
    let r =
        post(&s, "/batches", json!({"input_file_id": file, "endpoint": CHAT, "completion_window": "14d"}))
            .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    until(&s, &id, |b| b["request_counts"]["completed"].as_u64().unwrap_or(0) >= 2).await;
    assert_eq!(post(&s, &format!("/batches/{id}/cancel"), json!({})).await.status, 200);
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["status"], "cancelled");
    let done = batch["request_counts"]["completed"].as_u64().unwrap();
    assert!((2..200).contains(&done), "{batch}");
    assert_eq!(batch["request_counts"]["failed"].as_u64().unwrap(), 200 - done);
    let out = results(&s, &batch["output_file_id"]).await;
    assert_eq!(out.len() as u64, done);
    let errors = results(&s, &batch["error_file_id"]).await;
    assert!(errors.values().all(|e| e["error"]["code"] == "batch_cancelled"));
    assert_eq!(out.len() + errors.len(), 200, "every line in one file or the other");
    let billed = s.batch_usage_of("qwen-plus", &key_hint(KEY));
    assert_eq!((billed.requests, billed.answered), (done, done), "the lines done are billed");
    let tokens: u64 =
        out.values().map(|l| l["response"]["body"]["usage"]["total_tokens"].as_u64().unwrap()).sum();
    assert_eq!(billed.tokens.total_tokens, tokens);
}

#[tokio::test]
async fn batch_lines_do_not_count_against_the_live_limits() {
    // One request a minute, live: a batch of five lines runs regardless, and leaves the live
    // window as it was (research §1.9).
    let s = start(Config { rpm_limit: Some(1), tpm_limit: Some(1_000), ..fast() });
    let lines: Vec<Value> = (0..5).map(|i| ask("qwen-plus", &format!("line {i}"))).collect();
    let id = batch_of(&s, CHAT, &lines).await;
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["request_counts"]["completed"], 5, "{batch}");
    assert_eq!(post(&s, "/chat/completions", ask("qwen-plus", "live")).await.status, 200);
    assert_eq!(post(&s, "/chat/completions", ask("qwen-plus", "again")).await.status, 429);
    assert_eq!(s.stats().rate_limited, 1);
}

#[tokio::test]
async fn expired_batches_keep_what_they_did() {
    // An hour in 10 ms: a 24h window is 240 ms. Queued two days, a batch expires unrun.
    let s = start(Config { batch_hour_ms: 10.0, batch_queued_secs: 48.0 * 3600.0, ..Config::default() });
    let id = batch_of(&s, CHAT, &[ask("qwen-plus", "a"), ask("qwen-plus", "b")]).await;
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["status"], "expired");
    let (created, expired) = (batch["created_at"].as_u64().unwrap(), batch["expired_at"].as_u64().unwrap());
    assert_eq!(expired - created, 24 * 3600, "when the window ended");
    assert_eq!(batch["request_counts"], json!({"total": 2, "completed": 0, "failed": 2}));
    assert_eq!(results(&s, &batch["error_file_id"]).await["r1"]["error"]["code"], "batch_expired");

    // An hour in 50 ms and an hour a line: the lines done in the window (1.2 s) are in the
    // output and billed, the rest are not run.
    s.configure(|c| {
        c.batch_hour_ms = 50.0;
        c.batch_queued_secs = 0.0;
        c.batch_line_secs = 3600.0;
    });
    let lines: Vec<Value> = (0..40).map(|i| ask("qwen-flash", &format!("line {i}"))).collect();
    let id = batch_of(&s, CHAT, &lines).await;
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["status"], "expired");
    let done = batch["request_counts"]["completed"].as_u64().unwrap();
    assert!((1..40).contains(&done), "{batch}");
    assert_eq!(batch["request_counts"]["failed"].as_u64().unwrap(), 40 - done);
    assert_eq!(results(&s, &batch["output_file_id"]).await.len() as u64, done);
    assert_eq!(s.batch_usage_of("qwen-flash", &key_hint(KEY)).answered, done);
    assert_eq!(s.stats().batch_lines_run, done);

    // On demand, over HTTP.
    s.configure(|c| c.batch_hold = true);
    let id = batch_of(&s, CHAT, &[ask("qwen-plus", "c")]).await;
    until(&s, &id, |b| b["status"] == "in_progress").await;
    let r = send(&s.root_url(), "POST", &format!("/_standin/batches/{id}/expire"), KEY, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(until(&s, &id, ended).await["status"], "expired");
    assert!(!s.expire_batch(&id), "ended already");
}

#[tokio::test]
async fn a_failed_batch_keeps_and_bills_nothing() {
    let s = start(Config { batch_hold: true, ..fast() });
    let id = batch_of(&s, CHAT, &[ask("qwen-plus", "a")]).await;
    until(&s, &id, |b| b["status"] == "in_progress").await;
    assert!(s.fail_batch(&id));
    let batch = until(&s, &id, ended).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(batch["errors"]["data"][0]["code"], "internal_error");
    assert!(batch["failed_at"].is_u64() && batch["output_file_id"].is_null());
    assert_eq!(s.batch(&id).unwrap(), batch);
    assert_eq!(s.batch_usage_total().requests, 0);
}

#[tokio::test]
async fn batches_are_listed_newest_first_by_page() {
    let s = start(Config { batch_hold: true, ..fast() });
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(batch_of(&s, CHAT, &[ask("qwen-plus", "a")]).await);
    }
    ids.reverse();
    let page = get(&s, "/batches?limit=2").await.json();
    let listed = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(listed(&page), ids[..2]);
    assert_eq!((page["object"].as_str(), page["has_more"].as_bool()), (Some("list"), Some(true)));
    assert_eq!(
        (page["first_id"].as_str(), page["last_id"].as_str()),
        (Some(ids[0].as_str()), Some(ids[1].as_str()))
    );
    let rest = get(&s, &format!("/batches?after={}&limit=100", ids[1])).await.json();
    assert_eq!(listed(&rest), ids[2..]);
    assert_eq!(rest["has_more"], false);
    assert_eq!(listed(&get(&s, "/batches").await.json()).len(), 5, "20 by default");
    assert_eq!(get(&s, "/batches?limit=0").await.status, 400);
    assert_eq!(get(&s, "/batches?limit=101").await.status, 400);
    assert_eq!(listed(&get(&s, "/batches?status=completed").await.json()).len(), 0);
    let other = send(&s.root_url(), "GET", &format!("{BASE}/batches"), "sk-other-account", "").await;
    assert_eq!(other.json()["data"], json!([]));
    assert_eq!(get(&s, "/batches/batch_nope").await.status, 404);
    let over_http = send(&s.root_url(), "GET", "/_standin/stats", KEY, "").await.json();
    assert_eq!(
        (over_http["batches_created"].as_u64(), over_http["files_uploaded"].as_u64()),
        (Some(5), Some(5))
    );
    s.reset();
    assert!(s.batch(&ids[0]).is_none());
    assert_eq!(s.stats().batches_created, 0);
}

#[tokio::test]
async fn the_batch_chat_host_answers_its_models_as_batch_work() {
    // A second stand-in plays batch.dashscope.aliyuncs.com; its rate limits do not refuse.
    let s = start(Config { batch_chat: true, rpm_limit: Some(1), ..Config::default() });
    for text in ["one", "two"] {
        let r = post(&s, "/chat/completions", ask("qwen-plus", text)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["choices"][0]["message"]["content"], chat_reply("qwen-plus", text, 0));
    }
    let u = s.batch_usage_of("qwen-plus", &key_hint(KEY));
    assert_eq!((u.requests, u.answered, u.answers_with_usage), (2, 2, 2));
    assert!(u.tokens.total_tokens > 0);
    assert_eq!(s.usage_total().requests, 0, "nothing at the live price");

    let (status, code, message) = error_of(&post(&s, "/chat/completions", ask("qwen-max", "hi")).await);
    assert_eq!((status, code.as_str()), (404, "model_not_supported"));
    assert!(message.contains("Batch Chat"), "{message}");
    let r = post(&s, "/embeddings", json!({"model": "text-embedding-v4", "input": ["a"]})).await;
    assert_eq!(r.status, 404);
    assert_eq!(get(&s, "/files").await.status, 404, "Batch File is the normal host's");
    // A stream is batch work too, counted as it is sent.
    let mut body = ask("qwen-flash", "streamed");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    assert_eq!(post(&s, "/chat/completions", body).await.status, 200);
    assert!(s.batch_usage_of("qwen-flash", &key_hint(KEY)).tokens.total_tokens > 0);
}
