//! A backend waiting on the network services every interrupt PostgreSQL sends it, not only
//! cancel and terminate: cluster-wide operations that wait for all backends go on.

mod common;

use bailian_standin::Fault;
use common::*;
use std::time::{Duration, Instant};

/// Starts `sql` on `c` in a thread and waits until the stand-in holds its request.
fn hold(
    mut c: postgres::Client,
    s: &bailian_standin::Standin,
    sql: &'static str,
) -> std::thread::JoinHandle<Result<(), postgres::Error>> {
    let worker = std::thread::spawn(move || c.batch_execute(sql));
    assert!(wait_for(Duration::from_secs(5), || s.stats().in_flight == 1), "the request never arrived");
    worker
}

#[test]
fn drop_database_does_not_wait_for_a_held_request() {
    let (mut c, _) = fresh_db("stall_dropdb");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", ", timeout => 60");
    s.script("hold for 30 s", vec![Fault::Delay(30_000)]);
    let mut admin = connect("postgres");
    admin.batch_execute("DROP DATABASE IF EXISTS e2e_stall_victim").unwrap();
    admin.batch_execute("CREATE DATABASE e2e_stall_victim").unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let worker = hold(c, &s, "SELECT ai_gen('chat', 'hold for 30 s')");

    // DROP DATABASE waits until every backend has absorbed a procsignal barrier. It also
    // forces a checkpoint: flushed first, so that what is timed is the wait for backends,
    // not the writing of buffers other tests dirtied.
    admin.batch_execute("CHECKPOINT").unwrap();
    let start = Instant::now();
    admin.batch_execute("DROP DATABASE e2e_stall_victim").unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "DROP DATABASE took {took:?} while a request was held");

    // pg_log_backend_memory_contexts is answered too (the log shows it at once).
    let before = server_log().len();
    let asked: bool = admin.query_one("SELECT pg_log_backend_memory_contexts($1)", &[&pid]).unwrap().get(0);
    assert!(asked);
    let marker = format!("logging memory contexts of PID {pid}");
    assert!(
        wait_for(Duration::from_secs(1), || server_log()[before..].contains(&marker)),
        "the waiting backend did not log its memory contexts"
    );

    // The request was never disturbed: it is still held, and a cancel still ends it.
    assert_eq!(s.stats().in_flight, 1);
    assert_eq!(s.stats().aborted, 0);
    admin.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let code =
        worker.join().unwrap().err().and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
    assert_eq!(code.as_deref(), Some("57014"));
    assert!(wait_for(Duration::from_secs(1), || s.stats().in_flight == 0), "the request outlived the cancel");
}

/// The same while a column job keeps many requests in flight.
#[test]
fn drop_database_does_not_wait_for_a_column_job() {
    let (mut c, db) = fresh_db("stall_column");
    let s = standin_with(bailian_standin::Config { latency_ms: 5_000, ..Default::default() });
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs SELECT g, 'doc ' || g, NULL FROM generate_series(1, 400) g",
    )
    .unwrap();
    let mut admin = connect("postgres");
    admin.batch_execute("DROP DATABASE IF EXISTS e2e_stall_victim2").unwrap();
    admin.batch_execute("CREATE DATABASE e2e_stall_victim2").unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let worker =
        std::thread::spawn(move || c.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb')"));
    assert!(
        wait_for(Duration::from_secs(5), || s.stats().in_flight == 16),
        "the job never filled its window"
    );
    admin.batch_execute("CHECKPOINT").unwrap();
    let start = Instant::now();
    admin.batch_execute("DROP DATABASE e2e_stall_victim2").unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "DROP DATABASE took {took:?} while a column job waited");
    connect(&db).execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    assert!(worker.join().unwrap().is_err());
    assert!(wait_for(Duration::from_secs(1), || s.stats().in_flight == 0));
}

/// A backend waiting on the network exits when its postmaster dies, as PostgreSQL's own waits
/// do: an orphan would otherwise go on for the whole timeout, and keep a new postmaster from
/// starting. Run on a private cluster, made for this test and killed by it.
#[test]
fn a_waiting_backend_exits_when_the_postmaster_dies() {
    let cluster = PrivateCluster::start("pmdeath", "");
    let s = standin();
    s.script("hold", vec![Fault::Hang]);
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_bailian").unwrap();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    let backend: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let worker = hold(c, &s, "SELECT ai_gen('chat', 'hold')");

    let postmaster = cluster.postmaster_pid().expect("the postmaster runs");
    let killed = std::process::Command::new("kill").args(["-9", &postmaster.to_string()]).status();
    assert!(killed.unwrap().success());
    // Its waits look every 100 ms; 5 s leaves room for a loaded machine (the held request would
    // keep it for its whole timeout). An exited process not yet reaped by its new parent is
    // gone too.
    let gone = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{backend}/stat")).map_or(true, |stat| {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    });
    assert!(gone, "the backend outlived its postmaster by 5 s");
    assert!(wait_for(Duration::from_secs(1), || s.stats().in_flight == 0), "its request is still open");
    assert!(worker.join().unwrap().is_err());
}
