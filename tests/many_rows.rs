//! Many rows: the batch functions, the column procedures (commit per batch, progress,
//! failures kept per row, cancel and resume), client-side rate limits, and reliability
//! under injected faults. Against a real cluster and the stand-in.

mod common;

use bailian_standin::{embedding_for, Config, Fault};
use common::*;
use postgres::Client;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A connection to `db` whose NOTICEs and WARNINGs are collected.
fn connect_collecting(db: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    connect_collecting_as(db, "postgres")
}

fn make_table(c: &mut Client, rows: i32) {
    c.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[], answer text);
         INSERT INTO docs SELECT g, 'document ' || g || ' about topic ' || (g % 7), NULL, NULL
           FROM generate_series(1, {rows}) g"
    ))
    .unwrap();
}

/// Every filled row holds the stand-in's vector for its own text.
fn assert_rows_match_their_text(c: &mut Client, dim: usize) -> usize {
    let rows = c.query("SELECT body, emb FROM docs WHERE emb IS NOT NULL", &[]).unwrap();
    for row in &rows {
        let body: String = row.get(0);
        let emb: Vec<f32> = row.get(1);
        assert_eq!(emb, embedding_for(&body, dim), "row with body {body:?} holds another text's vector");
    }
    rows.len()
}

#[test]
fn embed_batch_keeps_order_and_packs_requests() {
    let (mut c, _) = fresh_db("embed_batch");
    let s = standin();
    deploy(&mut c, &s, "v4", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    deploy(&mut c, &s, "v2", "text-embedding-v2", "");
    let texts: Vec<Option<String>> = (1..=26)
        .map(|i| {
            if i == 5 {
                None
            } else if i == 6 {
                Some(String::new())
            } else {
                Some(format!("text {i}"))
            }
        })
        .collect();
    let rows = c.query("SELECT ord, embedding FROM ai_embed_batch('v4', $1)", &[&texts]).unwrap();
    assert_eq!(rows.len(), 26);
    for (i, row) in rows.iter().enumerate() {
        let ord: i32 = row.get(0);
        let emb: Option<Vec<f32>> = row.get(1);
        assert_eq!(ord as usize, i + 1);
        match &texts[i] {
            Some(t) if !t.is_empty() => assert_eq!(emb.unwrap(), embedding_for(t, 64)),
            _ => assert!(emb.is_none()),
        }
    }
    // 24 non-empty inputs at 10 per request (v4): 10 + 10 + 4, in input order.
    let sizes: Vec<usize> = s.requests().iter().map(|r| r.inputs.len()).collect();
    let mut sorted = sizes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![4, 10, 10]);
    // v2 takes 25 per request.
    c.query("SELECT * FROM ai_embed_batch('v2', $1)", &[&texts]).unwrap();
    let v2: Vec<usize> =
        s.requests().iter().filter(|r| r.model == "text-embedding-v2").map(|r| r.inputs.len()).collect();
    assert_eq!(v2, vec![24]);
    // A failure after retries fails the call, with its SQLSTATE.
    s.script("text 3", vec![Fault::Status(401)]);
    let (code, _) = error_of(c.query("SELECT * FROM ai_embed_batch('v4', $1)", &[&texts]));
    assert_eq!(code, "ZB401");
}

#[test]
fn gen_batch_reports_errors_per_row_and_bounds_concurrency() {
    let (mut c, _) = fresh_db("gen_batch");
    let s = standin_with(Config { latency_ms: 150, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", ", max_retries => 0");
    s.script("prompt 7", vec![Fault::Inspection]);
    let prompts: Vec<Option<String>> = (1..=40).map(|i| (i != 3).then(|| format!("prompt {i}"))).collect();
    let rows = c
        .query(
            "SELECT ord, response, error FROM ai_gen_batch('chat', $1, '{\"temperature\": 0.1}')",
            &[&prompts],
        )
        .unwrap();
    assert_eq!(rows.len(), 40);
    for (i, row) in rows.iter().enumerate() {
        let (ord, response, error): (i32, Option<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(ord as usize, i + 1);
        match i + 1 {
            3 => assert!(response.is_none() && error.is_none()),
            7 => {
                assert!(response.is_none());
                assert!(error.unwrap().starts_with(
                    "ZB400: Bailian rejected the request to model \"chat\": HTTP 400 data_inspection_failed"
                ));
            }
            n => assert_eq!(response.unwrap(), format!("Echo from qwen-plus: prompt {n}")),
        }
    }
    assert_eq!(s.stats().peak_in_flight, 16, "pg_bailian.max_concurrency defaults to 16");
    assert!(s.requests().iter().all(|r| r.body["temperature"] == 0.1));
    s.reset();
    c.batch_execute("SET pg_bailian.max_concurrency = 4").unwrap();
    c.query("SELECT * FROM ai_gen_batch('chat', $1)", &[&prompts[..12].to_vec()]).unwrap();
    assert_eq!(s.stats().peak_in_flight, 4);
}

#[test]
fn embed_column_fills_commits_and_reports() {
    let (mut c, db) = fresh_db("embed_column");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    make_table(&mut c, 1050);
    c.batch_execute("UPDATE docs SET body = NULL WHERE id = 10; UPDATE docs SET body = '' WHERE id = 11")
        .unwrap();
    // One row the provider refuses: only that row fails, its request's other inputs are
    // sent again one by one and filled.
    s.script("document 500 about topic 3", vec![Fault::Inspection, Fault::Inspection]);
    let (mut w, seen) = connect_collecting(&db);
    w.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 200)").unwrap();
    let notices = seen.lock().unwrap().join("\n");
    assert!(notices.contains("NOTICE: ai_embed_column: 1048 rows of docs to fill"), "{notices}");
    assert!(notices.contains("NOTICE: ai_embed_column: 200/1048 rows (19.1 %),"), "{notices}");
    assert!(notices.contains("rows/s, ETA"), "{notices}");
    assert!(notices.contains("WARNING: ai_embed_column: row (id)=(500) failed: ZB400"), "{notices}");
    assert!(notices.contains("finished in") && notices.contains("1047 filled, 1 failed"), "{notices}");
    assert!(notices.contains("WARNING: ai_embed_column: 1 rows failed and keep a NULL emb"), "{notices}");
    let null_ids: Vec<i32> = c
        .query("SELECT id FROM docs WHERE emb IS NULL ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(null_ids, vec![10, 11, 500]);
    assert_eq!(assert_rows_match_their_text(&mut c, 64), 1047);
    // Calling again retries just the failed row.
    s.reset();
    w.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb')").unwrap();
    assert_eq!(s.stats().inputs, 1);
    assert_eq!(assert_rows_match_their_text(&mut c, 64), 1048);
}

#[test]
fn embed_column_is_reliable_under_faults() {
    let (mut c, _) = fresh_db("embed_column_faults");
    let s = standin_with(Config { fail_rate_500: 0.10, fail_rate_429: 0.05, ..Config::default() });
    deploy(
        &mut c,
        &s,
        "emb",
        "text-embedding-v3",
        ", params => '{\"dimension\": 128}', max_retries => 10, initial_retry_delay => 0.5, max_retry_delay => 1",
    );
    make_table(&mut c, 2000);
    c.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 500)").unwrap();
    assert_eq!(assert_rows_match_their_text(&mut c, 128), 2000, "every row filled with its own vector");
    let stats = s.stats();
    let faults =
        stats.by_status.get(&500).copied().unwrap_or(0) + stats.by_status.get(&429).copied().unwrap_or(0);
    assert!(faults >= 15, "the faults happened: {stats:?}");
    assert_eq!(stats.by_status.get(&200).copied(), Some(200), "200 successful requests of 10 inputs");
}

#[test]
fn cancel_keeps_committed_batches_and_resume_sends_nothing_twice() {
    let (mut c, db) = fresh_db("embed_column_resume");
    let s = standin_with(Config { latency_ms: 100, ..Config::default() });
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    make_table(&mut c, 3000);
    let mut worker = connect(&db);
    worker.batch_execute("SET pg_bailian.max_concurrency = 4").unwrap();
    let pid: i32 = worker.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let job = std::thread::spawn(move || {
        let r = worker.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 300)");
        (worker, r.err().and_then(|e| e.as_db_error().map(|d| d.code().code().to_string())))
    });
    // 300 rows = 30 requests = 8 rounds of 100 ms: cancel inside the third or fourth batch.
    std::thread::sleep(Duration::from_millis(2500));
    c.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let (mut worker, code) = job.join().unwrap();
    assert_eq!(code.as_deref(), Some("57014"));
    assert!(wait_for(Duration::from_secs(1), || s.stats().in_flight == 0), "requests outlived the cancel");
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    // The first batch is 300 rows; once the job has seen a round of requests (4 in flight x 10
    // inputs = 40 rows), each batch is the whole rounds that fit in 300: 280 rows.
    assert!(
        (300..3000).contains(&filled) && (filled - 300) % 280 == 0,
        "only whole committed batches remain: {filled}"
    );
    let committed: Vec<String> = c
        .query("SELECT body FROM docs WHERE emb IS NOT NULL", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    worker.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 300)").unwrap();
    assert_eq!(assert_rows_match_their_text(&mut c, 64), 3000);
    let mut sent: HashMap<String, usize> = HashMap::new();
    for r in s.requests().iter().filter(|r| r.status == 200) {
        for input in &r.inputs {
            *sent.entry(input.clone()).or_default() += 1;
        }
    }
    for body in &committed {
        assert_eq!(sent.get(body), Some(&1), "{body:?} was committed before the cancel and sent again");
    }
}

#[test]
fn gen_column_with_template_params_and_rate_limit() {
    let (mut c, db) = fresh_db("gen_column");
    let s = standin_with(Config { rpm_limit: Some(600), retry_after_secs: Some(1.0), ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-flash", ", requests_per_minute => 600");
    make_table(&mut c, 60);
    let (mut w, seen) = connect_collecting(&db);
    let start = Instant::now();
    w.batch_execute(
        "CALL ai_gen_column('docs', 'body', 'answer', 'chat', 'Summarize: {0}', batch_size => 25, params => '{\"max_tokens\": 50}')",
    )
    .unwrap();
    let took = start.elapsed().as_secs_f64();
    let answer: String = c.query_one("SELECT answer FROM docs WHERE id = 42", &[]).unwrap().get(0);
    assert_eq!(answer, "Echo from qwen-flash: Summarize: document 42 about topic 0");
    assert_eq!(c.query_one("SELECT count(answer) FROM docs", &[]).unwrap().get::<_, i64>(0), 60);
    // 600 requests per minute: one every 100 ms, and the stand-in's limit never trips.
    assert!(took >= 5.8, "60 requests in {took} s");
    let stats = s.stats();
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    assert!(s.requests().iter().all(|r| r.body["max_tokens"] == 50));
    assert!(seen.lock().unwrap().iter().any(|n| n.contains("ai_gen_column: 25/60 rows")));
}

#[test]
fn column_procedures_check_their_arguments() {
    let (mut c, _) = fresh_db("column_checks");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_table(&mut c, 3);
    c.batch_execute("CREATE TABLE nopk (body text, emb real[])").unwrap();
    let cases = [
        (
            "CALL ai_embed_column('nopk', 'body', 'emb', 'emb')",
            "55000",
            "ai_embed_column: table nopk has no primary key",
        ),
        (
            "CALL ai_embed_column('docs', 'nope', 'emb', 'emb')",
            "42703",
            "ai_embed_column: source column \"nope\" does not exist in docs",
        ),
        (
            "CALL ai_embed_column('docs', 'body', 'answer', 'emb')",
            "42804",
            "ai_embed_column: target column \"answer\" is text; allowed: real[]",
        ),
        (
            "CALL ai_gen_column('docs', 'body', 'emb', 'chat')",
            "42804",
            "ai_gen_column: target column \"emb\" is real[]; allowed: text or varchar",
        ),
        (
            "CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 0)",
            "22023",
            "ai_embed_column: batch_size must be between 1 and 100000, got 0",
        ),
        (
            "CALL ai_gen_column('docs', 'body', 'answer', 'chat', 'no placeholder')",
            "22023",
            "ai_gen_column: prompt_template must contain {0}",
        ),
        (
            "CALL ai_embed_column('docs', 'body', 'emb', 'chat')",
            "42809",
            "ai_embed_column cannot use model \"chat\"",
        ),
        (
            "CALL ai_gen_column('docs', 'body', 'answer', 'chat', params => '{\"temperature\": 7}')",
            "22023",
            "invalid value for parameter \"temperature\"",
        ),
        (
            "CALL ai_embed_column('missing_table', 'body', 'emb', 'emb')",
            "42P01",
            "relation \"missing_table\" does not exist",
        ),
    ];
    for (sql, want_code, want_msg) in cases {
        let (code, msg) = error_of(c.batch_execute(sql));
        assert_eq!(code, want_code, "{sql}: {msg}");
        assert!(msg.starts_with(want_msg), "{sql}: {msg}");
    }
    // It commits per batch, so not inside a transaction block.
    let mut tx = c.transaction().unwrap();
    let (code, msg) = error_of(tx.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb')"));
    assert_eq!(code, "2D000");
    assert_eq!(msg, "ai_embed_column commits after every batch, so it cannot run inside a transaction block");
    drop(tx);
    assert_eq!(s.stats().requests, 0);
}
