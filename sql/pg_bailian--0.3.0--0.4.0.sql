-- pg_bailian 0.3.0 -> 0.4.0, run by ALTER EXTENSION pg_bailian UPDATE.
-- Never edit this file once 0.4.0 is released: a later change to the SQL surface goes into
-- the next version's update script (see DEVELOPERS.md). tests/upgrade.rs checks that a
-- database updated through every script equals a fresh CREATE EXTENSION of the current version.

\echo Use "ALTER EXTENSION pg_bailian UPDATE" to load this file. \quit

-- Issue 20: every query shape batched. The AI Batch node keeps the planner's order of quals,
-- which is by security level, then cost: the cheaper AI calls get lower costs, so that of two
-- AND-ed AI quals the cheaper runs first (sql/functions.sql).
ALTER FUNCTION @extschema@.ai_embed(text, text) COST 1000;
ALTER FUNCTION @extschema@.ai_embed(text) COST 1000;
ALTER FUNCTION @extschema@.ai_embed(text, bytea, text) COST 1000;
ALTER FUNCTION @extschema@.ai_embed_image(text, text) COST 1000;
ALTER FUNCTION @extschema@.ai_embed_image(text, bytea) COST 1000;
ALTER FUNCTION @extschema@.ai_similarity(text, text, text) COST 2000;
ALTER FUNCTION @extschema@.ai_similarity(text, text) COST 2000;
ALTER FUNCTION @extschema@.ai_rank(text, text, text) COST 5000;
ALTER FUNCTION @extschema@.ai_rank(text, text) COST 5000;
