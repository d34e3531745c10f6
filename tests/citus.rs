//! pg_bailian on a Citus cluster: a coordinator and two workers (and, in one test, a third
//! worker added later), each a real PostgreSQL server on loopback preloading
//! `citus,pg_bailian`, set up as Citus' own harness does (`citus_tests/common.py`), with the
//! stand-in over HTTP. Skipped, saying why, where Citus is not installed (scripts/lib.sh builds
//! Citus 13.2.2 for PostgreSQL 15 from ../shared/vendor when it can).

mod common;

use common::*;
use postgres::Client;
use std::collections::HashMap;
use std::time::Duration;

const NODE_CONF: &str = "shared_preload_libraries = 'citus,pg_bailian'\n\
     max_connections = 100\n\
     max_worker_processes = 20\n\
     max_prepared_transactions = 100\n\
     citus.node_conninfo = 'sslmode=disable'\n\
     citus.shard_count = 8\n\
     pg_bailian.allowed_hosts = 'http://127.0.0.1, http://localhost'\n";

struct Cluster {
    coordinator: PrivateCluster,
    workers: Vec<PrivateCluster>,
}

/// Whether Citus is installed in the server under test; if not, says what goes untested.
fn citus_available() -> bool {
    let libdir =
        run_program(std::process::Command::new(format!("{}/pg_config", pg_bin())).arg("--pkglibdir"));
    let there = std::path::Path::new(libdir.trim()).join("citus.so").exists();
    if !there {
        assert_ne!(
            std::env::var("PG_BAILIAN_CITUS").as_deref(),
            Ok("installed"),
            "scripts/test.sh installed Citus, but the server under test has no citus.so"
        );
        eprintln!(
            "SKIPPED: Citus is not installed for this PostgreSQL ({}); pg_bailian on a Citus cluster untested here",
            libdir.trim()
        );
    }
    there
}

fn node(name: &str) -> PrivateCluster {
    let node = PrivateCluster::start(name, NODE_CONF);
    node.connect("postgres").batch_execute("CREATE EXTENSION citus").unwrap();
    node
}

impl Cluster {
    /// A coordinator (in the metadata, so it holds the reference tables' copies) and two
    /// workers, with pg_bailian created on the coordinator and its catalogs made shared.
    fn start(name: &str) -> Option<Cluster> {
        if !citus_available() {
            return None;
        }
        let coordinator = node(&format!("{name}_c"));
        let workers = vec![node(&format!("{name}_w1")), node(&format!("{name}_w2"))];
        let cluster = Cluster { coordinator, workers };
        let mut c = cluster.coordinator();
        c.batch_execute(&format!(
            "SELECT citus_set_coordinator_host('127.0.0.1', {})",
            cluster.coordinator.port()
        ))
        .unwrap();
        for w in &cluster.workers {
            c.batch_execute(&format!("SELECT citus_add_node('127.0.0.1', {})", w.port())).unwrap();
        }
        c.batch_execute("CREATE EXTENSION pg_bailian").unwrap();
        Some(cluster)
    }

    /// A started cluster with its catalogs shared, models `emb` and `chat` deployed (a stand-in
    /// answering in 10 ms), every node holding the master key, and `rows` rows in the
    /// distributed table `docs` (see `fill_table`); and a session on the coordinator.
    fn with_docs(name: &str, rows: i32) -> Option<(Cluster, bailian_standin::Standin, Client)> {
        let cluster = Cluster::start(name)?;
        let s = standin_with(bailian_standin::Config { latency_ms: 10, ..Default::default() });
        let mut c = cluster.coordinator();
        strings(&mut c, ENABLED);
        deploy(&mut c, &s, "emb", "text-embedding-v4", "");
        deploy(&mut c, &s, "chat", "qwen-plus", "");
        cluster.share_master_key();
        fill_table(&mut c, rows);
        Some((cluster, s, c))
    }

    fn coordinator(&self) -> Client {
        self.coordinator.connect("postgres")
    }

    fn worker(&self, i: usize) -> Client {
        self.workers[i].connect("postgres")
    }

    /// Every node's copy of the coordinator's master key file (made by the first deploy of a
    /// literal key), as an administrator installs it.
    fn share_master_key(&self) {
        let key = self.coordinator.data().join("pg_bailian.master.key");
        assert!(key.exists(), "the coordinator has no master key yet");
        for w in &self.workers {
            copy_key(&key, &w.data());
        }
    }
}

fn copy_key(key: &std::path::Path, data: &std::path::Path) {
    let to = data.join("pg_bailian.master.key");
    std::fs::copy(key, &to).unwrap();
    run_program(std::process::Command::new("chown").arg("postgres:postgres").arg(&to));
    run_program(std::process::Command::new("chmod").arg("600").arg(&to));
}

fn strings(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get(0)).collect()
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// Requests a node sent, by its own ai_usage rows (a coordinator's also shows the workers').
fn requests_of(c: &mut Client) -> i64 {
    count(c, "SELECT coalesce(sum(requests), 0)::bigint FROM ai_usage WHERE node IS NULL")
}

const ENABLED: &str = "SELECT catalog::text || ': ' || state FROM ai_citus_enable()";

#[test]
fn every_node_has_the_coordinators_catalog_and_only_the_coordinator_changes_it() {
    let Some(cluster) = Cluster::start("catalog") else { return };
    let s = standin();
    let mut c = cluster.coordinator();

    // CREATE EXTENSION reached every node.
    let versions = strings(
        &mut c,
        "SELECT result FROM run_command_on_all_nodes($$SELECT extversion FROM pg_extension WHERE extname = 'pg_bailian'$$) ORDER BY nodeid",
    );
    let mine = one_text(&mut c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_bailian'").unwrap();
    assert_eq!(versions, vec![mine.clone(); 3]);

    // Before the catalogs are shared, the check says what to do.
    let problems =
        strings(&mut c, "SELECT coalesce(problem, '') FROM ai_citus_check() WHERE node_role = 'worker'");
    assert!(problems.iter().all(|p| p.contains("ai_citus_enable")), "{problems:?}");

    let enabled = strings(&mut c, ENABLED);
    assert_eq!(enabled.len(), 6, "{enabled:?}");
    assert!(enabled.iter().all(|e| e.ends_with("made a reference table")), "{enabled:?}");
    // Idempotent.
    assert!(strings(&mut c, ENABLED).iter().all(|e| e.ends_with("already a reference table")));

    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    c.batch_execute(
        "SELECT ai_set_prompt('chat', 'ai_summarize', 'Sum it up in {max_words} words.');
         SELECT ai_set_default_model('ai_embed', 'emb');
         INSERT INTO ai_prices (model_type, input_price, output_price) VALUES ('qwen-plus', 0.8, 2);",
    )
    .unwrap();
    // A budget names its role by oid, which differs from node to node (Citus creates roles on
    // every node): each node's copy names the same role.
    c.batch_execute("CREATE ROLE budgeted; SELECT ai_set_budget('budgeted', 'chat', 5)").unwrap();
    for i in 0..2 {
        let mut w = cluster.worker(i);
        assert_eq!(
            strings(&mut w, "SELECT role::text || ' ' || \"limit\" FROM ai_budgets"),
            vec!["budgeted 5"]
        );
        assert_eq!(strings(&mut w, "SELECT model_name FROM ai_models ORDER BY 1"), vec!["chat", "emb"]);
        assert_eq!(
            one_text(&mut w, "SELECT prompt FROM ai_prompts WHERE model_name = 'chat'").as_deref(),
            Some("Sum it up in {max_words} words.")
        );
        assert_eq!(
            one_text(&mut w, "SELECT model_name FROM ai_default_models WHERE function_name = 'ai_embed'")
                .as_deref(),
            Some("emb")
        );
        assert_eq!(
            one_text(&mut w, "SELECT input_price::text FROM ai_prices WHERE model_type = 'qwen-plus'")
                .as_deref(),
            Some("0.8")
        );
    }

    // The workers have no master key yet: the check says so, naming each node, and a call on a
    // worker fails naming it.
    let rows = c
        .query("SELECT node, node_role, ok, coalesce(problem, '') FROM ai_citus_check() ORDER BY node_role, node", &[])
        .unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let (node, role, ok, problem): (String, String, bool, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if role == "coordinator" {
            assert!(ok, "{node}: {problem}");
        } else {
            assert!(!ok && problem.contains("master key"), "{node}: {problem}");
        }
    }
    let w1 = format!("127.0.0.1:{}", cluster.workers[0].port());
    let (_, message) = error_of(cluster.worker(0).query_one("SELECT ai_embed('emb', 'hello')", &[]));
    assert!(
        message.contains(&format!("on Citus worker node {w1}")) && message.contains("master key"),
        "{message}"
    );
    // A query of the coordinator alone needs only its key.
    assert_eq!(count(&mut c, "SELECT count(ai_embed('emb', x::text)) FROM generate_series(1, 3) x"), 3);
    c.batch_execute(
        "CREATE TABLE dist (id int PRIMARY KEY, body text); SELECT create_distributed_table('dist', 'id');
                     INSERT INTO dist SELECT g, 'text ' || g FROM generate_series(1, 40) g;",
    )
    .unwrap();
    let (_, message) = error_of(c.query_one("SELECT count(ai_embed('emb', body)) FROM dist", &[]));
    assert!(message.contains("on Citus worker node") && message.contains("master key"), "{message}");

    cluster.share_master_key();
    let problems =
        strings(&mut c, "SELECT node || ': ' || coalesce(problem, 'ok') FROM ai_citus_check() WHERE NOT ok");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(count(&mut c, "SELECT count(ai_embed('emb', body)) FROM dist"), 40);

    // Catalog changes on a worker are refused, and change nothing.
    let mut w = cluster.worker(0);
    for sql in [
        format!(
            "SELECT ai_deploy_model('other', 'qwen-plus', '{}', base_url => '{}')",
            key("other"),
            s.base_url()
        ),
        "SELECT ai_undeploy_model('chat')".to_string(),
        "SELECT ai_set_prompt('chat', 'ai_summarize', 'Shorter: {max_words}')".to_string(),
        "SELECT ai_set_default_model('ai_embed', NULL)".to_string(),
        "SELECT ai_set_budget(NULL, 'chat', 10)".to_string(),
        "INSERT INTO ai_prices (model_type, input_price) VALUES ('qwen-max', 1)".to_string(),
    ] {
        let (code, message) = error_of(w.batch_execute(&sql));
        assert!(
            message.contains("only the coordinator changes") && message.contains(&w1),
            "{sql}: {code} {message}"
        );
    }
    assert_eq!(
        strings(&mut c, "SELECT result FROM run_command_on_all_nodes($$SELECT string_agg(model_name, ',' ORDER BY model_name) FROM bailian.models$$)"),
        vec!["chat,emb"; 3]
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_budgets"), 1);

    // A node added later gets the extension from Citus, and the catalogs with the reference
    // tables' copies.
    let w3 = node("catalog_w3");
    copy_key(&cluster.coordinator.data().join("pg_bailian.master.key"), &w3.data());
    c.batch_execute(&format!("SELECT citus_add_node('127.0.0.1', {})", w3.port())).unwrap();
    c.batch_execute("SELECT replicate_reference_tables('block_writes')").unwrap();
    let mut third = w3.connect("postgres");
    assert_eq!(
        one_text(&mut third, "SELECT extversion FROM pg_extension WHERE extname = 'pg_bailian'"),
        Some(mine)
    );
    assert_eq!(strings(&mut third, "SELECT model_name FROM ai_models ORDER BY 1"), vec!["chat", "emb"]);
    assert!(one_text(&mut third, "SELECT ai_embed('emb', 'hello')::text").is_some());
    assert!(strings(&mut c, "SELECT coalesce(problem, 'ok') FROM ai_citus_check()")
        .iter()
        .all(|p| p == "ok"));

    // Undeploying on the coordinator removes the model and what belongs to it everywhere.
    c.batch_execute("SELECT ai_undeploy_model('chat')").unwrap();
    assert_eq!(
        strings(&mut c, "SELECT result FROM run_command_on_all_nodes($$SELECT (SELECT count(*) FROM bailian.models)::text || '/' || (SELECT count(*) FROM bailian.prompts) || '/' || (SELECT count(*) FROM bailian.model_keys)$$)"),
        vec!["1/0/1"; 4]
    );
    drop(third);
    drop(w3);
}

#[test]
fn ai_calls_run_on_the_workers_batched_in_every_query_shape() {
    let Some(cluster) = Cluster::start("shapes") else { return };
    let s = standin();
    let mut c = cluster.coordinator();
    strings(&mut c, ENABLED);
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    cluster.share_master_key();
    c.batch_execute(
        "CREATE TABLE dist (id int PRIMARY KEY, body text); SELECT create_distributed_table('dist', 'id');
         INSERT INTO dist SELECT g, 'text ' || g FROM generate_series(1, 200) g;
         CREATE TABLE other (k int, id int, note text); SELECT create_distributed_table('other', 'k');
         INSERT INTO other SELECT g % 10, g, 'note ' || g FROM generate_series(1, 50) g;
         CREATE TABLE answers (id int, answer text); SELECT create_distributed_table('answers', 'id');",
    )
    .unwrap();

    // A multi-shard SELECT: the calls are made by the workers, batched there.
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dist WHERE array_length(ai_embed('emb', body), 1) = 1024"),
        200
    );
    assert_eq!(requests_of(&mut c), 0, "the coordinator made no call of its own");
    let (r1, r2) = (requests_of(&mut cluster.worker(0)), requests_of(&mut cluster.worker(1)));
    assert!(r1 > 0 && r2 > 0, "both workers call the model: {r1}, {r2}");
    // Packs of inputs: far fewer requests than rows.
    assert!(r1 + r2 <= 40, "{r1} + {r2} requests for 200 rows");
    // ai_usage on the coordinator shows the whole cluster, each worker's rows by node.
    let w = |i: usize| format!("127.0.0.1:{}", cluster.workers[i].port());
    let by_node: Vec<(Option<String>, i64)> = c
        .query(
            "SELECT node, sum(requests)::bigint FROM ai_usage WHERE model_name = 'emb' GROUP BY node ORDER BY node",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected = vec![(Some(w(0)), r1), (Some(w(1)), r2)];
    expected.sort();
    assert_eq!(by_node, expected);
    assert_eq!(
        count(&mut c, "SELECT sum(requests)::bigint FROM ai_usage WHERE model_name = 'emb'"),
        s.stats().embedding_requests as i64
    );
    // A role sees its own rows there too: each worker applies its own rules.
    c.batch_execute("CREATE ROLE clerk LOGIN; GRANT SELECT ON dist TO clerk").unwrap();
    let mut clerk = cluster.coordinator.connect_as("postgres", "clerk");
    let (code, message) = error_of(clerk.query("SELECT * FROM ai_citus_check()", &[]));
    assert!(code == "42501" && message.contains("extension's owner or a superuser"), "{code} {message}");
    assert_eq!(count(&mut clerk, "SELECT count(*) FROM ai_usage"), 0);
    assert_eq!(
        count(&mut clerk, "SELECT count(*) FROM dist WHERE ai_embed('emb', body) IS NOT NULL AND id <= 10"),
        10
    );
    assert_eq!(
        strings(&mut clerk, "SELECT DISTINCT role::text FROM ai_usage WHERE node IS NOT NULL"),
        vec!["clerk"]
    );
    c.batch_execute("SET citus.explain_all_tasks = on").unwrap();
    let plan = strings(&mut c, "EXPLAIN (COSTS OFF) SELECT ai_embed('emb', body) FROM dist").join("\n");
    assert_eq!(plan.matches("Custom Scan (AI Batch)").count(), 8, "{plan}");

    let echo_of = |id: i32| echo(&format!("text {id}"));
    // Router query (one shard).
    assert_eq!(one_text(&mut c, "SELECT ai_gen('chat', body) FROM dist WHERE id = 7"), Some(echo_of(7)));
    let plan =
        strings(&mut c, "EXPLAIN (COSTS OFF) SELECT ai_gen('chat', body) FROM dist WHERE id = 7").join("\n");
    assert!(plan.contains("AI Batch") && plan.contains("Task Count: 1"), "{plan}");
    // Multi-shard with ORDER BY and LIMIT on the coordinator.
    assert_eq!(
        strings(&mut c, "SELECT ai_gen('chat', body) FROM dist ORDER BY id LIMIT 3"),
        vec![echo_of(1), echo_of(2), echo_of(3)]
    );
    // An AI call in WHERE, aggregated on the coordinator.
    assert_eq!(count(&mut c, "SELECT count(*) FROM dist WHERE ai_gen('chat', body) LIKE '%text 1%'"), {
        (1..=200).filter(|i| echo_of(*i).contains("text 1")).count() as i64
    });
    // A repartition join (distributed on different columns).
    c.batch_execute("SET citus.enable_repartition_joins = on").unwrap();
    let joined = strings(
        &mut c,
        "SELECT ai_gen('chat', d.body || ' / ' || o.note) FROM dist d JOIN other o ON o.id = d.id ORDER BY d.id LIMIT 50",
    );
    assert_eq!(joined.len(), 50);
    assert_eq!(joined[0], echo("text 1 / note 1"));
    // INSERT ... SELECT (the SELECT's calls on the workers).
    c.batch_execute("INSERT INTO answers SELECT id, ai_gen('chat', body) FROM dist WHERE id <= 30").unwrap();
    assert_eq!(one_text(&mut c, "SELECT answer FROM answers WHERE id = 30"), Some(echo_of(30)));
    assert_eq!(count(&mut c, "SELECT count(*) FROM answers"), 30);
    // INSERT ... SELECT ... ON CONFLICT DO UPDATE: the answers are made in the SELECT, on the
    // workers, and set from EXCLUDED; run again, every row conflicts and is updated.
    c.batch_execute(
        "CREATE TABLE latest (id int PRIMARY KEY, answer text); SELECT create_distributed_table('latest', 'id');",
    )
    .unwrap();
    let upsert = "INSERT INTO latest SELECT id, ai_gen('chat', body) FROM dist WHERE id <= 20
                  ON CONFLICT (id) DO UPDATE SET answer = EXCLUDED.answer";
    let before = requests_of(&mut c);
    c.batch_execute(upsert).unwrap();
    c.batch_execute("UPDATE latest SET answer = 'stale' WHERE id <= 5").unwrap();
    c.batch_execute(upsert).unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM latest"), 20);
    assert_eq!(count(&mut c, "SELECT count(*) FROM latest WHERE answer = 'stale'"), 0);
    assert_eq!(one_text(&mut c, "SELECT answer FROM latest WHERE id = 3"), Some(echo_of(3)));
    assert_eq!(requests_of(&mut c), before, "the coordinator made no call of its own");
    // An AI call in the ON CONFLICT clause itself is refused by Citus (it must be IMMUTABLE
    // there); the error says what to do instead, and nothing changed.
    for refused in [
        "INSERT INTO latest SELECT id, 'x' FROM dist WHERE id <= 5
         ON CONFLICT (id) DO UPDATE SET answer = ai_gen('chat', EXCLUDED.answer)",
        "INSERT INTO latest VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET answer = ai_gen('chat', EXCLUDED.answer)",
    ] {
        let err = c.batch_execute(refused).unwrap_err();
        let db = err.as_db_error().unwrap_or_else(|| panic!("{refused}: {err}"));
        assert_eq!(db.code().code(), "0A000", "{refused}: {}", db.message());
        assert!(db.message().contains("ON CONFLICT clause"), "{refused}: {}", db.message());
        assert!(db.hint().unwrap_or_default().contains("EXCLUDED"), "{refused}: {:?}", db.hint());
    }
    assert_eq!(one_text(&mut c, "SELECT answer FROM latest WHERE id = 1"), Some(echo_of(1)));
    // A CTE kept as an intermediate result: the calls are made by the coordinator, batched.
    let before = requests_of(&mut c);
    assert_eq!(
        strings(&mut c, "WITH src AS MATERIALIZED (SELECT id, body FROM dist WHERE id <= 20) SELECT ai_gen('chat', body) FROM src ORDER BY id"),
        (1..=20).map(echo_of).collect::<Vec<_>>()
    );
    assert_eq!(requests_of(&mut c) - before, 20, "the coordinator made the CTE's calls");
    let plan = strings(
        &mut c,
        "EXPLAIN (COSTS OFF) WITH src AS MATERIALIZED (SELECT id, body FROM dist) SELECT ai_gen('chat', body) FROM src",
    )
    .join("\n");
    assert!(plan.contains("AI Batch"), "{plan}");
    // A subquery with a LIMIT (planned on its own), its calls above it on the coordinator.
    assert_eq!(
        strings(&mut c, "SELECT ai_gen('chat', x) FROM (SELECT body AS x FROM dist ORDER BY id LIMIT 2) s"),
        vec![echo_of(1), echo_of(2)]
    );
    // Cached answers are kept where the calls are made, on the workers: undeploying the model
    // on the coordinator forgets them there too (a model deployed later under the name must
    // not be given them).
    deploy(&mut c, &s, "cached", "text-embedding-v4", ", cache => true");
    let n = c.query_one("SELECT count(ai_embed('cached', body)) FROM dist", &[]).map(|r| r.get::<_, i64>(0));
    assert_eq!(n.map_err(|e| e.as_db_error().map(|d| d.message().to_string())), Ok(200));
    let cached_on_workers = "SELECT coalesce(sum(result::bigint), 0)::bigint FROM run_command_on_workers(
        $$SELECT coalesce(sum(entries + pending_entries), 0) FROM ai_cache WHERE model_name = 'cached'$$)";
    assert_eq!(count(&mut c, cached_on_workers), 200);
    c.batch_execute("SELECT ai_undeploy_model('cached')").unwrap();
    assert_eq!(count(&mut c, cached_on_workers), 0);

    // A call over a coordinator-side aggregate.
    assert_eq!(
        one_text(&mut c, "SELECT ai_gen('chat', string_agg(body, ',' ORDER BY id)) FROM dist WHERE id < 3"),
        Some(echo("text 1,text 2"))
    );

    // ai_usage_reset on the coordinator forgets every node's rows, as ai_usage shows them all.
    let (here, there) = (
        count(&mut c, "SELECT count(*) FROM ai_usage WHERE node IS NULL"),
        count(&mut c, "SELECT count(*) FROM ai_usage WHERE node IS NOT NULL"),
    );
    assert!(here > 0 && there > 0, "{here}, {there}");
    assert_eq!(count(&mut c, "SELECT ai_usage_reset()"), here + there);
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_usage"), 0);

    // A plain UPDATE is refused by Citus; the error says what to use instead.
    let (code, message) = error_of(c.batch_execute("UPDATE dist SET body = ai_gen('chat', body)"));
    assert_eq!(code, "0A000");
    assert!(message.contains("Citus") && message.contains("VOLATILE"), "{message}");
    let err = c.batch_execute("UPDATE dist SET body = ai_gen('chat', body)").unwrap_err();
    let hint = err.as_db_error().and_then(|e| e.hint()).unwrap_or_default().to_string();
    assert!(hint.contains("CALL ai_update"), "{hint}");
}

fn fill_table(c: &mut Client, rows: i32) {
    c.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[], summary text);
         SELECT create_distributed_table('docs', 'id');
         INSERT INTO docs (id, body) SELECT g, 'document ' || g FROM generate_series(1, {rows}) g;"
    ))
    .unwrap();
}

/// How many times each input reached the stand-in.
fn sent(s: &bailian_standin::Standin) -> HashMap<String, usize> {
    let mut sent = HashMap::new();
    for r in s.requests().iter().filter(|r| r.status == 200) {
        for i in &r.inputs {
            *sent.entry(i.clone()).or_insert(0) += 1;
        }
    }
    sent
}

#[test]
fn ai_update_fills_a_distributed_table_on_the_nodes_that_hold_its_shards() {
    let Some((cluster, s, mut c)) = Cluster::with_docs("update", 2000) else { return };

    let (mut cc, seen) = cluster.coordinator.connect_collecting("postgres");
    cc.batch_execute("CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$, batch_size => 300)").unwrap();
    let told = notices(&seen);
    assert!(told.contains("2000 rows of public.docs to fill on 2 nodes"), "{told}");
    assert!(told.contains("finished on 2 nodes") && told.contains("2000 filled, 0 failed"), "{told}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE array_length(emb, 1) = 1024"), 2000);
    // Each row's text was sent once, by the node holding it.
    let inputs = sent(&s);
    assert_eq!(inputs.len(), 2000);
    assert!(inputs.values().all(|n| *n == 1), "an input sent twice");
    let (r1, r2) = (requests_of(&mut cluster.worker(0)), requests_of(&mut cluster.worker(1)));
    assert!(r1 > 0 && r2 > 0 && r1 + r2 == s.stats().embedding_requests as i64, "{r1} + {r2}");

    // Again: nothing to do, nothing sent.
    let before = s.stats().requests;
    cc.batch_execute("CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$)").unwrap();
    assert_eq!(s.stats().requests, before);

    // The column procedures go the same way; a filter holds on every node.
    cc.batch_execute("CALL ai_gen_column('docs', 'body', 'summary', 'chat', 'Sum up: {0}')").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE summary IS NOT NULL"), 2000);
    assert_eq!(one_text(&mut c, "SELECT summary FROM docs WHERE id = 17"), Some(echo("Sum up: document 17")));
    c.batch_execute("UPDATE docs SET emb = NULL WHERE id <= 100").unwrap();
    // (A filter may end in a comment.)
    cc.batch_execute(
        "CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$, filter => 'id % 2 = 0 -- even')",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"), 50);
    cc.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb')").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"), 0);

    // A failed row costs only itself, reported by key on the coordinator.
    c.batch_execute(
        "ALTER TABLE docs ADD COLUMN n int; UPDATE docs SET summary = NULL WHERE id IN (5, 6, 7)",
    )
    .unwrap();
    let (mut cc2, seen2) = cluster.coordinator.connect_collecting("postgres");
    cc2.batch_execute("CALL ai_update('docs', 'summary', $$CASE WHEN id = 6 THEN (1 / (id - 6))::text ELSE ai_gen('chat', body) END$$)")
        .unwrap();
    let told = notices(&seen2);
    assert!(
        told.contains("2 filled, 1 failed") && told.contains("(6)") && told.contains("division by zero"),
        "{told}"
    );

    // The nodes read the expression's names with the caller's search_path.
    c.batch_execute(
        "CREATE SCHEMA helpers;
         CREATE FUNCTION helpers.tagged(t text) RETURNS text LANGUAGE sql AS $$SELECT 'tag: ' || t$$;
         UPDATE docs SET summary = NULL WHERE id <= 30;",
    )
    .unwrap();
    cc2.batch_execute("SET search_path = helpers, public").unwrap();
    // Its filter too, where each node counts its rows to fill and where it fills them.
    cc2.batch_execute(
        "CALL ai_update('docs', 'summary', $$ai_gen('chat', tagged(body))$$,
                        filter => $$tagged(body) LIKE 'tag: document 1_'$$)",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE summary IS NULL"), 20);
    cc2.batch_execute("CALL ai_update('docs', 'summary', $$ai_gen('chat', tagged(body))$$)").unwrap();
    cc2.batch_execute("RESET search_path").unwrap();
    assert_eq!(one_text(&mut c, "SELECT summary FROM docs WHERE id = 30"), Some(echo("tag: document 30")));
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE summary IS NULL"), 0);

    // A table in a schema of its own, filled from a session whose search_path does not name
    // it: each node finds its shards in the table's schema.
    c.batch_execute(
        "CREATE SCHEMA app;
         CREATE TABLE app.items (id int PRIMARY KEY, body text, emb real[]); SELECT create_distributed_table('app.items', 'id');
         INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 60) g;",
    )
    .unwrap();
    cc2.batch_execute("CALL ai_update('app.items', 'emb', $$ai_embed('emb', body)$$)").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM app.items WHERE emb IS NULL"), 0);

    // Shards are watched for moves by each statement's snapshot: READ COMMITTED only.
    c.batch_execute("UPDATE app.items SET emb = NULL WHERE id = 1").unwrap();
    cc2.batch_execute("SET default_transaction_isolation = 'repeatable read'").unwrap();
    let (_, message) =
        error_of(cc2.batch_execute("CALL ai_update('app.items', 'emb', $$ai_embed('emb', body)$$)"));
    assert!(message.contains("READ COMMITTED"), "{message}");
    cc2.batch_execute("RESET default_transaction_isolation").unwrap();

    // In a transaction block, refused as on one server.
    let (_, message) =
        error_of(c.batch_execute("BEGIN; CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$); COMMIT"));
    assert!(message.contains("cannot run inside a transaction block"), "{message}");
    c.batch_execute("ROLLBACK").unwrap();

    // A reference table has a copy on every node: each row is computed once, on the
    // coordinator, and the same value reaches every copy, batch by batch.
    c.batch_execute(
        "CREATE TABLE ref (id int PRIMARY KEY, body text, emb real[], label varchar(200)); SELECT create_reference_table('ref');
         INSERT INTO ref SELECT g, 'r ' || g FROM generate_series(1, 250) g;",
    )
    .unwrap();
    s.reset();
    let (mut cc3, seen3) = cluster.coordinator.connect_collecting("postgres");
    cc3.batch_execute("CALL ai_update('ref', 'emb', $$ai_embed('emb', body)$$, batch_size => 100)").unwrap();
    cc3.batch_execute(
        "CALL ai_update('ref', 'label', $$ai_gen('chat', 'label: ' || body)$$, filter => 'id <= 120 -- first')",
    )
    .unwrap();
    let told = notices(&seen3);
    assert!(told.contains("250 rows of ref to fill") && told.contains("250 filled"), "{told}");
    let sent = sent(&s);
    assert_eq!(sent.len(), 250 + 120);
    assert!(sent.values().all(|n| *n == 1), "an input sent twice");
    let copies = strings(
        &mut c,
        "SELECT result FROM run_command_on_placements('ref', $$SELECT count(emb) || '/' || count(label) || '/' || md5(string_agg(emb::text || coalesce(label, '-'), ',' ORDER BY id)) FROM %s$$)",
    );
    assert_eq!(copies.len(), 3, "{copies:?}");
    assert!(copies.iter().all(|c| c == &copies[0] && c.starts_with("250/120/")), "{copies:?}");
    // One job a reference table at a time (two would each pay for the same rows).
    c.batch_execute("UPDATE ref SET label = NULL WHERE id = 1").unwrap();
    let mut holder = cluster.coordinator();
    holder.batch_execute("SELECT pg_advisory_lock(20563, 'ref'::regclass::oid::int)").unwrap();
    let (_, message) =
        error_of(c.batch_execute("CALL ai_update('ref', 'label', $$ai_gen('chat', 'label: ' || body)$$)"));
    assert!(message.contains("another job is filling reference table ref"), "{message}");
    holder.batch_execute("SELECT pg_advisory_unlock(20563, 'ref'::regclass::oid::int)").unwrap();
    c.batch_execute("CALL ai_update('ref', 'label', $$ai_gen('chat', 'label: ' || body)$$)").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM ref WHERE label IS NULL"), 0);
    assert_eq!(one_text(&mut c, "SELECT label FROM ref WHERE id = 9"), Some(echo("label: r 9")));
    // A table with two copies of each shard: refused, before anything is sent.
    c.batch_execute(
        "SET citus.shard_replication_factor = 2;
         CREATE TABLE twice (id int PRIMARY KEY, body text, emb real[]); SELECT create_distributed_table('twice', 'id');
         RESET citus.shard_replication_factor;
         INSERT INTO twice SELECT g, 't ' || g FROM generate_series(1, 5) g;",
    )
    .unwrap();
    let before = s.stats().requests;
    let (_, message) = error_of(c.batch_execute("CALL ai_update('twice', 'emb', $$ai_embed('emb', body)$$)"));
    assert!(message.contains("more than one copy of a shard"), "{message}");
    assert_eq!(s.stats().requests, before);
    // Syncs keep plain tables current: a distributed table's is refused, nothing made.
    let (_, message) = error_of(
        c.batch_execute("SELECT ai_sync_create('docs_emb', 'docs', 'emb', $$ai_embed('emb', body)$$)"),
    );
    assert!(
        message.contains("is a Citus table") && message.contains("syncs keep plain tables current"),
        "{message}"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_syncs"), 0);
    // On a worker: from the coordinator only.
    let (_, message) =
        error_of(cluster.worker(0).batch_execute("CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$)"));
    assert!(message.contains("runs from the coordinator"), "{message}");
}

#[test]
fn a_shard_moved_during_ai_update_loses_no_write_and_pays_no_answer_twice() {
    let Some(cluster) = Cluster::start("move") else { return };
    let s = standin_with(bailian_standin::Config { latency_ms: 60, ..Default::default() });
    let mut c = cluster.coordinator();
    strings(&mut c, ENABLED);
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", max_retries => 0");
    cluster.share_master_key();
    fill_table(&mut c, 3000);
    let (w1, w2) = (cluster.workers[0].port(), cluster.workers[1].port());
    // A shard of the first worker that the job has not reached when it moves (its last one).
    let shard: i64 = c
        .query_one(
            &format!(
                "SELECT max(shardid) FROM citus_shards WHERE table_name = 'docs'::regclass AND nodeport = {w1}"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let coordinator_port = cluster.coordinator.port();
    let job = std::thread::spawn(move || {
        let mut cfg: postgres::Config =
            format!("host=127.0.0.1 port={coordinator_port} user=postgres dbname=postgres").parse().unwrap();
        let told = Seen::default();
        let sink = told.clone();
        cfg.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
        let mut j = cfg.connect(postgres::NoTls).unwrap();
        j.batch_execute("CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$, batch_size => 100)")
            .unwrap();
        notices(&told)
    });
    // Once the job is writing on the first worker, move one of its shards to the second.
    assert!(wait_for(Duration::from_secs(30), || count(
        &mut c,
        "SELECT count(*) FROM docs WHERE emb IS NOT NULL"
    ) >= 200));
    c.batch_execute(&format!(
        "SELECT citus_move_shard_placement({shard}, '127.0.0.1', {w1}, '127.0.0.1', {w2}, shard_transfer_mode => 'block_writes')"
    ))
    .unwrap();
    let told = job.join().unwrap();
    assert!(told.contains("again: shards moved"), "{told}");
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM citus_shards WHERE shardid = {shard} AND nodeport = {w2}")
        ),
        1,
        "the shard moved"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"), 0, "every row filled: {told}");
    let sent = sent(&s);
    assert_eq!(sent.len(), 3000);
    let twice: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "answers paid for twice: {twice:?}");
}

#[test]
fn the_nodes_share_one_rate_limit() {
    let Some(cluster) = Cluster::start("rate") else { return };
    // Bailian's limit for this key and model: 600 requests a minute (10 a second).
    let s =
        standin_with(bailian_standin::Config { latency_ms: 20, rpm_limit: Some(600), ..Default::default() });
    let mut c = cluster.coordinator();
    strings(&mut c, ENABLED);
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", requests_per_minute => 600");
    cluster.share_master_key();
    // 1,500 texts: 150 requests of 10 inputs, from both workers at once.
    fill_table(&mut c, 1500);
    let port = cluster.coordinator.port();
    let job = std::thread::spawn(move || {
        postgres::Client::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
            postgres::NoTls,
        )
        .unwrap()
        .batch_execute("CALL ai_update('docs', 'emb', $$ai_embed('emb', body)$$)")
    });
    // While it runs, ai_activity on the coordinator shows each worker's part of the job.
    let mut seen_nodes = Vec::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            seen_nodes = strings(
            &mut c,
            "SELECT DISTINCT node FROM ai_activity WHERE node IS NOT NULL AND job LIKE 'ai_update docs_%' ORDER BY 1",
        );
            seen_nodes.len() == 2
        }),
        "{seen_nodes:?}"
    );
    job.join().unwrap().unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL"), 0);
    let stats = s.stats();
    assert_eq!(stats.rate_limited, 0, "the nodes together kept under the limit: {stats:?}");
    let (r1, r2) = (requests_of(&mut cluster.worker(0)), requests_of(&mut cluster.worker(1)));
    assert!(r1 > 0 && r2 > 0, "{r1}, {r2}");
    // A budget holds for the cluster too: each node keeps to its share of it. 2,000 tokens of
    // a chat model for a job whose rows need some 3 times that, two requests in flight a node.
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    c.batch_execute(
        "ALTER ROLE postgres SET pg_bailian.max_concurrency = 2;
         SELECT ai_set_budget(NULL, 'chat', 2000, unit => 'tokens');
         ALTER TABLE docs ADD COLUMN answer text;",
    )
    .unwrap();
    let mut spender = cluster.coordinator();
    let (_, message) = error_of(
        spender.batch_execute("CALL ai_update('docs', 'answer', $$ai_gen('chat', 'Say: ' || body)$$)"),
    );
    assert!(message.contains("budget"), "{message}");
    let spent = count(
        &mut c,
        "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint FROM ai_usage WHERE model_name = 'chat'",
    );
    let answered = count(&mut c, "SELECT count(*) FROM docs WHERE answer IS NOT NULL");
    eprintln!("budget: {spent} tokens spent, {answered} rows answered");
    assert!(answered > 0 && answered < 1500, "{answered} rows answered");
    // Each node alone would have spent up to the whole 2,000.
    assert!((1000..=2200).contains(&spent), "the cluster spent {spent} tokens of a 2,000-token budget");
    c.batch_execute("ALTER ROLE postgres RESET pg_bailian.max_concurrency").unwrap();

    // Each node paced itself to its share of the limit (about half each here).
    let limits = strings(
        &mut c,
        "SELECT result FROM run_command_on_workers($$SELECT coalesce(max(requests_per_minute), 0)::text FROM ai_rate_limits$$) ORDER BY nodeport",
    );
    for l in &limits {
        let rpm: i64 = l.parse().unwrap();
        assert!(rpm > 0 && rpm < 600, "a worker's limit is its share of 600: {limits:?}");
    }
}

#[test]
fn a_node_that_finishes_its_part_early_gives_its_share_of_the_rate_to_the_others() {
    let Some(cluster) = Cluster::start("rebalance") else { return };
    let s =
        standin_with(bailian_standin::Config { latency_ms: 20, rpm_limit: Some(600), ..Default::default() });
    let mut c = cluster.coordinator();
    strings(&mut c, ENABLED);
    deploy(&mut c, &s, "chat", "qwen-plus", ", requests_per_minute => 600");
    cluster.share_master_key();
    fill_table(&mut c, 80);
    assert_eq!(
        count(&mut c, "SELECT count(DISTINCT p.groupid) FROM pg_dist_placement p JOIN pg_dist_shard s USING (shardid) WHERE s.logicalrelid = 'docs'::regclass"),
        2
    );
    // Every row on the first worker asks the same question (one request there, its answer
    // shared), every row on the second its own: both get about half the rate for about half
    // the rows, and the first is done long before the second.
    let first = cluster.workers[0].port();
    let on_first = strings(
        &mut c,
        &format!(
            "SELECT string_agg(g::text, ',') FROM generate_series(1, 80) g
              WHERE get_shard_id_for_distribution_column('docs', g) IN (
                    SELECT p.shardid FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
                     WHERE n.nodeport = {first})"
        ),
    );
    c.batch_execute(&format!("UPDATE docs SET body = 'the same question' WHERE id IN ({})", on_first[0]))
        .unwrap();
    // Run by a role with no more than the table's grants: it tells the other nodes as itself.
    c.batch_execute("CREATE ROLE rb_clerk LOGIN; GRANT SELECT, UPDATE ON docs TO rb_clerk").unwrap();
    let (mut cc, seen) = cluster.coordinator.connect_collecting_as("postgres", "rb_clerk");
    let started = std::time::Instant::now();
    cc.batch_execute("CALL ai_update('docs', 'summary', $$ai_gen('chat', body)$$)").unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let told = notices(&seen);
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE summary IS NULL"), 0);
    // The second worker started at its share and ended with the whole rate.
    let second = cluster.workers[1].port();
    let shares = told.lines().find(|l| l.contains("shares of the rate")).unwrap_or_default().to_string();
    let of_second = shares
        .split(&format!("127.0.0.1:{second} "))
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no share of the second worker: {told}"))
        .to_string();
    let first_share: f64 = of_second.split(' ').next().unwrap().parse().unwrap();
    assert!((20.0..=80.0).contains(&first_share), "{shares}");
    assert!(
        of_second.ends_with("then 100 %"),
        "the second worker's share was raised to the whole rate: {shares}"
    );
    assert!(shares.contains(&format!("127.0.0.1:{first} ")), "{shares}");
    // It paced its requests by the whole limit (the pacer leaves no burst: at its first share
    // they would be at least 60 s / (600 x share) / 0.98 apart, 204 ms at half, at the whole
    // rate 102 ms), and the account was never over it.
    let mut arrivals: Vec<f64> = s
        .requests()
        .iter()
        .filter(|r| r.status == 200 && !r.inputs.iter().any(|i| i.contains("the same question")))
        .map(|r| r.received_ms)
        .collect();
    arrivals.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> = arrivals.windows(2).skip(5).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    assert!(gaps.len() >= 10, "{arrivals:?}");
    let median = gaps[gaps.len() / 2];
    let at_first_share = 60_000.0 / (600.0 * first_share / 100.0) / 0.98;
    assert!(
        median < (0.8 * at_first_share).min(150.0),
        "the second worker's requests came {median:.0} ms apart ({at_first_share:.0} at its first share): {gaps:?}"
    );
    assert_eq!(s.stats().rate_limited, 0, "{:?}", s.stats());
    eprintln!("rebalanced job: {seconds:.1} s, the second worker's requests {median:.0} ms apart; {shares}");
}

/// Whether a node's look-alikes ran: what they recorded there.
fn hijack_log(c: &mut Client) -> Vec<String> {
    strings(c, "SELECT who || ': ' || what FROM public.hijack_log")
}

#[test]
fn planted_look_alikes_never_run_on_any_node() {
    let Some((cluster, _standin, mut c)) = Cluster::with_docs("hostile", 300) else { return };
    c.batch_execute(
        "CREATE TABLE ref (id int PRIMARY KEY, body text, emb real[]); SELECT create_reference_table('ref');
         INSERT INTO ref SELECT g, 'r ' || g FROM generate_series(1, 40) g;
         SELECT ai_set_budget(NULL, 'emb', 100000000, unit => 'tokens');",
    )
    .unwrap();
    // An unprivileged role plants its look-alikes in public on every node, each node's own
    // (Citus would otherwise propagate them from the coordinator).
    let mut nodes: Vec<&PrivateCluster> = vec![&cluster.coordinator];
    nodes.extend(cluster.workers.iter());
    for node in &nodes {
        node.connect("postgres")
            .batch_execute(
                "SET citus.enable_ddl_propagation = off;
                 DO $$ BEGIN CREATE ROLE cs_mallory LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
                 GRANT CREATE ON SCHEMA public TO cs_mallory;",
            )
            .unwrap();
        let mut mallory = node.connect_as("postgres", "cs_mallory");
        mallory.batch_execute("SET citus.enable_ddl_propagation = off").unwrap();
        mallory.batch_execute(PLANT).unwrap();
    }
    let (mut cc, seen) = cluster.coordinator.connect_collecting("postgres");
    let hijacks = |seen: &Seen| -> Vec<String> {
        seen.lock().unwrap().iter().filter(|n| n.contains("HIJACKED")).cloned().collect()
    };
    // Not vacuous: with this search_path, plain SQL does pick the look-alikes up.
    cc.batch_execute("SET search_path = public, pg_catalog; SELECT 'a'::text = 'b'::text").unwrap();
    assert!(!hijacks(&seen).is_empty(), "the planted operator was not picked up");
    seen.lock().unwrap().clear();
    cc.batch_execute("RESET search_path; TRUNCATE public.hijack_log; SET search_path = public, pg_catalog")
        .unwrap();

    // Everything of ours that runs on or across nodes, under that search_path: the check, the
    // set-up again, jobs on a distributed table (counted, spread, filled on the workers under
    // the caller's search_path, shares released between them) and on a reference table, AI
    // calls in shard queries, the cluster's usage and activity, its reset, and an undeploy that
    // reaches every node's cache.
    for sql in [
        "SELECT * FROM public.ai_citus_check()",
        "SELECT * FROM public.ai_citus_enable()",
        "CALL public.ai_update('docs', 'emb', $$public.ai_embed('emb', body)$$, batch_size => 50,
              filter => $$id OPERATOR(pg_catalog.<=) 250$$)",
        "CALL public.ai_embed_column('docs', 'body', 'emb', 'emb')",
        "CALL public.ai_gen_column('docs', 'body', 'summary', 'chat', 'Sum up: {0}')",
        "CALL public.ai_update('ref', 'emb', $$public.ai_embed('emb', body)$$)",
        "SELECT id, public.ai_gen('chat', body) FROM public.docs WHERE id OPERATOR(pg_catalog.<=) 40",
        "SELECT * FROM public.ai_usage",
        "SELECT * FROM public.ai_activity",
        "SELECT public.ai_usage_reset()",
        "SELECT public.ai_undeploy_model('chat')",
    ] {
        cc.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(hijacks(&seen), Vec::<String>::new(), "{sql}: planted objects ran");
    }
    cc.batch_execute("RESET search_path").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_usage"), 0, "ai_usage_reset forgot every node's rows");
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs WHERE emb IS NULL OR summary IS NULL"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM ref WHERE emb IS NULL"), 0);
    for node in &nodes {
        assert_eq!(
            hijack_log(&mut node.connect("postgres")),
            Vec::<String>::new(),
            "on port {}",
            node.port()
        );
    }

    // Not vacuous on the workers either: an expression of the caller's own naming an operator
    // the look-alikes shadow runs theirs there, where the job's rows are.
    c.batch_execute("UPDATE docs SET emb = NULL WHERE id OPERATOR(pg_catalog.<=) 20").unwrap();
    cc.batch_execute("SET search_path = public, pg_catalog").unwrap();
    cc.batch_execute("CALL public.ai_update('docs', 'emb', $$public.ai_embed('emb', body || '!')$$)")
        .unwrap();
    cc.batch_execute("RESET search_path").unwrap();
    let on_workers: usize =
        cluster.workers.iter().map(|w| hijack_log(&mut w.connect("postgres")).len()).sum();
    assert!(
        on_workers > 0,
        "the caller's search_path did not reach the workers: the test would prove nothing"
    );
}
