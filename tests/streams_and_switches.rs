//! Streamed calls through SQL (thinking, breaks, errors, cancel, the timeout over the whole
//! stream, the size cap), the documented switches (web search, JSON mode), OpenSearch's
//! stream and errors, and how many inputs the native multimodal API gets per request.

mod common;

use bailian_standin::{chat_reply, embedding_for, reasoning_reply, Fault};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn last_body(s: &bailian_standin::Standin) -> Value {
    s.requests().pop().expect("a request").body
}

#[test]
fn thinking_streams_and_returns_the_reasoning() {
    let (mut c, _) = fresh_db("thinking_streams");
    let s = standin();
    s.configure(|cfg| cfg.log_bodies = true);
    deploy(&mut c, &s, "plus", "qwen-plus", "");
    let messages = r#"[{"role": "system", "content": "Think first."}, {"role": "user", "content": "why is the sky blue"},
                       {"role": "assistant", "content": "Rayleigh."}, {"role": "user", "content": "say more"}]"#;
    let out =
        json_of(&mut c, &format!("SELECT ai_chat('plus', '{messages}', '{{\"enable_thinking\": true}}')"));
    assert_eq!(out["content"], chat_reply("qwen-plus", "say more", 0));
    assert_eq!(out["reasoning_content"], reasoning_reply("qwen-plus", "say more"));
    let body = last_body(&s);
    assert_eq!((body["stream"].clone(), body["enable_thinking"].clone()), (json!(true), json!(true)));
    assert_eq!(body["messages"].as_array().unwrap().len(), 4);
    // Without thinking the same model answers in one piece, and ai_gen returns only the text.
    let text = one_text(&mut c, "SELECT ai_gen('plus', 'why')");
    assert_eq!(text.as_deref(), Some(chat_reply("qwen-plus", "why", 0).as_str()));
    assert!(last_body(&s).get("stream").is_none());
    // Per call, a stream on request gives the same answer.
    let text = one_text(&mut c, "SELECT ai_gen('plus', 'why', '{\"stream\": true}')");
    assert_eq!(text.as_deref(), Some(chat_reply("qwen-plus", "why", 0).as_str()));
    assert_eq!(last_body(&s)["stream"], true);
    // What Bailian would refuse is refused before sending, with the reason.
    deploy(&mut c, &s, "qwq", "qwq-plus", "");
    let sent = s.requests().len();
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('qwq', 'x', '{\"stream\": false}')", &[]));
    assert_eq!(code, "22023");
    assert!(msg.contains("qwq-plus answers only as a stream"), "{msg}");
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('qwq', 'x', '{\"enable_thinking\": false}')", &[]));
    assert!(code == "22023" && msg.contains("does not apply"), "{code} {msg}");
    let (code, msg) = error_of(
        c.query_one("SELECT ai_chat('plus', '[{\"role\": \"assistant\", \"content\": \"x\"}]')", &[]),
    );
    assert!(code == "22023" && msg.contains("last message must be from the user"), "{msg}");
    assert_eq!(s.requests().len(), sent, "refused calls send nothing");
}

#[test]
fn broken_streams_are_retried_and_error_events_are_errors() {
    let (mut c, _) = fresh_db("broken_streams");
    let s = standin();
    deploy(&mut c, &s, "qwq", "qwq-plus", ", max_retries => 2");
    s.script("cut short", vec![Fault::StreamBreak { after: 2 }, Fault::StreamBreak { after: 4 }]);
    let text = one_text(&mut c, "SELECT ai_gen('qwq', 'cut short')");
    assert_eq!(text.as_deref(), Some(chat_reply("qwq-plus", "cut short", 0).as_str()));
    assert_eq!(s.stats().chat_requests, 3, "two broken streams, then a whole one");
    s.script("moderated", vec![Fault::StreamError { after: 2 }]);
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('qwq', 'moderated')", &[]));
    assert_eq!(code, "ZB400", "{msg}");
    assert!(msg.contains("data_inspection_failed"), "{msg}");
    assert_eq!(s.stats().chat_requests, 4, "a moderation error in the stream is not retried");
}

#[test]
fn cancel_timeout_and_size_cap_cover_the_whole_stream() {
    let (mut c, _) = fresh_db("stream_limits");
    let s = standin();
    s.configure(|cfg| cfg.stream_chunk_delay_ms = 200);
    deploy(&mut c, &s, "qwq", "qwq-plus", ", max_retries => 0, timeout => 1");
    // Every event comes within 200 ms, but the whole answer takes seconds: the timeout is
    // for the stream, not for each event.
    let long = "one two three four five six seven eight nine ten eleven twelve";
    let start = Instant::now();
    let (code, msg) = error_of(c.query_one(&format!("SELECT ai_gen('qwq', '{long}')"), &[]));
    assert_eq!(code, "ZBT01", "{msg}");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());

    deploy(&mut c, &s, "qwq2", "qwq-plus", ", max_retries => 0, replace => true");
    c.batch_execute("SET statement_timeout = '500ms'").unwrap();
    let start = Instant::now();
    let (code, _) = error_of(c.query_one(&format!("SELECT ai_gen('qwq2', '{long}')"), &[]));
    assert_eq!(code, "57014");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    c.batch_execute("RESET statement_timeout").unwrap();
    // The stand-in notices the closed connection at its next event (200 ms apart); a stream
    // still being read would keep its connection open for seconds more.
    assert!(
        wait_for(Duration::from_millis(1500), || s.stats().connections_open == 0),
        "the cancelled stream's connection is closed: {:?}",
        s.stats()
    );

    s.configure(|cfg| cfg.stream_chunk_delay_ms = 0);
    c.batch_execute("SET pg_bailian.max_response_size = '64kB'").unwrap();
    let big = "word ".repeat(2000);
    let (code, msg) = error_of(c.query_one(&format!("SELECT ai_gen('qwq2', '{big}')"), &[]));
    assert_eq!(code, "ZBM02", "{msg}");
}

#[test]
fn web_search_and_json_mode_go_where_bailian_takes_them() {
    let (mut c, _) = fresh_db("switches");
    let s = standin();
    s.configure(|cfg| cfg.log_bodies = true);
    deploy(
        &mut c,
        &s,
        "plus",
        "qwen-plus",
        ", params => '{\"enable_search\": true, \"search_options\": {\"forced_search\": true}}'",
    );
    one_text(&mut c, "SELECT ai_gen('plus', 'weather in Hangzhou')");
    let body = last_body(&s);
    assert_eq!(
        (body["enable_search"].clone(), body["search_options"].clone()),
        (json!(true), json!({"forced_search": true}))
    );
    deploy(&mut c, &s, "v3", "deepseek-v3", "");
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('v3', 'x', '{\"enable_search\": true}')", &[]));
    assert!(code == "22023" && msg.contains("does not apply to chat model deepseek-v3"), "{msg}");

    let (code, msg) = error_of(c.query_one(
        "SELECT ai_gen('plus', 'three colours', '{\"response_format\": {\"type\": \"json_object\"}}')",
        &[],
    ));
    assert!(code == "22023" && msg.contains("word JSON"), "{msg}");
    let out = one_text(&mut c, "SELECT ai_gen('plus', 'three colours as JSON', '{\"response_format\": {\"type\": \"json_object\"}}')").unwrap();
    let parsed: Value = serde_json::from_str(&out).expect("a JSON answer");
    assert!(parsed.is_object(), "{out}");
    assert_eq!(last_body(&s)["response_format"], json!({"type": "json_object"}));
    let (code, msg) = error_of(
        c.query_one("SELECT ai_gen('plus', 'x', '{\"response_format\": {\"type\": \"yaml\"}}')", &[]),
    );
    assert!(code == "22023" && msg.contains("json_schema"), "{msg}");
}

#[test]
fn opensearch_streams_errors_and_keys() {
    let (mut c, _) = fresh_db("opensearch");
    let s = standin();
    s.configure(|cfg| cfg.log_bodies = true);
    let key = format!("OS-{KEY_MARK}-os-0000");
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('os', 'deepseek-r1', '{key}', provider => 'opensearch', workspace => 'ws1',
                base_url => '{}', params => '{{\"temperature\": 0.5, \"csi_level\": \"loose\", \"enable_search\": true}}')",
        s.root_url()
    ))
    .unwrap();
    let row = c
        .query_one("SELECT provider, workspace, key_hint FROM ai_models WHERE model_name = 'os'", &[])
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)),
        ("opensearch".into(), "ws1".into(), "OS-...0000".into())
    );
    let out = json_of(
        &mut c,
        "SELECT ai_chat('os', '[{\"role\": \"user\", \"content\": \"weather\"}]', '{\"stream\": true}')",
    );
    assert_eq!(out["content"], chat_reply("deepseek-r1", "weather", 0));
    let r = s.requests().pop().unwrap();
    assert_eq!(r.path, "/v3/openapi/workspaces/ws1/text-generation/deepseek-r1");
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["enable_search"], true);
    assert_eq!(r.body["csi_level"], "loose");
    assert_eq!(r.body["parameters"], json!({"temperature": 0.5}));
    // OpenSearch's error shape, mapped like Bailian's; its keys are scrubbed like Bailian's.
    s.configure(|cfg| {
        cfg.accepted_keys = Some(vec!["OS-someoneelse-0000".into()]);
        cfg.echo_key_in_errors = true;
    });
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('os', 'x')", &[]));
    assert_eq!(code, "ZB401", "{msg}");
    assert!(!msg.contains(KEY_MARK), "{msg}");
    s.configure(|cfg| cfg.accepted_keys = None);
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('os', 'x', '{\"top_p\": 1}')", &[]));
    assert!(code == "22023" && msg.contains("(0, 1)"), "seed 003's top_p range is open: {msg}");
    // Deploy-time rules of the provider.
    let (code, msg) = error_of(c.batch_execute("SELECT ai_deploy_model('o2', 'qwen-turbo', 'sk-notanopensearchkey', provider => 'opensearch', base_url => 'http://127.0.0.1:1')"));
    assert!(code == "22023" && msg.contains("'OS-...'"), "{msg}");
    let (code, msg) = error_of(c.batch_execute(&format!(
        "SELECT ai_deploy_model('o2', 'qwen-turbo', '{key}', provider => 'opensearch')"
    )));
    assert!(code == "22023" && msg.contains("needs base_url"), "{msg}");
    let (code, msg) = error_of(c.batch_execute(&format!("SELECT ai_deploy_model('o2', 'qwen-turbo', '{key}', provider => 'opensearch', base_url => 'http://127.0.0.1:1', workspace => 'a/b')")));
    assert!(code == "22023" && msg.contains("invalid workspace"), "{msg}");
    let (code, msg) = error_of(c.batch_execute(&format!("SELECT ai_deploy_model('o2', 'qwen3-max', '{key}', provider => 'opensearch', base_url => 'http://127.0.0.1:1')")));
    assert!(code == "22023" && msg.contains("for provider opensearch"), "{msg}");
    let (code, msg) = error_of(c.batch_execute(&format!("SELECT ai_deploy_model('o2', 'qwen-max', '{key}', params => '{{\"max_tokens\": 2001}}', provider => 'opensearch', base_url => 'http://127.0.0.1:1')")));
    assert!(code == "22023" && msg.contains("up to 2000"), "{msg}");
}

#[test]
fn multimodal_batches_follow_the_native_limits() {
    let (mut c, _) = fresh_db("multimodal_batches");
    let s = standin();
    deploy(&mut c, &s, "vis", "tongyi-embedding-vision-plus", ", params => '{\"dimension\": 256}'");
    deploy(&mut c, &s, "mm1", "multimodal-embedding-v1", "");
    let texts: Vec<String> = (0..20).map(|i| format!("text number {i}")).collect();
    let rows =
        c.query("SELECT ord, embedding FROM ai_embed_batch('vis', $1) ORDER BY ord", &[&texts]).unwrap();
    for row in &rows {
        let ord: i32 = row.get(0);
        let v: Vec<f32> = row.get(1);
        assert_eq!(v, embedding_for(&texts[ord as usize - 1], 256));
    }
    let sizes: Vec<usize> = s.requests().iter().map(|r| r.inputs.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 20);
    assert!(sizes.iter().all(|n| *n <= 8), "{sizes:?}");
    s.reset();
    c.query("SELECT * FROM ai_embed_batch('mm1', $1)", &[&texts[..3].to_vec()]).unwrap();
    let sizes: Vec<usize> = s.requests().iter().map(|r| r.inputs.len()).collect();
    assert_eq!(sizes, vec![1, 1, 1], "multimodal-embedding-v1 takes one text per request");
    let (code, msg) = error_of(c.query_one("SELECT ai_embed_image('vis', 'ftp://x/y.png')", &[]));
    assert!(code == "22023" && msg.contains("https:// URL or a data:image"), "{msg}");
    let (code, msg) = error_of(c.query_one("SELECT ai_embed_image('vis', 'GIF89a'::bytea)", &[]));
    assert!(code == "22023" && msg.contains("not a JPEG, PNG"), "{msg}");
    let (code, msg) = error_of(c.batch_execute("SELECT ai_deploy_model('bad', 'qwen3-vl-embedding', 'sk-0123456789abcdef', base_url => 'http://127.0.0.1:1/v1')"));
    assert!(code == "22023" && msg.contains("/compatible-mode/v1"), "{msg}");
}
