//! Retries as deployed and every error the AI functions raise, each with its SQLSTATE,
//! against the stand-in through a real PostgreSQL server.

mod common;

use bailian_standin::{Config, Fault};
use common::*;
use std::time::{Duration, Instant};

#[test]
fn transient_failures_are_retried_with_backoff() {
    let (mut c, _) = fresh_db("retry_backoff");
    let s = standin();
    deploy(
        &mut c,
        &s,
        "chat",
        "qwen-plus",
        ", max_retries => 3, initial_retry_delay => 0.5, max_retry_delay => 1",
    );
    s.script("flaky", vec![Fault::Status(500), Fault::Status(503), Fault::Status(429)]);
    let start = Instant::now();
    assert_eq!(
        one_text(&mut c, "SELECT ai_gen('chat', 'flaky')").as_deref(),
        Some("Echo from qwen-plus: flaky")
    );
    let took = start.elapsed().as_secs_f64();
    let log = s.requests();
    assert_eq!(log.len(), 4, "three failures, then success");
    // Gaps between attempts: 0.5, 1.0, 1.0 (capped) seconds, jitter taking at most 25% off.
    let gaps: Vec<f64> = log.windows(2).map(|w| (w[1].received_ms - w[0].finished_ms) / 1000.0).collect();
    for (gap, nominal) in gaps.iter().zip([0.5, 1.0, 1.0]) {
        assert!(*gap >= nominal * 0.75 - 0.02 && *gap <= nominal + 0.25, "gaps {gaps:?}");
    }
    assert!(took < 3.5, "took {took}");
}

#[test]
fn retry_after_is_honoured() {
    let (mut c, _) = fresh_db("retry_after");
    let s = standin();
    deploy(
        &mut c,
        &s,
        "chat",
        "qwen-plus",
        ", max_retries => 1, initial_retry_delay => 0.5, max_retry_delay => 1",
    );
    s.script("busy", vec![Fault::RateLimited { retry_after_secs: 2.0 }]);
    one_text(&mut c, "SELECT ai_gen('chat', 'busy')");
    let log = s.requests();
    let gap = (log[1].received_ms - log[0].finished_ms) / 1000.0;
    assert!((1.95..2.6).contains(&gap), "waited {gap} s for Retry-After: 2");
}

#[test]
fn retries_stop_at_max_retries() {
    let (mut c, _) = fresh_db("retries_exhausted");
    let s = standin();
    deploy(
        &mut c,
        &s,
        "chat",
        "qwen-plus",
        ", max_retries => 2, initial_retry_delay => 0.5, max_retry_delay => 1",
    );
    s.script("down", vec![Fault::Status(500); 10]);
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('chat', 'down')", &[]));
    assert_eq!(code, "ZBR01");
    assert_eq!(
        msg,
        "request to model \"chat\" failed after 3 attempts: HTTP 500 internal_error: \
         An internal error has occured, please try again later."
    );
    assert_eq!(s.stats().requests, 3);
    // Per call, max_retries overrides the deployment.
    s.reset();
    s.script("down", vec![Fault::Status(429); 10]);
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('chat', 'down', '{\"max_retries\": 0}')", &[]));
    assert_eq!(code, "ZBR01");
    assert!(msg.contains("failed after 1 attempt: HTTP 429 limit_requests"), "{msg}");
    assert_eq!(s.stats().requests, 1);
}

#[test]
fn client_errors_are_not_retried_and_keep_their_status() {
    let (mut c, _) = fresh_db("client_errors");
    let s = standin_with(Config { unavailable_models: vec!["qwen-long".into()], ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", ", max_retries => 5");
    deploy(&mut c, &s, "long", "qwen-long", ", max_retries => 5");
    s.script("bad", vec![Fault::Status(400)]);
    s.script("rude", vec![Fault::Inspection]);
    let cases = [
        ("SELECT ai_gen('chat', 'bad')", "ZB400", "Bailian rejected the request to model \"chat\": HTTP 400 invalid_parameter_error"),
        ("SELECT ai_gen('chat', 'rude')", "ZB400", "Bailian rejected the request to model \"chat\": HTTP 400 data_inspection_failed: Input data may contain inappropriate content."),
        ("SELECT ai_gen('long', 'x')", "ZB404", "Bailian rejected the request to model \"long\": HTTP 404 model_not_found: The model `qwen-long` does not exist"),
    ];
    for (sql, want_code, want_msg) in cases {
        let (code, msg) = error_of(c.query_one(sql, &[]));
        assert_eq!(code, want_code, "{sql}");
        assert!(msg.starts_with(want_msg), "{sql}: {msg}");
    }
    assert_eq!(s.stats().requests, 3, "one attempt each");
}

#[test]
fn timeouts_refused_connections_and_malformed_bodies() {
    let (mut c, _) = fresh_db("transport_errors");
    let s = standin();
    // One retry deployed; the calls that must not retry lower it to none (a call may lower
    // the deployed settings, never raise them).
    deploy(&mut c, &s, "chat", "qwen-plus", ", max_retries => 1, timeout => 1");
    s.script("slow", vec![Fault::Delay(5000)]);
    let start = Instant::now();
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('chat', 'slow', '{\"max_retries\": 0}')", &[]));
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("ZBT01", "request to model \"chat\" timed out after 1.0 s (1 attempt)")
    );
    assert!(start.elapsed() < Duration::from_millis(1800));

    s.script("garbage", vec![Fault::Malformed]);
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('chat', 'garbage', '{\"max_retries\": 0}')", &[]));
    assert_eq!(code, "ZBM01");
    assert!(
        msg.starts_with("malformed response from Bailian for model \"chat\": the body is not JSON"),
        "{msg}"
    );

    // A broken connection is retried like a 5xx.
    s.script("cut", vec![Fault::Reset]);
    let out = one_text(&mut c, "SELECT ai_gen('chat', 'cut')");
    assert_eq!(out.as_deref(), Some("Echo from qwen-plus: cut"));

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('nowhere', 'qwen-plus', '{}', base_url => 'http://127.0.0.1:{port}/v1', \
         max_retries => 1, initial_retry_delay => 0.5, max_retry_delay => 1)",
        key("nowhere")
    ))
    .unwrap();
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('nowhere', 'x')", &[]));
    assert_eq!(code, "ZBC01");
    assert!(
        msg.starts_with(&format!(
            "could not reach http://127.0.0.1:{port}/v1 for model \"nowhere\" (2 attempts):"
        )),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("connection refused"), "{msg}");
}

#[test]
fn wrong_model_and_wrong_task() {
    let (mut c, _) = fresh_db("wrong_task");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    deploy(&mut c, &s, "mt", "qwen-mt-flash", "");
    let cases = [
        ("SELECT ai_gen('nope', 'x')", "42704", "model \"nope\" is not deployed"),
        (
            "SELECT ai_embed('chat', 'x')",
            "42809",
            "ai_embed cannot use model \"chat\": its task is chat (qwen-plus)",
        ),
        (
            "SELECT ai_gen('emb', 'x')",
            "42809",
            "ai_gen cannot use model \"emb\": its task is embedding (text-embedding-v4)",
        ),
        (
            "SELECT ai_gen('mt', 'x')",
            "42809",
            "ai_gen cannot use model \"mt\": its task is translation (qwen-mt-flash)",
        ),
        ("SELECT ai_translate('emb', 'x', 'English')", "42809", "ai_translate cannot use model \"emb\""),
    ];
    for (sql, want_code, want_msg) in cases {
        let (code, msg) = error_of(c.query_one(sql, &[]));
        assert_eq!(code, want_code, "{sql}");
        assert!(msg.starts_with(want_msg), "{sql}: {msg}");
    }
    assert_eq!(s.stats().requests, 0);
}
