//! Paying less: identical calls of one statement or job are sent once and every row that asked
//! gets the answer, counted in ai_usage as shared calls with what they would have cost.

mod common;

use bailian_standin::{embedding_for, Config, Fault, Standin};
use common::plans::*;
use common::*;
use postgres::Client;

/// 2,000 rows holding 20 distinct texts (1%), 64-dimension embeddings.
fn make_docs(c: &mut Client, rows: i32, distinct: i32) {
    c.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[], answer text);
         INSERT INTO docs (id, body) SELECT g, 'text number ' || (g % {distinct}) FROM generate_series(1, {rows}) g;
         ANALYZE docs"
    ))
    .unwrap();
}

/// Pg_bailian ships no embedding prices (seed 002 has none): the pricing page's 0.5 yuan per
/// million tokens (research S12), as a DBA would set it.
fn deploy_models(c: &mut Client, s: &Standin) {
    deploy(c, s, "chat", "qwen-plus", "");
    deploy(c, s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute("INSERT INTO ai_prices (model_type, input_price) VALUES ('text-embedding-v4', 0.5)")
        .unwrap();
}

/// (calls, requests, inputs, shared_calls, cache_hits, saved_yuan > 0) of this database's
/// ai_usage for `model`.
fn usage(c: &mut Client, model: &str) -> (i64, i64, i64, i64, i64, bool) {
    let r = c
        .query_one(
            "SELECT sum(calls)::bigint, sum(requests)::bigint, sum(inputs)::bigint, sum(shared_calls)::bigint,
                    sum(cache_hits)::bigint, coalesce(sum(saved_yuan), 0) > 0
               FROM ai_usage WHERE database = current_database() AND model_name = $1",
            &[&model],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
}

/// Every row's embedding is the one of its own text.
fn check_embeddings(c: &mut Client) {
    check_embeddings_where(c, "true");
}

/// `UPDATE ... SET emb = ai_embed(...)` over 2,000 rows with 20 distinct texts sends each text
/// once, in 2 packed requests, where 200 went before: 1% of the requests.
#[test]
fn a_column_of_repeated_texts_sends_each_text_once() {
    let (mut c, _) = fresh_db("less_update");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 2000, 20);
    s.reset();
    c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body)").unwrap();
    let stats = s.stats();
    assert_eq!((stats.embedding_requests, stats.inputs), (2, 20), "{stats:?}");
    check_embeddings(&mut c);
    let (calls, requests, inputs, shared, hits, saved) = usage(&mut c, "emb");
    assert_eq!((calls, requests, inputs, shared, hits, saved), (2, 2, 2000, 1980, 0, true));

    // The same with sharing off: every row's input is sent (packed ten to a request).
    c.batch_execute("UPDATE docs SET emb = NULL; SET pg_bailian.share_answers = off").unwrap();
    s.reset();
    c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body)").unwrap();
    let stats = s.stats();
    assert_eq!((stats.embedding_requests, stats.inputs), (200, 2000), "{stats:?}");
    check_embeddings(&mut c);
}

/// A job (`CALL ai_update`, committing chunk by chunk) shares answers across its chunks.
#[test]
fn a_job_shares_answers_across_its_chunks() {
    let (mut c, _) = fresh_db("less_job");
    let s = standin();
    deploy_models(&mut c, &s);
    make_docs(&mut c, 2000, 20);
    s.reset();
    c.batch_execute("CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$, batch_size => 100)").unwrap();
    let stats = s.stats();
    assert_eq!(stats.inputs, 20, "{stats:?}");
    assert!(stats.embedding_requests <= 2, "{stats:?}");
    check_embeddings(&mut c);
    assert_eq!(usage(&mut c, "emb").3, 1980);
}

/// Chat calls with the same prompt and parameters share one request within a statement,
/// batched or row by row; a second statement asks again (sharing is not a cache); other
/// parameters are another call.
#[test]
fn chat_calls_are_shared_within_a_statement_only() {
    let (mut c, _) = fresh_db("less_chat");
    let s = standin_with(Config { latency_ms: 20, ..Config::default() });
    deploy_models(&mut c, &s);
    make_docs(&mut c, 50, 5);
    let query = "SELECT id, ai_gen('chat', body, '{\"temperature\": 0}') FROM docs ORDER BY id";
    for batching in [true, false] {
        set_batching(&mut c, batching);
        s.reset();
        let first = text_rows(&mut c, query);
        let again = text_rows(&mut c, query);
        assert_eq!(first, again);
        for row in &first {
            let id: i32 = row[0].as_deref().unwrap().parse().unwrap();
            let expected = echo(&format!("text number {}", id % 5));
            assert_eq!(row[1].as_deref(), Some(expected.as_str()), "batching {batching}");
        }
        assert_eq!(s.stats().chat_requests, 10, "batching {batching}: 5 prompts, twice");
    }
    reset_batching(&mut c);
    s.reset();
    let rows = text_rows(
        &mut c,
        "SELECT id, ai_gen('chat', body, jsonb_build_object('temperature', (id % 2) * 0.5)) FROM docs ORDER BY id",
    );
    assert_eq!(rows.len(), 50);
    assert_eq!(s.stats().chat_requests, 10, "5 prompts at 2 temperatures");
    // Two call sites with the same request share it too, whatever each makes of the answer.
    s.reset();
    let both = c
        .query(
            "SELECT ai_gen('chat', body), (ai_chat('chat', jsonb_build_array(jsonb_build_object('role', 'user', 'content', body))))->>'content'
               FROM docs ORDER BY id",
            &[],
        )
        .unwrap();
    for r in both {
        assert_eq!(r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1));
    }
    assert!(s.stats().chat_requests <= 10, "{:?}", s.stats());
}

/// A failed call gives its error to the calls that waited for it, and no answer is kept from
/// it: a later identical call asks again.
#[test]
fn a_failed_call_is_not_shared_as_an_answer() {
    let (mut c, _) = fresh_db("less_fail");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}', max_retries => 0");
    make_docs(&mut c, 100, 4);
    c.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
    s.reset();
    s.script("text number 3", vec![Fault::Status(400); 3]);
    c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body)").unwrap();
    let nulls: i64 = c.query_one("SELECT count(*) FROM docs WHERE emb IS NULL", &[]).unwrap().get(0);
    assert_eq!(nulls, 25, "every row of the failing text is NULL, and only those");
    let good: i64 = c
        .query_one("SELECT count(*) FROM docs WHERE emb IS NOT NULL AND body <> 'text number 3'", &[])
        .unwrap()
        .get(0);
    assert_eq!(good, 75);
}

/// (entries, pending_entries) of ai_cache for `model`.
fn cached(c: &mut Client, model: &str) -> (i64, i64) {
    c.query_opt("SELECT entries, pending_entries FROM ai_cache WHERE model_name = $1", &[&model])
        .unwrap()
        .map_or((0, 0), |r| (r.get(0), r.get(1)))
}

/// A deployment made with cache => true keeps what it was answered: a rolled-back UPDATE's
/// answers serve the next one, which sends nothing; a failed UPDATE's rerun pays only for
/// the rows the first run did not get; another role is served too; the cache has no keys.
#[test]
fn the_cache_keeps_paid_answers_through_rollbacks_and_failures() {
    let (mut c, db) = fresh_db("less_cache");
    let s = standin_with(Config { latency_ms: 5, ..Config::default() });
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}', cache => true");
    c.batch_execute(
        "INSERT INTO ai_prices (model_type, input_price) VALUES ('text-embedding-v4', 0.5);
         CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs (id, body) SELECT g, 'cached text ' || g FROM generate_series(1, 300) g;",
    )
    .unwrap();
    s.reset();
    c.batch_execute("BEGIN; UPDATE docs SET emb = ai_embed('emb', body) WHERE id <= 100; ROLLBACK").unwrap();
    assert_eq!(s.stats().inputs, 100);
    assert_eq!(cached(&mut c, "emb").0 + cached(&mut c, "emb").1, 100, "kept although rolled back");
    s.reset();
    c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body) WHERE id <= 100").unwrap();
    assert_eq!(s.stats().requests, 0, "every answer came from the cache");
    let hits: i64 = c
        .query_one("SELECT sum(cache_hits)::bigint FROM ai_usage WHERE database = current_database()", &[])
        .unwrap()
        .get(0);
    assert_eq!(hits, 100);
    check_embeddings_where(&mut c, "id <= 100");

    // A statement that fails after paying for some rows: its rerun sends only the others.
    s.reset();
    // Row 250's write fails once its answer is there (a check of the written row).
    c.batch_execute("ALTER TABLE docs ADD CONSTRAINT not_250 CHECK (emb IS NULL OR id <> 250)").unwrap();
    let failed = c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body) WHERE id > 100");
    assert_eq!(error_of(failed).0, "23514");
    let first = s.stats().inputs;
    let (entries, pending) = cached(&mut c, "emb");
    let kept = entries + pending - 100;
    assert!(kept > 0 && kept <= first as i64, "kept {kept} of {first} sent");
    s.reset();
    c.batch_execute("ALTER TABLE docs DROP CONSTRAINT not_250").unwrap();
    c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body) WHERE id > 100").unwrap();
    assert_eq!(s.stats().inputs as i64, 200 - kept, "only what the failed run did not get");
    check_embeddings_where(&mut c, "true");

    // Another role calling the model is served from the cache; it cannot read the table, nor
    // clear the cache of a model it did not deploy.
    fresh_role(&mut c, "less_reader", "");
    c.batch_execute("GRANT SELECT ON docs TO less_reader").unwrap();
    let mut r = connect_as(&db, "less_reader");
    s.reset();
    let n: i64 = r.query_one("SELECT count(ai_embed('emb', body)) FROM docs", &[]).unwrap().get(0);
    assert_eq!((n, s.stats().requests), (300, 0));
    assert_eq!(error_of(r.query("SELECT * FROM bailian.answer_cache", &[])).0, "42501");
    assert_eq!(error_of(r.query("SELECT ai_cache_clear('emb')", &[])).0, "42501");
    let dump: String = c
        .query_one("SELECT string_agg(encode(answer, 'escape'), '') FROM bailian.answer_cache", &[])
        .unwrap()
        .get(0);
    assert!(!dump.contains(KEY_MARK), "no key in the cache");

    // Cleared by the deployer: asked again. Undeployed: gone.
    let cleared: i64 = c.query_one("SELECT ai_cache_clear('emb')", &[]).unwrap().get(0);
    assert_eq!(cleared, 300);
    s.reset();
    c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body) WHERE id <= 10").unwrap();
    assert_eq!(s.stats().inputs, 10);
    c.batch_execute(
        "UPDATE docs SET emb = ai_embed('emb', body) WHERE id <= 20; SELECT ai_undeploy_model('emb')",
    )
    .unwrap();
    let left: i64 = c.query_one("SELECT count(*) FROM bailian.answer_cache", &[]).unwrap().get(0);
    assert_eq!(left, 0);
}

/// The embedding of each row `filter` selects is the one of its own text.
fn check_embeddings_where(c: &mut Client, filter: &str) {
    let rows = c.query(&format!("SELECT body, emb FROM docs WHERE {filter} ORDER BY id"), &[]).unwrap();
    for r in rows {
        let body: String = r.get(0);
        let emb: Option<Vec<f32>> = r.get(1);
        assert_eq!(emb.as_deref(), Some(&embedding_for(&body, 64)[..]), "{body}");
    }
}

/// Answers expire after pg_bailian.cache_ttl; a session may leave the cache alone; sharing
/// and caching answer chat calls too; cache => true where answers cannot be reused is refused.
#[test]
fn the_cache_expires_and_is_only_for_reusable_answers() {
    let (mut c, _) = fresh_db("less_cache_ttl");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", ", cache => true");
    c.batch_execute("SET pg_bailian.cache_ttl = 1").unwrap();
    s.reset();
    let ask = "SELECT ai_gen('chat', 'a question worth keeping')";
    let first = one_text(&mut c, ask);
    assert_eq!(one_text(&mut c, ask), first);
    assert_eq!(s.stats().chat_requests, 1);
    c.batch_execute("SET pg_bailian.answer_cache = off").unwrap();
    assert_eq!(one_text(&mut c, ask), first);
    assert_eq!(s.stats().chat_requests, 2, "the session left the cache alone");
    c.batch_execute("RESET pg_bailian.answer_cache").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(one_text(&mut c, ask), first);
    assert_eq!(s.stats().chat_requests, 3, "expired");

    // A session may cache every embedding deployment's answers (they depend on the input
    // alone), not a chat deployment's that did not opt in.
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    deploy(&mut c, &s, "chat2", "qwen-plus", "");
    c.batch_execute("SET pg_bailian.answer_cache = embeddings; RESET pg_bailian.cache_ttl").unwrap();
    s.reset();
    for _ in 0..2 {
        c.batch_execute("SELECT ai_embed('emb', 'kept by the setting'), ai_gen('chat2', 'not kept')")
            .unwrap();
    }
    assert_eq!((s.stats().embedding_requests, s.stats().chat_requests), (1, 2));
    let e = error_of(c.batch_execute("SET pg_bailian.answer_cache = always"));
    assert!(e.1.contains("answer_cache"), "{e:?}");

    for (model, extra, why) in [
        ("gte-rerank-v2", "", "rerank model"),
        ("qwen-plus", ", params => '{\"enable_search\": true}'", "web search"),
    ] {
        let e = error_of(c.batch_execute(&format!(
            "SELECT ai_deploy_model('bad', '{model}', '{}', base_url => '{}', cache => true{extra})",
            key("bad"),
            s.base_url()
        )));
        assert_eq!(e.0, "22023", "{e:?}");
        assert!(e.1.contains("cache => true is not allowed") && e.1.contains(why), "{e:?}");
    }
}

/// A deployment made with batch_chat => true sends its chat calls to Bailian's Batch Chat host
/// (a stand-in playing it), batched as usual, costed at half the price; only the models and
/// region Batch Chat serves, and its longer timeout, are accepted.
#[test]
fn batch_chat_sends_to_the_batch_host_at_half_price() {
    let (mut c, _) = fresh_db("less_batch_chat");
    let live = standin();
    let batch = standin_with(Config { batch_chat: true, latency_ms: 20, ..Config::default() });
    deploy(&mut c, &live, "chat", "qwen-plus", "");
    deploy(&mut c, &batch, "cheap", "qwen-plus", ", batch_chat => true, timeout => 3600");
    let row = c
        .query_one(
            "SELECT count(*), bool_and(a = b) FROM (
                SELECT ai_gen('cheap', 'ticket ' || g) a, ai_gen('chat', 'ticket ' || g) b FROM generate_series(1, 30) g) s",
            &[],
        )
        .unwrap();
    let (n, same): (i64, bool) = (row.get(0), row.get(1));
    assert_eq!((n, same), (30, true));
    assert_eq!((batch.stats().chat_requests, live.stats().chat_requests), (30, 30));
    assert!(batch.stats().peak_in_flight > 1, "batched: {:?}", batch.stats());
    let costs: Vec<(String, f64, i64)> = c
        .query(
            "SELECT model_name, cost_yuan::float8, (prompt_tokens + completion_tokens)::int8 FROM ai_usage
              WHERE database = current_database() ORDER BY model_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(costs[0].0, "chat");
    assert_eq!(costs[1].0, "cheap");
    assert_eq!(costs[0].2, costs[1].2, "the same tokens");
    assert!((costs[1].1 - costs[0].1 * 0.5).abs() < 1e-9, "half the price: {costs:?}");
    let models: String =
        one_text(&mut c, "SELECT string_agg(model_name || '=' || batch_chat, ',' ORDER BY 1) FROM ai_models")
            .unwrap();
    assert_eq!(models, "chat=false,cheap=true");

    for (extra, why) in [
        ("'qwen-max', batch_chat => true", "qwen3-max, qwen-plus, qwen-flash, deepseek-v3.2"),
        ("'qwen-plus', batch_chat => true, region => 'singapore'", "'beijing' only"),
        ("'qwen-plus', batch_chat => true, timeout => 30", "between 60 and 3600"),
        ("'qwen-plus', timeout => 3600", "between 1 and 1200"),
    ] {
        let (model, rest) = extra.split_once(", ").unwrap();
        let e = error_of(
            c.batch_execute(&format!("SELECT ai_deploy_model('bad', {model}, '{}', {rest})", key("bad"))),
        );
        assert_eq!(e.0, "22023", "{e:?}");
        assert!(e.1.contains(why), "{e:?}");
    }
}

/// `CALL ai_update(..., mode => 'batch')`: the first CALL collects the rows' requests (each
/// distinct one once) and sends them as a Batch File job, and returns; a CALL while Bailian
/// works says so and writes nothing; once the batch has ended, a CALL writes every row from
/// its answers (never sending one live), reports a failed line's row by key, and costs the
/// answers at half the price; a later batch CALL sends only what is left.
#[test]
fn a_batch_job_is_submitted_followed_and_collected() {
    let (_, db) = fresh_db("less_batch_file");
    let (mut c, seen) = connect_collecting_as(&db, "postgres");
    let s = standin_with(Config { batch_hour_ms: 100.0, batch_hold: true, ..Config::default() });
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(
        "INSERT INTO ai_prices (model_type, input_price, batch_ratio) VALUES ('text-embedding-v4', 0.5, 0.5);
         CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs (id, body) SELECT g, 'batch text ' || (g % 150) FROM generate_series(1, 300) g;",
    )
    .unwrap();
    s.script("batch text 7", vec![Fault::Status(400)]);
    let call = "CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$, mode => 'batch')";
    c.batch_execute(call).unwrap();
    let n = notices(&seen);
    assert!(n.contains("sent 150 requests for 300 rows") && n.contains("in 1 batch(es)"), "{n}");
    let stats = s.stats();
    assert_eq!(
        (stats.embedding_requests, stats.files_uploaded, stats.batches_created),
        (0, 1, 1),
        "{stats:?}"
    );
    let job: i64 = c.query_one("SELECT job_id FROM ai_batches", &[]).unwrap().get(0);

    // While Bailian holds the batch: nothing written, nothing sent.
    seen.lock().unwrap().clear();
    c.batch_execute(call).unwrap();
    assert!(notices(&seen).contains("still running at Bailian"), "{}", notices(&seen));
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, 0);

    s.release_batches();
    let done = wait_for(std::time::Duration::from_secs(20), || {
        seen.lock().unwrap().clear();
        c.batch_execute(call).unwrap();
        notices(&seen).contains(&format!("batch job {job} is done"))
    });
    assert!(done, "{}", notices(&seen));
    let n = notices(&seen);
    assert!(
        n.contains("WARNING: ai_update: row (id)=(7) failed")
            && n.contains("WARNING: ai_update: row (id)=(157) failed"),
        "{n}"
    );
    assert_eq!(s.stats().embedding_requests, 0, "no row was sent live");
    check_embeddings_where(&mut c, "id % 150 <> 7");
    let (state, status): (String, String) = {
        let r =
            c.query_one("SELECT job_state, batch_status FROM ai_batches WHERE job_id = $1", &[&job]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((state.as_str(), status.as_str()), ("done", "completed"));
    // Billed at half: the batch's own usage at the stand-in, priced, against ai_usage.
    let billed = s.batch_usage_total();
    let (requests, cost): (i64, f64) = {
        let r = c
            .query_one(
                "SELECT sum(requests)::int8, sum(cost_yuan)::float8 FROM ai_usage WHERE database = current_database()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(requests, 149, "the answered lines");
    let expected = billed.tokens.prompt_tokens as f64 * 0.5 * 0.5 / 1e6;
    assert!(
        (cost - expected).abs() < 1e-9,
        "cost {cost}, half of the price of {} tokens",
        billed.tokens.prompt_tokens
    );

    // What is left (the failed text's two rows) goes in the next job.
    seen.lock().unwrap().clear();
    s.configure(|cfg| cfg.batch_hold = false);
    c.batch_execute(call).unwrap();
    assert!(notices(&seen).contains("sent 1 requests for 2 rows"), "{}", notices(&seen));
    assert!(wait_for(std::time::Duration::from_secs(20), || {
        seen.lock().unwrap().clear();
        c.batch_execute(call).unwrap();
        notices(&seen).contains("is done")
    }));
    check_embeddings(&mut c);
}

/// What batch mode refuses, before anything is sent: an unknown mode, a model Bailian does
/// not batch, calls with no Batch File endpoint; and a CALL inside a transaction block.
#[test]
fn batch_mode_refuses_what_bailian_does_not_batch() {
    let (mut c, _) = fresh_db("less_batch_refused");
    let s = standin();
    deploy(&mut c, &s, "mt", "qwen-mt-plus", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, answer text);
         INSERT INTO docs (id, body) SELECT g, 'text ' || g FROM generate_series(1, 5) g;",
    )
    .unwrap();
    let e = error_of(c.batch_execute(
        "CALL ai_update('docs', 'answer', $$ai_translate('mt', body, 'English')$$, mode => 'fast')",
    ));
    assert!(e.1.contains("mode must be 'live'") && e.1.contains("or 'batch'"), "{e:?}");
    let e = error_of(c.batch_execute(
        "CALL ai_update('docs', 'answer', $$ai_translate('mt', body, 'English')$$, mode => 'batch')",
    ));
    assert!(e.1.contains("not served by Bailian's Batch File API") && e.1.contains("qwen-plus"), "{e:?}");
    let e = error_of(c.batch_execute(
        "CALL ai_update('docs', 'answer', $$ai_similarity('emb', body, 'x')::text$$, mode => 'batch')",
    ));
    assert!(e.1.contains("no Batch File endpoint"), "{e:?}");
    assert_eq!(s.stats().requests, 0, "nothing was sent");
    let jobs: i64 = c.query_one("SELECT count(*) FROM ai_batches", &[]).unwrap().get(0);
    assert_eq!(jobs, 0);
}

/// A batch that fails answers nothing (its rows are reported, and the next batch CALL sends
/// them again); one cancelled with ai_batch_cancel or expired gives the lines it ran and
/// reports the rest; the column procedures take mode => 'batch' too.
#[test]
fn failed_cancelled_and_expired_batches_cost_only_what_they_ran() {
    let (_, db) = fresh_db("less_batch_ends");
    let (mut c, seen) = connect_collecting_as(&db, "postgres");
    let s = standin_with(Config { batch_hour_ms: 100.0, batch_hold: true, ..Config::default() });
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs (id, body) SELECT g, 'ending text ' || g FROM generate_series(1, 20) g;",
    )
    .unwrap();
    let call = "CALL ai_embed_column('docs', 'body', 'emb', 'emb', mode => 'batch')";
    let batch_of = |c: &mut Client| -> (i64, String) {
        let r = c
            .query_one("SELECT job_id, batch_id FROM ai_batches WHERE job_state = 'submitted'", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    let finish = |c: &mut Client, seen: &std::sync::Arc<std::sync::Mutex<Vec<String>>>, job: i64| {
        assert!(wait_for(std::time::Duration::from_secs(20), || {
            seen.lock().unwrap().clear();
            c.batch_execute(call).unwrap();
            notices(seen).contains(&format!("batch job {job} is done"))
        }));
        notices(seen)
    };
    let filled = |c: &mut Client| -> i64 { c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0) };

    // Failed: nothing answered, every row reported.
    c.batch_execute(call).unwrap();
    let (job, batch) = batch_of(&mut c);
    assert!(s.fail_batch(&batch));
    let n = finish(&mut c, &seen, job);
    assert!(
        n.contains("0 requests answered, 20 failed")
            && n.contains("WARNING: ai_embed_column: row (id)=(1) failed"),
        "{n}"
    );
    assert_eq!(filled(&mut c), 0);

    // Cancelled while held: the lines it had run are kept (none here), the rest reported.
    c.batch_execute(call).unwrap();
    let (job, _) = batch_of(&mut c);
    let asked: i64 = c.query_one("SELECT ai_batch_cancel($1)", &[&job]).unwrap().get(0);
    assert_eq!(asked, 1);
    s.release_batches();
    let n = finish(&mut c, &seen, job);
    assert!(n.contains("failed"), "{n}");
    let status: String =
        c.query_one("SELECT batch_status FROM ai_batches WHERE job_id = $1", &[&job]).unwrap().get(0);
    assert_eq!(status, "cancelled");

    // Expired: the same; then a batch that completes fills every row.
    c.batch_execute(call).unwrap();
    let (job, batch) = batch_of(&mut c);
    assert!(s.expire_batch(&batch));
    finish(&mut c, &seen, job);
    let status: String =
        c.query_one("SELECT batch_status FROM ai_batches WHERE job_id = $1", &[&job]).unwrap().get(0);
    assert_eq!(status, "expired");
    s.configure(|cfg| cfg.batch_hold = false);
    c.batch_execute(call).unwrap();
    let (job, _) = batch_of(&mut c);
    finish(&mut c, &seen, job);
    assert_eq!(filled(&mut c), 20);
    assert_eq!(s.stats().embedding_requests, 0, "never live");
    let e = error_of(c.query("SELECT ai_batch_cancel($1)", &[&job]));
    assert!(e.1.contains("no batch job"), "{e:?}");
}

/// Answers moved into the cache table by work that a savepoint then rolls back stay in the
/// inbox (their rows went, the files must not); a transaction that sees one snapshot reads the
/// inbox without moving it.
#[test]
fn cached_answers_survive_savepoints_and_snapshot_transactions() {
    let (mut c, _) = fresh_db("less_cache_savepoint");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}', cache => true");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs (id, body) SELECT g, 'kept text ' || g FROM generate_series(1, 30) g;",
    )
    .unwrap();
    s.reset();
    c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body)").unwrap();
    assert_eq!(s.stats().inputs, 30);
    // The next statement moves the 30 files into the table, inside a savepoint rolled back.
    c.batch_execute(
        "BEGIN; SAVEPOINT a; SELECT ai_embed('emb', 'another text'); ROLLBACK TO SAVEPOINT a; COMMIT",
    )
    .unwrap();
    s.reset();
    c.batch_execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; UPDATE docs SET emb = ai_embed('emb', body); COMMIT",
    )
    .unwrap();
    assert_eq!(s.stats().requests, 0, "all 30 still cached: {:?}", s.stats());
    c.batch_execute("UPDATE docs SET emb = ai_embed('emb', body)").unwrap();
    let (entries, pending): (i64, i64) = {
        let r = c
            .query_one("SELECT entries, pending_entries FROM ai_cache WHERE model_name = 'emb'", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(entries + pending, 31, "the 30, and the savepoint's own answer: paid for, so kept too");
    assert_eq!(s.stats().requests, 0);
    check_embeddings(&mut c);
}

/// Result files that cannot be read now (here: larger than pg_bailian.max_response_size) fail
/// the CALL with a clear error and lose nothing: the next CALL reads them, and the answers
/// are counted once.
#[test]
fn unreadable_results_are_read_by_the_next_call_and_counted_once() {
    let (mut c, _) = fresh_db("less_batch_unread");
    let s = standin_with(Config { batch_hour_ms: 100.0, ..Config::default() });
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs (id, body) SELECT g, 'unread text ' || g FROM generate_series(1, 200) g;",
    )
    .unwrap();
    let call = "CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$, mode => 'batch')";
    c.batch_execute(call).unwrap();
    assert!(wait_for(std::time::Duration::from_secs(20), || { s.batch_usage_total().answered >= 200 }));
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.batch_execute("SET pg_bailian.max_response_size = '64kB'").unwrap();
    let e = error_of(c.batch_execute(call));
    assert!(e.1.contains("could not be read"), "{e:?}");
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, 0);
    c.batch_execute("RESET pg_bailian.max_response_size").unwrap();
    c.batch_execute(call).unwrap();
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, 200);
    let requests: i64 = c
        .query_one("SELECT sum(requests)::int8 FROM ai_usage WHERE database = current_database()", &[])
        .unwrap()
        .get(0);
    assert_eq!(requests, 200, "each answered line counted once");
}
