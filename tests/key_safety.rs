//! No API key in any error, notice or server log line, even when the provider echoes it.

mod common;

use bailian_standin::Config;
use common::*;

#[test]
fn keys_reach_no_error_notice_or_log_line() {
    let (mut c, _) = fresh_db("key_safety");
    let s = standin_with(Config {
        accepted_keys: Some(vec![key("goodkey")]),
        echo_key_in_errors: true,
        ..Config::default()
    });
    let leaky = key("leaky");
    let bad_deploy = key("baddeploy");
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    // Deploys that succeed (a NOTICE), deploy errors at top level and inside a DO block
    // (where the error context quotes the statement), an env: key that is not set (a WARNING).
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('leaky', 'qwen-plus', '{leaky}', base_url => '{}', max_retries => 0)",
        s.base_url()
    ))
    .unwrap();
    let statements = [
        format!(
            "SELECT ai_deploy_model('x', 'qwen-plus', '{bad_deploy}', params => '{{\"temperature\": 9}}')"
        ),
        format!("SELECT ai_deploy_model('leaky', 'qwen-plus', '{bad_deploy}')"),
        format!("DO $$ BEGIN PERFORM ai_deploy_model('y', 'no-such-model', '{bad_deploy}'); END $$"),
        format!("SELECT ai_deploy_model('z', 'qwen-plus', '{bad_deploy}', region => 'mars')"),
    ];
    for sql in &statements {
        let (code, msg) = error_of(c.batch_execute(sql));
        assert!(!msg.contains(KEY_MARK), "{code} {msg}");
    }
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('envless', 'qwen-plus', 'env:PG_BAILIAN_UNSET_{}', base_url => '{}')",
        std::process::id(),
        s.base_url()
    ))
    .unwrap();

    // The provider refuses the key and repeats it in its message.
    let (code, msg) = error_of(c.query_one("SELECT ai_gen('leaky', 'hello')", &[]));
    assert_eq!(code, "ZB401");
    assert!(
        msg.starts_with("Bailian rejected the request to model \"leaky\": HTTP 401 invalid_api_key"),
        "{msg}"
    );
    assert!(msg.contains("sk-...0000") && !msg.contains(KEY_MARK), "{msg}");
    let (_, msg) = error_of(c.query_one("DO $$ BEGIN PERFORM ai_gen('leaky', 'from plpgsql'); END $$", &[]));
    assert!(!msg.contains(KEY_MARK), "{msg}");

    // Notices and warnings, collected through a second connection's notice handler.
    let sink = notices.clone();
    let mut noisy = {
        let port = std::env::var("PGPORT").unwrap_or_else(|_| "28816".into());
        let mut cfg: postgres::Config =
            format!("host=127.0.0.1 port={port} user=postgres dbname=e2e_key_safety").parse().unwrap();
        cfg.notice_callback(move |n| sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message())));
        cfg.connect(postgres::NoTls).unwrap()
    };
    noisy
        .batch_execute(&format!(
            "SELECT ai_deploy_model('leaky', 'qwen-max', '{leaky}', base_url => '{}', replace => true);
             SELECT ai_deploy_model('envless2', 'qwen-plus', 'env:PG_BAILIAN_UNSET_X', base_url => '{}')",
            s.base_url(),
            s.base_url()
        ))
        .unwrap();
    let seen = notices.lock().unwrap().join("\n");
    assert!(seen.contains("NOTICE: redeployed model \"leaky\" (qwen-max, chat task)"), "{seen}");
    assert!(seen.contains("WARNING: environment variable PG_BAILIAN_UNSET_X is not set"), "{seen}");
    assert!(!seen.contains(KEY_MARK), "{seen}");

    // The server log has these errors (so the check below is not vacuous) and no key.
    assert!(
        wait_for(std::time::Duration::from_secs(3), || server_log().contains("model \"leaky\": HTTP 401"))
    );
    let log = server_log();
    assert!(log.contains("unsupported model_type \"no-such-model\""), "deploy errors are logged");
    for secret in [&leaky[3..], &bad_deploy[3..]] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(hits.is_empty(), "the server log shows a key:\n{}", hits.join("\n"));
    }
}
