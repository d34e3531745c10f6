//! Operating pg_bailian across sessions (issue 19): usage that equals what the provider
//! counted, one rate budget shared by every session, a 429 that slows every session using
//! the bucket, documented limits by default, and budgets that stop spending.

mod common;

use bailian_standin::{Config, Fault};
use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

const DEPLOY_ARGS: &str =
    "text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean";

/// Sums of this database's ai_usage: (requests, rate_limited, prompt, completion, cached,
/// reasoning, failures).
fn usage_sums(c: &mut Client, filter: &str) -> (i64, i64, i64, i64, i64, i64, i64) {
    let sql = format!(
        "SELECT COALESCE(sum(requests), 0)::int8, COALESCE(sum(rate_limited), 0)::int8,
                COALESCE(sum(prompt_tokens), 0)::int8, COALESCE(sum(completion_tokens), 0)::int8,
                COALESCE(sum(cached_tokens), 0)::int8, COALESCE(sum(reasoning_tokens), 0)::int8,
                COALESCE(sum(failures), 0)::int8
           FROM ai_usage WHERE database = current_database() AND {filter}"
    );
    let r = c.query_one(&sql, &[]).unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))
}

/// Every AI function family, batched or row by row, on a fresh database and stand-in: the
/// counters equal what the stand-in counted and the usage it returned, exactly.
fn usage_matches_the_provider(mode: &str, batched: bool) {
    let (mut c, _) = fresh_db(&format!("usage_exact_{mode}"));
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "think", "qwq-plus", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    deploy(&mut c, &s, "mt", "qwen-mt-plus", "");
    deploy(&mut c, &s, "rr", "gte-rerank-v2", "");
    c.batch_execute(&format!(
        "SET pg_bailian.batch_execution = {batched};
         CREATE TABLE r (id int PRIMARY KEY, body text);
         INSERT INTO r SELECT g, 'review ' || g || ' of the database, quite fast' FROM generate_series(1, 23) g;"
    ))
    .unwrap();
    // A prompt long enough (more than 256 tokens) that its second sending hits the implicit
    // context cache.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(40);
    let statements = [
        "SELECT count(ai_gen('chat', body)) FROM r".to_string(),
        "SELECT count(ai_embed('emb', body)) FROM r".to_string(),
        "SELECT count(ai_translate('mt', body, 'English')) FROM r WHERE id <= 5".to_string(),
        "SELECT count(ai_classify('chat', body, ARRAY['good', 'bad'])) FROM r WHERE id <= 4".to_string(),
        "SELECT count(ai_rank('rr', 'fast database', body)) FROM r WHERE id <= 6".to_string(),
        "SELECT count(ai_similarity('emb', body, 'fast')) FROM r WHERE id <= 3".to_string(),
        "SELECT count(ai_gen('think', body)) FROM r WHERE id <= 3".to_string(),
        "SELECT count(*) FROM ai_embed_batch('emb', ARRAY(SELECT body FROM r))".to_string(),
        "SELECT count(*) FROM ai_gen_batch('chat', ARRAY(SELECT body FROM r WHERE id <= 7))".to_string(),
        format!("SELECT ai_gen('chat', '{long}')"),
        format!("SELECT ai_gen('chat', '{long}')"),
    ];
    for sql in &statements {
        c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let served = s.usage_total();
    let (requests, limited, prompt, completion, cached, reasoning, failures) = usage_sums(&mut c, "true");
    assert_eq!(requests as u64, served.requests, "{mode}: requests; the stand-in counted {served:?}");
    assert_eq!(limited, 0, "{mode}");
    assert_eq!(failures, 0, "{mode}");
    assert_eq!((prompt + completion) as u64, served.tokens.total_tokens, "{mode}: total tokens");
    assert_eq!(completion as u64, served.tokens.completion_tokens, "{mode}: completion tokens");
    assert_eq!(cached as u64, served.tokens.cached_tokens, "{mode}: cached tokens");
    assert_eq!(reasoning as u64, served.tokens.reasoning_tokens, "{mode}: reasoning tokens");
    assert!(cached > 0, "{mode}: the long prompt's second sending hit the cache");
    assert!(reasoning > 0, "{mode}: qwq-plus reasons");
    // Per model: the embedding inputs, and every model's requests.
    for (name, model_type) in [
        ("chat", "qwen-plus"),
        ("think", "qwq-plus"),
        ("emb", "text-embedding-v4"),
        ("mt", "qwen-mt-plus"),
        ("rr", "gte-rerank-v2"),
    ] {
        let served = s.usage_of(model_type, &bailian_standin::key_hint(&key(name)));
        let r = c
            .query_one(
                "SELECT sum(requests)::int8, sum(inputs)::int8, sum(prompt_tokens + completion_tokens)::int8
                   FROM ai_usage WHERE database = current_database() AND model_name = $1",
                &[&name],
            )
            .unwrap();
        let (req, inputs, tokens): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(req as u64, served.requests, "{mode}: {name}'s requests");
        assert_eq!(tokens as u64, served.tokens.total_tokens, "{mode}: {name}'s tokens");
        if name == "emb" {
            assert_eq!(inputs as u64, served.inputs, "{mode}: {name}'s inputs");
        }
    }
    // Each function has its row.
    let functions: Vec<String> = c
        .query(
            "SELECT DISTINCT function_name FROM ai_usage WHERE database = current_database() ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for f in [
        "ai_classify",
        "ai_embed",
        "ai_embed_batch",
        "ai_gen",
        "ai_gen_batch",
        "ai_rank",
        "ai_similarity",
        "ai_translate",
    ] {
        assert!(functions.iter().any(|x| x == f), "{mode}: no row for {f} in {functions:?}");
    }
    // Cost at ai_prices (qwen-plus: 0.8 in, 2 out, cache hits at 0.2 of the input price),
    // to the nano-yuan: every request's cost is a whole number of nano-yuan here.
    let r = c
        .query_one(
            "SELECT sum(prompt_tokens)::int8, sum(cached_tokens)::int8, sum(completion_tokens)::int8, sum(cost_yuan)::text
               FROM ai_usage WHERE database = current_database() AND model_name = 'chat'",
            &[],
        )
        .unwrap();
    let (p, k, o, cost): (i64, i64, i64, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
    let nano = (p - k) * 800 + k * 160 + o * 2000;
    let expected: f64 = nano as f64 / 1e9;
    assert!(
        (cost.parse::<f64>().unwrap() - expected).abs() < 1e-12,
        "{mode}: cost {cost}, expected {expected}"
    );
    // No price for the embedding model in seed 002: NULL, not 0.
    let emb_cost: Option<String> = c
        .query_one(
            "SELECT max(cost_yuan)::text FROM ai_usage WHERE database = current_database() AND model_name = 'emb'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(emb_cost, None, "{mode}");
    let lat: (Option<f64>, Option<f64>) = {
        let r = c
            .query_one(
                "SELECT min(latency_p50_ms), max(latency_max_ms) FROM ai_usage WHERE database = current_database()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(lat.0.unwrap() > 0.0 && lat.1.unwrap() >= lat.0.unwrap(), "{mode}: {lat:?}");
}

#[test]
fn usage_equals_what_the_provider_served_batched() {
    usage_matches_the_provider("batched", true);
}

#[test]
fn usage_equals_what_the_provider_served_row_by_row() {
    usage_matches_the_provider("row_by_row", false);
}

/// Four sessions fill four columns at once with a model deployed at 600 requests/min against a
/// provider that allows 600 per minute (and, as Bailian, 10 per second): together they keep
/// under the limit (nothing answered 429) instead of each using the whole budget.
#[test]
fn four_sessions_share_one_rate_limit() {
    let (mut c, db) = fresh_db("shared_limit");
    let s = standin_with(Config { rpm_limit: Some(600), ..Config::default() });
    deploy(&mut c, &s, "chat", "qwen-flash", ", requests_per_minute => 600");
    for t in 0..4 {
        c.batch_execute(&format!(
            "CREATE TABLE docs{t} (id int PRIMARY KEY, body text, answer text);
             INSERT INTO docs{t} SELECT g, 'doc {t}-' || g FROM generate_series(1, 20) g;"
        ))
        .unwrap();
    }
    let start = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut w = connect(&db);
                w.batch_execute(&format!(
                    "CALL ai_gen_column('docs{t}', 'body', 'answer', 'chat', 'Q: {{0}}')"
                ))
                .unwrap();
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let took = start.elapsed().as_secs_f64();
    let served = s.usage_total();
    assert_eq!(served.rate_limited_rpm, 0, "{served:?}");
    assert_eq!(served.requests, 80);
    // 80 requests at 600/min are 7.9 s at the least; four sessions each at 600/min would
    // have sent them in 2 s.
    assert!(took >= 7.5, "80 requests in {took:.1} s: the limit did not hold for the four sessions together");
    let filled: i64 = c
        .query_one(
            "SELECT (SELECT count(answer) FROM docs0) + (SELECT count(answer) FROM docs1)
                  + (SELECT count(answer) FROM docs2) + (SELECT count(answer) FROM docs3)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(filled, 80);
    // One bucket for the deployment, which every session used.
    let r = c
        .query_one("SELECT requests_per_minute, source, bucket_requests FROM ai_rate_limits WHERE model_name = 'chat'", &[])
        .unwrap();
    assert_eq!(r.get::<_, Option<i64>>(0), Some(600));
    assert_eq!(r.get::<_, String>(1), "deployment");
    assert_eq!(r.get::<_, Option<i64>>(2), Some(80));
}

/// A 429 one session gets pauses the bucket for every session that uses it: the other
/// session's request waits for the pause instead of walking into the same limit.
#[test]
fn a_429_pauses_every_session_on_the_bucket() {
    let (mut c, db) = fresh_db("shared_backoff");
    let s = standin();
    deploy(
        &mut c,
        &s,
        "chat",
        "qwen-plus",
        ", requests_per_minute => 6000, initial_retry_delay => 2, max_retries => 1",
    );
    s.script("first", vec![Fault::Status(429)]);
    let db2 = db.clone();
    let a = std::thread::spawn(move || {
        let mut a = connect(&db2);
        a.query_one("SELECT ai_gen('chat', 'first')", &[]).unwrap().get::<_, String>(0)
    });
    assert!(wait_for(Duration::from_secs(5), || !s.requests().is_empty()), "the first request went out");
    let mut b = connect(&db);
    b.query_one("SELECT ai_gen('chat', 'second')", &[]).unwrap();
    assert_eq!(a.join().unwrap(), echo("first"));
    let log = s.requests();
    let at = |input: &str| {
        log.iter()
            .filter(|r| r.inputs.first().map(String::as_str) == Some(input))
            .map(|r| r.received_ms)
            .collect::<Vec<_>>()
    };
    let (first, second) = (at("first"), at("second"));
    assert_eq!(first.len(), 2, "a 429 and the retry");
    assert_eq!(second.len(), 1);
    // The backoff is 2 s with jitter down to 75%: the other session waited at least that.
    assert!(
        second[0] - first[0] >= 1400.0,
        "the other session went {} ms after the 429",
        second[0] - first[0]
    );
    let limited: Option<i64> = c
        .query_one("SELECT bucket_rate_limited FROM ai_rate_limits WHERE model_name = 'chat'", &[])
        .unwrap()
        .get(0);
    assert_eq!(limited, Some(1));
    let (_, rate_limited, ..) = usage_sums(&mut c, "model_name = 'chat'");
    assert_eq!(rate_limited, 1);
}

/// Deployments without limits take Bailian's documented ones where requests go to Bailian;
/// 0 turns them off; a base_url elsewhere has none; the setting turns them all off.
#[test]
fn documented_limits_are_the_default() {
    let (mut c, _) = fresh_db("documented_limits");
    let s = standin();
    c.batch_execute(
        "SELECT ai_deploy_model('mt', 'qwen-mt-plus', 'sk-documented0000000');
         SELECT ai_deploy_model('mt_sg', 'qwen-mt-plus', 'sk-documented0000000', region => 'singapore');
         SELECT ai_deploy_model('mt_off', 'qwen-mt-plus', 'sk-documented0000000', requests_per_minute => 0, tokens_per_minute => 0);
         SELECT ai_deploy_model('mt_own', 'qwen-mt-plus', 'sk-documented0000000', requests_per_minute => 30);
         SELECT ai_deploy_model('emb', 'text-embedding-v4', 'sk-documented0000000');",
    )
    .unwrap();
    deploy(&mut c, &s, "local", "qwen-mt-plus", "");
    let rows: Vec<(String, Option<i64>, Option<i64>, String)> = c
        .query("SELECT model_name, requests_per_minute, tokens_per_minute, source FROM ai_rate_limits ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let get = |n: &str| rows.iter().find(|r| r.0 == n).cloned().unwrap();
    let mt = get("mt");
    assert_eq!((mt.1, mt.2), (Some(60), Some(25_000)), "{mt:?}");
    assert!(mt.3.starts_with("documented: "), "{mt:?}");
    assert_eq!(get("mt_sg").1, Some(60));
    assert_eq!(get("emb").1, Some(1800), "30 requests/s");
    let off = get("mt_off");
    assert_eq!((off.1, off.2, off.3.as_str()), (None, None, "none"));
    let own = get("mt_own");
    assert_eq!(own.1, Some(30));
    assert!(own.3.starts_with("requests: deployment; tokens: documented: "), "{own:?}");
    // The tokens of a deployment that set only requests still follow the documentation.
    assert_eq!(own.2, Some(25_000));
    let local = get("local");
    assert_eq!((local.1, local.2, local.3.as_str()), (None, None, "none"), "a base_url off Bailian");
    c.batch_execute("SET pg_bailian.documented_limits = off").unwrap();
    let mt: Option<i64> = c
        .query_one("SELECT requests_per_minute FROM ai_rate_limits WHERE model_name = 'mt'", &[])
        .unwrap()
        .get(0);
    assert_eq!(mt, None);
    let (code, msg) = error_of(c.batch_execute(
        "SELECT ai_deploy_model('bad', 'qwen-plus', 'sk-documented0000000', requests_per_minute => -1)",
    ));
    assert_eq!(code, "22023");
    assert!(msg.contains("requests_per_minute must be between 0 and 100000000"), "{msg}");
}

/// Budgets: who may set them, what is refused, and a spent budget that stops calls (with
/// nothing sent) and column jobs (with their committed rows kept).
#[test]
fn budgets_stop_spending() {
    let (mut c, db) = fresh_db("budgets");
    let s = standin();
    for r in ["budget_owner", "budget_user"] {
        fresh_role(&mut c, r, "");
    }
    c.batch_execute(&format!(
        "GRANT EXECUTE ON FUNCTION ai_deploy_model({DEPLOY_ARGS}) TO budget_owner;
         CREATE TABLE docs (id int PRIMARY KEY, body text, emb real[]);
         INSERT INTO docs SELECT g, 'document number ' || g FROM generate_series(1, 40) g;
         GRANT SELECT, UPDATE ON docs TO budget_user;"
    ))
    .unwrap();
    let mut owner = connect_as(&db, "budget_owner");
    let mut user = connect_as(&db, "budget_user");
    deploy(&mut owner, &s, "own", "qwen-plus", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    let count =
        |c: &mut Client| -> i64 { c.query_one("SELECT count(*) FROM ai_budgets", &[]).unwrap().get(0) };

    // Bad arguments: a clear error, nothing set.
    let bad = [
        ("SELECT ai_set_budget('no_such_role', 'own', 10)", "22023", "role \"no_such_role\" does not exist"),
        ("SELECT ai_set_budget(NULL, 'no_such_model', 10)", "42704", "no_such_model"),
        ("SELECT ai_set_budget(NULL, 'own', 0)", "22023", "limit must be a positive number"),
        ("SELECT ai_set_budget(NULL, 'own', -5)", "22023", "limit must be a positive number"),
        ("SELECT ai_set_budget(NULL, 'own', NULL)", "22004", "limit must not be NULL"),
        (
            "SELECT ai_set_budget(NULL, 'own', 10, 'euro')",
            "22023",
            "unknown unit \"euro\"; allowed: yuan, tokens",
        ),
        (
            "SELECT ai_set_budget(NULL, 'own', 10, 'yuan', 'week')",
            "22023",
            "unknown period \"week\"; allowed: day, month",
        ),
        ("SELECT ai_set_budget(NULL, 'own', 10.5, 'tokens')", "22023", "whole number"),
        ("SELECT ai_set_budget(NULL, 'emb', 10, 'yuan')", "22023", "has no price in ai_prices"),
    ];
    for (sql, code, text) in bad {
        let (got, msg) = error_of(c.batch_execute(sql));
        assert_eq!(got, code, "{sql}: {msg}");
        assert!(msg.contains(text), "{sql}: {msg}");
    }
    assert_eq!(count(&mut c), 0);

    // Who may: a superuser; the deployer on its model, for roles other than itself.
    let refused = [
        (false, "SELECT ai_set_budget('budget_user', 'own', 1000000, 'tokens')", "deployer of model \"own\""),
        (true, "SELECT ai_set_budget('budget_user', NULL, 10)", "only a superuser"),
        (
            true,
            "SELECT ai_set_budget('budget_owner', 'own', 10)",
            "may not change a budget that covers itself",
        ),
        (true, "SELECT ai_set_budget('budget_user', 'emb', 10, 'tokens')", "deployer of model \"emb\""),
    ];
    for (by_owner, sql, text) in refused {
        let session = if by_owner { &mut owner } else { &mut user };
        let (code, msg) = error_of(session.batch_execute(sql));
        assert_eq!(code, "42501", "{sql}: {msg}");
        assert!(msg.contains(text), "{sql}: {msg}");
    }
    assert_eq!(count(&mut c), 0);
    let id: i64 =
        owner.query_one("SELECT ai_set_budget('budget_user', 'own', 60, 'tokens')", &[]).unwrap().get(0);
    assert!(id > 0);
    // The role the budget covers cannot lift it.
    let (code, _) = error_of(user.batch_execute("SELECT ai_drop_budget('budget_user', 'own')"));
    assert_eq!(code, "42501");

    // Spending: calls go until the budget is spent, then the next is refused unsent.
    let mut sent_ok = 0;
    let refusal = loop {
        match user.query_one("SELECT ai_gen('own', 'tell me about budgets')", &[]) {
            Ok(_) => sent_ok += 1,
            Err(e) => break e,
        }
        assert!(sent_ok < 50, "the budget never ran out");
    };
    let db_err = refusal.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "ZBB01");
    let msg = db_err.message();
    assert!(msg.contains("daily budget of role budget_user on model 'own'"), "{msg}");
    assert!(msg.contains("of 60 tokens this day; it resets at"), "{msg}");
    assert!(db_err.hint().unwrap().contains("Nothing was sent"));
    let served = s.usage_of("qwen-plus", &bailian_standin::key_hint(&key("own"))).requests;
    assert_eq!(served, sent_ok, "the refused call sent nothing");
    // Under on_error = 'null': NULL and a WARNING, still nothing sent.
    let (mut quiet, seen) = connect_collecting_as(&db, "budget_user");
    quiet.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
    let v: Option<String> = quiet.query_one("SELECT ai_gen('own', 'again')", &[]).unwrap().get(0);
    assert_eq!(v, None);
    assert!(notices(&seen).contains("budget"), "{}", notices(&seen));
    assert_eq!(s.usage_of("qwen-plus", &bailian_standin::key_hint(&key("own"))).requests, served);
    // Others are not covered by it.
    c.query_one("SELECT ai_gen('own', 'the superuser is not budget_user')", &[]).unwrap();
    let r = c
        .query_one(
            "SELECT spent::float8, remaining::float8, resets_at > now() FROM ai_budgets WHERE budget_id = $1",
            &[&id],
        )
        .unwrap();
    let (spent, remaining): (f64, f64) = (r.get(0), r.get(1));
    assert!(spent >= 60.0, "{spent}");
    assert_eq!(remaining, 0.0);
    assert!(r.get::<_, bool>(2));
    // A drop that rolls back leaves the budget with what it spent.
    c.batch_execute("BEGIN; SELECT ai_drop_budget('budget_user', 'own'); ROLLBACK").unwrap();
    let again: f64 =
        c.query_one("SELECT spent::float8 FROM ai_budgets WHERE budget_id = $1", &[&id]).unwrap().get(0);
    assert_eq!(again, spent);

    // A column job stops cleanly at a spent budget, its committed rows kept. One request in
    // flight at a time: a job sends the next chunk's first requests while it writes the
    // current one, so with more in flight all 40 rows' requests would be out before the
    // first answer spent the budget (an overshoot by what is in flight, as documented).
    c.batch_execute("SELECT ai_set_budget('budget_user', 'emb', 120, 'tokens')").unwrap();
    user.batch_execute("SET pg_bailian.max_concurrency = 1").unwrap();
    let (code, msg) =
        error_of(user.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 10)"));
    assert_eq!(code, "ZBB01", "{msg}");
    assert!(
        msg.contains("ai_embed_column stopped") && msg.contains("rows filled so far are committed"),
        "{msg}"
    );
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert!(filled > 0 && filled < 40, "{filled} rows filled");
    assert!(c.query_one("SELECT ai_drop_budget('budget_user', 'emb')", &[]).unwrap().get::<_, bool>(0));
    user.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb', batch_size => 10)").unwrap();
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, 40);
}
