//! Keys at rest: sealed in the catalog with a master key kept outside the database, and no
//! privilege path shows one in plain text: default privileges in force at CREATE EXTENSION,
//! pg_read_all_data, dumps. The database owner can dump; a restore on the same cluster works.

mod common;

use bailian_standin::Config;
use common::*;
use std::os::unix::fs::PermissionsExt;

fn has(c: &mut postgres::Client, sql: &str) -> bool {
    c.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn default_privileges_at_create_extension_grant_nothing() {
    let (mut c, db) = fresh_bare_db("rest_default_privs");
    fresh_role(&mut c, "rest_snoop", "");
    c.batch_execute(
        "ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO rest_snoop, PUBLIC;
         ALTER DEFAULT PRIVILEGES GRANT ALL ON FUNCTIONS TO rest_snoop;
         ALTER DEFAULT PRIVILEGES GRANT ALL ON SCHEMAS TO rest_snoop, PUBLIC;
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO rest_snoop;
         ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
         CREATE EXTENSION pg_bailian",
    )
    .unwrap();
    c.batch_execute(&format!("SELECT ai_deploy_model('chat', 'qwen-plus', '{}')", key("restdefault")))
        .unwrap();
    for (check, expected) in [
        ("has_table_privilege('rest_snoop', 'bailian.model_keys', 'SELECT')", false),
        ("has_table_privilege('rest_snoop', 'bailian.models', 'SELECT,INSERT,UPDATE,DELETE')", false),
        ("has_table_privilege('public', 'bailian.model_keys', 'SELECT')", false),
        ("has_schema_privilege('rest_snoop', 'bailian', 'CREATE')", false),
        ("has_schema_privilege('rest_snoop', 'bailian', 'USAGE')", false),
        ("has_function_privilege('rest_snoop', 'ai_undeploy_model(text)', 'EXECUTE')", false),
        ("has_table_privilege('rest_snoop', 'ai_models', 'SELECT')", true),
        // What everyone may use stays usable, whatever the default privileges revoke.
        ("has_function_privilege('public', 'ai_gen(text,text,jsonb)', 'EXECUTE')", true),
        ("has_function_privilege('public', 'ai_embed_column(regclass,name,name,text,integer,text)', 'EXECUTE')", true),
        ("has_function_privilege('public', 'ai_deploy_model(text,text,text,jsonb,integer,float8,float8,float8,text,text,boolean,integer,integer,text,text,boolean,boolean)', 'EXECUTE')", false),
        ("has_table_privilege('rest_snoop', 'ai_models', 'INSERT')", false),
    ] {
        assert_eq!(has(&mut c, &format!("SELECT {check}")), expected, "{check}");
    }
    let mut snoop = connect_as(&db, "rest_snoop");
    for sql in [
        "SELECT api_key FROM bailian.model_keys",
        "SELECT * FROM bailian.models",
        "CREATE TABLE bailian.planted (x int)",
        "SELECT ai_deploy_model('mine', 'qwen-plus', 'env:DASHSCOPE_API_KEY')",
    ] {
        let (code, msg) = error_of(snoop.batch_execute(sql));
        assert_eq!(code, "42501", "{sql}: {msg}");
    }
}

#[test]
fn read_all_data_sees_only_sealed_keys_and_a_master_key_file_guards_them() {
    let (mut c, db) = fresh_db("rest_read_all");
    let secret = key("restreadall");
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('chat', 'qwen-plus', '{secret}');
         SELECT ai_deploy_model('env', 'qwen-plus', 'env:PG_BAILIAN_DEMO_KEY')"
    ))
    .unwrap();
    fresh_role(&mut c, "rest_reader", "IN ROLE pg_read_all_data");
    let mut reader = connect_as(&db, "rest_reader");
    let stored: Vec<(String, String)> = reader
        .query("SELECT model_name, api_key FROM bailian.model_keys ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored[1], ("env".to_string(), "env:PG_BAILIAN_DEMO_KEY".to_string()));
    assert!(stored[0].1.starts_with("sealed:v1:"), "{:?}", stored[0]);
    assert!(!stored[0].1.contains(&secret[3..]));

    // The master key: a file in the data directory, readable by the server's user only.
    let data_dir: String = c.query_one("SHOW data_directory", &[]).unwrap().get(0);
    let meta = std::fs::metadata(format!("{data_dir}/pg_bailian.master.key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(meta.is_file());
}

#[test]
fn the_database_owner_dumps_and_a_restore_keeps_models_working() {
    let (mut c, db) = fresh_db("rest_dump");
    let secret = key("restdump");
    let s = standin_with(Config { accepted_keys: Some(vec![secret.clone()]), ..Config::default() });
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('chat', 'qwen-plus', '{secret}', base_url => '{}')",
        s.base_url()
    ))
    .unwrap();
    fresh_role(&mut c, "rest_owner", "");
    c.batch_execute(&format!("ALTER DATABASE {db} OWNER TO rest_owner")).unwrap();

    // The database owner (not a superuser) can dump, and the dump holds no plain key.
    let by_owner = pg_dump(&db, "rest_owner");
    assert!(by_owner.contains("COPY bailian.model_keys"), "the key table is dumped");
    assert!(by_owner.contains("sealed:v1:"));
    assert!(!by_owner.contains(&secret[3..]), "the owner's dump holds a plain key");
    let by_superuser = pg_dump(&db, "postgres");
    assert!(!by_superuser.contains(&secret[3..]), "a superuser's dump holds a plain key");

    // Restored into another database of the same cluster, the model works with its key.
    let mut admin = connect("postgres");
    admin.batch_execute("DROP DATABASE IF EXISTS e2e_rest_restored").unwrap();
    admin.batch_execute("CREATE DATABASE e2e_rest_restored").unwrap();
    restore_plain("e2e_rest_restored", &by_owner);
    let mut restored = connect("e2e_rest_restored");
    assert_eq!(
        one_text(&mut restored, "SELECT ai_gen('chat', 'after restore')").as_deref(),
        Some("Echo from qwen-plus: after restore")
    );
    assert_eq!(s.requests().last().unwrap().auth_hint, "sk-...0000");
    assert_eq!(s.stats().by_status.get(&401), None, "the restored key is the deployed one");
}
