-- pg_bailian catalog: deployed models and their keys, in a schema of the extension's own.
-- Neither table is readable by PUBLIC; users see models through the ai_models view, and the
-- AI functions read keys as the catalog owner (see src/catalog.rs). Literal keys are stored
-- sealed with a master key that lives outside the database (bailian_core::keystore).

CREATE SCHEMA bailian;
COMMENT ON SCHEMA bailian IS 'pg_bailian internals: deployed models and their API keys. Use ai_models and the ai_* functions instead.';
REVOKE ALL ON SCHEMA bailian FROM PUBLIC;

CREATE TABLE bailian.models (
    model_name          text PRIMARY KEY,
    provider            text NOT NULL DEFAULT 'bailian' CHECK (provider IN ('bailian', 'opensearch')),
    model_type          text NOT NULL,
    task                text NOT NULL CHECK (task IN ('chat', 'translation', 'embedding', 'rerank')),
    params              jsonb NOT NULL DEFAULT '{}',
    max_retries         int NOT NULL CHECK (max_retries BETWEEN 0 AND 100),
    initial_retry_delay float8 NOT NULL CHECK (initial_retry_delay BETWEEN 0.5 AND 8),
    max_retry_delay     float8 NOT NULL CHECK (max_retry_delay BETWEEN 1 AND 60),
    -- Up to 1200 s, or 3600 s for Batch Chat (checked by ai_deploy_model).
    timeout             float8 NOT NULL CHECK (timeout BETWEEN 1 AND 3600),
    region              text NOT NULL CHECK (region IN ('beijing', 'singapore', 'virginia')),
    base_url            text,
    workspace           text CHECK ((provider = 'opensearch') = (workspace IS NOT NULL)),
    endpoint            text NOT NULL,
    requests_per_minute int CHECK (requests_per_minute >= 0),
    tokens_per_minute   int CHECK (tokens_per_minute >= 0),
    key_hint            text NOT NULL,
    deployed_by         name NOT NULL,
    deployed_at         timestamptz NOT NULL,
    -- Answers kept in bailian.answer_cache (ai_deploy_model(..., cache => true)).
    cache               boolean NOT NULL DEFAULT false,
    -- Chat calls go to Bailian's Batch Chat (ai_deploy_model(..., batch_chat => true)).
    batch_chat          boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE bailian.models IS 'Deployed models of Bailian and OpenSearch (no keys). Written by ai_deploy_model, read through ai_models.';

CREATE TABLE bailian.model_keys (
    model_name text PRIMARY KEY REFERENCES bailian.models (model_name) ON DELETE CASCADE ON UPDATE CASCADE,
    api_key    text NOT NULL
);
COMMENT ON TABLE bailian.model_keys IS 'API keys of deployed models: ''env:NAME'', ''file:/path'', or a literal key sealed with the cluster''s master key (''sealed:...''). Readable only by its owner and the database owner (for pg_dump).';

CREATE TABLE bailian.prompts (
    model_name    text NOT NULL REFERENCES bailian.models (model_name) ON DELETE CASCADE ON UPDATE CASCADE,
    function_name text NOT NULL CHECK (function_name IN ('ai_classify', 'ai_extract', 'ai_mask', 'ai_summarize',
                                                          'ai_fix_grammar', 'ai_sentiment', 'ai_rank')),
    prompt        text NOT NULL,
    set_by        name NOT NULL,
    set_at        timestamptz NOT NULL,
    PRIMARY KEY (model_name, function_name)
);
COMMENT ON TABLE bailian.prompts IS 'Task prompts replaced per model with ai_set_prompt; read through ai_prompts.';

-- The model each model-less call uses (ai_embed(content), ai_classify(content, labels), ...),
-- as a DBA set it with ai_set_default_model; a function without a row here uses the only
-- deployed model of its task (see src/catalog.rs, defaults). A mapping goes with its model:
-- undeploying the model removes it (the function is then back to automatic).
CREATE TABLE bailian.default_models (
    function_name text PRIMARY KEY CHECK (function_name IN ('ai_gen', 'ai_embed', 'ai_translate', 'ai_classify',
                                                            'ai_extract', 'ai_mask', 'ai_summarize', 'ai_fix_grammar',
                                                            'ai_sentiment', 'ai_rank', 'ai_similarity')),
    model_name    text NOT NULL REFERENCES bailian.models (model_name) ON DELETE CASCADE ON UPDATE CASCADE,
    set_by        name NOT NULL,
    set_at        timestamptz NOT NULL
);
COMMENT ON TABLE bailian.default_models IS 'The default model of each model-less AI function, set with ai_set_default_model; read through ai_default_models.';

REVOKE ALL ON bailian.models, bailian.model_keys, bailian.prompts, bailian.default_models FROM PUBLIC;

-- Deployed models survive pg_dump / pg_restore.
SELECT pg_catalog.pg_extension_config_dump('bailian.models', '');
SELECT pg_catalog.pg_extension_config_dump('bailian.model_keys', '');
SELECT pg_catalog.pg_extension_config_dump('bailian.prompts', '');
SELECT pg_catalog.pg_extension_config_dump('bailian.default_models', '');
