//! The claims column jobs take on the rows they work on (`src/functions/column/claims.rs`):
//! what they cost the cluster's shared lock table when every row fails, and what a job does
//! with a row whose claim another session holds (defers it, waits for it holding nothing, and
//! fills it if that session did not). Against a real cluster and stand-ins.

mod common;

use bailian_standin::{chat_reply, Config, Fault, Standin};
use common::*;
use postgres::Client;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The job engine's CHUNK_ROWS + PAGE_ROWS (src/functions/column/mod.rs): the most claims a
/// job holds at once.
const MOST_CLAIMS: i64 = 1000 + 500;

/// Claims in `pg_locks`: advisory locks in the claims' space (objsubid 20562) on `table`
/// (classid), held or awaited; `pid` narrows them to one session.
fn claims_sql(table: &str, pid: Option<i32>) -> String {
    format!(
        "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND objsubid = 20562 \
           AND classid = '{table}'::regclass::oid{}",
        pid.map(|p| format!(" AND pid = {p}")).unwrap_or_default()
    )
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn pid_of(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// The counts of ai_update's finish NOTICE: filled, failed, skipped, locked, done by another
/// session.
fn finish_counts(seen: &Seen) -> [u64; 5] {
    let all = notices(seen);
    let finished: Vec<&str> =
        all.lines().filter(|l| l.starts_with("NOTICE: ai_update: finished in ")).collect();
    assert_eq!(finished.len(), 1, "one finish NOTICE expected:\n{all}");
    let rest = finished[0].split_once(" s: ").unwrap_or_else(|| panic!("{}", finished[0])).1;
    let words = ["filled", "failed", "skipped", "locked by other transactions", "done by another session"];
    let mut counts = [0u64; 5];
    for (i, (part, word)) in rest.split(", ").zip(words).enumerate() {
        let (n, what) = part.split_once(' ').unwrap_or_else(|| panic!("{rest}"));
        assert_eq!(what, word, "{rest}");
        counts[i] = n.parse().unwrap_or_else(|e| panic!("{rest}: {e}"));
    }
    counts
}

/// How many times each input was answered 200.
fn answered(s: &Standin) -> HashMap<String, usize> {
    let mut sent = HashMap::new();
    for r in s.requests().iter().filter(|r| r.status == 200) {
        for input in &r.inputs {
            *sent.entry(input.clone()).or_default() += 1;
        }
    }
    sent
}

/// Polls `sql` (one bigint) every 20 ms from a session of its own until `stop`; answers the
/// largest value seen and how many polls there were.
fn poll_max(db: String, sql: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(i64, usize)> {
    std::thread::spawn(move || {
        let mut c = connect(&db);
        let (mut most, mut polls) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            most = most.max(count(&mut c, &sql));
            polls += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (most, polls)
    })
}

/// 20,000 rows whose every request fails: the job ends, reports them all failed, leaves them
/// NULL, and never holds more than a chunk and a page of claims. (When failed rows kept their
/// claims until the job ended, such a job held 20,000 entries of the shared lock table, more
/// than it has room for: every session of the cluster then failed with "out of shared
/// memory".) Run by a role with no more than the rights on the table.
#[test]
fn rows_that_all_fail_hold_no_more_claims_than_a_chunk_and_a_page() {
    let (mut c, db) = fresh_db("claims_all_fail");
    let s = standin_with(Config { fail_rate_500: 1.0, latency_ms: 2, ..Config::default() });
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}', max_retries => 0");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs SELECT g, 'failing doc ' || g, NULL FROM generate_series(1, 20000) g;
         ANALYZE docs",
    )
    .unwrap();
    fresh_role(&mut c, "claims_clerk", "");
    c.batch_execute("GRANT SELECT ON docs TO claims_clerk; GRANT UPDATE (emb) ON docs TO claims_clerk")
        .unwrap();
    let (mut clerk, seen) = connect_collecting_as(&db, "claims_clerk");

    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_max(db.clone(), claims_sql("docs", None), stop.clone());
    let result = clerk.batch_execute("CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$)");
    stop.store(true, Ordering::Relaxed);
    let (most, polls) = poller.join().unwrap();

    result.unwrap_or_else(|e| panic!("the job failed: {e}\n{}", notices(&seen)));
    assert_eq!(finish_counts(&seen), [0, 20000, 0, 0, 0], "{}", notices(&seen));
    assert!(
        notices(&seen).contains("ai_update: 20000 rows failed and keep a NULL emb"),
        "{}",
        notices(&seen)
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"), 20000);
    assert!(polls >= 5, "the job ran for {polls} polls only");
    assert!(most > 0, "{polls} polls never saw a claim: the poll does not find them");
    assert!(most <= MOST_CLAIMS, "{most} claims held at once; at most {MOST_CLAIMS} expected");
    assert_eq!(count(&mut c, &claims_sql("docs", None)), 0, "claims left after the job");
    let stats = s.stats();
    assert!(stats.requests >= 2000, "20,000 inputs, 10 a request at most: {stats:?}");
    assert_eq!(stats.by_status.get(&500).copied(), Some(stats.requests), "{stats:?}");
    // The session is fine, and so is the cluster.
    assert_eq!(count(&mut clerk, "SELECT 1::int8"), 1);
}

/// `slow` (qwen-plus, on a stand-in that answers in `latency_ms`) and `fast` (qwen-flash, at
/// once) with no retries, and `docs(id, body, answer)` with `rows` rows.
fn two_models(test: &str, latency_ms: u64, rows: i32) -> (Client, String, Standin, Standin) {
    let (mut c, db) = fresh_db(test);
    let slow = standin_with(Config { latency_ms, ..Config::default() });
    let fast = standin();
    deploy(&mut c, &slow, "slow", "qwen-plus", ", max_retries => 0");
    deploy(&mut c, &fast, "fast", "qwen-flash", ", max_retries => 0");
    c.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, answer text);
         INSERT INTO docs SELECT g, 'document ' || g || ' about topic ' || (g % 7), NULL
           FROM generate_series(1, {rows}) g;
         ANALYZE docs"
    ))
    .unwrap();
    (c, db, slow, fast)
}

/// Starts session A's job on the slow model over `filter` (its rows' claims are held while the
/// requests take their time) and waits until it holds `claims` claims.
fn start_slow_job(
    db: &str,
    c: &mut Client,
    filter: &str,
    claims: i64,
) -> (std::thread::JoinHandle<Result<(), postgres::Error>>, Seen) {
    let (mut a, seen_a) = connect_collecting_as(db, "postgres");
    let call = format!(
        "CALL ai_update('docs', 'answer', $$ai_gen('slow', body)$$, batch_size => 50, filter => $${filter}$$)"
    );
    let job = std::thread::spawn(move || a.batch_execute(&call));
    assert!(
        wait_for(Duration::from_secs(20), || count(c, &claims_sql("docs", None)) >= claims),
        "session A never held its {claims} claims"
    );
    (job, seen_a)
}

/// A row whose claim another session holds is deferred, not counted as done: session B
/// waits for it (holding nothing), then finds it filled by A (done by another session) or,
/// when A failed on it and let it go, fills it itself. Whatever the claim's holder does with
/// the row (a hash collision is one more such holder), B never takes it for done when it is
/// not: every row ends filled, and every prompt was answered once.
#[test]
fn a_row_claimed_by_another_session_is_waited_for_and_filled_once() {
    let (mut c, db, slow, fast) = two_models("claims_deferred", 700, 300);
    // A fails on every tenth of its rows (a refused prompt), and lets them go at once.
    let refused: Vec<i32> = (10..=100).step_by(10).collect();
    for id in &refused {
        slow.script(&body_of(*id), vec![Fault::Inspection]);
    }
    let (job_a, seen_a) = start_slow_job(&db, &mut c, "id <= 100", 100);

    let (mut b, seen_b) = connect_collecting_as(&db, "postgres");
    let pid_b = pid_of(&mut b);
    let job_b = std::thread::spawn(move || {
        b.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('fast', body)$$)").map(|_| b)
    });
    // B waits for a claim A holds, as a lock wait pg_stat_activity shows.
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid_b} AND wait_event_type = 'Lock' \
           AND wait_event = 'advisory'"
    );
    assert!(
        wait_for(Duration::from_secs(20), || count(&mut c, &waiting) == 1),
        "session B never waited for a claim:\n{}",
        notices(&seen_b)
    );
    job_a.join().unwrap().unwrap_or_else(|e| panic!("A: {e}\n{}", notices(&seen_a)));
    let mut b = job_b.join().unwrap().unwrap_or_else(|e| panic!("B: {e}\n{}", notices(&seen_b)));

    assert_eq!(finish_counts(&seen_a), [90, 10, 0, 0, 0], "{}", notices(&seen_a));
    // B: its own 200 rows and the 10 A failed on; the 90 A filled, done by another session.
    assert_eq!(finish_counts(&seen_b), [210, 0, 0, 0, 90], "{}", notices(&seen_b));
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE answer IS NULL"), 0);
    for id in 1..=300 {
        let answer: String = c.query_one("SELECT answer FROM docs WHERE id = $1", &[&id]).unwrap().get(0);
        let by_a = id <= 100 && !refused.contains(&id);
        let model = if by_a { "qwen-plus" } else { "qwen-flash" };
        assert_eq!(answer, chat_reply(model, &body_of(id), 0), "row {id}");
    }
    let (by_slow, by_fast) = (answered(&slow), answered(&fast));
    assert_eq!(by_slow.len(), 90, "{by_slow:?}");
    assert_eq!(by_fast.len(), 210, "{by_fast:?}");
    assert!(by_slow.values().chain(by_fast.values()).all(|n| *n == 1), "a prompt answered twice");
    assert!(by_slow.keys().all(|k| !by_fast.contains_key(k)), "a prompt answered by both");
    assert_eq!(fast.stats().chat_requests, 210, "B asked for nothing it did not write");
    assert_eq!(count(&mut c, &claims_sql("docs", None)), 0, "claims left after the jobs");
    assert_eq!(count(&mut b, "SELECT 1::int8"), 1);
}

/// A cancel ends a job waiting for a claim like any lock wait: the CALL fails with 57014,
/// what it committed stays, its session holds and awaits no claim afterwards, and the job
/// holding the claim is not disturbed.
#[test]
fn a_cancel_ends_a_wait_for_a_claim_and_leaves_nothing_held() {
    let (mut c, db, _slow, fast) = two_models("claims_cancel", 3000, 60);
    let (job_a, seen_a) = start_slow_job(&db, &mut c, "id <= 20", 20);

    let (mut b, seen_b) = connect_collecting_as(&db, "postgres");
    let pid_b = pid_of(&mut b);
    let job_b = std::thread::spawn(move || {
        let r = b.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('fast', body)$$)");
        (b, r.err().and_then(|e| e.as_db_error().map(|d| d.code().code().to_string())))
    });
    let waiting =
        format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid_b} AND wait_event = 'advisory'");
    assert!(
        wait_for(Duration::from_secs(20), || count(&mut c, &waiting) == 1),
        "session B never waited for a claim:\n{}",
        notices(&seen_b)
    );
    c.execute("SELECT pg_cancel_backend($1)", &[&pid_b]).unwrap();
    let (mut b, code) = job_b.join().unwrap();
    assert_eq!(code.as_deref(), Some("57014"), "{}", notices(&seen_b));
    // B had written its own 40 rows, committed before it waited.
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE id > 20 AND answer IS NOT NULL"), 40);
    assert_eq!(count(&mut c, &claims_sql("docs", Some(pid_b))), 0, "B holds or awaits claims");
    assert_eq!(count(&mut b, "SELECT 1::int8"), 1);

    job_a.join().unwrap().unwrap_or_else(|e| panic!("A: {e}\n{}", notices(&seen_a)));
    assert_eq!(finish_counts(&seen_a), [20, 0, 0, 0, 0], "{}", notices(&seen_a));
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE answer IS NULL"), 0);
    assert_eq!(fast.stats().chat_requests, 40);
    assert_eq!(count(&mut c, &claims_sql("docs", None)), 0, "claims left after the jobs");
}
