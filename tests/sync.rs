//! Syncs (`ai_sync_create`, `ai_sync_chunks`): columns kept current by triggers and the
//! background workers of the scripts' cluster (pg_bailian preloaded), and by private clusters
//! for what needs a crash, a restart or no preloading. Real workers, real HTTP to the stand-in.

mod common;

use bailian_standin::{Config, Fault};
use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

const FILL: Duration = Duration::from_secs(20);

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn docs(c: &mut Client, rows: i32) {
    c.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, other int DEFAULT 0, emb real[]);
         INSERT INTO docs (id, title, body) SELECT g, 'title ' || g, 'body of document ' || g FROM generate_series(1, {rows}) g;"
    ))
    .unwrap();
}

fn filled_all(c: &mut Client, sql_pending: &str) -> bool {
    wait_for(FILL, || count(c, sql_pending) == 0)
}

/// Embeddings the sync wrote equal what ai_embed gives for the same text now.
fn assert_current(c: &mut Client) {
    let wrong = count(
        c,
        "SELECT count(*) FROM docs WHERE body IS NOT NULL
            AND emb IS DISTINCT FROM ai_embed('emb', title || ' ' || body)",
    );
    assert_eq!(wrong, 0, "rows whose embedding is not that of their text");
}

fn drop_db(db: &str) {
    connect("postgres").batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).unwrap();
}

#[test]
fn a_sync_keeps_a_column_current() {
    let s = standin();
    let (mut c, db) = fresh_db("sync_basic");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    docs(&mut c, 40);
    c.batch_execute("UPDATE docs SET body = NULL WHERE id = 40").unwrap();
    let queued: i64 = c
        .query_one(
            "SELECT ai_sync_create('docs_emb', 'docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$,
                                   filter => 'body IS NOT NULL')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(queued, 39, "every row the filter keeps is queued, the one it does not is not");
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL AND body IS NOT NULL"));
    assert_current(&mut c);
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE id = 40 AND emb IS NOT NULL"), 0);

    // A change makes the value NULL in the changing transaction, never stale.
    let mut t = c.transaction().unwrap();
    t.batch_execute("UPDATE docs SET body = 'a new body' WHERE id = 1").unwrap();
    let inside: Option<Vec<f32>> = t.query_one("SELECT emb FROM docs WHERE id = 1", &[]).unwrap().get(0);
    assert!(inside.is_none(), "the changed row's embedding is NULL in the same transaction");
    t.commit().unwrap();
    let before = s.stats().embedding_requests;
    let started = Instant::now();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE id = 1 AND emb IS NULL"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "picked up within a second or so, took {took:?}");
    assert_current(&mut c);
    assert!(s.stats().embedding_requests > before);

    // Changes to columns the expression does not read, or to the same text, cost nothing.
    let before = s.stats().embedding_requests;
    c.batch_execute("UPDATE docs SET other = other + 1; UPDATE docs SET body = body WHERE id = 2").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(s.stats().embedding_requests, before, "no request for a change the expression does not read");
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL AND body IS NOT NULL"), 0);

    // New rows, including one that arrives with a value of its own, are filled.
    c.batch_execute(
        "INSERT INTO docs (id, title, body, emb) VALUES (41, 'new', 'row one', '{1,2,3}'), (42, 'new', 'row two', NULL)",
    )
    .unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE id IN (41, 42) AND emb IS NULL"));
    assert_current(&mut c);

    // A row that leaves the filter keeps no entry; a deleted row neither.
    c.batch_execute("DELETE FROM docs WHERE id = 3").unwrap();
    let view = c
        .query_one(
            "SELECT state, pending_rows, rows_filled, failed_rows, lag, owner::text FROM ai_syncs WHERE sync_name = 'docs_emb'",
            &[],
        )
        .unwrap();
    assert_eq!(view.get::<_, String>(0), "running");
    assert_eq!(view.get::<_, i64>(3), 0);
    assert!(view.get::<_, i64>(2) >= 42);
    assert_eq!(view.get::<_, String>(5), "postgres");
    assert!(wait_for(FILL, || count(&mut c, "SELECT count(*) FROM ai_sync_queue") == 0));

    // Paused: changes still make rows NULL and queue them, nothing fills them until resumed.
    c.batch_execute("SELECT ai_sync_pause('docs_emb'); UPDATE docs SET body = 'paused change' WHERE id = 5")
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE id = 5 AND emb IS NULL"), 1);
    assert_eq!(one_text(&mut c, "SELECT state FROM ai_syncs").as_deref(), Some("paused"));
    assert_eq!(count(&mut c, "SELECT pending_rows FROM ai_syncs"), 1);
    c.batch_execute("SELECT ai_sync_resume('docs_emb')").unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE id = 5 AND emb IS NULL"));

    // Dropped: triggers go, the column stays.
    c.batch_execute("SELECT ai_sync_drop('docs_emb')").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_syncs"), 0);
    c.batch_execute("UPDATE docs SET body = 'after drop' WHERE id = 6").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE id = 6 AND emb IS NULL"), 0);
    drop(c);
    drop_db(&db);
}

#[test]
fn failed_rows_are_listed_and_retried_on_resume() {
    let s = standin();
    let (mut c, db) = fresh_db("sync_failures");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}', max_retries => 0");
    docs(&mut c, 5);
    c.batch_execute(
        "SELECT ai_sync_create('f_emb', 'docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$)",
    )
    .unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    // Bailian refuses this one input for good (400): listed, not retried.
    s.script("poison text", vec![Fault::Status(400); 10]);
    c.batch_execute("INSERT INTO docs (id, title, body) VALUES (7, 'poison', 'text')").unwrap();
    assert!(wait_for(FILL, || count(&mut c, "SELECT count(*) FROM ai_sync_errors") == 1));
    let e = c.query_one("SELECT key, sqlstate, message FROM ai_sync_errors", &[]).unwrap();
    assert_eq!(e.get::<_, Vec<String>>(0), vec!["7".to_string()]);
    assert_eq!(e.get::<_, String>(1), "ZB400");
    assert_eq!(count(&mut c, "SELECT failed_rows FROM ai_syncs"), 1);
    let after = s.stats().embedding_requests;
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(s.stats().embedding_requests, after, "a row that failed for good is not sent again");
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_sync_queue"), 0);
    // Once the input is accepted, resuming retries it.
    s.script("poison text", vec![]);
    s.reset();
    let requeued: i64 = c.query_one("SELECT ai_sync_resume('f_emb')", &[]).unwrap().get(0);
    assert_eq!(requeued, 1);
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_sync_errors"), 0);
    assert_current(&mut c);
    drop(c);
    drop_db(&db);
}

#[test]
fn an_outage_backs_off_and_resumes_by_itself() {
    let s = standin();
    let (mut c, db) = fresh_db("sync_outage");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}', max_retries => 0");
    docs(&mut c, 3);
    c.batch_execute(
        "SELECT ai_sync_create('o_emb', 'docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$)",
    )
    .unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    s.configure(|cfg| cfg.fail_rate_500 = 1.0);
    let before = s.stats().requests;
    c.batch_execute(
        "INSERT INTO docs (id, title, body) SELECT g, 't', 'outage ' || g FROM generate_series(10, 19) g",
    )
    .unwrap();
    assert!(wait_for(FILL, || one_text(&mut c, "SELECT state FROM ai_syncs").as_deref() == Some("failing")));
    let (code, lag): (Option<String>, bool) = {
        let r = c.query_one("SELECT last_sqlstate, lag IS NOT NULL FROM ai_syncs", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert!(matches!(code.as_deref(), Some("ZB500" | "ZBR01")), "{code:?}");
    assert!(lag, "the lag shows while rows wait");
    std::thread::sleep(Duration::from_secs(4));
    let sent = s.stats().requests - before;
    assert!(sent <= 8, "backing off, not a busy loop: {sent} requests in about 5 s");
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_sync_errors"), 0, "an outage fails no row for good");
    assert_eq!(count(&mut c, "SELECT pending_rows FROM ai_syncs"), 10);
    s.configure(|cfg| cfg.fail_rate_500 = 0.0);
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"), "resumed by itself");
    assert!(wait_for(FILL, || one_text(&mut c, "SELECT state FROM ai_syncs").as_deref() == Some("running")));
    assert_current(&mut c);
    drop(c);
    drop_db(&db);
}

#[test]
fn bad_input_is_refused_before_anything_is_made() {
    let (mut c, db) = fresh_db("sync_bad_input");
    c.batch_execute(
        "CREATE TABLE nokey (id int, body text, emb real[]);
         CREATE TABLE t (id int PRIMARY KEY, body text, emb real[], g text GENERATED ALWAYS AS (body || '!') STORED);",
    )
    .unwrap();
    let cases = [
        ("SELECT ai_sync_create('a', 'nokey', 'emb', 'body')", "55000", "has no primary key"),
        ("SELECT ai_sync_create('a', 't', 'g', 'body')", "42804", "generated column"),
        ("SELECT ai_sync_create('a', 't', 'nope', 'body')", "42703", "does not exist"),
        ("SELECT ai_sync_create('a', 't', 'body', 'body ||| id')", "42883", "operator does not exist"),
        ("SELECT ai_sync_create('a', 't', 'body', 'upper(''x'')')", "22023", "reads no column"),
        ("SELECT ai_sync_create('a', 't', 'body', 't::text')", "22023", "whole row"),
        (
            "SELECT ai_sync_create('a', 't', 'body', 'body || ''x''')",
            "22023",
            "target column \"body\" itself",
        ),
        ("SELECT ai_sync_create('1a', 't', 'g', 'body')", "22023", "is not allowed"),
        ("SELECT ai_sync_create('a', 't', 'body', '')", "22023", "must not be empty"),
        (
            "SELECT ai_sync_create('a', 't', 'body', 'id::text', filter => 'id')",
            "42804",
            "filter must be a boolean",
        ),
    ];
    for (sql, code, message) in cases {
        let (got_code, got) = error_of(c.batch_execute(sql));
        assert_eq!(got_code, code, "{sql}: {got}");
        assert!(got.contains(message), "{sql}: {got}");
    }
    c.batch_execute("SELECT ai_sync_create('taken', 't', 'body', 'id::text')").unwrap();
    let (code, message) =
        error_of(c.batch_execute("SELECT ai_sync_create('taken', 't', 'body', 'id::text')"));
    assert_eq!(code, "22023");
    assert!(message.contains("already exists"), "{message}");
    c.batch_execute("SELECT ai_sync_drop('taken')").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_syncs"), 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('t'::regclass, 'nokey'::regclass)"),
        0
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_sync_queue"), 0);
    let (code, _) = error_of(c.batch_execute("SELECT ai_sync_pause('nothing')"));
    assert_eq!(code, "22023");
    drop(c);
    drop_db(&db);
}

#[test]
fn a_sync_runs_as_its_owner_and_no_one_else_changes_it() {
    let (mut c, db) = fresh_db("sync_roles");
    fresh_role(&mut c, "sync_writer", "");
    fresh_role(&mut c, "sync_reader", "");
    fresh_role(&mut c, "sync_other", "");
    c.batch_execute(
        "CREATE TABLE notes (id int PRIMARY KEY, body text, tag text);
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 5) g;
         GRANT SELECT, INSERT, UPDATE, TRIGGER ON notes TO sync_writer;
         GRANT SELECT ON notes TO sync_reader, sync_other;
         GRANT UPDATE ON notes TO sync_other;",
    )
    .unwrap();
    let mut reader = connect_as(&db, "sync_reader");
    let (code, message) =
        error_of(reader.batch_execute("SELECT ai_sync_create('r', 'notes', 'tag', 'body')"));
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("permission denied to update column \"tag\""), "{message}");
    // Updating is not enough: a sync puts triggers on the table, which needs TRIGGER.
    let mut other = connect_as(&db, "sync_other");
    let (code, message) = error_of(other.batch_execute("SELECT ai_sync_create('o', 'notes', 'tag', 'body')"));
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("permission denied to create triggers"), "{message}");

    let mut writer = connect_as(&db, "sync_writer");
    writer
        .batch_execute("SELECT ai_sync_create('w', 'notes', 'tag', $$current_user::text || ':' || body$$)")
        .unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM notes WHERE tag IS NULL"));
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM notes WHERE tag = 'sync_writer:' || body"),
        5,
        "the worker ran the expression as the role that made the sync"
    );
    // A superuser's change is filled as the owner too.
    c.batch_execute("UPDATE notes SET body = 'changed' WHERE id = 1").unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM notes WHERE tag IS NULL"));
    assert_eq!(
        one_text(&mut c, "SELECT tag FROM notes WHERE id = 1").as_deref(),
        Some("sync_writer:changed")
    );

    for sql in [
        "SELECT ai_sync_pause('w')",
        "SELECT ai_sync_drop('w')",
        "SELECT ai_sync_resume('w')",
        "CALL ai_sync_run('w')",
    ] {
        let (code, message) = error_of(other.batch_execute(sql));
        assert_eq!(code, "42501", "{sql}: {message}");
    }
    // The queue shows a role only rows of tables it may read.
    fresh_role(&mut c, "sync_stranger", "");
    writer.batch_execute("SELECT ai_sync_pause('w'); UPDATE notes SET body = 'queued' WHERE id = 2").unwrap();
    assert_eq!(count(&mut writer, "SELECT count(*) FROM ai_sync_queue"), 1);
    let mut stranger = connect_as(&db, "sync_stranger");
    assert_eq!(count(&mut stranger, "SELECT count(*) FROM ai_sync_queue"), 0);
    assert_eq!(count(&mut stranger, "SELECT count(*) FROM ai_syncs"), 0);
    let (code, _) = error_of(stranger.batch_execute(
        "INSERT INTO ai_sync_queue VALUES ('w', 'notes'::regclass, '{3}', now(), now(), NULL)",
    ));
    assert_eq!(code, "42501", "a role may not queue rows of a table it may not update");

    writer.batch_execute("SELECT ai_sync_resume('w')").unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM notes WHERE tag IS NULL"));
    // The owner's role dropped: the sync stops and says why.
    drop(writer);
    c.batch_execute("REVOKE ALL ON notes FROM sync_writer; DROP ROLE sync_writer; UPDATE notes SET body = 'orphan' WHERE id = 4")
        .unwrap();
    assert!(wait_for(FILL, || one_text(&mut c, "SELECT state FROM ai_syncs").as_deref() == Some("stopped")));
    let error = one_text(&mut c, "SELECT last_error FROM ai_syncs").unwrap_or_default();
    assert!(error.contains("sync_writer") && error.contains("no longer exists"), "{error}");
    drop((reader, other, stranger));
    drop_db(&db);
    let mut admin = connect("postgres");
    admin.batch_execute("DROP ROLE IF EXISTS sync_reader; DROP ROLE IF EXISTS sync_other; DROP ROLE IF EXISTS sync_stranger")
        .unwrap();
}

#[test]
fn dropping_or_altering_the_table_stops_the_sync() {
    let s = standin();
    let (mut c, db) = fresh_db("sync_ddl");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    docs(&mut c, 3);
    c.batch_execute(
        "CREATE TABLE other_docs (LIKE docs INCLUDING ALL);
         INSERT INTO other_docs SELECT * FROM docs;
         SELECT ai_sync_create('gone', 'docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$);
         SELECT ai_sync_create('altered', 'other_docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$);",
    )
    .unwrap();
    assert!(filled_all(&mut c, "SELECT (SELECT count(*) FROM docs WHERE emb IS NULL) + (SELECT count(*) FROM other_docs WHERE emb IS NULL)"));
    c.batch_execute("DROP TABLE docs; ALTER TABLE other_docs DROP COLUMN emb").unwrap();
    // Writes to the altered table go on; the sync stops with the reason.
    c.batch_execute(
        "INSERT INTO other_docs (id, title, body) VALUES (9, 'x', 'y'); UPDATE other_docs SET body = 'z'",
    )
    .unwrap();
    assert!(wait_for(FILL, || {
        count(&mut c, "SELECT count(*) FROM ai_syncs WHERE state = 'stopped' AND last_error IS NOT NULL") == 2
    }));
    let errors: Vec<(String, String)> = c
        .query("SELECT sync_name, last_error FROM ai_syncs ORDER BY 1", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect();
    assert!(errors[0].1.contains("emb"), "{errors:?}");
    assert!(errors[1].1.contains("dropped"), "{errors:?}");
    // Stopped means not tried again: the last run stays where it is.
    let last: String =
        one_text(&mut c, "SELECT string_agg(last_run::text, ',' ORDER BY sync_name) FROM ai_syncs").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        one_text(&mut c, "SELECT string_agg(last_run::text, ',' ORDER BY sync_name) FROM ai_syncs").unwrap(),
        last
    );
    let (code, _) = error_of(c.batch_execute("SELECT ai_sync_resume('gone')"));
    assert_eq!(code, "55000");
    c.batch_execute("SELECT ai_sync_drop('gone'); SELECT ai_sync_drop('altered')").unwrap();
    drop(c);
    drop_db(&db);
}

#[test]
fn chunks_follow_their_documents() {
    let s = standin();
    let (mut c, db) = fresh_db("sync_chunks");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(
        "CREATE TABLE articles (id bigint PRIMARY KEY, title text, body text, views int DEFAULT 0);
         INSERT INTO articles (id, title, body)
         SELECT g, 'Article ' || g, repeat('Sentence number ' || g || ' about databases. ', 12) FROM generate_series(1, 4) g;",
    )
    .unwrap();
    let made: i64 = c
        .query_one(
            "SELECT ai_sync_chunks('article_chunks', 'articles', $$title || E'\\n\\n' || body$$, 'article_chunks',
                                   $$ai_embed('emb', chunk)$$, chunk_size => 120, overlap => 20)",
            &[],
        )
        .unwrap()
        .get(0);
    let expected =
        "SELECT count(*) FROM articles a, unnest(ai_chunk(a.title || E'\\n\\n' || a.body, 120, 20))";
    assert_eq!(made, count(&mut c, expected));
    let same = "SELECT count(*) FROM (
                  SELECT a.id, c.n, c.piece FROM articles a,
                         unnest(ai_chunk(a.title || E'\\n\\n' || a.body, 120, 20)) WITH ORDINALITY c(piece, n)
                  EXCEPT SELECT id, chunk_no, chunk FROM article_chunks) d";
    assert_eq!(count(&mut c, same), 0, "exactly ai_chunk's pieces");
    assert!(filled_all(&mut c, "SELECT count(*) FROM article_chunks WHERE embedding IS NULL"));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM article_chunks WHERE embedding IS DISTINCT FROM ai_embed('emb', chunk)"
        ),
        0
    );
    // New content: replaced in the same transaction, never old chunks beside new text.
    let mut t = c.transaction().unwrap();
    t.batch_execute("UPDATE articles SET body = 'Short and new.' WHERE id = 2").unwrap();
    let rows = t.query("SELECT chunk, embedding IS NULL FROM article_chunks WHERE id = 2", &[]).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "Article 2\n\nShort and new.");
    assert!(rows[0].get::<_, bool>(1));
    t.commit().unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM article_chunks WHERE embedding IS NULL"));
    // A change the content does not read touches no chunk; new and deleted documents do.
    let before = s.stats().embedding_requests;
    c.batch_execute("UPDATE articles SET views = views + 1").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(s.stats().embedding_requests, before);
    c.batch_execute(
        "INSERT INTO articles (id, title, body) VALUES (5, 'Fifth', 'One more article.'); DELETE FROM articles WHERE id = 1",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM article_chunks WHERE id = 1"), 0);
    assert_eq!(count(&mut c, same), 0);
    assert!(filled_all(&mut c, "SELECT count(*) FROM article_chunks WHERE embedding IS NULL"));
    c.batch_execute("SELECT ai_sync_drop('article_chunks')").unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'articles'::regclass AND NOT tgisinternal"
        ),
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_proc WHERE proname = 'ai_sync_chunks_article_chunks'"),
        0
    );
    drop(c);
    drop_db(&db);
}

#[test]
fn syncs_survive_dump_and_restore() {
    let s = standin();
    let (mut c, db) = fresh_db("sync_dump");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    docs(&mut c, 6);
    c.batch_execute(
        "SELECT ai_sync_create('d_emb', 'docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$)",
    )
    .unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    // One row left to fill at dump time: paused, so it is still pending.
    c.batch_execute("SELECT ai_sync_pause('d_emb'); UPDATE docs SET body = 'pending at dump' WHERE id = 6")
        .unwrap();
    let dump = pg_dump(&db, "postgres");
    let (restored_c, restored) = fresh_bare_db("sync_dump_restored");
    drop(restored_c);
    let before = s.stats().embedding_requests;
    restore_plain(&restored, &dump);
    let mut r = connect(&restored);
    assert_eq!(
        one_text(&mut r, "SELECT sync_name || ' ' || state FROM ai_syncs").as_deref(),
        Some("d_emb paused")
    );
    assert_eq!(
        count(&mut r, "SELECT count(*) FROM docs WHERE emb IS NOT NULL"),
        5,
        "values come back as dumped"
    );
    r.batch_execute(
        "SELECT ai_sync_resume('d_emb'); INSERT INTO docs (id, title, body) VALUES (7, 'after', 'restore')",
    )
    .unwrap();
    assert!(filled_all(&mut r, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    assert_eq!(
        s.stats().embedding_requests - before,
        1,
        "only the two rows to fill were sent, in one request"
    );
    drop((c, r));
    drop_db(&db);
    drop_db(&restored);
}

/// A private cluster with the stand-in's host allowed, and the model and a synced table.
fn private(name: &str, conf: &str, s: &bailian_standin::Standin) -> (PrivateCluster, Client) {
    let cluster = PrivateCluster::start(name, conf);
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_bailian").unwrap();
    deploy(&mut c, s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    docs(&mut c, 20);
    (cluster, c)
}

#[test]
fn workers_come_back_after_a_crash_and_a_restart() {
    let s = standin_with(Config { latency_ms: 50, ..Config::default() });
    let (cluster, mut c) = private("sync_crash", PRELOAD_CONF, &s);
    c.batch_execute(
        "SELECT ai_sync_create('c_emb', 'docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$)",
    )
    .unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    let worker = || -> Option<i32> {
        let mut c = cluster.connect("postgres");
        c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_bailian sync worker'", &[])
            .ok()
            .flatten()
            .map(|r| r.get(0))
    };
    // Killed hard: the postmaster restarts the cluster, and the worker goes on.
    let pid = worker().expect("a sync worker runs");
    c.batch_execute("INSERT INTO docs (id, title, body) SELECT g, 't', 'after crash ' || g FROM generate_series(100, 140) g")
        .unwrap();
    run_program(std::process::Command::new("kill").args(["-9", &pid.to_string()]));
    drop(c);
    // Connect only once the postmaster has begun its crash restart: a session opened before
    // it noticed the worker's death would be ended by it.
    assert!(wait_for(Duration::from_secs(30), || cluster.log().contains("all server processes terminated")));
    let mut c = None;
    assert!(wait_for(Duration::from_secs(30), || {
        c = cluster
            .conn_string("postgres", "postgres")
            .parse::<postgres::Config>()
            .ok()
            .and_then(|cfg| cfg.connect(postgres::NoTls).ok());
        c.is_some()
    }));
    let mut c = c.unwrap();
    assert!(
        filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"),
        "pending rows filled after the crash; log:\n{}",
        cluster.log()
    );
    assert!(worker().is_some_and(|p| p != pid));
    // Stopped with rows queued (paused, so the worker cannot fill them first): they are filled
    // after the restart.
    c.batch_execute("SELECT ai_sync_pause('c_emb'); UPDATE docs SET body = body || ' again' WHERE id <= 5")
        .unwrap();
    drop(c);
    cluster.pg_ctl(&["-m", "fast", "restart"]);
    let mut c = cluster.connect("postgres");
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"), 5);
    c.batch_execute("SELECT ai_sync_resume('c_emb')").unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    assert_current(&mut c);
    // A worker waiting on a slow answer does not hold up a fast shutdown: SIGTERM ends it
    // in the middle of its requests.
    s.configure(|cfg| cfg.latency_ms = 60_000);
    c.batch_execute("INSERT INTO docs (id, title, body) VALUES (500, 'slow', 'answer')").unwrap();
    // The worker picks the row up within a second and waits on its answer.
    std::thread::sleep(Duration::from_millis(1500));
    drop(c);
    let started = Instant::now();
    cluster.pg_ctl(&["-m", "fast", "stop"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "fast shutdown took {took:?}; log:\n{}", cluster.log());
}

#[test]
fn without_preloading_ai_sync_run_fills_in_the_session() {
    let s = standin();
    let (cluster, _) = private("sync_nopreload", "pg_bailian.allowed_hosts = 'http://127.0.0.1'\n", &s);
    let (mut c, seen) = cluster.connect_collecting("postgres");
    c.batch_execute(
        "SELECT ai_sync_create('n_emb', 'docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$)",
    )
    .unwrap();
    let said = notices(&seen);
    assert!(said.contains("shared_preload_libraries") && said.contains("ai_sync_run"), "{said}");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"),
        20,
        "no worker without preloading"
    );
    c.batch_execute("CALL ai_sync_run('n_emb')").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"), 0);
    assert_current(&mut c);
    c.batch_execute("UPDATE docs SET body = 'changed' WHERE id = 3").unwrap();
    c.batch_execute("CALL ai_sync_run('n_emb')").unwrap();
    assert_current(&mut c);
    let (code, _) = error_of(c.batch_execute("BEGIN; CALL ai_sync_run('n_emb'); COMMIT"));
    assert_eq!(code, "2D000");
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_spent_budget_makes_the_sync_wait() {
    let s = standin();
    let (mut c, db) = fresh_db("sync_budget");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    docs(&mut c, 2);
    c.batch_execute(
        "SELECT ai_sync_create('b_emb', 'docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$)",
    )
    .unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    // A budget of one token: the next request is let through and spends it, every call after
    // that is refused (ZBB01).
    c.batch_execute("SELECT ai_set_budget(NULL, 'emb', 1, 'tokens')").unwrap();
    c.batch_execute("INSERT INTO docs (id, title, body) VALUES (9, 'spends', 'the budget')").unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    c.batch_execute(
        "INSERT INTO docs (id, title, body) SELECT g, 'over', 'budget ' || g FROM generate_series(10, 14) g",
    )
    .unwrap();
    assert!(wait_for(FILL, || {
        one_text(&mut c, "SELECT state FROM ai_syncs").as_deref() == Some("waiting for budget")
    }));
    assert_eq!(one_text(&mut c, "SELECT last_sqlstate FROM ai_syncs").as_deref(), Some("ZBB01"));
    assert_eq!(count(&mut c, "SELECT pending_rows FROM ai_syncs"), 5, "the rows wait, none failed");
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_sync_errors"), 0);
    c.batch_execute("SELECT ai_drop_budget(NULL, 'emb'); SELECT ai_sync_resume('b_emb')").unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    assert_current(&mut c);
    drop(c);
    drop_db(&db);
}

#[test]
fn partitioned_tables_and_changed_keys() {
    let s = standin();
    let (mut c, db) = fresh_db("sync_partitions");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, other int DEFAULT 0, emb real[]) PARTITION BY RANGE (id);
         CREATE TABLE docs_low PARTITION OF docs FOR VALUES FROM (0) TO (100);
         CREATE TABLE docs_high PARTITION OF docs FOR VALUES FROM (100) TO (10000);
         INSERT INTO docs (id, title, body) VALUES (1, 'a', 'low one'), (150, 'b', 'high one');
         SELECT ai_sync_create('p_emb', 'docs', 'emb', $$ai_embed('emb', title || ' ' || body)$$);",
    )
    .unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    c.batch_execute("INSERT INTO docs (id, title, body) VALUES (2, 'c', 'low two'), (200, 'd', 'high two')")
        .unwrap();
    assert!(
        filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"),
        "rows of every partition are filled"
    );
    assert_current(&mut c);
    // A pending row whose key changes is filled under its new key (here across partitions).
    c.batch_execute("SELECT ai_sync_pause('p_emb'); UPDATE docs SET body = 'moved' WHERE id = 2; UPDATE docs SET id = 300 WHERE id = 2")
        .unwrap();
    c.batch_execute("SELECT ai_sync_resume('p_emb')").unwrap();
    assert!(filled_all(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"));
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE id = 300 AND emb IS NOT NULL"), 1);
    assert_current(&mut c);
    assert!(wait_for(FILL, || count(&mut c, "SELECT count(*) FROM ai_sync_queue") == 0));
    drop(c);
    drop_db(&db);
}
