//! No literal key reaches the server log or pg_stat_activity, whoever raises the error during
//! ai_deploy_model: PostgreSQL itself (a read-only transaction, a statement or lock timeout, a
//! cancel) as much as the extension.

mod common;

use common::*;
use std::time::Duration;

/// Log lines written since `from` (a byte offset of the log).
fn log_since(from: usize) -> String {
    server_log()[from..].to_string()
}

fn assert_no_key(log: &str, secret: &str) {
    let hits: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
    assert!(hits.is_empty(), "the server log shows a key:\n{}", hits.join("\n"));
}

/// Every error of PostgreSQL's own during ai_deploy_model: logged, without the statement.
#[test]
fn postgres_errors_during_deploy_log_no_statement() {
    let (mut c, db) = fresh_db("key_log_errors");
    let from = server_log().len();
    let secret = |tag: &str| key(&format!("keylog{tag}"));

    // A read-only transaction: the catalog write fails inside the function.
    let ro = secret("ro");
    c.batch_execute("BEGIN READ ONLY").unwrap();
    let (code, _) = error_of(c.batch_execute(&format!("SELECT ai_deploy_model('ro', 'qwen-plus', '{ro}')")));
    assert_eq!(code, "25006");
    c.batch_execute("ROLLBACK").unwrap();

    // A lock held on the catalog makes the deploy wait: statement_timeout, lock_timeout and a
    // cancel each end it from inside the function.
    let mut holder = connect(&db);
    holder.batch_execute("BEGIN; LOCK TABLE bailian.models IN ACCESS EXCLUSIVE MODE").unwrap();
    let st = secret("st");
    c.batch_execute("SET statement_timeout = '300ms'").unwrap();
    let (code, _) = error_of(c.batch_execute(&format!("SELECT ai_deploy_model('st', 'qwen-plus', '{st}')")));
    assert_eq!(code, "57014");
    c.batch_execute("RESET statement_timeout; SET lock_timeout = '300ms'").unwrap();
    let lt = secret("lt");
    let (code, _) = error_of(c.batch_execute(&format!("SELECT ai_deploy_model('lt', 'qwen-plus', '{lt}')")));
    assert_eq!(code, "55P03");
    c.batch_execute("RESET lock_timeout").unwrap();
    let cancel = secret("cancel");
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let sql = format!("SELECT ai_deploy_model('cancel', 'qwen-plus', '{cancel}')");
    let worker = std::thread::spawn(move || c.batch_execute(&sql).map(|_| c));
    let mut admin = connect(&db);
    assert!(wait_for(Duration::from_secs(5), || {
        admin
            .query_one("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    }));
    admin.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let (code, _) = error_of(worker.join().unwrap());
    assert_eq!(code, "57014");
    holder.batch_execute("ROLLBACK").unwrap();

    // Not vacuous: each error is in the log.
    let log = {
        assert!(wait_for(Duration::from_secs(3), || log_since(from)
            .contains("canceling statement due to user request")));
        log_since(from)
    };
    for expected in [
        "in a read-only transaction",
        "canceling statement due to statement timeout",
        "canceling statement due to lock timeout",
        "canceling statement due to user request",
    ] {
        let line = log.lines().find(|l| l.contains(expected) && l.contains("e2e_key_log_errors"));
        assert!(line.is_some(), "the log lacks {expected:?}:\n{log}");
    }
    for secret in [&ro, &st, &lt, &cancel] {
        assert_no_key(&log, &secret[3..]);
    }
    let statements: Vec<&str> =
        log.lines().filter(|l| l.contains("STATEMENT:") && l.contains("ai_deploy_model")).collect();
    assert!(statements.is_empty(), "a deploy statement was logged:\n{}", statements.join("\n"));
}

/// Lines PostgreSQL writes for any statement (log_statement, log_min_duration_statement) and
/// pg_stat_activity's text show a key only as its hint.
#[test]
fn statement_logging_and_activity_show_only_the_hint() {
    let (mut c, db) = fresh_db("key_log_statements");
    let s = standin();
    // The library is loaded in this session before the logged statement (the first statement
    // of a session is logged before anything of the extension runs; see the README).
    c.batch_execute("SELECT count(*) FROM ai_supported_models()").unwrap();
    let from = server_log().len();
    c.batch_execute("SET log_statement = 'all'; SET log_min_duration_statement = 0").unwrap();
    let secret = key("keylogstatement");
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('logged', 'qwen-plus', '{secret}', base_url => '{}')",
        s.base_url()
    ))
    .unwrap();
    // A statement that fails to parse its arguments (bad jsonb) before the function runs.
    let parse = key("keylogparse");
    let (code, _) = error_of(c.batch_execute(&format!(
        "SELECT ai_deploy_model('bad', 'qwen-plus', '{parse}', params => '{{not json')"
    )));
    assert_eq!(code, "22P02");
    c.batch_execute("RESET log_statement; RESET log_min_duration_statement").unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    c.batch_execute(&format!("SELECT ai_deploy_model('idle', 'qwen-plus', '{}')", key("keylogidle")))
        .unwrap();

    assert!(
        wait_for(Duration::from_secs(3), || log_since(from).contains("invalid input syntax for type json"))
    );
    let log = log_since(from);
    assert!(
        log.lines()
            .any(|l| l.contains("statement: SELECT ai_deploy_model('logged'") && l.contains("sk-...0000")),
        "log_statement's line is there, with the hint:\n{log}"
    );
    assert_no_key(&log, &secret[3..]);
    assert_no_key(&log, &parse[3..]);

    // The session is idle; its last query stays in pg_stat_activity, without the key.
    let query: String =
        connect(&db).query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid]).unwrap().get(0);
    assert!(query.starts_with("SELECT ai_deploy_model('idle', 'qwen-plus', 'sk-...0000')"), "{query}");
}
