//! What a role without privileges can make one backend hold: every function sizes what it
//! builds before building it and refuses past its limit with 54000, loops over a caller's data
//! end on a cancel, and the AI Batch node holds rows and answers within the superuser's
//! `pg_bailian.max_batch_memory` whatever the settings a role may change. Memory is read from
//! the backend's `/proc/<pid>/status`, each case in a backend of its own.

mod common;

use common::*;
use postgres::Client;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The bound the issue sets on a backend's peak memory for these cases.
const PEAK_MB: u64 = 300;

/// A field of `/proc/<pid>/status` in kB (VmHWM, RssAnon, ...).
fn status_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A session of the unprivileged role in a backend of its own, and that backend's pid.
fn session(db: &str, role: &str) -> (Client, i32) {
    let mut c = connect_as(db, role);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    (c, pid)
}

fn setup(test: &str, role: &str) -> (Client, String, bailian_standin::Standin) {
    let (mut admin, db) = fresh_db(test);
    let s = standin();
    deploy(&mut admin, &s, "chat", "qwen-plus", "");
    deploy(&mut admin, &s, "emb", "text-embedding-v4", "");
    fresh_role(&mut admin, role, "");
    (admin, db, s)
}

/// Runs `sql` in a fresh backend of `role`: its error (SQLSTATE, message), the backend's peak
/// memory (VmHWM, MB) and how long it took.
fn run_fresh(db: &str, role: &str, sql: &str) -> (Option<(String, String)>, u64, Duration) {
    let (mut c, pid) = session(db, role);
    let start = Instant::now();
    let result = c.batch_execute(sql);
    let took = start.elapsed();
    let peak = status_kb(pid, "VmHWM:") / 1024;
    let error = result.err().map(|e| {
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: not a database error: {e}"));
        (db.code().code().to_string(), db.message().to_string())
    });
    (error, peak, took)
}

#[test]
fn what_a_function_would_build_past_its_limit_is_refused_before_it_is_built() {
    let role = "rl_builder";
    let (_admin, db, s) = setup("rl_builds", role);
    // (statement, SQLSTATE, start of the message)
    let cases: &[(&str, &str, &str)] = &[
        // The review's case: 1.2 GB of output from a 3.6 MB template.
        (
            "SELECT length(ai_prompt(repeat('{0}', 1200000), repeat('x', 1000)))",
            "54000",
            "ai_prompt's result would need 1200000000 bytes, more than the limit of 64MB",
        ),
        // 30 placeholders of a 50 MB argument: 1.5 GB asked for, refused from the sizes.
        (
            "SELECT ai_prompt(repeat('{0}', 30), repeat('x', 50000000))",
            "54000",
            "ai_prompt's result would need 1500000000 bytes, more than the limit of 64MB",
        ),
        // IMMUTABLE: planning folds the call, so EXPLAIN ran it; it is refused the same way.
        (
            "EXPLAIN SELECT ai_prompt(repeat('{0}', 30), repeat('x', 50000000))",
            "54000",
            "ai_prompt's result would need 1500000000 bytes",
        ),
        (
            "SELECT ai_prompt(repeat('{0}{1}', 20), repeat('x', 1000000), repeat('y', 3000000))",
            "54000",
            "ai_prompt's result would need 80000000 bytes",
        ),
        // Pieces that overlap almost wholly: 2 GB of pieces from 4 MB of text.
        ("SELECT ai_chunk(repeat('a ', 2000000), 1000, 998)", "54000", "the pieces of ai_chunk"),
        ("EXPLAIN SELECT ai_chunk(repeat('a ', 2000000), 1000, 998)", "54000", "the pieces of ai_chunk"),
        // A text longer than ai_chunk works on: refused before its working copy is made.
        (
            "SELECT ai_chunk(repeat('x', 100000000))",
            "54000",
            "ai_chunk's working copy of a text of 100000000 characters (at most 8388608)",
        ),
        // An argument of an AI call larger than any model reads: refused before it is copied.
        ("SELECT ai_gen('chat', repeat('x', 40000000))", "54000", "argument 2 of ai_gen would need"),
        ("SELECT ai_embed('emb', repeat('x', 40000000))", "54000", "argument 2 of ai_embed would need"),
        (
            "SELECT ai_classify('chat', 'text', ARRAY[repeat('x', 40000000)])",
            "54000",
            "argument 3 of ai_classify would need",
        ),
        (
            "SELECT ai_gen('chat', 'x', jsonb_build_object('system', repeat('x', 40000000)))",
            "54000",
            "argument 3 of ai_gen would need",
        ),
        // A schema is compiled (and cached) only up to 1 MB.
        (
            "SELECT ai_gen_structured('chat', 'x', jsonb_build_object('type', 'object', 'description', repeat('d', 2000000)))",
            "54000",
            "a JSON Schema for structured output would need 20000",
        ),
        // The batch functions: their arrays like an AI call's argument, and their elements.
        (
            "SELECT count(*) FROM ai_gen_batch('chat', ARRAY[repeat('x', 40000000)])",
            "54000",
            "argument 2 of ai_gen_batch would need",
        ),
        (
            "SELECT count(*) FROM ai_embed_batch('emb', array_fill('x'::text, ARRAY[200000]))",
            "22023",
            "ai_embed_batch takes at most 100000 elements; 200000 were given",
        ),
    ];
    for (sql, code, message) in cases {
        let (error, peak, took) = run_fresh(&db, role, sql);
        let (got_code, got_message) = error.unwrap_or_else(|| panic!("{sql}: succeeded"));
        assert_eq!(
            (got_code.as_str(), got_message.starts_with(message)),
            (*code, true),
            "{sql}: {got_message}"
        );
        assert!(peak < PEAK_MB, "{sql}: peak {peak} MB");
        assert!(took < Duration::from_secs(10), "{sql}: took {took:?}");
    }
    // A caller's huge value is never quoted whole in an error.
    for sql in [
        "SELECT ai_gen_structured('chat', 'JSON please', '{\"type\": \"json_object\"}', repeat('z', 10000000))",
        "SELECT ai_gen(repeat('m', 10000000), 'x')",
        "SELECT ai_classify('chat', 'text', ARRAY[repeat('d', 1000000), repeat('d', 1000000)])",
    ] {
        let (error, peak, _) = run_fresh(&db, role, sql);
        let (_, message) = error.unwrap_or_else(|| panic!("{sql}: succeeded"));
        assert!(message.len() < 400, "{sql}: a message of {} bytes", message.len());
        assert!(peak < PEAK_MB, "{sql}: peak {peak} MB");
    }
    assert_eq!(s.stats().requests, 0, "a refused call sent something");

    // What a batch function holds until it returns is bounded by the superuser's budget.
    let mut admin = connect(&db);
    admin.batch_execute(&format!("ALTER ROLE {role} SET pg_bailian.max_batch_memory = '1MB'")).unwrap();
    // One request at a time: each answer (10 vectors, about 200 kB of JSON) fits the 512 kB
    // for answers being read, while the vectors kept add up.
    let one_at_a_time = "SET pg_bailian.max_concurrency = 1;";
    let (error, _, _) = run_fresh(
        &db,
        role,
        &format!(
            "{one_at_a_time} SELECT count(*) FROM ai_embed_batch('emb', array_fill('x'::text, ARRAY[200]))"
        ),
    );
    let (code, message) = error.expect("200 embeddings of 4 kB held within 512 kB");
    assert_eq!(code, "54000", "{message}");
    assert!(
        message.starts_with("the answers of ai_embed_batch (half of pg_bailian.max_batch_memory"),
        "{message}"
    );
    let (error, _, _) = run_fresh(
        &db,
        role,
        &format!(
            "{one_at_a_time} SELECT count(*) FROM ai_embed_batch('emb', array_fill('x'::text, ARRAY[100]))"
        ),
    );
    assert_eq!(error, None, "100 embeddings of 4 kB fit in 512 kB");
    admin.batch_execute(&format!("ALTER ROLE {role} RESET pg_bailian.max_batch_memory")).unwrap();
    assert_no_crash();
}

#[test]
fn the_largest_results_allowed_are_built_within_the_memory_bound() {
    let role = "rl_largest";
    let (_admin, db, _s) = setup("rl_largest", role);
    let cases: &[(&str, std::ops::RangeInclusive<i64>)] = &[
        // Exactly the limit: 64 MB.
        ("SELECT length(ai_prompt('{0}{0}{0}{0}', repeat('x', 16777216)))::int8", (64 << 20)..=(64 << 20)),
        // Nearly the longest text ai_chunk takes (8M characters), in the largest pieces.
        ("SELECT array_length(ai_chunk(repeat('word ', 1600000), 1048576, 0), 1)::int8", 8..=8),
        // Pieces up to near their limit, overlapping: about 50 MB of pieces from 5 MB.
        ("SELECT array_length(ai_chunk(repeat('word ', 1000000), 1000, 900), 1)::int8", 45_000..=55_000),
    ];
    for (sql, expected) in cases {
        let (mut c, pid) = session(&db, role);
        let got: i64 = c.query_one(*sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0);
        let peak = status_kb(pid, "VmHWM:") / 1024;
        assert!(expected.contains(&got), "{sql}: {got}");
        assert!(peak < PEAK_MB, "{sql}: peak {peak} MB");
    }
    assert_no_crash();
}

/// The long computations stop within a second of a cancel (pg_cancel_backend, as a user's
/// Ctrl-C sends) and of a statement_timeout.
#[test]
fn long_computations_end_within_a_second_of_a_cancel() {
    let role = "rl_cancel";
    let (_admin, db, _s) = setup("rl_cancel", role);
    // Each takes seconds uncancelled: many small overlapping pieces, a template of millions
    // of placeholders.
    let long = [
        "SELECT ai_chunk(repeat('ab ', 2700000), 12, 11)",
        "SELECT ai_prompt(repeat('{0}{1}', 8000000), '', '')",
    ];
    for sql in long {
        let (mut c, pid) = session(&db, role);
        let started = Instant::now();
        let canceller = {
            let db = db.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                let sent = Instant::now();
                connect(&db).execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
                sent
            })
        };
        let (code, _) = error_of(c.batch_execute(sql));
        let ended = Instant::now();
        let sent = canceller.join().unwrap();
        assert_eq!(code, "57014", "{sql} was not cancelled (it took {:?})", ended - started);
        assert!(
            ended.duration_since(sent) < Duration::from_secs(1),
            "{sql}: {:?} after the cancel",
            ended - sent
        );
        // The backend is fine afterwards.
        assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);

        let start = Instant::now();
        let (code, _) = error_of(c.batch_execute(&format!("SET statement_timeout = '200ms'; {sql}")));
        assert_eq!(code, "57014", "{sql} under statement_timeout");
        assert!(start.elapsed() < Duration::from_millis(1200), "{sql}: {:?}", start.elapsed());
        c.batch_execute("RESET statement_timeout").unwrap();
    }
    assert_no_crash();
}

/// Rows of 1 MB through ai_gen in one batched SELECT, with every setting a role may change at
/// its largest: the window and the answers stay within `pg_bailian.max_batch_memory`, which
/// the role cannot raise; a superuser's larger budget lets the same query hold more.
#[test]
fn a_batched_select_over_large_rows_stays_within_the_memory_budget() {
    let role = "rl_batch";
    let (mut admin, db) = fresh_db("rl_batch");
    let s =
        standin_with(bailian_standin::Config { latency_ms: 200, log_bodies: false, ..Default::default() });
    deploy(&mut admin, &s, "chat", "qwen-plus", "");
    fresh_role(&mut admin, role, "");
    admin
        .batch_execute(&format!(
            "CREATE TABLE big (id int PRIMARY KEY, body text);
             INSERT INTO big SELECT i, repeat(chr(97 + i % 26), 1048576) FROM generate_series(1, 100) i;
             GRANT SELECT ON big TO {role};
             ALTER ROLE {role} SET pg_bailian.max_batch_memory = '64MB';"
        ))
        .unwrap();
    let (mut c, pid) = session(&db, role);
    // Set before the library is loaded, the setting is a placeholder; loading refuses it
    // (with a WARNING), as PostgreSQL does for every superuser-only setting of an extension.
    // Preloaded (as the scripts' clusters are), the library is there first and refuses the SET.
    // (pg_bailian.max_usage_entries exists only when the library was preloaded.)
    let preloaded =
        one_text(&mut c, "SELECT current_setting('pg_bailian.max_usage_entries', true)").is_some();
    if preloaded {
        let (code, _) = error_of(c.batch_execute("SET pg_bailian.max_batch_memory = '4GB'"));
        assert_eq!(code, "42501");
    } else {
        c.batch_execute("SET pg_bailian.max_batch_memory = '4GB'; SELECT ai_chunk('x')").unwrap();
    }
    assert_eq!(one_text(&mut c, "SHOW pg_bailian.max_batch_memory").as_deref(), Some("64MB"));
    for sql in [
        "SET pg_bailian.max_batch_memory = '4GB'",
        "SET LOCAL pg_bailian.max_batch_memory = '4GB'",
        "SELECT set_config('pg_bailian.max_batch_memory', '4GB', false)",
    ] {
        let (code, message) = error_of(c.batch_execute(sql));
        assert_eq!(code, "42501", "{sql}: {message}");
    }
    // Sharing off: this is the read-ahead window's bound (the answers a statement shares are
    // bounded apart, by a quarter of pg_bailian.max_batch_memory).
    let knobs = "SET pg_bailian.max_concurrency = 256; SET pg_bailian.max_read_ahead = 100000;
                 SET pg_bailian.max_response_size = '1GB'; SET pg_bailian.share_answers = off";
    c.batch_execute(knobs).unwrap();
    let plan: Vec<String> = c
        .query("EXPLAIN SELECT id, length(ai_gen('chat', body)) FROM big ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("Read-Ahead Memory: up to 32MB (pg_bailian.max_batch_memory / 2)")),
        "{plan:#?}"
    );
    let base_mb = status_kb(pid, "RssAnon:") / 1024;
    let (peak_mb, hwm_mb) = peak_of_batched_select(&mut c, pid);
    eprintln!("100 rows of 1 MB, max_batch_memory 64MB: private {base_mb} MB before, peak {peak_mb} MB; VmHWM {hwm_mb} MB");
    // The budget counts what rows and answers hold while they wait; the row being read and the
    // answer being parsed at that moment come on top (a few MB each here).
    assert!(peak_mb <= base_mb + 64 + 16, "private peak {peak_mb} MB from {base_mb} MB");
    // VmHWM also counts the shared buffers the backend touched (128 MB in the test cluster).
    assert!(hwm_mb < PEAK_MB + 128, "VmHWM {hwm_mb} MB");

    // The budget is what holds it: a superuser's larger one lets the same query hold more.
    let (mut c, pid) = session(&db, "postgres");
    // (The library loads before the query is planned, so that the planner batches it.)
    c.batch_execute(&format!("SELECT ai_chunk('x'); SET pg_bailian.max_batch_memory = '4GB'; {knobs}"))
        .unwrap();
    let (unbounded_mb, _) = peak_of_batched_select(&mut c, pid);
    eprintln!("the same under max_batch_memory = 4GB: private peak {unbounded_mb} MB");
    assert!(unbounded_mb > 2 * peak_mb, "{unbounded_mb} MB against {peak_mb} MB");
    assert_eq!(s.stats().requests, 200);
    assert_no_crash();
}

/// Runs the 1 MB rows through ai_gen in one batched SELECT, checks every answer, and returns
/// the backend's peak private memory (RssAnon, sampled) and VmHWM, in MB.
fn peak_of_batched_select(c: &mut Client, pid: i32) -> (u64, u64) {
    let peak_anon = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak_anon, done) = (peak_anon.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak_anon.fetch_max(status_kb(pid, "RssAnon:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let rows = c.query("SELECT id, length(ai_gen('chat', body)) FROM big ORDER BY id", &[]).unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(rows.len(), 100);
    let expected = echo(&"a".repeat(1 << 20)).chars().count() as i32;
    for r in &rows {
        assert_eq!(r.get::<_, Option<i32>>(1), Some(expected), "row {}", r.get::<_, i32>(0));
    }
    (peak_anon.load(Ordering::Relaxed) / 1024, status_kb(pid, "VmHWM:") / 1024)
}

/// No backend crashed in the cluster so far (an abort or the OOM killer shows in the server
/// log as a server process terminated by a signal, and every session is then ended).
fn assert_no_crash() {
    let log = server_log();
    for sign in ["was terminated by signal", "terminating any other active server processes"] {
        assert!(!log.contains(sign), "the server log shows a crash: {sign}");
    }
}

/// ai_gen_column builds each row's prompt with ai_prompt: a row whose prompt would pass the
/// limit fails alone (54000, reported by key), and the job fills the others.
#[test]
fn a_prompt_past_the_limit_costs_only_its_row_in_a_column_job() {
    let role = "rl_column";
    let (mut admin, db, s) = setup("rl_column", role);
    admin
        .batch_execute(&format!(
            "CREATE TABLE notes (id int PRIMARY KEY, body text, answer text);
             INSERT INTO notes VALUES (1, 'first', NULL), (2, repeat('x', 20000000), NULL), (3, 'third', NULL);
             GRANT SELECT, UPDATE ON notes TO {role};"
        ))
        .unwrap();
    let (mut c, seen) = connect_collecting_as(&db, role);
    c.batch_execute("CALL ai_gen_column('notes', 'body', 'answer', 'chat', 'Q: {0} {0} {0} {0}')").unwrap();
    let answers: Vec<Option<String>> =
        c.query("SELECT answer FROM notes ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(
        answers,
        [Some(echo("Q: first first first first")), None, Some(echo("Q: third third third third"))]
    );
    let told = notices(&seen);
    assert!(
        told.contains("row (id)=(2) failed: 54000: ai_prompt's result would need 80000006 bytes, more than the limit of 64MB"),
        "{told}"
    );
    assert_eq!(s.stats().requests, 2);
    assert_no_crash();
}
