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
