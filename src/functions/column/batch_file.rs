//! `mode => 'batch'`: a job (`CALL ai_update`, `ai_embed_column`, `ai_gen_column`) run through
//! Bailian's Batch File API at half the price, over as many CALLs as Bailian takes.
//!
//! 1. **Submit** (the first CALL): the job's expression runs over the rows to fill with every
//!    AI call collected instead of sent (`answers::batch`): each distinct request once,
//!    under its answer key as `custom_id`. Each deployment's requests become input files within
//!    the documented limits (`bailian_core::batchfile`), uploaded, and a batch is created for
//!    each. The job and its batches are kept in `bailian.batch_jobs` and `bailian.batches`,
//!    committed after each batch (so no batch Bailian runs is ever unknown here), and the
//!    CALL returns while Bailian works.
//! 2. **Follow** (a later CALL, with the same arguments): the batches are looked up; while one
//!    runs, the CALL says how far they are and returns.
//! 3. **Collect**, once every batch has ended (completed, expired, cancelled or failed): the
//!    output and error files are read, joined on `custom_id`, and every request's answer or
//!    error is kept in `bailian.batch_answers`, costed in `ai_usage` at the batch price, and
//!    committed before the files are deleted at Bailian: an answer paid for is never lost.
//! 4. **Apply**: the job runs as a live job whose calls are answered from those answers,
//!    never sent. A row gets its answer, or is a failed row reported by key (the line's
//!    error, or "not in the batch" for a row whose request changed since it was collected,
//!    which the next batch CALL sends). Then the job is done and its answers are dropped.
//!
//! The CALLs run as the caller; the bookkeeping tables are written as the catalog owner.

use super::{run_job, Job};
use crate::answers::batch::{self as collect, Collected};
use crate::backend;
use crate::catalog::{self, as_catalog_owner, spi_failed};
use crate::spi::NonAtomicSpi;
use bailian_core::answers::{self, Kept};
use bailian_core::batchfile::{self, Answer, Batch, BatchStatus, CompletionWindow, Expect, Limits};
use bailian_core::meter::Meter;
use bailian_core::AiError;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use std::collections::BTreeMap;

/// What a batch job is: the same table, column, expression and rows make the same job.
pub(super) struct Identity {
    pub relid: pg_sys::Oid,
    pub target: String,
}

const OPEN_JOB: &str = "
SELECT job_id, state FROM bailian.batch_jobs
 WHERE table_name OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass
   AND target_column OPERATOR(pg_catalog.=) $2 AND expression OPERATOR(pg_catalog.=) $3
   AND scope OPERATOR(pg_catalog.=) $4 AND owner OPERATOR(pg_catalog.=) $5
   AND state OPERATOR(pg_catalog.=) ANY ('{submitted,collected}'::pg_catalog.text[])
 ORDER BY job_id DESC LIMIT 1";

const NEW_JOB: &str = "
INSERT INTO bailian.batch_jobs (procedure, table_name, target_column, expression, scope, owner, state, requests)
VALUES ($1, $2::pg_catalog.oid::pg_catalog.regclass, $3, $4, $5, $6, 'submitted', $7)
RETURNING job_id";

const NEW_BATCH: &str = "
INSERT INTO bailian.batches (batch_id, job_id, model_name, endpoint, input_file_id, status, lines, custom_ids, expect)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

const BATCHES: &str = "
SELECT batch_id, model_name, status, custom_ids, expect, collected FROM bailian.batches
 WHERE job_id OPERATOR(pg_catalog.=) $1 ORDER BY batch_id";

const COLLECTED: &str = "
UPDATE bailian.batches SET collected = true, updated_at = pg_catalog.now() WHERE batch_id OPERATOR(pg_catalog.=) $1";

const TALLY: &str = "
SELECT pg_catalog.count(answer), pg_catalog.count(error) FROM bailian.batch_answers WHERE job_id OPERATOR(pg_catalog.=) $1";

const SET_BATCH: &str = "
UPDATE bailian.batches SET status = $2, total = $3, completed = $4, failed = $5, output_file_id = $6,
       error_file_id = $7, updated_at = pg_catalog.now()
 WHERE batch_id OPERATOR(pg_catalog.=) $1";

const SET_JOB: &str = "
UPDATE bailian.batch_jobs SET state = $2, message = COALESCE($3, message),
       collected_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'collected' THEN pg_catalog.now() ELSE collected_at END,
       finished_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'done' THEN pg_catalog.now() ELSE finished_at END
 WHERE job_id OPERATOR(pg_catalog.=) $1";

const KEEP_ANSWER: &str = "
INSERT INTO bailian.batch_answers (job_id, key, answer, error) VALUES ($1, $2, $3, $4)
ON CONFLICT (job_id, key) DO UPDATE SET answer = EXCLUDED.answer, error = EXCLUDED.error";

const DROP_ANSWERS: &str = "DELETE FROM bailian.batch_answers WHERE job_id OPERATOR(pg_catalog.=) $1";

/// How long Bailian may take: its shortest window (research §1.4).
const WINDOW_HOURS: u32 = 24;

/// Runs the step of batch job `job` that is due now (see the module doc).
pub(super) fn run(job: Job, identity: Identity) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = job.procedure;
    job.table.check_privileges(procedure)?;
    let (_, caller) = catalog::current_user();
    let owner = catalog::catalog_owner();
    let open: Option<(i64, String)> = as_catalog_owner(|| {
        Spi::connect(|c| {
            let rows = c
                .select(
                    OPEN_JOB,
                    Some(1),
                    &[
                        identity.relid.into(),
                        identity.target.as_str().into(),
                        job.expression.as_str().into(),
                        job.scope.as_str().into(),
                        caller.as_str().into(),
                    ],
                )
                .map_err(spi_failed)?;
            match rows.into_iter().next() {
                Some(r) => Ok::<_, AiError>(Some((
                    r.get::<i64>(1).map_err(spi_failed)?.unwrap_or(0),
                    r.get::<String>(2).map_err(spi_failed)?.unwrap_or_default(),
                ))),
                None => Ok(None),
            }
        })
    })?;
    match open {
        None => submit(&job, &identity, &caller).map(|_| None),
        Some((id, state)) => {
            if state == "submitted" && !collect_when_done(procedure, id)? {
                return Ok(None);
            }
            apply(job, id, owner)
        }
    }
}

/// Collects the job's requests and sends them as batches.
fn submit(job: &Job, identity: &Identity, caller: &str) -> Result<(), AiError> {
    let procedure = job.procedure;
    let connection = NonAtomicSpi::connect()?;
    let sql = job.table.count_sql().replacen(
        "pg_catalog.count(*)",
        &format!("pg_catalog.count(({}))", job.expression),
        1,
    );
    let (counted, collected) =
        collect::collecting(|| Spi::connect(|c| c.select(&sql, Some(1), &[])?.first().get_one::<i64>()));
    counted.map_err(|e| AiError::Internal {
        message: format!("{procedure}: collecting the requests failed: {e}"),
    })?;
    let rows: i64 =
        Spi::connect(|c| c.select(&job.table.count_sql(), Some(1), &[])?.first().get_one::<i64>())
            .map_err(|e| AiError::Internal {
                message: format!("{procedure}: counting the rows failed: {e}"),
            })?
            .unwrap_or(0);
    let requests: usize = collected.by_model.values().map(|r| r.lines.len()).sum();
    if requests == 0 {
        notice!(
            "{procedure}: nothing to send to Bailian's Batch File API: {rows} rows of {} to fill ({}), and no AI call among them",
            job.table.shown,
            job.scope
        );
        return Ok(());
    }
    let job_id: i64 = as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                NEW_JOB,
                Some(1),
                &[
                    procedure.into(),
                    identity.relid.into(),
                    identity.target.as_str().into(),
                    job.expression.as_str().into(),
                    job.scope.as_str().into(),
                    caller.into(),
                    (requests as i64).into(),
                ],
            )?
            .first()
            .get_one::<i64>()
        })
    })
    .map_err(spi_failed)?
    .unwrap_or(0);
    connection.commit();
    let batches = send(procedure, job_id, collected, &connection)?;
    notice!(
        "{procedure}: job {job_id} sent {requests} requests for {rows} rows of {} ({}) to Bailian's Batch File API in {batches} batch(es), at half the price; \
         CALL {procedure} again with the same arguments to collect the answers once Bailian has run them (within {WINDOW_HOURS} hours; SELECT * FROM ai_batches shows how far they are)",
        job.table.shown,
        job.scope
    );
    Ok(())
}

/// Uploads each deployment's requests and creates their batches, committing each.
fn send(
    procedure: &str,
    job_id: i64,
    collected: Collected,
    connection: &NonAtomicSpi,
) -> Result<usize, AiError> {
    let window = CompletionWindow::hours(WINDOW_HOURS)?;
    let mut batches = 0;
    for (model, requests) in collected.by_model {
        let expect = match requests.lines.values().next().map(|l| l.expect) {
            Some(Expect::Embeddings { dimension, .. }) => {
                format!("embeddings:{}", dimension.map_or(String::new(), |d| d.to_string()))
            }
            _ => "chat".to_string(),
        };
        let lines = requests.lines.into_iter().map(|(key, line)| (answers::hex(&key), line.body));
        let files = batchfile::input_files(requests.endpoint, lines, &limits_for(&expect))?;
        for (n, file) in files.into_iter().enumerate() {
            let name = format!("pg_bailian-job{job_id}-{model}-{n}.jsonl")
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.' && c != '_', "_");
            let metadata = BTreeMap::from([(
                "ds_name".to_string(),
                format!("pg_bailian {procedure} job {job_id}")
                    .chars()
                    .take(batchfile::MAX_DS_NAME_CHARS)
                    .collect(),
            )]);
            let target = &requests.target;
            let endpoint = requests.endpoint;
            let bytes = file.bytes;
            let (window, metadata, name) = (&window, &metadata, &name);
            let batch = backend::run(target, |client, call| async move {
                let uploaded = batchfile::upload(client, &call, bytes, name).await?;
                batchfile::create_batch(client, &call, &uploaded.id, endpoint, window, metadata).await
            })?;
            let ids: Vec<String> = file.expected.iter().map(|(id, _)| id.clone()).collect();
            as_catalog_owner(|| {
                Spi::connect_mut(|c| {
                    c.update(
                        NEW_BATCH,
                        None,
                        &[
                            batch.id.as_str().into(),
                            job_id.into(),
                            model.as_str().into(),
                            endpoint.as_str().into(),
                            batch.input_file_id.as_str().into(),
                            batch.status.as_str().into(),
                            (ids.len() as i32).into(),
                            ids.into(),
                            expect.as_str().into(),
                        ],
                    )
                    .map(|_| ())
                })
            })
            .map_err(spi_failed)?;
            connection.commit();
            batches += 1;
        }
    }
    Ok(batches)
}

/// Input files small enough that their output file can be read back: a result file is read
/// whole, within `pg_bailian.max_response_size` like any answer, so a file holds no more
/// lines than their answers fit (an embedding's answer takes up to about 24 bytes a
/// dimension of JSON; a chat answer is taken as 32 kB), with a third to spare.
fn limits_for(expect: &str) -> Limits {
    let per_line: u64 = match expect.strip_prefix("embeddings:") {
        Some(d) => (2_000 + 24 * d.parse::<u64>().unwrap_or(2_048)) * 4 / 3,
        None => 32_768 * 4 / 3,
    };
    let fit = (crate::guc::max_response_bytes() / per_line).max(1);
    Limits { max_lines: fit.min(batchfile::MAX_LINES), ..Limits::default() }
}

/// A batch as the job keeps it.
struct Stored {
    id: String,
    model: String,
    status: String,
    custom_ids: Vec<String>,
    expect: String,
    /// Its answers are kept in bailian.batch_answers (and counted in ai_usage).
    collected: bool,
}

fn kept_batches(job_id: i64) -> Result<Vec<Stored>, AiError> {
    as_catalog_owner(|| {
        Spi::connect(|c| {
            let rows = c.select(BATCHES, None, &[job_id.into()]).map_err(spi_failed)?;
            rows.into_iter()
                .map(|r| {
                    Ok(Stored {
                        id: r.get::<String>(1).map_err(spi_failed)?.unwrap_or_default(),
                        model: r.get::<String>(2).map_err(spi_failed)?.unwrap_or_default(),
                        status: r.get::<String>(3).map_err(spi_failed)?.unwrap_or_default(),
                        custom_ids: r.get::<Vec<String>>(4).map_err(spi_failed)?.unwrap_or_default(),
                        expect: r.get::<String>(5).map_err(spi_failed)?.unwrap_or_default(),
                        collected: r.get::<bool>(6).map_err(spi_failed)?.unwrap_or(false),
                    })
                })
                .collect()
        })
    })
}

fn record(batch: &Batch) -> Result<(), AiError> {
    let c = &batch.request_counts;
    as_catalog_owner(|| {
        Spi::connect_mut(|s| {
            s.update(
                SET_BATCH,
                None,
                &[
                    batch.id.as_str().into(),
                    batch.status.as_str().into(),
                    (c.total as i32).into(),
                    (c.completed as i32).into(),
                    (c.failed as i32).into(),
                    batch.output_file_id.clone().into(),
                    batch.error_file_id.clone().into(),
                ],
            )
            .map(|_| ())
        })
    })
    .map_err(spi_failed)
}

fn set_job(job_id: i64, state: &str, message: Option<String>) -> Result<(), AiError> {
    as_catalog_owner(|| {
        Spi::connect_mut(|s| {
            s.update(SET_JOB, None, &[job_id.into(), state.into(), message.into()]).map(|_| ())
        })
    })
    .map_err(spi_failed)
}

/// Follows the job's batches; once all have ended, keeps their answers (committed) and
/// answers true. While one runs, says how far they are and answers false.
fn collect_when_done(procedure: &'static str, job_id: i64) -> Result<bool, AiError> {
    let connection = NonAtomicSpi::connect()?;
    let kept = kept_batches(job_id)?;
    let mut ended = Vec::new();
    let mut running = Vec::new();
    for b in &kept {
        let target = crate::backend::Target::new(&catalog::load(&b.model)?, &Default::default())?;
        let batch = backend::run(&target, |client, call| {
            let id = b.id.clone();
            async move { batchfile::retrieve_batch(client, &call, &id).await }
        })?;
        if BatchStatus::parse(&b.status) != Some(batch.status) {
            record(&batch)?;
        }
        if batch.status.is_terminal() {
            ended.push((b, batch, target));
        } else {
            running.push(format!(
                "{} {} ({} of {} done)",
                batch.id,
                batch.status.as_str(),
                batch.request_counts.completed + batch.request_counts.failed,
                batch.request_counts.total
            ));
        }
    }
    connection.commit();
    if !running.is_empty() {
        notice!(
            "{procedure}: job {job_id}: {} of {} batch(es) still running at Bailian: {}; CALL again later to collect the answers",
            running.len(),
            kept.len(),
            running.join(", ")
        );
        return Ok(false);
    }
    // Batch by batch, each committed with its answers and its cost: a CALL that stops half-way
    // (a result file it cannot read now) leaves nothing to pay or count twice.
    for (b, batch, target) in ended.into_iter().filter(|(b, _, _)| !b.collected) {
        let expected: Vec<(String, Expect)> =
            b.custom_ids.iter().map(|id| (id.clone(), expect_of(&b.expect))).collect();
        let results = backend::run(&target, |client, call| {
            let (batch, expected) = (&batch, &expected);
            async move { batchfile::collect(client, &call, batch, expected).await }
        });
        let account = crate::shared::accounting::account(
            &b.model,
            target.deployment().spec.model_type,
            true,
            true,
            procedure,
        )?;
        let lines: Vec<(String, Result<Kept, String>)> = match results {
            Ok(results) => {
                // What the batch billed: its answered lines' tokens, at the batch price.
                for _ in 0..results.succeeded() {
                    account.sent(1, false);
                }
                account.answered(&results.usage, std::time::Duration::ZERO);
                results
                    .lines
                    .into_iter()
                    .map(|(id, r)| {
                        let kept = r.map_err(|e| e.to_string()).and_then(|a| match a {
                            Answer::Chat(outcome) => Ok(Kept::Chat(outcome)),
                            Answer::Embeddings(mut v) if v.len() == 1 => Ok(Kept::Vector(v.remove(0))),
                            Answer::Embeddings(_) => Err("the answer holds another number of vectors".into()),
                        });
                        (id, kept)
                    })
                    .collect()
            }
            // A batch that failed as a whole answers nothing, and costs nothing.
            Err(e @ AiError::BatchFailed { .. }) => b.custom_ids.iter().map(|id| (id.clone(), Err(e.to_string()))).collect(),
            // Its answers are paid for but could not be read now (the network, a file larger
            // than pg_bailian.max_response_size): nothing is given up; a later CALL reads
            // them again (Bailian keeps result files, research §1.2).
            Err(e) => {
                return Err(AiError::invalid_with_hint(
                    format!("{procedure}: job {job_id}: the results of batch {} could not be read: {e}", b.id),
                    "Nothing is lost: CALL the job again to read them (raising pg_bailian.max_response_size if the file is larger than it).",
                ))
            }
        };
        as_catalog_owner(|| {
            Spi::connect_mut(|s| {
                for (id, kept) in &lines {
                    let Some(key) = answers::from_hex(id) else { continue };
                    let (answer, error) = match kept {
                        Ok(k) => (Some(answers::encode(k, &Default::default())), None),
                        Err(e) => (None, Some(e.clone())),
                    };
                    s.update(
                        KEEP_ANSWER,
                        None,
                        &[job_id.into(), key.to_vec().into(), answer.into(), error.into()],
                    )?;
                }
                Ok::<_, pgrx::spi::Error>(())
            })
        })
        .map_err(spi_failed)?;
        as_catalog_owner(|| {
            Spi::connect_mut(|s| s.update(COLLECTED, None, &[b.id.as_str().into()]).map(|_| ()))
        })
        .map_err(spi_failed)?;
        connection.commit();
    }
    let (answered, failed): (i64, i64) = as_catalog_owner(|| {
        Spi::connect(|s| {
            let row = s.select(TALLY, Some(1), &[job_id.into()])?;
            let row = row.first();
            Ok::<_, pgrx::spi::Error>((row.get::<i64>(1)?.unwrap_or(0), row.get::<i64>(2)?.unwrap_or(0)))
        })
    })
    .map_err(spi_failed)?;
    set_job(job_id, "collected", Some(format!("{answered} answered, {failed} failed")))?;
    connection.commit();
    notice!("{procedure}: job {job_id}: Bailian's batches have ended: {answered} requests answered, {failed} failed; writing the rows");
    Ok(true)
}

fn expect_of(stored: &str) -> Expect {
    match stored.strip_prefix("embeddings:") {
        Some(d) => Expect::Embeddings { inputs: 1, dimension: d.parse().ok() },
        None => Expect::Chat,
    }
}

/// Writes the rows from the kept answers, then closes the job.
fn apply(job: Job, job_id: i64, owner: pg_sys::Oid) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = job.procedure;
    collect::applying(job_id, owner, || run_job(job, false, false))?;
    let connection = NonAtomicSpi::connect()?;
    as_catalog_owner(|| Spi::connect_mut(|s| s.update(DROP_ANSWERS, None, &[job_id.into()]).map(|_| ())))
        .map_err(spi_failed)?;
    set_job(job_id, "done", None)?;
    connection.commit();
    notice!("{procedure}: batch job {job_id} is done");
    Ok(None)
}

/// `ai_batch_cancel(job_id)`: asks Bailian to cancel the job's batches still running (lines
/// done before are kept, and billed); the next CALL collects what they answered. Only the
/// role that made the job or a superuser. Returns how many batches were asked.
pub(crate) fn cancel(job_id: i64) -> Result<i64, AiError> {
    let (caller_oid, caller) = catalog::current_user();
    let owner: Option<String> = as_catalog_owner(|| {
        Spi::connect(|c| {
            let rows = c.select(
                "SELECT owner::pg_catalog.text FROM bailian.batch_jobs WHERE job_id OPERATOR(pg_catalog.=) $1
                   AND state OPERATOR(pg_catalog.=) 'submitted'",
                Some(1),
                &[job_id.into()],
            )?;
            match rows.into_iter().next() {
                Some(r) => r.get::<String>(1),
                None => Ok(None),
            }
        })
    })
    .map_err(spi_failed)?;
    let Some(owner) = owner else {
        return Err(AiError::invalid_with_hint(
            format!("no batch job {job_id} is waiting for Bailian"),
            "SELECT * FROM ai_batches lists the jobs and their states.",
        ));
    };
    // SAFETY: superuser_arg reads the role's entry.
    if owner != caller && !unsafe { pg_sys::superuser_arg(caller_oid) } {
        return Err(AiError::NotAllowed {
            message: format!(
                "batch job {job_id} belongs to role \"{owner}\"; only that role or a superuser may cancel it"
            ),
            hint: "SELECT * FROM ai_batches shows your own jobs.".into(),
        });
    }
    let mut asked = 0;
    for b in kept_batches(job_id)? {
        if BatchStatus::parse(&b.status).is_some_and(BatchStatus::is_terminal) {
            continue;
        }
        let target = crate::backend::Target::new(&catalog::load(&b.model)?, &Default::default())?;
        let batch = backend::run(&target, |client, call| {
            let id = b.id.clone();
            async move { batchfile::cancel_batch(client, &call, &id).await }
        })?;
        record(&batch)?;
        asked += 1;
    }
    Ok(asked)
}

/// A batch job's mode argument: 'live' or 'batch'.
pub(super) fn is_batch(procedure: &str, mode: Option<String>) -> Result<bool, AiError> {
    match mode.as_deref() {
        None | Some("live") => Ok(false),
        Some("batch") => Ok(true),
        Some(other) => Err(AiError::invalid(format!(
            "{procedure}: mode must be 'live' (requests sent now) or 'batch' (Bailian's Batch File API, at half the price), got '{other}'"
        ))),
    }
}
