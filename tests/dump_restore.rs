//! Dumps that restore: the real `pg_dump`, `pg_restore` and `psql` of the server's own
//! installation, in custom and plain formats, by a superuser and by the database owner (not a
//! superuser). Each dump is restored into a new database of the same cluster, and two of them
//! into a second cluster started here with the first one's master key file copied. Restored
//! models answer with their sealed keys, prompt overrides and settings, used by a role that is
//! no superuser, without anyone re-running ai_deploy_model; no dump holds a plaintext key.

mod common;

use bailian_standin::{Config, Standin};
use common::*;
use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;

const DB: &str = "e2e_dump_src";
const OWNER: &str = "dump_owner";
const DEPLOYER: &str = "dump_deployer";
const READER: &str = "dump_reader";
const SENTIMENT_PROMPT: &str = "Dump test: how does the writer feel? Answer in JSON.";

fn demo_key() -> String {
    std::env::var("PG_BAILIAN_DEMO_KEY").expect("PG_BAILIAN_DEMO_KEY (set by scripts/lib.sh)")
}

/// The server's own client programs (pg_config's BINDIR), so a dump is made and read by the
/// same major as the server.
fn bindir(c: &mut Client) -> PathBuf {
    PathBuf::from(one_text(c, "SELECT setting FROM pg_config WHERE name = 'BINDIR'").unwrap())
}

fn run(program: &Path, args: &[&str]) -> String {
    let out =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {}: {}\n{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The source database: models deployed by a superuser and by a delegated deployer, a literal
/// (sealed) key and an env: key, params, retry settings, a rate limit, a prompt override, and a
/// table of the database owner's with embeddings in it.
fn source(s: &Standin) -> Client {
    let mut admin = connect("postgres");
    for db in [DB.to_string()].into_iter().chain((0..4).map(|i| format!("e2e_dump_restored_{i}"))) {
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).unwrap();
    }
    for role in [OWNER, DEPLOYER, READER] {
        fresh_role(&mut admin, role, "");
    }
    admin.batch_execute(&format!("CREATE DATABASE {DB} OWNER {OWNER}")).unwrap();
    let mut c = connect(DB);
    c.batch_execute(&format!(
        "CREATE EXTENSION pg_bailian;
         GRANT EXECUTE ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text,
                                                   boolean, int, int, text, text, boolean, boolean),
                                   ai_undeploy_model(text), ai_set_prompt(text, text, text) TO {DEPLOYER};"
    ))
    .unwrap();
    deploy(
        &mut c,
        s,
        "d_chat",
        "qwen-plus",
        ", params => '{\"temperature\": 0.1, \"seed\": 7}', max_retries => 4, requests_per_minute => 6000",
    );
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('d_env', 'qwen-flash', 'env:PG_BAILIAN_DEMO_KEY', base_url => '{}', timeout => 30)",
        s.base_url()
    ))
    .unwrap();
    let mut d = connect_as(DB, DEPLOYER);
    deploy(&mut d, s, "d_emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(&format!("SELECT ai_set_prompt('d_chat', 'ai_sentiment', '{SENTIMENT_PROMPT}')"))
        .unwrap();
    // A default model for a model-less call: two chat models are deployed, so only the
    // mapping makes ai_sentiment(content) work.
    c.batch_execute("SELECT ai_set_default_model('ai_sentiment', 'd_chat')").unwrap();
    // A database-level setting: dumps made with --create carry it.
    c.batch_execute(&format!("ALTER DATABASE {DB} SET pg_bailian.default_chat_model = 'd_env'")).unwrap();
    let mut o = connect_as(DB, OWNER);
    o.batch_execute(
        "CREATE TABLE notes (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO notes SELECT i, 'note ' || i, NULL FROM generate_series(1, 5) i;
         UPDATE notes SET emb = ai_embed('d_emb', body);
         GRANT SELECT ON notes TO PUBLIC;",
    )
    .unwrap();
    c
}

/// What a role that is no superuser gets from the restored models, with the catalog's rows.
fn answers(db: &str, port: &str) -> Vec<String> {
    let conn = format!("host=127.0.0.1 port={port} user={READER} dbname={db} connect_timeout=10");
    let mut r = Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("{conn}: {e}"));
    let mut out = Vec::new();
    for sql in [
        "SELECT ai_gen('d_chat', 'after the restore')",
        "SELECT ai_gen('d_env', 'the env key after the restore')",
        "SELECT ai_embed('d_emb', 'note 3')::text",
        "SELECT ((SELECT emb FROM notes WHERE id = 3) = ai_embed('d_emb', 'note 3'))::text",
        "SELECT ai_sentiment('d_chat', 'I am glad the dump restored')",
        "SELECT ai_sentiment('I am glad the dump restored, said the default model')",
        "SELECT string_agg(format('%s %s %s', function_name, model_name, effective_model), '; ')
           FROM ai_default_models WHERE model_name IS NOT NULL",
        "SELECT string_agg(format('%s %s %s %s %s %s %s %s %s', model_name, model_type, task, key_hint, params,
                                  max_retries, timeout, requests_per_minute, deployed_by), '; ' ORDER BY model_name)
           FROM ai_models",
        "SELECT string_agg(format('%s %s %s %s', model_name, function_name, prompt, set_by), '; ')
           FROM ai_prompts WHERE NOT is_default",
    ] {
        let row = r.query_one(sql, &[]).unwrap_or_else(|e| panic!("{db}:{port}: {sql}: {e}"));
        out.push(row.get::<_, Option<String>>(0).unwrap_or_else(|| panic!("{db}:{port}: {sql} gave NULL")));
    }
    out
}

/// A plain-SQL rendering of a dump, for the check that no key is in it.
fn as_sql(bin: &Path, file: &Path) -> String {
    if file.extension().is_some_and(|e| e == "sql") {
        std::fs::read_to_string(file).unwrap()
    } else {
        run(&bin.join("pg_restore"), &["-f", "-", file.to_str().unwrap()])
    }
}

fn assert_no_key(text: &str, bytes: &[u8], what: &str) {
    for secret in [KEY_MARK.to_string(), demo_key()] {
        assert!(!text.contains(&secret), "{what} holds a plaintext key ({secret})");
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{what} holds a plaintext key");
    }
    assert!(text.contains("sealed:"), "{what} holds the sealed keys");
    assert!(text.contains("env:PG_BAILIAN_DEMO_KEY"), "{what} holds the env: reference");
}

/// Restores `file` into a new database `db` at `port` as the superuser: pg_restore for a
/// custom dump, psql for a plain one. Never runs ai_deploy_model.
fn restore(bin: &Path, file: &Path, db: &str, port: &str) {
    let mut admin =
        Client::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"), NoTls).unwrap();
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {db} OWNER {OWNER}")).unwrap();
    let file = file.to_str().unwrap();
    if file.ends_with(".sql") {
        run(
            &bin.join("psql"),
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-U",
                "postgres",
                "-d",
                db,
                "-f",
                file,
            ],
        );
    } else {
        run(
            &bin.join("pg_restore"),
            &["--exit-on-error", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", db, file],
        );
    }
}

/// A second cluster of the same installation, with the first cluster's settings for
/// pg_bailian (not its master key file).
fn second_cluster(first: &mut Client) -> PrivateCluster {
    let setting =
        |c: &mut Client, name: &str| one_text(c, &format!("SELECT current_setting('{name}', true)"));
    // pg_bailian's settings exist once its library is loaded in the session.
    first.batch_execute("SELECT count(*) FROM ai_supported_models()").unwrap();
    let conf = format!(
        "shared_preload_libraries = '{}'\npg_bailian.allowed_hosts = '{}'\n",
        setting(first, "shared_preload_libraries").unwrap_or_default(),
        setting(first, "pg_bailian.allowed_hosts").unwrap_or_default(),
    );
    PrivateCluster::start("dump_second", &conf)
}

#[test]
fn dumps_by_a_superuser_and_by_the_owner_restore_into_this_cluster_and_another() {
    let s = standin_with(Config {
        accepted_keys: Some(vec![key("d_chat"), key("d_emb"), demo_key()]),
        ..Config::default()
    });
    let mut c = source(&s);
    let expected = answers(DB, &port());
    assert_eq!(expected[3], "true", "the stored embedding is the one the model gives");
    let objects = extension_objects(&mut c);
    let bin = bindir(&mut c);
    let out = std::env::temp_dir().join(format!("pg_bailian_dumps_{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();

    // Four dumps: by the superuser and by the database owner, each custom and plain.
    let mut dumps = Vec::new();
    for user in ["postgres", OWNER] {
        for (format, ext) in [("custom", "dump"), ("plain", "sql")] {
            let file = out.join(format!("{user}.{ext}"));
            run(
                &bin.join("pg_dump"),
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port(),
                    "-U",
                    user,
                    "-F",
                    format,
                    "-f",
                    file.to_str().unwrap(),
                    DB,
                ],
            );
            let text = as_sql(&bin, &file);
            assert_no_key(&text, &std::fs::read(&file).unwrap(), &format!("the {format} dump by {user}"));
            dumps.push(file);
        }
    }

    // Into new databases of the same cluster.
    for (i, file) in dumps.iter().enumerate() {
        let db = format!("e2e_dump_restored_{i}");
        restore(&bin, file, &db, &port());
        assert_eq!(answers(&db, &port()), expected, "restored from {}", file.display());
        let mut r = connect(&db);
        assert_eq!(extension_objects(&mut r), objects, "the extension restored from {}", file.display());
        // The delegated deployer still owns its model: it may undeploy it, the reader may not.
        let mut d = connect_as(&db, DEPLOYER);
        assert_eq!(one_text(&mut d, "SELECT ai_undeploy_model('d_emb')::text").as_deref(), Some("true"));
    }

    // Into a second cluster: the sealed keys need the master key file, which no dump holds.
    let second = second_cluster(&mut c);
    let second_port = second.port().to_string();
    let mut admin = second.connect("postgres");
    for role in [OWNER, DEPLOYER, READER] {
        admin.batch_execute(&format!("CREATE ROLE {role} LOGIN")).unwrap();
    }
    let su_custom = &dumps[0];
    restore(&bin, su_custom, "restored_custom", &second_port);
    let mut r = Client::connect(
        &format!("host=127.0.0.1 port={} user={READER} dbname=restored_custom", second_port),
        NoTls,
    )
    .unwrap();
    let err = r.query_one("SELECT ai_gen('d_chat', 'no master key here')", &[]).unwrap_err();
    let db_err = err.as_db_error().expect("a database error");
    assert_eq!(db_err.code().code(), "ZBK02", "{db_err:?}");
    // The env: key needs no master key.
    assert_eq!(
        one_text(&mut r, "SELECT ai_gen('d_env', 'the env key after the restore')"),
        Some(expected[1].clone())
    );
    drop(r);

    let master = PathBuf::from(
        one_text(&mut c, "SELECT setting FROM pg_settings WHERE name = 'data_directory'").unwrap(),
    )
    .join("pg_bailian.master.key");
    let copy = second.data().join("pg_bailian.master.key");
    std::fs::copy(&master, &copy).unwrap();
    run(Path::new("chown"), &["postgres:postgres", copy.to_str().unwrap()]);
    run(Path::new("chmod"), &["0600", copy.to_str().unwrap()]);
    assert_eq!(answers("restored_custom", &second_port), expected, "the custom dump in the second cluster");
    let owner_plain = &dumps[3];
    restore(&bin, owner_plain, "restored_plain", &second_port);
    assert_eq!(
        answers("restored_plain", &second_port),
        expected,
        "the owner's plain dump in the second cluster"
    );
    let mut r = Client::connect(
        &format!("host=127.0.0.1 port={} user=postgres dbname=restored_plain", second_port),
        NoTls,
    )
    .unwrap();
    assert_eq!(extension_objects(&mut r), objects, "the extension restored into the second cluster");

    // A dump with --create carries the database's settings: the default chat model.
    let created = out.join("created.dump");
    run(
        &bin.join("pg_dump"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port(),
            "-U",
            "postgres",
            "--create",
            "-F",
            "custom",
            "-f",
            created.to_str().unwrap(),
            DB,
        ],
    );
    run(
        &bin.join("pg_restore"),
        &[
            "--exit-on-error",
            "--create",
            "-h",
            "127.0.0.1",
            "-p",
            &second_port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            created.to_str().unwrap(),
        ],
    );
    assert_eq!(answers(DB, &second_port), expected, "the --create dump in the second cluster");
    let mut r =
        Client::connect(&format!("host=127.0.0.1 port={} user={READER} dbname={DB}", second_port), NoTls)
            .unwrap();
    assert_eq!(
        one_text(&mut r, "SELECT ai_gen('the default chat model after the restore')"),
        one_text(&mut r, "SELECT ai_gen('d_env', 'the default chat model after the restore')"),
    );
    assert_eq!(one_text(&mut r, "SHOW pg_bailian.default_chat_model").as_deref(), Some("d_env"));

    drop(second);
    let _ = std::fs::remove_dir_all(&out);
}
