-- pg_bailian 0.5.0 -> 0.6.0, run by ALTER EXTENSION pg_bailian UPDATE.
-- Never edit this file once 0.6.0 is released: a later change to the SQL surface goes into
-- the next version's update script (see DEVELOPERS.md). tests/upgrade.rs checks that a
-- database updated through every script equals a fresh CREATE EXTENSION of the current version.

\echo Use "ALTER EXTENSION pg_bailian UPDATE" to load this file. \quit

-- Issue 22: paying less.

-- ai_usage counts calls answered without a request of their own.
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

-- ai_deploy_model gains two arguments: the function is made anew; the roles it was delegated
-- to (GRANT EXECUTE) keep it.
DO $ai_deploy_model$
DECLARE
    grants text[];
    g text;
BEGIN
    -- Who could run it, and whether they could grant it: kept.
    SELECT pg_catalog.array_agg(DISTINCT (CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                               ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END)
                                OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) a.is_grantable::pg_catalog.text)
      INTO grants
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid OPERATOR(pg_catalog.=) 'ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text)'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;
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
    -- Nothing else: what ALTER DEFAULT PRIVILEGES of the updating role granted is revoked.
    FOR g IN SELECT DISTINCT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                  ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid OPERATOR(pg_catalog.=) 'ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean)'::pg_catalog.regprocedure
                AND a.grantee OPERATOR(pg_catalog.<>) p.proowner LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean) FROM %s', g);
    END LOOP;
    REVOKE ALL ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean) FROM PUBLIC;
    FOREACH g IN ARRAY COALESCE(grants, '{}') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean) TO %s%s',
                                  pg_catalog.split_part(g, '|', 1),
                                  CASE WHEN pg_catalog.split_part(g, '|', 2) OPERATOR(pg_catalog.=) 'true'
                                       THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$ai_deploy_model$;
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
)
-- A row that fits a page (an answer up to about 8 kB: an embedding of up to about 1,900
-- dimensions) is stored as it is, neither compressed (embeddings do not compress) nor moved
-- to the TOAST table: kept without a compression attempt, read with its row.
WITH (toast_tuple_target = 8160);
-- No index on model_name: a lookup must go by key (a plan using the model's index would
-- read every page of the model's answers); clearing a model's answers is rare.
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

-- Jobs through Bailian's Batch File API (sql/batches.sql, src/functions/column/batch_file.rs):
-- the job procedures gain mode => 'batch', each made anew; whoever could run it still can.
DO $ai_update$
DECLARE
    grants text[];
    g text;
BEGIN
    -- Who could run it, and whether they could grant it: kept.
    SELECT pg_catalog.array_agg(DISTINCT (CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                               ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END)
                                OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) a.is_grantable::pg_catalog.text)
      INTO grants
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid OPERATOR(pg_catalog.=) 'ai_update(regclass, name, text, int, text)'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;
    DROP PROCEDURE ai_update(regclass, name, text, int, text);
    EXECUTE $create$
CREATE PROCEDURE ai_update(table_name regclass, target_column name, expression text,
                           batch_size int DEFAULT 1000, filter text DEFAULT NULL, mode text DEFAULT 'live')
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_update';
$create$;
    -- Nothing else: what ALTER DEFAULT PRIVILEGES of the updating role granted is revoked.
    FOR g IN SELECT DISTINCT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                  ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid OPERATOR(pg_catalog.=) 'ai_update(regclass, name, text, int, text, text)'::pg_catalog.regprocedure
                AND a.grantee OPERATOR(pg_catalog.<>) p.proowner LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON PROCEDURE ai_update(regclass, name, text, int, text, text) FROM %s', g);
    END LOOP;
    REVOKE ALL ON PROCEDURE ai_update(regclass, name, text, int, text, text) FROM PUBLIC;
    FOREACH g IN ARRAY COALESCE(grants, '{}') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON PROCEDURE ai_update(regclass, name, text, int, text, text) TO %s%s',
                                  pg_catalog.split_part(g, '|', 1),
                                  CASE WHEN pg_catalog.split_part(g, '|', 2) OPERATOR(pg_catalog.=) 'true'
                                       THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$ai_update$;
COMMENT ON PROCEDURE ai_update(regclass, name, text, int, text, text) IS
  'Fill target_column with the value of expression (any SQL expression over the row, e.g. ai_embed(''emb'', title || '' '' || body)) for rows where the target is NULL and filter (SQL over the row, optional) holds, in primary-key order, committing every batch_size rows with a progress NOTICE; AI calls run concurrently and batched. Stop it any time; CALL again to resume. A row whose calls, expression or write fail keeps NULL and is reported by key; rows another transaction holds are skipped and reported; sessions filling the same column share the work. mode => ''batch'' sends the rows'' requests through Bailian''s Batch File API at half the price instead: the first CALL submits them, later CALLs with the same arguments say how far Bailian is and, once its batches have ended, write the rows (see ai_batches, ai_batch_cancel).';

DO $ai_embed_column$
DECLARE
    grants text[];
    g text;
BEGIN
    -- Who could run it, and whether they could grant it: kept.
    SELECT pg_catalog.array_agg(DISTINCT (CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                               ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END)
                                OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) a.is_grantable::pg_catalog.text)
      INTO grants
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid OPERATOR(pg_catalog.=) 'ai_embed_column(regclass, name, name, text, int)'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;
    DROP PROCEDURE ai_embed_column(regclass, name, name, text, int);
    EXECUTE $create$
CREATE PROCEDURE ai_embed_column(table_name regclass, source_column name, target_column name,
                                 model_name text, batch_size int DEFAULT 1000, mode text DEFAULT 'live')
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_embed_column';
$create$;
    -- Nothing else: what ALTER DEFAULT PRIVILEGES of the updating role granted is revoked.
    FOR g IN SELECT DISTINCT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                  ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid OPERATOR(pg_catalog.=) 'ai_embed_column(regclass, name, name, text, int, text)'::pg_catalog.regprocedure
                AND a.grantee OPERATOR(pg_catalog.<>) p.proowner LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON PROCEDURE ai_embed_column(regclass, name, name, text, int, text) FROM %s', g);
    END LOOP;
    REVOKE ALL ON PROCEDURE ai_embed_column(regclass, name, name, text, int, text) FROM PUBLIC;
    FOREACH g IN ARRAY COALESCE(grants, '{}') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON PROCEDURE ai_embed_column(regclass, name, name, text, int, text) TO %s%s',
                                  pg_catalog.split_part(g, '|', 1),
                                  CASE WHEN pg_catalog.split_part(g, '|', 2) OPERATOR(pg_catalog.=) 'true'
                                       THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$ai_embed_column$;
COMMENT ON PROCEDURE ai_embed_column(regclass, name, name, text, int, text) IS
  'Fill target_column (real[], or pgvector vector/halfvec) with embeddings of source_column for rows where the target is NULL and the source has text, in primary-key order, committing every batch_size rows with a progress NOTICE. Stop it any time; CALL again to resume. A row whose request or write fails keeps NULL and is reported by key; rows another transaction holds are skipped and reported; sessions filling the same column share the work. mode => ''batch'' sends the rows'' requests through Bailian''s Batch File API at half the price instead: the first CALL submits them, later CALLs with the same arguments say how far Bailian is and, once its batches have ended, write the rows (see ai_batches, ai_batch_cancel).';

DO $ai_gen_column$
DECLARE
    grants text[];
    g text;
BEGIN
    -- Who could run it, and whether they could grant it: kept.
    SELECT pg_catalog.array_agg(DISTINCT (CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                               ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END)
                                OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) a.is_grantable::pg_catalog.text)
      INTO grants
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid OPERATOR(pg_catalog.=) 'ai_gen_column(regclass, name, name, text, text, int, jsonb)'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;
    DROP PROCEDURE ai_gen_column(regclass, name, name, text, text, int, jsonb);
    EXECUTE $create$
CREATE PROCEDURE ai_gen_column(table_name regclass, source_column name, target_column name,
                               model_name text, prompt_template text DEFAULT '{0}', batch_size int DEFAULT 100,
                               params jsonb DEFAULT NULL, mode text DEFAULT 'live')
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_gen_column';
$create$;
    -- Nothing else: what ALTER DEFAULT PRIVILEGES of the updating role granted is revoked.
    FOR g IN SELECT DISTINCT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                  ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid OPERATOR(pg_catalog.=) 'ai_gen_column(regclass, name, name, text, text, int, jsonb, text)'::pg_catalog.regprocedure
                AND a.grantee OPERATOR(pg_catalog.<>) p.proowner LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON PROCEDURE ai_gen_column(regclass, name, name, text, text, int, jsonb, text) FROM %s', g);
    END LOOP;
    REVOKE ALL ON PROCEDURE ai_gen_column(regclass, name, name, text, text, int, jsonb, text) FROM PUBLIC;
    FOREACH g IN ARRAY COALESCE(grants, '{}') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON PROCEDURE ai_gen_column(regclass, name, name, text, text, int, jsonb, text) TO %s%s',
                                  pg_catalog.split_part(g, '|', 1),
                                  CASE WHEN pg_catalog.split_part(g, '|', 2) OPERATOR(pg_catalog.=) 'true'
                                       THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$ai_gen_column$;
COMMENT ON PROCEDURE ai_gen_column(regclass, name, name, text, text, int, jsonb, text) IS
  'Fill target_column (text or varchar) with ai_gen(model_name, prompt_template with {0} replaced by source_column, params) for rows where the target is NULL and the source is not, in primary-key order, committing every batch_size rows with a progress NOTICE. Stop it any time; CALL again to resume. A row whose request or write fails keeps NULL and is reported by key; rows another transaction holds are skipped and reported; sessions filling the same column share the work. mode => ''batch'' sends the rows'' requests through Bailian''s Batch File API at half the price instead: the first CALL submits them, later CALLs with the same arguments say how far Bailian is and, once its batches have ended, write the rows (see ai_batches, ai_batch_cancel).';

-- Jobs through Bailian's Batch File API (CALL ai_update(..., mode => 'batch'); see
-- src/functions/column/batch_file.rs). Written by the extension as the catalog owner; read
-- through ai_batches. Not dumped: a batch belongs to the account and the moment it ran in.
CREATE TABLE bailian.batch_jobs (
    job_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    procedure     text NOT NULL,
    table_name    regclass NOT NULL,
    target_column name NOT NULL,
    expression    text NOT NULL,
    -- The rows the job fills, as its NOTICEs say (e.g. "emb IS NULL AND lang = 'en'").
    scope         text NOT NULL,
    owner         name NOT NULL,
    state         text NOT NULL CHECK (state IN ('submitted', 'collected', 'done')),
    requests      int NOT NULL,
    message       text,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    collected_at  timestamptz,
    finished_at   timestamptz
);
COMMENT ON TABLE bailian.batch_jobs IS 'Jobs run through Bailian''s Batch File API (mode => ''batch''): submitted, collected (answers kept, rows being written), done. Read through ai_batches.';

CREATE TABLE bailian.batches (
    batch_id       text PRIMARY KEY,
    job_id         bigint NOT NULL REFERENCES bailian.batch_jobs (job_id) ON DELETE CASCADE,
    model_name     text NOT NULL,
    endpoint       text NOT NULL,
    input_file_id  text NOT NULL,
    output_file_id text,
    error_file_id  text,
    status         text NOT NULL,
    lines          int NOT NULL,
    total          int,
    completed      int,
    failed         int,
    -- The requests of the batch (their answer keys), to join its result files on.
    custom_ids     text[] NOT NULL,
    -- What the answers are: 'chat', or 'embeddings:<dimension>'.
    expect         text NOT NULL,
    -- Its answers are kept in bailian.batch_answers and counted in ai_usage.
    collected      boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX batches_job_id ON bailian.batches (job_id);
COMMENT ON TABLE bailian.batches IS 'The batches of each batch job, as Bailian last reported them. Read through ai_batches.';

CREATE TABLE bailian.batch_answers (
    job_id bigint NOT NULL REFERENCES bailian.batch_jobs (job_id) ON DELETE CASCADE,
    key    bytea NOT NULL,
    answer bytea,
    error  text,
    PRIMARY KEY (job_id, key)
);
COMMENT ON TABLE bailian.batch_answers IS 'What the batches of a collected job answered, by answer key, until its rows are written.';
REVOKE ALL ON bailian.batch_jobs, bailian.batches, bailian.batch_answers FROM PUBLIC;

CREATE VIEW ai_batches AS
SELECT j.job_id, j.procedure, j.table_name, j.target_column, j.owner, j.state AS job_state, j.requests,
       b.batch_id, b.model_name, b.status AS batch_status, b.lines, b.completed, b.failed,
       j.created_at, b.updated_at, j.collected_at, j.finished_at, j.message
  FROM bailian.batch_jobs j
  LEFT JOIN bailian.batches b ON b.job_id OPERATOR(pg_catalog.=) j.job_id
 WHERE j.owner OPERATOR(pg_catalog.=) CURRENT_USER
    OR pg_catalog.pg_has_role(CURRENT_USER, 'pg_read_all_stats', 'USAGE');
COMMENT ON VIEW ai_batches IS 'Batch jobs (CALL ai_update(..., mode => ''batch'') and the column procedures) and their batches at Bailian: the job''s state (submitted, collected, done), each batch''s status as last seen (validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled) with its lines done and failed. A role sees its own jobs; members of pg_read_all_stats see all.';

CREATE FUNCTION ai_batch_cancel(job_id bigint) RETURNS bigint
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_batch_cancel';
COMMENT ON FUNCTION ai_batch_cancel(bigint) IS 'Ask Bailian to cancel the batches of a batch job still running; lines done before are kept (and billed), and the next CALL of the job collects them and writes their rows. Only the role that made the job or a superuser. Returns how many batches were asked.';

-- The objects made here get no privilege that ALTER DEFAULT PRIVILEGES of the updating role
-- would grant (as finalize.sql does at CREATE EXTENSION), then exactly these.
DO $acl$
DECLARE
    object text;
    g text;
BEGIN
    FOREACH object IN ARRAY ARRAY['TABLE bailian.answer_cache', 'TABLE bailian.batch_jobs', 'TABLE bailian.batches',
                                  'TABLE bailian.batch_answers', 'TABLE ai_cache', 'TABLE ai_batches', 'TABLE ai_usage'] LOOP
        FOR g IN SELECT DISTINCT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                      ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END
                   FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
                  WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.split_part(object, ' ', 2)::pg_catalog.regclass
                    AND a.grantee OPERATOR(pg_catalog.<>) c.relowner LOOP
            EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM %s', object, g);
        END LOOP;
    END LOOP;
    FOREACH object IN ARRAY ARRAY['bailian.cache_rows()', 'ai_cache_clear(text)', 'ai_batch_cancel(bigint)',
                                  'bailian.usage_rows()'] LOOP
        FOR g IN SELECT DISTINCT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                      ELSE a.grantee::pg_catalog.regrole::pg_catalog.text END
                   FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
                  WHERE p.oid OPERATOR(pg_catalog.=) object::pg_catalog.regprocedure
                    AND a.grantee OPERATOR(pg_catalog.<>) p.proowner LOOP
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %s', object, g);
        END LOOP;
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', object);
    END LOOP;
END
$acl$;
GRANT SELECT ON ai_usage, ai_cache, ai_batches TO PUBLIC;
GRANT EXECUTE ON FUNCTION bailian.usage_rows(), bailian.cache_rows(), ai_batch_cancel(bigint) TO PUBLIC;
