//! Batched execution of AI functions in queries (issue 9): where a query evaluates
//! pg_bailian's AI functions per row in a target list, the planner adds a
//! `Custom Scan (AI Batch)` node that reads rows ahead, keeps their calls in flight together
//! (up to `pg_bailian.max_concurrency`) and packs `ai_embed` inputs, and still returns the
//! same rows in the same order, with the same errors, as row-by-row execution.
//!
//! Every shape below is run twice, batched (checking through EXPLAIN that the node is there,
//! so the comparison is not vacuous) and with `pg_bailian.batch_execution = off` (checking
//! that it is not), and the two results must be equal. Against a real cluster and the
//! stand-in, like the other end-to-end tests.

mod common;

use bailian_standin::{chat_reply, embedding_for, translation_reply, Config, Fault, Standin};
use common::plans::*;
use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

/// The text of `docs.body` for row `id` (as `make_docs` fills it).
/// `docs(id, body, emb, answer, model)` with `rows` rows, bodies from `body_of`.
fn make_docs(c: &mut Client, rows: i32) {
    c.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[], answer text, model text DEFAULT 'chat');
         INSERT INTO docs (id, body) SELECT g, 'document ' || g || ' about topic ' || (g % 7)
           FROM generate_series(1, {rows}) g;
         ANALYZE docs"
    ))
    .unwrap();
}

/// chat (qwen-plus), mt (qwen-mt-plus) and emb (text-embedding-v4 at 64 dimensions).
fn deploy_models(c: &mut Client, s: &Standin) {
    deploy(c, s, "chat", "qwen-plus", "");
    deploy(c, s, "mt", "qwen-mt-plus", "");
    deploy(c, s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
}

/// The call-site function names of the (single) `AI Calls` line, sorted.
fn ai_calls(plan: &str) -> Vec<String> {
    let lines = property(plan, "AI Calls");
    assert_eq!(lines.len(), 1, "one AI Calls line expected:\n{plan}");
    let mut names: Vec<String> = lines[0].split(',').map(|n| n.trim().to_string()).collect();
    names.sort();
    names
}

/// N of `Read-Ahead: up to N rows, M requests in flight`, checking M.
fn read_ahead_rows(plan: &str, in_flight: u32) -> u64 {
    let lines = property(plan, "Read-Ahead");
    assert_eq!(lines.len(), 1, "one Read-Ahead line expected:\n{plan}");
    let rest = lines[0].strip_prefix("up to ").unwrap_or_else(|| panic!("{}", lines[0]));
    let (rows, tail) = rest.split_once(" rows, ").unwrap_or_else(|| panic!("{}", lines[0]));
    assert_eq!(tail, format!("{in_flight} requests in flight"), "{plan}");
    rows.parse().unwrap_or_else(|e| panic!("{}: {e}", lines[0]))
}

/// Runs `sql` batched (asserting the AI Batch node is in its plan) and row by row (asserting
/// it is not), asserts both return the same rows in the same order, and returns them.
fn both_ways(c: &mut Client, sql: &str) -> Rows {
    set_batching(c, true);
    assert_batched(c, sql);
    let on = text_rows(c, sql);
    set_batching(c, false);
    assert_not_batched(c, sql);
    let off = text_rows(c, sql);
    reset_batching(c);
    assert_eq!(on, off, "batched and row-by-row results differ for {sql}");
    assert!(!on.is_empty(), "{sql} returned no rows: nothing was compared");
    on
}

/// Runs the data-changing `stmt` batched and row by row, each in a transaction rolled back
/// after reading `state` (asserting the plan has the node only when batching is on), asserts
/// both left the same state, and returns it.
fn dml_both_ways(c: &mut Client, stmt: &str, state: &str) -> Rows {
    let mut seen = Vec::new();
    for on in [true, false] {
        set_batching(c, on);
        let plan = explain(c, stmt);
        assert_eq!(plan.contains(BATCH_NODE), on, "batching {on}: the plan of {stmt}:\n{plan}");
        c.batch_execute("BEGIN").unwrap();
        c.batch_execute(stmt).unwrap_or_else(|e| panic!("{stmt}: {e}"));
        seen.push(text_rows(c, state));
        c.batch_execute("ROLLBACK").unwrap();
    }
    reset_batching(c);
    assert_eq!(seen[0], seen[1], "batched and row-by-row {stmt} left different states");
    assert!(!seen[0].is_empty(), "{state} read no rows: nothing was compared");
    seen.swap_remove(0)
}

/// Runs the failing `sql` batched (the node in its plan) and row by row, `arm` setting the
/// stand-in up before each; asserts the same SQLSTATE and message, and returns them.
fn error_both_ways(c: &mut Client, sql: &str, arm: impl Fn()) -> (String, String) {
    set_batching(c, true);
    assert_batched(c, sql);
    arm();
    let on = error_of(c.simple_query(sql));
    set_batching(c, false);
    arm();
    let off = error_of(c.simple_query(sql));
    reset_batching(c);
    assert_eq!(on, off, "batched and row-by-row errors differ for {sql}");
    on
}

/// `(id, ai_gen('chat', body))` rows as the server renders them, for the given ids.
fn echo_rows(ids: impl IntoIterator<Item = i32>) -> Rows {
    ids.into_iter().map(|i| vec![Some(i.to_string()), Some(echo(&body_of(i)))]).collect()
}

fn ok_count(s: &Standin) -> u64 {
    s.stats().by_status.get(&200).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The node itself: EXPLAIN, order, concurrency, throughput, packing.
// ---------------------------------------------------------------------------------------------

/// Batching is on by default; EXPLAIN shows the node with its `AI Calls` (one name per call
/// site), `Read-Ahead` (with the current `pg_bailian.max_concurrency`) and, under a constant
/// LIMIT, `Row Limit`; plain EXPLAIN sends nothing; EXPLAIN ANALYZE adds `Requests`, which
/// matches what the stand-in received; `batch_execution = off` plans without the node.
#[test]
fn explain_shows_the_node_and_its_properties() {
    let (mut c, _) = fresh_db("bq_explain");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 20);
    assert_eq!(one_text(&mut c, "SHOW pg_bailian.batch_execution").as_deref(), Some("on"));

    let both = "SELECT id, ai_embed('emb', body), ai_gen('chat', body) FROM docs";
    let plan = assert_batched(&mut c, both);
    assert_eq!(ai_calls(&plan), ["ai_embed", "ai_gen"]);
    assert!(read_ahead_rows(&plan, 16) >= 1, "{plan}");
    assert!(property(&plan, "Row Limit").is_empty(), "no LIMIT, no Row Limit:\n{plan}");
    assert!(property(&plan, "Requests").is_empty(), "Requests is for EXPLAIN ANALYZE:\n{plan}");

    c.batch_execute("SET pg_bailian.max_concurrency = 8").unwrap();
    let plan = assert_batched(&mut c, both);
    assert!(read_ahead_rows(&plan, 8) >= 1, "{plan}");

    let limited = "SELECT id, ai_gen('chat', body) FROM docs LIMIT 10";
    let plan = assert_batched(&mut c, limited);
    assert_eq!(ai_calls(&plan), ["ai_gen"]);
    assert_eq!(property(&plan, "Row Limit"), ["10"], "{plan}");
    assert_eq!(s.stats().requests, 0, "plain EXPLAIN sends nothing");

    // EXPLAIN ANALYZE runs it and counts the requests.
    s.reset();
    let plan = explain_with(
        &mut c,
        "ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF",
        "SELECT id, ai_gen('chat', body) FROM docs LIMIT 5",
    );
    assert!(plan.contains(BATCH_NODE), "{plan}");
    assert_eq!(property(&plan, "Requests"), ["5"], "{plan}");
    assert_eq!(s.stats().chat_requests, 5);

    s.reset();
    let plan = explain_with(
        &mut c,
        "ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF",
        "SELECT id, ai_embed('emb', body) FROM docs",
    );
    let shown = property(&plan, "Requests");
    assert_eq!(shown.len(), 1, "{plan}");
    let stats = s.stats();
    assert_eq!(shown[0], stats.embedding_requests.to_string(), "Requests matches the wire: {plan}");
    assert_eq!(stats.inputs, 20);
    assert!(stats.embedding_requests < 20, "20 inputs were packed: {stats:?}");

    set_batching(&mut c, false);
    let plan = explain(&mut c, both);
    assert!(!plan.contains(BATCH_NODE) && property(&plan, "AI Calls").is_empty(), "{plan}");
    set_batching(&mut c, true);
    assert_batched(&mut c, both);
}

/// Answers that arrive out of order (some rows' answers are delayed) still come back in the
/// rows' own order with their own values; batched, several requests are in flight but never
/// more than `pg_bailian.max_concurrency`; row by row, one at a time.
#[test]
fn rows_keep_their_order_when_answers_arrive_out_of_order() {
    let (mut c, _) = fresh_db("bq_order");
    let s = standin_with(Config { latency_ms: 50, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 40);
    c.batch_execute("SET pg_bailian.max_concurrency = 4").unwrap();
    let arm = || {
        s.reset();
        for id in [2, 3, 10, 11, 17, 30] {
            s.script(&body_of(id), vec![Fault::Delay(400)]);
        }
    };
    let sql = "SELECT id, ai_gen('chat', body) FROM docs";
    assert_batched(&mut c, sql);
    arm();
    let on = text_rows(&mut c, sql);
    assert_eq!(on, echo_rows(1..=40));
    let stats = s.stats();
    assert!(stats.peak_in_flight > 1 && stats.peak_in_flight <= 4, "{stats:?}");
    assert_eq!(stats.chat_requests, 40, "one call per row");

    set_batching(&mut c, false);
    arm();
    let off = text_rows(&mut c, sql);
    assert_eq!(off, on);
    assert_eq!(s.stats().peak_in_flight, 1, "row by row: one request at a time");
}

/// Batched execution is the point: 32 rows at 100 ms a request take well under half the
/// time they take row by row (about 3.2 s), with the same result.
#[test]
fn batching_is_much_faster_than_row_by_row() {
    let (mut c, _) = fresh_db("bq_throughput");
    let s = standin_with(Config { latency_ms: 100, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 32);
    let sql = "SELECT id, ai_gen('chat', body) FROM docs";
    assert_batched(&mut c, sql);
    let start = Instant::now();
    let on = text_rows(&mut c, sql);
    let on_took = start.elapsed().as_secs_f64();
    set_batching(&mut c, false);
    let start = Instant::now();
    let off = text_rows(&mut c, sql);
    let off_took = start.elapsed().as_secs_f64();
    assert_eq!(on, off);
    assert_eq!(on, echo_rows(1..=32));
    assert!(off_took >= 3.2, "row by row: 32 requests of 100 ms one after another took {off_took} s");
    assert!(on_took < 0.5 * off_took, "batched {on_took} s, row by row {off_took} s");
}

/// `UPDATE docs SET emb = ai_embed(...)` over 100 rows packs the inputs of
/// text-embedding-v4 up to 10 a request (at most 16 requests, none over 10 inputs), and
/// every row gets its own text's vector; row by row it is 100 requests and the same vectors.
#[test]
fn embeddings_are_packed_into_few_requests() {
    let (mut c, _) = fresh_db("bq_packing");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    make_docs(&mut c, 100);
    let stmt = "UPDATE docs SET emb = ai_embed('emb', body)";
    let check = |c: &mut Client| {
        let rows = c.query("SELECT body, emb FROM docs", &[]).unwrap();
        assert_eq!(rows.len(), 100);
        for row in &rows {
            let body: String = row.get(0);
            let emb: Option<Vec<f32>> = row.get(1);
            assert_eq!(emb.as_deref(), Some(embedding_for(&body, 64).as_slice()), "row {body:?}");
        }
    };

    assert_batched(&mut c, stmt);
    s.reset();
    assert_eq!(c.execute(stmt, &[]).unwrap(), 100);
    let stats = s.stats();
    assert_eq!(stats.inputs, 100, "every row's text sent once: {stats:?}");
    assert!(stats.embedding_requests <= 16, "100 inputs at 10 a request: {stats:?}");
    assert!(s.requests().iter().all(|r| r.inputs.len() <= 10), "text-embedding-v4 takes 10 a request");
    check(&mut c);

    c.batch_execute("UPDATE docs SET emb = NULL").unwrap();
    set_batching(&mut c, false);
    assert_not_batched(&mut c, stmt);
    s.reset();
    assert_eq!(c.execute(stmt, &[]).unwrap(), 100);
    assert_eq!(s.stats().embedding_requests, 100, "row by row: one request a row");
    check(&mut c);
}

// ---------------------------------------------------------------------------------------------
// How far it reads ahead: LIMIT and cursors.
// ---------------------------------------------------------------------------------------------

/// A constant LIMIT above the node bounds its calls: `LIMIT 10` over 100 rows sends exactly
/// the 10 calls of the rows returned, with or without ORDER BY, as row by row does; with an
/// OFFSET no more than offset + limit calls.
#[test]
fn a_constant_limit_bounds_the_calls() {
    let (mut c, _) = fresh_db("bq_limit");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 100);
    for sql in [
        "SELECT id, ai_gen('chat', body) FROM docs LIMIT 10",
        "SELECT id, ai_gen('chat', body) FROM docs ORDER BY id LIMIT 10",
    ] {
        let plan = assert_batched(&mut c, sql);
        assert_eq!(property(&plan, "Row Limit"), ["10"], "{plan}");
        s.reset();
        let on = text_rows(&mut c, sql);
        assert_eq!(s.stats().chat_requests, 10, "{sql}: batched");
        set_batching(&mut c, false);
        s.reset();
        let off = text_rows(&mut c, sql);
        assert_eq!(s.stats().chat_requests, 10, "{sql}: row by row");
        reset_batching(&mut c);
        assert_eq!(on, off, "{sql}");
        assert_eq!(on, echo_rows(1..=10), "{sql}");
    }
    let sql = "SELECT id, ai_gen('chat', body) FROM docs ORDER BY id LIMIT 5 OFFSET 5";
    assert_batched(&mut c, sql);
    s.reset();
    assert_eq!(text_rows(&mut c, sql), echo_rows(6..=10));
    assert!(s.stats().chat_requests <= 10, "{:?}", s.stats());
}

/// A cursor FETCHing in steps: read-ahead starts small and grows with what was returned, so
/// `FETCH 3` sends at most 10 calls for a 60-row table and `FETCH 4` more at most 22 in all;
/// every FETCH returns the right rows, and after `FETCH ALL` each row was called exactly once.
/// Row by row gives the same rows with exactly one call per row fetched.
#[test]
fn a_cursor_reads_ahead_only_a_little() {
    let (mut c, _) = fresh_db("bq_cursor");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 60);
    let sql = "SELECT id, ai_gen('chat', body) FROM docs ORDER BY id";
    let mut results = Vec::new();
    for on in [true, false] {
        set_batching(&mut c, on);
        let plan = explain(&mut c, sql);
        assert_eq!(plan.contains(BATCH_NODE), on, "{plan}");
        s.reset();
        c.batch_execute(&format!("BEGIN; DECLARE c CURSOR FOR {sql}")).unwrap();
        let first = text_rows(&mut c, "FETCH 3 FROM c");
        assert_eq!(first, echo_rows(1..=3));
        let after_first = s.stats().chat_requests;
        let second = text_rows(&mut c, "FETCH 4 FROM c");
        assert_eq!(second, echo_rows(4..=7));
        let after_second = s.stats().chat_requests;
        let rest = text_rows(&mut c, "FETCH ALL FROM c");
        assert_eq!(rest, echo_rows(8..=60));
        c.batch_execute("COMMIT").unwrap();
        let total = s.stats().chat_requests;
        if on {
            assert!(after_first <= 3 * 3 + 1, "FETCH 3 sent {after_first} calls");
            assert!(after_second <= 7 * 3 + 1, "FETCH 3 + FETCH 4 sent {after_second} calls");
        } else {
            assert_eq!((after_first, after_second), (3, 7));
        }
        assert_eq!(total, 60, "batching {on}: each row called exactly once");
        results.push((first, second, rest));
    }
    reset_batching(&mut c);
    assert_eq!(results[0], results[1]);
}

/// Closing a cursor after two rows drops whatever it read ahead: requests in flight at the
/// CLOSE end at once (they would take 1.5 s more), none completes afterwards, few were
/// sent at all, and the transaction and session go on working.
#[test]
fn closing_a_cursor_early_drops_its_read_ahead() {
    let (mut c, _) = fresh_db("bq_cursor_close");
    let s = standin_with(Config { latency_ms: 1500, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 40);
    let sql = "SELECT id, ai_gen('chat', body) FROM docs";
    assert_batched(&mut c, sql);
    c.batch_execute(&format!("BEGIN; DECLARE c CURSOR FOR {sql}")).unwrap();
    assert_eq!(text_rows(&mut c, "FETCH 2 FROM c"), echo_rows(1..=2));
    // Let answers that raced the FETCH land, so what is in flight now was sent for rows ahead.
    std::thread::sleep(Duration::from_millis(200));
    let before = s.stats();
    c.batch_execute("CLOSE c").unwrap();
    assert!(
        wait_for(Duration::from_millis(500), || s.stats().in_flight == 0),
        "read-ahead requests outlived CLOSE: {:?}",
        s.stats()
    );
    assert!(s.stats().aborted >= before.in_flight, "in flight at CLOSE: {before:?}, after: {:?}", s.stats());
    assert!(before.requests <= 2 * 3 + 1, "two rows fetched, {} calls sent", before.requests);
    let (sent, ok) = (s.stats().requests, ok_count(&s));
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!((s.stats().requests, ok_count(&s)), (sent, ok), "nothing sent or answered after CLOSE");
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(one_text(&mut c, "SELECT ai_gen('chat', 'after')").as_deref(), Some(echo("after").as_str()));
}

/// A SCROLL cursor moved backwards and rewound (`FETCH ABSOLUTE 1` rescans the plan) gives
/// the same rows batched and row by row, each with its own row's answer.
#[test]
fn a_scroll_cursor_moving_back_and_rewinding() {
    let (mut c, _) = fresh_db("bq_scroll");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 12);
    let sql = "SELECT id, ai_gen('chat', body) FROM docs ORDER BY id";
    let steps: [(&str, Vec<i32>); 6] = [
        ("FETCH 5 FROM c", (1..=5).collect()),
        ("FETCH BACKWARD 2 FROM c", vec![4, 3]),
        ("FETCH ABSOLUTE 1 FROM c", vec![1]),
        ("FETCH 3 FROM c", vec![2, 3, 4]),
        ("FETCH ALL FROM c", (5..=12).collect()),
        ("FETCH BACKWARD 1 FROM c", vec![12]),
    ];
    let mut results = Vec::new();
    for on in [true, false] {
        set_batching(&mut c, on);
        let plan = explain(&mut c, sql);
        assert_eq!(plan.contains(BATCH_NODE), on, "{plan}");
        c.batch_execute(&format!("BEGIN; DECLARE c SCROLL CURSOR FOR {sql}")).unwrap();
        let mut got = Vec::new();
        for (fetch, ids) in &steps {
            let rows = text_rows(&mut c, fetch);
            assert_eq!(rows, echo_rows(ids.iter().copied()), "batching {on}: {fetch}");
            got.push(rows);
        }
        c.batch_execute("COMMIT").unwrap();
        results.push(got);
    }
    reset_batching(&mut c);
    assert_eq!(results[0], results[1]);
}

// ---------------------------------------------------------------------------------------------
// Query shapes: each compared with row-by-row execution.
// ---------------------------------------------------------------------------------------------

/// Result nodes (no FROM), function scans, VALUES with NULL and empty inputs, scans with a
/// plain filter, UNION ALL, joins and subqueries in FROM: batched, same rows as row by row.
#[test]
fn target_list_shapes_match_row_by_row() {
    let (mut c, _) = fresh_db("bq_shapes");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 30);
    c.batch_execute(
        "CREATE TABLE questions (qid int PRIMARY KEY, doc_id int, question text);
         INSERT INTO questions SELECT g, 1 + g % 10, 'question ' || g FROM generate_series(1, 25) g;
         ANALYZE questions",
    )
    .unwrap();

    // No FROM: one row, nothing to read ahead, so row by row by design.
    let sql = "SELECT ai_gen('chat', 'one'), ai_translate('mt', 'two', 'English'), ai_embed('emb', 'three') IS NOT NULL";
    assert_not_batched(&mut c, sql);
    let rows = text_rows(&mut c, sql);
    assert_eq!(
        rows,
        vec![vec![
            Some(echo("one")),
            Some(translation_reply("two", "auto", "English", &[])),
            Some("t".to_string())
        ]]
    );

    let rows = both_ways(&mut c, "SELECT g, ai_gen('chat', 'row ' || g) FROM generate_series(1, 25) g");
    let want: Rows = (1..=25).map(|g| vec![Some(g.to_string()), Some(echo(&format!("row {g}")))]).collect();
    assert_eq!(rows, want);

    let rows = both_ways(
        &mut c,
        "SELECT v, ai_embed('emb', v) FROM (VALUES ('alpha beta'), ('gamma'), (NULL), (''), ('delta')) t(v)",
    );
    let nulls: Vec<bool> = rows.iter().map(|r| r[1].is_none()).collect();
    assert_eq!(nulls, vec![false, false, true, true, false], "NULL and '' embed to NULL");

    let rows = both_ways(&mut c, "SELECT id, ai_gen('chat', body) FROM docs WHERE id % 3 = 0");
    assert_eq!(rows, echo_rows((1..=30).filter(|i| i % 3 == 0)));

    let rows = both_ways(
        &mut c,
        "SELECT id, ai_gen('chat', body) FROM docs
         UNION ALL SELECT -id, ai_translate('mt', body, 'English') FROM docs",
    );
    assert_eq!(rows.len(), 60);
    assert_eq!(rows[30][1], Some(translation_reply(&body_of(1), "auto", "English", &[])));

    let rows = both_ways(
        &mut c,
        "SELECT d.id, q.qid, ai_gen('chat', q.question || ' / ' || d.body)
           FROM docs d JOIN questions q ON q.doc_id = d.id ORDER BY d.id, q.qid",
    );
    assert_eq!(rows.len(), 25);
    for r in &rows {
        let (id, qid): (i32, i32) =
            (r[0].as_ref().unwrap().parse().unwrap(), r[1].as_ref().unwrap().parse().unwrap());
        assert_eq!(r[2], Some(echo(&format!("question {qid} / {}", body_of(id)))));
    }

    let rows = both_ways(
        &mut c,
        "SELECT x.id, ai_gen('chat', x.b) FROM (SELECT id, upper(body) AS b FROM docs OFFSET 0) x",
    );
    assert_eq!(rows[0][1], Some(echo(&body_of(1).to_uppercase())));
}

/// Nested calls, `ai_gen('chat', ai_translate('mt', body, 'English'))` and
/// `ai_embed('emb', ai_gen(...))`: batched, both call sites listed, same values as row by row
/// and as the stand-in computes them.
#[test]
fn nested_calls_match_row_by_row() {
    let (mut c, _) = fresh_db("bq_nested");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 25);
    let sql = "SELECT id, ai_gen('chat', ai_translate('mt', body, 'English')) FROM docs";
    // One AI Batch node per nesting level: the outer one sends ai_gen, the one below it
    // ai_translate (whose answers are ai_gen's arguments).
    assert_eq!(property(&assert_batched(&mut c, sql), "AI Calls"), ["ai_gen", "ai_translate"]);
    let rows = both_ways(&mut c, sql);
    let want: Rows = (1..=25)
        .map(|i| {
            let translated = translation_reply(&body_of(i), "auto", "English", &[]);
            vec![Some(i.to_string()), Some(echo(&translated))]
        })
        .collect();
    assert_eq!(rows, want);

    let rows = both_ways(&mut c, "SELECT id, ai_embed('emb', ai_gen('chat', body)) FROM docs");
    assert_eq!(rows.len(), 25);
    let typed: Vec<f32> = c
        .query_one("SELECT ai_embed('emb', ai_gen('chat', body)) FROM docs WHERE id = 4", &[])
        .unwrap()
        .get(0);
    assert_eq!(typed, embedding_for(&echo(&body_of(4)), 64));
}

/// ORDER BY an AI result (computed below the sort) and the same call twice in one row (two
/// call sites, both listed, equal values): same as row by row.
#[test]
fn order_by_an_ai_result_and_the_same_call_twice() {
    let (mut c, _) = fresh_db("bq_order_by");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 30);
    let rows = both_ways(&mut c, "SELECT id, ai_gen('chat', body) AS a FROM docs ORDER BY a DESC, id");
    let mut ids: Vec<i32> = rows.iter().map(|r| r[0].as_ref().unwrap().parse().unwrap()).collect();
    for r in &rows {
        assert_eq!(r[1], Some(echo(&body_of(r[0].as_ref().unwrap().parse().unwrap()))));
    }
    ids.sort();
    assert_eq!(ids, (1..=30).collect::<Vec<_>>());

    // A LIMIT above a sort of AI results does not bound the calls below the sort: every row
    // must be translated before the first seven are known.
    let sql = "SELECT id, ai_translate('mt', body, 'English') AS t FROM docs ORDER BY 2, 1 LIMIT 7";
    let plan = assert_batched(&mut c, sql);
    assert!(property(&plan, "Row Limit").is_empty(), "the LIMIT is above a Sort:\n{plan}");
    s.reset();
    let rows = both_ways(&mut c, sql);
    assert_eq!(rows.len(), 7);
    assert_eq!(s.stats().chat_requests, 2 * 30, "all 30 rows translated, batched and row by row");

    let sql = "SELECT id, ai_gen('chat', body) AS a, ai_gen('chat', body) AS b FROM docs";
    assert_eq!(ai_calls(&assert_batched(&mut c, sql)), ["ai_gen", "ai_gen"], "one name per call site");
    let rows = both_ways(&mut c, sql);
    assert_eq!(rows.len(), 30);
    for r in &rows {
        assert_eq!(r[1], r[2]);
        assert!(r[1].is_some());
    }
}

/// Rescans: a correlated scalar subquery (its plan rescanned per outer row), a LATERAL
/// subquery over generate_series and a LATERAL one-row subquery: same rows as row by row,
/// each with its own answer, and no more calls than row by row makes.
#[test]
fn rescans_match_row_by_row() {
    let (mut c, _) = fresh_db("bq_rescans");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 20);
    let cases = [
        "SELECT id, (SELECT ai_gen('chat', d2.body) FROM docs d2 WHERE d2.id = d.id) FROM docs d ORDER BY id",
        "SELECT d.id, l.g, l.a FROM docs d
           CROSS JOIN LATERAL (SELECT g, ai_gen('chat', d.body || ' #' || g) AS a FROM generate_series(1, 3) g) l
          ORDER BY d.id, l.g",
        "SELECT d.id, l.e IS NOT NULL FROM docs d LEFT JOIN LATERAL (SELECT ai_embed('emb', d.body) AS e OFFSET 0) l ON true
          ORDER BY d.id",
    ];
    for sql in cases {
        set_batching(&mut c, true);
        // The one-row LATERAL subquery has no input to read ahead (a Result without one):
        // it runs row by row by design, once per rescan.
        if sql.contains("OFFSET 0") {
            assert_not_batched(&mut c, sql);
        } else {
            assert_batched(&mut c, sql);
        }
        s.reset();
        let on = text_rows(&mut c, sql);
        let on_requests = s.stats().requests;
        set_batching(&mut c, false);
        assert_not_batched(&mut c, sql);
        s.reset();
        let off = text_rows(&mut c, sql);
        let off_requests = s.stats().requests;
        reset_batching(&mut c);
        assert_eq!(on, off, "{sql}");
        assert!(!on.is_empty());
        assert_eq!(on_requests, off_requests, "{sql}: calls batched vs row by row");
    }
    let rows = text_rows(&mut c, cases[0]);
    assert_eq!(rows, echo_rows(1..=20));
    let rows = text_rows(&mut c, cases[1]);
    assert_eq!(rows.len(), 60);
    assert_eq!(rows[4], vec![Some("2".into()), Some("2".into()), Some(echo(&format!("{} #2", body_of(2))))]);
}

/// CTEs: plain (not inlined: volatile), MATERIALIZED and referenced twice, one batched CTE
/// feeding another batched call, a data-modifying CTE, and a CTE read only partly under a
/// LIMIT (few calls): same rows as row by row.
#[test]
fn ctes_match_row_by_row() {
    let (mut c, _) = fresh_db("bq_ctes");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 25);
    let rows = both_ways(
        &mut c,
        "WITH x AS (SELECT id, ai_embed('emb', body) AS e FROM docs) SELECT id, e FROM x ORDER BY id",
    );
    assert_eq!(rows.len(), 25);
    assert!(rows.iter().all(|r| r[1].is_some()));

    let rows = both_ways(
        &mut c,
        "WITH x AS MATERIALIZED (SELECT id, ai_gen('chat', body) AS a FROM docs)
         SELECT p.id, p.a, p.a = q.a FROM x p JOIN x q USING (id) ORDER BY p.id",
    );
    assert!(rows.iter().all(|r| r[2].as_deref() == Some("t")));
    assert_eq!(rows[3][1], Some(echo(&body_of(4))));

    let rows = both_ways(
        &mut c,
        "WITH t AS (SELECT id, ai_translate('mt', body, 'English') AS tr FROM docs)
         SELECT id, ai_gen('chat', tr) FROM t ORDER BY id",
    );
    assert_eq!(rows[0][1], Some(echo(&translation_reply(&body_of(1), "auto", "English", &[]))));

    let rows = both_ways(
        &mut c,
        "WITH u AS (UPDATE docs SET answer = ai_gen('chat', body) WHERE id <= 5 RETURNING id, answer)
         SELECT id, answer FROM u ORDER BY id",
    );
    assert_eq!(rows, echo_rows(1..=5));

    // (The UPDATE above moved rows 1 to 5 to the end of the heap: the first three rows a
    // scan meets are 6, 7 and 8, batched or not.)
    let sql = "WITH x AS (SELECT id, ai_gen('chat', body) AS a FROM docs) SELECT id, a FROM x LIMIT 3";
    assert_batched(&mut c, sql);
    s.reset();
    assert_eq!(text_rows(&mut c, sql), echo_rows(6..=8));
    assert!(s.stats().chat_requests <= 3 * 3 + 1, "three rows read from the CTE: {:?}", s.stats());
    both_ways(&mut c, sql);
}

/// Prepared statements executed 7 times (so PostgreSQL switches to a generic plan) and
/// then with `plan_cache_mode = force_generic_plan`: with a parameter in WHERE, as the
/// model name, and as the LIMIT (each execution then sends at most 10 calls for 3 rows).
/// Every execution returns the right rows, batched and row by row alike.
#[test]
fn prepared_statements_and_generic_plans() {
    let (mut c, _) = fresh_db("bq_prepared");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "chat2", "qwen-max", "");
    make_docs(&mut c, 20);
    let mut runs: Vec<Vec<Rows>> = Vec::new();
    for on in [true, false] {
        set_batching(&mut c, on);
        c.batch_execute(
            "DEALLOCATE ALL;
             RESET plan_cache_mode;
             PREPARE p(int) AS SELECT id, ai_gen('chat', body) FROM docs WHERE id <= $1 ORDER BY id;
             PREPARE pm(text) AS SELECT id, ai_gen($1, body) FROM docs ORDER BY id;
             PREPARE pl(int) AS SELECT id, ai_gen('chat', body) FROM docs ORDER BY id LIMIT $1",
        )
        .unwrap();
        let mut got = Vec::new();
        for generic in [false, true] {
            if generic {
                c.batch_execute("SET plan_cache_mode = force_generic_plan").unwrap();
            }
            for run in 0..7 {
                let rows = text_rows(&mut c, "EXECUTE p(10)");
                assert_eq!(rows, echo_rows(1..=10), "batching {on}, run {run}");
                got.push(rows);

                let model = if run % 2 == 0 { "chat" } else { "chat2" };
                let rows = text_rows(&mut c, &format!("EXECUTE pm('{model}')"));
                let answerer = if model == "chat" { "qwen-plus" } else { "qwen-max" };
                let want: Rows = (1..=20)
                    .map(|i| vec![Some(i.to_string()), Some(chat_reply(answerer, &body_of(i), 0))])
                    .collect();
                assert_eq!(rows, want, "batching {on}, run {run}, model {model}");
                got.push(rows);

                s.reset();
                let rows = text_rows(&mut c, "EXECUTE pl(3)");
                assert_eq!(rows, echo_rows(1..=3), "batching {on}, run {run}");
                assert!(s.stats().chat_requests <= 3 * 3 + 1, "LIMIT $1 = 3: {:?}", s.stats());
                got.push(rows);
            }
        }
        for name in ["p(10)", "pm('chat')", "pl(3)"] {
            let plan = explain(&mut c, &format!("EXECUTE {name}"));
            assert_eq!(plan.contains(BATCH_NODE), on, "batching {on}: EXECUTE {name}:\n{plan}");
        }
        runs.push(got);
    }
    c.batch_execute("DEALLOCATE ALL; RESET plan_cache_mode").unwrap();
    reset_batching(&mut c);
    assert_eq!(runs[0], runs[1]);
}

/// A plan cached with the node (a prepared statement planned while batching was on) runs
/// row by row once `batch_execution` is off: one request at a time, same rows; queries
/// planned afterwards have no node.
#[test]
fn a_cached_batched_plan_runs_row_by_row_when_batching_is_off() {
    let (mut c, _) = fresh_db("bq_cached_plan");
    let s = standin_with(Config { latency_ms: 50, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 24);
    c.batch_execute("PREPARE p AS SELECT id, ai_gen('chat', body) FROM docs").unwrap();
    let plan = explain(&mut c, "EXECUTE p");
    assert!(plan.contains(BATCH_NODE), "{plan}");
    s.reset();
    let on = text_rows(&mut c, "EXECUTE p");
    assert_eq!(on, echo_rows(1..=24));
    assert!(s.stats().peak_in_flight > 1, "batched: {:?}", s.stats());

    // A setting does not invalidate PostgreSQL's cached plans: the plan with the node stays
    // cached, and it must now run row by row. PostgreSQL may still replan at any moment for
    // reasons outside this test: a concurrent test's CREATE EXTENSION can overflow the shared
    // invalidation queue while this backend is busy, and the reset that follows drops every
    // cached plan. With batching off the whole time, a plan that has the node both before and
    // after the EXECUTE proves the EXECUTE ran it (a replan in between would have dropped the
    // node for good); otherwise the attempt proves nothing and is made again, from a plan made
    // afresh with batching on (DISCARD PLANS: a setting alone would keep the plan without it).
    let mut proven = false;
    for _attempt in 0..5 {
        c.batch_execute("DISCARD PLANS").unwrap();
        set_batching(&mut c, true);
        assert!(explain(&mut c, "EXECUTE p").contains(BATCH_NODE));
        set_batching(&mut c, false);
        if !explain(&mut c, "EXECUTE p").contains(BATCH_NODE) {
            continue;
        }
        s.reset();
        let off = text_rows(&mut c, "EXECUTE p");
        let stats = s.stats();
        if !explain(&mut c, "EXECUTE p").contains(BATCH_NODE) {
            continue;
        }
        assert_eq!(off, on);
        assert_eq!((stats.peak_in_flight, stats.chat_requests), (1, 24), "row by row: {stats:?}");
        proven = true;
        break;
    }
    assert!(proven, "the cached plan was replanned in each of 5 attempts");
    assert_not_batched(&mut c, "SELECT id, ai_gen('chat', body) FROM docs");
}

/// With parallel query encouraged (no setup or tuple cost, two workers per Gather), scans,
/// joins and an aggregate feeding an AI call give the same rows batched as row by row.
#[test]
fn parallel_plans_match_row_by_row() {
    let (mut c, _) = fresh_db("bq_parallel");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 200);
    c.batch_execute(
        "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0;
         SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0",
    )
    .unwrap();
    let rows = both_ways(&mut c, "SELECT id, ai_gen('chat', body) FROM docs ORDER BY id");
    assert_eq!(rows, echo_rows(1..=200));
    let rows = both_ways(
        &mut c,
        "SELECT d.id, ai_embed('emb', d.body || ' ' || e.body)
           FROM docs d JOIN docs e ON e.id = d.id + 1 ORDER BY d.id",
    );
    assert_eq!(rows.len(), 199);
    let rows = both_ways(
        &mut c,
        "SELECT k, ai_gen('chat', t) FROM
           (SELECT id % 5 AS k, string_agg(body, ',' ORDER BY id) AS t FROM docs GROUP BY 1) g
          ORDER BY k",
    );
    assert_eq!(rows.len(), 5);
}

// ---------------------------------------------------------------------------------------------
// Statements that write: UPDATE, INSERT ... SELECT, CREATE TABLE AS, triggers.
// ---------------------------------------------------------------------------------------------

/// UPDATE with AI calls in SET, INSERT ... SELECT and CREATE TABLE AS are batched (the node
/// under the ModifyTable / in the source) and leave the same table contents as row by row.
#[test]
fn update_insert_select_and_create_table_as_match_row_by_row() {
    let (mut c, _) = fresh_db("bq_writes");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 30);
    c.batch_execute("CREATE TABLE out (id int PRIMARY KEY, t text, e real[])").unwrap();

    let state = dml_both_ways(
        &mut c,
        "UPDATE docs SET emb = ai_embed('emb', body), answer = ai_gen('chat', body) WHERE id % 3 <> 0",
        "SELECT id, emb::text, answer FROM docs ORDER BY id",
    );
    assert_eq!(state.len(), 30);
    assert_eq!(state[0][2], Some(echo(&body_of(1))));
    assert_eq!(state[2][1], None, "row 3 is not updated");

    let state = dml_both_ways(
        &mut c,
        "INSERT INTO out (id, t, e) SELECT id, ai_translate('mt', body, 'English'), ai_embed('emb', body) FROM docs",
        "SELECT id, t, e::text FROM out ORDER BY id",
    );
    assert_eq!(state.len(), 30);
    assert_eq!(state[9][1], Some(translation_reply(&body_of(10), "auto", "English", &[])));

    let state = dml_both_ways(
        &mut c,
        "CREATE TABLE made AS SELECT id, ai_gen('chat', body) AS g, ai_embed('emb', body) AS e FROM docs",
        "SELECT id, g, e::text FROM made ORDER BY id",
    );
    assert_eq!(state.len(), 30);
    assert_eq!(state[29][1], Some(echo(&body_of(30))));

    // Committed once batched, the vectors are the stand-in's for each row's own text.
    c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body)").unwrap();
    for row in c.query("SELECT body, emb FROM docs", &[]).unwrap() {
        let body: String = row.get(0);
        let emb: Vec<f32> = row.get(1);
        assert_eq!(emb, embedding_for(&body, 64), "row {body:?}");
    }
}

/// A batched `INSERT ... SELECT ai_embed(...)` into a table whose BEFORE ROW trigger (plpgsql)
/// sets `NEW.answer := ai_gen(...)` while the batch has requests in flight, and whose AFTER
/// STATEMENT trigger runs its own `INSERT INTO log SELECT ai_gen(...)` over the transition
/// table: the same rows and log as row by row, every call made exactly once.
#[test]
fn triggers_calling_ai_functions_inside_a_batched_insert() {
    let (mut c, _) = fresh_db("bq_triggers");
    let s = standin_with(Config { latency_ms: 20, ..Config::default() });
    deploy_models(&mut c, &s);
    make_docs(&mut c, 20);
    c.batch_execute(
        "CREATE TABLE dst (id int PRIMARY KEY, body text, emb real[], answer text);
         CREATE TABLE log (id int, note text);
         CREATE FUNCTION answer_it() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           NEW.answer := ai_gen('chat', NEW.body);
           RETURN NEW;
         END $$;
         CREATE TRIGGER answer_it BEFORE INSERT ON dst FOR EACH ROW EXECUTE FUNCTION answer_it();
         CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO log SELECT n.id, ai_gen('chat', 'logged: ' || n.answer) FROM new_rows n;
           RETURN NULL;
         END $$;
         CREATE TRIGGER log_it AFTER INSERT ON dst REFERENCING NEW TABLE AS new_rows
           FOR EACH STATEMENT EXECUTE FUNCTION log_it();",
    )
    .unwrap();
    // The trigger's own statement is a batchable shape too.
    assert_batched(&mut c, "INSERT INTO log SELECT n.id, ai_gen('chat', 'logged: ' || n.answer) FROM dst n");

    let stmt = "INSERT INTO dst (id, body, emb) SELECT id, body, ai_embed('emb', body) FROM docs";
    let state = "SELECT d.id, d.body, d.emb::text, d.answer, l.note FROM dst d LEFT JOIN log l USING (id) ORDER BY d.id";
    s.reset();
    let rows = dml_both_ways(&mut c, stmt, state);
    assert_eq!(rows.len(), 20);
    let stats = s.stats();
    // Per run: 20 embedding inputs, 20 answers from the BEFORE trigger, 20 log notes.
    assert_eq!(stats.chat_requests, 2 * 40, "{stats:?}");
    assert_eq!(stats.inputs, 2 * 60, "{stats:?}");

    c.batch_execute(stmt).unwrap();
    for row in
        c.query("SELECT d.id, d.body, d.emb, d.answer, l.note FROM dst d JOIN log l USING (id)", &[]).unwrap()
    {
        let body: String = row.get(1);
        let emb: Vec<f32> = row.get(2);
        let answer: String = row.get(3);
        let note: String = row.get(4);
        assert_eq!(emb, embedding_for(&body, 64));
        assert_eq!(answer, echo(&body));
        assert_eq!(note, echo(&format!("logged: {answer}")));
    }
    let logged: i64 = c.query_one("SELECT count(*) FROM log", &[]).unwrap().get(0);
    assert_eq!(logged, 20);
}

// ---------------------------------------------------------------------------------------------
// Conditional positions (see tests/query_shapes.rs for every shape of issue 20).
// ---------------------------------------------------------------------------------------------

/// Calls inside CASE, COALESCE, AND, OR, aggregate arguments and WHERE are batched now, and
/// keep their lazy row-by-row semantics: a branch not taken sends nothing, so batched and
/// row by row send exactly the same calls. Calls in set-returning positions give the same
/// rows and calls either way.
#[test]
fn lazy_and_filtering_positions_send_only_what_row_by_row_sends() {
    let (mut c, _) = fresh_db("bq_not_batched");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 20);
    c.batch_execute("UPDATE docs SET answer = 'kept' WHERE id % 4 = 0").unwrap();
    let cases: [(&str, u64); 6] = [
        ("SELECT id, CASE WHEN id % 2 = 0 THEN ai_gen('chat', body) END FROM docs", 10),
        ("SELECT id, COALESCE(answer, ai_gen('chat', body)) FROM docs", 15),
        ("SELECT id, id <= 3 AND ai_gen('chat', body) LIKE 'Echo%' FROM docs", 3),
        ("SELECT id, id > 3 OR ai_gen('chat', body) LIKE 'Echo%' FROM docs", 3),
        // The two calls of a row are identical: sent once (`pg_bailian.share_answers`).
        ("SELECT count(ai_gen('chat', body)), max(ai_gen('chat', body)) FROM docs", 20),
        ("SELECT id FROM docs WHERE ai_gen('chat', body) LIKE '%topic 3'", 20),
    ];
    for (sql, calls) in cases {
        let mut seen = Vec::new();
        for on in [true, false] {
            set_batching(&mut c, on);
            if on {
                assert_batched(&mut c, sql);
            } else {
                assert_not_batched(&mut c, sql);
            }
            s.reset();
            let rows = text_rows(&mut c, sql);
            let sent = s.stats().chat_requests;
            assert_eq!(sent, calls, "batching {on}: {sql}");
            seen.push((rows, sent));
        }
        reset_batching(&mut c);
        assert_eq!(seen[0], seen[1], "{sql}");
        assert!(!seen[0].0.is_empty(), "{sql}");
    }
    let ids = text_rows(&mut c, "SELECT id FROM docs WHERE ai_gen('chat', body) LIKE '%topic 3'");
    assert_eq!(ids, vec![vec![Some("3".into())], vec![Some("10".into())], vec![Some("17".into())]]);

    // Set-returning positions: correct either way, one call per input row.
    for sql in [
        "SELECT id, unnest(ARRAY[ai_gen('chat', body), 'x']) FROM docs",
        "SELECT id, generate_series(1, 2), ai_gen('chat', body) FROM docs",
    ] {
        let mut seen = Vec::new();
        for on in [true, false] {
            set_batching(&mut c, on);
            s.reset();
            let rows = text_rows(&mut c, sql);
            assert_eq!(rows.len(), 40, "{sql}");
            seen.push((rows, s.stats().chat_requests));
        }
        reset_batching(&mut c);
        // ProjectSet evaluates its plain target-list items once per output row, so the
        // count is PostgreSQL's own, the same either way.
        assert_eq!(seen[0], seen[1], "{sql}");
        assert!(seen[0].1 >= 20, "{sql}");
    }

    // Mixed: the plain call and the one under CASE are batched by one node.
    let sql =
        "SELECT id, ai_gen('chat', body), CASE WHEN id % 2 = 0 THEN ai_embed('emb', body) END FROM docs";
    assert_eq!(ai_calls(&assert_batched(&mut c, sql)), ["ai_embed", "ai_gen"]);
    s.reset();
    both_ways(&mut c, sql);
    assert_eq!(s.stats().inputs, 2 * (20 + 10), "20 chat calls and 10 embedded rows per run");
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

/// A row whose call fails raises what row by row raises, same SQLSTATE and message: a
/// refused prompt (ZB400 data_inspection_failed), a 500 with no retries left (ZBR01), and a
/// per-row model name that is not deployed (42704). The session works afterwards and no
/// request is left in flight.
#[test]
fn a_failing_row_raises_the_row_by_row_error() {
    let (mut c, _) = fresh_db("bq_row_error");
    let s = standin_with(Config { latency_ms: 20, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", ", max_retries => 0");
    make_docs(&mut c, 30);
    let sql = "SELECT id, ai_gen('chat', body) FROM docs";

    let (code, msg) = error_both_ways(&mut c, sql, || {
        s.reset();
        s.script(&body_of(12), vec![Fault::Inspection; 5]);
    });
    assert_eq!(code, "ZB400");
    assert!(
        msg.starts_with("Bailian rejected the request to model \"chat\": HTTP 400 data_inspection_failed"),
        "{msg}"
    );
    assert!(wait_for(Duration::from_secs(2), || s.stats().in_flight == 0));

    let (code, msg) = error_both_ways(&mut c, sql, || {
        s.reset();
        s.script(&body_of(8), vec![Fault::Status(500); 5]);
    });
    assert_eq!(code, "ZBR01", "{msg}");
    assert!(msg.starts_with("request to model \"chat\" failed after 1 attempt:"), "{msg}");

    c.batch_execute("UPDATE docs SET model = 'nope' WHERE id = 6").unwrap();
    let (code, msg) = error_both_ways(&mut c, "SELECT id, ai_gen(model, body) FROM docs", || s.reset());
    assert_eq!((code.as_str(), msg.as_str()), ("42704", "model \"nope\" is not deployed"));

    assert!(wait_for(Duration::from_secs(2), || s.stats().in_flight == 0));
    assert_eq!(one_text(&mut c, "SELECT ai_gen('chat', 'after')").as_deref(), Some(echo("after").as_str()));
    assert_eq!(
        text_rows(&mut c, "SELECT id, ai_gen('chat', body) FROM docs WHERE id <= 4"),
        echo_rows(1..=4)
    );
}

/// With two failing rows in flight together, the error raised is the first failing row's in
/// row order (row 5: ZB400), as row by row raises it, even though row 9's error (ZB401) may
/// arrive first.
#[test]
fn the_first_failing_row_in_order_decides_the_error() {
    let (mut c, _) = fresh_db("bq_first_error");
    let s = standin_with(Config { latency_ms: 100, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", ", max_retries => 0");
    make_docs(&mut c, 30);
    let (code, msg) = error_both_ways(&mut c, "SELECT id, ai_gen('chat', body) FROM docs", || {
        s.reset();
        s.script(&body_of(5), vec![Fault::Inspection; 5]);
        s.script(&body_of(9), vec![Fault::Status(401); 5]);
    });
    assert_eq!(code, "ZB400", "{msg}");
}

/// An input refused inside a packed embedding request fails the statement as row by row
/// fails it (same SQLSTATE and message), for a SELECT and for an UPDATE, which changes
/// nothing.
#[test]
fn a_refused_input_in_a_packed_request_raises_the_row_by_row_error() {
    let (mut c, _) = fresh_db("bq_packed_error");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}', max_retries => 0");
    make_docs(&mut c, 30);
    let arm = || {
        s.reset();
        s.script(&body_of(7), vec![Fault::Inspection; 20]);
    };
    let (code, msg) = error_both_ways(&mut c, "SELECT id, ai_embed('emb', body) FROM docs", arm);
    assert_eq!(code, "ZB400", "{msg}");
    assert!(msg.contains("data_inspection_failed"), "{msg}");
    let (code, _) = error_both_ways(&mut c, "UPDATE docs SET emb = ai_embed('emb', body)", arm);
    assert_eq!(code, "ZB400");
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, 0);
}

// ---------------------------------------------------------------------------------------------
// Cancel and statement_timeout.
// ---------------------------------------------------------------------------------------------

/// Runs `sql` on `c` in a thread; returns the client and the SQLSTATE ("OK" on success).
fn spawn_query(mut c: Client, sql: &'static str) -> std::thread::JoinHandle<(Client, String)> {
    std::thread::spawn(move || {
        let code = match c.simple_query(sql) {
            Ok(_) => "OK".to_string(),
            Err(e) => e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("{e}")),
        };
        (c, code)
    })
}

/// pg_cancel_backend while several batched requests (2 s each, up to 8 at once) are in
/// flight ends the statement at once, closes every one of them (the stand-in sees them go
/// away, its open connections fall to those that were idle, and none completes later), and
/// the session goes on working.
#[test]
fn pg_cancel_backend_stops_every_request_in_flight() {
    let (mut c, db) = fresh_db("bq_cancel");
    let s = standin_with(Config { latency_ms: 2000, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 40);
    assert_batched(&mut c, "SELECT id, ai_gen('chat', body) FROM docs");
    let mut worker = connect(&db);
    // A new session loads pg_bailian's library (and with it the planner hook) when it first
    // calls into it; without session_preload_libraries, a query planned before that runs row
    // by row. Load it first, as a session that has used pg_bailian already has.
    worker.batch_execute("LOAD 'pg_bailian'").unwrap();
    worker.batch_execute("SET pg_bailian.max_concurrency = 8").unwrap();
    let pid: i32 = worker.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let job = spawn_query(worker, "SELECT id, ai_gen('chat', body) FROM docs");
    assert!(
        wait_for(Duration::from_secs(10), || s.stats().in_flight >= 2),
        "several requests never were in flight together: {:?}",
        s.stats()
    );
    std::thread::sleep(Duration::from_millis(100));
    let at_cancel = s.stats();
    let idle = at_cancel.connections_open.saturating_sub(at_cancel.in_flight);
    let ok_at_cancel = at_cancel.by_status.get(&200).copied().unwrap_or(0);
    let cancelled = Instant::now();
    c.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let (mut worker, code) = job.join().unwrap();
    let took = cancelled.elapsed();
    assert_eq!(code, "57014");
    assert!(took < Duration::from_millis(1500), "the cancel took {took:?}");
    assert!(
        wait_for(Duration::from_millis(1000), || {
            let now = s.stats();
            now.in_flight == 0 && now.connections_open <= idle
        }),
        "requests or their connections outlived the cancel: at cancel {at_cancel:?}, now {:?}",
        s.stats()
    );
    assert!(s.stats().aborted >= at_cancel.in_flight, "at cancel {at_cancel:?}, now {:?}", s.stats());
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(ok_count(&s), ok_at_cancel, "a request in flight at the cancel completed later");
    worker.batch_execute("SET pg_bailian.max_concurrency = 16").unwrap();
    assert_eq!(
        one_text(&mut worker, "SELECT ai_gen('chat', 'again')").as_deref(),
        Some(echo("again").as_str())
    );
    drop(worker);
    assert!(wait_for(Duration::from_secs(2), || s.stats().connections_open == 0));
}

/// statement_timeout (3 s) during a batched query whose requests take 2 s ends it on time
/// with PostgreSQL's own error, and the requests in flight then are closed at once and never
/// complete.
#[test]
fn statement_timeout_stops_every_request_in_flight() {
    let (mut c, _) = fresh_db("bq_timeout");
    let s = standin_with(Config { latency_ms: 2000, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 40);
    let sql = "SELECT id, ai_gen('chat', body) FROM docs";
    assert_batched(&mut c, sql);
    c.batch_execute("SET pg_bailian.max_concurrency = 8; SET statement_timeout = '3s'").unwrap();
    s.reset();
    let start = Instant::now();
    let (code, msg) = error_of(c.simple_query(sql));
    let took = start.elapsed();
    assert_eq!((code.as_str(), msg.as_str()), ("57014", "canceling statement due to statement timeout"));
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_millis(4500), "took {took:?}");
    assert!(
        wait_for(Duration::from_millis(500), || s.stats().in_flight == 0),
        "requests outlived the timeout: {:?}",
        s.stats()
    );
    let ok_after = ok_count(&s);
    assert!(s.stats().aborted >= 1, "requests were in flight at the timeout: {:?}", s.stats());
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(ok_count(&s), ok_after, "a request in flight at the timeout completed later");
    c.batch_execute("RESET statement_timeout").unwrap();
    assert_eq!(one_text(&mut c, "SELECT ai_gen('chat', 'after')").as_deref(), Some(echo("after").as_str()));
}

/// A function is batched for the code it runs, not its name: an `ai_gen` look-alike another
/// role planted ahead on the search_path gets no AI Batch node and runs as the plain function
/// it is (and the stand-in never hears of it), while ours, named by schema, is batched.
#[test]
fn a_look_alike_is_never_batched() {
    let (mut c, _) = fresh_db("bq_look_alike");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 20);
    c.batch_execute(
        "CREATE SCHEMA evil;
         CREATE FUNCTION evil.ai_gen(model_name text, prompt text, params jsonb DEFAULT NULL) RETURNS text
           LANGUAGE sql AS $$ SELECT 'fake: ' || prompt $$;
         SET search_path = evil, public",
    )
    .unwrap();
    let sql = "SELECT id, ai_gen('chat', body) FROM docs ORDER BY id";
    assert_not_batched(&mut c, sql);
    s.reset();
    let rows = text_rows(&mut c, sql);
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r[1].as_deref().is_some_and(|v| v.starts_with("fake: "))), "{rows:?}");
    assert_eq!(ok_count(&s), 0);
    assert_batched(&mut c, "SELECT id, public.ai_gen('chat', body) FROM docs");
    c.batch_execute("RESET search_path").unwrap();
}
