//! Whatever answers at base_url is not trusted: oversized bodies, NUL characters, non-finite
//! numbers, any Retry-After and redirects each end in a clear error, never a crash, a stored
//! NUL or a request sent elsewhere.

mod common;

use bailian_standin::Fault;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn untrusted_answers_end_in_clear_errors() {
    let (mut c, _) = fresh_db("untrusted");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", ", max_retries => 0");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}', max_retries => 0");
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);

    // The size cap, declared or chunked: refused without reading the rest.
    c.batch_execute("SET pg_bailian.max_response_size = '1MB'").unwrap();
    for content_length in [true, false] {
        let prompt = format!("huge {content_length}");
        s.script(&prompt, vec![Fault::Oversized { bytes: 512 << 20, content_length }]);
        let start = Instant::now();
        let (code, msg) = error_of(c.query_one(&format!("SELECT ai_gen('chat', '{prompt}')"), &[]));
        assert_eq!(code, "ZBM02");
        assert_eq!(
            msg,
            "response from Bailian for model \"chat\" exceeds pg_bailian.max_response_size (1MB)"
        );
        assert!(start.elapsed() < Duration::from_secs(5), "512 MB were read: {:?}", start.elapsed());
    }
    // Under the cap, the same kind of answer is fine.
    s.script("big but allowed", vec![Fault::Oversized { bytes: 900 << 10, content_length: true }]);
    let answer = one_text(&mut c, "SELECT ai_gen('chat', 'big but allowed')").unwrap();
    assert!(answer.len() > 800 << 10);
    c.batch_execute("RESET pg_bailian.max_response_size").unwrap();

    // A NUL cannot be stored in text: an error, not a truncated or corrupt value.
    s.script("nul please", vec![Fault::NulInContent]);
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('chat', 'nul please')", &[]));
    assert_eq!(code, "ZBM01");
    assert!(msg.contains("NUL character"), "{msg}");

    // Non-finite numbers in an embedding.
    for literal in ["1e39", "-1e400", "3.5e38"] {
        let text = format!("inf {literal}");
        s.script(&text, vec![Fault::NonFiniteEmbedding { literal: literal.into() }]);
        let (code, msg) = error_of(c.query_one(&format!("SELECT ai_embed('emb', '{text}')"), &[]));
        assert_eq!(code, "ZBM01", "{literal}: {msg}");
        // Beyond f64 serde refuses the number itself; within f64 but beyond f32, we do.
        assert!(msg.contains("not a finite") || msg.contains("number out of range"), "{msg}");
    }

    // Any Retry-After: huge, negative, a date, garbage. No panic, the backend lives on.
    for value in ["99999999999999999999999", "-5", "Wed, 21 Oct 2015 07:28:00 GMT", "soon", "1e309", "NaN"] {
        let prompt = format!("retry {value}");
        s.script(&prompt, vec![Fault::RateLimitedRaw { retry_after: value.into() }]);
        let (code, _) = error_of(c.query_one("SELECT ai_gen('chat', $1)", &[&prompt]));
        assert_eq!(code, "ZBR01", "{value}");
    }
    let same: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    assert_eq!(same, pid, "the backend survived");

    // Redirects are not followed: one request, none to the Location.
    let elsewhere = standin();
    s.script(
        "go away",
        vec![Fault::Redirect { status: 307, location: format!("{}/chat/completions", elsewhere.base_url()) }],
    );
    let before = s.stats().requests;
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('chat', 'go away')", &[]));
    assert_eq!(code, "ZB307");
    assert!(msg.contains("which was not followed"), "{msg}");
    assert_eq!(s.stats().requests - before, 1);
    assert_eq!(elsewhere.stats().requests, 0);
}
