//! A cancel stops an in-flight request at once: statement_timeout, pg_cancel_backend and
//! pg_terminate_backend while the stand-in holds the request, and the backend or server is
//! fine afterwards.

mod common;

use bailian_standin::{Fault, Standin};
use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_millis(1500);

/// Runs `sql` on `c` in a thread; returns (client, error SQLSTATE or "OK", seconds taken).
fn spawn_query(mut c: Client, sql: &'static str) -> std::thread::JoinHandle<(Client, String, Instant)> {
    std::thread::spawn(move || {
        let r = c.query_one(sql, &[]);
        let code = match r {
            Ok(_) => "OK".to_string(),
            Err(e) => e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("{e}")),
        };
        (c, code, Instant::now())
    })
}

fn wait_in_flight(s: &Standin) {
    assert!(wait_for(Duration::from_secs(5), || s.stats().in_flight == 1), "the request never arrived");
}

/// The stand-in saw the client hang up: the request did not outlive the cancel.
fn assert_request_closed(s: &Standin) {
    assert!(
        wait_for(Duration::from_millis(500), || s.stats().aborted == 1 && s.stats().in_flight == 0),
        "the held request is still open at the stand-in: {:?}",
        s.stats()
    );
}

#[test]
fn statement_timeout_ends_a_held_request() {
    let (mut c, _) = fresh_db("cancel_timeout");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    s.script("hold", vec![Fault::Hang]);
    c.batch_execute("SET statement_timeout = '1s'").unwrap();
    let start = Instant::now();
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('chat', 'hold')", &[]));
    let took = start.elapsed();
    assert_eq!((code.as_str(), msg.as_str()), ("57014", "canceling statement due to statement timeout"));
    assert!(took < LIMIT, "took {took:?}");
    assert_request_closed(&s);
    // The same backend goes on working.
    c.batch_execute("RESET statement_timeout").unwrap();
    assert_eq!(
        one_text(&mut c, "SELECT ai_gen('chat', 'after')").as_deref(),
        Some("Echo from qwen-plus: after")
    );
}

#[test]
fn pg_cancel_backend_ends_a_held_request() {
    let (mut c, db) = fresh_db("cancel_backend");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    s.script("hold", vec![Fault::Hang]);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let worker = spawn_query(c, "SELECT ai_gen('chat', 'hold')");
    wait_in_flight(&s);
    let mut admin = connect(&db);
    let cancelled_at = Instant::now();
    admin.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let (mut c, code, ended) = worker.join().unwrap();
    assert_eq!(code, "57014");
    assert!(ended - cancelled_at < LIMIT, "took {:?}", ended - cancelled_at);
    assert_request_closed(&s);
    assert_eq!(
        one_text(&mut c, "SELECT ai_gen('chat', 'again')").as_deref(),
        Some("Echo from qwen-plus: again")
    );
}

#[test]
fn a_cancel_also_ends_a_retry_backoff() {
    let (mut c, db) = fresh_db("cancel_backoff");
    let s = standin();
    deploy(
        &mut c,
        &s,
        "chat",
        "qwen-plus",
        ", max_retries => 5, initial_retry_delay => 8, max_retry_delay => 60",
    );
    s.script("fail", vec![Fault::Status(500); 10]);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let worker = spawn_query(c, "SELECT ai_gen('chat', 'fail')");
    assert!(wait_for(Duration::from_secs(5), || s.stats().requests == 1 && s.stats().in_flight == 0));
    std::thread::sleep(Duration::from_millis(200));
    let cancelled_at = Instant::now();
    connect(&db).execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let (_, code, ended) = worker.join().unwrap();
    assert_eq!(code, "57014");
    assert!(ended - cancelled_at < LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.stats().requests, 1, "no retry after the cancel");
}

#[test]
fn pg_terminate_backend_leaves_the_server_healthy() {
    let (mut c, db) = fresh_db("terminate_backend");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    s.script("hold", vec![Fault::Hang]);
    let mut admin = connect(&db);
    let started: String = admin.query_one("SELECT pg_postmaster_start_time()::text", &[]).unwrap().get(0);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let worker = spawn_query(c, "SELECT ai_gen('chat', 'hold')");
    wait_in_flight(&s);
    let terminated_at = Instant::now();
    admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    let (mut c, code, ended) = worker.join().unwrap();
    // The backend always sends FATAL 57P01 before it exits, but the client library may see
    // the socket close before it hands the error over ("connection closed"); the server log
    // then shows the FATAL of that backend.
    if code != "57P01" {
        assert_eq!(code, "connection closed");
        let log = server_log();
        assert!(
            log.lines().any(|l| l.contains(&format!("[{pid}]"))
                && l.contains("FATAL:  57P01: terminating connection due to administrator command")),
            "no FATAL 57P01 of backend {pid} in the server log"
        );
    }
    assert!(ended - terminated_at < LIMIT);
    assert!(c.is_closed() || c.is_valid(Duration::from_secs(1)).is_err());
    assert_request_closed(&s);
    // No crash and no restart: same postmaster, new sessions work.
    let again: String = admin.query_one("SELECT pg_postmaster_start_time()::text", &[]).unwrap().get(0);
    assert_eq!(again, started);
    let mut fresh = connect(&db);
    assert_eq!(
        one_text(&mut fresh, "SELECT ai_gen('chat', 'fine')").as_deref(),
        Some("Echo from qwen-plus: fine")
    );
}
