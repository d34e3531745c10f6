// In-database tests of the model catalog, run by `cargo pgrx test` inside a real PostgreSQL
// (see README). Included into `mod tests` of src/lib.rs; each test runs in a transaction
// that is rolled back afterwards.

use pgrx::prelude::*;

const SECRET: &str = "sk-pgtest-secret-7f3a9c";
const OTHER_SECRET: &str = "sk-pgtest-other-51d0e2";

/// Creates `pg_temp.try_sql(q)`: runs q, returns 'OK' or 'SQLSTATE message'.
fn install_try_sql() {
    Spi::run(
        "CREATE FUNCTION pg_temp.try_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN EXECUTE q; RETURN 'OK';
         EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ' ' || SQLERRM; END $$",
    )
    .unwrap();
}

fn try_sql(sql: &str) -> String {
    Spi::get_one_with_args::<String>("SELECT pg_temp.try_sql($1)", &[sql.into()]).unwrap().unwrap()
}

/// Both catalog tables, as one comparable text.
fn catalog_snapshot() -> String {
    Spi::get_one::<String>(
        "SELECT coalesce((SELECT jsonb_agg(m ORDER BY model_name)::text FROM bailian.models m), '[]')
             || coalesce((SELECT jsonb_agg(k ORDER BY model_name)::text FROM bailian.model_keys k), '[]')",
    )
    .unwrap()
    .unwrap()
}

fn deploy_sql(name: &str, model_type: &str, key: &str, rest: &str) -> String {
    format!("SELECT ai_deploy_model('{name}', '{model_type}', '{key}'{rest})")
}

#[pg_test]
fn supported_models_lists_the_registry() {
    let n = Spi::get_one::<i64>("SELECT count(*) FROM ai_supported_models()").unwrap().unwrap();
    assert_eq!(n, 66);
    let by_task = Spi::get_one::<String>(
        "SELECT string_agg(provider || '/' || task || '=' || n, ',' ORDER BY provider, task)
           FROM (SELECT provider, task, count(*) n FROM ai_supported_models() GROUP BY 1, 2) t",
    )
    .unwrap()
    .unwrap();
    assert_eq!(by_task, "bailian/chat=42,bailian/embedding=8,bailian/rerank=2,bailian/translation=4,opensearch/chat=10");
    let (dims, default, max_inputs) = Spi::get_three::<Vec<i32>, i32, i32>(
        "SELECT dimensions, default_dimension, max_inputs_per_request
           FROM ai_supported_models() WHERE model_type = 'text-embedding-v4'",
    )
    .unwrap();
    assert_eq!(dims.unwrap(), vec![2048, 1536, 1024, 768, 512, 256, 128, 64]);
    assert_eq!(default, Some(1024));
    assert_eq!(max_inputs, Some(10));
    let omni = Spi::get_one::<Vec<String>>(
        "SELECT params FROM ai_supported_models() WHERE model_type = 'qwen3-omni-flash'",
    )
    .unwrap()
    .unwrap();
    assert!(omni.contains(&"modalities".to_string()) && omni.contains(&"audio".to_string()));
    let vision_call = Spi::get_one::<Vec<String>>(
        "SELECT call_params FROM ai_supported_models() WHERE model_type = 'qwen3-vl-plus'",
    )
    .unwrap()
    .unwrap();
    assert_eq!(vision_call, vec!["stream", "images", "timeout", "max_retries"]);
}

#[pg_test]
fn deploy_replace_undeploy() {
    install_try_sql();
    Spi::run(&deploy_sql(
        "chat",
        "qwen-plus",
        SECRET,
        ", params => '{\"temperature\": 0.2, \"system\": \"Be brief.\"}', max_retries => 5, region => 'singapore'",
    ))
    .unwrap();
    let row = Spi::get_one::<String>(
        "SELECT concat_ws('|', model_type, task, key_hint, params::text, max_retries, initial_retry_delay,
                          max_retry_delay, timeout, region, coalesce(base_url, '-'), endpoint, deployed_by)
           FROM ai_models WHERE model_name = 'chat'",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        row,
        "qwen-plus|chat|sk-...3a9c|{\"system\": \"Be brief.\", \"temperature\": 0.2}|5|0.5|8|600|singapore|-|\
         https://dashscope-intl.aliyuncs.com/compatible-mode/v1|postgres"
    );

    // Same name again: refused, nothing changes.
    let before = catalog_snapshot();
    let r = try_sql(&deploy_sql("chat", "qwen-max", OTHER_SECRET, ""));
    assert_eq!(r, "42710 model \"chat\" is already deployed");
    assert_eq!(catalog_snapshot(), before);

    // replace => true: every field follows the new call, the key included.
    Spi::run(&deploy_sql(
        "chat",
        "qwen-max",
        OTHER_SECRET,
        ", base_url => 'http://127.0.0.1:9/compatible-mode/v1/', replace => true, timeout => 30",
    ))
    .unwrap();
    let (model_type, endpoint, timeout) = Spi::get_three::<String, String, f64>(
        "SELECT model_type, endpoint, timeout FROM ai_models WHERE model_name = 'chat'",
    )
    .unwrap();
    assert_eq!(model_type.as_deref(), Some("qwen-max"));
    assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:9/compatible-mode/v1"));
    assert_eq!(timeout, Some(30.0));
    // Stored sealed with the master key, bound to the model name; never in plain text.
    let key = Spi::get_one::<String>("SELECT api_key FROM bailian.model_keys WHERE model_name = 'chat'")
        .unwrap()
        .unwrap();
    assert!(key.starts_with("sealed:v1:"), "{key}");
    assert!(!key.contains(&OTHER_SECRET[3..]) && !key.contains(&SECRET[3..]), "{key}");
    assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM ai_models").unwrap(), Some(1));

    // replace => true of a new name simply deploys it; env: keys store only the name.
    Spi::run(&deploy_sql("emb", "text-embedding-v4", "env:PG_BAILIAN_NOT_SET_ANYWHERE", ", replace => true"))
        .unwrap();
    assert_eq!(
        Spi::get_one::<String>("SELECT key_hint FROM ai_models WHERE model_name = 'emb'").unwrap().as_deref(),
        Some("env:PG_BAILIAN_NOT_SET_ANYWHERE")
    );

    assert_eq!(Spi::get_one::<bool>("SELECT ai_undeploy_model('chat')").unwrap(), Some(true));
    assert_eq!(Spi::get_one::<bool>("SELECT ai_undeploy_model('chat')").unwrap(), Some(false));
    assert_eq!(
        Spi::get_one::<i64>("SELECT count(*) FROM bailian.model_keys WHERE model_name = 'chat'").unwrap(),
        Some(0)
    );
    assert_eq!(try_sql("SELECT ai_undeploy_model(NULL)"), "22023 model_name must not be NULL");
}

#[pg_test]
fn translation_params_in_the_seed_shape() {
    Spi::run(&deploy_sql(
        "mt",
        "qwen-mt-plus",
        SECRET,
        ", params => '{\"extra_body\": {\"translation_options\": {\"source_lang\": \"zh\", \
           \"domains\": \"The sentence is from Ali Cloud IT domain.\", \
           \"terms\": [{\"source\": \"生物特徵辨識感應器\", \"target\": \"biological sensor\"}], \
           \"tm_list\": [{\"source\": \"bla\", \"target\": \"bla\"}]}}}'",
    ))
    .unwrap();
    let params = Spi::get_one::<String>("SELECT params::text FROM ai_models WHERE model_name = 'mt'")
        .unwrap()
        .unwrap();
    assert!(params.starts_with("{\"terms\""), "{params}");
    assert!(!params.contains("extra_body"), "stored flat: {params}");
}

/// Every bad deployment: its SQLSTATE, the start of its message, and an unchanged catalog.
#[pg_test]
fn bad_deployments_are_rejected_and_change_nothing() {
    install_try_sql();
    Spi::run(&deploy_sql("taken", "qwen-plus", SECRET, "")).unwrap();
    let before = catalog_snapshot();
    let k = SECRET;
    let cases: Vec<(String, &str)> = vec![
        (deploy_sql("m", "gpt-4", k, ""), "22023 unsupported model_type \"gpt-4\""),
        (deploy_sql("m", "QWEN-PLUS", k, ""), "22023 unsupported model_type \"QWEN-PLUS\""),
        (format!("SELECT ai_deploy_model('m', NULL, '{k}')"), "22023 model_type must not be NULL"),
        (deploy_sql("", "qwen-plus", k, ""), "22023 model_name must not be empty"),
        (format!("SELECT ai_deploy_model(NULL, 'qwen-plus', '{k}')"), "22023 model_name must not be NULL"),
        (deploy_sql("a\nb", "qwen-plus", k, ""), "22023 model_name must not contain control characters"),
        (deploy_sql("m", "qwen-plus", "abc", ""), "22023 api_key must be a Bailian API key 'sk-...'"),
        (deploy_sql("m", "qwen-plus", "sk-short", ""), "22023 api_key must be a Bailian API key 'sk-...'"),
        (deploy_sql("m", "qwen-plus", "env:1BAD", ""), "22023 invalid environment variable name in api_key"),
        ("SELECT ai_deploy_model('m', 'qwen-plus', NULL)".into(), "22023 api_key must not be NULL"),
        (deploy_sql("m", "qwen-plus", k, ", params => '[1, 2]'"), "22023 params must be a JSON object, got an array"),
        (
            deploy_sql("m", "qwen-plus", k, ", params => '{\"temperature\": 2}'"),
            "22023 invalid value for parameter \"temperature\": 2; allowed: a number in [0, 2)",
        ),
        (deploy_sql("m", "qwen-plus", k, ", params => '{\"temperature\": -0.5}'"), "22023 invalid value for parameter \"temperature\""),
        (
            deploy_sql("m", "qwen-plus", k, ", params => '{\"top_p\": 0}'"),
            "22023 invalid value for parameter \"top_p\": 0; allowed: a number in (0, 1]",
        ),
        (deploy_sql("m", "qwen-plus", k, ", params => '{\"top_p\": 1.5}'"), "22023 invalid value for parameter \"top_p\": 1.5"),
        (
            deploy_sql("m", "qwen-plus", k, ", params => '{\"max_tokens\": 0}'"),
            "22023 invalid value for parameter \"max_tokens\": 0; allowed: a positive integer",
        ),
        (deploy_sql("m", "qwen-plus", k, ", params => '{\"max_tokens\": 1.5}'"), "22023 invalid value for parameter \"max_tokens\": 1.5"),
        (
            deploy_sql("m", "qwen-plus", k, ", params => '{\"foo\": 1}'"),
            "22023 unknown parameter \"foo\" for chat model qwen-plus; allowed: temperature, top_p, top_k, max_tokens",
        ),
        (
            deploy_sql("m", "text-embedding-v4", k, ", params => '{\"temperature\": 0.5}'"),
            "22023 parameter \"temperature\" does not apply to embedding model text-embedding-v4; allowed: dimension",
        ),
        (
            deploy_sql("m", "qwen-plus", k, ", params => '{\"source_lang\": \"zh\"}'"),
            "22023 parameter \"source_lang\" does not apply to chat model qwen-plus",
        ),
        (
            deploy_sql("m", "text-embedding-v3", k, ", params => '{\"dimension\": 2048}'"),
            "22023 invalid value for parameter \"dimension\": 2048; allowed: one of 1024 (default), 768, 512, 256, 128, 64",
        ),
        (deploy_sql("m", "text-embedding-v4", k, ", params => '{\"dimension\": \"1024\"}'"), "22023 invalid value for parameter \"dimension\": \"1024\""),
        (deploy_sql("m", "qwen3-omni-flash", k, ", params => '{\"audio\": {\"voice\": \"Cherry\", \"format\": \"mp3\"}}'"), "22023 invalid value for parameter \"audio\""),
        (deploy_sql("m", "qwen-plus", k, ", params => '{\"modalities\": [\"text\"]}'"), "22023 parameter \"modalities\" does not apply to chat model qwen-plus"),
        (deploy_sql("m", "qwen-mt-plus", k, ", params => '{\"extra_body\": {\"options\": {}}}'"), "22023 invalid value for parameter \"extra_body\""),
        (deploy_sql("m", "qwen-mt-plus", k, ", params => '{\"target_lang\": \"en\"}'"), "22023 parameter \"target_lang\" is not a model parameter"),
        (deploy_sql("m", "qwen3-vl-plus", k, ", params => '{\"images\": [\"https://x.y/z.png\"]}'"), "22023 parameter \"images\" is not allowed in deployed params"),
        (deploy_sql("m", "qwen-plus", k, ", max_retries => 101"), "22023 max_retries must be between 0 and 100, got 101"),
        (deploy_sql("m", "qwen-plus", k, ", max_retries => -1"), "22023 max_retries must be between 0 and 100, got -1"),
        (deploy_sql("m", "qwen-plus", k, ", initial_retry_delay => 0.1"), "22023 initial_retry_delay must be between 0.5 and 8 seconds, got 0.1"),
        (deploy_sql("m", "qwen-plus", k, ", initial_retry_delay => 9"), "22023 initial_retry_delay must be between 0.5 and 8 seconds, got 9"),
        (deploy_sql("m", "qwen-plus", k, ", max_retry_delay => 0.5"), "22023 max_retry_delay must be between 1 and 60 seconds, got 0.5"),
        (deploy_sql("m", "qwen-plus", k, ", max_retry_delay => 61"), "22023 max_retry_delay must be between 1 and 60 seconds, got 61"),
        (deploy_sql("m", "qwen-plus", k, ", timeout => 0"), "22023 timeout must be between 1 and 1200 seconds, got 0"),
        (deploy_sql("m", "qwen-plus", k, ", timeout => 1201"), "22023 timeout must be between 1 and 1200 seconds, got 1201"),
        (deploy_sql("m", "qwen-plus", k, ", timeout => 'NaN'"), "22023 timeout must be between 1 and 1200 seconds, got NaN"),
        (
            deploy_sql("m", "qwen-plus", k, ", initial_retry_delay => 8, max_retry_delay => 2"),
            "22023 initial_retry_delay (8 seconds) must not exceed max_retry_delay (2 seconds)",
        ),
        (deploy_sql("m", "qwen-plus", k, ", region => 'hangzhou'"), "22023 invalid region \"hangzhou\"; allowed: beijing, singapore, virginia"),
        (deploy_sql("m", "qwen-plus", k, ", base_url => 'ftp://example.com/v1'"), "22023 invalid base_url \"ftp://example.com/v1\": the scheme must be http or https"),
        (deploy_sql("m", "qwen-plus", k, ", base_url => 'not a url'"), "22023 invalid base_url \"not a url\""),
        (deploy_sql("m", "qwen-plus", k, ", base_url => 'https://user:pw@example.com/v1'"), "22023 invalid base_url"),
        (deploy_sql("m", "qwen-plus", k, ", requests_per_minute => -1"), "22023 requests_per_minute must be between 0 and 100000000, got -1"),
        (deploy_sql("m", "qwen-plus", k, ", replace => NULL"), "22023 replace must not be NULL"),
        (deploy_sql("taken", "qwen-max", OTHER_SECRET, ""), "42710 model \"taken\" is already deployed"),
    ];
    assert!(cases.len() >= 25);
    for (sql, expected) in &cases {
        let got = try_sql(sql);
        assert!(got.starts_with(expected), "\n  sql: {sql}\n  expected: {expected}\n  got: {got}");
        for secret in [&SECRET[3..], &OTHER_SECRET[3..], "pw@"] {
            assert!(!got.contains(secret), "error repeats a secret: {got}");
        }
        assert_eq!(catalog_snapshot(), before, "catalog changed by: {sql}");
    }
}

/// A role with no grants can use models but reach no key: not through any relation of the
/// extension, any function it may execute, nor an error message.
#[pg_test]
fn a_role_without_grants_cannot_reach_a_key() {
    install_try_sql();
    Spi::run(&deploy_sql("chat", "qwen-plus", SECRET, ", base_url => 'http://127.0.0.1:9/v1', max_retries => 0")).unwrap();
    Spi::run(&deploy_sql("emb", "text-embedding-v4", OTHER_SECRET, "")).unwrap();
    Spi::run("CREATE ROLE bailian_test_user NOLOGIN").unwrap();

    // What the extension lets PUBLIC execute: the AI functions, the text functions, the
    // column procedures (which run with the caller's rights), the sync functions (which check
    // the caller's rights and ownership themselves), Hologres' forms (model-less
    // calls, prompt(), list_external_models()), bailian.default_prompts() and
    // bailian.default_model_choices() (the ai_prompts and ai_default_models views call them
    // with the caller's rights), ai_citus_check() (which asks the nodes as the caller) and the
    // per-node part of a column job, bailian.refuse_on_worker(text) (ai_prices' trigger, run
    // by whoever writes ai_prices: it only raises an error), bailian.worker_rows(text) (ai_usage and
    // ai_activity call it: it asks the Citus workers as the caller), ai_update_release_share (a column job's node tells
    // the job's other nodes it finished, as the job's role: it can raise only the rate of a job whose
    // random id is known; filling its table with made-up ids only stops rebalancing, the safe way),
    // ai_update_rows_to_fill (a count a column job's coordinator asks each node for, run with the caller's rights); never deploy/undeploy, ai_set_prompt, ai_set_default_model,
    // register/delete_external_model, and no other internal helper.
    let executable = Spi::get_one::<String>(
        "SELECT string_agg(p.oid::regprocedure::text, ', ' ORDER BY p.oid::regprocedure::text)
           FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
          WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_bailian')
            AND d.classid = 'pg_proc'::regclass AND p.pronamespace <> 'tests'::regnamespace
            AND has_function_privilege('bailian_test_user', p.oid, 'EXECUTE')",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        executable,
        "ai_batch_cancel(bigint), ai_chat(text,jsonb,jsonb), ai_chunk(text,integer,integer), ai_citus_check(), \
         ai_classify(text,text,text[]), \
         ai_classify(text,text[]), ai_count_tokens(text,text), ai_drop_budget(name,text), \
         ai_embed(text), ai_embed(text,bytea,text), ai_embed(text,text), \
         ai_embed_batch(text,text[]), ai_embed_column(regclass,name,name,text,integer,text), \
         ai_embed_image(text,bytea), ai_embed_image(text,text), ai_estimate(text), \
         ai_extract(text,text,text[]), ai_extract(text,text[]), ai_fix_grammar(text), \
         ai_fix_grammar(text,text), ai_gen(jsonb), ai_gen(text), ai_gen(text,jsonb,jsonb), \
         ai_gen(text,text,jsonb), ai_gen_audio(text,text,jsonb), ai_gen_batch(text,text[],jsonb), \
         ai_gen_column(regclass,name,name,text,text,integer,jsonb,text), \
         ai_gen_structured(text,text,jsonb,text,jsonb), ai_mask(text,text,text[]), \
         ai_mask(text,text[]), ai_prompt(text,text[]), ai_rank(text,text), \
         ai_rank(text,text,text), ai_sentiment(text), ai_sentiment(text,text), \
         ai_set_budget(name,text,numeric,text,text), ai_similarity(text,text), \
         ai_similarity(text,text,text), ai_summarize(text), ai_summarize(text,text,integer), \
         ai_supported_models(), ai_sync_chunks(text,regclass,text,name,text,integer,integer), \
         ai_sync_create(text,regclass,name,text,text,boolean), ai_sync_drop(text), ai_sync_pause(text), \
         ai_sync_resume(text), ai_sync_run(text), ai_translate(text,text), ai_translate(text,text,text,jsonb), \
         ai_update(regclass,name,text,integer,text,text), \
         ai_update_local_shards(regclass,name,text,integer,text,text,double precision,text,bigint[],bigint,text[],text), \
         ai_update_release_share(bigint,double precision), ai_update_rows_to_fill(regclass,name,text,text), bailian.activity_rows(), \
         bailian.budget_spent(), bailian.cache_rows(), bailian.default_model_choices(), bailian.default_prompts(), \
         bailian.rate_limit_rows(), bailian.refuse_on_worker(text), bailian.scope(), bailian.usage_rows(), \
         bailian.worker_rows(text), list_external_models(), \
         prompt(text,text[])"
    );

    // Every relation of the extension: either the role cannot read it, or nothing it can
    // read holds a key.
    let relations = Spi::connect(|c| {
        c.select(
            "SELECT c.oid::regclass::text, has_table_privilege('bailian_test_user', c.oid, 'SELECT')
               FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
              WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_bailian')
                AND d.classid = 'pg_class'::regclass AND c.relkind IN ('r', 'v', 'm', 'p')
              ORDER BY 1",
            None,
            &[],
        )
        .unwrap()
        .map(|r| (r.get::<String>(1).unwrap().unwrap(), r.get::<bool>(2).unwrap().unwrap()))
        .collect::<Vec<_>>()
    });
    assert_eq!(
        relations,
        vec![
            ("ai_activity".to_string(), true),
            ("ai_batches".to_string(), true),
            ("ai_budgets".to_string(), true),
            ("ai_cache".to_string(), true),
            ("ai_default_models".to_string(), true),
            ("ai_models".to_string(), true),
            ("ai_prices".to_string(), true),
            ("ai_prompts".to_string(), true),
            ("ai_rate_limits".to_string(), true),
            ("ai_sync_errors".to_string(), true),
            ("ai_sync_queue".to_string(), true),
            ("ai_syncs".to_string(), true),
            ("ai_usage".to_string(), true),
            ("bailian.answer_cache".to_string(), false),
            ("bailian.batch_answers".to_string(), false),
            ("bailian.batch_jobs".to_string(), false),
            ("bailian.batches".to_string(), false),
            ("bailian.budgets".to_string(), false),
            ("bailian.default_models".to_string(), false),
            ("bailian.effective_prices".to_string(), false),
            ("bailian.model_keys".to_string(), false),
            ("bailian.models".to_string(), false),
            ("bailian.prices".to_string(), false),
            ("bailian.prompts".to_string(), false),
            ("bailian.seed_prices".to_string(), false),
            ("bailian.sync_errors".to_string(), false),
            ("bailian.sync_state".to_string(), false),
            ("bailian.syncs".to_string(), false)
        ]
    );

    Spi::run("SET LOCAL ROLE bailian_test_user").unwrap();
    let leaks = |text: &str| text.contains(&SECRET[3..]) || text.contains(&OTHER_SECRET[3..]);
    for (rel, readable) in &relations {
        let r = try_sql(&format!("SELECT count(*) FROM {rel}"));
        if *readable {
            assert_eq!(r, "OK", "{rel}");
            let all = Spi::get_one::<String>(&format!("SELECT coalesce(string_agg(t::text, ''), '') FROM {rel} t"))
                .unwrap()
                .unwrap();
            assert!(!leaks(&all), "{rel} shows a key: {all}");
            if rel == "ai_models" {
                assert!(all.contains("sk-...3a9c"), "the hint is shown: {all}");
            }
        } else {
            assert!(r.starts_with("42501 permission denied"), "{rel}: {r}");
        }
    }
    assert!(try_sql("SELECT * FROM ai_supported_models()") == "OK");
    let deploy = try_sql(&deploy_sql("mine", "qwen-plus", SECRET, ""));
    assert_eq!(deploy, "42501 permission denied for function ai_deploy_model");
    assert_eq!(try_sql("SELECT ai_undeploy_model('chat')"), "42501 permission denied for function ai_undeploy_model");
    // The task prompts: every default readable, none replaceable.
    assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM ai_prompts WHERE is_default").unwrap(), Some(7));
    assert_eq!(
        try_sql("SELECT ai_set_prompt('chat', 'ai_classify', 'Pick one of {labels}. Answer in JSON.')"),
        "42501 permission denied for function ai_set_prompt"
    );

    // The role can use a model; a failing call tells what failed and never the key.
    let failed = try_sql("SELECT ai_gen('chat', 'hello')");
    assert!(failed.starts_with("ZBC01 could not reach http://127.0.0.1:9/v1"), "{failed}");
    assert!(!leaks(&failed), "{failed}");
    let wrong = try_sql("SELECT ai_embed('chat', 'x')");
    assert!(wrong.starts_with("42809 ai_embed cannot use model \"chat\""), "{wrong}");
    assert!(!leaks(&wrong));
    // The role identity is back after the catalog read.
    assert_eq!(Spi::get_one::<String>("SELECT current_user::text").unwrap().as_deref(), Some("bailian_test_user"));
    Spi::run("RESET ROLE").unwrap();
}

/// The superuser-only settings: their defaults are what bailian-core documents, and a role
/// cannot change them.
#[pg_test]
fn security_settings_are_superuser_only_with_documented_defaults() {
    install_try_sql();
    let show = |name: &str| Spi::get_one::<String>(&format!("SHOW {name}")).unwrap().unwrap();
    assert_eq!(show("pg_bailian.allowed_env_keys"), bailian_core::policy::DEFAULT_ENV_KEYS);
    assert_eq!(show("pg_bailian.allowed_hosts"), bailian_core::policy::DEFAULT_HOSTS);
    assert_eq!(show("pg_bailian.key_directory"), "");
    assert_eq!(show("pg_bailian.max_response_size"), "64MB");
    assert_eq!(show("pg_bailian.max_batch_memory"), "256MB");
    let context = Spi::get_one::<String>(
        "SELECT string_agg(name || '=' || context, ',' ORDER BY name) FROM pg_settings
          WHERE name IN ('pg_bailian.allowed_env_keys', 'pg_bailian.allowed_hosts',
                         'pg_bailian.key_directory', 'pg_bailian.master_key_file',
                         'pg_bailian.max_batch_memory')",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        context,
        "pg_bailian.allowed_env_keys=superuser,pg_bailian.allowed_hosts=superuser,\
         pg_bailian.key_directory=superuser,pg_bailian.master_key_file=sighup,\
         pg_bailian.max_batch_memory=superuser"
    );
    Spi::run("CREATE ROLE bailian_settings_user NOLOGIN").unwrap();
    Spi::run("SET LOCAL ROLE bailian_settings_user").unwrap();
    for (name, value) in
        [("allowed_env_keys", "*"), ("allowed_hosts", "*"), ("key_directory", "/"), ("max_batch_memory", "4GB")]
    {
        let r = try_sql(&format!("SET pg_bailian.{name} = '{value}'"));
        assert!(r.starts_with("42501 permission denied to set parameter"), "{name}: {r}");
    }
    Spi::run("RESET ROLE").unwrap();
}

/// Deploying delegated to roles: each manages only its own models (and its members'), env:
/// keys only of allowed names, base_url only to allowed hosts; per-call settings only lower.
#[pg_test]
fn delegated_deployment_grants_exactly_what_it_says() {
    install_try_sql();
    Spi::run(
        "CREATE ROLE alice NOLOGIN; CREATE ROLE bob NOLOGIN; CREATE ROLE carol NOLOGIN IN ROLE alice;
         GRANT EXECUTE ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean),
                                   ai_undeploy_model(text) TO alice, bob, carol",
    )
    .unwrap();
    let as_role = |role: &str, sql: &str| {
        Spi::run(&format!("SET LOCAL ROLE {role}")).unwrap();
        let r = try_sql(sql);
        Spi::run("RESET ROLE").unwrap();
        r
    };
    assert_eq!(as_role("alice", &deploy_sql("shared", "qwen-plus", SECRET, "")), "OK");
    assert_eq!(
        Spi::get_one::<String>("SELECT deployed_by::text FROM ai_models WHERE model_name = 'shared'").unwrap().as_deref(),
        Some("alice")
    );
    let before = catalog_snapshot();
    // Another role can neither replace nor undeploy it.
    let r = as_role("bob", &deploy_sql("shared", "qwen-max", OTHER_SECRET, ", replace => true"));
    assert_eq!(
        r,
        "42501 model \"shared\" was deployed by role \"alice\"; only that role, its members or a superuser may replace it"
    );
    let r = as_role("bob", "SELECT ai_undeploy_model('shared')");
    assert!(r.starts_with("42501 model \"shared\" was deployed by role \"alice\""), "{r}");
    assert!(!r.contains(&SECRET[3..]) && !r.contains(&OTHER_SECRET[3..]));
    assert_eq!(catalog_snapshot(), before, "refused calls change nothing");
    // A member of the deploying role can; so can a superuser.
    assert_eq!(as_role("carol", &deploy_sql("shared", "qwen-max", SECRET, ", replace => true")), "OK");
    assert_eq!(Spi::get_one::<bool>("SELECT ai_undeploy_model('shared')").unwrap(), Some(true));

    // Keys and hosts a non-superuser may not use.
    let cases = [
        (deploy_sql("m", "qwen-plus", "env:HOME", ""), "42501 environment variable HOME is not allowed as an API key"),
        (deploy_sql("m", "qwen-plus", "env:PGPASSWORD", ""), "42501 environment variable PGPASSWORD is not allowed"),
        (deploy_sql("m", "qwen-plus", "file:/etc/passwd", ""), "42501 key file /etc/passwd is not allowed: pg_bailian.key_directory is not set"),
        (
            deploy_sql("m", "qwen-plus", SECRET, ", base_url => 'https://collector.example.com/v1'"),
            "42501 base_url https://collector.example.com:443 is not allowed by pg_bailian.allowed_hosts",
        ),
        (deploy_sql("m", "qwen-plus", SECRET, ", base_url => 'http://127.0.0.1:9/v1'"), "42501 base_url http://127.0.0.1:9 is not allowed"),
        // Listed hosts are reached over https only, unless listed as http://host.
        (
            deploy_sql("m", "qwen-plus", SECRET, ", base_url => 'http://dashscope.aliyuncs.com/compatible-mode/v1'"),
            "42501 base_url http://dashscope.aliyuncs.com:80 is not allowed",
        ),
    ];
    let before = catalog_snapshot();
    for (sql, expected) in &cases {
        let r = as_role("bob", sql);
        assert!(r.starts_with(expected), "\n  sql: {sql}\n  expected: {expected}\n  got: {r}");
        assert_eq!(catalog_snapshot(), before, "{sql}");
    }
    // env: names are checked for superusers too; base_url hosts are not.
    assert!(try_sql(&deploy_sql("m", "qwen-plus", "env:HOME", "")).starts_with("42501"));
    assert_eq!(try_sql(&deploy_sql("m", "qwen-plus", SECRET, ", base_url => 'http://127.0.0.1:9/v1'")), "OK");
    assert_eq!(as_role("bob", &deploy_sql("allowed", "qwen-plus", "env:PG_BAILIAN_SOMETHING", "")), "OK");
    assert_eq!(as_role("bob", &deploy_sql("regional", "qwen-plus", SECRET, ", region => 'singapore'")), "OK");

    // Per call, timeout and max_retries may only go down (checked before anything is sent).
    Spi::run(&deploy_sql("limited", "qwen-plus", SECRET, ", timeout => 30, max_retries => 1, base_url => 'http://127.0.0.1:9/v1'"))
        .unwrap();
    assert_eq!(
        try_sql("SELECT ai_gen('limited', 'x', '{\"timeout\": 1200}')"),
        "22023 per-call timeout 1200 s is above the timeout model \"limited\" is deployed with (30 s); a call may lower it, not raise it"
    );
    assert!(try_sql("SELECT ai_gen('limited', 'x', '{\"max_retries\": 100}')").starts_with("22023 per-call max_retries 100 is above"));
    let lowered = try_sql("SELECT ai_gen('limited', 'x', '{\"timeout\": 2, \"max_retries\": 0}')");
    assert!(lowered.starts_with("ZBC01 could not reach http://127.0.0.1:9/v1 for model \"limited\" (1 attempt)"), "{lowered}");
}
