//! Hologres' SQL on pg_bailian: model registration in SQL (`register_external_model`,
//! `list_external_models`, `delete_external_model`), model-less calls through per-function
//! default models (`ai_set_default_model`, `ai_default_models`), prompt objects (`prompt()`),
//! and image bytes with a named format (`ai_embed(model, bytea, file_format)`): scripts shaped
//! as Hologres' documentation and tooling write them, run against the stand-in, every answer
//! checked against the form with a model_name or the stand-in's own deterministic reply.

mod common;

use bailian_standin::{embedding_for, translation_reply, Standin};
use common::*;
use postgres::Client;

fn register(c: &mut Client, s: &Standin, name: &str, model_type: &str, task: &str, extra: &str) {
    let sql = format!(
        "CALL register_external_model('{name}', '{model_type}', 'bailian', \
         '{{\"api_key\": \"{}\", \"base_url\": \"{}\"{extra}}}', '{task}')",
        key(name),
        s.base_url()
    );
    c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn models(c: &mut Client) -> Vec<(String, String, String, String)> {
    c.query("SELECT model_name, model_type, model_provider, task FROM list_external_models()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn floats(c: &mut Client, sql: &str) -> Option<Vec<f32>> {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn float(c: &mut Client, sql: &str) -> Option<f64> {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// (function_name, model_name set, effective_model, source) of ai_default_models.
fn defaults(c: &mut Client) -> Vec<(String, Option<String>, Option<String>, String)> {
    c.query("SELECT function_name, model_name, effective_model, source FROM ai_default_models", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn default_of(c: &mut Client, function: &str) -> (Option<String>, Option<String>, String) {
    let row = defaults(c).into_iter().find(|d| d.0 == function).unwrap();
    (row.1, row.2, row.3)
}

#[test]
fn a_hologres_script_runs_unchanged() {
    let (mut c, _) = fresh_db("holo_script");
    let s = standin();
    // Registration as Hologres' tooling writes it; config holds the key and retry settings.
    register(
        &mut c,
        &s,
        "qwen_plus",
        "qwen-plus",
        "chat/completions",
        ", \"max_retries\": 3, \"timeout\": 60",
    );
    register(
        &mut c,
        &s,
        "text_embedding_v4",
        "text-embedding-v4",
        "embedding",
        ", \"params\": {\"dimension\": 64}",
    );
    register(&mut c, &s, "qwen_mt", "qwen-mt-plus", "translation", "");
    register(&mut c, &s, "reranker", "gte-rerank-v2", "rerank", "");
    assert_eq!(
        models(&mut c),
        [
            ("qwen_mt", "qwen-mt-plus", "bailian", "translation"),
            ("qwen_plus", "qwen-plus", "bailian", "chat/completions"),
            ("reranker", "gte-rerank-v2", "bailian", "rerank"),
            ("text_embedding_v4", "text-embedding-v4", "bailian", "embedding"),
        ]
        .map(|(a, b, p, t)| (a.to_string(), b.to_string(), p.to_string(), t.to_string()))
    );
    // What registration stored is what ai_deploy_model stores: the retry settings, the params,
    // a key hint, never the key.
    let row = c
        .query_one(
            "SELECT max_retries, timeout, initial_retry_delay, key_hint, params::text FROM ai_models
              WHERE model_name = 'qwen_plus'",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, f64>(1), row.get::<_, f64>(2)), (3, 60.0, 0.5));
    assert_eq!(row.get::<_, String>(3), "sk-...0000");
    let sealed: String = c
        .query_one("SELECT api_key FROM bailian.model_keys WHERE model_name = 'qwen_plus'", &[])
        .unwrap()
        .get(0);
    assert!(sealed.starts_with("sealed:"), "{sealed}");

    // Model-less calls: one model of each task, so each function finds its own.
    assert_eq!(one_text(&mut c, "SELECT ai_gen('介绍下 hologres')"), Some(echo("介绍下 hologres")));
    assert_eq!(floats(&mut c, "SELECT ai_embed('hello world')"), Some(embedding_for("hello world", 64)));
    assert_eq!(
        floats(&mut c, "SELECT ai_embed('hello world')"),
        floats(&mut c, "SELECT ai_embed('text_embedding_v4', 'hello world')")
    );
    assert_eq!(floats(&mut c, "SELECT ai_embed('')"), None);
    assert_eq!(floats(&mut c, "SELECT ai_embed(NULL)"), None);
    assert_eq!(
        one_text(&mut c, "SELECT ai_translate('你好, 世界', 'English')"),
        Some(translation_reply("你好, 世界", "auto", "English", &[]))
    );
    let same = |c: &mut Client, a: &str, b: &str| {
        let (x, y) = (one_text(c, a), one_text(c, b));
        assert!(x.is_some(), "{a}: NULL");
        assert_eq!(x, y, "{a} vs {b}");
    };
    same(
        &mut c,
        "SELECT ai_classify('the app has a bug', ARRAY['billing', 'bug'])",
        "SELECT ai_classify('qwen_plus', 'the app has a bug', ARRAY['billing', 'bug'])",
    );
    assert_eq!(
        one_text(&mut c, "SELECT ai_classify('the app has a bug', ARRAY['billing', 'bug'])").as_deref(),
        Some("bug")
    );
    same(
        &mut c,
        "SELECT ai_extract('name: Ann; city: Oslo', ARRAY['name', 'city'])::text",
        "SELECT ai_extract('qwen_plus', 'name: Ann; city: Oslo', ARRAY['name', 'city'])::text",
    );
    assert_eq!(
        one_text(&mut c, "SELECT ai_mask('mail ann@example.com now', ARRAY['email'])").as_deref(),
        Some("mail [MASKED] now")
    );
    assert_eq!(
        one_text(&mut c, "SELECT ai_summarize('one two three four five')"),
        one_text(&mut c, "SELECT ai_summarize('qwen_plus', 'one two three four five')")
    );
    assert_eq!(one_text(&mut c, "SELECT ai_fix_grammar('i am  here')").as_deref(), Some("I am here."));
    assert_eq!(one_text(&mut c, "SELECT ai_sentiment('I love it')").as_deref(), Some("positive"));
    // ai_rank prefers the rerank model (the only one) over the chat model.
    let rank = float(&mut c, "SELECT ai_rank('red fox', 'The red fox runs.')");
    assert!(rank.is_some());
    assert_eq!(rank, float(&mut c, "SELECT ai_rank('reranker', 'red fox', 'The red fox runs.')"));
    assert!(s.requests().last().unwrap().path.contains("rerank"), "{}", s.requests().last().unwrap().path);
    let sim = float(&mut c, "SELECT ai_similarity('red fox', 'red dog')").unwrap();
    let want =
        bailian_core::tasks::cosine(&embedding_for("red fox", 64), &embedding_for("red dog", 64)).unwrap();
    assert!((sim - want).abs() < 1e-9, "{sim} vs {want}");

    // Prompt objects: prompt() builds Hologres' {"prompt", "args"}; ai_gen renders and sends it.
    assert_eq!(
        json_of(&mut c, "SELECT prompt('Translate {0} into {1}', 'cat', 'French')"),
        serde_json::json!({"prompt": "Translate {0} into {1}", "args": ["cat", "French"]})
    );
    assert_eq!(
        one_text(&mut c, "SELECT ai_gen('qwen_plus', prompt('Translate {0} into {1}', 'cat', 'French'))"),
        Some(echo("Translate cat into French"))
    );
    assert_eq!(one_text(&mut c, "SELECT ai_gen(prompt('Say {0}', 'hi'))"), Some(echo("Say hi")));
    assert_eq!(one_text(&mut c, "SELECT ai_gen(prompt('No arguments'))"), Some(echo("No arguments")));
    // The shape Hologres' tooling builds by hand, with per-call "parameters".
    assert_eq!(
        one_text(
            &mut c,
            r#"SELECT ai_gen('qwen_plus', '{"prompt": "Hi {0}, {1}", "args": ["Ann", 7], "parameters": {"temperature": 0.2}}'::jsonb)"#
        ),
        Some(echo("Hi Ann, 7"))
    );
    assert_eq!(s.requests().last().unwrap().body["temperature"], serde_json::json!(0.2));
    // params passed to the call override the object's parameters.
    one_text(
        &mut c,
        r#"SELECT ai_gen('qwen_plus', '{"prompt": "x", "parameters": {"temperature": 0.2}}'::jsonb, '{"temperature": 0.7}')"#,
    );
    assert_eq!(s.requests().last().unwrap().body["temperature"], serde_json::json!(0.7));
    // A quoted literal is still text, sent as written, even when it looks like a prompt object.
    assert_eq!(one_text(&mut c, "SELECT ai_gen('qwen_plus', 'some literal')"), Some(echo("some literal")));
    assert_eq!(
        one_text(&mut c, r#"SELECT ai_gen('qwen_plus', '{"prompt": "x {0}", "args": ["y"]}')"#),
        Some(echo(r#"{"prompt": "x {0}", "args": ["y"]}"#))
    );
    assert_eq!(one_text(&mut c, "SELECT ai_gen('plain literal')"), Some(echo("plain literal")));
    assert_eq!(one_text(&mut c, "SELECT ai_gen(NULL)"), None);
    assert_eq!(one_text(&mut c, "SELECT ai_gen('qwen_plus', NULL)"), None);
    assert_eq!(one_text(&mut c, "SELECT ai_gen(NULL::jsonb)"), None);
    let sent = s.requests().len();
    for (sql, wanted) in [
        (r#"SELECT ai_gen('qwen_plus', '{"args": ["y"]}'::jsonb)"#, "needs \"prompt\""),
        (
            r#"SELECT ai_gen('qwen_plus', '{"prompt": "x", "lang": "en"}'::jsonb)"#,
            "allowed: prompt, template, args, parameters",
        ),
        (
            r#"SELECT ai_gen('qwen_plus', '{"prompt": "x {2}", "args": ["y"]}'::jsonb)"#,
            "template of the prompt object",
        ),
        (
            r#"SELECT ai_gen('qwen_plus', '{"prompt": "x", "parameters": {"temperature": 9}}'::jsonb)"#,
            "temperature",
        ),
    ] {
        let (code, msg) = error_of(c.query_one(sql, &[]));
        assert_eq!(code, "22023", "{sql}: {msg}");
        assert!(msg.contains(wanted), "{sql}: {msg}");
    }
    assert_eq!(s.requests().len(), sent, "bad prompt objects send nothing");

    // The mapping view says which model each function uses and why.
    assert_eq!(
        default_of(&mut c, "ai_rank"),
        (None, Some("reranker".into()), "the only deployed rerank model".into())
    );
    assert_eq!(
        default_of(&mut c, "ai_translate"),
        (None, Some("qwen_mt".into()), "the only deployed translation model".into())
    );

    // Removal as Hologres writes it; a second removal is an error, as is any unknown name.
    c.batch_execute("CALL delete_external_model('qwen_mt')").unwrap();
    assert_eq!(models(&mut c).len(), 3);
    let (code, msg) = error_of(c.batch_execute("CALL delete_external_model('qwen_mt')"));
    assert_eq!((code.as_str(), msg.as_str()), ("42704", "model \"qwen_mt\" is not deployed"));
    // ai_translate now falls back to the only chat model, through a prompt.
    assert_eq!(
        default_of(&mut c, "ai_translate"),
        (None, Some("qwen_plus".into()), "the only deployed chat model".into())
    );
    assert!(one_text(&mut c, "SELECT ai_translate('hola', 'English')")
        .unwrap()
        .starts_with("Echo from qwen-plus"));
}

#[test]
fn model_less_calls_are_batched_like_the_others() {
    let (mut c, _) = fresh_db("holo_batched");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text);
         INSERT INTO docs SELECT g, 'row ' || g FROM generate_series(1, 40) g;",
    )
    .unwrap();
    for (with_model, model_less, calls) in [
        ("SELECT id, ai_embed('emb', body) FROM docs", "SELECT id, ai_embed(body) FROM docs", "ai_embed"),
        (
            "SELECT id, ai_sentiment('chat', body) FROM docs",
            "SELECT id, ai_sentiment(body) FROM docs",
            "ai_sentiment",
        ),
        (
            "SELECT id, ai_gen('chat', prompt('Say {0}', body)) FROM docs",
            "SELECT id, ai_gen(prompt('Say {0}', body)) FROM docs",
            "ai_gen",
        ),
    ] {
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN (COSTS OFF) {model_less}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(plan.iter().any(|l| l.contains("Custom Scan (AI Batch)")), "{model_less}: {plan:#?}");
        assert!(plan.iter().any(|l| l.contains(&format!("AI Calls: {calls}"))), "{model_less}: {plan:#?}");
        let before = s.requests().len();
        let a: Vec<String> = c
            .query(&format!("SELECT q::text FROM ({with_model}) q ORDER BY id"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let with_model_requests = s.requests().len() - before;
        let before = s.requests().len();
        let b: Vec<String> = c
            .query(&format!("SELECT q::text FROM ({model_less}) q ORDER BY id"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let model_less_requests = s.requests().len() - before;
        assert_eq!(a.len(), 40);
        assert_eq!(a, b, "{model_less}");
        assert_eq!(model_less_requests, with_model_requests, "{model_less}: requests");
    }
    // ai_embed inputs are packed as for the form with a model: 40 rows, 10 per request, when
    // every row is wanted (an UPDATE).
    c.batch_execute("ALTER TABLE docs ADD COLUMN emb real[]").unwrap();
    let before = s.requests().len();
    c.batch_execute("UPDATE docs SET emb = ai_embed(body)").unwrap();
    assert_eq!(s.requests().len() - before, 4);
    let wrong: i64 =
        c.query_one("SELECT count(*) FROM docs WHERE emb <> ai_embed('emb', body)", &[]).unwrap().get(0);
    assert_eq!(wrong, 0);
    // And in a column job, whose chunks run through the same node.
    c.batch_execute("ALTER TABLE docs ADD COLUMN mood text").unwrap();
    c.batch_execute("CALL ai_update('docs', 'mood', 'ai_sentiment(body)', batch_size => 16)").unwrap();
    let (filled, wrong): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(mood), count(*) FILTER (WHERE mood <> ai_sentiment('chat', body)) FROM docs",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((filled, wrong), (40, 0));
}

#[test]
fn default_models_are_set_checked_and_guarded() {
    let (mut c, db) = fresh_db("holo_defaults");
    let s = standin();
    let (code, msg) = error_of(c.query_one("SELECT ai_embed('x')", &[]));
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("ZB002", "ai_embed(content) needs an embedding model, and none is deployed")
    );
    deploy(&mut c, &s, "a", "qwen-plus", "");
    deploy(&mut c, &s, "b", "qwen-flash", "");
    deploy(&mut c, &s, "emb", "text-embedding-v3", "");
    deploy(&mut c, &s, "thinker", "qwq-plus", "");
    let (code, msg) = error_of(c.query_one("SELECT ai_classify('x', ARRAY['p', 'q'])", &[]));
    assert_eq!(code, "ZB002");
    assert_eq!(msg, "ai_classify(content, labels) cannot choose among the deployed chat models (\"a\", \"b\", \"thinker\")");
    let (_, effective, source) = default_of(&mut c, "ai_classify");
    assert_eq!((effective, source), (None, msg.clone()));

    c.batch_execute("SELECT ai_set_default_model('ai_classify', 'b')").unwrap();
    assert_eq!(
        default_of(&mut c, "ai_classify"),
        (Some("b".into()), Some("b".into()), "set with ai_set_default_model by postgres".into())
    );
    assert_eq!(
        one_text(&mut c, "SELECT ai_classify('a bug', ARRAY['bug', 'praise'])").as_deref(),
        Some("bug")
    );
    assert_eq!(s.requests().last().unwrap().model, "qwen-flash");

    // Bad input: a clear error naming what is allowed, and the mapping unchanged.
    let before = defaults(&mut c);
    for (sql, code, wanted) in [
        (
            "SELECT ai_set_default_model('ai_nope', 'a')",
            "22023",
            "allowed: ai_gen, ai_embed, ai_translate, ai_classify",
        ),
        ("SELECT ai_set_default_model('ai_chunk', 'a')", "22023", "has no model-less form"),
        (
            "SELECT ai_set_default_model('ai_classify', 'emb')",
            "42809",
            "ai_classify cannot use model \"emb\"",
        ),
        ("SELECT ai_set_default_model('ai_embed', 'a')", "42809", "its task is chat"),
        ("SELECT ai_set_default_model('ai_classify', 'ghost')", "42704", "model \"ghost\" is not deployed"),
        ("SELECT ai_set_default_model('ai_classify', 'thinker')", "22023", "always thinks"),
        ("SELECT ai_set_default_model(NULL, 'a')", "22004", "function_name must not be NULL"),
    ] {
        let (got, msg) = error_of(c.query_one(sql, &[]));
        assert_eq!(got, code, "{sql}: {msg}");
        assert!(msg.contains(wanted), "{sql}: {msg}");
        assert_eq!(defaults(&mut c), before, "{sql} changed the mapping");
    }
    // ai_gen and ai_rank may use a thinking model (ai_gen) or a chat model (ai_rank).
    c.batch_execute("SELECT ai_set_default_model('ai_gen', 'thinker')").unwrap();
    assert_eq!(default_of(&mut c, "ai_gen").1.as_deref(), Some("thinker"));
    // The session's pg_bailian.default_chat_model comes first for ai_gen.
    c.batch_execute("SET pg_bailian.default_chat_model = 'a'").unwrap();
    assert_eq!(one_text(&mut c, "SELECT ai_gen('hi')"), Some(echo("hi")));
    assert_eq!(default_of(&mut c, "ai_gen").2, "pg_bailian.default_chat_model");
    c.batch_execute("RESET pg_bailian.default_chat_model").unwrap();
    c.batch_execute("SELECT ai_set_default_model('ai_gen', NULL)").unwrap();
    assert_eq!(default_of(&mut c, "ai_gen").0, None);

    // A mapping goes with its model: undeploying b puts ai_classify back to automatic.
    c.batch_execute("SELECT ai_undeploy_model('b')").unwrap();
    assert_eq!(default_of(&mut c, "ai_classify").0, None);
    // A dump carries the mapping (the table is an extension configuration table).
    let dumped: bool = c
        .query_one(
            "SELECT 'bailian.default_models'::regclass = ANY (extconfig) FROM pg_extension WHERE extname = 'pg_bailian'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(dumped);

    // Privileges: setting a default is for the roles that may deploy, and a mapping another
    // role set is theirs.
    fresh_role(&mut c, "holo_user", "");
    fresh_role(&mut c, "holo_dba", "");
    c.batch_execute(
        "GRANT EXECUTE ON FUNCTION ai_set_default_model(text, text) TO holo_dba;
         SELECT ai_set_default_model('ai_classify', 'a');",
    )
    .unwrap();
    let mut user = connect_as(&db, "holo_user");
    let (code, _) = error_of(user.query_one("SELECT ai_set_default_model('ai_sentiment', 'a')", &[]));
    assert_eq!(code, "42501");
    // Everyone may call the model-less forms and read the view.
    assert_eq!(
        one_text(&mut user, "SELECT ai_classify('a bug', ARRAY['bug', 'praise'])").as_deref(),
        Some("bug")
    );
    assert_eq!(defaults(&mut user).len(), 11);
    let mut dba = connect_as(&db, "holo_dba");
    dba.batch_execute("SELECT ai_set_default_model('ai_sentiment', 'a')").unwrap();
    assert_eq!(default_of(&mut dba, "ai_sentiment").2, "set with ai_set_default_model by holo_dba");
    let before = defaults(&mut dba);
    for sql in [
        "SELECT ai_set_default_model('ai_classify', 'thinker')",
        "SELECT ai_set_default_model('ai_classify', NULL)",
    ] {
        let (code, msg) = error_of(dba.query_one(sql, &[]));
        assert_eq!(code, "42501", "{sql}");
        assert!(msg.contains("was set by role \"postgres\""), "{msg}");
    }
    assert_eq!(defaults(&mut dba), before);
    dba.batch_execute("SELECT ai_set_default_model('ai_sentiment', NULL)").unwrap();
    // A superuser may change any.
    c.batch_execute("SELECT ai_set_default_model('ai_classify', NULL)").unwrap();
    drop((user, dba));
}

#[test]
fn bad_registrations_change_nothing() {
    let (mut c, db) = fresh_db("holo_bad_registrations");
    let s = standin();
    let base = s.base_url();
    let k = key("bad");
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("'qwen-plus', 'hologres', '{{\"api_key\": \"{k}\"}}', 'chat/completions'"), "22023", "allowed: 'bailian', 'opensearch'"),
        (format!("'qwen-plus', 'openai', '{{\"api_key\": \"{k}\"}}', 'chat/completions'"), "22023", "invalid model_provider \"openai\"; allowed: 'bailian', 'opensearch'"),
        (format!("'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\"}}', 'image-generation'"), "22023", "allowed: 'chat/completions', 'embedding', 'translation', 'rerank'"),
        (format!("'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\"}}', 'chat'"), "22023", "Hologres calls it 'chat/completions'"),
        (format!("'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\"}}', 'embedding'"), "22023", "task 'embedding' does not fit model_type qwen-plus, whose task is 'chat/completions'"),
        ("'qwen-plus', 'bailian', '{}', 'chat/completions'".into(), "22023", "config has no \"api_key\""),
        (format!("'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\", \"retries\": 3}}', 'chat/completions'"), "22023", "unknown config key \"retries\"; allowed: api_key, max_retries, initial_retry_delay, max_retry_delay, timeout, base_url, region, params, requests_per_minute, tokens_per_minute, workspace"),
        (format!("'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\", \"max_retries\": 500}}', 'chat/completions'"), "22023", "max_retries"),
        (format!("'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\", \"timeout\": \"60\"}}', 'chat/completions'"), "22023", "config \"timeout\" must be a number"),
        (format!("'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\", \"params\": {{\"temperature\": 5}}}}', 'chat/completions'"), "22023", "temperature"),
        (format!("'qwen-nope', 'bailian', '{{\"api_key\": \"{k}\"}}', 'chat/completions'"), "22023", "unsupported model_type \"qwen-nope\""),
        (format!("'qwen-plus', 'bailian', '[\"{k}\"]', 'chat/completions'"), "22023", "config must be a JSON object"),
    ];
    for (args, code, wanted) in &cases {
        let sql = format!("CALL register_external_model('m', {args})");
        let (got, msg) = error_of(c.batch_execute(&sql));
        assert_eq!(got, *code, "{sql}: {msg}");
        assert!(msg.contains(wanted), "{sql}: {msg}");
        assert!(!msg.contains(KEY_MARK), "{msg}");
        assert!(models(&mut c).is_empty(), "{sql} stored a model");
    }
    // Config that is not JSON fails in PostgreSQL's json input, before the procedure runs: the
    // key it quotes is still kept out of the server log (as every sk- token is).
    let log_before = server_log().len();
    let (code, _) = error_of(c.batch_execute(&format!(
        "CALL register_external_model('m', 'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\", ', 'chat/completions')"
    )));
    assert_eq!(code, "22P02");
    assert!(models(&mut c).is_empty());
    register(&mut c, &s, "m", "qwen-plus", "chat/completions", "");
    let (code, msg) = error_of(c.batch_execute(&format!(
        "CALL register_external_model('m', 'qwen-max', 'bailian', '{{\"api_key\": \"{k}\", \"base_url\": \"{base}\"}}', 'chat/completions')"
    )));
    assert_eq!(code, "42710", "{msg}");
    assert_eq!(models(&mut c)[0].1, "qwen-plus");

    // Privileges: as ai_deploy_model's. Not PUBLIC; a role granted both procedures registers
    // against an allowed host and cannot delete another role's model.
    fresh_role(&mut c, "holo_reg_user", "");
    fresh_role(&mut c, "holo_reg_dba", "");
    c.batch_execute(
        "GRANT EXECUTE ON PROCEDURE register_external_model(text, text, text, json, text),
                                    delete_external_model(text) TO holo_reg_dba",
    )
    .unwrap();
    let mut user = connect_as(&db, "holo_reg_user");
    // The library is loaded in the session first: what PostgreSQL logs before that (here the
    // permission error, which quotes the statement) is out of the extension's reach (README,
    // Security model), unless pg_bailian is in session_preload_libraries.
    user.batch_execute("SELECT ai_gen(NULL::text)").unwrap();
    let (code, _) = error_of(user.batch_execute(&format!(
        "CALL register_external_model('u', 'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\", \"base_url\": \"{base}\"}}', 'chat/completions')"
    )));
    assert_eq!(code, "42501");
    let (code, _) = error_of(user.batch_execute("CALL delete_external_model('m')"));
    assert_eq!(code, "42501");
    // Everyone sees the list (as ai_models).
    assert_eq!(models(&mut user).len(), 1);
    let mut dba = connect_as(&db, "holo_reg_dba");
    let (code, msg) = error_of(dba.batch_execute(&format!(
        "CALL register_external_model('d', 'qwen-plus', 'bailian', '{{\"api_key\": \"{k}\", \"base_url\": \"https://evil.example.com/v1\"}}', 'chat/completions')"
    )));
    assert_eq!(code, "42501", "{msg}");
    register(&mut dba, &s, "d", "qwen-plus", "chat/completions", "");
    let (code, msg) = error_of(dba.batch_execute("CALL delete_external_model('m')"));
    assert_eq!(code, "42501", "{msg}");
    dba.batch_execute("CALL delete_external_model('d')").unwrap();
    assert_eq!(models(&mut c).len(), 1);
    drop((user, dba));
    let log = server_log();
    for secret in [key("bad"), key("m"), key("d")] {
        assert!(!log[log_before..].contains(&secret), "the server log shows {secret}");
    }
}

/// A real PNG header and a JPEG one, so the format checks on both sides pass.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00";
const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00";

#[test]
fn image_bytes_with_a_named_format() {
    let (mut c, _) = fresh_db("holo_image_bytes");
    let s = standin();
    deploy(&mut c, &s, "vis", "tongyi-embedding-vision-flash", ", params => '{\"dimension\": 64}'");
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    let vector = |c: &mut Client, sql: &str, image: &[u8]| -> Option<Vec<f32>> {
        c.query_one(sql, &[&image]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
    };
    for (bytes, format) in [(PNG, "png"), (PNG, "PNG"), (JPEG, "jpg"), (JPEG, "jpeg")] {
        let v = vector(&mut c, &format!("SELECT ai_embed('vis', $1::bytea, '{format}')"), bytes).unwrap();
        assert_eq!(v.len(), 64);
        assert_eq!(Some(v), vector(&mut c, "SELECT ai_embed_image('vis', $1::bytea)", bytes), "{format}");
        let sent = s.requests().last().unwrap().body.to_string();
        let mime = if format.eq_ignore_ascii_case("png") { "image/png" } else { "image/jpeg" };
        assert!(sent.contains(&format!("data:{mime};base64,")), "{sent}");
    }
    let sent = s.requests().len();
    for (bytes, format, code, wanted) in [
        (PNG, "jpg", "22023", "the image bytes are a PNG image, not JPEG as file_format 'jpg' says; pass file_format => 'png'"),
        (JPEG, "webp", "22023", "the image bytes are a JPEG image, not WEBP"),
        (b"GIF89a....".as_slice(), "png", "22023", "are not a PNG image as file_format 'png' says"),
        (PNG, "gif", "22023", "invalid file_format \"gif\" (Bailian's multimodal embedding models do not take it); allowed: 'jpg', 'jpeg', 'png', 'bmp', 'webp', 'tiff', 'tif'"),
        (PNG, "heic", "22023", "allowed: 'jpg'"),
        (PNG, "svg", "22023", "invalid file_format \"svg\"; allowed"),
    ] {
        let (got, msg) = error_of(c.query_one(&format!("SELECT ai_embed('vis', $1::bytea, '{format}')"), &[&bytes]));
        assert_eq!(got, code, "{format}: {msg}");
        assert!(msg.contains(wanted), "{format}: {msg}");
    }
    let (code, msg) = error_of(c.query_one("SELECT ai_embed('emb', $1::bytea, 'png')", &[&PNG]));
    assert!(code == "22023" && msg.contains("embeds text only"), "{code}: {msg}");
    let (code, _) = error_of(c.query_one("SELECT ai_embed('vis', $1::bytea, NULL)", &[&PNG]));
    assert_eq!(code, "22004");
    assert_eq!(s.requests().len(), sent, "refused images send nothing");
    let none: Option<Vec<f32>> =
        c.query_one("SELECT ai_embed('vis', NULL::bytea, 'png')", &[]).unwrap().get(0);
    assert_eq!(none, None);
    let none: Option<Vec<f32>> = c.query_one("SELECT ai_embed('vis', ''::bytea, 'png')", &[]).unwrap().get(0);
    assert_eq!(none, None);
}

/// The defaults travel with the models: the database owner's dump carries them, and a
/// restore gives the same model-less calls.
#[test]
fn defaults_survive_dump_and_restore() {
    let (mut c, db) = fresh_db("holo_dump");
    let s = standin();
    deploy(&mut c, &s, "a", "qwen-plus", "");
    deploy(&mut c, &s, "b", "qwen-max", "");
    c.batch_execute("SELECT ai_set_default_model('ai_sentiment', 'b')").unwrap();
    fresh_role(&mut c, "holo_dump_owner", "");
    c.batch_execute(&format!("ALTER DATABASE {db} OWNER TO holo_dump_owner")).unwrap();
    let dump = pg_dump(&db, "holo_dump_owner");
    assert!(dump.contains("COPY bailian.default_models"), "the defaults are dumped");
    let mut admin = connect("postgres");
    admin.batch_execute("DROP DATABASE IF EXISTS e2e_holo_restored WITH (FORCE)").unwrap();
    admin.batch_execute("CREATE DATABASE e2e_holo_restored").unwrap();
    restore_plain("e2e_holo_restored", &dump);
    let mut restored = connect("e2e_holo_restored");
    assert_eq!(
        default_of(&mut restored, "ai_sentiment"),
        (Some("b".into()), Some("b".into()), "set with ai_set_default_model by postgres".into())
    );
    assert_eq!(one_text(&mut restored, "SELECT ai_sentiment('I love it')").as_deref(), Some("positive"));
    assert_eq!(s.requests().last().unwrap().model, "qwen-max");
    drop(restored);
    admin.batch_execute("DROP DATABASE e2e_holo_restored WITH (FORCE)").unwrap();
}
