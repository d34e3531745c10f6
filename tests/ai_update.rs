//! `CALL ai_update(table_name, target_column, expression, batch_size, filter)`: fills a column
//! of any table with a primary key from any SQL expression over the row, for rows whose target
//! is NULL (and the filter holds), in primary-key order, committing every batch_size rows.
//!
//! Against a real cluster and the stand-in, like the other end-to-end tests: what ends up in
//! the table, what the job says (NOTICEs and WARNINGs, collected per session), and what the
//! stand-in was asked (requests, inputs, peak in flight).

mod common;

use bailian_standin::{embedding_for, Config, Fault, Standin};
use common::*;
use postgres::{Client, SimpleQueryMessage};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

fn clear(seen: &Seen) {
    seen.lock().unwrap().clear();
}

/// The messages that start with `prefix` (e.g. "WARNING: ai_update: row").
fn lines_starting(seen: &Seen, prefix: &str) -> Vec<String> {
    seen.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).cloned().collect()
}

/// The job's final NOTICE (exactly one is expected).
fn finish_line(seen: &Seen) -> String {
    let finished = lines_starting(seen, "NOTICE: ai_update: finished in ");
    assert_eq!(finished.len(), 1, "one finish NOTICE expected:\n{}", notices(seen));
    finished[0].clone()
}

/// The counts of the finish NOTICE: filled, failed, skipped, locked, done by another session.
fn finish_counts(seen: &Seen) -> [u64; 5] {
    let line = finish_line(seen);
    let rest = line.split_once(" s: ").unwrap_or_else(|| panic!("{line}")).1;
    let mut counts = [0u64; 5];
    let parts: Vec<&str> = rest.split(", ").collect();
    let words = ["filled", "failed", "skipped", "locked by other transactions", "done by another session"];
    for (i, word) in words.iter().enumerate() {
        let part = parts.get(i).unwrap_or_else(|| panic!("{line}"));
        let (n, what) = part.split_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert_eq!(what, *word, "{line}");
        counts[i] = n.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    counts
}

/// The `done` of every progress NOTICE (`ai_update: {done}/{total} rows (...)`), in order.
fn progress(seen: &Seen, total: i64) -> Vec<i64> {
    let suffix = format!("/{total} rows (");
    lines_starting(seen, "NOTICE: ai_update: ")
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("NOTICE: ai_update: ")?;
            let (done, _) = rest.split_once(suffix.as_str())?;
            done.parse().ok()
        })
        .collect()
}

/// The text of `docs.body` for row `id`, as `make_docs` fills it.
/// chat (qwen-plus, no retries) and emb (text-embedding-v4 at 64 dimensions).
fn deploy_models(c: &mut Client, s: &Standin) {
    deploy(c, s, "chat", "qwen-plus", ", max_retries => 0");
    deploy(c, s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
}

/// `docs(id, title, body, <extra>)` with `rows` rows, bodies from `body_of`, titles `Title n`.
fn make_docs(c: &mut Client, rows: i32, extra: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text{extra});
         INSERT INTO docs (id, title, body)
           SELECT g, 'Title ' || g, 'document ' || g || ' about topic ' || (g % 7) FROM generate_series(1, {rows}) g;
         ANALYZE docs"
    ))
    .unwrap();
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn ids(c: &mut Client, sql: &str) -> Vec<i32> {
    c.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get(0)).collect()
}

/// Every row of `table` as text, in key order: to tell that nothing changed.
fn snapshot(c: &mut Client, table: &str) -> Vec<String> {
    c.simple_query(&format!("SELECT t::text FROM {table} t ORDER BY 1"))
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

/// How often the stand-in was sent each input (chat prompt or embedding input), all requests.
fn sent(s: &Standin) -> HashMap<String, usize> {
    let mut sent: HashMap<String, usize> = HashMap::new();
    for r in s.requests() {
        for input in &r.inputs {
            *sent.entry(input.clone()).or_default() += 1;
        }
    }
    sent
}

/// The SQLSTATE of a statement run in another thread ("OK" on success).
fn code_of(r: Result<(), postgres::Error>) -> String {
    match r {
        Ok(()) => "OK".into(),
        Err(e) => e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("{e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Happy paths
// ---------------------------------------------------------------------------------------------

/// ai_gen into text, ai_embed of an expression over two columns into real[], expressions
/// wrapping a call, a value that needs an assignment cast (vector(64)); rows already filled
/// are neither touched nor requested, and a second CALL has nothing to do.
#[test]
fn fills_from_calls_and_expressions_over_them() {
    let (mut c, db) = fresh_db("au_happy");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 30, ", answer text, shout text, bang text, emb real[]");
    c.batch_execute("UPDATE docs SET answer = 'kept ' || id, emb = '{1,2,3}' WHERE id <= 5").unwrap();
    let (mut w, seen) = connect_collecting_as(&db, "postgres");

    // ai_gen into text.
    w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$)").unwrap();
    let n = notices(&seen);
    assert!(
        n.contains("NOTICE: ai_update: 25 rows of docs to fill (\"answer\" IS NULL), 1000 per batch"),
        "{n}"
    );
    assert_eq!(finish_counts(&seen), [25, 0, 0, 0, 0], "{n}");
    assert_eq!(progress(&seen, 25), vec![25], "{n}");
    assert!(lines_starting(&seen, "WARNING").is_empty(), "{n}");
    for row in c.query("SELECT id, body, answer FROM docs ORDER BY id", &[]).unwrap() {
        let (id, body, answer): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        let want = if id <= 5 { format!("kept {id}") } else { echo(&body) };
        assert_eq!(answer, want, "row {id}");
    }
    let stats = s.stats();
    assert_eq!((stats.chat_requests, stats.embedding_requests), (25, 0), "{stats:?}");
    let prompts: BTreeSet<String> = sent(&s).into_keys().collect();
    assert_eq!(prompts, (6..=30).map(body_of).collect::<BTreeSet<_>>(), "filled rows are not requested");

    // Again: nothing to do, nothing sent.
    s.reset();
    clear(&seen);
    w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$)").unwrap();
    assert!(notices(&seen).contains("ai_update: 0 rows of docs to fill"), "{}", notices(&seen));
    assert_eq!(finish_counts(&seen), [0, 0, 0, 0, 0]);
    assert_eq!(s.stats().requests, 0);

    // ai_embed of an expression over two columns, into real[].
    s.reset();
    clear(&seen);
    w.batch_execute(
        "CALL ai_update('docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$, batch_size => 7)",
    )
    .unwrap();
    assert_eq!(finish_counts(&seen), [25, 0, 0, 0, 0], "{}", notices(&seen));
    assert_eq!(progress(&seen, 25), vec![7, 14, 21, 25], "{}", notices(&seen));
    for row in c.query("SELECT id, title, body, emb FROM docs ORDER BY id", &[]).unwrap() {
        let (id, title, body, emb): (i32, String, String, Vec<f32>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let want = if id <= 5 { vec![1.0, 2.0, 3.0] } else { embedding_for(&format!("{title} {body}"), 64) };
        assert_eq!(emb, want, "row {id}");
    }
    let stats = s.stats();
    assert_eq!((stats.inputs, stats.chat_requests), (25, 0), "{stats:?}");
    assert!(stats.embedding_requests < 25, "inputs were packed into fewer requests than rows: {stats:?}");
    assert!(s.requests().iter().all(|r| r.inputs.len() <= 10));

    // Expressions around the call.
    s.reset();
    clear(&seen);
    w.batch_execute("CALL ai_update('docs', 'shout', $$upper(ai_gen('chat', body))$$, batch_size => 8)")
        .unwrap();
    assert_eq!(finish_counts(&seen), [30, 0, 0, 0, 0], "{}", notices(&seen));
    w.batch_execute("CALL ai_update('docs', 'bang', $$ai_gen('chat', title) || '!'$$)").unwrap();
    for row in c.query("SELECT id, title, body, shout, bang FROM docs ORDER BY id", &[]).unwrap() {
        let (id, title, body, shout, bang): (i32, String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        assert_eq!(shout, echo(&body).to_uppercase(), "row {id}");
        assert_eq!(bang, format!("{}!", echo(&title)), "row {id}");
    }
    assert_eq!(s.stats().chat_requests, 60);

    // A value that reaches the column through an assignment cast: real[] into vector(64).
    if pgvector_available(&mut c, "the vector(64) target of ai_update") {
        c.batch_execute("CREATE EXTENSION vector; ALTER TABLE docs ADD COLUMN v vector(64)").unwrap();
        s.reset();
        clear(&seen);
        w.batch_execute("CALL ai_update('docs', 'v', $$ai_embed('emb', body)$$, batch_size => 9)").unwrap();
        assert_eq!(finish_counts(&seen), [30, 0, 0, 0, 0], "{}", notices(&seen));
        for row in c.query("SELECT id, body, v::real[] FROM docs ORDER BY id", &[]).unwrap() {
            let (id, body, v): (i32, String, Vec<f32>) = (row.get(0), row.get(1), row.get(2));
            assert_eq!(v, embedding_for(&body, 64), "row {id}");
        }
        assert_eq!(s.stats().inputs, 30);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Concurrency and packing
// ---------------------------------------------------------------------------------------------

/// At 100 ms a request, 200 rows of ai_gen take far less than 200 x 100 ms, with several
/// requests in flight at once (never more than pg_bailian.max_concurrency); 100 rows of
/// ai_embed go out in about 10 requests of up to 10 inputs.
#[test]
fn calls_run_concurrently_and_embeddings_are_packed() {
    let (mut c, db) = fresh_db("au_concurrency");
    let s = standin_with(Config { latency_ms: 100, ..Config::default() });
    deploy_models(&mut c, &s);
    make_docs(&mut c, 200, ", answer text, answer4 text, emb real[]");
    let (mut w, seen) = connect_collecting_as(&db, "postgres");

    let start = Instant::now();
    w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$)").unwrap();
    let took = start.elapsed();
    assert_eq!(finish_counts(&seen), [200, 0, 0, 0, 0], "{}", notices(&seen));
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM docs WHERE answer = 'Echo from qwen-plus: ' || body"),
        200
    );
    let stats = s.stats();
    assert_eq!(stats.chat_requests, 200, "{stats:?}");
    // Serial: 200 x 100 ms = 20 s.
    assert!(took < Duration::from_secs(10), "200 requests of 100 ms took {took:?}: not concurrent");
    assert!(stats.peak_in_flight > 1, "never more than one request in flight: {stats:?}");
    assert!(stats.peak_in_flight <= 16, "more in flight than pg_bailian.max_concurrency: {stats:?}");

    // A lower max_concurrency is a ceiling.
    s.reset();
    w.batch_execute("SET pg_bailian.max_concurrency = 4").unwrap();
    w.batch_execute("CALL ai_update('docs', 'answer4', $$ai_gen('chat', body)$$, filter => 'id <= 60')")
        .unwrap();
    let stats = s.stats();
    assert_eq!(stats.chat_requests, 60, "{stats:?}");
    assert!(stats.peak_in_flight > 1 && stats.peak_in_flight <= 4, "{stats:?}");
    w.batch_execute("RESET pg_bailian.max_concurrency").unwrap();

    // 100 embeddings: packed 10 to a request.
    s.reset();
    clear(&seen);
    let start = Instant::now();
    w.batch_execute("CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$, filter => 'id <= 100')")
        .unwrap();
    let took = start.elapsed();
    assert_eq!(finish_counts(&seen), [100, 0, 0, 0, 0], "{}", notices(&seen));
    let stats = s.stats();
    assert_eq!(stats.inputs, 100, "{stats:?}");
    assert!(
        (10..=13).contains(&stats.embedding_requests),
        "100 inputs should go in about 10 requests: {stats:?}"
    );
    assert!(s.requests().iter().all(|r| r.inputs.len() <= 10), "a request over the model's limit");
    assert!(took < Duration::from_secs(10), "100 embeddings took {took:?}");
    for row in c.query("SELECT id, body, emb FROM docs WHERE id <= 100", &[]).unwrap() {
        let (id, body, emb): (i32, String, Vec<f32>) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(emb, embedding_for(&body, 64), "row {id}");
    }
    assert_eq!(count(&mut c, "SELECT count(emb) FROM docs"), 100, "rows outside the filter were filled");
}

// ---------------------------------------------------------------------------------------------
// 3. filter
// ---------------------------------------------------------------------------------------------

/// Only rows where the filter holds are filled (and requested); the first NOTICE shows it; a
/// filter ending in a `--` comment still works; a filter that is not boolean is an error
/// before anything changes or is sent.
#[test]
fn filter_limits_the_rows() {
    let (mut c, db) = fresh_db("au_filter");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 30, ", category text, answer text");
    c.batch_execute("UPDATE docs SET category = (ARRAY['a', 'b', 'c'])[id % 3 + 1]").unwrap();
    let (mut w, seen) = connect_collecting_as(&db, "postgres");

    w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$, batch_size => 4, filter => $$category = 'a'$$)")
        .unwrap();
    let n = notices(&seen);
    assert!(
        n.contains(
            "NOTICE: ai_update: 10 rows of docs to fill (\"answer\" IS NULL AND category = 'a'), 4 per batch"
        ),
        "{n}"
    );
    assert_eq!(finish_counts(&seen), [10, 0, 0, 0, 0], "{n}");
    let a: Vec<i32> = (1..=30).filter(|i| i % 3 == 0).collect();
    assert_eq!(ids(&mut c, "SELECT id FROM docs WHERE answer IS NOT NULL ORDER BY id"), a);
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE answer = 'Echo from qwen-plus: ' || body"), 10);
    let prompts: BTreeSet<String> = sent(&s).into_keys().collect();
    assert_eq!(prompts, a.iter().map(|i| body_of(*i)).collect::<BTreeSet<_>>());
    assert_eq!(s.stats().chat_requests, 10);

    // A filter that ends in a comment, over another column.
    s.reset();
    clear(&seen);
    w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$, filter => $$category = 'b' AND id > 10 -- the later b rows$$)")
        .unwrap();
    let b: Vec<i32> = (11..=30).filter(|i| i % 3 == 1).collect();
    assert_eq!(finish_counts(&seen), [b.len() as u64, 0, 0, 0, 0], "{}", notices(&seen));
    assert_eq!(s.stats().chat_requests, b.len() as u64);
    let filled = ids(&mut c, "SELECT id FROM docs WHERE answer IS NOT NULL ORDER BY id");
    let mut want: Vec<i32> = a.iter().chain(&b).copied().collect();
    want.sort();
    assert_eq!(filled, want);

    // A filter that is not a boolean: an error, nothing changes, nothing is sent.
    s.reset();
    let before = snapshot(&mut c, "docs");
    for filter in ["id", "category", "'yes'::text"] {
        let (code, msg) = error_of(w.batch_execute(&format!(
            "CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$, filter => $${filter}$$)"
        )));
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("42804", "ai_update: filter must be a boolean expression over a row of docs"),
            "filter {filter}"
        );
    }
    // A filter naming a column the table does not have.
    let (code, msg) = error_of(
        w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$, filter => $$nope = 1$$)"),
    );
    assert_eq!(code, "42703", "{msg}");
    assert_eq!(snapshot(&mut c, "docs"), before);
    assert_eq!(s.stats().requests, 0);
}

// ---------------------------------------------------------------------------------------------
// 4. A refused call fails its row only; the next CALL retries exactly those rows
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_calls_fail_their_rows_and_the_next_call_retries_them() {
    let (mut c, db) = fresh_db("au_refused");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 20, ", answer text");
    s.script(&body_of(4), vec![Fault::Inspection; 5]);
    s.script(&body_of(13), vec![Fault::Inspection; 5]);
    let (mut w, seen) = connect_collecting_as(&db, "postgres");
    w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$)").unwrap();
    let n = notices(&seen);
    for id in [4, 13] {
        assert!(
            n.contains(&format!(
                "WARNING: ai_update: row (id)=({id}) failed: ZB400 Bailian rejected the request to model \"chat\": HTTP 400 data_inspection_failed"
            )),
            "{id}:\n{n}"
        );
    }
    assert_eq!(lines_starting(&seen, "WARNING: ai_update: row ").len(), 2, "{n}");
    assert_eq!(finish_counts(&seen), [18, 2, 0, 0, 0], "{n}");
    assert!(
        n.contains(
            "WARNING: ai_update: 2 rows failed and keep a NULL answer; CALL ai_update again to retry them"
        ),
        "{n}"
    );
    assert_eq!(ids(&mut c, "SELECT id FROM docs WHERE answer IS NULL ORDER BY id"), vec![4, 13]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE answer = 'Echo from qwen-plus: ' || body"), 18);
    assert_eq!(s.stats().chat_requests, 20, "each row asked once: {:?}", s.stats());

    // Again, the refusals over: exactly the two rows, with two requests.
    s.reset();
    clear(&seen);
    w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$)").unwrap();
    let n = notices(&seen);
    assert!(n.contains("NOTICE: ai_update: 2 rows of docs to fill"), "{n}");
    assert_eq!(finish_counts(&seen), [2, 0, 0, 0, 0], "{n}");
    assert!(lines_starting(&seen, "WARNING").is_empty(), "{n}");
    assert_eq!(s.stats().chat_requests, 2);
    let prompts: BTreeSet<String> = sent(&s).into_keys().collect();
    assert_eq!(prompts, [body_of(4), body_of(13)].into_iter().collect::<BTreeSet<_>>());
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE answer = 'Echo from qwen-plus: ' || body"), 20);

    // A refused input packed with others: only its own row fails.
    c.batch_execute(
        "CREATE TABLE vecs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO vecs SELECT g, 'text ' || g, NULL FROM generate_series(1, 30) g",
    )
    .unwrap();
    s.reset();
    s.script("text 7", vec![Fault::Inspection; 5]);
    clear(&seen);
    w.batch_execute("CALL ai_update('vecs', 'emb', $$ai_embed('emb', body)$$)").unwrap();
    let n = notices(&seen);
    assert!(n.contains("WARNING: ai_update: row (id)=(7) failed: ZB400"), "{n}");
    assert_eq!(finish_counts(&seen), [29, 1, 0, 0, 0], "{n}");
    assert_eq!(ids(&mut c, "SELECT id FROM vecs WHERE emb IS NULL"), vec![7]);
    for row in c.query("SELECT id, body, emb FROM vecs WHERE id <> 7", &[]).unwrap() {
        let (id, body, emb): (i32, String, Vec<f32>) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(emb, embedding_for(&body, 64), "row {id}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Other per-row failures
// ---------------------------------------------------------------------------------------------

/// A model not deployed (named per row), a division by zero inside and outside the call's
/// argument, a value too long for varchar(30), a CHECK violation, an expression that gives
/// NULL: each costs its own row only, reported by key with its reason, and every other row is
/// filled with its value.
#[test]
fn other_row_failures_cost_their_row_only() {
    let (mut c, db) = fresh_db("au_row_failures");
    let s = standin();
    deploy_models(&mut c, &s);
    // Bodies 'row n': "Echo from qwen-plus: row 20" is 27 characters.
    c.batch_execute(
        "CREATE TABLE docs (
             id int PRIMARY KEY, body text, model text DEFAULT 'chat', d int DEFAULT 1,
             by_model text, divided text, after text, short varchar(30),
             checked text CHECK (checked NOT LIKE '%check-bad%'), maybe text);
         INSERT INTO docs (id, body) SELECT g, 'row ' || g FROM generate_series(1, 40) g;
         UPDATE docs SET model = 'nope' WHERE id = 3;
         UPDATE docs SET d = 0 WHERE id = 7;
         UPDATE docs SET body = 'row eleven, far too long for thirty' WHERE id = 11;
         UPDATE docs SET body = 'check-bad' WHERE id = 15;",
    )
    .unwrap();
    let rows: Vec<(i32, String, i32)> = c
        .query("SELECT id, body, d FROM docs ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let (mut w, seen) = connect_collecting_as(&db, "postgres");
    type Want = fn(&str, i32) -> String;
    let cases: [(&str, &str, i32, &str, Want); 6] = [
        ("by_model", "ai_gen(model, body)", 3, "42704 model \"nope\" is not deployed", |b, _| echo(b)),
        ("divided", "ai_gen('chat', body || ' / ' || (100 / d))", 7, "22012: division by zero", |b, d| {
            echo(&format!("{b} / {}", 100 / d))
        }),
        ("after", "ai_gen('chat', body) || ' / ' || (100 / d)", 7, "22012: division by zero", |b, d| {
            format!("{} / {}", echo(b), 100 / d)
        }),
        (
            "short",
            "ai_gen('chat', body)",
            11,
            "22001: value too long for type character varying(30)",
            |b, _| echo(b),
        ),
        (
            "checked",
            "ai_gen('chat', body)",
            15,
            "23514: new row for relation \"docs\" violates check constraint \"docs_checked_check\"",
            |b, _| echo(b),
        ),
        ("maybe", "ai_gen('chat', nullif(body, 'row 9'))", 9, "the expression gave NULL", |b, _| echo(b)),
    ];
    let mut report = Vec::new();
    for (target, expression, bad, reason, want) in cases {
        s.reset();
        clear(&seen);
        w.batch_execute(&format!("CALL ai_update('docs', '{target}', $${expression}$$, batch_size => 16)"))
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        let n = notices(&seen);
        let warnings = lines_starting(&seen, "WARNING: ai_update: row ");
        assert_eq!(warnings.len(), 1, "{target}:\n{n}");
        assert!(
            warnings[0].starts_with(&format!("WARNING: ai_update: row (id)=({bad}) failed: {reason}")),
            "{target}:\n{n}"
        );
        assert_eq!(finish_counts(&seen), [39, 1, 0, 0, 0], "{target}:\n{n}");
        assert!(
            n.contains(&format!(
                "WARNING: ai_update: 1 rows failed and keep a NULL {target}; CALL ai_update again to retry them"
            )),
            "{target}:\n{n}"
        );
        let stored: Vec<(i32, Option<String>)> = c
            .query(&format!("SELECT id, {target}::text FROM docs ORDER BY id"), &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for ((id, value), (_, body, d)) in stored.iter().zip(&rows) {
            if *id == bad {
                assert_eq!(value, &None, "{target}: row {id}");
            } else {
                assert_eq!(value.as_deref(), Some(want(body, *d).as_str()), "{target}: row {id}");
            }
        }
        let stats = s.stats();
        let twice: Vec<_> = sent(&s).into_iter().filter(|(_, n)| *n > 1).collect();
        report.push(format!("{target}: {} chat requests, sent twice: {twice:?}", stats.chat_requests));
        match target {
            // No request for a model that is not deployed.
            "by_model" => assert_eq!(stats.chat_requests, 39, "{target}: {stats:?}"),
            // A failed write does not ask again.
            "short" | "checked" => assert_eq!(stats.chat_requests, 40, "{target}: {stats:?}"),
            "maybe" => assert_eq!(stats.chat_requests, 39, "{target}: {stats:?}"),
            _ => assert!(stats.chat_requests >= 39, "{target}: {stats:?}"),
        }
    }
    eprintln!("{}", report.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 6. Commits per batch; cancel and resume
// ---------------------------------------------------------------------------------------------

/// 35 rows in batches of 10: four progress NOTICEs. A cancel mid-job keeps the committed
/// batches (whole batches only), and the next CALL fills the rest without asking for a
/// committed row again.
#[test]
fn commits_per_batch_and_resumes_after_a_cancel() {
    let (mut c, db) = fresh_db("au_batches");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 35, ", answer text");
    let (mut w, seen) = connect_collecting_as(&db, "postgres");
    w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$, batch_size => 10)").unwrap();
    assert_eq!(progress(&seen, 35), vec![10, 20, 30, 35], "{}", notices(&seen));
    assert_eq!(finish_counts(&seen), [35, 0, 0, 0, 0]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE answer = 'Echo from qwen-plus: ' || body"), 35);

    // Cancel: 200 rows, 20 per batch, 4 requests of 200 ms at a time (about 1 s a batch).
    c.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, body text, answer text);
         INSERT INTO big SELECT g, 'big row ' || g, NULL FROM generate_series(1, 200) g",
    )
    .unwrap();
    s.reset();
    s.configure(|cfg| cfg.latency_ms = 200);
    w.batch_execute("SET pg_bailian.max_concurrency = 4").unwrap();
    let pid: i32 = w.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    clear(&seen);
    let job = std::thread::spawn(move || {
        let r =
            w.batch_execute("CALL ai_update('big', 'answer', $$ai_gen('chat', body)$$, batch_size => 20)");
        (w, code_of(r))
    });
    assert!(
        wait_for(Duration::from_secs(60), || count(&mut c, "SELECT count(answer) FROM big") >= 40),
        "two batches were never committed"
    );
    // Visible to another session while the job runs: they were committed.
    c.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let (mut w, code) = job.join().unwrap();
    assert_eq!(code, "57014", "{}", notices(&seen));
    assert!(wait_for(Duration::from_secs(5), || s.stats().in_flight == 0), "requests outlived the cancel");
    let committed = ids(&mut c, "SELECT id FROM big WHERE answer IS NOT NULL ORDER BY id");
    let filled = committed.len();
    assert!((40..200).contains(&filled) && filled.is_multiple_of(20), "only whole batches stay: {filled}");
    assert_eq!(committed, (1..=filled as i32).collect::<Vec<_>>(), "batches go in key order");
    let progressed = progress(&seen, 200);
    assert!(progressed.len() >= 2 && progressed.iter().all(|d| d % 20 == 0), "{}", notices(&seen));

    // Resume in the same session: the rest, and none of the committed rows asked again.
    s.reset();
    s.configure(|cfg| cfg.latency_ms = 0);
    clear(&seen);
    w.batch_execute("CALL ai_update('big', 'answer', $$ai_gen('chat', body)$$, batch_size => 20)").unwrap();
    let n = notices(&seen);
    assert!(n.contains(&format!("NOTICE: ai_update: {} rows of big to fill", 200 - filled)), "{n}");
    assert_eq!(finish_counts(&seen), [200 - filled as u64, 0, 0, 0, 0], "{n}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM big WHERE answer = 'Echo from qwen-plus: ' || body"), 200);
    assert_eq!(s.stats().chat_requests, 200 - filled as u64, "{:?}", s.stats());
    let again = sent(&s);
    for id in &committed {
        assert!(!again.contains_key(&format!("big row {id}")), "row {id} was committed and asked again");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Two sessions on the same column
// ---------------------------------------------------------------------------------------------

/// Two sessions on the same column split the rows (a job claims the rows it reads a page of
/// 500 at a time, so the table is larger than a page): every row filled, each prompt sent
/// once, and both sessions filled some.
#[test]
fn two_sessions_share_the_work() {
    let (mut c, db) = fresh_db("au_shared");
    let s = standin_with(Config { latency_ms: 30, ..Config::default() });
    deploy_models(&mut c, &s);
    make_docs(&mut c, 1500, ", answer text");
    let jobs: Vec<_> = (0..2u64)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || {
                let (mut w, seen) = connect_collecting_as(&db, "postgres");
                std::thread::sleep(Duration::from_millis(150 * i));
                w.batch_execute(
                    "CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$, batch_size => 100)",
                )
                .unwrap();
                (finish_counts(&seen), finish_line(&seen))
            })
        })
        .collect();
    let results: Vec<([u64; 5], String)> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM docs WHERE answer = 'Echo from qwen-plus: ' || body"),
        1500
    );
    assert_eq!(results.iter().map(|r| r.0[0]).sum::<u64>(), 1500, "{results:#?}");
    assert!(results.iter().all(|r| r.0[0] > 0), "both sessions did some of the work: {results:#?}");
    assert!(results.iter().all(|r| r.0[1] == 0), "{results:#?}");
    let twice: Vec<_> = sent(&s).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "asked more than once: {twice:?}");
    assert_eq!(s.stats().chat_requests, 1500, "{:?}", s.stats());
}

// ---------------------------------------------------------------------------------------------
// 8. Bad input
// ---------------------------------------------------------------------------------------------

/// Each a clear ERROR, before any request, with the table unchanged.
#[test]
fn bad_arguments_are_errors_before_any_request() {
    let (mut c, db) = fresh_db("au_bad_input");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 5, ", answer text, n int, g text GENERATED ALWAYS AS (upper(body)) STORED");
    c.batch_execute(
        "CREATE TABLE nopk (id int, body text, answer text);
         INSERT INTO nopk VALUES (1, 'x', NULL);
         CREATE VIEW docs_view AS SELECT * FROM docs;",
    )
    .unwrap();
    let before = snapshot(&mut c, "docs");
    let gen = "$$ai_gen('chat', body)$$";
    let one_value =
        "ai_update: the expression must give one value per row: no aggregate, window or set-returning function";
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        (
            format!("CALL ai_update(NULL, 'answer', {gen})"),
            "22004",
            Some("ai_update: table_name, target_column and expression must not be NULL"),
        ),
        (
            format!("CALL ai_update('docs', NULL, {gen})"),
            "22004",
            Some("ai_update: table_name, target_column and expression must not be NULL"),
        ),
        (
            "CALL ai_update('docs', 'answer', NULL)".into(),
            "22004",
            Some("ai_update: table_name, target_column and expression must not be NULL"),
        ),
        (
            format!("CALL ai_update('docs', 'answer', {gen}, batch_size => 0)"),
            "22023",
            Some("ai_update: batch_size must be between 1 and 100000, got 0"),
        ),
        (
            format!("CALL ai_update('docs', 'answer', {gen}, batch_size => -5)"),
            "22023",
            Some("ai_update: batch_size must be between 1 and 100000, got -5"),
        ),
        (
            format!("CALL ai_update('docs', 'answer', {gen}, batch_size => NULL)"),
            "22023",
            Some("ai_update: batch_size must be between 1 and 100000, got NULL"),
        ),
        (
            "CALL ai_update('docs', 'answer', '')".into(),
            "22023",
            Some("ai_update: expression must not be empty"),
        ),
        (
            "CALL ai_update('docs', 'answer', '  \n ')".into(),
            "22023",
            Some("ai_update: expression must not be empty"),
        ),
        ("CALL ai_update('docs', 'answer', $$ai_gen('chat', body$$)".into(), "42601", None),
        ("CALL ai_update('docs', 'answer', $$ai_gen('chat' body)$$)".into(), "42601", None),
        ("CALL ai_update('docs', 'answer', $$count(*)$$)".into(), "22023", Some(one_value)),
        ("CALL ai_update('docs', 'answer', $$count(*)::text$$)".into(), "22023", Some(one_value)),
        ("CALL ai_update('docs', 'answer', $$generate_series(1,2)$$)".into(), "22023", Some(one_value)),
        (
            "CALL ai_update('docs', 'answer', $$ai_gen('chat', string_agg(body, ','))$$)".into(),
            "22023",
            Some(one_value),
        ),
        (
            "CALL ai_update('docs', 'answer', $$generate_series(1, 2)::text$$)".into(),
            "22023",
            Some(one_value),
        ),
        (
            "CALL ai_update('docs', 'answer', $$ai_gen('chat', body) || row_number() OVER ()$$)".into(),
            "22023",
            Some(one_value),
        ),
        (
            "CALL ai_update('docs', 'answer', $$ai_gen('chat', body)), (body$$)".into(),
            "22023",
            Some("ai_update: the expression must be one SQL expression over a row of docs"),
        ),
        ("CALL ai_update('docs', 'answer', $$ai_gen('chat', nope)$$)".into(), "42703", None),
        (
            format!("CALL ai_update('docs', 'nope', {gen})"),
            "42703",
            Some("ai_update: target column \"nope\" does not exist in docs"),
        ),
        (
            format!("CALL ai_update('docs', 'n', {gen})"),
            "42804",
            Some("column \"n\" is of type integer but expression is of type text"),
        ),
        (
            format!("CALL ai_update('docs', 'g', {gen})"),
            "42804",
            Some("ai_update: target column \"g\" is a generated column, which cannot be written"),
        ),
        (
            format!("CALL ai_update('nopk', 'answer', {gen})"),
            "55000",
            Some("ai_update: table nopk has no primary key"),
        ),
        (
            format!("CALL ai_update('docs_view', 'answer', {gen})"),
            "42809",
            Some("ai_update: \"docs_view\" is not a table"),
        ),
        (
            format!("CALL ai_update('missing_table', 'answer', {gen})"),
            "42P01",
            Some("relation \"missing_table\" does not exist"),
        ),
    ];
    let (mut w, seen) = connect_collecting_as(&db, "postgres");
    for (sql, want_code, want_msg) in &cases {
        let (code, msg) = error_of(w.batch_execute(sql));
        assert_eq!(code, *want_code, "{sql}: {msg}");
        if let Some(want) = want_msg {
            assert!(msg.starts_with(want), "{sql}: {msg}");
        }
        assert_eq!(snapshot(&mut c, "docs"), before, "{sql} changed the table");
        assert_eq!(s.stats().requests, 0, "{sql} sent a request");
    }
    assert!(lines_starting(&seen, "NOTICE: ai_update: ").is_empty(), "a job started:\n{}", notices(&seen));

    // A second statement smuggled into the expression never runs.
    let (code, msg) = error_of(
        w.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)) FROM docs; DELETE FROM docs; SELECT (body$$)"),
    );
    eprintln!("smuggled statement: {code}: {msg}");
    assert_eq!(snapshot(&mut c, "docs"), before, "the smuggled DELETE ran");
    assert_eq!(s.stats().requests, 0);

    // Not inside a transaction block, nor a block with an EXCEPTION clause.
    let mut tx = w.transaction().unwrap();
    let (code, msg) = error_of(tx.batch_execute(&format!("CALL ai_update('docs', 'answer', {gen})")));
    assert_eq!(code, "2D000");
    assert_eq!(msg, "ai_update commits after every batch, so it cannot run inside a transaction block");
    drop(tx);
    let (code, msg) = error_of(w.batch_execute(
        "DO $do$ BEGIN CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$); EXCEPTION WHEN division_by_zero THEN NULL; END $do$",
    ));
    assert_eq!(code, "2D000", "{msg}");
    assert_eq!(snapshot(&mut c, "docs"), before);
    assert_eq!(s.stats().requests, 0);

    // The session is fine afterwards, and a DO block without an EXCEPTION clause may CALL it.
    w.batch_execute("DO $do$ BEGIN CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$); END $do$")
        .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE answer = 'Echo from qwen-plus: ' || body"), 5);
    assert_eq!(s.stats().chat_requests, 5);
}

// ---------------------------------------------------------------------------------------------
// 9. Privileges
// ---------------------------------------------------------------------------------------------

/// The job runs with the caller's rights: without UPDATE on the target column, or without
/// SELECT on a column the expression or the filter reads, it is an error (42501) before any
/// request, and nothing changes; with them, the same CALL works.
#[test]
fn the_caller_needs_the_rights_on_the_table() {
    let (mut c, db) = fresh_db("au_privileges");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 6, ", answer text, note text");
    fresh_role(&mut c, "au_clerk", "");
    c.batch_execute("GRANT SELECT ON docs TO au_clerk; GRANT UPDATE (note) ON docs TO au_clerk").unwrap();
    let before = snapshot(&mut c, "docs");
    let mut clerk = connect_as(&db, "au_clerk");
    let call = "CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$)";

    let (code, msg) = error_of(clerk.batch_execute(call));
    assert_eq!(code, "42501", "{msg}");
    assert!(
        msg.starts_with("ai_update: permission denied to update column \"answer\" of table \"docs\""),
        "{msg}"
    );
    assert_eq!(snapshot(&mut c, "docs"), before);
    assert_eq!(s.stats().requests, 0);

    // UPDATE on the target and SELECT on every column but body, which the expression reads.
    c.batch_execute(
        "REVOKE SELECT ON docs FROM au_clerk;
         GRANT SELECT (id, title, answer, note) ON docs TO au_clerk;
         GRANT UPDATE (answer) ON docs TO au_clerk",
    )
    .unwrap();
    let (code, msg) = error_of(clerk.batch_execute(call));
    assert_eq!(code, "42501", "{msg}");
    assert_eq!(snapshot(&mut c, "docs"), before);
    assert_eq!(s.stats().requests, 0);
    // Likewise a filter that reads it.
    let (code, msg) = error_of(clerk.batch_execute(
        "CALL ai_update('docs', 'answer', $$ai_gen('chat', title)$$, filter => $$body <> ''$$)",
    ));
    assert_eq!(code, "42501", "{msg}");
    assert_eq!(snapshot(&mut c, "docs"), before);
    assert_eq!(s.stats().requests, 0);

    // With the rights it needs, the same CALL works.
    c.batch_execute("GRANT SELECT ON docs TO au_clerk").unwrap();
    clerk.batch_execute(call).unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE answer = 'Echo from qwen-plus: ' || body"), 6);
    assert_eq!(s.stats().chat_requests, 6);
}

/// Column privileges that are enough for the UPDATE the job stands for are enough for the
/// job: SELECT on the key, the columns the expression reads and the target, UPDATE on the
/// target; not SELECT on other columns of the table.
#[test]
fn column_privileges_enough_for_the_update_are_enough_for_the_job() {
    let (mut c, db) = fresh_db("au_column_privileges");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 6, ", answer text, secret text");
    fresh_role(&mut c, "au_column_clerk", "");
    c.batch_execute(
        "UPDATE docs SET secret = 'salary ' || id;
         GRANT SELECT (id, body, answer) ON docs TO au_column_clerk;
         GRANT UPDATE (answer) ON docs TO au_column_clerk",
    )
    .unwrap();
    let mut clerk = connect_as(&db, "au_column_clerk");
    // The rights suffice for the statement the job stands for, on one row...
    clerk
        .batch_execute("UPDATE docs SET answer = ai_gen('chat', body) WHERE id = 1 AND answer IS NULL")
        .unwrap();
    assert_eq!(s.stats().chat_requests, 1);
    // ...and for the job over the rest.
    clerk
        .batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', body)$$)")
        .unwrap_or_else(|e| panic!("SELECT on id, body, answer and UPDATE on answer are not enough: {e:?}"));
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE answer = 'Echo from qwen-plus: ' || body"), 6);
    assert_eq!(s.stats().chat_requests, 6);
}

/// ai_gen_column builds ai_update's expression from the template and params it is given: a
/// quote, a backslash or a brace in them reaches the model as written, whatever the session's
/// standard_conforming_strings.
#[test]
fn the_gen_column_wrapper_sends_its_template_as_written() {
    let (mut c, _) = fresh_db("au_gen_column_literal");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 3, ", answer text");
    let template = r"it's a\b {x}: {0}";
    for setting in ["on", "off"] {
        c.batch_execute(&format!(
            "SET standard_conforming_strings = {setting}; UPDATE docs SET answer = NULL"
        ))
        .unwrap();
        c.batch_execute(&format!(
            "CALL ai_gen_column('docs', 'body', 'answer', 'chat', $t${template}$t$, params => $p${{\"stop\": \"\\n\"}}$p$)"
        ))
        .unwrap();
        let answers: Vec<String> =
            c.query("SELECT answer FROM docs ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        let expected: Vec<String> = (1..=3).map(|i| echo(&template.replace("{0}", &body_of(i)))).collect();
        assert_eq!(answers, expected, "standard_conforming_strings = {setting}");
    }
    let stops: Vec<String> =
        s.requests().iter().filter_map(|r| r.body.get("stop").map(|v| v.to_string())).collect();
    assert_eq!(stops.len(), 6, "{stops:?}");
    assert!(stops.iter().all(|v| v == "\"\\n\""), "{stops:?}");
}
