//! ai_gen, ai_translate and ai_embed end to end: a real PostgreSQL server with the extension
//! installed, real HTTP over loopback to the stand-in, checked on both sides.

mod common;

use bailian_standin::{chat_reply, embedding_for, translation_reply};
use common::*;
use serde_json::json;

#[test]
fn the_three_functions_over_a_table() {
    let (mut c, _) = fresh_db("three_functions");
    let s = standin();
    deploy(
        &mut c,
        &s,
        "chat",
        "qwen-plus",
        ", params => '{\"system\": \"Answer briefly.\", \"temperature\": 0.2}'",
    );
    deploy(&mut c, &s, "mt", "qwen-mt-plus", ", params => '{\"terms\": [{\"source\": \"数据库\", \"target\": \"database\"}], \"domains\": \"IT\"}'");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 256}'");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text);
         INSERT INTO docs VALUES (1, '数据库很快'), (2, 'the quick brown fox'), (3, NULL), (4, '')",
    )
    .unwrap();

    let rows = c
        .query(
            "SELECT id, ai_gen('chat', body), ai_translate('mt', body, 'English'), ai_embed('emb', body)
               FROM docs ORDER BY id",
            &[],
        )
        .unwrap();
    for row in &rows {
        let id: i32 = row.get(0);
        let gen: Option<String> = row.get(1);
        let tr: Option<String> = row.get(2);
        let emb: Option<Vec<f32>> = row.get(3);
        match id {
            1 => {
                assert_eq!(gen.as_deref(), Some(chat_reply("qwen-plus", "数据库很快", 0).as_str()));
                let terms = [("数据库".to_string(), "database".to_string())];
                assert_eq!(
                    tr.as_deref(),
                    Some(translation_reply("数据库很快", "auto", "English", &terms).as_str())
                );
                assert_eq!(emb.unwrap(), embedding_for("数据库很快", 256));
            }
            2 => {
                assert_eq!(gen.unwrap(), "Echo from qwen-plus: the quick brown fox");
                assert_eq!(emb.unwrap(), embedding_for("the quick brown fox", 256));
            }
            // NULL in, NULL out; an empty string embeds to NULL.
            3 => assert!(gen.is_none() && tr.is_none() && emb.is_none()),
            4 => assert!(emb.is_none()),
            _ => unreachable!(),
        }
    }

    // What went over the wire.
    let log = s.requests();
    let chat = log.iter().find(|r| r.model == "qwen-plus").unwrap();
    assert_eq!(chat.path, "/compatible-mode/v1/chat/completions");
    assert_eq!(chat.auth_hint, "sk-...0000");
    assert_eq!(chat.body["messages"][0], json!({"role": "system", "content": "Answer briefly."}));
    assert_eq!(chat.body["temperature"], json!(0.2));
    let mt = log.iter().find(|r| r.model == "qwen-mt-plus").unwrap();
    assert_eq!(mt.body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        mt.body["translation_options"],
        json!({"source_lang": "auto", "target_lang": "English", "terms": [{"source": "数据库", "target": "database"}], "domains": "IT"})
    );
    let emb = log.iter().find(|r| r.model == "text-embedding-v4").unwrap();
    assert_eq!(emb.path, "/compatible-mode/v1/embeddings");
    assert_eq!(emb.body["dimensions"], json!(256));
    // NULL and '' rows never left the database.
    assert_eq!(log.iter().filter(|r| r.model == "qwen-plus").count(), 3);
    assert_eq!(log.iter().filter(|r| r.model == "text-embedding-v4").count(), 2);
}

#[test]
fn per_call_params_override_for_that_call_only() {
    let (mut c, _) = fresh_db("per_call_params");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", ", params => '{\"temperature\": 0.2, \"max_tokens\": 100}'");
    deploy(&mut c, &s, "vl", "qwen3-vl-plus", "");
    deploy(&mut c, &s, "mt", "qwen-mt-turbo", ", params => '{\"source_lang\": \"zh\"}'");
    let out = one_text(
        &mut c,
        "SELECT ai_gen('chat', 'one two three four', '{\"temperature\": 1.5, \"max_tokens\": 3, \"seed\": 7, \"stop\": [\"END\"]}')",
    );
    assert_eq!(out.as_deref(), Some("Echo from qwen-plus:"), "max_tokens truncates");
    one_text(&mut c, "SELECT ai_gen('chat', 'again')");
    let out = one_text(
        &mut c,
        "SELECT ai_gen('vl', 'what is shown?', params => '{\"images\": [\"https://example.com/cat.png\", \"data:image/png;base64,iVBORw0KGgo=\"]}')",
    );
    assert_eq!(out.as_deref(), Some("Echo from qwen3-vl-plus (2 images): what is shown?"));
    one_text(&mut c, "SELECT ai_translate('mt', '你好', 'French', '{\"source_lang\": \"auto\", \"domains\": \"greetings\"}')");
    one_text(&mut c, "SELECT ai_translate('mt', '你好', 'French')");

    let log = s.requests();
    assert_eq!(log[0].body["temperature"], json!(1.5));
    assert_eq!(log[0].body["max_tokens"], json!(3));
    assert_eq!(log[0].body["seed"], json!(7));
    assert_eq!(log[0].body["stop"], json!(["END"]));
    assert_eq!(log[1].body["temperature"], json!(0.2), "the override lasted one call");
    assert_eq!(log[1].body["max_tokens"], json!(100));
    assert_eq!(
        log[2].body["messages"][0]["content"][0],
        json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}})
    );
    assert_eq!(log[3].body["translation_options"]["source_lang"], json!("auto"));
    assert_eq!(log[3].body["translation_options"]["domains"], json!("greetings"));
    assert_eq!(log[4].body["translation_options"]["source_lang"], json!("zh"));

    // Per-call params are validated like deployed ones.
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('chat', 'x', '{\"temperature\": 3}')", &[]));
    assert_eq!(code, "22023");
    assert_eq!(msg, "invalid value for parameter \"temperature\": 3; allowed: a number in [0, 2)");
    let (code, msg) =
        error_of(c.query_one("SELECT ai_gen('chat', 'x', '{\"images\": [\"https://a/b.png\"]}')", &[]));
    assert_eq!(code, "22023");
    assert!(msg.starts_with("unknown parameter \"images\"") || msg.contains("does not apply"), "{msg}");
    let (code, _) = error_of(c.query_one("SELECT ai_translate('mt', 'x', '')", &[]));
    assert_eq!(code, "22023");
    assert_eq!(s.requests().len(), 5, "rejected calls sent nothing");
}

#[test]
fn ai_translate_on_a_chat_model_uses_a_prompt() {
    let (mut c, _) = fresh_db("translate_chat");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-flash", "");
    let out = one_text(&mut c, "SELECT ai_translate('chat', 'Guten Morgen', 'English')").unwrap();
    assert!(out.starts_with("Echo from qwen-flash: Translate the following text into English."), "{out}");
    assert!(out.ends_with("Guten Morgen"));
    assert!(s.requests()[0].body.get("translation_options").is_none());
}

#[test]
fn the_default_chat_model_rule() {
    let (mut c, _) = fresh_db("default_chat");
    let s = standin();
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('hi')", &[]));
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("ZB002", "ai_gen(prompt) needs a chat model, and none is deployed")
    );
    deploy(&mut c, &s, "emb", "text-embedding-v3", "");
    deploy(&mut c, &s, "first", "qwen-plus", "");
    assert_eq!(one_text(&mut c, "SELECT ai_gen('hi')").as_deref(), Some("Echo from qwen-plus: hi"));
    deploy(&mut c, &s, "second", "qwen-max", "");
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('hi')", &[]));
    assert_eq!(code, "ZB002");
    assert_eq!(msg, "ai_gen(prompt) cannot choose among the deployed chat models (\"first\", \"second\")");
    c.batch_execute("SET pg_bailian.default_chat_model = 'second'").unwrap();
    assert_eq!(one_text(&mut c, "SELECT ai_gen('hi')").as_deref(), Some("Echo from qwen-max: hi"));
    c.batch_execute("SET pg_bailian.default_chat_model = 'emb'").unwrap();
    let (code, _) = error_of(c.query_one("SELECT ai_gen('hi')", &[]));
    assert_eq!(code, "42809");
    c.batch_execute("SET pg_bailian.default_chat_model = 'gone'").unwrap();
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('hi')", &[]));
    assert_eq!((code.as_str(), msg.as_str()), ("42704", "model \"gone\" is not deployed"));
    assert_eq!(one_text(&mut c, "SELECT ai_gen(NULL)"), None);
}

#[test]
fn redeploying_takes_effect_in_the_same_session() {
    let (mut c, _) = fresh_db("redeploy_session");
    let (a, b) = (standin(), standin());
    deploy(&mut c, &a, "chat", "qwen-plus", "");
    one_text(&mut c, "SELECT ai_gen('chat', 'one')");
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('chat', 'qwen-max', '{}', base_url => '{}', replace => true)",
        key("chat"),
        b.base_url()
    ))
    .unwrap();
    assert_eq!(one_text(&mut c, "SELECT ai_gen('chat', 'two')").as_deref(), Some("Echo from qwen-max: two"));
    c.batch_execute("SELECT ai_undeploy_model('chat')").unwrap();
    let (code, _) = error_of(c.query_one("SELECT ai_gen('chat', 'three')", &[]));
    assert_eq!(code, "42704");
    assert_eq!((a.stats().requests, b.stats().requests), (1, 1));
}

#[test]
fn env_keys_are_read_from_the_server_environment() {
    let (mut c, _) = fresh_db("env_keys");
    let s = standin();
    // scripts/lib.sh starts the cluster with PG_BAILIAN_DEMO_KEY in its environment.
    let demo_key =
        std::env::var("PG_BAILIAN_DEMO_KEY").expect("PG_BAILIAN_DEMO_KEY (set by scripts/test.sh)");
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('e', 'text-embedding-v4', 'env:PG_BAILIAN_DEMO_KEY', base_url => '{}');
         SELECT ai_deploy_model('missing', 'qwen-plus', 'env:PG_BAILIAN_NO_SUCH_VARIABLE', base_url => '{}')",
        s.base_url(),
        s.base_url()
    ))
    .unwrap();
    let v: Option<Vec<f32>> = c.query_one("SELECT ai_embed('e', 'hello')", &[]).unwrap().get(0);
    assert_eq!(v.unwrap().len(), 1024, "the model's default dimension");
    // The stand-in logs the key it received as a hint.
    let sent = bailian_core::secret::ApiKey::new(demo_key);
    assert_eq!(s.requests()[0].auth_hint, sent.hint());
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('missing', 'x')", &[]));
    assert_eq!(code, "ZBK01");
    assert!(msg.contains("environment variable PG_BAILIAN_NO_SUCH_VARIABLE is not set"), "{msg}");
}

#[test]
fn hundreds_of_calls_reuse_a_few_connections() {
    let (mut c, _) = fresh_db("connection_reuse");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-flash", "");
    deploy(&mut c, &s, "emb", "text-embedding-v3", "");
    let n: i64 = c
        .query_one("SELECT count(ai_gen('chat', 'row ' || g)) FROM generate_series(1, 300) g", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 300);
    for i in 0..100 {
        c.query_one("SELECT ai_embed('emb', $1)", &[&format!("statement {i}")]).unwrap();
    }
    let stats = s.stats();
    assert_eq!(stats.requests, 400);
    // The aggregate's calls are batched (16 in flight, so up to 16 connections); the 100
    // statements after reuse them.
    assert!(stats.connections_accepted <= 16, "{stats:?}");
}
