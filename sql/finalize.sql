-- The user-facing view, privileges and documentation of every object.

CREATE VIEW ai_models AS
SELECT model_name, model_type, task, key_hint, params,
       max_retries, initial_retry_delay, max_retry_delay, timeout,
       region, base_url, endpoint, requests_per_minute, tokens_per_minute,
       deployed_by, deployed_at, provider, workspace, cache, batch_chat
  FROM bailian.models;

-- Every task prompt: the default (model_name NULL) and each model's replacement.
CREATE VIEW ai_prompts AS
SELECT d.function_name, NULL::text AS model_name, d.prompt, true AS is_default, d.placeholders,
       d.response_schema, NULL::name AS set_by, NULL::timestamptz AS set_at
  FROM bailian.default_prompts() d
UNION ALL
SELECT p.function_name, p.model_name, p.prompt, false, d.placeholders, d.response_schema, p.set_by, p.set_at
  FROM bailian.prompts p
  JOIN bailian.default_prompts() d ON d.function_name OPERATOR(pg_catalog.=) p.function_name;

-- Hologres' model list: pg_bailian's models with Hologres' column and task names.
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

-- The default model of each model-less AI function: the one set, the one a call uses now, and
-- why (computed by bailian.default_model_choices(), the same code the calls resolve with).
CREATE VIEW ai_default_models AS
SELECT function_name, tasks, model_name, set_by, set_at, effective_model, source
  FROM bailian.default_model_choices();

-- Privileges are set here and nowhere else. ALTER DEFAULT PRIVILEGES in force for the role
-- running CREATE EXTENSION would otherwise grant on the objects just created (SELECT on the
-- key table, EXECUTE on ai_deploy_model, CREATE on the bailian schema) to whoever it names:
-- every grant on an object of the extension to a role other than its owner is revoked first.
DO $acl$
DECLARE
    statement text;
BEGIN
    FOR statement IN
        WITH ext AS (
            SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pg_bailian'
        ), objects AS (
            SELECT 'TABLE ' OPERATOR(pg_catalog.||) c.oid::pg_catalog.regclass::pg_catalog.text AS object,
                   c.relacl AS acl, c.relowner AS owner
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_depend d ON d.objid OPERATOR(pg_catalog.=) c.oid
               AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
             WHERE d.refobjid OPERATOR(pg_catalog.=) (SELECT oid FROM ext) AND d.deptype OPERATOR(pg_catalog.=) 'e'
            UNION ALL
            SELECT 'ROUTINE ' OPERATOR(pg_catalog.||) p.oid::pg_catalog.regprocedure::pg_catalog.text, p.proacl, p.proowner
              FROM pg_catalog.pg_proc p
              JOIN pg_catalog.pg_depend d ON d.objid OPERATOR(pg_catalog.=) p.oid
               AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
             WHERE d.refobjid OPERATOR(pg_catalog.=) (SELECT oid FROM ext) AND d.deptype OPERATOR(pg_catalog.=) 'e'
            UNION ALL
            SELECT 'SCHEMA bailian', n.nspacl, n.nspowner
              FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'bailian'
        )
        SELECT pg_catalog.format('REVOKE ALL ON %s FROM %s', o.object,
                   CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                        ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END)
          FROM objects o, pg_catalog.aclexplode(o.acl) a
         WHERE a.grantee OPERATOR(pg_catalog.<>) o.owner
         GROUP BY o.object, a.grantee
    LOOP
        EXECUTE statement;
    END LOOP;
END
$acl$;

-- What everyone may use, granted explicitly: default privileges that revoke EXECUTE from
-- PUBLIC must not take the AI functions away from their users either.
GRANT SELECT ON ai_models, ai_prompts, ai_default_models TO PUBLIC;
GRANT EXECUTE ON FUNCTION ai_gen(text, text, jsonb), ai_gen(text), ai_translate(text, text, text, jsonb),
    ai_embed(text, text), ai_embed_batch(text, text[]), ai_gen_batch(text, text[], jsonb),
    ai_chat(text, jsonb, jsonb), ai_gen_audio(text, text, jsonb),
    ai_embed_image(text, text), ai_embed_image(text, bytea),
    ai_supported_models(),
    ai_gen_structured(text, text, jsonb, text, jsonb), ai_classify(text, text, text[]),
    ai_extract(text, text, text[]), ai_mask(text, text, text[]), ai_summarize(text, text, int),
    ai_fix_grammar(text, text), ai_sentiment(text, text), ai_rank(text, text, text),
    ai_similarity(text, text, text), ai_chunk(text, int, int), ai_prompt(text, text[]),
    bailian.default_prompts() TO PUBLIC;
GRANT EXECUTE ON FUNCTION ai_gen(text, jsonb, jsonb), ai_gen(jsonb), ai_embed(text), ai_embed(text, bytea, text),
    ai_translate(text, text), ai_classify(text, text[]), ai_extract(text, text[]), ai_mask(text, text[]),
    ai_summarize(text), ai_fix_grammar(text), ai_sentiment(text), ai_rank(text, text), ai_similarity(text, text),
    prompt(text, text[]), list_external_models(), bailian.default_model_choices() TO PUBLIC;
GRANT EXECUTE ON PROCEDURE ai_update(regclass, name, text, int, text, text),
    ai_embed_column(regclass, name, name, text, int, text),
    ai_gen_column(regclass, name, name, text, text, int, jsonb, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION ai_batch_cancel(bigint) TO PUBLIC;
-- On Citus, a column job's part on each node runs as the calling role (sql/citus.sql).
GRANT EXECUTE ON PROCEDURE ai_update_local_shards(regclass, name, text, int, text, text, float8, text, bigint[], bigint, text[], text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION ai_citus_check(), bailian.refuse_on_worker(text), bailian.worker_rows(text),
    ai_update_release_share(bigint, float8), ai_update_rows_to_fill(regclass, name, text, text) TO PUBLIC;
REVOKE EXECUTE ON FUNCTION ai_citus_enable() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION bailian.master_key_id(), bailian.json_probe(), bailian.forget_answers(text) FROM PUBLIC;
GRANT SELECT ON ai_batches TO PUBLIC;

-- Syncs (sql/sync.sql): every role may keep its own columns current; the functions check
-- ownership and privileges themselves.
GRANT SELECT ON ai_syncs, ai_sync_errors, ai_sync_queue TO PUBLIC;
GRANT EXECUTE ON FUNCTION ai_sync_create(text, regclass, name, text, text, boolean),
    ai_sync_chunks(text, regclass, text, name, text, int, int), ai_sync_pause(text), ai_sync_resume(text),
    ai_sync_drop(text) TO PUBLIC;
GRANT EXECUTE ON PROCEDURE ai_sync_run(text) TO PUBLIC;
REVOKE EXECUTE ON FUNCTION bailian.sync_mark() FROM PUBLIC;

-- pg_dump dumps the three catalog tables (pg_extension_config_dump), so whoever dumps the
-- database must read them: its owner may (the keys in them are sealed). PostgreSQL 14 and
-- later have pg_database_owner, which follows ALTER DATABASE ... OWNER TO.
DO $owner$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) 'pg_database_owner') THEN
        GRANT USAGE ON SCHEMA bailian TO pg_database_owner;
        GRANT SELECT ON bailian.models, bailian.model_keys, bailian.prompts, bailian.default_models TO pg_database_owner;
        GRANT SELECT ON bailian.syncs TO pg_database_owner;
    END IF;
END
$owner$;

-- Deploying is for administrators: GRANT EXECUTE to a role to delegate it.
REVOKE EXECUTE ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ai_undeploy_model(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ai_set_prompt(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ai_set_default_model(text, text) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE register_external_model(text, text, text, json, text) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE delete_external_model(text) FROM PUBLIC;

COMMENT ON VIEW ai_models IS
  'Deployed Bailian models, one row each, with a key hint (sk-...abcd or env:NAME) and never the key.';
COMMENT ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean) IS
  'Deploy a model under model_name: model_type from ai_supported_models() for the provider (''bailian'', the default, or ''opensearch'' with base_url => the instance host and workspace, default ''default''), api_key ''sk-...'' or for OpenSearch ''OS-...'' (stored encrypted), ''env:NAME'' (names in pg_bailian.allowed_env_keys) or ''file:/path'' (under pg_bailian.key_directory), default params, retry settings (max_retries [0,100], initial_retry_delay [0.5,8] s, max_retry_delay [1,60] s, timeout [1,1200] s), region or base_url (for non-superusers, a host in pg_bailian.allowed_hosts), client-side rate limits (requests_per_minute, tokens_per_minute: NULL takes Bailian''s documented limit for the model and region where requests go to Bailian, 0 none; see ai_rate_limits), shared by every session that sends the same key to the same model and host. replace => true redeploys an existing name, only by the role that deployed it, its members or a superuser. cache => true keeps the model''s answers in the answer cache (chat, translation and embedding models without web search; see ai_cache). batch_chat => true sends its chat calls to Bailian''s Batch Chat at half price (Beijing; qwen3-max, qwen-plus, qwen-flash, deepseek-v3.2, qwen3-vl-plus, qwen3-vl-flash; timeout [60,3600] s; each call may wait in Bailian''s queue up to the timeout). Not executable by PUBLIC: GRANT EXECUTE to delegate.';
COMMENT ON FUNCTION ai_undeploy_model(text) IS
  'Remove a deployed model and its key; returns false if no model had that name. Only the role that deployed it, its members or a superuser. Not executable by PUBLIC.';
COMMENT ON FUNCTION ai_gen(text, text, jsonb) IS
  'Generate text with a deployed chat model. params override the deployed ones for this call (temperature, top_p, max_tokens, seed, stop, system, enable_thinking, images for vision models; timeout and max_retries, which may only lower the deployed values). NULL prompt returns NULL. Under pg_bailian.on_error = ''null'' a failed request gives NULL and a WARNING, as for every AI function.';
COMMENT ON FUNCTION ai_gen(text) IS
  'Generate text with the default model of ai_gen: pg_bailian.default_chat_model, else the one ai_set_default_model set, else the only deployed chat model (see ai_default_models).';
COMMENT ON FUNCTION ai_chat(text, jsonb, jsonb) IS
  'A conversation with a deployed chat model: messages is a JSON array of {"role": "system"|"user"|"assistant", "content": text or content parts (image_url parts for vision models)}. Returns {"content", "reasoning_content", "finish_reason", "usage", "model", "request_id"} (OpenSearch adds "search_results"). Streams where the model or params need it (QwQ, Qwen-Omni, enable_thinking). params as for ai_gen.';
COMMENT ON FUNCTION ai_gen_audio(text, text, jsonb) IS
  'The spoken answer of a Qwen-Omni model to prompt, as a WAV file (16-bit mono PCM, 24 kHz); params.voice (or audio.voice) picks the voice, default Cherry. NULL prompt returns NULL.';
COMMENT ON FUNCTION ai_embed_image(text, text) IS
  'Embed an image with a deployed multimodal embedding model (multimodal-embedding-v1, tongyi-embedding-vision-*, qwen3-vl-embedding): an https URL or a data:image/...;base64, URI. Returns the deployed dimension as real[]; NULL or empty returns NULL.';
COMMENT ON FUNCTION ai_embed_image(text, bytea) IS
  'Embed image bytes (JPEG, PNG, BMP, WEBP or TIFF, detected from the bytes) with a deployed multimodal embedding model, sent as a data URI. Returns the deployed dimension as real[]; NULL or empty returns NULL.';
COMMENT ON FUNCTION ai_translate(text, text, text, jsonb) IS
  'Translate content into target_lang with a Qwen-MT model (translation_options: source_lang, terms, tm_list, domains) or, on a chat model, through a prompt. NULL content returns NULL.';
COMMENT ON FUNCTION ai_embed(text, text) IS
  'Embed content with a deployed embedding model (multimodal models through the DashScope native API); returns the deployed dimension (or the model default) as real[]. NULL or empty content returns NULL.';
COMMENT ON FUNCTION ai_supported_models() IS
  'Every model pg_bailian can deploy, by provider (bailian, opensearch): task, inputs, outputs, deployable params, per-call params, embedding dimensions and default, inputs per embedding request.';
COMMENT ON FUNCTION ai_embed_batch(text, text[]) IS
  'Embed an array of texts: one row per element (ord is 1-based, NULL or empty text gives a NULL embedding), inputs packed up to the model''s per-request limit, up to pg_bailian.max_concurrency requests in flight. Fails as a whole if a request fails after retries, unless pg_bailian.on_error = ''null'': then that element''s embedding is NULL, with a WARNING.';
COMMENT ON FUNCTION ai_gen_batch(text, text[], jsonb) IS
  'Generate for an array of prompts: one row per element (ord is 1-based) with the response, or the error (SQLSTATE: message) of a prompt that failed after retries; up to pg_bailian.max_concurrency requests in flight.';
COMMENT ON PROCEDURE ai_update(regclass, name, text, int, text, text) IS
  'Fill target_column with the value of expression (any SQL expression over the row, e.g. ai_embed(''emb'', title || '' '' || body)) for rows where the target is NULL and filter (SQL over the row, optional) holds, in primary-key order, committing every batch_size rows with a progress NOTICE; AI calls run concurrently and batched. Stop it any time; CALL again to resume. A row whose calls, expression or write fail keeps NULL and is reported by key; rows another transaction holds are skipped and reported; sessions filling the same column share the work. mode => ''batch'' sends the rows'' requests through Bailian''s Batch File API at half the price instead: the first CALL submits them, later CALLs with the same arguments say how far Bailian is and, once its batches have ended, write the rows (see ai_batches, ai_batch_cancel).';
COMMENT ON PROCEDURE ai_embed_column(regclass, name, name, text, int, text) IS
  'Fill target_column (real[], or pgvector vector/halfvec) with embeddings of source_column for rows where the target is NULL and the source has text, in primary-key order, committing every batch_size rows with a progress NOTICE. Stop it any time; CALL again to resume. A row whose request or write fails keeps NULL and is reported by key; rows another transaction holds are skipped and reported; sessions filling the same column share the work. mode => ''batch'' sends the rows'' requests through Bailian''s Batch File API at half the price instead: the first CALL submits them, later CALLs with the same arguments say how far Bailian is and, once its batches have ended, write the rows (see ai_batches, ai_batch_cancel).';
COMMENT ON PROCEDURE ai_gen_column(regclass, name, name, text, text, int, jsonb, text) IS
  'Fill target_column (text or varchar) with ai_gen(model_name, prompt_template with {0} replaced by source_column, params) for rows where the target is NULL and the source is not, in primary-key order, committing every batch_size rows with a progress NOTICE. Stop it any time; CALL again to resume. A row whose request or write fails keeps NULL and is reported by key; rows another transaction holds are skipped and reported; sessions filling the same column share the work. mode => ''batch'' sends the rows'' requests through Bailian''s Batch File API at half the price instead: the first CALL submits them, later CALLs with the same arguments say how far Bailian is and, once its batches have ended, write the rows (see ai_batches, ai_batch_cancel).';
COMMENT ON VIEW ai_prompts IS
  'The prompt of each task function (ai_classify, ai_extract, ai_mask, ai_summarize, ai_fix_grammar, ai_sentiment, ai_rank): the default (model_name NULL, is_default) and each model''s replacement set with ai_set_prompt, with the placeholders it may use and the JSON Schema of the answer. Readable by every role, like ai_models: a prompt is no secret.';
COMMENT ON FUNCTION bailian.default_prompts() IS
  'The built-in prompt and answer schema of each task function; read it through ai_prompts.';
COMMENT ON FUNCTION ai_set_prompt(text, text, text) IS
  'Replace the prompt of a task function (''ai_classify'', ''ai_extract'', ''ai_mask'', ''ai_summarize'', ''ai_fix_grammar'', ''ai_sentiment'', ''ai_rank'') for one deployed model; NULL goes back to the default. The prompt is the system message, may use only the function''s placeholders ({labels}, {max_words}; {{ and }} for literal braces), and the answer schema stays the same. Every role can read it in ai_prompts. Only the role that deployed the model (a chat model the task functions can use), its members or a superuser. Not executable by PUBLIC.';
COMMENT ON FUNCTION ai_gen_structured(text, text, jsonb, text, jsonb) IS
  'Generate JSON with a deployed chat model through Bailian''s structured output: response_format is a JSON Schema (sent in strict JSON-Schema mode), {"type": "json_object"} (the prompt must mention JSON), or Bailian''s own {"type": "json_schema", "json_schema": {...}}. The answer is checked against the schema here too. A row whose request fails after retries or whose answer is not JSON (ZBI01) or breaks the schema (ZBI02): on_error ''capture'' (default) returns {"error": {"sqlstate", "message", "detail", "hint"}}, ''skip'' NULL, ''abort'' raises, NULL follows pg_bailian.on_error. params as for ai_gen.';
COMMENT ON FUNCTION ai_classify(text, text, text[]) IS
  'The label among labels that fits content best, by a chat model with structured output (the label is an enum of the answer schema, so it is always one of labels). A wrong answer is ZBI01/ZBI02; pg_bailian.on_error = ''null'' makes it NULL with a WARNING.';
COMMENT ON FUNCTION ai_extract(text, text, text[]) IS
  'A jsonb object with exactly the keys in labels, each the value content states for it (a string) or null, by a chat model with structured output.';
COMMENT ON FUNCTION ai_mask(text, text, text[]) IS
  'content with the occurrences of the kinds of information in labels (e.g. ''email'', ''phone'', ''person'') that the model finds replaced by [MASKED] (whole words only): the model lists them, pg_bailian replaces them, so the rest of the text is kept exactly. Best effort: what the model misses stays; check before relying on it for personal data.';
COMMENT ON FUNCTION ai_summarize(text, text, int) IS
  'A summary of content in at most max_words words (1 to 10000, default 50), in the language of the text, by a chat model with structured output.';
COMMENT ON FUNCTION ai_fix_grammar(text, text) IS
  'content with its grammar, spelling and punctuation corrected, meaning, tone and language kept, by a chat model with structured output.';
COMMENT ON FUNCTION ai_sentiment(text, text) IS
  'The sentiment of content: positive, negative, neutral or mixed, by a chat model with structured output. Empty content returns NULL without a request (so do the other task functions).';
COMMENT ON FUNCTION ai_rank(text, text, text) IS
  'How relevant document is to query, in [0, 1]: on a rerank model (gte-rerank-v2, qwen3-rerank) its relevance_score from the text rerank API, on a chat model a score asked for through structured output (the two scales are not the same). NULL or empty query or document returns NULL.';
COMMENT ON FUNCTION ai_similarity(text, text, text) IS
  'The cosine similarity in [-1, 1] of the embeddings of a and b by a deployed embedding model (one request for both). NULL or empty text returns NULL.';
COMMENT ON FUNCTION ai_chunk(text, int, int) IS
  'content split into pieces of at most chunk_size characters (default 512), cut at paragraph, then sentence, then word boundaries, consecutive pieces sharing about overlap characters starting at a word (default 64, which must be less than chunk_size: pass overlap with a chunk_size of 64 or less); pieces are trimmed. At most 8M characters in and 64 MB of pieces out (54000 past either). Asks no model.';
COMMENT ON FUNCTION ai_prompt(text, text[]) IS
  'template with {0}, {1}, ... replaced by the arguments after it (NULL as empty text); {{ and }} are literal braces. At most 64 MB out (54000, refused before it is built). Asks no model.';

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

-- Operating it (sql/operating.sql).
GRANT SELECT ON ai_prices, ai_usage, ai_budgets, ai_activity, ai_rate_limits, ai_cache TO PUBLIC;
GRANT EXECUTE ON FUNCTION ai_count_tokens(text, text), ai_estimate(text), ai_set_budget(name, text, numeric, text, text), ai_drop_budget(name, text),
    bailian.usage_rows(), bailian.budget_spent(), bailian.activity_rows(), bailian.rate_limit_rows(),
    bailian.scope(), bailian.cache_rows() TO PUBLIC;
REVOKE EXECUTE ON FUNCTION ai_usage_reset() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ai_cache_clear(text) FROM PUBLIC;
-- Only ai_prices' trigger runs it (a trigger function cannot be called directly anyway).
REVOKE EXECUTE ON FUNCTION bailian.set_price() FROM PUBLIC;
DO $owner$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) 'pg_database_owner') THEN
        GRANT SELECT ON bailian.budgets, bailian.budget_ids TO pg_database_owner;
        GRANT SELECT, INSERT, UPDATE, DELETE ON bailian.prices TO pg_database_owner;
        GRANT INSERT, UPDATE, DELETE ON ai_prices TO pg_database_owner;
        GRANT EXECUTE ON FUNCTION ai_usage_reset() TO pg_database_owner;
    END IF;
END
$owner$;
