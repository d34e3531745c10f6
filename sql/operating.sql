-- Operating pg_bailian (README: Operating it): prices, budgets, and the views over the
-- cluster-wide state (usage, budgets, activity, rate limits), and ai_estimate. Privileges are
-- granted in sql/finalize.sql, after its pass that revokes grants default privileges made.

-- Prices, yuan per million tokens. bailian.seed_prices is what pg_bailian ships (seed 002,
-- sql/seed_prices.sql): it belongs to the extension, is not dumped, and an update may replace
-- it. bailian.prices holds what a DBA set (through the ai_prices view): pg_dump keeps it, and
-- a row there wins over the shipped one. A model with no row in either has no price: its cost
-- is NULL, not 0.
CREATE TABLE bailian.seed_prices (
    model_type            text PRIMARY KEY,
    input_price           numeric CHECK (input_price >= 0),
    output_price          numeric CHECK (output_price >= 0),
    thinking_output_price numeric CHECK (thinking_output_price >= 0),
    cached_input_ratio    numeric NOT NULL DEFAULT 1 CHECK (cached_input_ratio BETWEEN 0 AND 1),
    batch_ratio           numeric CHECK (batch_ratio > 0 AND batch_ratio <= 1),
    source                text NOT NULL
);
COMMENT ON TABLE bailian.seed_prices IS 'The prices pg_bailian ships (seed 002, 2026-02-28), yuan per million tokens; read through ai_prices, where a DBA''s price (bailian.prices) wins.';

CREATE TABLE bailian.prices (
    model_type            text PRIMARY KEY,
    input_price           numeric CHECK (input_price >= 0),
    output_price          numeric CHECK (output_price >= 0),
    thinking_output_price numeric CHECK (thinking_output_price >= 0),
    cached_input_ratio    numeric NOT NULL DEFAULT 1 CHECK (cached_input_ratio BETWEEN 0 AND 1),
    batch_ratio           numeric CHECK (batch_ratio > 0 AND batch_ratio <= 1),
    set_by                name NOT NULL,
    set_at                timestamptz NOT NULL
);
COMMENT ON TABLE bailian.prices IS 'Prices a DBA set through ai_prices (they win over bailian.seed_prices); kept by pg_dump.';
SELECT pg_catalog.pg_extension_config_dump('bailian.prices', '');

CREATE VIEW bailian.effective_prices AS
SELECT COALESCE(p.model_type, s.model_type) AS model_type,
       CASE WHEN p.model_type IS NULL THEN s.input_price ELSE p.input_price END AS input_price,
       CASE WHEN p.model_type IS NULL THEN s.output_price ELSE p.output_price END AS output_price,
       CASE WHEN p.model_type IS NULL THEN s.thinking_output_price ELSE p.thinking_output_price END AS thinking_output_price,
       CASE WHEN p.model_type IS NULL THEN s.cached_input_ratio ELSE p.cached_input_ratio END AS cached_input_ratio,
       CASE WHEN p.model_type IS NULL THEN s.batch_ratio ELSE p.batch_ratio END AS batch_ratio,
       CASE WHEN p.model_type IS NULL THEN s.source
            ELSE pg_catalog.format('set by %s at %s', p.set_by, p.set_at) END AS source
  FROM bailian.prices p
  FULL JOIN bailian.seed_prices s ON s.model_type OPERATOR(pg_catalog.=) p.model_type;
COMMENT ON VIEW bailian.effective_prices IS 'The price of each model type: the DBA''s (bailian.prices) where set, else the shipped one; read through ai_prices.';

CREATE VIEW ai_prices AS
SELECT model_type, input_price, output_price, thinking_output_price, cached_input_ratio, batch_ratio, source
  FROM bailian.effective_prices;
COMMENT ON VIEW ai_prices IS 'Model prices in yuan per million tokens (input, output, output when thinking), the share of the input price a context-cache hit costs, and the share batch calls cost; source says whether pg_bailian ships the price (seed 002) or who set it. INSERT, UPDATE and DELETE on it set or remove a DBA''s price (DELETE falls back to the shipped one); ai_usage and budgets cost answers with it.';

CREATE FUNCTION bailian.set_price() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- On a Citus worker the catalog is not changed (the coordinator's reaches every node).
    PERFORM bailian.refuse_on_worker('ai_prices');
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        DELETE FROM bailian.prices WHERE model_type OPERATOR(pg_catalog.=) OLD.model_type;
        RETURN OLD;
    END IF;
    IF NEW.model_type IS NULL OR NOT EXISTS (
        SELECT FROM @extschema@.ai_supported_models() m WHERE m.model_type OPERATOR(pg_catalog.=) NEW.model_type) THEN
        RAISE EXCEPTION 'ai_prices: "%" is not a model type pg_bailian supports', NEW.model_type
            USING ERRCODE = '22023', HINT = 'SELECT model_type FROM ai_supported_models() lists them.';
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' AND NEW.model_type OPERATOR(pg_catalog.<>) OLD.model_type THEN
        RAISE EXCEPTION 'ai_prices: model_type cannot change (% to %)', OLD.model_type, NEW.model_type
            USING ERRCODE = '22023', HINT = 'Delete the row and insert one for the other model type.';
    END IF;
    INSERT INTO bailian.prices AS p (model_type, input_price, output_price, thinking_output_price,
                                     cached_input_ratio, batch_ratio, set_by, set_at)
    VALUES (NEW.model_type, NEW.input_price, NEW.output_price, NEW.thinking_output_price,
            COALESCE(NEW.cached_input_ratio, 1), NEW.batch_ratio, current_user, pg_catalog.now())
    ON CONFLICT (model_type) DO UPDATE SET
        input_price = EXCLUDED.input_price, output_price = EXCLUDED.output_price,
        thinking_output_price = EXCLUDED.thinking_output_price, cached_input_ratio = EXCLUDED.cached_input_ratio,
        batch_ratio = EXCLUDED.batch_ratio, set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION bailian.set_price() IS 'INSERT, UPDATE and DELETE on ai_prices: writes the DBA''s price into bailian.prices.';
CREATE TRIGGER set_price INSTEAD OF INSERT OR UPDATE OR DELETE ON ai_prices
    FOR EACH ROW EXECUTE FUNCTION bailian.set_price();

-- Budgets: what a role (NULL: every role) may spend on a model (NULL: every model) per day or
-- month, in yuan or tokens. What each has spent is counted in the shared state.
CREATE SEQUENCE bailian.budget_ids;
SELECT pg_catalog.pg_extension_config_dump('bailian.budget_ids', '');
CREATE TABLE bailian.budgets (
    id         bigint PRIMARY KEY DEFAULT pg_catalog.nextval('bailian.budget_ids'),
    role       regrole,
    model_name text REFERENCES bailian.models (model_name) ON DELETE CASCADE ON UPDATE CASCADE,
    "limit"    numeric NOT NULL CHECK ("limit" > 0),
    unit       text NOT NULL CHECK (unit IN ('yuan', 'tokens')),
    period     text NOT NULL CHECK (period IN ('day', 'month')),
    time_zone  text NOT NULL,
    set_by     name NOT NULL,
    set_at     timestamptz NOT NULL,
    UNIQUE NULLS NOT DISTINCT (role, model_name)
);
ALTER SEQUENCE bailian.budget_ids OWNED BY bailian.budgets.id;
COMMENT ON TABLE bailian.budgets IS 'Budgets set with ai_set_budget; read through ai_budgets.';
SELECT pg_catalog.pg_extension_config_dump('bailian.budgets', '');

CREATE FUNCTION ai_set_budget(role name, model_name text, "limit" numeric, unit text DEFAULT 'yuan',
                              period text DEFAULT 'day')
RETURNS bigint
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_set_budget';
COMMENT ON FUNCTION ai_set_budget(name, text, numeric, text, text) IS
  'Set (or replace) the budget of role (NULL: every role) on model_name (NULL: every model): at most "limit" yuan or tokens (unit ''yuan'' or ''tokens'') per ''day'' or ''month'' (period, in the time zone of the session that sets it). A call that a spent budget covers is not sent and fails with SQLSTATE ZBB01 (or follows pg_bailian.on_error). Only a superuser, or the model''s deployer for roles other than itself, may set one. Returns the budget''s id.';

CREATE FUNCTION ai_drop_budget(role name, model_name text) RETURNS boolean
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_drop_budget';
COMMENT ON FUNCTION ai_drop_budget(name, text) IS
  'Remove the budget of role (NULL: every role) on model_name (NULL: every model); false when there was none. Who may: as ai_set_budget.';

CREATE FUNCTION bailian.budget_spent()
RETURNS TABLE (budget_id bigint, period_start bigint, spent_yuan text, spent_tokens bigint, scope text)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_budget_spent';
COMMENT ON FUNCTION bailian.budget_spent() IS 'What each budget of this database spent in the period it counts now; read through ai_budgets.';

CREATE FUNCTION bailian.scope() RETURNS text
LANGUAGE c STABLE
AS 'MODULE_PATHNAME', 'pg_bailian_state_scope';
COMMENT ON FUNCTION bailian.scope() IS 'Where the shared state lives: cluster (pg_bailian in shared_preload_libraries) or backend (each session counts alone).';

CREATE VIEW ai_budgets AS
WITH b AS (
    SELECT b.*, pg_catalog.date_trunc(b.period, pg_catalog.now(), b.time_zone) AS period_start
      FROM bailian.budgets b
)
SELECT b.id AS budget_id, b.role, b.model_name, b."limit", b.unit, b.period, b.time_zone,
       COALESCE(CASE WHEN b.unit OPERATOR(pg_catalog.=) 'yuan' THEN s.spent_yuan::numeric
                     ELSE s.spent_tokens::numeric END, 0) AS spent,
       GREATEST(b."limit" OPERATOR(pg_catalog.-)
           COALESCE(CASE WHEN b.unit OPERATOR(pg_catalog.=) 'yuan' THEN s.spent_yuan::numeric
                         ELSE s.spent_tokens::numeric END, 0), 0) AS remaining,
       b.period_start,
       ((b.period_start AT TIME ZONE b.time_zone) OPERATOR(pg_catalog.+)
           ('1 ' OPERATOR(pg_catalog.||) b.period)::interval) AT TIME ZONE b.time_zone AS resets_at,
       b.set_by, b.set_at,
       bailian.scope() AS scope
  FROM b
  LEFT JOIN bailian.budget_spent() s
    ON s.budget_id OPERATOR(pg_catalog.=) b.id
   AND s.period_start OPERATOR(pg_catalog.=) pg_catalog.date_part('epoch', b.period_start)::bigint;

-- On a Citus coordinator, ai_usage and ai_activity also show the workers' rows (src/citus.rs):
-- each worker is asked, as the current user, for its own view's rows (so each applies its own
-- rules of who sees what), which come back as JSON of these row types.
CREATE TYPE bailian.usage_row AS (
    database name, role name, model_name text, model_type text, function_name text, calls bigint,
    requests bigint, inputs bigint, failures bigint, retries bigint, rate_limited bigint,
    prompt_tokens bigint, completion_tokens bigint, cached_tokens bigint, reasoning_tokens bigint,
    cost_yuan numeric, shared_calls bigint, cache_hits bigint, saved_yuan numeric,
    latency_p50_ms double precision, latency_p95_ms double precision, latency_max_ms double precision,
    first_used timestamptz, last_used timestamptz, scope text);
COMMENT ON TYPE bailian.usage_row IS 'A row of ai_usage as a Citus worker answers it to the coordinator.';
CREATE TYPE bailian.activity_row AS (
    pid integer, role name, database name, statement text, job text, model_name text, requests bigint,
    in_flight bigint, retries bigint, rate_limited bigint, tokens bigint, cost_yuan numeric, rows_done bigint,
    rows_total bigint, eta timestamptz, waiting_for_rate_limit boolean, query_start timestamptz, scope text);
COMMENT ON TYPE bailian.activity_row IS 'A row of ai_activity as a Citus worker answers it to the coordinator.';

CREATE FUNCTION bailian.worker_rows(view_name text)
RETURNS TABLE (node text, item json)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    schema_name text;
    w record;
BEGIN
    IF view_name OPERATOR(pg_catalog.<>) ALL (ARRAY['ai_usage', 'ai_activity']) THEN
        RAISE EXCEPTION 'bailian.worker_rows: no view %', view_name USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RETURN;
    END IF;
    -- The coordinator is group 0 (pg_dist_local_group, in every Citus version).
    IF (SELECT groupid FROM pg_catalog.pg_dist_local_group) OPERATOR(pg_catalog.<>) 0 THEN
        RETURN;
    END IF;
    SELECT n.nspname INTO schema_name
      FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
     WHERE e.extname OPERATOR(pg_catalog.=) 'pg_bailian';
    FOR w IN
        SELECT x.nodename, x.nodeport, x.success, x.result
          FROM pg_catalog.run_command_on_workers(pg_catalog.format(
                   'SELECT COALESCE(pg_catalog.json_agg(v), ''[]'')::pg_catalog.text FROM %I.%I v', schema_name, view_name)) x
    LOOP
        IF NOT w.success THEN
            RAISE WARNING '%: Citus worker %:% did not answer: %', view_name, w.nodename, w.nodeport, w.result;
            CONTINUE;
        END IF;
        RETURN QUERY SELECT w.nodename OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) w.nodeport::text, j
                       FROM pg_catalog.json_array_elements(w.result::json) j;
    END LOOP;
END
$$;
COMMENT ON FUNCTION bailian.worker_rows(text) IS 'On a Citus coordinator, the rows of ai_usage or ai_activity on each worker, asked as the current user; elsewhere none.';

-- Usage, over every backend (with shared_preload_libraries; else this backend's alone).
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
       u.scope, NULL::text AS node
  FROM bailian.usage_rows() u
  LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) u.database_id::oid
  LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) u.role_id::oid
UNION ALL
SELECT r.*, w.node
  FROM bailian.worker_rows('ai_usage') w, pg_catalog.json_populate_record(NULL::bailian.usage_row, w.item) r;
COMMENT ON VIEW ai_usage IS 'AI calls per database, role, model and function since the counters were last reset: calls (requests as asked, before retries), requests (sent, retries included), inputs, failures, retries, rate_limited (429s), tokens as the provider reported them, cost in yuan at ai_prices (NULL when the model has no price), calls answered without a request of their own (shared_calls: by an identical call of the same statement or job; cache_hits: from the answer cache) and what they would have cost (saved_yuan), latency percentiles (p50/p95 are the upper bound of a class of latencies, within 41%; max is exact), first and last use. scope: cluster (shared_preload_libraries) or backend (this session alone). A role sees its own rows; members of pg_read_all_stats see all (and the overflow row, database and role NULL, function ''(other)'', where counts go once pg_bailian.max_usage_entries rows are taken). Counters survive a clean restart (pg_bailian.save_usage). node: NULL for this server; on a Citus coordinator, the worker (host:port) whose row it is: every node counts its own calls.';

CREATE FUNCTION ai_usage_reset() RETURNS bigint
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_usage_reset';
COMMENT ON FUNCTION ai_usage_reset() IS 'Forget the ai_usage counters of this database (a superuser''s call also the overflow row and the rows of databases dropped since); returns how many rows were forgotten. Budgets keep what they spent. On a Citus coordinator, every worker''s counters too (as the caller, who needs the same right there; a worker that refuses keeps its rows, said in a WARNING). Executable by the database owner and superusers.';

-- Live activity: one row per backend with AI work in its current statement.
CREATE FUNCTION bailian.activity_rows()
RETURNS TABLE (scope text, pid bigint, database_id bigint, role_id bigint, statement_start bigint, model_name text,
               job text, requests bigint, in_flight bigint, retries bigint, throttled bigint, tokens bigint,
               cost_yuan text, rows_done bigint, rows_total bigint, job_started_us bigint, waiting boolean)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_activity_rows';
COMMENT ON FUNCTION bailian.activity_rows() IS 'Every backend''s activity slot; read through ai_activity.';

CREATE VIEW ai_activity AS
SELECT a.pid, a.usename AS role, a.datname AS database, a.query AS statement, s.job, s.model_name,
       s.requests, s.in_flight, s.retries, s.throttled AS rate_limited, s.tokens, s.cost_yuan::numeric AS cost_yuan,
       CASE WHEN s.job IS NOT NULL THEN s.rows_done END AS rows_done,
       s.rows_total,
       CASE WHEN s.job IS NOT NULL AND s.rows_total IS NOT NULL AND s.rows_done > 0
            THEN pg_catalog.now() + (pg_catalog.clock_timestamp() - pg_catalog.to_timestamp(s.job_started_us / 1e6::float8))
                                    * ((s.rows_total - s.rows_done)::float8 / s.rows_done::float8) END AS eta,
       s.waiting AS waiting_for_rate_limit, a.query_start, s.scope, NULL::text AS node
  FROM bailian.activity_rows() s
  JOIN pg_catalog.pg_stat_activity a
    ON a.pid OPERATOR(pg_catalog.=) s.pid::integer
   AND a.state OPERATOR(pg_catalog.=) 'active'
   AND a.query_start OPERATOR(pg_catalog.=)
       ('2000-01-01 00:00:00+00'::timestamptz OPERATOR(pg_catalog.+) (s.statement_start::text || ' microseconds')::interval)
UNION ALL
SELECT r.*, w.node
  FROM bailian.worker_rows('ai_activity') w, pg_catalog.json_populate_record(NULL::bailian.activity_row, w.item) r;
COMMENT ON VIEW ai_activity IS 'AI work in progress, one row per backend whose current statement (or ai_update job) called a model: requests sent, in flight, retries, rate_limited (429s), tokens and cost so far, rows done of rows_total and an ETA for jobs, and whether it waits for the rate limiter. statement is pg_stat_activity''s query (hidden from roles that may not see it). scope: cluster (shared_preload_libraries) or backend. node: NULL for this server; on a Citus coordinator, the worker (host:port) where the backend runs (a column job on a distributed table works on every node holding its shards).';

-- Rate limits: what each deployment's requests are paced by, and its bucket.
CREATE FUNCTION bailian.rate_limit_rows()
RETURNS TABLE (scope text, model_name text, model_type text, requests_per_minute bigint, tokens_per_minute bigint,
               source text, bucket_requests bigint, bucket_rate_limited bigint, waiting bigint, paused_ms float8)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_rate_limit_rows';
COMMENT ON FUNCTION bailian.rate_limit_rows() IS 'Each deployed model''s effective rate limits and bucket; read through ai_rate_limits.';

CREATE VIEW ai_rate_limits AS
SELECT model_name, model_type, requests_per_minute, tokens_per_minute, source, bucket_requests, bucket_rate_limited,
       waiting, paused_ms, scope
  FROM bailian.rate_limit_rows();
COMMENT ON VIEW ai_rate_limits IS 'The limits each deployed model''s requests are paced by (requests_per_minute and tokens_per_minute: as deployed, else Bailian''s documented ones for the model and region, else none; source says which), and its bucket: deployments that send the same key to the same model and host share one, across every backend. bucket_requests and bucket_rate_limited count since the bucket was claimed; waiting is how many requests wait for their turn; paused_ms how long a 429 still pauses it.';

-- A cost preview.
CREATE FUNCTION ai_estimate(statement text)
RETURNS TABLE (model_name text, model_type text, requests bigint, inputs bigint, input_tokens bigint,
               input_tokens_exact boolean, output_tokens_min bigint, output_tokens_max bigint,
               cost_min_yuan numeric, cost_max_yuan numeric)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_estimate';
COMMENT ON FUNCTION ai_estimate(text) IS
  'Run one SELECT, INSERT, UPDATE, DELETE or MERGE with its AI calls counted and not sent (each answers NULL), in a subtransaction that is rolled back, and return per model the requests it would send, their inputs, input tokens (exact for Qwen models with the vocabulary installed, else estimated: input_tokens_exact), the output-token range (at least one token per chat request; at most max_tokens, else the model''s documented cap, NULL if none) and the cost range at ai_prices (NULL without a price). Nothing is sent, spent or counted in ai_usage. The statement runs with the caller''s rights.';
