//! Every function and procedure of the extension runs none of the objects another role
//! planted on the caller's search_path.
//!
//! An unprivileged role that may create objects in `public` plants look-alikes of what SQL
//! commonly resolves by name: every binary operator of pg_catalog over common types, common
//! functions and aggregates, and domains named like built-in types. Each one, when run,
//! raises a WARNING and records itself. A superuser then runs every routine of the extension
//! with `search_path = public, pg_catalog` (the look-alikes win over pg_catalog there) and
//! with the default search_path: nothing of theirs may run.

mod common;

use bailian_standin::embedding_for;
use common::*;
use postgres::Client;
use std::sync::{Arc, Mutex};

fn hijacks(seen: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    seen.lock().unwrap().iter().filter(|n| n.contains("HIJACKED")).cloned().collect()
}

/// Runs every routine of the extension; returns the routines run, as regprocedure text.
/// Syncs under the round's search_path: made (their triggers and the chunk function they
/// create, the worker and CALL ai_sync_run then run with it), fed, filled, paused, resumed and
/// dropped.
fn run_syncs(c: &mut Client, round: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE public.sync_docs_{round} (id pg_catalog.int4 PRIMARY KEY, body pg_catalog.text, emb pg_catalog.float4[]);
         INSERT INTO public.sync_docs_{round} VALUES (1, 'first synced row'), (2, 'second synced row');
         SELECT ai_sync_create('sp_{round}', 'sync_docs_{round}', 'emb', $$public.ai_embed('emb', body::pg_catalog.text)$$,
                               filter => $$id OPERATOR(pg_catalog.>) 0$$);
         SELECT ai_sync_chunks('spc_{round}', 'sync_docs_{round}', $$body::pg_catalog.text$$, 'sync_chunks_{round}',
                               $$public.ai_embed('emb', chunk)$$, 64, 8);
         UPDATE public.sync_docs_{round} SET body = 'first synced row, changed' WHERE id OPERATOR(pg_catalog.=) 1;
         INSERT INTO public.sync_docs_{round} VALUES (3, 'third synced row');
         DELETE FROM public.sync_docs_{round} WHERE id OPERATOR(pg_catalog.=) 2;"
    ))
    .unwrap();
    c.batch_execute(&format!("CALL ai_sync_run('sp_{round}')")).unwrap();
    c.batch_execute(&format!("CALL ai_sync_run('spc_{round}')")).unwrap();
    let left = format!(
        "SELECT (SELECT pg_catalog.count(*) FROM public.sync_docs_{round} WHERE emb IS NULL)
                OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM public.sync_chunks_{round} WHERE embedding IS NULL)"
    );
    // The CALLs fill what is queued; the database's worker may be filling some of it too.
    assert!(wait_for(std::time::Duration::from_secs(20), || c
        .query_one(&left, &[])
        .unwrap()
        .get::<_, i64>(0)
        == 0));
    c.batch_execute(&format!(
        "SELECT ai_sync_pause('sp_{round}'); SELECT ai_sync_resume('sp_{round}');
         SELECT ai_sync_drop('sp_{round}'); SELECT ai_sync_drop('spc_{round}');"
    ))
    .unwrap();
}

fn run_everything(
    c: &mut Client,
    s: &bailian_standin::Standin,
    search_path: &str,
    round: &str,
) -> Vec<&'static str> {
    c.batch_execute(&format!("SET search_path = {search_path}")).unwrap();
    let base = s.base_url();
    // emb keeps its answers in the answer cache: its inbox is moved into the cache table, and
    // ai_cache reads it, under this search_path too.
    for (name, model, params, cache) in [
        ("chat", "qwen-plus", r#"{"temperature": 0.5}"#, false),
        ("mt", "qwen-mt-plus", r#"{"source_lang": "auto"}"#, false),
        ("emb", "text-embedding-v4", r#"{"dimension": 64}"#, true),
        ("vis", "tongyi-embedding-vision-flash", r#"{"dimension": 64}"#, false),
        ("omni", "qwen3-omni-flash", r#"{}"#, false),
    ] {
        c.batch_execute(&format!(
            "SELECT ai_deploy_model('{name}', '{model}', '{}', params => '{params}', base_url => '{base}', replace => true, cache => {cache})",
            key(round)
        ))
        .unwrap();
    }
    let models: i64 = c.query_one("SELECT pg_catalog.count(*) FROM ai_models", &[]).unwrap().get(0);
    assert_eq!(models, 5);
    let supported: i64 =
        c.query_one("SELECT pg_catalog.count(*) FROM ai_supported_models()", &[]).unwrap().get(0);
    assert_eq!(supported, 66);
    c.batch_execute("SET pg_bailian.default_chat_model = 'chat'").unwrap();
    assert_eq!(one_text(c, "SELECT ai_gen('chat', 'one')").as_deref(), Some("Echo from qwen-plus: one"));
    assert_eq!(one_text(c, "SELECT ai_gen('two')").as_deref(), Some("Echo from qwen-plus: two"));
    assert!(one_text(c, "SELECT ai_translate('mt', '你好', 'English')").unwrap().contains("English"));
    assert!(one_text(c, "SELECT ai_translate('chat', 'hola', 'English')")
        .unwrap()
        .starts_with("Echo from qwen-plus"));
    let v: Vec<f32> = c.query_one("SELECT ai_embed('emb', 'three')", &[]).unwrap().get(0);
    assert_eq!(v, embedding_for("three", 64));
    let chat: String = c
        .query_one(
            "SELECT ai_chat('chat', '[{\"role\": \"user\", \"content\": \"hi\"}]')::pg_catalog.text",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(chat.contains("Echo from qwen-plus: hi"), "{chat}");
    let wav: Vec<u8> = c.query_one("SELECT ai_gen_audio('omni', 'hi')", &[]).unwrap().get(0);
    assert_eq!(&wav[..4], b"RIFF");
    let png: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";
    let v: Vec<f32> = c.query_one("SELECT ai_embed_image('vis', $1::bytea)", &[&png]).unwrap().get(0);
    assert_eq!(v.len(), 64);
    let v: Vec<f32> =
        c.query_one("SELECT ai_embed_image('vis', 'https://example.com/a.png')", &[]).unwrap().get(0);
    assert_eq!(v.len(), 64);
    let n = c.query("SELECT * FROM ai_embed_batch('emb', ARRAY['a', 'b', NULL])", &[]).unwrap().len();
    assert_eq!(n, 3);
    let n = c
        .query("SELECT * FROM ai_gen_batch('chat', ARRAY['a', 'b'], '{\"max_tokens\": 5}')", &[])
        .unwrap()
        .len();
    assert_eq!(n, 2);
    run_task_functions(c, s);
    run_hologres_forms(c, s, round);
    // One statement each: a multi-statement string is one transaction, where CALL cannot commit.
    // The expression and filter are the caller's SQL, so they name what they mean.
    c.batch_execute(
        "CALL ai_update('docs', 'answer', $$public.ai_gen('chat', body::pg_catalog.text)$$, batch_size => 2, \
                        filter => $$id OPERATOR(pg_catalog.<=) 3$$)",
    )
    .unwrap();
    let filled: i64 = c
        .query_one("SELECT pg_catalog.count(*) FROM public.docs WHERE answer IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert_eq!(filled, 3);
    c.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 3)").unwrap();
    c.batch_execute(
        "CALL ai_gen_column('docs', 'body', 'answer', 'chat', 'Say: {0}', batch_size => 2, params => '{\"max_tokens\": 50}')",
    )
    .unwrap();
    let filled: i64 = c
        .query_one(
            "SELECT pg_catalog.count(*) FROM public.docs WHERE emb IS NOT NULL AND answer IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(filled, 7);
    // Operating it: budgets (read back by a call, and by ai_budgets), usage, activity, rate
    // limits, prices (the view's trigger) and a dry run.
    c.batch_execute("SELECT ai_set_budget(NULL, 'chat', 1000000, 'tokens')").unwrap();
    assert_eq!(
        one_text(c, "SELECT ai_gen('chat', 'budgeted')").as_deref(),
        Some("Echo from qwen-plus: budgeted")
    );
    let budgets: i64 = c
        .query_one("SELECT pg_catalog.count(*) FROM ai_budgets WHERE spent OPERATOR(pg_catalog.>) 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(budgets, 1);
    assert!(c.query_one("SELECT ai_drop_budget(NULL, 'chat')", &[]).unwrap().get::<_, bool>(0));
    let used: i64 = c.query_one("SELECT pg_catalog.count(*) FROM ai_usage", &[]).unwrap().get(0);
    assert!(used > 0);
    c.batch_execute(
        "SELECT pg_catalog.count(*) FROM ai_activity; SELECT pg_catalog.count(*) FROM ai_rate_limits",
    )
    .unwrap();
    c.batch_execute(
        "UPDATE ai_prices SET input_price = 1 WHERE model_type OPERATOR(pg_catalog.=) 'qwen-plus';
         DELETE FROM ai_prices WHERE model_type OPERATOR(pg_catalog.=) 'qwen-plus'",
    )
    .unwrap();
    let requests: i64 = c
        .query_one("SELECT requests FROM ai_estimate($$SELECT public.ai_gen('chat', 'dry')$$)", &[])
        .unwrap()
        .get(0);
    assert_eq!(requests, 1);
    c.batch_execute("SELECT ai_usage_reset()").unwrap();
    // Only emb caches: ai_cache shows it alone (moved or not yet), and clearing takes its answers.
    let cached: Vec<String> = c
        .query("SELECT model_name FROM ai_cache WHERE entries OPERATOR(pg_catalog.+) pending_entries OPERATOR(pg_catalog.>) 0", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cached, vec!["emb".to_string()]);
    let cleared: i64 = c.query_one("SELECT ai_cache_clear('emb')", &[]).unwrap().get(0);
    assert!(cleared > 0);
    let e = error_of(c.query("SELECT ai_batch_cancel(0)", &[]));
    assert!(e.1.contains("no batch job 0"), "{e:?}");
    // The Citus routines, on a server without Citus: each runs as far as its check (tests/citus.rs
    // runs them on a cluster).
    for sql in ["SELECT * FROM ai_citus_enable()", "SELECT * FROM ai_citus_check()"] {
        let e = error_of(c.query(sql, &[]));
        assert!(e.1.contains("citus extension is not installed"), "{sql}: {e:?}");
    }
    let e = error_of(c.batch_execute(
        "CALL ai_update_local_shards('public.docs', 'emb', $$ai_embed('emb', body)$$, 10, NULL, 'ai_update', 1)",
    ));
    assert!(e.1.contains("not a node of a Citus cluster"), "{e:?}");
    let probe: String = c.query_one("SELECT bailian.json_probe()", &[]).unwrap().get(0);
    assert!(probe.contains("\"preloaded\" : true") && probe.contains("\"key\""), "{probe}");
    c.batch_execute("SELECT bailian.refuse_on_worker('a test')").unwrap();
    let forgotten: i64 = c.query_one("SELECT bailian.forget_answers('no such model')", &[]).unwrap().get(0);
    assert_eq!(forgotten, 0);
    // Kept in the preloaded server's shared memory; refused when it could raise nothing.
    let kept: bool =
        c.query_one("SELECT ai_update_release_share(-7046029254386353131, 0.5)", &[]).unwrap().get(0);
    assert!(kept);
    for bad in ["-7046029254386353131, 1.5", "0, 0.5", "-7046029254386353131, 0"] {
        let e = error_of(c.query(&format!("SELECT ai_update_release_share({bad})"), &[]));
        assert!(e.1.contains("job_id must not be 0 and rate_share must be in (0, 1]"), "{bad}: {e:?}");
    }
    // What a Citus coordinator asks each node before a column job: the rows to fill in a shard
    // (here a plain table), the filter read with the given search_path.
    let to_fill: i64 = c
        .query_one(
            "SELECT ai_update_rows_to_fill('public.docs', 'label', $$id OPERATOR(pg_catalog.<=) 3$$, $1)",
            &[&search_path],
        )
        .unwrap()
        .get(0);
    let expected: i64 = c
        .query_one(
            "SELECT pg_catalog.count(*) FROM public.docs WHERE label IS NULL AND id OPERATOR(pg_catalog.<=) 3",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(to_fill, expected);
    run_syncs(c, round);
    let dropped: bool = c.query_one("SELECT ai_undeploy_model('mt')", &[]).unwrap().get(0);
    assert!(dropped);
    c.batch_execute("RESET search_path; RESET pg_bailian.default_chat_model").unwrap();
    vec![
        "ai_deploy_model(text,text,text,jsonb,integer,double precision,double precision,double precision,text,text,boolean,integer,integer,text,text,boolean,boolean)",
        "ai_cache_clear(text)",
        "bailian.cache_rows()",
        "ai_chat(text,jsonb,jsonb)",
        "ai_embed(text,text)",
        "ai_embed_batch(text,text[])",
        "ai_embed_image(text,bytea)",
        "ai_embed_image(text,text)",
        "ai_gen_audio(text,text,jsonb)",
        "ai_embed_column(regclass,name,name,text,integer,text)",
        "ai_gen(text)",
        "ai_gen(text,text,jsonb)",
        "ai_gen_batch(text,text[],jsonb)",
        "ai_gen_column(regclass,name,name,text,text,integer,jsonb,text)",
        "ai_supported_models()",
        "ai_translate(text,text,text,jsonb)",
        "ai_undeploy_model(text)",
        "ai_update(regclass,name,text,integer,text,text)",
        "ai_batch_cancel(bigint)",
        "ai_sync_create(text,regclass,name,text,text,boolean)",
        "ai_sync_chunks(text,regclass,text,name,text,integer,integer)",
        "ai_sync_pause(text)",
        "ai_sync_resume(text)",
        "ai_sync_drop(text)",
        "ai_sync_run(text)",
        "bailian.sync_mark()",
        "ai_gen_structured(text,text,jsonb,text,jsonb)",
        "ai_classify(text,text,text[])",
        "ai_extract(text,text,text[])",
        "ai_mask(text,text,text[])",
        "ai_summarize(text,text,integer)",
        "ai_fix_grammar(text,text)",
        "ai_sentiment(text,text)",
        "ai_rank(text,text,text)",
        "ai_similarity(text,text,text)",
        "ai_chunk(text,integer,integer)",
        "ai_prompt(text,text[])",
        "ai_count_tokens(text,text)",
        "ai_set_prompt(text,text,text)",
        "bailian.default_prompts()",
        "ai_gen(jsonb)",
        "ai_gen(text,jsonb,jsonb)",
        "ai_embed(text)",
        "ai_embed(text,bytea,text)",
        "ai_translate(text,text)",
        "ai_classify(text,text[])",
        "ai_extract(text,text[])",
        "ai_mask(text,text[])",
        "ai_summarize(text)",
        "ai_fix_grammar(text)",
        "ai_sentiment(text)",
        "ai_rank(text,text)",
        "ai_similarity(text,text)",
        "ai_set_default_model(text,text)",
        "prompt(text,text[])",
        "list_external_models()",
        "register_external_model(text,text,text,json,text)",
        "delete_external_model(text)",
        "bailian.default_model_choices()",
        "ai_set_budget(name,text,numeric,text,text)",
        "ai_drop_budget(name,text)",
        "bailian.budget_spent()",
        "bailian.scope()",
        "bailian.usage_rows()",
        "ai_usage_reset()",
        "bailian.activity_rows()",
        "bailian.rate_limit_rows()",
        "ai_estimate(text)",
        "bailian.set_price()",
        "ai_citus_enable()",
        "ai_citus_check()",
        "ai_update_local_shards(regclass,name,text,integer,text,text,double precision,text,bigint[],bigint,text[],text)",
        "bailian.json_probe()",
        "bailian.master_key_id()",
        "bailian.refuse_on_worker(text)",
        "bailian.worker_rows(text)",
        "bailian.forget_answers(text)",
        "ai_update_release_share(bigint,double precision)",
        "ai_update_rows_to_fill(regclass,name,text,text)",
    ]
}

/// Hologres' forms: the model-less calls through defaults set with ai_set_default_model (and
/// read back through ai_default_models, so bailian.default_model_choices()), prompt objects,
/// image bytes with a format, and model registration, listing and removal.
fn run_hologres_forms(c: &mut Client, s: &bailian_standin::Standin, round: &str) {
    for (function, model) in [
        ("ai_embed", "emb"),
        ("ai_similarity", "emb"),
        ("ai_classify", "chat"),
        ("ai_extract", "chat"),
        ("ai_mask", "chat"),
        ("ai_summarize", "chat"),
        ("ai_fix_grammar", "chat"),
        ("ai_sentiment", "chat"),
        ("ai_rank", "chat"),
    ] {
        c.batch_execute(&format!("SELECT ai_set_default_model('{function}', '{model}')")).unwrap();
    }
    let v: Vec<f32> = c.query_one("SELECT ai_embed('three')", &[]).unwrap().get(0);
    assert_eq!(v, embedding_for("three", 64));
    assert!(one_text(c, "SELECT ai_translate('你好', 'English')").unwrap().contains("English"));
    assert_eq!(
        one_text(c, "SELECT ai_classify('the app has a bug', ARRAY['billing', 'bug'])").as_deref(),
        Some("bug")
    );
    assert_eq!(
        json_text(c, "SELECT ai_extract('name: Ann; city: Oslo', ARRAY['name', 'city'])::pg_catalog.text"),
        serde_json::json!({"name": "Ann", "city": "Oslo"})
    );
    assert_eq!(
        one_text(c, "SELECT ai_mask('mail ann@example.com now', ARRAY['email'])").as_deref(),
        Some("mail [MASKED] now")
    );
    assert_eq!(one_text(c, "SELECT ai_summarize('one two three')").as_deref(), Some("one two three"));
    assert_eq!(one_text(c, "SELECT ai_fix_grammar('i am  here')").as_deref(), Some("I am here."));
    assert_eq!(one_text(c, "SELECT ai_sentiment('I love it')").as_deref(), Some("positive"));
    assert_eq!(one_float(c, "SELECT ai_rank('red fox', 'The red dog.')"), 0.5);
    let similarity = one_float(c, "SELECT ai_similarity('red fox', 'red dog')");
    let want =
        bailian_core::tasks::cosine(&embedding_for("red fox", 64), &embedding_for("red dog", 64)).unwrap();
    assert!((similarity - want).abs() < 1e-9);
    assert_eq!(
        one_text(c, "SELECT ai_gen('chat', prompt('Say {0}', 'a'))").as_deref(),
        Some("Echo from qwen-plus: Say a")
    );
    assert_eq!(
        one_text(c, "SELECT ai_gen(prompt('Say {0}', 'b'))").as_deref(),
        Some("Echo from qwen-plus: Say b")
    );
    let png: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";
    let v: Vec<f32> = c.query_one("SELECT ai_embed('vis', $1::bytea, 'png')", &[&png]).unwrap().get(0);
    assert_eq!(v.len(), 64);
    let effective: Vec<Option<String>> = c
        .query("SELECT effective_model FROM ai_default_models", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(effective.len(), 11);
    assert_eq!(effective.iter().filter(|m| m.as_deref() == Some("chat")).count(), 8, "{effective:?}");
    c.batch_execute(&format!(
        "CALL register_external_model('reg', 'text-embedding-v3', 'bailian', \
         '{{\"api_key\": \"{}\", \"base_url\": \"{}\"}}', 'embedding')",
        key(round),
        s.base_url()
    ))
    .unwrap();
    let listed: Vec<(String, String)> = c
        .query("SELECT model_name, task FROM list_external_models()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(listed.contains(&("reg".into(), "embedding".into())), "{listed:?}");
    assert!(listed.contains(&("chat".into(), "chat/completions".into())), "{listed:?}");
    c.batch_execute("CALL delete_external_model('reg')").unwrap();
    c.batch_execute("SELECT ai_set_default_model('ai_rank', NULL)").unwrap();
}

fn json_text(c: &mut Client, sql: &str) -> serde_json::Value {
    let text = one_text(c, sql).unwrap_or_else(|| panic!("{sql}: NULL"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql}: {e}: {text}"))
}

fn one_float(c: &mut Client, sql: &str) -> f64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// The rows of ai_prompts as (function_name, model_name, is_default), sorted here: an ORDER
/// BY or a comparison in SQL would be the test's own SQL resolving operators on the path.
fn prompt_rows(c: &mut Client) -> Vec<(String, Option<String>, bool)> {
    let mut rows: Vec<(String, Option<String>, bool)> = c
        .query("SELECT function_name, model_name, is_default FROM ai_prompts", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    rows.sort();
    rows
}

/// ai_gen_structured, the task functions, ai_similarity, ai_chunk, ai_prompt, ai_count_tokens, ai_prompts
/// (through it bailian.default_prompts()) and ai_set_prompt, each with its exact value; then
/// the task functions and ai_similarity over the rows of public.docs in the AI Batch node.
fn run_task_functions(c: &mut Client, s: &bailian_standin::Standin) {
    let schema = r#"{"type": "object", "properties": {"city": {"type": ["string", "null"]}}, "required": ["city"], "additionalProperties": false}"#;
    assert_eq!(
        json_text(
            c,
            &format!(
                "SELECT ai_gen_structured('chat', 'name: Ann; city: Paris', '{schema}')::pg_catalog.text"
            )
        ),
        serde_json::json!({"city": "Paris"})
    );
    assert_eq!(
        one_text(c, "SELECT ai_classify('chat', 'the app has a bug', ARRAY['billing', 'bug'])").as_deref(),
        Some("bug")
    );
    assert_eq!(
        json_text(c, "SELECT ai_extract('chat', 'name: Ann; city: Oslo', ARRAY['name', 'city', 'zip'])::pg_catalog.text"),
        serde_json::json!({"name": "Ann", "city": "Oslo", "zip": null})
    );
    assert_eq!(
        one_text(c, "SELECT ai_mask('chat', 'mail ann@example.com now', ARRAY['email'])").as_deref(),
        Some("mail [MASKED] now")
    );
    assert_eq!(
        one_text(c, "SELECT ai_summarize('chat', 'one two three four five', 2)").as_deref(),
        Some("one two")
    );
    assert_eq!(one_text(c, "SELECT ai_fix_grammar('chat', 'i am  here')").as_deref(), Some("I am here."));
    assert_eq!(one_text(c, "SELECT ai_sentiment('chat', 'I love it')").as_deref(), Some("positive"));
    assert_eq!(one_float(c, "SELECT ai_rank('chat', 'red fox', 'The red dog.')"), 0.5);
    let similarity = one_float(c, "SELECT ai_similarity('emb', 'red fox', 'red dog')");
    let want =
        bailian_core::tasks::cosine(&embedding_for("red fox", 64), &embedding_for("red dog", 64)).unwrap();
    assert!((similarity - want).abs() < 1e-9, "ai_similarity: {similarity}, expected {want}");
    let pieces: Vec<String> = c.query_one("SELECT ai_chunk('one two three four', 9, 0)", &[]).unwrap().get(0);
    assert_eq!(pieces, ["one two", "three", "four"]);
    assert_eq!(one_text(c, "SELECT ai_prompt('{0} and {1}', 'a', 'b')").as_deref(), Some("a and b"));
    // Counted with Qwen's vocabulary (chat is qwen-plus), and approximated (emb).
    let counts: (i32, i32) = c
        .query_one(
            "SELECT ai_count_tokens('chat', 'Hello, world!'), ai_count_tokens('emb', 'Hello, world!')",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(counts, (4, bailian_core::tokens::approximate("Hello, world!") as i32));

    // The prompts: seven defaults; a replacement for one model is used, listed, and undone.
    let defaults: Vec<(String, Option<String>, bool)> =
        ["ai_classify", "ai_extract", "ai_fix_grammar", "ai_mask", "ai_rank", "ai_sentiment", "ai_summarize"]
            .iter()
            .map(|f| (f.to_string(), None, true))
            .collect();
    assert_eq!(prompt_rows(c), defaults);
    let n: i64 =
        c.query_one("SELECT pg_catalog.count(*) FROM bailian.default_prompts()", &[]).unwrap().get(0);
    assert_eq!(n, 7);
    c.batch_execute("SELECT ai_set_prompt('chat', 'ai_classify', 'Pick one of {labels}. Answer in JSON.')")
        .unwrap();
    let mut with_replacement = defaults.clone();
    with_replacement.push(("ai_classify".into(), Some("chat".into()), false));
    with_replacement.sort();
    assert_eq!(prompt_rows(c), with_replacement);
    let before = s.requests().len();
    assert_eq!(
        one_text(c, "SELECT ai_classify('chat', 'a bug again', ARRAY['billing', 'bug'])").as_deref(),
        Some("bug")
    );
    let sent = s.requests();
    assert_eq!(sent.len(), before + 1);
    assert_eq!(
        sent[before].body["messages"][0]["content"],
        serde_json::json!("Pick one of \"billing\", \"bug\". Answer in JSON."),
        "the replacement prompt is the system message"
    );
    c.batch_execute("SELECT ai_set_prompt('chat', 'ai_classify', NULL)").unwrap();
    assert_eq!(prompt_rows(c), defaults);

    // Over rows, in the AI Batch node.
    let over_rows =
        "SELECT id, ai_classify('chat', body, ARRAY['none', 'row']), ai_sentiment('chat', body), \
                     ai_similarity('emb', body, 'row 1') FROM public.docs";
    let plan: Vec<String> =
        c.query(&format!("EXPLAIN (COSTS OFF) {over_rows}"), &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(plan.iter().any(|l| l.contains("Custom Scan (AI Batch)")), "{plan:#?}");
    let mut rows: Vec<(i32, String, String, f64)> =
        c.query(over_rows, &[]).unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    rows.sort_by_key(|r| r.0);
    assert_eq!(rows.len(), 7);
    for (id, label, mood, similarity) in rows {
        assert_eq!((label.as_str(), mood.as_str()), ("row", "neutral"), "row {id}");
        let want = bailian_core::tasks::cosine(
            &embedding_for(&format!("row {id}"), 64),
            &embedding_for("row 1", 64),
        )
        .unwrap();
        assert!((similarity - want).abs() < 1e-9, "row {id}: {similarity}, expected {want}");
    }
}

#[test]
fn planted_look_alikes_never_run() {
    let (mut c, db) = fresh_db("search_path");
    let s = standin();
    fresh_role(&mut c, "sp_mallory", "");
    c.batch_execute(
        "GRANT CREATE ON SCHEMA public TO sp_mallory;
         CREATE TABLE public.docs (id int PRIMARY KEY, body text, emb real[], answer text, label text);
         INSERT INTO public.docs SELECT g, 'row ' || g, NULL, NULL, NULL FROM generate_series(1, 7) g;",
    )
    .unwrap();
    let mut mallory = connect_as(&db, "sp_mallory");
    mallory.batch_execute(PLANT).unwrap();
    let planted: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
                AND proowner = 'sp_mallory'::regrole",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(planted > 300, "only {planted} look-alikes planted");

    let (mut admin, seen) = connect_collecting_as(&db, "postgres");
    // Not vacuous: with this search_path, plain SQL does pick the look-alikes up.
    admin
        .batch_execute(
            "SET search_path = public, pg_catalog; SELECT 'a'::text = 'b'::text; RESET search_path",
        )
        .unwrap();
    assert!(
        !hijacks(&seen).is_empty(),
        "the planted operator was not picked up: the test would prove nothing"
    );
    seen.lock().unwrap().clear();
    admin.batch_execute("TRUNCATE public.hijack_log").unwrap();
    let log_before = server_log().len();

    let mut run = Vec::new();
    for (round, search_path) in [("hostile", "public, pg_catalog"), ("default", "\"$user\", public")] {
        admin.batch_execute("UPDATE public.docs SET emb = NULL, answer = NULL, label = NULL").unwrap();
        run = run_everything(&mut admin, &s, search_path, round);
        assert_eq!(hijacks(&seen), Vec::<String>::new(), "search_path {search_path}: planted objects ran");
    }
    let logged: i64 =
        admin.query_one("SELECT pg_catalog.count(*) FROM public.hijack_log", &[]).unwrap().get(0);
    assert_eq!(logged, 0);
    let log = server_log();
    let since: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| l.contains("HIJACKED") && l.contains("e2e_search_path"))
        .collect();
    assert!(since.is_empty(), "the server log shows a hijack:\n{}", since.join("\n"));

    // Every routine of the extension was run above.
    let routines: Vec<String> = admin
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
              WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_bailian')
                AND d.classid = 'pg_proc'::regclass ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut run: Vec<String> = run.into_iter().map(String::from).collect();
    run.sort();
    assert_eq!(routines, run, "a routine of the extension is not exercised by this test");

    // The jobs run with the caller's rights: an unprivileged role with just the grants on the
    // table, the look-alikes first on its path, runs them without running any of them.
    fresh_role(&mut admin, "sp_clerk", "");
    admin
        .batch_execute(
            "GRANT SELECT, UPDATE ON public.docs TO sp_clerk;
             UPDATE public.docs SET emb = NULL, answer = NULL, label = NULL;
             TRUNCATE public.hijack_log",
        )
        .unwrap();
    seen.lock().unwrap().clear();
    let (mut clerk, clerk_seen) = connect_collecting_as(&db, "sp_clerk");
    clerk.batch_execute("SET search_path = public, pg_catalog").unwrap();
    clerk
        .batch_execute(
            "CALL ai_update('docs', 'answer', $$public.ai_gen('chat', body::pg_catalog.text)$$, batch_size => 2, \
                            filter => $$id OPERATOR(pg_catalog.<=) 3$$)",
        )
        .unwrap();
    clerk.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 3)").unwrap();
    clerk.batch_execute("CALL ai_gen_column('docs', 'body', 'answer', 'chat', 'Say: {0}')").unwrap();
    clerk
        .batch_execute(
            "CALL ai_update('docs', 'label', $$public.ai_classify('chat', body::pg_catalog.text, \
                            ARRAY['none', 'row']::pg_catalog.text[])$$, batch_size => 4)",
        )
        .unwrap();
    // What a Citus coordinator asks each node before a column job, asked here by the clerk
    // with the look-alikes first on the path it passes and on its own.
    let to_fill: i64 = clerk
        .query_one(
            "SELECT ai_update_rows_to_fill('public.docs', 'label', $$id OPERATOR(pg_catalog.>) 0$$, 'public, pg_catalog')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(to_fill, 0, "every label is filled by now");
    // The prompts view (and the function under it) is for everyone; replacing a prompt is not.
    assert_eq!(prompt_rows(&mut clerk).len(), 7);
    let (code, msg) = error_of(
        clerk.batch_execute("SELECT ai_set_prompt('chat', 'ai_classify', 'Pick one of {labels}. JSON.')"),
    );
    assert_eq!((code.as_str(), msg.as_str()), ("42501", "permission denied for function ai_set_prompt"));
    assert_eq!(hijacks(&clerk_seen), Vec::<String>::new(), "planted objects ran for an unprivileged caller");
    let logged: i64 =
        admin.query_one("SELECT pg_catalog.count(*) FROM public.hijack_log", &[]).unwrap().get(0);
    assert_eq!(logged, 0);
    let filled: i64 = admin
        .query_one(
            "SELECT pg_catalog.count(*) FROM public.docs WHERE emb IS NOT NULL AND answer IS NOT NULL
                AND label OPERATOR(pg_catalog.=) 'row'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(filled, 7);
}
