-- ai_embed_column and ai_gen_column: fill a column of any table with a primary key, in
-- primary-key order, committing every batch_size rows. Written in Rust (src/functions/column/),
-- so no statement they run depends on the caller's search_path. They run with the caller's
-- rights: reading and updating the table is the caller's business.

CREATE PROCEDURE ai_embed_column(table_name regclass, source_column name, target_column name,
                                 model_name text, batch_size int DEFAULT 1000)
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_embed_column';

CREATE PROCEDURE ai_gen_column(table_name regclass, source_column name, target_column name,
                               model_name text, prompt_template text DEFAULT '{0}', batch_size int DEFAULT 100,
                               params jsonb DEFAULT NULL)
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_gen_column';
