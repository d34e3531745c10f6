//! Every query shape batched (issue 20): AI calls in WHERE and join conditions, in aggregate
//! and window function arguments and FILTERs, and under CASE, COALESCE, AND and OR, each
//! compared with row-by-row execution (`pg_bailian.batch_execution = off`): the same rows,
//! the same NULLs, the same errors, and exactly the same calls sent to the stand-in (a call
//! row by row would not make is never made), with EXPLAIN showing the node when batching is
//! on (so the comparison is not vacuous). Security quals run before any row is sent.

mod common;

use bailian_standin::{Fault, Standin};
use common::plans::*;
use common::*;
use postgres::Client;
use std::time::Duration;

/// `r(id, body, grp, cached, note, model)`, 40 rows: `cached` set for every third row,
/// `note` for every fifth, `model` 'chat'.
fn make_r(c: &mut Client) {
    c.batch_execute(
        "CREATE TABLE r (id int PRIMARY KEY, body text, grp int, cached real[], note text, model text DEFAULT 'chat');
         INSERT INTO r (id, body, grp, cached, note)
           SELECT g, 'document ' || g || ' about topic ' || (g % 7), g % 4,
                  CASE WHEN g % 3 = 0 THEN '{1,2}'::real[] END, CASE WHEN g % 5 = 0 THEN 'note ' || g END
             FROM generate_series(1, 40) g;
         ANALYZE r",
    )
    .unwrap();
}

fn setup(test: &str) -> (Client, Standin) {
    let (mut c, db) = fresh_db(test);
    // These tests count the calls each shape makes, batched and row by row; identical calls
    // sent once (`pg_bailian.share_answers`, tests/paying_less.rs) would make fewer.
    c.batch_execute(&format!(
        "ALTER DATABASE {db} SET pg_bailian.share_answers = off; SET pg_bailian.share_answers = off"
    ))
    .unwrap();
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    make_r(&mut c);
    (c, s)
}

/// What the stand-in was sent: (chat requests, embedding inputs).
fn sent(s: &Standin) -> (u64, u64) {
    let st = s.stats();
    (st.chat_requests, st.inputs - st.chat_requests)
}

/// Runs `sql` batched (the node in its plan) and row by row (no node); asserts the same rows
/// and the same calls sent; returns the rows and what was sent.
fn same_both_ways(c: &mut Client, s: &Standin, sql: &str) -> (Rows, (u64, u64)) {
    on_and_off(c, s, sql, true)
}

/// Runs `sql` with batching on, asserting its plan has no AI Batch node all the same, and
/// off; asserts the same rows and the same calls sent; returns the rows and what was sent.
fn row_by_row_both_ways(c: &mut Client, s: &Standin, sql: &str) -> (Rows, (u64, u64)) {
    on_and_off(c, s, sql, false)
}

/// `sql` with batching on (`node`: whether its plan then has an AI Batch node) and off.
fn on_and_off(c: &mut Client, s: &Standin, sql: &str, node: bool) -> (Rows, (u64, u64)) {
    if node {
        assert_batched(c, sql);
    } else {
        assert_not_batched(c, sql);
    }
    set_batching(c, false);
    assert_not_batched(c, sql);
    reset_batching(c);
    let [on, off] = run_on_and_off(c, s, sql);
    assert_eq!(on, off, "batching on (left) and off (right) differ for {sql}");
    assert!(!on.0.is_empty(), "{sql} returned no rows: nothing was compared");
    on
}

/// The rows of `sql` and the calls it sent, with batching on and then off.
fn run_on_and_off(c: &mut Client, s: &Standin, sql: &str) -> [(Rows, (u64, u64)); 2] {
    [true, false].map(|on| {
        set_batching(c, on);
        s.reset();
        let rows = text_rows(c, sql);
        let calls = sent(s);
        reset_batching(c);
        (rows, calls)
    })
}

/// Whether row `id`'s body is about `topic` (the stand-in echoes it: `ai_gen('chat', body)
/// LIKE '%topic 3'` holds for those rows).
fn ends_with_topic(id: i32, topic: i32) -> bool {
    id % 7 == topic
}

// ---------------------------------------------------------------------------------------------
// AI calls in filters.
// ---------------------------------------------------------------------------------------------

/// A WHERE with an AI qual, alone, after a cheap qual, with two AI quals, with OR and CASE,
/// under a join, a subquery, EXISTS and IN: batched, and every call made is one row by row
/// makes.
#[test]
fn filters_send_what_row_by_row_sends() {
    let (mut c, s) = setup("qs_filters");
    let topic3 = (1..=40).filter(|i| ends_with_topic(*i, 3)).count() as u64;

    let (rows, calls) =
        same_both_ways(&mut c, &s, "SELECT id FROM r WHERE ai_gen('chat', body) LIKE '%topic 3' ORDER BY id");
    assert_eq!(rows.len() as u64, topic3);
    assert_eq!(calls, (40, 0));

    // The cheap qual filters first: one call per row it keeps (4 of 40).
    let (rows, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT id FROM r WHERE id % 10 = 0 AND ai_gen('chat', body) LIKE '%topic%'",
    );
    assert_eq!(rows.len(), 4);
    assert_eq!(calls, (4, 0));

    // Two AI quals (of equal cost: the planner keeps their order): the second sees only the
    // rows the first passed.
    let sql = "SELECT id FROM r WHERE ai_gen('chat', body) LIKE '%topic 3' AND ai_gen('chat', 'again ' || body) LIKE '%'";
    let plan = assert_batched(&mut c, sql);
    assert_eq!(
        property(&plan, "AI Calls For").iter().filter(|p| p.starts_with("filter")).count(),
        2,
        "{plan}"
    );
    let (_, calls) = same_both_ways(&mut c, &s, sql);
    assert_eq!(calls, (40 + topic3, 0), "the second qual's calls only for rows passing the first");

    // OR: the AI qual only where the cheap one is not true; CASE: only the branch taken.
    let (_, calls) =
        same_both_ways(&mut c, &s, "SELECT id FROM r WHERE id <= 30 OR ai_gen('chat', body) LIKE '%topic 3'");
    assert_eq!(calls, (10, 0));
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT id FROM r WHERE CASE WHEN grp = 0 THEN ai_gen('chat', body) LIKE '%topic 3' ELSE id < 5 END",
    );
    assert_eq!(calls, (10, 0));

    // A join condition, a subquery in FROM, a correlated EXISTS (rescanned per row), IN.
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT a.id, b.id FROM r a JOIN r b ON b.id = a.id + 1 \
          WHERE ai_gen('chat', a.body || ' / ' || b.body) LIKE '%topic 3' ORDER BY 1",
    );
    assert_eq!(calls, (39, 0));
    same_both_ways(
        &mut c,
        &s,
        "SELECT * FROM (SELECT id, grp FROM r WHERE ai_gen('chat', body) LIKE '%topic 3' OFFSET 0) s WHERE grp < 3 ORDER BY id",
    );
    // A correlated scalar subquery: its plan is rescanned for each outer row.
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT id, (SELECT count(*) FROM r r2 WHERE r2.grp = r.grp AND r2.id < r.id \
                      AND ai_gen('chat', r2.body) LIKE '%topic 3') FROM r WHERE id <= 12 ORDER BY id",
    );
    assert_eq!(
        calls.0,
        (1..=12).map(|i: u64| (i - 1) / 4).sum::<u64>(),
        "one call per earlier row of the same group"
    );
    same_both_ways(
        &mut c,
        &s,
        "SELECT id FROM r WHERE id <= 10 AND EXISTS (SELECT 1 FROM r r2 WHERE r2.id = r.id + 1 \
           AND ai_gen('chat', r2.body) LIKE '%topic 3') ORDER BY id",
    );
    same_both_ways(
        &mut c,
        &s,
        "SELECT id FROM r WHERE id IN (SELECT id + 1 FROM r WHERE ai_gen('chat', body) LIKE '%topic 3') ORDER BY id",
    );

    // Subqueries beside a filter: in the output columns, and in a qual after the AI one
    // (both move above with it and run only for the rows that pass).
    same_both_ways(
        &mut c,
        &s,
        "SELECT id, (SELECT count(*) FROM r r2 WHERE r2.grp = r.grp AND r2.id < r.id) FROM r \
          WHERE ai_gen('chat', body) LIKE '%topic 3' ORDER BY id",
    );
    same_both_ways(
        &mut c,
        &s,
        "SELECT id FROM r WHERE ai_gen('chat', body) LIKE '%topic 3' \
            AND (SELECT count(*) FROM r r4 WHERE r4.grp = r.grp AND r4.id < r.id) > 2 ORDER BY id",
    );

    // HAVING over an aggregate, DISTINCT ON, an UPDATE's WHERE.
    same_both_ways(
        &mut c,
        &s,
        "SELECT grp, count(*) FROM r GROUP BY grp \
          HAVING ai_gen('chat', string_agg(body, ',' ORDER BY id)) LIKE '%topic 3%' ORDER BY grp",
    );
    same_both_ways(
        &mut c,
        &s,
        "SELECT DISTINCT ON (grp) grp, id FROM r WHERE ai_gen('chat', body) LIKE '%topic%' ORDER BY grp, id DESC",
    );
    for on in [true, false] {
        set_batching(&mut c, on);
        s.reset();
        let mut t = c.transaction().unwrap();
        let n =
            t.execute("UPDATE r SET note = 'hit' WHERE ai_gen('chat', body) LIKE '%topic 3'", &[]).unwrap();
        assert_eq!(n, topic3, "batching {on}");
        t.rollback().unwrap();
        assert_eq!(sent(&s), (40, 0), "batching {on}");
    }
    reset_batching(&mut c);
}

/// Under a LIMIT a filter reads ahead no more rows than the LIMIT can still use: the calls
/// made stay within the LIMIT of those row by row makes.
#[test]
fn filters_under_a_limit_stay_bounded() {
    let (mut c, s) = setup("qs_limit");
    for on in [true, false] {
        set_batching(&mut c, on);
        s.reset();
        let rows = text_rows(
            &mut c,
            "SELECT id FROM r WHERE ai_gen('chat', body) LIKE '%topic 3' ORDER BY id LIMIT 2",
        );
        assert_eq!(rows, vec![vec![Some("3".into())], vec![Some("10".into())]]);
        s.reset();
        let rows = text_rows(&mut c, "SELECT id FROM r WHERE ai_gen('chat', body) LIKE '%topic 3' LIMIT 2");
        assert_eq!(rows.len(), 2);
        let calls = sent(&s).0;
        // Row by row: up to the second match (id 10 in a heap scan: 10 calls).
        assert!(calls <= 10 + 2, "batching {on}: {calls} calls for LIMIT 2");
        assert!(calls >= 10, "batching {on}: {calls} calls");
    }
    reset_batching(&mut c);
}

// ---------------------------------------------------------------------------------------------
// AI calls in aggregates and window functions.
// ---------------------------------------------------------------------------------------------

#[test]
fn aggregates_and_windows_are_computed_batched() {
    let (mut c, s) = setup("qs_aggregates");
    let (_, calls) =
        same_both_ways(&mut c, &s, "SELECT count(*) FROM r WHERE ai_gen('chat', body) LIKE '%topic 3'");
    assert_eq!(calls, (40, 0));
    let (_, calls) =
        same_both_ways(&mut c, &s, "SELECT avg(ai_similarity('emb', body, 'good review')) FROM r");
    assert_eq!(calls.0, 0);
    let (_, calls) =
        same_both_ways(&mut c, &s, "SELECT string_agg(ai_gen('chat', body), ' ' ORDER BY id) FROM r");
    assert_eq!(calls, (40, 0));
    // Grouped, DISTINCT, ordered, with FILTERs (plain and AI), in HAVING.
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT grp, count(*) FILTER (WHERE ai_gen('chat', body) LIKE '%topic 3'), \
                max(ai_gen('chat', 'short: ' || body)) FILTER (WHERE id % 2 = 0), \
                count(DISTINCT ai_gen('chat', 'd ' || grp)) \
           FROM r GROUP BY grp HAVING sum(length(ai_gen('chat', body))) > 0 ORDER BY grp",
    );
    assert_eq!(calls, (40 + 20 + 40 + 40, 0));
    // A FILTER that calls a model guards arguments that call one too: the arguments only
    // where it is true.
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT string_agg(ai_gen('chat', 'again ' || body), ',' ORDER BY id) \
                FILTER (WHERE ai_gen('chat', body) LIKE '%topic 3') FROM r",
    );
    let topic3 = (1..=40).filter(|i| ends_with_topic(*i, 3)).count() as u64;
    assert_eq!(calls, (40 + topic3, 0));
    // Window functions.
    same_both_ways(
        &mut c,
        &s,
        "SELECT id, sum(length(ai_gen('chat', body))) OVER (PARTITION BY grp ORDER BY id) FROM r ORDER BY id",
    );
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT id, count(*) FILTER (WHERE ai_gen('chat', body) LIKE '%topic 3') OVER (ORDER BY id) FROM r ORDER BY id",
    );
    assert_eq!(calls, (40, 0));
    // A moving frame: row by row, PostgreSQL aggregates each frame afresh because the
    // argument is volatile, calling the model again for every frame a row is in (up to 3
    // times, 116 calls); batched, each row's answer is computed once and every frame sees it.
    let sql = "SELECT id, sum(length(ai_gen('chat', body))) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) \
                 FROM r ORDER BY id";
    assert_batched(&mut c, sql);
    let [on, off] = run_on_and_off(&mut c, &s, sql);
    assert_eq!(on.0, off.0, "batched and row by row differ for {sql}");
    assert_eq!((on.1, off.1), ((40, 0), (40 * 3 - 2 * 2, 0)));
    // What a window function reads is not every row's argument, or not always: these stay
    // row by row even with batching on, with the same calls.
    for sql in [
        "SELECT id, first_value(ai_gen('chat', body)) OVER (ORDER BY id) FROM r ORDER BY id",
        "SELECT id, lag(ai_gen('chat', body)) OVER (ORDER BY id) FROM r ORDER BY id",
        "SELECT id, sum(length(ai_gen('chat', body))) OVER (ORDER BY id ROWS BETWEEN 2 PRECEDING AND 1 PRECEDING) \
           FROM r ORDER BY id",
        "SELECT id, count(ai_gen('chat', body)) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING \
           EXCLUDE CURRENT ROW) FROM r ORDER BY id",
        // A run condition (rn <= 2) stops the window node.
        "SELECT * FROM (SELECT id, sum(length(ai_gen('chat', body))) OVER (ORDER BY id) total, \
                               row_number() OVER (ORDER BY id) rn FROM r) s WHERE rn <= 2",
    ] {
        row_by_row_both_ways(&mut c, &s, sql);
    }
    // PostgreSQL projects a row before testing the run condition on it: the third row is
    // the last one called for, not all 40.
    let (_, calls) = row_by_row_both_ways(
        &mut c,
        &s,
        "SELECT * FROM (SELECT id, ai_gen('chat', body) a, row_number() OVER (ORDER BY id) rn FROM r) s WHERE rn <= 2",
    );
    assert_eq!(calls, (3, 0), "the run condition stops the calls after three rows");
    let plan = assert_batched(&mut c, "SELECT avg(ai_similarity('emb', body, 'good review')) FROM r");
    assert_eq!(
        property(&plan, "AI Calls For"),
        ["aggregate arguments and FILTERs of the node above"],
        "{plan}"
    );
}

// ---------------------------------------------------------------------------------------------
// Conditional calls.
// ---------------------------------------------------------------------------------------------

#[test]
fn conditional_calls_only_for_the_rows_that_call_for_them() {
    let (mut c, s) = setup("qs_conditional");
    // COALESCE: embeddings for the 27 rows without one.
    let (_, calls) =
        same_both_ways(&mut c, &s, "SELECT id, COALESCE(cached, ai_embed('emb', body)) FROM r ORDER BY id");
    assert_eq!(calls, (0, 27));
    // CASE WHEN x IS NULL: 32 rows without a note.
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT id, CASE WHEN note IS NULL THEN ai_gen('chat', body) ELSE note END FROM r",
    );
    assert_eq!(calls, (32, 0));
    // An argument that would fail where the condition is false is never evaluated there.
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT id, CASE WHEN id % 5 <> 0 THEN ai_gen('chat', (100 / (id % 5))::text) END FROM r",
    );
    assert_eq!(calls, (32, 0));
    // Several branches, nested conditions, AND/OR in the target list.
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT id, CASE WHEN grp = 0 THEN ai_gen('chat', 'zero ' || body) \
                         WHEN grp = 1 THEN COALESCE(note, ai_gen('chat', 'one ' || body)) \
                         ELSE ai_gen('chat', 'other ' || body) END, \
                id > 35 AND ai_gen('chat', body) LIKE '%topic%', id > 2 OR ai_gen('chat', body) IS NULL FROM r",
    );
    assert_eq!(calls.0, 10 + 8 + 20 + 5 + 2);
    // A condition that calls a model: the call it guards waits for its answer (two levels).
    let (_, calls) = same_both_ways(
        &mut c,
        &s,
        "SELECT id, CASE WHEN ai_gen('chat', body) LIKE '%topic 3' THEN ai_gen('chat', 'again ' || body) END FROM r",
    );
    let topic3 = (1..=40).filter(|i| ends_with_topic(*i, 3)).count() as u64;
    assert_eq!(calls, (40 + topic3, 0));
    // A volatile condition would be evaluated twice: that call stays row by row.
    set_batching(&mut c, true);
    assert_not_batched(&mut c, "SELECT id, CASE WHEN random() < 2 THEN ai_gen('chat', body) END FROM r");
    reset_batching(&mut c);
    let plan = assert_batched(&mut c, "SELECT id, COALESCE(cached, ai_embed('emb', body)) FROM r");
    assert_eq!(property(&plan, "Conditional Calls").len(), 1, "{plan}");
    assert_eq!(
        property(&plan, "AI Call Expressions"),
        ["CASE WHEN (cached IS NULL) THEN ai_embed('emb'::text, body) ELSE NULL::real[] END"],
        "EXPLAIN shows each call with its condition:\n{plan}"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors, NULLs, on_error, prepared statements, cursors, cancel.
// ---------------------------------------------------------------------------------------------

#[test]
fn errors_and_nulls_as_row_by_row() {
    let (mut c, s) = setup("qs_errors");
    c.batch_execute("UPDATE r SET model = 'nope' WHERE id = 17; UPDATE r SET body = NULL WHERE id = 4")
        .unwrap();
    // A row whose model is not deployed fails the query with its error, either way.
    for sql in [
        "SELECT id FROM r WHERE ai_gen(model, body) LIKE '%topic%'",
        "SELECT count(ai_gen(model, body)) FROM r",
        "SELECT id, COALESCE(note, ai_gen(model, body)) FROM r",
    ] {
        let mut seen = Vec::new();
        for on in [true, false] {
            set_batching(&mut c, on);
            seen.push(error_of(c.simple_query(sql)));
        }
        reset_batching(&mut c);
        assert_eq!(seen[0], seen[1], "{sql}");
        assert!(seen[0].1.contains("nope"), "{sql}: {:?}", seen[0]);
    }
    // ... but not where its condition keeps the call from being made.
    same_both_ways(
        &mut c,
        &s,
        "SELECT id, CASE WHEN model = 'chat' THEN ai_gen(model, body) END FROM r ORDER BY id",
    );
    same_both_ways(&mut c, &s, "SELECT count(ai_gen(model, body)) FILTER (WHERE id <> 17) FROM r");
    // NULL inputs: NULL answers, in filters and aggregates alike.
    same_both_ways(
        &mut c,
        &s,
        "SELECT id, ai_gen('chat', body) IS NULL FROM r WHERE id <> 17 AND ai_gen('chat', body) IS NULL",
    );
    same_both_ways(&mut c, &s, "SELECT count(ai_gen('chat', body)), count(*) FROM r WHERE id <> 17");

    // A provider error: raised as row by row, or NULL with a WARNING under on_error = 'null'.
    let sql = "SELECT id FROM r WHERE id <> 17 AND ai_gen('chat', body) LIKE '%topic%' ORDER BY id";
    let mut seen = Vec::new();
    for on in [true, false] {
        set_batching(&mut c, on);
        s.script(&body_of_r(12), vec![Fault::Inspection; 5]);
        seen.push(error_of(c.simple_query(sql)));
        s.reset();
    }
    assert_eq!(seen[0], seen[1]);
    c.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
    let mut seen = Vec::new();
    for on in [true, false] {
        set_batching(&mut c, on);
        s.script(&body_of_r(12), vec![Fault::Inspection; 5]);
        seen.push(text_rows(&mut c, sql));
        s.reset();
    }
    c.batch_execute("RESET pg_bailian.on_error").unwrap();
    reset_batching(&mut c);
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].len(), 37, "every row but 4 (NULL body), 12 (NULL answer) and 17");
}

fn body_of_r(id: i32) -> String {
    format!("document {id} about topic {}", id % 7)
}

#[test]
fn prepared_statements_and_cursors() {
    let (mut c, s) = setup("qs_prepared");
    c.batch_execute(
        "PREPARE f(int) AS SELECT id FROM r WHERE id > $1 AND ai_gen('chat', body) LIKE '%topic 3' ORDER BY id;
         PREPARE a(int) AS SELECT count(*) FILTER (WHERE ai_gen('chat', body) LIKE '%topic 3') FROM r WHERE id > $1",
    )
    .unwrap();
    // Past five executions PostgreSQL may switch to a generic plan: both stay batched and right.
    for round in 0..7 {
        s.reset();
        let rows = text_rows(&mut c, "EXECUTE f(20)");
        assert_eq!(
            rows,
            vec![vec![Some("24".into())], vec![Some("31".into())], vec![Some("38".into())]],
            "round {round}"
        );
        assert_eq!(sent(&s), (20, 0), "round {round}");
        assert_eq!(text_rows(&mut c, "EXECUTE a(30)"), vec![vec![Some("2".into())]], "round {round}");
    }
    let plan = explain(&mut c, "EXECUTE f(20)");
    assert!(plan.contains(BATCH_NODE), "{plan}");

    // A cursor fetched in pieces returns what row by row returns, with the same calls.
    let mut seen = Vec::new();
    for on in [true, false] {
        set_batching(&mut c, on);
        s.reset();
        let mut t = c.transaction().unwrap();
        t.batch_execute("DECLARE k CURSOR FOR SELECT id, COALESCE(note, ai_gen('chat', body)) FROM r WHERE ai_gen('chat', body) LIKE '%topic 3'")
            .unwrap();
        let mut rows = rows_of(t.simple_query("FETCH 2 FROM k").unwrap());
        rows.extend(rows_of(t.simple_query("FETCH ALL FROM k").unwrap()));
        t.commit().unwrap();
        seen.push((rows, sent(&s)));
    }
    reset_batching(&mut c);
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].1 .0, 40 + 5, "40 filter calls, then one per matching row without a note");
    // UPDATE ... WHERE CURRENT OF a batched cursor declared FOR UPDATE (as the README says);
    // without FOR UPDATE PostgreSQL refuses it, with a clear error.
    let sql = "SELECT id, ai_gen('chat', body) FROM r WHERE id <= 3 ORDER BY id FOR UPDATE";
    assert_batched(&mut c, sql);
    let mut t = c.transaction().unwrap();
    t.batch_execute(&format!("DECLARE u CURSOR FOR {sql}")).unwrap();
    t.batch_execute("FETCH 2 FROM u; UPDATE r SET note = 'current' WHERE CURRENT OF u").unwrap();
    let noted = t.query_one("SELECT string_agg(id::text, ',') FROM r WHERE note = 'current'", &[]).unwrap();
    assert_eq!(noted.get::<_, Option<String>>(0).as_deref(), Some("2"));
    t.rollback().unwrap();
    let mut t = c.transaction().unwrap();
    t.batch_execute(
        "DECLARE v CURSOR FOR SELECT id, ai_gen('chat', body) FROM r WHERE id <= 3; FETCH 1 FROM v",
    )
    .unwrap();
    let (_, message) = error_of(t.batch_execute("UPDATE r SET note = 'current' WHERE CURRENT OF v"));
    assert!(message.contains("not a simply updatable scan"), "{message}");
    t.rollback().unwrap();
}

/// A cancel (statement_timeout) stops a batched filter and aggregate at once: no request
/// is left in flight.
#[test]
fn a_cancel_stops_filters_and_aggregates() {
    let (mut c, s) = setup("qs_cancel");
    for sql in [
        "SELECT count(*) FROM r WHERE ai_gen('chat', body) LIKE '%'",
        "SELECT string_agg(ai_gen('chat', body), ',') FROM r",
    ] {
        s.reset();
        for id in 1..=40 {
            s.script(&body_of_r(id), vec![Fault::Hang]);
        }
        c.batch_execute("SET statement_timeout = '300ms'").unwrap();
        let started = std::time::Instant::now();
        let (state, _) = error_of(c.simple_query(sql));
        c.batch_execute("RESET statement_timeout").unwrap();
        assert_eq!(state, "57014", "{sql}");
        assert!(started.elapsed() < Duration::from_secs(5), "{sql}");
        assert!(
            wait_for(Duration::from_secs(5), || s.stats().in_flight == 0),
            "{sql}: requests outlived the cancel"
        );
        assert!(s.stats().requests >= 2, "{sql}: the calls were in flight together");
    }
}

// ---------------------------------------------------------------------------------------------
// Security quals first.
// ---------------------------------------------------------------------------------------------

/// No row is sent to a model before the row-level security policies and security_barrier
/// view quals that reject it have run: an unprivileged role filtering, aggregating and
/// projecting with AI calls sends only the rows it may see.
#[test]
fn security_quals_run_before_any_row_is_sent() {
    let (mut c, s) = setup("qs_security");
    fresh_role(&mut c, "qs_alice", "");
    c.batch_execute(
        "CREATE TABLE secrets (id int PRIMARY KEY, owner text, body text);
         INSERT INTO secrets SELECT g, CASE WHEN g % 4 = 0 THEN 'qs_alice' ELSE 'someone' END,
                CASE WHEN g % 4 = 0 THEN 'visible ' ELSE 'SECRET ' END || g FROM generate_series(1, 40) g;
         ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own ON secrets USING (owner = current_user);
         GRANT SELECT ON secrets TO qs_alice;
         CREATE VIEW open_docs WITH (security_barrier) AS SELECT id, body FROM r WHERE note IS NOT NULL;
         CREATE TABLE r_hidden AS SELECT id, CASE WHEN id % 2 = 0 THEN 'shown ' ELSE 'HIDDEN ' END || id AS body,
                id % 2 = 0 AS shown FROM generate_series(1, 20) id;
         CREATE VIEW shown WITH (security_barrier) AS SELECT id, body FROM r_hidden WHERE shown;
         GRANT SELECT ON open_docs, shown TO qs_alice;",
    )
    .unwrap();
    let db = one_text(&mut c, "SELECT current_database()").unwrap();
    let mut alice = connect_as(&db, "qs_alice");
    for sql in [
        "SELECT id FROM secrets WHERE ai_gen('chat', body) LIKE '%'",
        "SELECT id FROM secrets WHERE length(body) > 0 AND ai_gen('chat', body) LIKE '%' AND ai_embed('emb', body) IS NOT NULL",
        "SELECT count(ai_gen('chat', body)) FROM secrets",
        "SELECT id, CASE WHEN id > 0 THEN ai_gen('chat', body) END FROM secrets",
        "SELECT id FROM shown WHERE ai_gen('chat', body) LIKE '%'",
        "SELECT avg(ai_similarity('emb', body, 'x')) FROM shown",
        "SELECT s.id FROM secrets s JOIN shown h ON h.id = s.id / 2 WHERE ai_gen('chat', s.body || h.body) LIKE '%'",
    ] {
        for on in [true, false] {
            set_batching(&mut alice, on);
            if on {
                assert_batched(&mut alice, sql);
            }
            s.reset();
            text_rows(&mut alice, sql);
            let inputs: Vec<String> = s.requests().into_iter().flat_map(|r| r.inputs).collect();
            assert!(!inputs.is_empty(), "{sql}: nothing sent");
            for input in &inputs {
                assert!(
                    !input.contains("SECRET") && !input.contains("HIDDEN"),
                    "{sql} (batching {on}) sent a row the role may not see: {input}"
                );
            }
        }
    }
    // The view's own AI-free quals come first too (a plain, non-leakproof user qual cannot
    // see the hidden rows either).
    s.reset();
    let n = text_rows(&mut alice, "SELECT count(*) FROM open_docs WHERE ai_gen('chat', body) LIKE '%'");
    assert_eq!(n, vec![vec![Some("8".into())]]);
    assert_eq!(sent(&s), (8, 0));
}

// ---------------------------------------------------------------------------------------------
// EXPLAIN, and the order of AI quals.
// ---------------------------------------------------------------------------------------------

/// AND-ed AI quals run cheapest first (the planner orders them by the functions' COST: an
/// embedding before a generation, whatever the order written); EXPLAIN shows the order, and
/// EXPLAIN ANALYZE the rows the plain quals removed before any call and the calls per qual.
#[test]
fn explain_shows_the_order_and_the_calls_of_each_filter() {
    let (mut c, s) = setup("qs_explain");
    // The cheaper qual (an embedding) rejects every row: no generation is sent at all.
    let sql = "SELECT id FROM r WHERE ai_gen('chat', body) LIKE '%' AND (ai_embed('emb', body))[1] > 100";
    let plan = assert_batched(&mut c, sql);
    let order = property(&plan, "AI Calls");
    assert_eq!(order, ["ai_gen", "ai_embed"], "the embedding's node is the lower one:\n{plan}");
    assert_eq!(
        property(&plan, "AI Calls For")
            .iter()
            .map(|p| p.split(" (").next().unwrap_or_default().to_string())
            .collect::<Vec<_>>(),
        ["filter 2 of 2", "filter 1 of 2"],
        "{plan}"
    );
    let [(rows, calls), off] = run_on_and_off(&mut c, &s, sql);
    assert_eq!((&rows, calls), (&off.0, off.1));
    assert!(rows.is_empty());
    assert_eq!(calls, (0, 40), "40 embeddings, no generation");

    // ANALYZE: the scan's plain qual removed 36 rows before any call; each AI Batch node
    // made its calls for the rows that reached it.
    s.reset();
    let plan = explain_with(
        &mut c,
        "ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF",
        "SELECT id FROM r WHERE id % 10 = 0 AND ai_gen('chat', body) LIKE '%topic 3' AND ai_gen('chat', 'again ' || body) LIKE '%'",
    );
    assert_eq!(
        property(&plan, "Rows Removed by Filter"),
        ["3", "36"],
        "upper AI qual: none; lower: 3 of 4; scan: 36:\n{plan}"
    );
    assert_eq!(property(&plan, "Calls"), ["1", "4"], "{plan}");
    assert_eq!(sent(&s), (5, 0));
}

/// EXPLAIN stays truthful around the node: an InitPlan read by moved expressions is named
/// (PostgreSQL 17 on names it `(InitPlan 1).col1`, found through the node that owns it), and
/// PostgreSQL 18's "Disabled" marks only the node that is disabled, not the ones above ours.
#[test]
fn explain_names_initplans_and_disabled_nodes_rightly() {
    let (mut c, s) = setup("qs_explain_params");
    let major: i32 = one_text(&mut c, "SHOW server_version_num").unwrap().parse::<i32>().unwrap() / 10000;
    let sql =
        "SELECT id, body || (SELECT max(note) FROM r) FROM r WHERE ai_gen('chat', body) LIKE '%topic 3'";
    same_both_ways(&mut c, &s, sql);
    let plan = explain_with(&mut c, "VERBOSE, COSTS OFF", sql);
    assert!(plan.contains("InitPlan"), "{plan}");
    if major >= 17 {
        assert!(!plan.contains("$0"), "an InitPlan's output shown as a bare parameter:\n{plan}");
    }

    c.batch_execute("CREATE TABLE r_noindex AS SELECT * FROM r; ANALYZE r_noindex; SET enable_seqscan = off")
        .unwrap();
    let plan = assert_batched(&mut c, "SELECT avg(ai_similarity('emb', body, 'good review')) FROM r_noindex");
    assert!(plan.matches("Disabled: true").count() <= 1, "only the scan is disabled:\n{plan}");
    if major >= 18 {
        let lines: Vec<&str> = plan.lines().collect();
        let at = lines.iter().position(|l| l.contains("Disabled: true")).expect("the scan is disabled");
        assert!(lines[at - 1].contains("Seq Scan on r_noindex"), "{plan}");
    }
    c.batch_execute("RESET enable_seqscan").unwrap();
}
