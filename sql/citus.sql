-- pg_bailian on a Citus cluster (README: Citus; src/citus.rs). Citus propagates CREATE EXTENSION
-- to the workers, not the catalogs' rows: ai_citus_enable() makes them reference tables, a copy on
-- every node written together. These functions work, or say why not, where Citus is absent.

-- The id of this node's master key (an 8-hex-digit fingerprint, the one sealed keys carry), or
-- NULL when it has no master key file yet. Not a secret: the same id is in every sealed key.
CREATE FUNCTION bailian.master_key_id() RETURNS text
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_master_key_id';
COMMENT ON FUNCTION bailian.master_key_id() IS 'The id of this server''s master key (NULL: no key file yet); ai_citus_check compares the nodes'' ids.';

-- Raises the error a catalog change gets on a Citus worker (used by ai_prices' trigger).
CREATE FUNCTION bailian.refuse_on_worker(what text) RETURNS void
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_refuse_on_worker';
COMMENT ON FUNCTION bailian.refuse_on_worker(text) IS 'Raises an error on a Citus worker, where the catalog is not changed; nothing elsewhere.';

-- What a Citus coordinator asks each worker when a model is undeployed or its cache cleared:
-- the workers keep the answers of the calls they make in caches of their own.
CREATE FUNCTION bailian.forget_answers(model_name text) RETURNS bigint
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_forget_answers';
COMMENT ON FUNCTION bailian.forget_answers(text) IS 'This node''s cached answers of a model, forgotten (asked by the Citus coordinator as the catalog owner); how many. Not executable by PUBLIC.';

CREATE FUNCTION ai_citus_enable()
RETURNS TABLE (catalog regclass, state text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regclass;
    fk record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RAISE EXCEPTION 'ai_citus_enable: the citus extension is not installed in this database'
            USING ERRCODE = '55000', HINT = 'pg_bailian needs it only on a Citus cluster: CREATE EXTENSION citus first.';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION 'ai_citus_enable: this node is not the Citus coordinator'
            USING ERRCODE = '55000', HINT = 'Run it on the coordinator: the catalogs reach every node from there.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_node n WHERE n.groupid OPERATOR(pg_catalog.=) 0) THEN
        RAISE EXCEPTION 'ai_citus_enable: the coordinator is not in the cluster''s metadata, so it would hold no copy of the catalogs'
            USING ERRCODE = '55000', HINT = 'SELECT citus_set_coordinator_host(''<host>'', <port>) first.';
    END IF;
    -- Citus allows no foreign key from a local table (the answer cache) to a reference table,
    -- and the workers' copies of the catalog tables already have theirs: none is kept, and
    -- ai_undeploy_model removes what belongs to a model itself.
    FOR fk IN
        SELECT c.conrelid::pg_catalog.regclass AS rel, c.conname
          FROM pg_catalog.pg_constraint c
         WHERE c.contype OPERATOR(pg_catalog.=) 'f'
           AND c.confrelid OPERATOR(pg_catalog.=) 'bailian.models'::pg_catalog.regclass
           -- The extension's own tables only; a user's foreign key stays (and then Citus says why
           -- it cannot make bailian.models a reference table).
           AND EXISTS (SELECT FROM pg_catalog.pg_depend d
                        WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                          AND d.objid OPERATOR(pg_catalog.=) c.conrelid
                          AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                          AND d.deptype OPERATOR(pg_catalog.=) 'e')
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', fk.rel, fk.conname);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['bailian.models', 'bailian.model_keys', 'bailian.prompts', 'bailian.default_models',
                             'bailian.prices', 'bailian.budgets']::pg_catalog.regclass[]
    LOOP
        catalog := t;
        IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) t) THEN
            state := 'already a reference table';
        ELSE
            PERFORM pg_catalog.create_reference_table(t);
            -- The rows are now in the reference table's copies; the local ones would only hide.
            PERFORM pg_catalog.truncate_local_data_after_distributing_table(t);
            state := 'made a reference table';
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION ai_citus_enable() IS
  'On a Citus coordinator (in the metadata: citus_set_coordinator_host), make pg_bailian''s catalogs (deployments, sealed keys, prompts, default models, prices, budgets) reference tables, so that every node, and every node added later, has the same ones: deploy on the coordinator only (workers refuse catalog changes). Idempotent; answers each catalog and what was done. Every node also needs the same master key file: ai_citus_check() compares them. For the extension''s owner or a superuser.';

CREATE FUNCTION ai_citus_check()
RETURNS TABLE (node text, node_role text, pg_bailian_version text, preloaded boolean, master_key_id text,
               deployed_models bigint, ok boolean, problem text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mine record;
    probe text;
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RAISE EXCEPTION 'ai_citus_check: the citus extension is not installed in this database'
            USING ERRCODE = '55000';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION 'ai_citus_check: run it on the Citus coordinator' USING ERRCODE = '55000';
    END IF;
    IF NOT pg_catalog.has_schema_privilege('bailian', 'USAGE')
       OR NOT pg_catalog.has_function_privilege('bailian.json_probe()', 'EXECUTE') THEN
        RAISE EXCEPTION 'ai_citus_check: permission denied: it asks every node about pg_bailian''s internals, for the extension''s owner or a superuser'
            USING ERRCODE = '42501';
    END IF;
    probe := bailian.json_probe();
    SELECT (j->>'version') AS version, (j->>'key') AS key INTO mine FROM (SELECT probe::json AS j) s;
    FOR r IN
        SELECT n.nodename OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) n.nodeport AS name,
               CASE WHEN n.groupid OPERATOR(pg_catalog.=) 0 THEN 'coordinator' ELSE 'worker' END AS kind,
               x.success, x.result
          FROM pg_catalog.run_command_on_all_nodes(
                   $probe$SELECT CASE WHEN pg_catalog.to_regprocedure('bailian.json_probe()') IS NULL THEN '{}'
                                      ELSE bailian.json_probe() END$probe$) x
          JOIN pg_catalog.pg_dist_node n ON n.nodeid OPERATOR(pg_catalog.=) x.nodeid
         ORDER BY n.groupid, n.nodeid
    LOOP
        node := r.name;
        node_role := r.kind;
        pg_bailian_version := NULL; preloaded := NULL; master_key_id := NULL; deployed_models := NULL;
        problem := NULL;
        IF NOT r.success THEN
            problem := 'could not ask it: ' OPERATOR(pg_catalog.||) r.result;
        ELSE
            pg_bailian_version := r.result::json->>'version';
            preloaded := (r.result::json->>'preloaded')::boolean;
            master_key_id := r.result::json->>'key';
            deployed_models := (r.result::json->>'models')::bigint;
            IF pg_bailian_version IS NULL THEN
                problem := 'pg_bailian is not installed on it (its CREATE EXTENSION did not reach it)';
            ELSIF pg_bailian_version OPERATOR(pg_catalog.<>) mine.version THEN
                problem := pg_catalog.format('pg_bailian %s there, %s on the coordinator: ALTER EXTENSION pg_bailian UPDATE', pg_bailian_version, mine.version);
            ELSIF NOT preloaded THEN
                problem := 'pg_bailian is not in shared_preload_libraries (after citus): no batching of shard queries, no shared rate limits';
            ELSIF master_key_id IS DISTINCT FROM mine.key THEN
                problem := pg_catalog.format('its master key (%s) is not the coordinator''s (%s): copy the coordinator''s master key file (pg_bailian.master_key_file) to it, or it cannot decrypt the deployed keys',
                                             COALESCE(master_key_id, 'none'), COALESCE(mine.key, 'none'));
            ELSIF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                               WHERE p.logicalrelid OPERATOR(pg_catalog.=) 'bailian.models'::pg_catalog.regclass) THEN
                problem := 'the catalogs are not shared: SELECT ai_citus_enable() on the coordinator';
            END IF;
        END IF;
        ok := problem IS NULL;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION ai_citus_check() IS
  'On a Citus coordinator, one row per node: its pg_bailian version, whether it preloads pg_bailian, its master key id (NULL: none yet) and how many models it sees deployed; ok is false, and problem says what to do, where a node would fail AI calls (no extension, another version, a master key that is not the coordinator''s, catalogs not shared). Asks every node over Citus'' connections, as the current user: for the extension''s owner or a superuser.';

-- What ai_citus_check asks each node.
CREATE FUNCTION bailian.json_probe() RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT pg_catalog.json_build_object(
    'version', (SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_bailian'),
    'preloaded', pg_catalog.current_setting('shared_preload_libraries') OPERATOR(pg_catalog.~) '(^|[ ,])pg_bailian($|[ ,])',
    'key', bailian.master_key_id(),
    'models', (SELECT pg_catalog.count(*) FROM bailian.models))::text
$$;
COMMENT ON FUNCTION bailian.json_probe() IS 'This node''s pg_bailian version, preloading, master key id and deployed models, as ai_citus_check reads them.';

-- What a node of a column job on a distributed table tells the job's other nodes when it has
-- finished its part: they may use its share of each deployment's rate (README: Citus).
CREATE FUNCTION ai_update_release_share(job_id bigint, rate_share float8) RETURNS boolean
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'pg_bailian_release_rate_share';
COMMENT ON FUNCTION ai_update_release_share(bigint, float8) IS 'A node of Citus column job job_id (a random id only the job''s nodes are told) finished, releasing rate_share of each deployment''s rate to the nodes still running it here, which scale their shares up by it; false when this node could not keep it (pg_bailian not preloaded, or 64 jobs already tracked, which leaves the nodes at their first shares). Called by ai_update_local_shards as the job''s role.';

-- The rows a column job on a distributed table has to fill in one shard: the coordinator asks
-- each node this for each of its shards before it spreads the job (README: Citus). The filter's
-- names are read with the caller's search_path, as the job's nodes read them.
CREATE FUNCTION ai_update_rows_to_fill(shard regclass, target_column name, filter text, search_path text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF shard IS NULL OR target_column IS NULL THEN
        RAISE EXCEPTION 'ai_update_rows_to_fill: shard and target_column must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- For this function's run only: its SET clause puts ours back when it returns.
    IF ai_update_rows_to_fill.search_path IS NOT NULL THEN
        PERFORM pg_catalog.set_config('search_path', ai_update_rows_to_fill.search_path, true);
    END IF;
    -- The newline: a filter ending in a -- comment leaves the parenthesis standing.
    EXECUTE pg_catalog.format(E'SELECT pg_catalog.count(*) FROM %s WHERE %I IS NULL AND (%s\n)',
                              shard, target_column, coalesce(ai_update_rows_to_fill.filter, 'true'))
       INTO n;
    RETURN n;
END
$$;
COMMENT ON FUNCTION ai_update_rows_to_fill(regclass, name, text, text) IS 'How many rows of a Citus shard (or any table) a column job would fill: target_column IS NULL and the filter, read with the given search_path (NULL: the session''s). Asked of each node by CALL ai_update on a coordinator, as the calling role; runs with its rights.';

-- One node's share of a column job on a distributed table: CALL ai_update (and ai_embed_column,
-- ai_gen_column) on the coordinator runs it on every node that holds shards of the table, over
-- Citus' connections, as the calling role; it fills that node's shards and answers a report.
CREATE PROCEDURE ai_update_local_shards(table_name regclass, target_column name, expression text,
                                        batch_size int, filter text, procedure_name text, rate_share float8,
                                        search_path text DEFAULT NULL, shards bigint[] DEFAULT NULL,
                                        job_id bigint DEFAULT NULL, peers text[] DEFAULT NULL,
                                        INOUT report text DEFAULT NULL)
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_update_local_shards';
COMMENT ON PROCEDURE ai_update_local_shards(regclass, name, text, int, text, text, float8, text, bigint[], bigint, text[], text) IS
  'One node''s part of CALL ai_update on a Citus distributed table, which runs it on every node holding its shards: fills the shards this node holds, a committed batch at a time, each under Citus'' shard metadata lock (a shard moved away meanwhile is left to the next round), its requests limited to rate_share of each deployment''s rate, with the caller''s search_path on the coordinator, only the given shards (those the coordinator counted rows in here: one no longer here is reported as moved); when done, it tells peers (the round''s other nodes, host:port) that it released its share under job_id, and they share it out; report is a JSON summary. Called by ai_update; the caller''s rights apply.';
