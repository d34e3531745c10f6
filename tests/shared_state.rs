//! The shared state of a preloaded pg_bailian across server stops, crashes and settings fixed
//! at server start, on clusters each test makes for itself (the shared test cluster cannot be
//! restarted under the other tests): usage counters and budget spending survive a clean
//! restart and not a crash; the capacities are fixed at start and, once full, behave as
//! documented; without preloading every session counts alone; a crash restart makes the
//! shared memory anew.

mod common;

use bailian_standin::Standin;
use common::*;
use postgres::Client;
use std::time::Duration;

/// A cluster of the test's own with `conf`, pg_bailian created in its database postgres, and
/// the stand-in's qwen-plus deployed there as "chat" (`deploy_extra` appended to the call).
fn with_chat(name: &str, conf: &str, deploy_extra: &str) -> (PrivateCluster, Standin, Client) {
    let cluster = PrivateCluster::start(name, conf);
    let s = standin();
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_bailian").unwrap();
    deploy(&mut c, &s, "chat", "qwen-plus", deploy_extra);
    (cluster, s, c)
}

/// Every row of ai_usage, whole, in a fixed order.
const USAGE: &str = "SELECT u::text FROM ai_usage u ORDER BY model_name, function_name, role";
/// Every row of ai_budgets, whole.
const BUDGETS: &str = "SELECT b::text FROM ai_budgets b ORDER BY budget_id";

fn texts(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get(0)).collect()
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// Tokens an answer reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tokens {
    prompt: i64,
    completion: i64,
}

impl std::ops::AddAssign for Tokens {
    fn add_assign(&mut self, o: Tokens) {
        self.prompt += o.prompt;
        self.completion += o.completion;
    }
}

impl Tokens {
    fn total(&self) -> i64 {
        self.prompt + self.completion
    }

    /// What they cost on qwen-plus (seed 002: 0.8 yuan per million input tokens, 2 per
    /// million output tokens), in nano-yuan.
    fn qwen_plus_nano_yuan(&self) -> i64 {
        self.prompt * 800 + self.completion * 2000
    }
}

/// One `ai_chat` call on `model`; the usage its answer reported.
fn chat(c: &mut Client, model: &str, prompt: &str) -> Tokens {
    let sql = format!(
        "SELECT (u ->> 'prompt_tokens')::int8, (u ->> 'completion_tokens')::int8
           FROM (SELECT ai_chat('{model}', jsonb_build_array(
                                 jsonb_build_object('role', 'user', 'content', $1::text))) -> 'usage' AS u) s"
    );
    let row = c.query_one(&sql, &[&prompt]).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let tokens = Tokens { prompt: row.get(0), completion: row.get(1) };
    assert!(tokens.prompt > 0 && tokens.completion > 0, "the stand-in reports usage: {tokens:?}");
    tokens
}

/// The counters of one row of ai_usage.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    calls: i64,
    requests: i64,
    inputs: i64,
    failures: i64,
    tokens: Tokens,
    cost_nano_yuan: Option<i64>,
}

fn counts(c: &mut Client, model: &str, function: &str) -> Counts {
    let sql = "SELECT calls, requests, inputs, failures, prompt_tokens, completion_tokens,
                      (cost_yuan * 1e9)::int8
                 FROM ai_usage WHERE model_name = $1 AND function_name = $2";
    let rows = c.query(sql, &[&model, &function]).unwrap();
    assert_eq!(rows.len(), 1, "one row of ai_usage for {model}, {function}");
    let r = &rows[0];
    Counts {
        calls: r.get(0),
        requests: r.get(1),
        inputs: r.get(2),
        failures: r.get(3),
        tokens: Tokens { prompt: r.get(4), completion: r.get(5) },
        cost_nano_yuan: r.get(6),
    }
}

/// What the budget on `model` (of every role) has spent.
fn spent(c: &mut Client, model: &str) -> String {
    one_text(c, &format!("SELECT spent::text FROM ai_budgets WHERE model_name = '{model}' AND role IS NULL"))
        .expect("the budget is there")
}

/// `ALTER SYSTEM <change>` of pg_bailian.save_usage and a reload; returns once new sessions
/// see it `now`.
fn set_save_usage(cluster: &PrivateCluster, c: &mut Client, change: &str, now: &str) {
    c.batch_execute(&format!("ALTER SYSTEM {change}")).unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let reloaded = wait_for(Duration::from_secs(10), || {
        one_text(&mut cluster.connect("postgres"), "SHOW pg_bailian.save_usage").as_deref() == Some(now)
    });
    assert!(reloaded, "pg_bailian.save_usage is not {now} after ALTER SYSTEM {change} and a reload");
}

/// Where the postmaster saves the counters at a clean shutdown.
fn saved_file(cluster: &PrivateCluster) -> std::path::PathBuf {
    cluster.data().join("pg_stat/pg_bailian.stat")
}

/// Stops the cluster in `mode` and starts it again: whether the stop saved the counters,
/// and a new session (once the start has read the saved counters and removed their file).
fn stop_and_start(cluster: &PrivateCluster, mode: &str) -> (bool, Client) {
    cluster.pg_ctl(&["stop", "-m", mode]);
    let saved = saved_file(cluster).exists();
    cluster.pg_ctl(&["start"]);
    assert!(!saved_file(cluster).exists(), "the saved counters were read at start and their file removed");
    (saved, cluster.connect("postgres"))
}

/// Counters and spending are saved by the postmaster at a clean shutdown and read back (and
/// the file removed) at the next start, as pg_stat_statements does; an immediate stop saves
/// nothing, and neither does a clean one with pg_bailian.save_usage off.
#[test]
fn counters_survive_a_clean_restart_and_not_a_crash() {
    let (cluster, s, mut c) = with_chat("restart", PRELOAD_CONF, "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    assert_eq!(one_text(&mut c, "SELECT bailian.scope()").as_deref(), Some("cluster"));
    c.batch_execute("SELECT ai_set_budget(NULL, 'chat', 1000000, 'tokens', 'day')").unwrap();

    let mut tokens = Tokens::default();
    for i in 0..4 {
        tokens += chat(&mut c, "chat", &format!("question {i} before the restart"));
    }
    c.batch_execute("SELECT ai_embed('emb', 'text ' || g) FROM generate_series(1, 12) g").unwrap();
    let stats = s.stats();
    assert_eq!(stats.chat_requests, 4);
    assert_eq!(
        counts(&mut c, "chat", "ai_chat"),
        Counts {
            calls: 4,
            requests: 4,
            inputs: 4,
            failures: 0,
            tokens,
            cost_nano_yuan: Some(tokens.qwen_plus_nano_yuan())
        }
    );
    let emb = counts(&mut c, "emb", "ai_embed");
    assert_eq!((emb.requests, emb.inputs), (stats.embedding_requests as i64, 12));
    assert_eq!(spent(&mut c, "chat"), tokens.total().to_string());
    let usage = texts(&mut c, USAGE);
    let budgets = texts(&mut c, BUDGETS);
    assert_eq!(usage.len(), 2, "{usage:?}");
    drop(c);

    // A clean restart: the same counters, to the microsecond of their first and last use.
    cluster.pg_ctl(&["restart", "-m", "fast"]);
    assert!(!saved_file(&cluster).exists(), "the saved counters were read at start and their file removed");
    let mut c = cluster.connect("postgres");
    assert_eq!(texts(&mut c, USAGE), usage, "ai_usage after a clean restart");
    assert_eq!(texts(&mut c, BUDGETS), budgets, "ai_budgets after a clean restart");
    // And counting goes on from them.
    tokens += chat(&mut c, "chat", "a question after the restart");
    let after = counts(&mut c, "chat", "ai_chat");
    assert_eq!((after.calls, after.tokens), (5, tokens));
    assert_eq!(spent(&mut c, "chat"), tokens.total().to_string());
    drop(c);

    // An immediate stop is a crash: nothing is saved, the next start counts from zero.
    let (saved_them, mut c) = stop_and_start(&cluster, "immediate");
    assert!(!saved_them, "an immediate stop saved the counters");
    assert_eq!(texts(&mut c, USAGE), Vec::<String>::new(), "ai_usage after a crash");
    assert_eq!(spent(&mut c, "chat"), "0", "the budget's spending after a crash");
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_budgets"), 1, "the budget itself is a catalog row");

    // pg_bailian.save_usage = off: a clean stop saves nothing either.
    let one_call = chat(&mut c, "chat", "a question with save_usage off");
    assert_eq!(counts(&mut c, "chat", "ai_chat").tokens, one_call);
    set_save_usage(&cluster, &mut c, "SET pg_bailian.save_usage = off", "off");
    drop(c);
    let (saved_them, mut c) = stop_and_start(&cluster, "fast");
    assert!(!saved_them, "a clean stop with save_usage off saved the counters");
    assert_eq!(texts(&mut c, USAGE), Vec::<String>::new(), "ai_usage after a restart with save_usage off");
    assert_eq!(spent(&mut c, "chat"), "0");

    // Back on, the same stop saves (so it was the setting that made the difference).
    set_save_usage(&cluster, &mut c, "RESET pg_bailian.save_usage", "on");
    let one_call = chat(&mut c, "chat", "a question with save_usage on again");
    let usage = texts(&mut c, USAGE);
    drop(c);
    let (saved_them, mut c) = stop_and_start(&cluster, "fast");
    assert!(saved_them, "a clean stop with save_usage on saved nothing");
    assert_eq!(texts(&mut c, USAGE), usage);
    assert_eq!(spent(&mut c, "chat"), one_call.total().to_string());
}

/// pg_bailian.max_usage_entries, max_budgets and max_rate_buckets are fixed at server start,
/// and a full table does what the settings' descriptions say: new usage keys are counted in
/// one overflow row, a new budget is refused and nothing changes, a new bucket is limited in
/// each backend alone with a WARNING.
#[test]
fn capacities_are_fixed_and_full_tables_behave_as_documented() {
    let conf = format!(
        "{PRELOAD_CONF}pg_bailian.max_usage_entries = 3\npg_bailian.max_budgets = 2\n\
         pg_bailian.max_rate_buckets = 1\n"
    );
    let (cluster, s, mut c) = with_chat("capacities", &conf, "");
    c.batch_execute("CREATE ROLE cap_user LOGIN").unwrap();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    for (name, value) in [("max_usage_entries", "3"), ("max_budgets", "2"), ("max_rate_buckets", "1")] {
        assert_eq!(one_text(&mut c, &format!("SHOW pg_bailian.{name}")).as_deref(), Some(value));
    }
    let (code, message) = error_of(c.batch_execute("SET pg_bailian.max_usage_entries = 5"));
    assert_eq!(code, "55P02", "{message}");
    assert!(message.contains("without restarting the server"), "{message}");
    assert_eq!(one_text(&mut c, "SHOW pg_bailian.max_usage_entries").as_deref(), Some("3"));

    // (a) Five (role, model, function) keys, three rows: the first three keys get theirs, the
    // last two are counted together in the overflow row.
    let mut u = cluster.connect_as("postgres", "cap_user");
    let calls = [
        (false, "SELECT ai_gen('chat', 'call')", 1),
        (false, "SELECT ai_chat('chat', '[{\"role\": \"user\", \"content\": \"call\"}]')", 2),
        (false, "SELECT ai_embed('emb', 'call')", 3),
        (true, "SELECT ai_gen('chat', 'call')", 4),
        (true, "SELECT ai_embed('emb', 'call')", 5),
    ];
    for (as_cap_user, sql, times) in calls {
        let session = if as_cap_user { &mut u } else { &mut c };
        for _ in 0..times {
            session.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
    let rows = texts(
        &mut c,
        "SELECT concat_ws(' ', coalesce(database, '-'), coalesce(role, '-'), coalesce(model_name, '-'),
                          coalesce(model_type, '-'), function_name, calls, requests, inputs)
           FROM ai_usage ORDER BY function_name = '(other)', function_name",
    );
    assert_eq!(
        rows,
        [
            "postgres postgres chat qwen-plus ai_chat 2 2 2",
            "postgres postgres emb text-embedding-v4 ai_embed 3 3 3",
            "postgres postgres chat qwen-plus ai_gen 1 1 1",
            "- - - - (other) 9 9 9",
        ]
    );
    let stats = s.stats();
    let totals = c
        .query_one("SELECT sum(calls)::int8, sum(requests)::int8, sum(inputs)::int8 FROM ai_usage", &[])
        .unwrap();
    let totals: (i64, i64, i64) = (totals.get(0), totals.get(1), totals.get(2));
    assert_eq!(totals, (15, stats.requests as i64, stats.inputs as i64), "the totals are the stand-in's");
    // Only roles that see every role's counters see the overflow row: cap_user's own calls
    // all went there.
    assert_eq!(count(&mut u, "SELECT count(*) FROM ai_usage"), 0);
    c.batch_execute("GRANT pg_read_all_stats TO cap_user").unwrap();
    assert_eq!(count(&mut u, "SELECT count(*) FROM ai_usage WHERE function_name = '(other)'"), 1);

    // (b) Two budgets fill the table: a third is refused and nothing changes; replacing one
    // still works, and dropping one makes room.
    let first: i64 =
        c.query_one("SELECT ai_set_budget(NULL, 'chat', 1000, 'tokens', 'day')", &[]).unwrap().get(0);
    c.batch_execute("SELECT ai_set_budget('cap_user', 'emb', 500, 'tokens', 'day')").unwrap();
    let budgets = texts(&mut c, BUDGETS);
    assert_eq!(budgets.len(), 2);
    let (code, message) =
        error_of(c.query_one("SELECT ai_set_budget(NULL, 'emb', 100, 'tokens', 'month')", &[]));
    assert_eq!(code, "53400", "{message}");
    assert_eq!(
        message,
        "ai_set_budget: the cluster has 2 budgets already, its limit (pg_bailian.max_budgets)"
    );
    assert_eq!(texts(&mut c, BUDGETS), budgets, "ai_budgets after the refused budget");
    assert_eq!(count(&mut c, "SELECT count(*) FROM bailian.budgets"), 2);
    let replaced: i64 =
        c.query_one("SELECT ai_set_budget(NULL, 'chat', 2000, 'tokens', 'day')", &[]).unwrap().get(0);
    assert_eq!(replaced, first);
    assert_eq!(
        one_text(&mut c, &format!("SELECT \"limit\"::text FROM ai_budgets WHERE budget_id = {first}"))
            .as_deref(),
        Some("2000")
    );
    assert_eq!(one_text(&mut c, "SELECT ai_drop_budget('cap_user', 'emb')::text").as_deref(), Some("true"));
    // A budget that went with its database, never came to be (rolled back) or went with its
    // model takes no place.
    c.batch_execute("CREATE DATABASE gone").unwrap();
    let mut g = cluster.connect("gone");
    g.batch_execute("CREATE EXTENSION pg_bailian").unwrap();
    deploy(&mut g, &s, "chat", "qwen-plus", "");
    g.batch_execute("SELECT ai_set_budget(NULL, 'chat', 10, 'tokens', 'day')").unwrap();
    drop(g);
    c.batch_execute("DROP DATABASE gone").unwrap();
    c.batch_execute("BEGIN; SELECT ai_set_budget(NULL, 'emb', 5, 'tokens', 'day'); ROLLBACK").unwrap();
    deploy(&mut c, &s, "doomed", "qwen-plus", "");
    c.batch_execute("SELECT ai_set_budget(NULL, 'doomed', 10, 'tokens', 'day')").unwrap();
    c.batch_execute("SELECT ai_undeploy_model('doomed')").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_budgets"), 1);
    c.batch_execute("SELECT ai_set_budget(NULL, 'emb', 100, 'tokens', 'month')").unwrap();
    assert_eq!(
        texts(
            &mut c,
            "SELECT concat_ws(' ', coalesce(role::text, '-'), model_name, \"limit\", period)
               FROM ai_budgets ORDER BY model_name"
        ),
        ["- chat 2000 day", "- emb 100 month"]
    );

    // (c) One bucket: the first deployment with a rate limit takes it; the second, another
    // key, is limited in each backend alone, says so once, and works.
    assert_eq!(count(&mut c, "SELECT count(*) FROM ai_rate_limits WHERE bucket_requests IS NOT NULL"), 0);
    deploy(&mut c, &s, "paced1", "qwen-plus", ", requests_per_minute => 600");
    deploy(&mut c, &s, "paced2", "qwen-plus", ", requests_per_minute => 600");
    let (mut p, seen) = cluster.connect_collecting("postgres");
    assert_eq!(
        one_text(&mut p, "SELECT ai_gen('paced1', 'the first bucket')"),
        Some(echo("the first bucket"))
    );
    assert_eq!(notices(&seen), "");
    assert_eq!(one_text(&mut p, "SELECT ai_gen('paced2', 'no bucket left')"), Some(echo("no bucket left")));
    assert_eq!(one_text(&mut p, "SELECT ai_gen('paced2', 'and again')"), Some(echo("and again")));
    assert_eq!(
        notices(&seen),
        "WARNING: pg_bailian.max_rate_buckets (1) buckets are in use: \
         model \"paced2\" is rate-limited in this backend alone"
    );
    assert_eq!(
        texts(
            &mut p,
            "SELECT concat_ws(' ', model_name, requests_per_minute, source,
                              coalesce(bucket_requests::text, '-'), scope)
               FROM ai_rate_limits WHERE model_name LIKE 'paced%' ORDER BY model_name"
        ),
        ["paced1 600 deployment 1 cluster", "paced2 600 deployment - cluster"]
    );
}

/// Without shared_preload_libraries the library loads in a session without a FATAL (settings
/// fixed at server start are not defined then), everything works, and each session counts
/// alone.
#[test]
fn without_preloading_each_session_counts_alone() {
    let (cluster, s, mut a) = with_chat("backend_scope", "", ", requests_per_minute => 600");
    assert_eq!(one_text(&mut a, "SELECT bailian.scope()").as_deref(), Some("backend"));
    let mut b = cluster.connect("postgres");
    for (session, times) in [(&mut a, 2), (&mut b, 3)] {
        for i in 0..times {
            let prompt = format!("call {i}");
            assert_eq!(
                session.query_one("SELECT ai_gen('chat', $1)", &[&prompt]).unwrap().get::<_, String>(0),
                echo(&prompt)
            );
        }
    }
    assert_eq!(s.stats().requests, 5);
    let usage = "SELECT concat_ws(' ', model_name, function_name, calls, requests, scope) FROM ai_usage";
    assert_eq!(texts(&mut a, usage), ["chat ai_gen 2 2 backend"]);
    assert_eq!(texts(&mut b, usage), ["chat ai_gen 3 3 backend"]);
    let limits = "SELECT concat_ws(' ', model_name, requests_per_minute, source, bucket_requests, scope)
                    FROM ai_rate_limits";
    assert_eq!(texts(&mut a, limits), ["chat 600 deployment 2 backend"]);
    assert_eq!(texts(&mut b, limits), ["chat 600 deployment 3 backend"]);

    // The library's settings are there; those fixed at server start are not.
    assert_eq!(one_text(&mut a, "SHOW pg_bailian.save_usage").as_deref(), Some("on"));
    for name in ["max_usage_entries", "max_budgets", "max_rate_buckets"] {
        let (code, message) = error_of(a.batch_execute(&format!("SHOW pg_bailian.{name}")));
        assert_eq!(code, "42704", "{name}: {message}");
    }
    let log = cluster.log();
    assert!(!log.contains("PGC_POSTMASTER"), "{log}");
    let fatal: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FATAL") && !l.contains("the database system is starting up"))
        .collect();
    assert!(fatal.is_empty(), "{fatal:?}");
}

/// A backend killed by a signal makes the postmaster end every session and make shared memory
/// anew, running the startup hook again: afterwards calls work and are counted from zero.
#[test]
fn a_crash_restart_makes_the_shared_state_anew() {
    let (cluster, s, mut c) = with_chat("crash", PRELOAD_CONF, ", requests_per_minute => 600");
    for i in 0..2 {
        c.batch_execute(&format!("SELECT ai_gen('chat', 'before the crash {i}')")).unwrap();
    }
    let usage = "SELECT concat_ws(' ', model_name, function_name, calls, requests, scope) FROM ai_usage";
    let limits =
        "SELECT concat_ws(' ', model_name, coalesce(bucket_requests::text, '-'), scope) FROM ai_rate_limits";
    assert_eq!(texts(&mut c, usage), ["chat ai_gen 2 2 cluster"]);
    assert_eq!(texts(&mut c, limits), ["chat 2 cluster"]);

    let postmaster = cluster.postmaster_pid().expect("the postmaster runs");
    let victim: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let killed = std::process::Command::new("kill").args(["-9", &victim.to_string()]).status();
    assert!(killed.unwrap().success());
    let reset = wait_for(Duration::from_secs(30), || {
        cluster.log().contains("all server processes terminated; reinitializing")
    });
    assert!(reset, "the postmaster did not reinitialize: {}", cluster.log());
    let mut after = None;
    let back = wait_for(Duration::from_secs(30), || {
        after = postgres::Client::connect(&cluster.conn_string("postgres", "postgres"), postgres::NoTls).ok();
        after.is_some()
    });
    assert!(back, "the cluster did not come back: {}", cluster.log());
    let mut after = after.unwrap();
    assert_eq!(cluster.postmaster_pid(), Some(postmaster), "the same postmaster, not a new start");
    assert!(c.batch_execute("SELECT 1").is_err(), "the other sessions were ended too");

    assert_eq!(texts(&mut after, usage), Vec::<String>::new(), "counted from zero");
    assert_eq!(texts(&mut after, limits), ["chat - cluster"], "no bucket yet");
    assert_eq!(
        one_text(&mut after, "SELECT ai_gen('chat', 'after the crash')"),
        Some(echo("after the crash"))
    );
    assert_eq!(texts(&mut after, usage), ["chat ai_gen 1 1 cluster"]);
    assert_eq!(texts(&mut after, limits), ["chat 1 cluster"]);
    assert_eq!(s.stats().requests, 3);
}
