-- Functions implemented as plain fmgr entry points (src/entry.rs) so they can raise
-- pg_bailian's own SQLSTATEs. COST is high so the planner evaluates cheap quals first, and
-- among AI quals (which the AI Batch node keeps in the planner's order) the cheaper calls
-- first: an embedding (one input of a packed request) 1000, a similarity (two) 2000, a
-- rerank 5000, a generation 10000.

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

CREATE FUNCTION ai_undeploy_model(model_name text) RETURNS boolean
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_undeploy_model';

CREATE FUNCTION ai_gen(model_name text, prompt text, params jsonb DEFAULT NULL) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_gen';

CREATE FUNCTION ai_gen(prompt text) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_gen_default';

CREATE FUNCTION ai_translate(model_name text, content text, target_lang text, params jsonb DEFAULT NULL)
RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_translate';

CREATE FUNCTION ai_embed(model_name text, content text) RETURNS real[]
LANGUAGE c VOLATILE COST 1000
AS 'MODULE_PATHNAME', 'pg_bailian_embed';

CREATE FUNCTION ai_chat(model_name text, messages jsonb, params jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_chat';

CREATE FUNCTION ai_gen_audio(model_name text, prompt text, params jsonb DEFAULT NULL) RETURNS bytea
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_gen_audio';

CREATE FUNCTION ai_embed_image(model_name text, image text) RETURNS real[]
LANGUAGE c VOLATILE COST 1000
AS 'MODULE_PATHNAME', 'pg_bailian_embed_image_uri';

CREATE FUNCTION ai_embed_image(model_name text, image bytea) RETURNS real[]
LANGUAGE c VOLATILE COST 1000
AS 'MODULE_PATHNAME', 'pg_bailian_embed_image_bytes';

CREATE FUNCTION ai_embed_batch(model_name text, contents text[])
RETURNS TABLE (ord int, embedding real[])
LANGUAGE c VOLATILE COST 10000 ROWS 1000
AS 'MODULE_PATHNAME', 'pg_bailian_embed_batch';

CREATE FUNCTION ai_gen_batch(model_name text, prompts text[], params jsonb DEFAULT NULL)
RETURNS TABLE (ord int, response text, error text)
LANGUAGE c VOLATILE COST 10000 ROWS 100
AS 'MODULE_PATHNAME', 'pg_bailian_gen_batch';

-- Structured output and the task functions built on it (src/functions/tasks.rs; prompts and
-- schemas in bailian_core::tasks).

CREATE FUNCTION ai_gen_structured(model_name text, prompt text, response_format jsonb,
                                  on_error text DEFAULT 'capture', params jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_gen_structured';

CREATE FUNCTION ai_classify(model_name text, content text, labels text[]) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_classify';

CREATE FUNCTION ai_extract(model_name text, content text, labels text[]) RETURNS jsonb
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_extract';

CREATE FUNCTION ai_mask(model_name text, content text, labels text[]) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_mask';

CREATE FUNCTION ai_summarize(model_name text, content text, max_words int DEFAULT 50) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_summarize';

CREATE FUNCTION ai_fix_grammar(model_name text, content text) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_fix_grammar';

CREATE FUNCTION ai_sentiment(model_name text, content text) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_sentiment';

CREATE FUNCTION ai_rank(model_name text, query text, document text) RETURNS float8
LANGUAGE c VOLATILE COST 5000
AS 'MODULE_PATHNAME', 'pg_bailian_rank';

CREATE FUNCTION ai_similarity(model_name text, a text, b text) RETURNS float8
LANGUAGE c VOLATILE COST 2000
AS 'MODULE_PATHNAME', 'pg_bailian_similarity';

CREATE FUNCTION ai_set_prompt(model_name text, function_name text, prompt text) RETURNS void
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_set_prompt';

-- Hologres' forms (see README, Coming from Hologres). The model-less forms use the function's
-- default model (ai_set_default_model, the ai_default_models view); the prompt-object forms of
-- ai_gen render prompt(template, VARIADIC args) with ai_prompt's renderer. A quoted literal
-- still picks the text forms: PostgreSQL prefers text for an unknown-type literal.

CREATE FUNCTION ai_gen(model_name text, prompt jsonb, params jsonb DEFAULT NULL) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_gen_prompt';

CREATE FUNCTION ai_gen(prompt jsonb) RETURNS text
LANGUAGE c VOLATILE COST 10000
AS 'MODULE_PATHNAME', 'pg_bailian_gen_prompt_default';

CREATE FUNCTION ai_embed(content text) RETURNS real[]
LANGUAGE c VOLATILE COST 1000
AS 'MODULE_PATHNAME', 'pg_bailian_embed_default';

CREATE FUNCTION ai_embed(model_name text, image bytea, file_format text) RETURNS real[]
LANGUAGE c VOLATILE COST 1000
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
LANGUAGE c VOLATILE COST 5000
AS 'MODULE_PATHNAME', 'pg_bailian_rank_default';

CREATE FUNCTION ai_similarity(a text, b text) RETURNS float8
LANGUAGE c VOLATILE COST 2000
AS 'MODULE_PATHNAME', 'pg_bailian_similarity_default';

CREATE FUNCTION ai_set_default_model(function_name text, model_name text) RETURNS void
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_set_default_model';

-- The prompt object of Hologres (and Snowflake's PROMPT): the template and its arguments,
-- rendered when ai_gen sends it. Plain SQL over PostgreSQL's own functions, with a fixed
-- search_path.
CREATE FUNCTION prompt(template text, VARIADIC args text[] DEFAULT '{}') RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
SELECT CASE WHEN template IS NULL THEN NULL
            ELSE pg_catalog.jsonb_build_object('prompt', template, 'args',
                     COALESCE(pg_catalog.to_jsonb(args), '[]'::pg_catalog.jsonb)) END
$$;

-- Text functions that ask no model.

CREATE FUNCTION ai_chunk(content text, chunk_size int DEFAULT 512, overlap int DEFAULT 64) RETURNS text[]
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pg_bailian_chunk';

CREATE FUNCTION ai_prompt(template text, VARIADIC args text[]) RETURNS text
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pg_bailian_prompt';
