-- pg_bailian 0.4.0 -> 0.5.0, run by ALTER EXTENSION pg_bailian UPDATE.
-- Never edit this file once 0.5.0 is released: a later change to the SQL surface goes into
-- the next version's update script (see DEVELOPERS.md). tests/upgrade.rs checks that a
-- database updated through every script equals a fresh CREATE EXTENSION of the current version.

\echo Use "ALTER EXTENSION pg_bailian UPDATE" to load this file. \quit

-- Issue 21: AI columns that stay current (sql/sync.sql, src/sync/).
CREATE TABLE bailian.syncs (
    sync_name     text PRIMARY KEY CHECK (sync_name ~ '^[A-Za-z_][A-Za-z0-9_]{0,47}$'),
    kind          text NOT NULL CHECK (kind IN ('column', 'chunks')),
    -- The table whose column is filled (for chunks: the destination table of chunks).
    table_name    regclass NOT NULL,
    target_column name NOT NULL,
    expression    text NOT NULL,
    filter        text,
    -- Chunks: the documents, the expression of their text, and how they are cut.
    source_table  regclass,
    content       text,
    chunk_size    int CHECK (chunk_size BETWEEN 1 AND 1000000),
    chunk_overlap int CHECK (chunk_overlap >= 0),
    owner         name NOT NULL,
    -- The search_path the expression and filter were written for, set whenever they run.
    search_path   text NOT NULL,
    paused        boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK ((kind = 'chunks') = (source_table IS NOT NULL AND content IS NOT NULL))
);
COMMENT ON TABLE bailian.syncs IS 'Syncs made by ai_sync_create and ai_sync_chunks; read through ai_syncs. Dumped by pg_dump with the tables they keep.';
SELECT pg_catalog.pg_extension_config_dump('bailian.syncs', '');

-- What the workers found, not dumped: a restored sync starts with no row here, which makes
-- the worker queue its table's unfilled rows again (the queue names tables by oid).
CREATE TABLE bailian.sync_state (
    sync_name     text PRIMARY KEY REFERENCES bailian.syncs (sync_name) ON DELETE CASCADE,
    relid         oid NOT NULL,
    state         text NOT NULL DEFAULT 'running'
                  CHECK (state IN ('running', 'waiting for budget', 'failing', 'stopped')),
    rows_filled   bigint NOT NULL DEFAULT 0,
    rows_failed   bigint NOT NULL DEFAULT 0,
    last_error    text,
    last_sqlstate text,
    last_run      timestamptz,
    retry_at      timestamptz,
    backoff       float8 NOT NULL DEFAULT 0
);
COMMENT ON TABLE bailian.sync_state IS 'Where each sync stands, as its worker last saw it; read through ai_syncs.';

-- Rows a sync must fill: the key of each row inserted, or changed in a column the expression
-- or filter reads, queued by the sync's trigger. queued_at is the first change not filled yet
-- (the lag), changed_at the last; run marks the entries a fill has taken, and a change after
-- that clears it, so that the fill leaves the entry for the next one.
CREATE TABLE ai_sync_queue (
    sync_name  text NOT NULL,
    relid      oid NOT NULL,
    key        text[] NOT NULL,
    queued_at  timestamptz NOT NULL,
    changed_at timestamptz NOT NULL,
    run        bigint,
    -- A row a fill left queued (held locked by another transaction, or failing for a
    -- transient reason) waits until then, so that newer entries are not starved by it.
    not_before timestamptz,
    PRIMARY KEY (sync_name, relid, key)
);
CREATE INDEX ai_sync_queue_run ON ai_sync_queue (sync_name, relid, run);
-- A fill takes the oldest entries first.
CREATE INDEX ai_sync_queue_age ON ai_sync_queue (sync_name, relid, queued_at);
-- A role sees only rows of tables it may read (some columns of, at least): the fill reads the
-- queue as the sync's owner. Only the extension writes it (as the catalog owner).
ALTER TABLE ai_sync_queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON ai_sync_queue FOR SELECT
    USING (pg_catalog.has_any_column_privilege(relid, 'SELECT'));
COMMENT ON TABLE ai_sync_queue IS 'Keys of the rows each sync has still to fill (key: the primary key columns as text, in order); queued_at is when the row became pending. Rows of tables you may read only.';

CREATE TABLE bailian.sync_errors (
    sync_name text NOT NULL REFERENCES bailian.syncs (sync_name) ON DELETE CASCADE,
    key       text[] NOT NULL,
    sqlstate  text NOT NULL,
    message   text NOT NULL,
    failed_at timestamptz NOT NULL,
    PRIMARY KEY (sync_name, key)
);
COMMENT ON TABLE bailian.sync_errors IS 'Rows a sync could not fill, with the error; read through ai_sync_errors, retried by ai_sync_resume.';

CREATE FUNCTION ai_sync_create(sync_name text, table_name regclass, target_column name, expression text,
                               filter text DEFAULT NULL, refill boolean DEFAULT false)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_sync_create';

CREATE FUNCTION ai_sync_chunks(sync_name text, source regclass, content text, destination name, embedding text,
                               chunk_size int DEFAULT 512, overlap int DEFAULT 64)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_sync_chunks';

CREATE FUNCTION ai_sync_pause(sync_name text) RETURNS void
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'pg_bailian_sync_pause';

CREATE FUNCTION ai_sync_resume(sync_name text) RETURNS bigint
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'pg_bailian_sync_resume';

CREATE FUNCTION ai_sync_drop(sync_name text) RETURNS void
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'pg_bailian_sync_drop';

CREATE PROCEDURE ai_sync_run(sync_name text)
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_sync_run';

-- The trigger of a column sync: the target of an inserted or changed row becomes NULL, and its
-- key is queued (as the catalog owner: writers need no rights on the queue).
-- Only the triggers ai_sync_create makes (as the catalog owner) run it.
CREATE FUNCTION bailian.sync_mark() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_bailian_sync_mark';

CREATE VIEW ai_syncs AS
SELECT s.sync_name, s.kind, s.table_name, s.target_column, s.expression, s.filter,
       s.source_table, s.content, s.owner,
       CASE WHEN s.paused THEN 'paused'
            WHEN NOT EXISTS (SELECT FROM pg_catalog.pg_class c
                              WHERE c.oid OPERATOR(pg_catalog.=) s.table_name::pg_catalog.oid) THEN 'stopped'
            ELSE COALESCE(st.state, 'running') END AS state,
       q.pending AS pending_rows,
       COALESCE(st.rows_filled, 0) AS rows_filled,
       e.failed AS failed_rows,
       pg_catalog.now() OPERATOR(pg_catalog.-) q.oldest AS lag,
       st.last_error, st.last_sqlstate, st.last_run, s.created_at
  FROM bailian.syncs s
  LEFT JOIN bailian.sync_state st ON st.sync_name OPERATOR(pg_catalog.=) s.sync_name
  LEFT JOIN LATERAL (SELECT pg_catalog.count(*) AS pending, pg_catalog.min(qq.queued_at) AS oldest
                       FROM @extschema@.ai_sync_queue qq
                      WHERE qq.sync_name OPERATOR(pg_catalog.=) s.sync_name
                        AND qq.relid OPERATOR(pg_catalog.=) s.table_name::pg_catalog.oid) q ON true
  LEFT JOIN LATERAL (SELECT pg_catalog.count(*) AS failed FROM bailian.sync_errors ee
                      WHERE ee.sync_name OPERATOR(pg_catalog.=) s.sync_name) e ON true
 WHERE EXISTS (SELECT FROM pg_catalog.pg_roles r
                WHERE r.rolname OPERATOR(pg_catalog.=) s.owner AND pg_catalog.pg_has_role(r.oid, 'USAGE'))
    OR pg_catalog.has_table_privilege(s.table_name::pg_catalog.oid, 'SELECT');

CREATE VIEW ai_sync_errors AS
SELECT e.sync_name, s.table_name, e.key, e.sqlstate, e.message, e.failed_at
  FROM bailian.sync_errors e
  JOIN bailian.syncs s ON s.sync_name OPERATOR(pg_catalog.=) e.sync_name
 WHERE EXISTS (SELECT FROM pg_catalog.pg_roles r
                WHERE r.rolname OPERATOR(pg_catalog.=) s.owner AND pg_catalog.pg_has_role(r.oid, 'USAGE'))
    OR pg_catalog.has_table_privilege(s.table_name::pg_catalog.oid, 'SELECT');

COMMENT ON FUNCTION ai_sync_create(text, regclass, name, text, text, boolean) IS
  'Keep target_column equal to expression (SQL over the row, e.g. ai_embed(''emb'', title || '' '' || body)) for every row where filter holds: an inserted row, and a row whose columns the expression or filter reads change, gets NULL in the same transaction and is filled by the background worker (or CALL ai_sync_run). Needs a primary key and UPDATE on the target; runs as the role that creates it. Rows already filled are kept unless refill => true. Returns the rows queued now.';
COMMENT ON FUNCTION ai_sync_chunks(text, regclass, text, name, text, int, int) IS
  'Keep a destination table of chunks of source (its primary key, chunk_no, chunk, embedding): content is an expression over a source row, cut by ai_chunk(content, chunk_size, overlap) when a row is inserted or its content changes, in the same transaction (chunks of a deleted row go with it); embedding is an expression over the column chunk, e.g. ai_embed(''emb'', chunk), filled by the background worker like ai_sync_create. Returns the chunks made now.';
COMMENT ON FUNCTION ai_sync_pause(text) IS
  'Stop filling a sync; its triggers still make changed rows NULL and queue them. Its owner (or a member) only.';
COMMENT ON FUNCTION ai_sync_resume(text) IS
  'Fill a paused, stopped or failing sync again, retrying its failed rows (ai_sync_errors); returns the rows queued again. Its owner (or a member) only.';
COMMENT ON FUNCTION ai_sync_drop(text) IS
  'Remove a sync and its triggers (and for chunks, the function that cuts them); the column and any destination table stay. Its owner (or a member) only.';
COMMENT ON PROCEDURE ai_sync_run(text) IS
  'Fill a sync''s queued rows now, in this session, as ai_update does (committing as it goes), whether or not a background worker runs. Its owner (or a member) only.';
COMMENT ON VIEW ai_syncs IS
  'Each sync you own or whose table you may read: state (running, paused, waiting for budget, failing, stopped), pending_rows, rows_filled, failed_rows, lag (age of the oldest pending change), last_error with last_sqlstate, last_run.';
COMMENT ON VIEW ai_sync_errors IS
  'Rows a sync could not fill (key: the primary key as text), with the SQLSTATE and message; ai_sync_resume retries them, and a change to the row does too.';
COMMENT ON FUNCTION bailian.sync_mark() IS
  'Trigger of a column sync: NULLs the target of the row and queues its key.';

GRANT SELECT ON ai_syncs, ai_sync_errors, ai_sync_queue TO PUBLIC;
GRANT EXECUTE ON FUNCTION ai_sync_create(text, regclass, name, text, text, boolean),
    ai_sync_chunks(text, regclass, text, name, text, int, int), ai_sync_pause(text), ai_sync_resume(text),
    ai_sync_drop(text) TO PUBLIC;
GRANT EXECUTE ON PROCEDURE ai_sync_run(text) TO PUBLIC;
REVOKE EXECUTE ON FUNCTION bailian.sync_mark() FROM PUBLIC;
DO $owner$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) 'pg_database_owner') THEN
        GRANT USAGE ON SCHEMA bailian TO pg_database_owner;
        GRANT SELECT ON bailian.syncs TO pg_database_owner;
    END IF;
END
$owner$;
