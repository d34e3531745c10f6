//! The task functions (ai_classify, ai_extract, ai_mask, ai_sentiment), ai_similarity and
//! ai_chunk over thousands of rows: through `CALL ai_update`, a plain UPDATE, a SELECT and an
//! INSERT ... SELECT.
//!
//! Against a real cluster and the stand-in, like the other end-to-end tests. The rows are
//! support tickets whose text says what the stand-in will find in it (its rules are in
//! crates/bailian-standin/src/structured.rs): the label it picks is the first of the labels,
//! in list order, that the text names as a word; the fields it extracts are the `key: value`
//! pairs (up to `;`); its sentiment is a lexicon's verdict. So every row's value is known in
//! advance and checked exactly, and faults scripted on a few rows' text are known to fail
//! exactly those rows.

mod common;

use bailian_core::tasks::cosine;
use bailian_standin::{embedding_for, Config, Fault, Standin};
use common::*;
use postgres::{Client, NoTls, SimpleQueryMessage};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROWS: i32 = 2000;
const LABELS: [&str; 4] = ["billing", "bug", "praise", "other"];
const CITIES: [&str; 6] = ["Paris", "Berlin", "Lima", "Oslo", "Hanoi", "Cairo"];
/// What a ticket ends with, and the sentiment the stand-in's lexicon gives it.
const MOODS: [(&str, &str); 4] = [
    ("", "neutral"),
    (", it was great", "positive"),
    (", it crashed", "negative"),
    (", great but it crashed", "mixed"),
];
const CLASSIFY: &str = "ai_classify('chat', body, ARRAY['billing','bug','praise','other'])";
const EXTRACT: &str = "ai_extract('chat', body, ARRAY['name','city'])";
const BATCH_NODE: &str = "Custom Scan (AI Batch)";

/// One row of `t`, and what each task function should make of it.
struct Ticket {
    body: String,
    label: &'static str,
    name: String,
    city: Option<&'static str>,
    sentiment: &'static str,
}

/// Row `id`: `ticket 12: name: user12; city: Paris; this is about bug, it crashed`. Every
/// fifth row states no city; every fiftieth (from 1) names two labels, "praise and billing",
/// where the first label in list order (billing) is the answer.
fn ticket(id: i32) -> Ticket {
    let city = (id % 5 != 0).then(|| CITIES[(id % 6) as usize]);
    let (topic, label) = if id % 50 == 1 {
        ("praise and billing".to_string(), "billing")
    } else {
        let l = LABELS[(id % 4) as usize];
        (l.to_string(), l)
    };
    let (mood, sentiment) = MOODS[((id / 4) % 4) as usize];
    let city_part = city.map(|c| format!(" city: {c};")).unwrap_or_default();
    Ticket {
        body: format!("ticket {id}: name: user{id};{city_part} this is about {topic}{mood}"),
        label,
        name: format!("user{id}"),
        city,
        sentiment,
    }
}

fn body_of_ticket(id: i32) -> String {
    ticket(id).body
}

/// What ai_mask(..., ARRAY['name', 'city']) makes of row `id`.
fn masked(id: i32) -> String {
    let t = ticket(id);
    let body = t.body.replace(&t.name, "[MASKED]");
    match t.city {
        Some(city) => body.replace(city, "[MASKED]"),
        None => body,
    }
}

/// chat (qwen-plus, default retries: no inference failure is retried) and emb
/// (text-embedding-v4 at 64 dimensions).
fn deploy_models(c: &mut Client, s: &Standin) {
    deploy(c, s, "chat", "qwen-plus", "");
    deploy(c, s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
}

/// `t(id, body, label, fields)` with the ROWS tickets.
fn make_tickets(c: &mut Client) {
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, body text, label text, fields jsonb)").unwrap();
    let ids: Vec<i32> = (1..=ROWS).collect();
    let bodies: Vec<String> = ids.iter().map(|i| body_of_ticket(*i)).collect();
    c.execute("INSERT INTO t (id, body) SELECT * FROM unnest($1::int[], $2::text[])", &[&ids, &bodies])
        .unwrap();
    c.batch_execute("ANALYZE t").unwrap();
}

/// A superuser session whose NOTICEs and WARNINGs are collected as "SEVERITY SQLSTATE: message".
fn connect_collecting_codes(db: &str) -> (Client, Seen) {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let mut cfg: postgres::Config =
        format!("host={host} port={} user=postgres dbname={db} connect_timeout=10", port()).parse().unwrap();
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    cfg.notice_callback(move |n| {
        sink.lock().unwrap().push(format!("{} {}: {}", n.severity(), n.code().code(), n.message()))
    });
    (cfg.connect(NoTls).unwrap(), seen)
}

fn clear(seen: &Seen) {
    seen.lock().unwrap().clear();
}

fn lines_starting(seen: &Seen, prefix: &str) -> Vec<String> {
    seen.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).cloned().collect()
}

/// The counts of ai_update's finish NOTICE: filled, failed, skipped, locked, done by another
/// session (exactly one such NOTICE is expected).
fn finish_counts(seen: &Seen) -> [u64; 5] {
    let finished = lines_starting(seen, "NOTICE: ai_update: finished in ");
    assert_eq!(finished.len(), 1, "one finish NOTICE expected:\n{}", notices(seen));
    let line = &finished[0];
    let rest = line.split_once(" s: ").unwrap_or_else(|| panic!("{line}")).1;
    let parts: Vec<&str> = rest.split(", ").collect();
    let words = ["filled", "failed", "skipped", "locked by other transactions", "done by another session"];
    let mut counts = [0u64; 5];
    for (i, word) in words.iter().enumerate() {
        let (n, what) = parts.get(i).and_then(|p| p.split_once(' ')).unwrap_or_else(|| panic!("{line}"));
        assert_eq!(what, *word, "{line}");
        counts[i] = n.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    counts
}

/// How often each input (a chat call's content) was sent, over `requests`.
fn sent(requests: &[bailian_standin::LoggedRequest]) -> HashMap<String, usize> {
    let mut sent: HashMap<String, usize> = HashMap::new();
    for r in requests {
        for input in &r.inputs {
            *sent.entry(input.clone()).or_default() += 1;
        }
    }
    sent
}

/// Every row's `column` as JSON (`to_jsonb`), None for NULL, in id order.
fn column_values(c: &mut Client, column: &str) -> Vec<(i32, Option<Value>)> {
    c.query(&format!("SELECT id, to_jsonb({column})::text FROM t ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| {
            let text: Option<String> = r.get(1);
            (r.get(0), text.map(|t| serde_json::from_str(&t).unwrap()))
        })
        .collect()
}

/// Asserts every row's `column` is `want(id)`, except the rows in `null_ids`, which are NULL.
fn assert_column(c: &mut Client, column: &str, null_ids: &BTreeSet<i32>, want: &dyn Fn(i32) -> Value) {
    let values = column_values(c, column);
    assert_eq!(values.len(), ROWS as usize);
    let wrong: Vec<String> = values
        .iter()
        .filter(|(id, v)| {
            let expected = if null_ids.contains(id) { None } else { Some(want(*id)) };
            *v != expected
        })
        .take(10)
        .map(|(id, v)| {
            format!(
                "row {id}: {v:?}, expected {}",
                if null_ids.contains(id) { "NULL".into() } else { want(*id).to_string() }
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{column}: wrong rows (first 10):\n{}", wrong.join("\n"));
}

fn text_rows(c: &mut Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

fn explain(c: &mut Client, sql: &str) -> String {
    text_rows(c, &format!("EXPLAIN (COSTS OFF) {sql}"))
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sorted call names of the plan's one `AI Calls` line.
fn ai_calls(plan: &str) -> Vec<String> {
    let lines: Vec<&str> = plan.lines().filter_map(|l| l.trim().strip_prefix("AI Calls: ")).collect();
    assert_eq!(lines.len(), 1, "one AI Calls line expected:\n{plan}");
    let mut names: Vec<String> = lines[0].split(',').map(|n| n.trim().to_string()).collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// 1. CALL ai_update with ai_classify and ai_extract over 2,000 rows
// ---------------------------------------------------------------------------------------------

/// One column filled by `CALL ai_update('t', column, expression)` over the 2,000 tickets at
/// 50 ms a request, with `faults` scripted on some rows' text (rows with two faults fail the
/// first two CALLs): the first CALL asks every row exactly once, concurrently, fails exactly
/// the faulted rows (NULL, reported by key with the fault's SQLSTATE) and fills every other
/// row with its value; each further CALL re-sends exactly the rows still NULL, until all are
/// filled; then a CALL has nothing to do.
fn fill_column_with_faults(
    c: &mut Client,
    db: &str,
    s: &Standin,
    column: &str,
    expression: &str,
    faults: &[(i32, Vec<Fault>, &str)],
    want: &dyn Fn(i32) -> Value,
) {
    let (mut w, seen) = connect_collecting_as(db, "postgres");
    s.reset();
    for (id, script, _) in faults {
        s.script(&body_of_ticket(*id), script.clone());
    }
    let call = format!("CALL ai_update('t', '{column}', $${expression}$$)");

    let start = Instant::now();
    w.batch_execute(&call).unwrap_or_else(|e| panic!("{call}: {e}"));
    let took = start.elapsed();
    let n = notices(&seen);
    eprintln!("{column}: {ROWS} rows at 50 ms a request in {took:?}; stand-in: {:?}", s.stats());
    assert!(n.contains(&format!("NOTICE: ai_update: {ROWS} rows of t to fill")), "{n}");
    let failed: BTreeSet<i32> = faults.iter().map(|(id, ..)| *id).collect();
    let row_warnings = lines_starting(&seen, "WARNING: ai_update: row ");
    assert_eq!(row_warnings.len(), failed.len(), "one WARNING per failed row:\n{n}");
    for (id, _, code) in faults {
        let prefix = format!("WARNING: ai_update: row (id)=({id}) failed: {code} ");
        assert!(row_warnings.iter().any(|l| l.starts_with(&prefix)), "row {id}, {code}:\n{n}");
    }
    let k = failed.len() as u64;
    assert_eq!(finish_counts(&seen), [ROWS as u64 - k, k, 0, 0, 0], "{n}");
    assert!(
        n.contains(&format!(
            "WARNING: ai_update: {k} rows failed and keep a NULL {column}; CALL ai_update again to retry them"
        )),
        "{n}"
    );
    assert_column(c, column, &failed, want);

    // Every row asked exactly once (inference failures are not retried), concurrently.
    let stats = s.stats();
    assert_eq!(stats.chat_requests, ROWS as u64, "{stats:?}");
    let asked = sent(&s.requests());
    let twice: Vec<_> = asked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "asked more than once: {twice:?}");
    assert_eq!(
        asked.into_keys().collect::<BTreeSet<_>>(),
        (1..=ROWS).map(body_of_ticket).collect::<BTreeSet<_>>()
    );
    assert!(stats.peak_in_flight > 1, "never more than one request in flight: {stats:?}");
    assert!(stats.peak_in_flight <= 16, "more in flight than pg_bailian.max_concurrency: {stats:?}");
    // Serially: 2,000 x 50 ms = 100 s.
    assert!(took < Duration::from_secs(30), "{ROWS} requests of 50 ms took {took:?}: not concurrent");

    // Again, until every fault is used up: exactly the rows still NULL are sent, once each.
    let mut remaining: BTreeMap<i32, usize> = faults.iter().map(|(id, f, _)| (*id, f.len())).collect();
    for round in 2.. {
        let pending: BTreeSet<i32> = remaining.keys().copied().collect();
        let still: BTreeSet<i32> =
            remaining.iter().filter(|(_, left)| **left >= round).map(|(id, _)| *id).collect();
        let before = s.requests().len();
        clear(&seen);
        w.batch_execute(&call).unwrap_or_else(|e| panic!("{call} (CALL {round}): {e}"));
        let n = notices(&seen);
        assert!(
            n.contains(&format!("NOTICE: ai_update: {} rows of t to fill", pending.len())),
            "CALL {round}:\n{n}"
        );
        let again = s.requests()[before..].to_vec();
        let asked = sent(&again);
        assert_eq!(again.len(), pending.len(), "CALL {round}: one request per pending row");
        assert!(asked.values().all(|n| *n == 1), "CALL {round}: {asked:?}");
        assert_eq!(
            asked.into_keys().collect::<BTreeSet<_>>(),
            pending.iter().map(|i| body_of_ticket(*i)).collect::<BTreeSet<_>>(),
            "CALL {round} re-sends exactly the failed rows"
        );
        let k = still.len() as u64;
        assert_eq!(finish_counts(&seen), [pending.len() as u64 - k, k, 0, 0, 0], "CALL {round}:\n{n}");
        assert_eq!(
            lines_starting(&seen, "WARNING: ai_update: row ").len(),
            still.len(),
            "CALL {round}:\n{n}"
        );
        assert_column(c, column, &still, want);
        remaining.retain(|id, _| still.contains(id));
        if remaining.is_empty() {
            break;
        }
    }

    // Nothing left to do, nothing sent.
    let before = s.requests().len();
    clear(&seen);
    w.batch_execute(&call).unwrap();
    assert!(notices(&seen).contains("NOTICE: ai_update: 0 rows of t to fill"), "{}", notices(&seen));
    assert_eq!(s.requests().len(), before);
}

#[test]
fn ai_update_classifies_and_extracts_2000_rows_concurrently_and_retries_failed_rows() {
    let (mut c, db) = fresh_db("afr_ai_update");
    let s = standin_with(Config { latency_ms: 50, ..Config::default() });
    deploy_models(&mut c, &s);
    make_tickets(&mut c);

    // Five faulted rows in each batch of 1000 (ai_update names at most five failed rows per
    // commit and only counts the rest), two of them on the batches' edges. A label outside
    // the list is "none of the above" here, since 'other' is one of them.
    let classify_faults = vec![
        (7, vec![Fault::NotJson], "ZBI01"),
        (150, vec![Fault::OffList], "ZBI02"),
        (333, vec![Fault::SchemaViolation], "ZBI02"),
        (512, vec![Fault::Inspection], "ZB400"),
        (1000, vec![Fault::OffList, Fault::NotJson], "ZBI02"),
        (1001, vec![Fault::SchemaViolation], "ZBI02"),
        (1500, vec![Fault::NotJson], "ZBI01"),
        (1777, vec![Fault::OffList], "ZBI02"),
        (1999, vec![Fault::NotJson], "ZBI01"),
        (2000, vec![Fault::SchemaViolation, Fault::NotJson], "ZBI02"),
    ];
    fill_column_with_faults(&mut c, &db, &s, "label", CLASSIFY, &classify_faults, &|id| {
        json!(ticket(id).label)
    });

    // ai_extract's schema has no enum, so OffList would not spoil it. Five a batch again.
    let extract_faults = vec![
        (3, vec![Fault::SchemaViolation], "ZBI02"),
        (5, vec![Fault::NotJson], "ZBI01"),
        (250, vec![Fault::NotJson, Fault::SchemaViolation], "ZBI01"),
        (640, vec![Fault::SchemaViolation], "ZBI02"),
        (1000, vec![Fault::Inspection], "ZB400"),
        (1001, vec![Fault::NotJson], "ZBI01"),
        (1234, vec![Fault::SchemaViolation], "ZBI02"),
        (1600, vec![Fault::NotJson], "ZBI01"),
        (1999, vec![Fault::SchemaViolation, Fault::SchemaViolation], "ZBI02"),
        (2000, vec![Fault::NotJson], "ZBI01"),
    ];
    fill_column_with_faults(&mut c, &db, &s, "fields", EXTRACT, &extract_faults, &|id| {
        let t = ticket(id);
        json!({"name": t.name, "city": t.city})
    });
    // The labels stay as the first job left them.
    assert_column(&mut c, "label", &BTreeSet::new(), &|id| json!(ticket(id).label));
}

// ---------------------------------------------------------------------------------------------
// 2. The same through a plain UPDATE: on_error decides what a failed row does
// ---------------------------------------------------------------------------------------------

/// `UPDATE t SET label = ai_classify(...)` over the 2,000 tickets runs in the AI Batch node
/// (several requests in flight). A row whose answer is not JSON or breaks the schema fails
/// the statement with that SQLSTATE, and nothing is updated; with
/// `pg_bailian.on_error = 'null'` the statement succeeds, the faulted rows are NULL with one
/// WARNING each (carrying the fault's SQLSTATE), every other row has its label, and every
/// row was asked once.
#[test]
fn a_plain_update_batches_and_on_error_decides_what_failed_rows_get() {
    let (mut c, db) = fresh_db("afr_plain_update");
    let s = standin_with(Config { latency_ms: 20, ..Config::default() });
    deploy_models(&mut c, &s);
    make_tickets(&mut c);
    c.batch_execute("UPDATE t SET label = 'before'").unwrap();
    let (mut w, seen) = connect_collecting_codes(&db);
    // The planner hook comes with the library: a session's first statement is planned before
    // it is loaded (README, "Batched queries").
    w.batch_execute("LOAD 'pg_bailian'").unwrap();
    let update = format!("UPDATE t SET label = {CLASSIFY}");
    let plan = explain(&mut w, &update);
    assert_eq!(plan.matches(BATCH_NODE).count(), 1, "{plan}");
    assert_eq!(ai_calls(&plan), ["ai_classify"]);
    let untouched = |c: &mut Client| -> i64 {
        c.query_one("SELECT count(*) FROM t WHERE label = 'before'", &[]).unwrap().get(0)
    };

    // pg_bailian.on_error = 'error' (the default): the fault's error, and no row changes.
    let failing = [
        (700, Fault::NotJson, "ZBI01", "model \"chat\" answered with text that is not JSON: "),
        (1300, Fault::OffList, "ZBI02", "the answer of model \"chat\" does not match the requested schema: "),
        (
            1800,
            Fault::SchemaViolation,
            "ZBI02",
            "the answer of model \"chat\" does not match the requested schema: ",
        ),
    ];
    for (id, fault, code, message) in failing {
        s.reset();
        s.script(&body_of_ticket(id), vec![fault.clone()]);
        let (got_code, got_message) = error_of(w.batch_execute(&update));
        assert_eq!(got_code, code, "row {id}, {fault:?}: {got_message}");
        assert!(got_message.starts_with(message), "row {id}, {fault:?}: {got_message}");
        assert_eq!(untouched(&mut c), ROWS as i64, "row {id}, {fault:?}: the failed UPDATE changed rows");
        let stats = s.stats();
        assert!(stats.peak_in_flight > 1 && stats.peak_in_flight <= 16, "{fault:?}: {stats:?}");
        assert!(wait_for(Duration::from_secs(5), || s.stats().in_flight == 0), "requests outlived the error");
    }

    // pg_bailian.on_error = 'null': NULL and a WARNING per faulted row; the statement succeeds.
    let faults = [
        (2, Fault::NotJson, "ZBI01"),
        (199, Fault::OffList, "ZBI02"),
        (450, Fault::SchemaViolation, "ZBI02"),
        (451, Fault::NotJson, "ZBI01"),
        (888, Fault::OffList, "ZBI02"),
        (1024, Fault::SchemaViolation, "ZBI02"),
        (1357, Fault::NotJson, "ZBI01"),
        (1600, Fault::Inspection, "ZB400"),
        (1901, Fault::OffList, "ZBI02"),
        (2000, Fault::SchemaViolation, "ZBI02"),
    ];
    s.reset();
    for (id, fault, _) in &faults {
        s.script(&body_of_ticket(*id), vec![fault.clone()]);
    }
    w.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
    clear(&seen);
    let updated = w.execute(update.as_str(), &[]).unwrap_or_else(|e| panic!("{update}: {e}"));
    assert_eq!(updated, ROWS as u64);
    let n = notices(&seen);
    let warnings = lines_starting(&seen, "WARNING");
    assert_eq!(warnings.len(), faults.len(), "one WARNING per faulted row:\n{n}");
    let mut codes: Vec<String> = warnings
        .iter()
        .map(|l| l.split_once(':').unwrap().0.trim_start_matches("WARNING ").to_string())
        .collect();
    codes.sort();
    let mut want_codes: Vec<String> = faults.iter().map(|(_, _, code)| code.to_string()).collect();
    want_codes.sort();
    assert_eq!(codes, want_codes, "{n}");
    for warning in &warnings {
        assert!(
            warning.contains("model \"chat\" answered with text that is not JSON")
                || warning.contains("the answer of model \"chat\" does not match the requested schema")
                || warning.contains("data_inspection_failed"),
            "{warning}"
        );
    }
    let null_ids: BTreeSet<i32> = faults.iter().map(|(id, ..)| *id).collect();
    assert_column(&mut c, "label", &null_ids, &|id| json!(ticket(id).label));
    let stats = s.stats();
    assert_eq!(stats.chat_requests, ROWS as u64, "{stats:?}");
    let asked = sent(&s.requests());
    assert_eq!(asked.len(), ROWS as usize);
    assert!(asked.values().all(|n| *n == 1), "a row was asked twice");
    assert!(stats.peak_in_flight > 1 && stats.peak_in_flight <= 16, "{stats:?}");
    w.batch_execute("RESET pg_bailian.on_error").unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. Several task calls in one SELECT
// ---------------------------------------------------------------------------------------------

/// ai_mask, ai_sentiment and ai_similarity in one SELECT ... ORDER BY id LIMIT 200: one AI
/// Batch node with the three calls, exactly 200 rows' calls sent (two chat requests and one
/// embeddings request of the pair a row), each row's values exact, and the same values row
/// by row (batch_execution = off) for a sample.
#[test]
fn mask_sentiment_and_similarity_in_one_select() {
    let (mut c, _) = fresh_db("afr_select");
    let s = standin_with(Config { latency_ms: 10, ..Config::default() });
    deploy_models(&mut c, &s);
    make_tickets(&mut c);
    let columns = "id, ai_mask('chat', body, ARRAY['name', 'city']), ai_sentiment('chat', body), \
                   ai_similarity('emb', body, 'billing')";
    let sql = format!("SELECT {columns} FROM t ORDER BY id LIMIT 200");

    let plan = explain(&mut c, &sql);
    assert_eq!(plan.matches(BATCH_NODE).count(), 1, "one AI Batch node:\n{plan}");
    assert_eq!(ai_calls(&plan), ["ai_mask", "ai_sentiment", "ai_similarity"], "{plan}");
    assert_eq!(s.stats().requests, 0, "EXPLAIN sent a request");

    let rows = text_rows(&mut c, &sql);
    assert_eq!(rows.len(), 200);
    let billing = embedding_for("billing", 64);
    for (i, row) in rows.iter().enumerate() {
        let id = i as i32 + 1;
        let t = ticket(id);
        assert_eq!(row[0].as_deref(), Some(id.to_string().as_str()), "rows in id order");
        assert_eq!(row[1].as_deref(), Some(masked(id).as_str()), "ai_mask of row {id}");
        assert_eq!(row[2].as_deref(), Some(t.sentiment), "ai_sentiment of row {id}");
        let similarity: f64 = row[3].as_deref().unwrap().parse().unwrap();
        let want = cosine(&embedding_for(&t.body, 64), &billing).unwrap();
        assert!((similarity - want).abs() < 1e-9, "ai_similarity of row {id}: {similarity}, expected {want}");
    }
    let stats = s.stats();
    assert_eq!((stats.chat_requests, stats.embedding_requests), (400, 200), "{stats:?}");
    assert_eq!(stats.inputs, 400 + 400, "each embeddings request carries its pair: {stats:?}");
    assert!(stats.peak_in_flight > 1 && stats.peak_in_flight <= 16, "{stats:?}");

    // Row by row, for every tenth row of them: the same values, one request at a time.
    let sample = format!("SELECT {columns} FROM t WHERE id <= 200 AND id % 10 = 3 ORDER BY id");
    c.batch_execute("SET pg_bailian.batch_execution = off").unwrap();
    let plan = explain(&mut c, &sample);
    assert!(!plan.contains(BATCH_NODE), "{plan}");
    s.reset();
    let one_by_one = text_rows(&mut c, &sample);
    c.batch_execute("RESET pg_bailian.batch_execution").unwrap();
    let batched: Vec<_> =
        rows.iter().filter(|r| r[0].as_deref().unwrap().parse::<i32>().unwrap() % 10 == 3).cloned().collect();
    assert_eq!(one_by_one.len(), 20);
    assert_eq!(one_by_one, batched, "row by row and batched differ");
    let stats = s.stats();
    assert_eq!(
        (stats.chat_requests, stats.embedding_requests, stats.peak_in_flight),
        (40, 20, 1),
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. ai_chunk over the table
// ---------------------------------------------------------------------------------------------

/// `INSERT INTO chunks SELECT id, unnest(ai_chunk(body, 40, 10)) FROM t` stores, for every
/// row, exactly the pieces ai_chunk gives for that body called on its own (and that
/// bailian_core's splitter gives), in order; no AI Batch node and no request. ai_chunk is
/// IMMUTABLE, STRICT and PARALLEL SAFE.
#[test]
fn chunks_of_every_row_inserted_at_once_equal_chunks_one_at_a_time() {
    let (mut c, _) = fresh_db("afr_chunk");
    let s = standin();
    deploy_models(&mut c, &s);
    make_tickets(&mut c);
    c.batch_execute("CREATE TABLE chunks (n bigserial PRIMARY KEY, id int, piece text)").unwrap();
    let insert =
        "INSERT INTO chunks (id, piece) SELECT id, unnest(ai_chunk(body, 40, 10)) FROM t ORDER BY id";
    let plan = explain(&mut c, insert);
    assert!(!plan.contains(BATCH_NODE), "ai_chunk asks no model:\n{plan}");
    let inserted = c.execute(insert, &[]).unwrap();

    let mut stored: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for row in c.query("SELECT id, piece FROM chunks ORDER BY n", &[]).unwrap() {
        stored.entry(row.get(0)).or_default().push(row.get(1));
    }
    let mut total = 0;
    for id in 1..=ROWS {
        let body = body_of_ticket(id);
        let alone: Vec<String> = c.query_one("SELECT ai_chunk($1, 40, 10)", &[&body]).unwrap().get(0);
        assert_eq!(stored.get(&id), Some(&alone), "row {id}: {body:?}");
        assert_eq!(alone, bailian_core::chunk::chunks(&body, 40, 10, || false).unwrap(), "row {id}");
        assert!(!alone.is_empty(), "row {id}");
        for piece in &alone {
            assert!(piece.chars().count() <= 40 && body.contains(piece.as_str()), "row {id}: {piece:?}");
        }
        total += alone.len();
    }
    assert_eq!(inserted, total as u64);
    assert_eq!(s.stats().requests, 0, "ai_chunk sent a request");

    let row = c
        .query_one(
            "SELECT provolatile::text, proisstrict, proparallel::text FROM pg_proc
              WHERE oid = 'ai_chunk(text, int, int)'::regprocedure",
            &[],
        )
        .unwrap();
    let (volatility, strict, parallel): (String, bool, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (volatility.as_str(), strict, parallel.as_str()),
        ("i", true, "s"),
        "IMMUTABLE STRICT PARALLEL SAFE"
    );
    // STRICT: a NULL argument is NULL without a call; bad sizes are errors.
    let null: Option<Vec<String>> = c.query_one("SELECT ai_chunk(NULL, 40, 10)", &[]).unwrap().get(0);
    assert_eq!(null, None);
    let (code, msg) = error_of(c.query_one("SELECT ai_chunk('a b c', 40, 40)", &[]));
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("22023", "overlap must be at least 0 and less than chunk_size (40), got 40")
    );
}

/// Each piece after the first brings text of its own: it is never the tail of the piece
/// before it (ai_chunk's doc: consecutive pieces share about `overlap` characters, so a piece
/// that is nothing but the overlap repeats text and leaves the next piece without overlap).
#[test]
fn every_chunk_brings_new_text() {
    let (mut c, _) = fresh_db("afr_chunk_new_text");
    let mut cases: Vec<(String, i32, i32)> = (1..=200).map(|id| (body_of_ticket(id), 40, 10)).collect();
    cases.push(("Alpha beta. Gamma delta epsilon.".into(), 20, 6));
    let mut bad = Vec::new();
    for (text, size, overlap) in &cases {
        let pieces: Vec<String> =
            c.query_one("SELECT ai_chunk($1, $2, $3)", &[text, size, overlap]).unwrap().get(0);
        for pair in pieces.windows(2) {
            if pair[0].ends_with(pair[1].as_str()) {
                bad.push(format!("ai_chunk({text:?}, {size}, {overlap}): {pieces:?}"));
                break;
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} texts have a piece that only repeats the end of the one before, e.g.:\n{}",
        bad.len(),
        cases.len(),
        bad[..bad.len().min(5)].join("\n")
    );
}
