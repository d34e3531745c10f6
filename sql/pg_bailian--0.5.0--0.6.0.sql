-- pg_bailian 0.5.0 -> 0.6.0, run by ALTER EXTENSION pg_bailian UPDATE.
-- Never edit this file once 0.6.0 is released: a later change to the SQL surface goes into
-- the next version's update script (see DEVELOPERS.md). tests/upgrade.rs checks that a
-- database updated through every script equals a fresh CREATE EXTENSION of the current version.

\echo Use "ALTER EXTENSION pg_bailian UPDATE" to load this file. \quit

-- Issue 22: paying less. ai_usage counts calls answered without a request of their own.
DROP VIEW ai_usage;
DROP FUNCTION bailian.usage_rows();
CREATE FUNCTION bailian.usage_rows()
RETURNS TABLE (scope text, database_id bigint, role_id bigint, model_name text, model_type text, function_name text,
               calls bigint, requests bigint, inputs bigint, failures bigint, retries bigint, throttled bigint,
               prompt_tokens bigint, completion_tokens bigint, cached_tokens bigint, reasoning_tokens bigint,
               cost_yuan text, latency_p50_ms float8, latency_p95_ms float8, latency_max_ms float8,
               first_used_us bigint, last_used_us bigint, shared_calls bigint, cache_hits bigint, saved_yuan text)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_usage_rows';
COMMENT ON FUNCTION bailian.usage_rows() IS 'Every row of the usage counters; read through ai_usage.';

CREATE VIEW ai_usage AS
SELECT d.datname AS database, r.rolname AS role, u.model_name, u.model_type, u.function_name,
       u.calls, u.requests, u.inputs, u.failures, u.retries, u.throttled AS rate_limited,
       u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens,
       u.cost_yuan::numeric AS cost_yuan,
       u.shared_calls, u.cache_hits, u.saved_yuan::numeric AS saved_yuan,
       u.latency_p50_ms, u.latency_p95_ms, u.latency_max_ms,
       pg_catalog.to_timestamp(u.first_used_us OPERATOR(pg_catalog./) 1e6::float8) AS first_used,
       pg_catalog.to_timestamp(u.last_used_us OPERATOR(pg_catalog./) 1e6::float8) AS last_used,
       u.scope
  FROM bailian.usage_rows() u
  LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) u.database_id::oid
  LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) u.role_id::oid;
COMMENT ON VIEW ai_usage IS 'AI calls per database, role, model and function since the counters were last reset: calls (requests as asked, before retries), requests (sent, retries included), inputs, failures, retries, rate_limited (429s), tokens as the provider reported them, cost in yuan at ai_prices (NULL when the model has no price), calls answered without a request of their own (shared_calls: by an identical call of the same statement or job; cache_hits: from the answer cache) and what they would have cost (saved_yuan), latency percentiles (p50/p95 are the upper bound of a class of latencies, within 41%; max is exact), first and last use. scope: cluster (shared_preload_libraries) or backend (this session alone). A role sees its own rows; members of pg_read_all_stats see all (and the overflow row, database and role NULL, function ''(other)'', where counts go once pg_bailian.max_usage_entries rows are taken). Counters survive a clean restart (pg_bailian.save_usage).';

GRANT SELECT ON ai_usage TO PUBLIC;
GRANT EXECUTE ON FUNCTION bailian.usage_rows() TO PUBLIC;

-- The answer cache (sql/cache.sql, src/answers/) and Batch Chat: ai_deploy_model(...,
-- cache => true, batch_chat => true).
ALTER TABLE bailian.models ADD COLUMN cache boolean NOT NULL DEFAULT false;
ALTER TABLE bailian.models ADD COLUMN batch_chat boolean NOT NULL DEFAULT false;
ALTER TABLE bailian.models DROP CONSTRAINT models_timeout_check,
    ADD CONSTRAINT models_timeout_check CHECK (timeout BETWEEN 1 AND 3600);

CREATE OR REPLACE VIEW ai_models AS
SELECT model_name, model_type, task, key_hint, params,
       max_retries, initial_retry_delay, max_retry_delay, timeout,
       region, base_url, endpoint, requests_per_minute, tokens_per_minute,
       deployed_by, deployed_at, provider, workspace, cache, batch_chat
  FROM bailian.models;

-- ai_deploy_model gains two arguments: the function is made anew, and the roles it was
-- delegated to (GRANT EXECUTE) keep it.
DO $deploy$
DECLARE
    grantees text[];
    grantee text;
BEGIN
    SELECT pg_catalog.array_agg(DISTINCT a.grantee::pg_catalog.regrole::pg_catalog.text)
      INTO grantees
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid OPERATOR(pg_catalog.=) 'ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text)'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
       AND a.grantee OPERATOR(pg_catalog.<>) 0;
    DROP FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text);
    EXECUTE $create$
CREATE FUNCTION ai_deploy_model(
    model_name          text,
    model_type          text,
    api_key             text,
    params              jsonb   DEFAULT '{}',
    max_retries         int     DEFAULT 2,
    initial_retry_delay float8  DEFAULT 0.5,
    max_retry_delay     float8  DEFAULT 8,
    timeout             float8  DEFAULT 600,
    region              text    DEFAULT 'beijing',
    base_url            text    DEFAULT NULL,
    replace             boolean DEFAULT false,
    requests_per_minute int     DEFAULT NULL,
    tokens_per_minute   int     DEFAULT NULL,
    provider            text    DEFAULT 'bailian',
    workspace           text    DEFAULT NULL,
    cache               boolean DEFAULT false,
    batch_chat          boolean DEFAULT false
) RETURNS void
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_deploy_model';
$create$;
    REVOKE EXECUTE ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean) FROM PUBLIC;
    FOREACH grantee IN ARRAY COALESCE(grantees, '{}') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean) TO %s', grantee);
    END LOOP;
END
$deploy$;
COMMENT ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean) IS
  'Deploy a model under model_name: model_type from ai_supported_models() for the provider (''bailian'', the default, or ''opensearch'' with base_url => the instance host and workspace, default ''default''), api_key ''sk-...'' or for OpenSearch ''OS-...'' (stored encrypted), ''env:NAME'' (names in pg_bailian.allowed_env_keys) or ''file:/path'' (under pg_bailian.key_directory), default params, retry settings (max_retries [0,100], initial_retry_delay [0.5,8] s, max_retry_delay [1,60] s, timeout [1,1200] s), region or base_url (for non-superusers, a host in pg_bailian.allowed_hosts), client-side rate limits (requests_per_minute, tokens_per_minute: NULL takes Bailian''s documented limit for the model and region where requests go to Bailian, 0 none; see ai_rate_limits), shared by every session that sends the same key to the same model and host. replace => true redeploys an existing name, only by the role that deployed it, its members or a superuser. cache => true keeps the model''s answers in the answer cache (chat, translation and embedding models without web search; see ai_cache). batch_chat => true sends its chat calls to Bailian''s Batch Chat at half price (Beijing; qwen3-max, qwen-plus, qwen-flash, deepseek-v3.2, qwen3-vl-plus, qwen3-vl-flash; timeout [60,3600] s; each call may wait in Bailian''s queue up to the timeout). Not executable by PUBLIC: GRANT EXECUTE to delegate.';

-- The answer cache (src/answers/cache.rs): answers of deployments made with cache => true,
-- by the SHA-256 of everything that decides them (deployment, model, endpoint, request). Answers
-- reach it through the inbox ($PGDATA/pg_bailian/answer_inbox), so one paid for by a statement
-- that failed or rolled back is kept. Read by the AI functions as the catalog owner, on behalf
-- of a call to the model; not dumped (pg_dump leaves it empty), never holds a key.
CREATE TABLE bailian.answer_cache (
    key        bytea PRIMARY KEY CHECK (pg_catalog.octet_length(key) OPERATOR(pg_catalog.=) 32),
    model_name text NOT NULL REFERENCES bailian.models (model_name) ON DELETE CASCADE ON UPDATE CASCADE,
    answer     bytea NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX answer_cache_model_name ON bailian.answer_cache (model_name);
COMMENT ON TABLE bailian.answer_cache IS 'Answers of the deployments made with cache => true, by key (the SHA-256 of deployment, model, endpoint and request); read through ai_cache, emptied with ai_cache_clear, and of a model when it is undeployed. Not readable by PUBLIC.';
REVOKE ALL ON bailian.answer_cache FROM PUBLIC;

CREATE FUNCTION bailian.cache_rows()
RETURNS TABLE (model_name text, entries bigint, bytes bigint, pending_entries bigint, pending_bytes bigint,
               oldest timestamptz, newest timestamptz, first_expiry timestamptz)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_cache_rows';
COMMENT ON FUNCTION bailian.cache_rows() IS 'The answer cache per model; read through ai_cache.';

CREATE VIEW ai_cache AS SELECT * FROM bailian.cache_rows();
COMMENT ON VIEW ai_cache IS 'The answer cache per model: answers kept (entries, bytes of answers), answers paid for and not yet moved into the cache table (pending: kept as files until a statement that uses the cache in a writable transaction moves them; calls find them either way), the oldest and newest kept, and the first to expire. Answers themselves are not shown: a role is given one only by calling the model with the same input.';

CREATE FUNCTION ai_cache_clear(model_name text) RETURNS bigint
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_cache_clear';
COMMENT ON FUNCTION ai_cache_clear(text) IS 'Forget the cached answers of a deployed model (the cache table''s and those waiting to enter it); returns how many. Only the role that deployed the model, its members or a superuser. Not executable by PUBLIC: GRANT EXECUTE to delegate.';
GRANT SELECT ON ai_cache TO PUBLIC;
GRANT EXECUTE ON FUNCTION bailian.cache_rows() TO PUBLIC;
REVOKE EXECUTE ON FUNCTION ai_cache_clear(text) FROM PUBLIC;
