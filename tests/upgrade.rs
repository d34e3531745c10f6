//! Upgrades in place: every released version of pg_bailian (its install script is kept in
//! `sql/releases/` and installed beside the current one by scripts/lib.sh) is created, given
//! models with sealed keys, params and prompt overrides, and updated with `ALTER EXTENSION
//! pg_bailian UPDATE`. Then (a) the models, keys and prompts still work, in a new session, and
//! (b) everything the extension consists of equals a fresh `CREATE EXTENSION` of the current
//! version (tests/common/extension_objects.sql says what is compared).

mod common;

use bailian_standin::{Config, LoggedRequest, Standin};
use common::*;
use postgres::Client;

const SENTIMENT_PROMPT: &str = "Upgrade test: say how the writer feels, as JSON.";

/// The models every released version is given before it is updated.
fn deploy_models(c: &mut Client, s: &Standin) {
    deploy(c, s, "up_chat", "qwen-plus", ", params => '{\"temperature\": 0.2}', max_retries => 1");
    deploy(c, s, "up_emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    c.batch_execute(&format!("SELECT ai_set_prompt('up_chat', 'ai_sentiment', '{SENTIMENT_PROMPT}')"))
        .unwrap();
}

/// What the deployed models answer, and what the catalog says of them.
fn answers(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT ai_gen('up_chat', 'hello from before the upgrade')",
        "SELECT ai_embed('up_emb', 'a document')::text",
        "SELECT ai_sentiment('up_chat', 'I love this database')",
        "SELECT ai_gen('hello through the default chat model')",
        "SELECT string_agg(format('%s %s %s %s %s %s %s %s', model_name, model_type, task, key_hint,
                                  params, max_retries, timeout, deployed_by), '; ' ORDER BY model_name)
           FROM ai_models",
        "SELECT string_agg(format('%s %s %s', model_name, function_name, prompt), '; ' ORDER BY function_name)
           FROM ai_prompts WHERE NOT is_default",
    ] {
        out.push(one_text(c, sql).unwrap_or_else(|| panic!("{sql} gave NULL")));
    }
    out
}

fn system_of(r: &LoggedRequest) -> Option<String> {
    let first = &r.body["messages"][0];
    (first["role"] == "system").then(|| first["content"].as_str().unwrap_or_default().to_string())
}

fn version_of(c: &mut Client) -> String {
    one_text(c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_bailian'").unwrap()
}

#[test]
fn every_released_version_updates_to_the_current_one() {
    // Only the deployed keys are accepted: a key that did not survive the update (or came
    // back unsealed wrongly) is refused by the stand-in.
    let s = standin_with(Config {
        accepted_keys: Some(vec![key("up_chat"), key("up_emb")]),
        ..Config::default()
    });

    let (mut fresh, _) = fresh_db("upgrade_fresh");
    let current = version_of(&mut fresh);
    let default_version =
        one_text(&mut fresh, "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_bailian'")
            .unwrap();
    assert_eq!(current, default_version, "CREATE EXTENSION makes the default version");
    let reference = extension_objects(&mut fresh);
    assert!(reference.len() > 100, "the reference lists the extension's objects: {reference:?}");

    let released: Vec<String> = fresh
        .query(
            "SELECT version FROM pg_available_extension_versions
              WHERE name = 'pg_bailian' AND version <> $1
              ORDER BY string_to_array(version, '.')::int[]",
            &[&current],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        released.iter().any(|v| v == "0.1.0"),
        "the install script of 0.1.0 is installed (scripts/lib.sh copies sql/releases/): {released:?}"
    );

    for version in &released {
        let path: Option<String> = fresh
            .query_one(
                "SELECT path FROM pg_extension_update_paths('pg_bailian') WHERE source = $1 AND target = $2",
                &[version, &current],
            )
            .unwrap()
            .get(0);
        assert!(path.is_some(), "no update path from {version} to {current}");

        let (mut c, db) = fresh_bare_db(&format!("upgrade_from_{}", version.replace('.', "_")));
        c.batch_execute(&format!("CREATE EXTENSION pg_bailian VERSION '{version}'")).unwrap();
        assert_eq!(&version_of(&mut c), version);
        deploy_models(&mut c, &s);
        let before = answers(&mut c);
        drop(c);

        let mut c = connect(&db);
        c.batch_execute("ALTER EXTENSION pg_bailian UPDATE")
            .unwrap_or_else(|e| panic!("update from {version}: {e}"));
        assert_eq!(version_of(&mut c), current, "updated from {version} along {}", path.unwrap());
        drop(c);

        // (a) A new session (the updated SQL, the library loaded anew) gets the same answers
        // from the same models, keys and prompts.
        let mut c = connect(&db);
        s.reset();
        let after = answers(&mut c);
        assert_eq!(after, before, "answers after updating from {version}");
        let sentiment = s
            .requests()
            .into_iter()
            .find(|r| r.body["messages"].to_string().contains("I love this database"));
        assert_eq!(
            sentiment.as_ref().and_then(system_of).as_deref(),
            Some(SENTIMENT_PROMPT),
            "the prompt override survives the update from {version}"
        );
        assert!(
            s.requests().iter().all(|r| r.status == 200),
            "every request was answered: {:?}",
            s.requests()
        );

        // (b) The same objects, definitions, grants and comments as a fresh install.
        let updated = extension_objects(&mut c);
        let only_updated: Vec<_> = updated.iter().filter(|l| !reference.contains(l)).collect();
        let only_fresh: Vec<_> = reference.iter().filter(|l| !updated.contains(l)).collect();
        assert!(
            only_updated.is_empty() && only_fresh.is_empty(),
            "updated from {version}, the extension differs from a fresh install of {current}.\n\
             Only after the update:\n{}\n\nOnly in a fresh install:\n{}",
            only_updated.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n---\n"),
            only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n---\n"),
        );
        assert_eq!(updated, reference);
    }
}

/// An update script is for ALTER EXTENSION only: run by hand it refuses at once.
#[test]
fn update_scripts_refuse_to_run_outside_alter_extension() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
    let mut scripts = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("pg_bailian--") && name.matches("--").count() == 2 {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.lines().any(|l| l.starts_with("\\echo Use \"ALTER EXTENSION pg_bailian UPDATE\"")
                    && l.ends_with("\\quit")),
                "{name} starts with the \\echo ... \\quit guard"
            );
            scripts += 1;
        }
    }
    assert!(scripts >= 1, "sql/ holds the update scripts");
}
