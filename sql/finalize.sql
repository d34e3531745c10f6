-- The user-facing view, privileges and documentation of every object.

CREATE VIEW ai_models AS
SELECT model_name, model_type, task, key_hint, params,
       max_retries, initial_retry_delay, max_retry_delay, timeout,
       region, base_url, endpoint, requests_per_minute, tokens_per_minute,
       deployed_by, deployed_at
  FROM bailian.models;
GRANT SELECT ON ai_models TO PUBLIC;

-- The column procedures call into the bailian schema with the caller's rights; its tables
-- stay unreadable (no grants on them).
GRANT USAGE ON SCHEMA bailian TO PUBLIC;

-- Deploying is for administrators: GRANT EXECUTE to a role to delegate it.
REVOKE EXECUTE ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ai_undeploy_model(text) FROM PUBLIC;

COMMENT ON VIEW ai_models IS
  'Deployed Bailian models, one row each, with a key hint (sk-...abcd or env:NAME) and never the key.';
COMMENT ON FUNCTION ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int) IS
  'Deploy a Bailian model under model_name: model_type from ai_supported_models(), api_key ''sk-...'' or ''env:NAME'', default params, retry settings (max_retries [0,100], initial_retry_delay [0.5,8] s, max_retry_delay [1,60] s, timeout [1,1200] s), region or base_url, optional client-side rate limits. replace => true redeploys an existing name. Administrators only.';
COMMENT ON FUNCTION ai_undeploy_model(text) IS
  'Remove a deployed model and its key; returns false if no model had that name. Administrators only.';
COMMENT ON FUNCTION ai_gen(text, text, jsonb) IS
  'Generate text with a deployed chat model. params override the deployed ones for this call (temperature, top_p, max_tokens, seed, stop, system, enable_thinking, images for vision models, timeout, max_retries). NULL prompt returns NULL.';
COMMENT ON FUNCTION ai_gen(text) IS
  'Generate text with the default chat model: pg_bailian.default_chat_model, or the only deployed chat model.';
COMMENT ON FUNCTION ai_translate(text, text, text, jsonb) IS
  'Translate content into target_lang with a Qwen-MT model (translation_options: source_lang, terms, tm_list, domains) or, on a chat model, through a prompt. NULL content returns NULL.';
COMMENT ON FUNCTION ai_embed(text, text) IS
  'Embed content with a deployed embedding model; returns the deployed dimension (or the model default) as real[]. NULL or empty content returns NULL.';
COMMENT ON FUNCTION ai_supported_models() IS
  'Every Bailian model pg_bailian can deploy: task, inputs, outputs, deployable params, per-call params, embedding dimensions and default, inputs per embedding request.';
COMMENT ON FUNCTION ai_embed_batch(text, text[]) IS
  'Embed an array of texts: one row per element (ord is 1-based, NULL or empty text gives a NULL embedding), inputs packed up to the model''s per-request limit, up to pg_bailian.max_concurrency requests in flight. Fails as a whole if a request fails after retries.';
COMMENT ON FUNCTION ai_gen_batch(text, text[], jsonb) IS
  'Generate for an array of prompts: one row per element (ord is 1-based) with the response, or the error (SQLSTATE: message) of a prompt that failed after retries; up to pg_bailian.max_concurrency requests in flight.';
COMMENT ON PROCEDURE ai_embed_column(regclass, name, name, text, int) IS
  'Fill target_column (real[] or pgvector vector) with embeddings of source_column for rows where the target is NULL and the source is not, in primary-key order, committing every batch_size rows with a progress NOTICE. Stop it any time; CALL again to resume. Rows that fail keep NULL and are reported.';
COMMENT ON PROCEDURE ai_gen_column(regclass, name, name, text, text, int, jsonb) IS
  'Fill target_column (text) with ai_gen(model_name, prompt_template with {0} replaced by source_column, params) for rows where the target is NULL and the source is not, in primary-key order, committing every batch_size rows with a progress NOTICE. Stop it any time; CALL again to resume. Rows that fail keep NULL and are reported.';
COMMENT ON PROCEDURE bailian.run_fill(text, text, text, text, text, text, text, bigint, int, text, jsonb) IS
  'Internal: runs an ai_embed_column / ai_gen_column job, committing every batch.';
COMMENT ON PROCEDURE bailian.fill_column(text, text, regclass, name, name, text, int, text, jsonb) IS
  'Internal: argument checks and statements of ai_embed_column / ai_gen_column.';
