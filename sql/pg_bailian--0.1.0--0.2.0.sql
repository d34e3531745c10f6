-- pg_bailian 0.1.0 -> 0.2.0, run by ALTER EXTENSION pg_bailian UPDATE.
-- Never edit this file once 0.2.0 is released: a later change to the SQL surface goes into
-- the next version's update script (see DEVELOPERS.md). tests/upgrade.rs checks that a
-- database updated through every script equals a fresh CREATE EXTENSION of the current version.

\echo Use "ALTER EXTENSION pg_bailian UPDATE" to load this file. \quit

-- Issue 18 part 4: Hologres' SQL runs unchanged (README, Coming from Hologres).

-- The default model of each model-less AI function (sql/catalog.sql).
CREATE TABLE bailian.default_models (
    function_name text PRIMARY KEY CHECK (function_name IN ('ai_gen', 'ai_embed', 'ai_translate', 'ai_classify',
                                                            'ai_extract', 'ai_mask', 'ai_summarize', 'ai_fix_grammar',
                                                            'ai_sentiment', 'ai_rank', 'ai_similarity')),
    model_name    text NOT NULL REFERENCES bailian.models (model_name) ON DELETE CASCADE ON UPDATE CASCADE,
    set_by        name NOT NULL,
    set_at        timestamptz NOT NULL
);
COMMENT ON TABLE bailian.default_models IS 'The default model of each model-less AI function, set with ai_set_default_model; read through ai_default_models.';
REVOKE ALL ON bailian.default_models FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('bailian.default_models', '');

-- Hologres' forms (sql/functions.sql).
CREATE FUNCTION ai_gen(model_name text, prompt jsonb, params jsonb DEFAULT NULL) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_gen_prompt';

CREATE FUNCTION ai_gen(prompt jsonb) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_gen_prompt_default';

CREATE FUNCTION ai_embed(content text) RETURNS real[]
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_embed_default';

CREATE FUNCTION ai_embed(model_name text, image bytea, file_format text) RETURNS real[]
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_embed_image_format';

CREATE FUNCTION ai_translate(content text, target_lang text) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_translate_default';

CREATE FUNCTION ai_classify(content text, labels text[]) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_classify_default';

CREATE FUNCTION ai_extract(content text, labels text[]) RETURNS jsonb
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_extract_default';

CREATE FUNCTION ai_mask(content text, labels text[]) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_mask_default';

CREATE FUNCTION ai_summarize(content text) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_summarize_default';

CREATE FUNCTION ai_fix_grammar(content text) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_fix_grammar_default';

CREATE FUNCTION ai_sentiment(content text) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_sentiment_default';

CREATE FUNCTION ai_rank(query text, document text) RETURNS float8
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_rank_default';

CREATE FUNCTION ai_similarity(a text, b text) RETURNS float8
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_similarity_default';

CREATE FUNCTION ai_set_default_model(function_name text, model_name text) RETURNS void
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_set_default_model';

CREATE FUNCTION prompt(template text, VARIADIC args text[] DEFAULT '{}') RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
SELECT CASE WHEN template IS NULL THEN NULL
            ELSE pg_catalog.jsonb_build_object('prompt', template, 'args',
                     COALESCE(pg_catalog.to_jsonb(args), '[]'::pg_catalog.jsonb)) END
$$;

-- sql/procedures.sql
CREATE PROCEDURE register_external_model(model_name text, model_type text, model_provider text,
                                         config json, task text)
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_register_external_model';

CREATE PROCEDURE delete_external_model(model_name text)
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_delete_external_model';

-- #[pg_extern] in src/functions/tasks.rs (as `cargo pgrx schema` writes it).
CREATE  FUNCTION bailian."default_model_choices"() RETURNS TABLE (
	"function_name" TEXT,
	"tasks" TEXT[],
	"model_name" TEXT,
	"set_by" TEXT,
	"set_at" timestamp with time zone,
	"effective_model" TEXT,
	"source" TEXT
)
STRICT STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'default_model_choices_wrapper';

-- sql/finalize.sql
CREATE FUNCTION list_external_models()
RETURNS TABLE (model_name text, model_type text, model_provider text, task text)
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
SELECT m.model_name, m.model_type, m.provider,
       CASE WHEN m.task OPERATOR(pg_catalog.=) 'chat' THEN 'chat/completions' ELSE m.task END
  FROM @extschema@.ai_models m
 ORDER BY m.model_name
$$;

CREATE VIEW ai_default_models AS
SELECT function_name, tasks, model_name, set_by, set_at, effective_model, source
  FROM bailian.default_model_choices();

-- Privileges: as finalize.sql sets them at CREATE EXTENSION (default privileges in force for
-- the updating role would otherwise grant on the new objects).
DO $acl$
DECLARE
    statement text;
BEGIN
    FOR statement IN
        SELECT pg_catalog.format('REVOKE ALL ON %s FROM %s', o.object,
                   CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                        ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END)
          FROM (SELECT 'TABLE ' OPERATOR(pg_catalog.||) c.oid::pg_catalog.regclass::pg_catalog.text AS object,
                       c.relacl AS acl, c.relowner AS owner
                  FROM pg_catalog.pg_class c
                 WHERE c.oid OPERATOR(pg_catalog.=) ANY (ARRAY['bailian.default_models'::pg_catalog.regclass,
                                                                '@extschema@.ai_default_models'::pg_catalog.regclass])
                UNION ALL
                SELECT 'ROUTINE ' OPERATOR(pg_catalog.||) p.oid::pg_catalog.regprocedure::pg_catalog.text, p.proacl, p.proowner
                  FROM pg_catalog.pg_proc p
                 WHERE p.oid OPERATOR(pg_catalog.=) ANY (ARRAY[
                       '@extschema@.ai_gen(text, jsonb, jsonb)'::pg_catalog.regprocedure,
                       '@extschema@.ai_gen(jsonb)', '@extschema@.ai_embed(text)',
                       '@extschema@.ai_embed(text, bytea, text)', '@extschema@.ai_translate(text, text)',
                       '@extschema@.ai_classify(text, text[])', '@extschema@.ai_extract(text, text[])',
                       '@extschema@.ai_mask(text, text[])', '@extschema@.ai_summarize(text)',
                       '@extschema@.ai_fix_grammar(text)', '@extschema@.ai_sentiment(text)',
                       '@extschema@.ai_rank(text, text)', '@extschema@.ai_similarity(text, text)',
                       '@extschema@.ai_set_default_model(text, text)', '@extschema@.prompt(text, text[])',
                       '@extschema@.list_external_models()', 'bailian.default_model_choices()',
                       '@extschema@.register_external_model(text, text, text, json, text)',
                       '@extschema@.delete_external_model(text)'])) o,
               pg_catalog.aclexplode(o.acl) a
         WHERE a.grantee OPERATOR(pg_catalog.<>) o.owner
         GROUP BY o.object, a.grantee
    LOOP
        EXECUTE statement;
    END LOOP;
END
$acl$;

GRANT SELECT ON ai_default_models TO PUBLIC;
GRANT EXECUTE ON FUNCTION ai_gen(text, jsonb, jsonb), ai_gen(jsonb), ai_embed(text), ai_embed(text, bytea, text),
    ai_translate(text, text), ai_classify(text, text[]), ai_extract(text, text[]), ai_mask(text, text[]),
    ai_summarize(text), ai_fix_grammar(text), ai_sentiment(text), ai_rank(text, text), ai_similarity(text, text),
    prompt(text, text[]), list_external_models(), bailian.default_model_choices() TO PUBLIC;
DO $owner$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) 'pg_database_owner') THEN
        GRANT SELECT ON bailian.default_models TO pg_database_owner;
    END IF;
END
$owner$;
REVOKE EXECUTE ON FUNCTION ai_set_default_model(text, text) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE register_external_model(text, text, text, json, text) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE delete_external_model(text) FROM PUBLIC;

-- Comments (sql/finalize.sql), the one of ai_gen(text) changed.
COMMENT ON FUNCTION ai_gen(text) IS
  'Generate text with the default model of ai_gen: pg_bailian.default_chat_model, else the one ai_set_default_model set, else the only deployed chat model (see ai_default_models).';
-- Hologres' forms (README: Coming from Hologres).
COMMENT ON FUNCTION ai_gen(text, jsonb, jsonb) IS
  'Generate text from a prompt object (prompt(template, VARIADIC args), or Hologres'' {"prompt": ..., "args": [...], "parameters": {...}}) with a deployed chat model: {0}, {1}, ... of the template are replaced by the arguments as ai_prompt does, "parameters" and params are per-call params (params win). NULL prompt returns NULL.';
COMMENT ON FUNCTION ai_gen(jsonb) IS
  'Generate text from a prompt object with the default model of ai_gen (pg_bailian.default_chat_model, else ai_set_default_model''s, else the only deployed chat model).';
COMMENT ON FUNCTION ai_embed(text) IS
  'Embed content with the default model of ai_embed (ai_set_default_model, else the only deployed embedding model; see ai_default_models). NULL or empty content returns NULL.';
COMMENT ON FUNCTION ai_embed(text, bytea, text) IS
  'Embed image bytes with a deployed multimodal embedding model, as Hologres'' ai_embed(model_name, binary, file_format): file_format ''jpg'', ''jpeg'', ''png'', ''bmp'', ''webp'', ''tiff'' or ''tif'' (Bailian takes no gif or heic), and the bytes must be an image of that format. NULL or empty bytes return NULL.';
COMMENT ON FUNCTION ai_translate(text, text) IS
  'Translate content into target_lang with the default model of ai_translate (ai_set_default_model, else the only deployed translation model, else the only chat model).';
COMMENT ON FUNCTION ai_classify(text, text[]) IS
  'ai_classify(model_name, content, labels) with the default model of ai_classify (see ai_default_models).';
COMMENT ON FUNCTION ai_extract(text, text[]) IS
  'ai_extract(model_name, content, labels) with the default model of ai_extract (see ai_default_models).';
COMMENT ON FUNCTION ai_mask(text, text[]) IS
  'ai_mask(model_name, content, labels) with the default model of ai_mask (see ai_default_models).';
COMMENT ON FUNCTION ai_summarize(text) IS
  'ai_summarize(model_name, content) (at most 50 words) with the default model of ai_summarize (see ai_default_models).';
COMMENT ON FUNCTION ai_fix_grammar(text) IS
  'ai_fix_grammar(model_name, content) with the default model of ai_fix_grammar (see ai_default_models).';
COMMENT ON FUNCTION ai_sentiment(text) IS
  'ai_sentiment(model_name, content) with the default model of ai_sentiment (see ai_default_models).';
COMMENT ON FUNCTION ai_rank(text, text) IS
  'ai_rank(model_name, query, document) with the default model of ai_rank (ai_set_default_model, else the only deployed rerank model, else the only chat model).';
COMMENT ON FUNCTION ai_similarity(text, text) IS
  'ai_similarity(model_name, a, b) with the default model of ai_similarity (ai_set_default_model, else the only deployed embedding model).';
COMMENT ON FUNCTION ai_set_default_model(text, text) IS
  'Set the model the model-less form of an AI function uses (function_name ''ai_gen'', ''ai_embed'', ''ai_translate'', ''ai_classify'', ''ai_extract'', ''ai_mask'', ''ai_summarize'', ''ai_fix_grammar'', ''ai_sentiment'', ''ai_rank'' or ''ai_similarity''); the model must be deployed and of a task the function takes. NULL model_name goes back to automatic (the only deployed model of the task). A mapping another role set may be changed only by that role, its members or a superuser; undeploying the model removes it. Not executable by PUBLIC: GRANT EXECUTE to the roles that deploy.';
COMMENT ON VIEW ai_default_models IS
  'The default model of each model-less AI function: tasks (in order of preference), model_name as set with ai_set_default_model (set_by, set_at), effective_model (what a call uses now, NULL when it would fail) and source (why).';
COMMENT ON FUNCTION bailian.default_model_choices() IS
  'The rows of ai_default_models; read it through the view.';
COMMENT ON FUNCTION prompt(text, text[]) IS
  'A prompt object: {"prompt": template, "args": [args...]}, as Hologres'' prompt() builds it; ai_gen(model_name, prompt object) and ai_gen(prompt object) render {0}, {1}, ... with the arguments and send it. Asks no model.';
COMMENT ON FUNCTION list_external_models() IS
  'Hologres'' model list: every deployed model with model_name, model_type, model_provider (bailian, opensearch) and task in Hologres'' names (chat/completions, embedding, translation, rerank).';
COMMENT ON PROCEDURE register_external_model(text, text, text, json, text) IS
  'Hologres'' registration: ai_deploy_model(model_name, model_type, config->>''api_key'', ...) with model_provider ''bailian'' or ''opensearch'', task ''chat/completions'', ''embedding'', ''translation'' or ''rerank'' (it must be model_type''s), and config holding api_key (required) and optionally max_retries, initial_retry_delay, max_retry_delay, timeout, base_url, region, params, requests_per_minute, tokens_per_minute, workspace. Same checks, key sealing and privileges as ai_deploy_model; an existing name is an error. Not executable by PUBLIC.';
COMMENT ON PROCEDURE delete_external_model(text) IS
  'Hologres'' removal: ai_undeploy_model(model_name), an error (42704) when no model has that name. Only the role that deployed it, its members or a superuser. Not executable by PUBLIC.';
