-- Jobs through Bailian's Batch File API (CALL ai_update(..., mode => 'batch'); see
-- src/functions/column/batch_file.rs). Written by the extension as the catalog owner; read
-- through ai_batches. Not dumped: a batch belongs to the account and the moment it ran in.
CREATE TABLE bailian.batch_jobs (
    job_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    procedure     text NOT NULL,
    table_name    regclass NOT NULL,
    target_column name NOT NULL,
    expression    text NOT NULL,
    -- The rows the job fills, as its NOTICEs say (e.g. "emb IS NULL AND lang = 'en'").
    scope         text NOT NULL,
    owner         name NOT NULL,
    state         text NOT NULL CHECK (state IN ('submitted', 'collected', 'done')),
    requests      int NOT NULL,
    message       text,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    collected_at  timestamptz,
    finished_at   timestamptz
);
COMMENT ON TABLE bailian.batch_jobs IS 'Jobs run through Bailian''s Batch File API (mode => ''batch''): submitted, collected (answers kept, rows being written), done. Read through ai_batches.';

CREATE TABLE bailian.batches (
    batch_id       text PRIMARY KEY,
    job_id         bigint NOT NULL REFERENCES bailian.batch_jobs (job_id) ON DELETE CASCADE,
    model_name     text NOT NULL,
    endpoint       text NOT NULL,
    input_file_id  text NOT NULL,
    output_file_id text,
    error_file_id  text,
    status         text NOT NULL,
    lines          int NOT NULL,
    total          int,
    completed      int,
    failed         int,
    -- The requests of the batch (their answer keys), to join its result files on.
    custom_ids     text[] NOT NULL,
    -- What the answers are: 'chat', or 'embeddings:<dimension>'.
    expect         text NOT NULL,
    -- Its answers are kept in bailian.batch_answers and counted in ai_usage.
    collected      boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX batches_job_id ON bailian.batches (job_id);
COMMENT ON TABLE bailian.batches IS 'The batches of each batch job, as Bailian last reported them. Read through ai_batches.';

CREATE TABLE bailian.batch_answers (
    job_id bigint NOT NULL REFERENCES bailian.batch_jobs (job_id) ON DELETE CASCADE,
    key    bytea NOT NULL,
    answer bytea,
    error  text,
    PRIMARY KEY (job_id, key)
);
COMMENT ON TABLE bailian.batch_answers IS 'What the batches of a collected job answered, by answer key, until its rows are written.';
REVOKE ALL ON bailian.batch_jobs, bailian.batches, bailian.batch_answers FROM PUBLIC;

CREATE VIEW ai_batches AS
SELECT j.job_id, j.procedure, j.table_name, j.target_column, j.owner, j.state AS job_state, j.requests,
       b.batch_id, b.model_name, b.status AS batch_status, b.lines, b.completed, b.failed,
       j.created_at, b.updated_at, j.collected_at, j.finished_at, j.message
  FROM bailian.batch_jobs j
  LEFT JOIN bailian.batches b ON b.job_id OPERATOR(pg_catalog.=) j.job_id
 WHERE j.owner OPERATOR(pg_catalog.=) CURRENT_USER
    OR pg_catalog.pg_has_role(CURRENT_USER, 'pg_read_all_stats', 'USAGE');
COMMENT ON VIEW ai_batches IS 'Batch jobs (CALL ai_update(..., mode => ''batch'') and the column procedures) and their batches at Bailian: the job''s state (submitted, collected, done), each batch''s status as last seen (validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled) with its lines done and failed. A role sees its own jobs; members of pg_read_all_stats see all.';

CREATE FUNCTION ai_batch_cancel(job_id bigint) RETURNS bigint
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pg_bailian_batch_cancel';
COMMENT ON FUNCTION ai_batch_cancel(bigint) IS 'Ask Bailian to cancel the batches of a batch job still running; lines done before are kept (and billed), and the next CALL of the job collects them and writes their rows. Only the role that made the job or a superuser. Returns how many batches were asked.';
