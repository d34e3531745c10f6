//! pgvector targets: vector(n) and halfvec(n) columns, pgvector in public and in a schema of
//! its own (off the search_path), a dimension mismatch, and cosine search over the results.
//!
//! scripts/test.sh builds pgvector from the vendored release when the system lacks it and
//! sets PG_BAILIAN_PGVECTOR; only when neither is possible are these tests skipped, loudly.

mod common;

use bailian_standin::embedding_for;
use common::*;
use postgres::Client;

const DOCS: [(i32, &str); 6] = [
    (1, "red apples and green apples"),
    (2, "the database stores rows"),
    (3, "apples grow on trees"),
    (4, "an index speeds up the database"),
    (5, "trees lose leaves in autumn"),
    (6, "postgres is a database"),
];

fn make_docs(c: &mut Client, columns: &str) {
    c.batch_execute(&format!("CREATE TABLE docs (id int PRIMARY KEY, body text, {columns})")).unwrap();
    for (id, body) in DOCS {
        c.execute("INSERT INTO docs (id, body) VALUES ($1, $2)", &[&id, &body]).unwrap();
    }
}

/// The ids of DOCS nearest to `query` by cosine distance, computed here from the vectors the
/// stand-in gives: what a search over correctly filled columns must return.
fn expected_nearest(query: &str, dim: usize, n: usize) -> Vec<i32> {
    let q = embedding_for(query, dim);
    let cosine = |v: &[f32]| {
        let dot: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
        let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
        1.0 - dot / (norm(v) * norm(&q))
    };
    let mut scored: Vec<(f32, i32)> =
        DOCS.iter().map(|(id, body)| (cosine(&embedding_for(body, dim)), *id)).collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    scored.into_iter().take(n).map(|(_, id)| id).collect()
}

fn nearest(c: &mut Client, sql: &str) -> Vec<i32> {
    c.query(sql, &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

#[test]
fn vector_and_halfvec_targets_with_pgvector_in_public() {
    let (mut c, db) = fresh_db("pgvector_public");
    if !pgvector_available(&mut c, "vector targets") {
        return;
    }
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute("CREATE EXTENSION vector").unwrap();
    make_docs(&mut c, "v vector(64), h halfvec(64), wrong vector(3)");
    let mut w = connect(&db);
    w.batch_execute("CALL ai_embed_column('docs', 'body', 'v', 'emb', batch_size => 4)").unwrap();
    w.batch_execute("CALL ai_embed_column('docs', 'body', 'h', 'emb')").unwrap();
    for row in c.query("SELECT body, v::real[], h::real[] FROM docs", &[]).unwrap() {
        let (body, v, h): (String, Vec<f32>, Vec<f32>) = (row.get(0), row.get(1), row.get(2));
        let want = embedding_for(&body, 64);
        assert_eq!(v, want, "{body}");
        // halfvec keeps 16 bits: equal to the vector within half precision.
        assert!(h.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-3), "{body}");
    }
    // A column of another dimension: a clear error before anything is sent.
    s.reset();
    let (code, msg) = error_of(w.batch_execute("CALL ai_embed_column('docs', 'body', 'wrong', 'emb')"));
    assert_eq!(code, "42804");
    assert_eq!(
        msg,
        "ai_embed_column: target column \"wrong\" holds 3 dimensions, but model \"emb\" returns 64"
    );
    assert_eq!(s.stats().requests, 0);
    // Cosine search over the filled column, the query embedded in the same SQL.
    let by_vector =
        nearest(&mut c, "SELECT id FROM docs ORDER BY v <=> ai_embed('emb', 'database')::vector LIMIT 3");
    assert_eq!(by_vector, expected_nearest("database", 64, 3));
    let by_halfvec =
        nearest(&mut c, "SELECT id FROM docs ORDER BY h <=> ai_embed('emb', 'database')::halfvec LIMIT 3");
    assert_eq!(by_halfvec, by_vector);
    // The scalar function assigns straight into a vector column.
    c.batch_execute("UPDATE docs SET v = ai_embed('emb', 'apples') WHERE id = 5").unwrap();
    let first =
        nearest(&mut c, "SELECT id FROM docs ORDER BY v <=> ai_embed('emb', 'apples')::vector LIMIT 1");
    assert_eq!(first, vec![5]);
}

#[test]
fn pgvector_in_a_schema_of_its_own() {
    let (mut c, db) = fresh_db("pgvector_schema");
    if !pgvector_available(&mut c, "vector targets") {
        return;
    }
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v3", ", params => '{\"dimension\": 128}'");
    c.batch_execute("CREATE SCHEMA ext; CREATE EXTENSION vector SCHEMA ext").unwrap();
    make_docs(&mut c, "v ext.vector(128), h ext.halfvec(128), open ext.vector");
    // Neither the job nor the search below has ext on its search_path.
    let mut w = connect(&db);
    w.batch_execute("CALL ai_embed_column('docs', 'body', 'v', 'emb')").unwrap();
    w.batch_execute("CALL ai_embed_column('docs', 'body', 'h', 'emb', batch_size => 2)").unwrap();
    // A vector column without a dimension takes the model's.
    w.batch_execute("CALL ai_embed_column('docs', 'body', 'open', 'emb')").unwrap();
    let filled: i64 = c
        .query_one(
            "SELECT count(*) FROM docs WHERE v IS NOT NULL AND h IS NOT NULL AND open IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(filled, 6);
    let by_vector = nearest(
        &mut c,
        "SELECT id FROM docs ORDER BY v OPERATOR(ext.<=>) ai_embed('emb', 'database')::ext.vector LIMIT 3",
    );
    assert_eq!(by_vector, expected_nearest("database", 128, 3));
    let row: Vec<f32> = c.query_one("SELECT v::real[] FROM docs WHERE id = 3", &[]).unwrap().get(0);
    assert_eq!(row, embedding_for("apples grow on trees", 128));
    c.batch_execute("ALTER TABLE docs ADD COLUMN small ext.vector(64)").unwrap();
    let (code, msg) = error_of(w.batch_execute("CALL ai_embed_column('docs', 'body', 'small', 'emb')"));
    assert_eq!(code, "42804", "{msg}");
}
