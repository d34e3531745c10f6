//! Operating pg_bailian (issue 19): what a DBA watches and previews. `ai_activity` shows a
//! statement or a column job while it runs (and waits for the rate limiter) and forgets it
//! when it ends; `ai_estimate` runs a statement dry and says what it would send and cost,
//! sending, spending and changing nothing; EXPLAIN ANALYZE of an AI Batch node says what the
//! node sent and spent; `ai_usage`, `ai_usage_reset` and `ai_prices` show and change only what
//! a role may. Real sessions against the test cluster (which preloads pg_bailian, so the state
//! is the cluster's) and a stand-in per test; a database per test, since usage is counted per
//! database.

mod common;

use bailian_standin::{Config, Fault};
use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

/// docs(id, body, emb, answer): `rows` rows with bodies from `body_of`, nothing filled.
fn make_docs(c: &mut Client, rows: i32) {
    c.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[], answer text);
         INSERT INTO docs (id, body) SELECT g, 'document ' || g || ' about topic ' || (g % 7)
           FROM generate_series(1, {rows}) g;
         ANALYZE docs"
    ))
    .unwrap();
}

// ---- ai_activity ---------------------------------------------------------------------

/// One backend's row of `ai_activity` at one moment.
#[derive(Clone, Debug)]
struct Activity {
    role: String,
    database: String,
    statement: String,
    job: Option<String>,
    model_name: Option<String>,
    requests: i64,
    in_flight: i64,
    tokens: i64,
    cost_yuan: Option<String>,
    rows_done: Option<i64>,
    rows_total: Option<i64>,
    /// Seconds from now to the ETA.
    eta_in: Option<f64>,
    waiting: bool,
}

const ACTIVITY: &str = "
SELECT role::text, database::text, statement, job, model_name, requests, in_flight, tokens, cost_yuan::text,
       rows_done, rows_total, extract(epoch FROM eta - now())::float8, waiting_for_rate_limit
  FROM ai_activity WHERE pid = $1";

fn activity_of(c: &mut Client, pid: i32) -> Vec<Activity> {
    c.query(ACTIVITY, &[&pid])
        .unwrap()
        .iter()
        .map(|r| Activity {
            role: r.get(0),
            database: r.get(1),
            statement: r.get(2),
            job: r.get(3),
            model_name: r.get(4),
            requests: r.get(5),
            in_flight: r.get(6),
            tokens: r.get(7),
            cost_yuan: r.get(8),
            rows_done: r.get(9),
            rows_total: r.get(10),
            eta_in: r.get(11),
            waiting: r.get(12),
        })
        .collect()
}

fn pid_of(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// What watching a statement saw: `ai_activity`'s row of its backend at every poll while it
/// ran (empty polls left out), and how long it took.
struct Watched {
    seen: Vec<Activity>,
    polls: usize,
    took: Duration,
}

/// Runs `sql` (simple protocol, so `ai_activity.statement` is exactly `sql`) in session `w`
/// on a thread of its own and polls `observer`'s view of w's row in `ai_activity` until it
/// ends; then checks the row is gone.
fn watch(observer: &mut Client, mut w: Client, sql: &str) -> Watched {
    let pid = pid_of(&mut w);
    let statement = sql.to_string();
    let started = Instant::now();
    let running = std::thread::spawn(move || {
        let outcome = w.batch_execute(&statement);
        (outcome, started.elapsed())
    });
    let mut seen = Vec::new();
    let mut polls = 0;
    let ended = wait_for(Duration::from_secs(60), || {
        polls += 1;
        seen.extend(activity_of(observer, pid));
        running.is_finished()
    });
    assert!(ended, "{sql} did not end within a minute");
    let (outcome, took) = running.join().unwrap();
    outcome.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let after = activity_of(observer, pid);
    assert!(after.is_empty(), "the row of {sql} is still in ai_activity after it ended: {after:?}");
    Watched { seen, polls, took }
}

/// The values of `f` over `seen`, checked never to go down; returns them deduplicated.
fn growing(seen: &[Activity], what: &str, f: impl Fn(&Activity) -> i64) -> Vec<i64> {
    let values: Vec<i64> = seen.iter().map(f).collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{what} went down: {values:?}");
    let mut distinct = values;
    distinct.dedup();
    distinct
}

/// A batched SELECT of 12 rows at 300 ms a request, two in flight: another session sees its
/// backend, role, database, statement and model, requests growing, never more than two in
/// flight, tokens and cost; the row goes when the statement ends.
#[test]
fn activity_of_a_running_statement() {
    let (mut c, db) = fresh_db("ov_activity_stmt");
    fresh_role(&mut c, "ov_watched", "");
    let s = standin_with(Config { latency_ms: 300, ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    make_docs(&mut c, 12);
    c.batch_execute("GRANT SELECT ON docs TO ov_watched").unwrap();
    let mut w = connect_as(&db, "ov_watched");
    w.batch_execute("SET pg_bailian.max_concurrency = 2").unwrap();
    let sql = "SELECT id, ai_gen('chat', body) FROM docs";

    let watched = watch(&mut c, w, sql);
    let seen = &watched.seen;
    assert!(seen.len() >= 5, "ai_activity showed the statement in {} of {} polls", seen.len(), watched.polls);
    for a in seen {
        assert_eq!(
            (a.role.as_str(), a.database.as_str(), a.statement.as_str(), a.model_name.as_deref()),
            ("ov_watched", db.as_str(), sql, Some("chat")),
            "{a:?}"
        );
        assert_eq!(
            (a.job.as_deref(), a.rows_done, a.rows_total, a.eta_in),
            (None, None, None, None),
            "{a:?}"
        );
        assert!((0..=2).contains(&a.in_flight), "max_concurrency is 2: {a:?}");
    }
    let requests = growing(seen, "requests", |a| a.requests);
    assert!(requests.len() >= 3 && *requests.last().unwrap() > 0, "requests did not grow: {requests:?}");
    assert!(*requests.last().unwrap() <= 12, "{requests:?}");
    assert!(seen.iter().any(|a| a.in_flight == 2), "two requests were never in flight together: {seen:?}");
    let tokens = growing(seen, "tokens", |a| a.tokens);
    assert!(*tokens.last().unwrap() > 0, "no tokens were shown: {tokens:?}");
    // 12 requests at 2 a time, 300 ms each: at least six rounds.
    assert!(watched.took >= Duration::from_millis(1800), "{:?}", watched.took);

    // What it showed is part of what the statement spent in the end.
    assert_eq!(s.stats().requests, 12);
    let row = c
        .query_one(
            "SELECT sum(requests)::int8, sum(prompt_tokens + completion_tokens)::int8
               FROM ai_usage WHERE database = current_database()",
            &[],
        )
        .unwrap();
    let (requests_total, tokens_total): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(requests_total, 12);
    assert!(*tokens.last().unwrap() <= tokens_total, "{tokens:?} of {tokens_total}");
    // qwen-plus has a price: every moment with tokens has a cost, at most the final one.
    for a in seen.iter().filter(|a| a.tokens > 0) {
        let cost = a.cost_yuan.as_deref().unwrap_or_else(|| panic!("no cost with tokens: {a:?}"));
        let within: bool = c
            .query_one(
                "SELECT $1::text::numeric > 0 AND $1::text::numeric <= (SELECT sum(cost_yuan) FROM ai_usage
                                                              WHERE database = current_database())",
                &[&cost],
            )
            .unwrap()
            .get(0);
        assert!(within, "{a:?}");
    }
}

/// A column job shows its name from the start (while it counts its rows, which its filter
/// makes slow here), then the rows it has to fill (not the table's: some are filled, its
/// filter leaves one out), rows done growing as its batches commit, and an ETA ahead.
#[test]
fn activity_of_a_column_job() {
    let (mut c, db) = fresh_db("ov_activity_job");
    let s = standin_with(Config { latency_ms: 300, ..Config::default() });
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    make_docs(&mut c, 14);
    // Four rows are filled already, and the filter leaves out row 3: the job has 9 to do.
    c.batch_execute("UPDATE docs SET emb = '{1}' WHERE id > 10").unwrap();
    let sql = "CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$, batch_size => 2, \
               filter => $$id <> 3 AND pg_sleep(0.05) IS NOT NULL$$)";

    let watched = watch(&mut c, connect(&db), sql);
    let seen = &watched.seen;
    assert!(seen.len() >= 5, "ai_activity showed the job in {} of {} polls", seen.len(), watched.polls);
    for a in seen {
        assert_eq!(
            (a.role.as_str(), a.database.as_str(), a.statement.as_str(), a.job.as_deref()),
            ("postgres", db.as_str(), sql, Some("ai_update docs")),
            "{a:?}"
        );
        // Until its first request a job may still be counting its rows, and have no model.
        if a.requests > 0 {
            assert_eq!((a.model_name.as_deref(), a.rows_total), (Some("emb"), Some(9)), "{a:?}");
        } else {
            assert!(matches!(a.model_name.as_deref(), None | Some("emb")), "{a:?}");
            assert!(matches!(a.rows_total, None | Some(9)), "{a:?}");
        }
        let done = a.rows_done.unwrap_or_else(|| panic!("a job without rows_done: {a:?}"));
        assert!((0..=9).contains(&done), "{a:?}");
        match a.eta_in {
            // All rows done, the job still finishing (its last checks): due now.
            Some(eta) if done == 9 => assert!(eta.abs() < 1.0, "{a:?}"),
            // Ahead of now, and not absurdly: 9 rows at 300 ms per 2.
            Some(eta) => assert!(done > 0 && done < 9 && eta > 0.0 && eta < 30.0, "{a:?}"),
            None => assert!(done == 0 || done == 9, "no ETA with rows done: {a:?}"),
        }
        assert!((0..=1).contains(&a.in_flight), "one batch at a time: {a:?}");
    }
    assert!(seen.iter().any(|a| a.rows_total.is_none()), "the job was never seen counting its rows");
    let done = growing(seen, "rows_done", |a| a.rows_done.unwrap());
    let between: Vec<i64> = done.iter().copied().filter(|d| (1..9).contains(d)).collect();
    assert!(between.len() >= 2, "rows_done did not grow during the job: {done:?}");
    assert!(seen.iter().any(|a| a.eta_in.is_some()), "no ETA was shown");
    let requests = growing(seen, "requests", |a| a.requests);
    assert!(requests.len() >= 3, "requests did not grow: {requests:?}");
    assert!(growing(seen, "tokens", |a| a.tokens).last().unwrap() > &0);

    // Each of the 9 rows sent once. A chunk is two rows, but a chunk's query also sends the
    // next chunk's first rows, packed into the same requests: at most five requests.
    let stats = s.stats();
    assert_eq!(stats.inputs, 9, "{stats:?}");
    assert!((1..=5).contains(&stats.requests), "{stats:?}");
    // The filled rows and row 3 as they were.
    let filled: Vec<i32> = c
        .query("SELECT id FROM docs WHERE emb IS NOT NULL AND emb <> '{1}' ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(filled, [1, 2, 4, 5, 6, 7, 8, 9, 10]);
}

/// A model deployed at 60 requests a minute sends one a second: a statement of four rows
/// spends most of its time with requests waiting for the limiter, and says so.
#[test]
fn activity_while_waiting_for_the_rate_limiter() {
    let (mut c, db) = fresh_db("ov_activity_limiter");
    let s = standin();
    deploy(&mut c, &s, "paced", "qwen-plus", ", requests_per_minute => 60");
    make_docs(&mut c, 4);
    let sql = "SELECT id, ai_gen('paced', body) FROM docs";

    let watched = watch(&mut c, connect(&db), sql);
    let seen = &watched.seen;
    assert!(
        seen.len() >= 10,
        "ai_activity showed the statement in {} of {} polls",
        seen.len(),
        watched.polls
    );
    let waiting = seen.iter().filter(|a| a.waiting).count();
    assert!(
        waiting * 2 > seen.len(),
        "waiting_for_rate_limit in {waiting} of {} polls, at one request a second",
        seen.len()
    );
    assert!(seen.iter().all(|a| a.model_name.as_deref() == Some("paced") && a.statement == sql), "{seen:?}");
    let requests = growing(seen, "requests", |a| a.requests);
    assert!(requests.len() >= 3 && *requests.last().unwrap() <= 4, "one request a second: {requests:?}");
    // Four requests a second apart (the limiter paces at 98% of the limit): three gaps.
    assert!(watched.took >= Duration::from_secs(3), "{:?}", watched.took);
    assert_eq!(s.stats().requests, 4);
    let log = s.requests();
    let span = log[3].received_ms - log[0].received_ms;
    assert!(span >= 2900.0, "four requests within {span} ms");
}

// ---- ai_estimate ---------------------------------------------------------------------

/// One row of `ai_estimate`.
#[derive(Clone, Debug, PartialEq)]
struct Estimate {
    model_name: String,
    model_type: String,
    requests: i64,
    inputs: i64,
    input_tokens: i64,
    output_tokens_min: i64,
    output_tokens_max: Option<i64>,
    cost_min_yuan: Option<String>,
    cost_max_yuan: Option<String>,
}

fn estimate(c: &mut Client, statement: &str) -> Vec<Estimate> {
    c.query(
        "SELECT model_name, model_type, requests, inputs, input_tokens, output_tokens_min, output_tokens_max,
                cost_min_yuan::text, cost_max_yuan::text
           FROM ai_estimate($1) ORDER BY model_name",
        &[&statement],
    )
    .unwrap_or_else(|e| panic!("ai_estimate({statement}): {e}"))
    .iter()
    .map(|r| Estimate {
        model_name: r.get(0),
        model_type: r.get(1),
        requests: r.get(2),
        inputs: r.get(3),
        input_tokens: r.get(4),
        output_tokens_min: r.get(5),
        output_tokens_max: r.get(6),
        cost_min_yuan: r.get(7),
        cost_max_yuan: r.get(8),
    })
    .collect()
}

/// The single row of `ai_estimate(statement)`.
fn estimate_one(c: &mut Client, statement: &str) -> Estimate {
    let mut rows = estimate(c, statement);
    assert_eq!(rows.len(), 1, "one model in {statement}: {rows:?}");
    rows.remove(0)
}

/// Whether the cost range of `ai_estimate(statement)` is exactly the token range at ai_prices.
fn costs_match_prices(c: &mut Client, statement: &str) -> (bool, Option<bool>) {
    let row = c
        .query_one(
            "SELECT e.cost_min_yuan = (e.input_tokens * p.input_price + e.output_tokens_min * p.output_price) / 1e6,
                    e.cost_max_yuan = (e.input_tokens * p.input_price + e.output_tokens_max * p.output_price) / 1e6
               FROM ai_estimate($1) e JOIN ai_prices p USING (model_type)",
            &[&statement],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// Everything a statement run for real would change or spend, as text: the table, this
/// database's usage rows and budgets.
fn footprint(c: &mut Client) -> Vec<String> {
    [
        "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM docs t",
        "SELECT count(*)::text || ':' || coalesce(string_agg(u::text, '|' ORDER BY model_name, function_name), '')
           FROM ai_usage u WHERE database = current_database()",
        "SELECT string_agg(budget_id || '=' || spent, ',' ORDER BY budget_id) FROM ai_budgets",
    ]
    .iter()
    .map(|q| one_text(c, q).unwrap_or_default())
    .collect()
}

/// `ai_estimate` says what a statement would send (requests packed as it would pack them,
/// inputs, tokens, output range, cost range at ai_prices) without sending anything, changing
/// the table, or counting anything in ai_usage or the budgets; and the estimate's requests
/// and inputs are what the statement then sends for real.
#[test]
fn estimates_send_nothing_and_say_what_a_statement_would() {
    let (mut c, _) = fresh_db("ov_estimate");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "long", "qwen-long", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    make_docs(&mut c, 25);
    // A dry UPDATE that were not rolled back would leave NULLs where these are.
    c.batch_execute("UPDATE docs SET emb = '{0}'").unwrap();
    let budget: i64 =
        c.query_one("SELECT ai_set_budget(NULL, 'chat', 1000000, 'tokens', 'day')", &[]).unwrap().get(0);
    let before = footprint(&mut c);
    assert_eq!(before[1], "0:", "no usage yet");
    assert_eq!(before[2], format!("{budget}=0"));

    // Embeddings: text-embedding-v4 takes 10 inputs a request.
    let update = "UPDATE docs SET emb = ai_embed('emb', body)";
    let e = estimate_one(&mut c, update);
    assert_eq!(
        (e.model_name.as_str(), e.model_type.as_str(), e.requests, e.inputs),
        ("emb", "text-embedding-v4", 3, 25),
        "{e:?}"
    );
    assert!(e.input_tokens > 0, "{e:?}");
    assert_eq!(
        (e.output_tokens_min, e.output_tokens_max),
        (0, Some(0)),
        "embeddings answer no tokens: {e:?}"
    );
    assert_eq!((e.cost_min_yuan.as_deref(), e.cost_max_yuan.as_deref()), (None, None), "unpriced: {e:?}");

    // Chat: a request a row, at least a token each; qwen-plus has no documented output cap,
    // so nothing bounds the output (and its cost) without max_tokens.
    let select = "SELECT ai_gen('chat', body) FROM docs";
    let e = estimate_one(&mut c, select);
    assert_eq!(
        (e.model_name.as_str(), e.requests, e.inputs, e.output_tokens_min),
        ("chat", 25, 25, 25),
        "{e:?}"
    );
    assert!(e.input_tokens > 0, "{e:?}");
    assert_eq!((e.output_tokens_max, e.cost_max_yuan.as_deref()), (None, None), "{e:?}");
    assert!(e.cost_min_yuan.is_some(), "qwen-plus has a price: {e:?}");
    assert_eq!(costs_match_prices(&mut c, select), (true, None), "{e:?}");

    // max_tokens bounds the output, and the cost with it.
    let bounded = "SELECT ai_gen('chat', body, '{\"max_tokens\": 7}') FROM docs";
    let b = estimate_one(&mut c, bounded);
    assert_eq!((b.requests, b.output_tokens_min, b.output_tokens_max), (25, 25, Some(175)), "{b:?}");
    assert_eq!(b.input_tokens, e.input_tokens, "the same prompts: {b:?}");
    assert_eq!(costs_match_prices(&mut c, bounded), (true, Some(true)), "{b:?}");

    // A model without a price: no cost either way.
    let unpriced =
        estimate_one(&mut c, "SELECT ai_gen('long', body, '{\"max_tokens\": 7}') FROM docs WHERE id <= 4");
    assert_eq!(
        (unpriced.model_type.as_str(), unpriced.requests, unpriced.output_tokens_max),
        ("qwen-long", 4, Some(28)),
        "{unpriced:?}"
    );
    assert_eq!(
        (unpriced.cost_min_yuan.as_deref(), unpriced.cost_max_yuan.as_deref()),
        (None, None),
        "{unpriced:?}"
    );

    // Two models in one statement: a row each. The AI Batch node's read-ahead grows with the
    // rows returned, so the embeddings go in more requests than 12 rows need at the least:
    // the estimate says how many, and the real run below sends as many.
    let two = "SELECT ai_gen('chat', body), ai_embed('emb', body) FROM docs WHERE id <= 12";
    let both = estimate(&mut c, two);
    let shape: Vec<(&str, i64, i64)> =
        both.iter().map(|e| (e.model_name.as_str(), e.requests, e.inputs)).collect();
    assert_eq!(shape.len(), 2, "{both:?}");
    assert_eq!((shape[0], (shape[1].0, shape[1].2)), (("chat", 12, 12), ("emb", 12)), "{both:?}");
    assert!((2..=12).contains(&shape[1].1), "{both:?}");

    assert_eq!(s.stats().requests, 0, "an estimate sends nothing");
    assert_eq!(footprint(&mut c), before, "an estimate changes nothing, counts nothing, spends nothing");

    // For real: what the estimates said.
    c.batch_execute(update).unwrap();
    assert_eq!((s.stats().embedding_requests, s.stats().inputs), (3, 25));
    c.batch_execute(select).unwrap();
    assert_eq!(s.stats().chat_requests, 25);
    let row = c
        .query_one(
            "SELECT (SELECT spent FROM ai_budgets)::int8,
                    (SELECT sum(prompt_tokens + completion_tokens) FROM ai_usage
                      WHERE database = current_database() AND model_name = 'chat')::int8",
            &[],
        )
        .unwrap();
    let (spent, used): (i64, i64) = (row.get(0), row.get(1));
    assert!(used > 0 && spent == used, "the budget spent {spent} tokens, chat's calls used {used}");
    let (chat_before, emb_before) = (s.stats().chat_requests, s.stats().embedding_requests);
    c.batch_execute(two).unwrap();
    // How many embedding requests the inputs are packed into depends on when answers arrive
    // (a pack not yet full is sent once a row waits for it), in the estimate as for real.
    assert_eq!(s.stats().chat_requests - chat_before, 12, "{both:?}");
    assert!((2..=12).contains(&(s.stats().embedding_requests - emb_before)), "{both:?}");

    // And again, now that there is usage and a spent budget: still nothing moves.
    let after_real = footprint(&mut c);
    assert!(!after_real[1].starts_with("0:"), "{after_real:?}");
    let requests = s.stats().requests;
    assert_eq!(estimate_one(&mut c, update).requests, 3);
    assert_eq!(estimate_one(&mut c, select), e);
    assert_eq!(s.stats().requests, requests);
    assert_eq!(footprint(&mut c), after_real);
}

/// `ai_estimate` runs exactly one SELECT, INSERT, UPDATE, DELETE or MERGE: anything else is a
/// clear error that changes nothing.
#[test]
fn estimates_of_anything_but_one_statement_are_refused() {
    let (mut c, _) = fresh_db("ov_estimate_refused");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    make_docs(&mut c, 5);
    let before = footprint(&mut c);
    let refused = |c: &mut Client, statement: Option<&str>| {
        error_of(c.query("SELECT * FROM ai_estimate($1)", &[&statement]))
    };
    for (statement, code, message) in [
        (
            "UPDATE docs SET emb = ai_embed('emb', body); SELECT 1",
            "22023",
            "ai_estimate takes exactly one statement, got 2",
        ),
        ("", "22023", "ai_estimate takes exactly one statement, got 0"),
        (
            "CALL ai_embed_column('docs', 'body', 'emb', 'emb')",
            "22023",
            "ai_estimate takes a SELECT, INSERT, UPDATE, DELETE or MERGE",
        ),
        (
            "CREATE TABLE made_by_estimate (a int)",
            "22023",
            "ai_estimate takes a SELECT, INSERT, UPDATE, DELETE or MERGE",
        ),
        ("DROP TABLE docs", "22023", "ai_estimate takes a SELECT, INSERT, UPDATE, DELETE or MERGE"),
        ("SELEC ai_embed('emb', body) FROM docs", "42601", "syntax error at or near \"SELEC\""),
    ] {
        assert_eq!(refused(&mut c, Some(statement)), (code.to_string(), message.to_string()), "{statement}");
    }
    let refused_null = refused(&mut c, None);
    assert_eq!(refused_null, ("22004".into(), "ai_estimate: statement must not be NULL".into()));

    let made: Option<String> = one_text(&mut c, "SELECT to_regclass('made_by_estimate')::text");
    assert_eq!(made, None);
    assert_eq!(footprint(&mut c), before, "docs, usage and budgets as they were");
    assert_eq!(s.stats().requests, 0);
}

// ---- EXPLAIN ANALYZE -----------------------------------------------------------------

/// The plan of `sql` under EXPLAIN (ANALYZE), as text.
fn explain_analyze(c: &mut Client, sql: &str) -> String {
    c.simple_query(&format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of the one EXPLAIN property line `name: value` in `plan`.
fn property(plan: &str, name: &str) -> String {
    let prefix = format!("{name}: ");
    let values: Vec<&str> =
        plan.lines().map(str::trim).filter_map(|l| l.strip_prefix(prefix.as_str())).collect();
    assert_eq!(values.len(), 1, "one {name} line expected:\n{plan}");
    values[0].to_string()
}

fn int_property(plan: &str, name: &str) -> i64 {
    property(plan, name).parse().unwrap_or_else(|e| panic!("{name}: {e}\n{plan}"))
}

/// This database's usage in all: requests, retries, 429s, prompt and completion tokens.
fn usage_totals(c: &mut Client) -> [i64; 5] {
    let r = c
        .query_one(
            "SELECT sum(requests)::int8, sum(retries)::int8, sum(rate_limited)::int8,
                    sum(prompt_tokens)::int8, sum(completion_tokens)::int8
               FROM ai_usage WHERE database = current_database()",
            &[],
        )
        .unwrap();
    [r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)]
}

/// EXPLAIN ANALYZE of a batched query says what its AI Batch node sent and spent: the HTTP
/// requests the stand-in counted (retries included), the retries and 429s, the tokens that
/// ai_usage counted, and the cost at ai_prices (or that a model had no price).
#[test]
fn explain_analyze_shows_what_the_batch_node_sent_and_spent() {
    let (mut c, _) = fresh_db("ov_explain");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", ", initial_retry_delay => 0.5");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    make_docs(&mut c, 12);
    s.script(&body_of(3), vec![Fault::Status(500)]);
    s.script(&body_of(8), vec![Fault::RateLimited { retry_after_secs: 0.5 }]);

    let plan = explain_analyze(&mut c, "SELECT id, ai_gen('chat', body) FROM docs");
    assert!(plan.contains("Custom Scan (AI Batch)"), "{plan}");
    assert_eq!(s.stats().requests, 14, "12 rows, two of them tried twice");
    let [requests, retries, rate_limited, prompt, completion] = usage_totals(&mut c);
    assert_eq!((requests, retries, rate_limited), (14, 2, 1));
    assert!(prompt > 0 && completion > 0);
    assert_eq!(int_property(&plan, "HTTP Requests"), 14, "{plan}");
    assert_eq!(int_property(&plan, "Retries"), 2, "{plan}");
    assert_eq!(int_property(&plan, "Rate Limited"), 1, "{plan}");
    assert_eq!(int_property(&plan, "Prompt Tokens"), prompt, "{plan}");
    assert_eq!(int_property(&plan, "Completion Tokens"), completion, "{plan}");
    let cost = property(&plan, "Cost");
    let yuan = cost.strip_suffix(" yuan").unwrap_or_else(|| panic!("{cost}"));
    let exact: bool = c
        .query_one(
            "SELECT $1::text::numeric = (SELECT sum(cost_yuan) FROM ai_usage WHERE database = current_database())
                AND $1::text::numeric = ($2::int8 * p.input_price + $3::int8 * p.output_price) / 1e6
               FROM ai_prices p WHERE model_type = 'qwen-plus'",
            &[&yuan, &prompt, &completion],
        )
        .unwrap()
        .get(0);
    assert!(exact, "{cost}: not the usage's cost, or not qwen-plus's price of its tokens");

    // An UPDATE packing embeddings 10 a request; text-embedding-v4 has no price.
    let plan = explain_analyze(&mut c, "UPDATE docs SET emb = ai_embed('emb', body)");
    assert!(plan.contains("Custom Scan (AI Batch)"), "{plan}");
    assert_eq!(s.stats().embedding_requests, 2);
    let [_, _, _, prompt_after, _] = usage_totals(&mut c);
    assert_eq!(int_property(&plan, "HTTP Requests"), 2, "{plan}");
    assert_eq!((int_property(&plan, "Retries"), int_property(&plan, "Rate Limited")), (0, 0), "{plan}");
    assert_eq!(int_property(&plan, "Prompt Tokens"), prompt_after - prompt, "{plan}");
    assert!(prompt_after > prompt);
    assert_eq!(int_property(&plan, "Completion Tokens"), 0, "{plan}");
    assert_eq!(property(&plan, "Cost"), "at least 0 yuan (a model has no price in ai_prices)", "{plan}");
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, 12, "EXPLAIN ANALYZE ran the UPDATE");
}

// ---- who sees and changes what -------------------------------------------------------

/// (role, function, calls) of the ai_usage rows of this database that the session sees.
fn usage_seen(c: &mut Client) -> Vec<(String, String, i64)> {
    c.query(
        "SELECT role::text, function_name, calls FROM ai_usage
          WHERE database = current_database() ORDER BY role, function_name",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn usage_row(role: &str, function: &str, calls: i64) -> (String, String, i64) {
    (role.to_string(), function.to_string(), calls)
}

/// A role sees its own usage and not another's; a member of pg_read_all_stats sees both.
/// ai_usage_reset() is refused to a plain role and, by a database's owner, forgets that
/// database's rows only.
#[test]
fn usage_is_seen_by_its_role_and_reset_per_database() {
    let (mut c, db) = fresh_db("ov_usage_seen");
    let (mut other, other_db) = fresh_db("ov_usage_other");
    fresh_role(&mut c, "ov_alice", "");
    fresh_role(&mut c, "ov_bob", "");
    fresh_role(&mut c, "ov_stats", "IN ROLE pg_read_all_stats");
    fresh_role(&mut c, "ov_owner", "");
    c.batch_execute(&format!("ALTER DATABASE {db} OWNER TO ov_owner")).unwrap();
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut other, &s, "chat", "qwen-plus", "");

    let mut alice = connect_as(&db, "ov_alice");
    let mut bob = connect_as(&db, "ov_bob");
    alice.batch_execute("SELECT ai_gen('chat', 'from alice'); SELECT ai_gen('chat', 'alice again')").unwrap();
    bob.batch_execute("SELECT ai_translate('chat', 'from bob', 'French')").unwrap();
    connect_as(&other_db, "ov_alice").batch_execute("SELECT ai_gen('chat', 'alice elsewhere')").unwrap();
    assert_eq!(s.stats().requests, 4);

    let alices = vec![usage_row("ov_alice", "ai_gen", 2)];
    let bobs = vec![usage_row("ov_bob", "ai_translate", 1)];
    let both = vec![usage_row("ov_alice", "ai_gen", 2), usage_row("ov_bob", "ai_translate", 1)];
    assert_eq!(usage_seen(&mut alice), alices);
    assert_eq!(usage_seen(&mut bob), bobs);
    assert_eq!(usage_seen(&mut connect_as(&db, "ov_stats")), both);
    assert_eq!(usage_seen(&mut c), both, "a superuser sees all");
    // The owner of the database is not a reader of all statistics: it called nothing.
    let mut owner = connect_as(&db, "ov_owner");
    assert_eq!(usage_seen(&mut owner), vec![]);

    // Resetting: not for a plain role, nor for the owner of another database.
    let (code, message) = error_of(bob.query("SELECT ai_usage_reset()", &[]));
    assert_eq!((code.as_str(), message.as_str()), ("42501", "permission denied for function ai_usage_reset"));
    let (code, _) = error_of(connect_as(&other_db, "ov_owner").query("SELECT ai_usage_reset()", &[]));
    assert_eq!(code, "42501");
    assert_eq!(usage_seen(&mut c), both, "nothing was reset");
    let elsewhere = vec![usage_row("ov_alice", "ai_gen", 1)];
    assert_eq!(usage_seen(&mut other), elsewhere);

    // The database's owner forgets its database's two rows, and only those.
    let forgotten: i64 = owner.query_one("SELECT ai_usage_reset()", &[]).unwrap().get(0);
    assert_eq!(forgotten, 2);
    assert_eq!(usage_seen(&mut c), vec![]);
    assert_eq!(usage_seen(&mut other), elsewhere, "another database's usage is kept");
    // Counting goes on from zero.
    alice.batch_execute("SELECT ai_gen('chat', 'after the reset')").unwrap();
    assert_eq!(usage_seen(&mut c), vec![usage_row("ov_alice", "ai_gen", 1)]);
}

/// The rows of ai_prices, as text.
fn prices(c: &mut Client) -> Vec<String> {
    c.query("SELECT p::text FROM ai_prices p ORDER BY model_type", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// (input_price, output_price, source) of `model_type` in ai_prices.
fn price_of(c: &mut Client, model_type: &str) -> Option<(String, String, String)> {
    c.query_opt(
        "SELECT input_price::text, output_price::text, source FROM ai_prices WHERE model_type = $1",
        &[&model_type],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// ai_prices: a plain role may read it and not change it; a superuser sets, changes and
/// removes prices (removing a shipped model's falls back to the shipped price), the source
/// says who set a price, ai_usage costs calls with it, an unknown model type is refused, and
/// pg_dump carries the prices set as data of bailian.prices.
#[test]
fn prices_are_set_by_administrators_and_dumped() {
    let (mut c, db) = fresh_db("ov_prices");
    let (_, restored_db) = fresh_bare_db("ov_prices_restored");
    fresh_role(&mut c, "ov_plain", "");
    fresh_role(&mut c, "ov_dba", "SUPERUSER");
    let shipped = prices(&mut c);
    let seed_plus = price_of(&mut c, "qwen-plus").unwrap();
    assert_eq!((seed_plus.0.as_str(), seed_plus.1.as_str()), ("0.8", "2"));
    assert!(seed_plus.2.starts_with("seed 002"), "{seed_plus:?}");
    assert_eq!(price_of(&mut c, "qwen-long"), None, "seed 002 prices no qwen-long");

    let mut plain = connect_as(&db, "ov_plain");
    assert_eq!(prices(&mut plain), shipped, "everyone reads the prices");
    for edit in [
        "INSERT INTO ai_prices (model_type, input_price, output_price) VALUES ('qwen-long', 0.3, 0.6)",
        "UPDATE ai_prices SET input_price = 0 WHERE model_type = 'qwen-plus'",
        "DELETE FROM ai_prices WHERE model_type = 'qwen-plus'",
    ] {
        let (code, message) = error_of(plain.execute(edit, &[]));
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("42501", "permission denied for view ai_prices"),
            "{edit}"
        );
    }
    assert_eq!(prices(&mut c), shipped, "a refused edit changes nothing");
    assert_eq!(one_text(&mut c, "SELECT count(*)::text FROM bailian.prices").as_deref(), Some("0"));

    let mut dba = connect_as(&db, "ov_dba");
    let by_dba = |p: &Option<(String, String, String)>| {
        p.as_ref().is_some_and(|p| p.2.starts_with("set by ov_dba at "))
    };
    assert_eq!(
        dba.execute(
            "INSERT INTO ai_prices (model_type, input_price, output_price) VALUES ('qwen-long', 0.3, 0.6)",
            &[]
        )
        .unwrap(),
        1
    );
    let long = price_of(&mut c, "qwen-long");
    assert_eq!(long.as_ref().map(|p| (p.0.as_str(), p.1.as_str())), Some(("0.3", "0.6")));
    assert!(by_dba(&long), "{long:?}");
    assert_eq!(
        dba.execute("UPDATE ai_prices SET input_price = 1.2 WHERE model_type = 'qwen-plus'", &[]).unwrap(),
        1
    );
    let plus = price_of(&mut c, "qwen-plus");
    assert_eq!(plus.as_ref().map(|p| (p.0.as_str(), p.1.as_str())), Some(("1.2", "2")), "the rest kept");
    assert!(by_dba(&plus), "{plus:?}");
    let thinking =
        one_text(&mut c, "SELECT thinking_output_price::text FROM ai_prices WHERE model_type = 'qwen-plus'");
    assert_eq!(thinking.as_deref(), Some("8"), "an UPDATE keeps the columns it does not set");

    // An unknown model type, or a changed one, is refused and changes nothing.
    let before = prices(&mut c);
    for (edit, message) in [
        (
            "INSERT INTO ai_prices (model_type, input_price, output_price) VALUES ('qwen-imaginary', 1, 1)",
            "ai_prices: \"qwen-imaginary\" is not a model type pg_bailian supports",
        ),
        (
            "UPDATE ai_prices SET model_type = 'qwen-max' WHERE model_type = 'qwen-long'",
            "ai_prices: model_type cannot change (qwen-long to qwen-max)",
        ),
    ] {
        let (code, got) = error_of(dba.execute(edit, &[]));
        assert_eq!((code.as_str(), got.as_str()), ("22023", message), "{edit}");
    }
    assert_eq!(prices(&mut c), before);

    // ai_usage costs a call at the price set.
    let s = standin();
    deploy(&mut c, &s, "long", "qwen-long", "");
    c.batch_execute("SELECT ai_gen('long', 'what does it cost')").unwrap();
    let exact: bool = c
        .query_one(
            "SELECT cost_yuan = (prompt_tokens * 0.3 + completion_tokens * 0.6) / 1e6 AND cost_yuan > 0
               FROM ai_usage WHERE database = current_database() AND model_name = 'long'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(exact, "ai_usage's cost is not the tokens at the price set");

    // pg_dump keeps what was set, as data of bailian.prices, and a restore shows it again.
    let dump = pg_dump(&db, "postgres");
    let copy = dump
        .split("\nCOPY bailian.prices ")
        .nth(1)
        .unwrap_or_else(|| panic!("no COPY of bailian.prices in the dump:\n{dump}"));
    let data: Vec<&str> = copy.lines().skip(1).take_while(|l| *l != "\\.").collect();
    let mut models: Vec<&str> = data.iter().map(|l| l.split('\t').next().unwrap()).collect();
    models.sort();
    assert_eq!(models, ["qwen-long", "qwen-plus"], "{data:?}");
    assert!(data.iter().any(|l| l.starts_with("qwen-long\t0.3\t0.6\t")), "{data:?}");
    assert!(data.iter().any(|l| l.starts_with("qwen-plus\t1.2\t2\t8\t")), "{data:?}");
    restore_plain(&restored_db, &dump);
    assert_eq!(prices(&mut connect(&restored_db)), prices(&mut c), "the restored database prices the same");

    // Deleting a shipped model's price falls back to the shipped one; another's is gone.
    assert_eq!(dba.execute("DELETE FROM ai_prices WHERE model_type = 'qwen-plus'", &[]).unwrap(), 1);
    assert_eq!(price_of(&mut c, "qwen-plus"), Some(seed_plus));
    assert_eq!(dba.execute("DELETE FROM ai_prices WHERE model_type = 'qwen-long'", &[]).unwrap(), 1);
    assert_eq!(price_of(&mut c, "qwen-long"), None);
    assert_eq!(prices(&mut c), shipped);
}
