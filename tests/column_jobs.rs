//! Column jobs survive bad rows and share work: a row whose write fails keeps NULL and is
//! reported with its reason, rows another transaction holds are skipped and reported, keys of
//! any shape work, and sessions filling the same column split the rows between them.

mod common;

use bailian_standin::{embedding_for, Config};
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Writes that fail for any reason cost their row only, and the next CALL does not fail on
/// them either.
#[test]
fn rows_whose_write_fails_keep_null_and_are_reported() {
    let (mut c, db) = fresh_db("jobs_bad_rows");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    // Answers are "Echo from qwen-plus: <body>" (21 + body characters).
    c.batch_execute(
        "CREATE DOMAIN short_answer AS varchar(60) CHECK (VALUE NOT LIKE '%domain-bad%');
         CREATE TABLE docs (
             id int PRIMARY KEY,
             body text,
             answer short_answer CHECK (answer NOT LIKE '%check-bad%'),
             emb real[]);
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.body LIKE '%trigger-bad%' THEN RAISE EXCEPTION 'row % refused by trigger', NEW.id; END IF;
             RETURN NEW;
         END $$;
         INSERT INTO docs SELECT g, 'fine ' || g, NULL, NULL FROM generate_series(1, 40) g;
         UPDATE docs SET body = 'much too long for sixty characters once echoed back ' || id WHERE id = 5;
         UPDATE docs SET body = 'check-bad ' || id WHERE id = 12;
         UPDATE docs SET body = 'domain-bad ' || id WHERE id = 21;
         UPDATE docs SET body = 'trigger-bad ' || id WHERE id = 33;
         CREATE TRIGGER refuse BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .unwrap();
    let (mut w, seen) = connect_collecting_as(&db, "postgres");
    w.batch_execute("CALL ai_gen_column('docs', 'body', 'answer', 'chat', batch_size => 7)").unwrap();
    let n = notices(&seen);
    for (id, reason) in [
        (5, "22001: value too long for type character varying(60)"),
        (12, "23514: new row for relation \"docs\" violates check constraint \"docs_answer_check\""),
        (21, "23514: value for domain short_answer violates check constraint \"short_answer_check\""),
        (33, "P0001: row 33 refused by trigger"),
    ] {
        assert!(
            n.contains(&format!("WARNING: ai_gen_column: row (id)=({id}) failed: {reason}")),
            "{id}:\n{n}"
        );
    }
    assert!(n.contains("finished in") && n.contains(": 36 filled, 4 failed"), "{n}");
    let nulls: Vec<i32> = c
        .query("SELECT id FROM docs WHERE answer IS NULL ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(nulls, vec![5, 12, 21, 33]);
    let answer: String = c.query_one("SELECT answer FROM docs WHERE id = 6", &[]).unwrap().get(0);
    assert_eq!(answer, "Echo from qwen-plus: fine 6");

    // Again: the same four fail the same way, and nothing else changes.
    seen.lock().unwrap().clear();
    w.batch_execute("CALL ai_gen_column('docs', 'body', 'answer', 'chat')").unwrap();
    assert!(notices(&seen).contains(": 0 filled, 4 failed"), "{}", notices(&seen));

    // Embeddings: a domain the vector does not satisfy, for one row.
    c.batch_execute(
        "CREATE DOMAIN small_vector AS real[] CHECK (VALUE[1] < 0.5);
         CREATE TABLE vecs (id int PRIMARY KEY, body text, emb small_vector);
         INSERT INTO vecs SELECT g, 'text ' || g, NULL FROM generate_series(1, 30) g",
    )
    .unwrap();
    let refused: Vec<i32> = (1..=30).filter(|i| embedding_for(&format!("text {i}"), 64)[0] >= 0.5).collect();
    seen.lock().unwrap().clear();
    w.batch_execute("CALL ai_embed_column('vecs', 'body', 'emb', 'emb', batch_size => 8)").unwrap();
    let n = notices(&seen);
    assert!(
        n.contains(&format!("{} filled, {} failed", 30 - refused.len(), refused.len())),
        "{refused:?}\n{n}"
    );
    let filled: i64 = c.query_one("SELECT count(emb) FROM vecs", &[]).unwrap().get(0);
    assert_eq!(filled as usize, 30 - refused.len());
}

/// Rows another transaction holds are not waited for: skipped, counted and reported by key,
/// and filled by a later CALL.
#[test]
fn rows_locked_by_another_transaction_are_skipped_and_reported() {
    let (mut c, db) = fresh_db("jobs_locked");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs SELECT g, 'doc ' || g, NULL FROM generate_series(1, 100) g",
    )
    .unwrap();
    let mut holder = connect(&db);
    holder.batch_execute("BEGIN; SELECT * FROM docs WHERE id IN (5, 6, 70) FOR UPDATE").unwrap();
    let (mut w, seen) = connect_collecting_as(&db, "postgres");
    let start = Instant::now();
    w.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 30)").unwrap();
    assert!(start.elapsed() < Duration::from_secs(10), "the job waited for the locks");
    let n = notices(&seen);
    assert!(n.contains("97 filled, 0 failed, 0 skipped, 3 locked by other transactions"), "{n}");
    assert!(
        n.contains("WARNING: ai_embed_column: 3 rows were skipped because another transaction holds them locked ((id)=(5), (6), (70))"),
        "{n}"
    );
    assert_eq!(s.stats().inputs, 97, "nothing is sent for a locked row");
    holder.batch_execute("COMMIT").unwrap();
    w.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb')").unwrap();
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, 100);
}

/// Keys of every shape: composite, text, uuid, with INCLUDE columns (which may be NULL: they
/// are not part of the key), a partitioned table, char(n) and bit(n) (whose casts need the
/// typmod), floats (which must print in full to name their row again).
#[test]
fn primary_keys_of_any_shape() {
    let (mut c, db) = fresh_db("jobs_key_shapes");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(
        "CREATE TABLE composite (region text, n int, body text, emb real[], PRIMARY KEY (region, n));
         INSERT INTO composite SELECT r, g, r || ' item ' || g, NULL
           FROM unnest(ARRAY['north', 'south', 'Zeta', 'alpha']) r, generate_series(1, 9) g;
         CREATE TABLE texty (code text PRIMARY KEY, body text, emb real[]);
         INSERT INTO texty SELECT 'k' || g, 'text row ' || g, NULL FROM generate_series(1, 31) g;
         CREATE TABLE uuids (id uuid PRIMARY KEY, body text, emb real[]);
         INSERT INTO uuids SELECT md5(g::text)::uuid, 'uuid row ' || g, NULL FROM generate_series(1, 23) g;
         CREATE TABLE included (id int, extra text, body text, emb real[], PRIMARY KEY (id) INCLUDE (extra));
         INSERT INTO included SELECT g, CASE WHEN g % 3 > 0 THEN 'x' || (g % 3) END, 'included row ' || g, NULL
           FROM generate_series(1, 25) g;
         CREATE TABLE parted (id bigint, day date, body text, emb real[], PRIMARY KEY (day, id)) PARTITION BY RANGE (day);
         CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
         CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
         INSERT INTO parted SELECT g, date '2026-01-20' + (g % 20), 'parted row ' || g, NULL FROM generate_series(1, 27) g;
         CREATE TABLE chars (code char(10) PRIMARY KEY, body text, emb real[]);
         INSERT INTO chars SELECT 'ORD' || lpad(g::text, 7, '0'), 'char row ' || g, NULL FROM generate_series(1, 19) g;
         CREATE TABLE bits (b bit(8) PRIMARY KEY, body text, emb real[]);
         INSERT INTO bits SELECT g::bit(8), 'bit row ' || g, NULL FROM generate_series(1, 17) g;
         CREATE TABLE floats (x float8 PRIMARY KEY, body text, emb real[]);
         INSERT INTO floats SELECT 1.0 / g, 'float row ' || g, NULL FROM generate_series(1, 21) g;",
    )
    .unwrap();
    let mut w = connect(&db);
    // A session that prints floats rounded: the job must still find its rows by key.
    w.batch_execute("SET extra_float_digits = 0").unwrap();
    for (table, rows) in [
        ("composite", 36),
        ("texty", 31),
        ("uuids", 23),
        ("included", 25),
        ("parted", 27),
        ("chars", 19),
        ("bits", 17),
        ("floats", 21),
    ] {
        s.reset();
        w.batch_execute(&format!("CALL ai_embed_column('{table}', 'body', 'emb', 'emb', batch_size => 4)"))
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        let stored = c.query(&format!("SELECT body, emb FROM {table}"), &[]).unwrap();
        assert_eq!(stored.len(), rows);
        for row in &stored {
            let (body, emb): (String, Option<Vec<f32>>) = (row.get(0), row.get(1));
            assert_eq!(emb.as_deref(), Some(&embedding_for(&body, 64)[..]), "{table}: {body}");
        }
        assert_eq!(s.stats().inputs, rows as u64, "{table}: each row sent once");
    }
}

/// Several sessions on the same column split the rows: every row is sent once in all.
#[test]
fn sessions_on_the_same_column_share_the_work() {
    let (mut c, db) = fresh_db("jobs_shared");
    let s = standin_with(Config { latency_ms: 40, ..Config::default() });
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs SELECT g, 'shared doc ' || g, NULL FROM generate_series(1, 3000) g",
    )
    .unwrap();
    let jobs: Vec<_> = (0..3)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || {
                let (mut w, seen) = connect_collecting_as(&db, "postgres");
                std::thread::sleep(Duration::from_millis(150 * i));
                w.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 200)")
                    .unwrap();
                let finished =
                    notices(&seen).lines().find(|l| l.contains("finished in")).unwrap().to_string();
                let filled: usize =
                    finished.split(": ").nth(3).unwrap().split(' ').next().unwrap().parse().unwrap();
                (filled, finished)
            })
        })
        .collect();
    let results: Vec<(usize, String)> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, 3000, "{results:#?}");
    assert_eq!(results.iter().map(|r| r.0).sum::<usize>(), 3000, "{results:#?}");
    assert!(results.iter().all(|r| r.0 > 0), "every session did some of the work: {results:#?}");
    let mut sent: HashMap<String, usize> = HashMap::new();
    for r in s.requests().iter().filter(|r| r.status == 200) {
        for input in &r.inputs {
            *sent.entry(input.clone()).or_default() += 1;
        }
    }
    let twice: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(s.stats().inputs, 3000, "no more requests than rows");
    for r in s.requests().iter().filter(|r| r.status == 200) {
        for input in &r.inputs {
            let emb: Vec<f32> = c.query_one("SELECT emb FROM docs WHERE body = $1", &[input]).unwrap().get(0);
            assert_eq!(emb, embedding_for(input, 64));
        }
    }
}
