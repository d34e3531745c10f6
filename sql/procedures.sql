-- ai_update fills a column of any table with a primary key from any SQL expression over the
-- row, in primary-key order, committing every batch_size rows; ai_embed_column and
-- ai_gen_column are ai_update with an expression made for them. Written in Rust
-- (src/functions/column/), so no statement they run besides the caller's own expression and
-- filter depends on the caller's search_path. They run with the caller's rights: reading and
-- updating the table is the caller's business.

CREATE PROCEDURE ai_update(table_name regclass, target_column name, expression text,
                           batch_size int DEFAULT 1000, filter text DEFAULT NULL, mode text DEFAULT 'live')
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_update';

CREATE PROCEDURE ai_embed_column(table_name regclass, source_column name, target_column name,
                                 model_name text, batch_size int DEFAULT 1000, mode text DEFAULT 'live')
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_embed_column';

CREATE PROCEDURE ai_gen_column(table_name regclass, source_column name, target_column name,
                               model_name text, prompt_template text DEFAULT '{0}', batch_size int DEFAULT 100,
                               params jsonb DEFAULT NULL, mode text DEFAULT 'live')
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_gen_column';

-- Hologres' model management: register_external_model is ai_deploy_model with its arguments
-- in a config JSON (src/functions/deploy.rs), delete_external_model is ai_undeploy_model that
-- fails for a name no model has.
CREATE PROCEDURE register_external_model(model_name text, model_type text, model_provider text,
                                         config json, task text)
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_register_external_model';

CREATE PROCEDURE delete_external_model(model_name text)
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_delete_external_model';
