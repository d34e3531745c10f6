-- Token counting (src/functions/tokens.rs): exact for Qwen models with Qwen's own vocabulary
-- (pg_bailian.tokenizer_file), a documented approximation for the others.
-- Granted to PUBLIC in finalize.sql (with the functions of operating it): a GRANT here would run before
-- finalize.sql's loop that revokes every grant to a role other than the owner, and be revoked.
-- (In the update script, likewise after its own revoke loop.)

CREATE FUNCTION ai_count_tokens(model_name text, content text) RETURNS integer
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pg_bailian_count_tokens';

COMMENT ON FUNCTION ai_count_tokens(text, text) IS
  'Tokens of content for the deployed model model_name, the text alone (no chat template): exact for Qwen models (qwen*, qwq*), counted as the official DashScope SDK''s local tokenizer counts with Qwen''s vocabulary (pg_bailian.tokenizer_file; empty: qwen.tiktoken in the extension''s share directory); for other models an estimate meant to err high (a word: 1 token per 3 bytes of UTF-8, at least 1; a digit or punctuation mark: 1). Nothing is sent to the model.';
