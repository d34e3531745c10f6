//! The job engine: `ai_update` fills a column of any table with a primary key from any SQL
//! expression over the row, committing as it goes; `ai_embed_column` and `ai_gen_column` are
//! `ai_update` with an expression made for them (`ai_embed(model, source)`, `ai_gen(model,
//! template with the source, params)`) and their own up-front checks and messages.
//!
//! Rows are read in key order and claimed (see `claims`), then computed a chunk at a time:
//! one query evaluates the expression over the chunk through the AI Batch executor node
//! (`crate::executor`), which keeps `pg_bailian.max_concurrency` requests in flight and packs
//! embeddings; the job fetches its rows a few at a time and writes each while the next
//! requests are on the wire (`chunk`). A commit follows every `batch_size` rows (whole rounds
//! of requests, once the job knows how many rows a round carries: see `chunk_rows`); a chunk
//! never spans a commit, since no cursor survives one.
//!
//! **Requests stay in flight from one chunk to the next.** With a cursor per chunk, the
//! requests in flight used to drain to none at each chunk's end: the slots stood idle from
//! the chunk's last answers until the next chunk's query sent its first requests, after the
//! last writes, the commit and the next rows' reading, some 50 ms a chunk (0.83 to 0.93 of the
//! ideal rate, where a plain UPDATE with the same expression reaches 0.95). Of the two ways
//! out, allowing several chunks per transaction saves nothing at the default `batch_size`
//! (a batch is one chunk there) and keeps one drain per chunk anyway (the cursor ends, not
//! the transaction: a batch of 10000 rows ran no faster). So the job reads the next chunk's
//! rows while this chunk's requests are in flight: each chunk's query names the first rows
//! of the next chunk after its own (`Table::chunk_sql`, in that order; as many as the node
//! reads ahead, two rounds of requests: see `ahead_rows`), the job fetches only its own,
//! and when it closes the cursor the node hands what it read ahead (the next rows' requests
//! in flight, and answers already in) to the next chunk's node, which gives them to the same
//! rows when it reads them again after the commit (`executor::carry`). A chunk's end and the
//! commit after it then cost no idle slot and no request twice, whatever the batch size.
//! (Only for an expression that makes one AI call: the rows a node above another reads
//! ahead, or a call the executor does not batch, would be paid for twice. Other
//! expressions keep a chunk per query, and its drain: `Analysis::read_ahead`.)
//! What that keeps:
//! - no row is sent unclaimed: the next chunk's rows are read, claimed and found unlocked
//!   before the query that reads them ahead opens, and a job still holds no more than a
//!   chunk and a page of claims (those rows are fewer than a page, and pages are read no
//!   further than needed);
//! - a carried answer goes only to a row whose columns (those the node reads) are byte for
//!   byte the ones it was computed from, and the write compares the row's inputs again;
//! - memory stays bounded: the carry is one read-ahead window, dropped with the job;
//! - commits still fall every `batch_size` rows: rows of the next chunk that a query returns
//!   early (when rows of its own were deleted meanwhile) are kept and written with the next
//!   chunk;
//! - a failed query, a cancel or the job's end drops what was carried, like any request.
//!
//! What can go wrong with one row costs only that row:
//! - an AI call that fails (after retries) leaves the row NULL, reported by key: the chunk
//!   query runs in capture mode (`executor::capture`), where a call's error is handed to the
//!   job with its row instead of ending the query;
//! - any other error of the expression (a division by zero, a call the executor could not
//!   batch) ends the chunk's query: the rows it had not returned are computed again by a query
//!   without the next chunk's rows (the error may have been one of theirs), and if that fails
//!   too, one by one, each in a subtransaction, and the failing one is reported;
//! - an expression that gives NULL leaves the row NULL, reported as failed;
//! - a write that fails (too long for varchar(n), a CHECK or domain constraint, a trigger
//!   that raises, an assignment cast the value fails) is rolled back alone: writes run in a
//!   subtransaction per slab of rows, and a failed slab is redone with the failing row left
//!   out (so subtransactions stay few when nothing fails, and the job never aborts on a row);
//! - a row whose columns the expression reads changed after its value was computed is
//!   skipped, not given a stale value;
//! - a row another transaction holds locked is not waited for: it is skipped, counted and
//!   reported by key (rechecked at the end, in case it was another job's uncommitted write);
//! - a row another job on the same column has claimed is deferred, not counted as done: the
//!   job comes back to it after its main pass (or when it has deferred `DEFERRED_ROWS`),
//!   waits for the claim if it must (holding no claim and no uncommitted write meanwhile, so
//!   that no wait can close a cycle), and then fills it like any other row, or counts it as
//!   done by another session when it finds it filled (see `claims`).
//!
//! Errors that are about the job rather than a row (a cancel, a read-only transaction,
//! running out of memory, an expression that does not parse) end it; committed batches stay,
//! and a later CALL resumes.
//!
//! Deferred constraints are made immediate in every transaction of the job, so that their
//! violations surface on the row's own statement rather than at COMMIT. Keys travel as text
//! and are cast back to the column's exact type (typmod included), with floats printed in
//! full (`extra_float_digits = 3`), so that every key names its row again.
//!
//! The expression and the filter are the caller's SQL, run with the caller's rights (the
//! procedures are not SECURITY DEFINER); everything else the job runs is built in `table`
//! and names nothing through the caller's search_path.

mod batch_file;
mod chunk;
mod claims;
mod progress;
mod shards;
pub(crate) mod table;

use super::generate::call_params;
use super::{arg, name_arg};
use crate::backend::Target;
use crate::catalog;
use crate::entry::sql_entry;
use crate::executor::capture::{self, Captured};
use crate::spi::{try_in, try_in_catching, Caught, NonAtomicSpi, Scratch, SubTransaction};
use bailian_core::registry::Task;
use bailian_core::AiError;
use chunk::{Analysis, ChunkPlan, Cursor, Fetched, Span};
use claims::{Claim, Claims};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{pg_sys, JsonB, PgBuiltInOids, PgOid};
pub(crate) use progress::{Key, Progress};
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
pub(crate) use table::quote_ident;
use table::{ClaimedFrom, Table, TargetKind};

sql_entry!(pg_finfo_pg_bailian_update, pg_bailian_update, update);
sql_entry!(pg_finfo_pg_bailian_embed_column, pg_bailian_embed_column, embed_column);
sql_entry!(pg_finfo_pg_bailian_gen_column, pg_bailian_gen_column, gen_column);
sql_entry!(pg_finfo_pg_bailian_batch_cancel, pg_bailian_batch_cancel, batch_cancel);
sql_entry!(pg_finfo_pg_bailian_update_local_shards, pg_bailian_update_local_shards, shards::local_shards);

/// How a row whose expression gave NULL is reported.
pub(crate) const NULL_VALUE: &str = "the expression gave NULL";

/// Rows written in one subtransaction at most, which bounds what a failure makes us redo.
const SLAB_ROWS: usize = 256;

/// Rows read per page in key order.
const PAGE_ROWS: usize = 500;

/// Rows in one chunk query at most (its rows' claims are held until it is done).
const CHUNK_ROWS: usize = 1000;

/// Rows read but deferred (their claim held by another session) kept at most before the job
/// goes back to them: the memory a job needs stays bounded whatever the table's size (their
/// keys; another job holds at most a chunk and a page of claims at a time, but jobs that take
/// turns ahead of each other can defer about half of a table between them).
const DEFERRED_ROWS: usize = 10_000;

/// Rows fetched from a chunk's cursor at a time: each is written before the next fetch, while
/// the rows behind are in flight.
const FETCH_ROWS: usize = 32;

fn spi(e: pgrx::spi::SpiError) -> AiError {
    AiError::Internal { message: format!("column query failed: {e}") }
}

/// What a job is asked to do.
struct Job {
    procedure: &'static str,
    table: Table,
    /// SQL over a row of the table: the value of the target column.
    expression: String,
    batch_size: usize,
    /// What the first NOTICE says the job fills, e.g. `emb IS NULL, body has text`.
    scope: String,
}

/// A sync's fill (`crate::sync::fill`): the job engine over the rows a run took from the
/// sync's queue, as the current user. `atomic` when the caller (a background worker) owns the
/// transaction: the job then never commits (a run is at most one batch) and the caller
/// commits after it. Answers the job's progress, with every failed row and its reason.
pub(crate) fn fill_queued(
    relid: pg_sys::Oid,
    target: &str,
    expression: &str,
    filter: Option<&str>,
    queued: impl FnOnce(&Table) -> String,
    atomic: bool,
) -> Result<Progress, AiError> {
    let procedure = "ai_sync";
    let table = Table::open(procedure, relid, target)?;
    let restriction = queued(&table);
    let filter = match filter {
        // The newlines: a filter ending in a -- comment leaves the rest standing.
        Some(f) => format!("(\n{f}\n) AND {restriction}"),
        None => restriction,
    };
    let scope = format!("{} IS NULL, queued by the sync", quote_ident(target));
    let job = Job {
        procedure,
        table: table.with_filter(filter),
        expression: expression.to_string(),
        batch_size: 100_000,
        scope,
    };
    run_job(job, atomic, true)
}

/// The keys of the rows of `relid` whose target is NULL and whose filter holds, read as the
/// current user a page at a time in key order, each page handed to `page` (a sync queues
/// them: memory stays a page whatever the table's size).
pub(crate) fn todo_keys(
    relid: pg_sys::Oid,
    target: &str,
    filter: Option<&str>,
    mut page: impl FnMut(Vec<Key>) -> Result<(), AiError>,
) -> Result<i64, AiError> {
    let table = Table::open("ai_sync", relid, target)?;
    let table = match filter {
        Some(f) => table.with_filter(f.to_string()),
        None => table,
    };
    let sql = table.page_sql();
    let mut after: Option<Key> = None;
    let mut total = 0i64;
    loop {
        let rows = Spi::connect(|c| {
            rows_of(
                &table,
                c.select(&sql, None, &[after.clone().into(), (PAGE_ROWS as i64).into()]).map_err(spi)?,
            )
        })?;
        let done = rows.len() < PAGE_ROWS;
        after = rows.last().map(|r| r.key.clone());
        total += rows.len() as i64;
        if !rows.is_empty() {
            page(rows.into_iter().map(|r| r.key).collect())?;
        }
        if done {
            return Ok(total);
        }
    }
}

/// Opens `relid` as a job would (a table with a primary key, a writable target), checks the
/// expression and filter parse as one value per row, and answers the columns they read
/// (`None`: the whole row) and the key columns.
pub(crate) fn analyze_for_sync(
    procedure: &str,
    relid: pg_sys::Oid,
    target: &str,
    expression: &str,
    filter: Option<&str>,
) -> Result<(Option<Vec<String>>, Vec<String>), AiError> {
    let table = Table::open(procedure, relid, target)?;
    let keys = table.key_columns();
    let table = match filter {
        Some(f) => table.with_filter(f.to_string()),
        None => table,
    };
    table.check_privileges(procedure)?;
    // The analysis prepares through SPI, as the job does inside its connection.
    let connection = NonAtomicSpi::connect_atomic()?;
    let analysis = chunk::analyze(procedure, &table, expression)?;
    drop(connection);
    let mut read = analysis.checked;
    if analysis.reads_target {
        read.push(target.to_string());
    }
    Ok(((!analysis.whole_row).then_some(read), keys))
}

fn batch_size(procedure: &str, given: Option<i32>) -> Result<usize, AiError> {
    match given {
        Some(n @ 1..=100_000) => Ok(n as usize),
        other => Err(AiError::invalid(format!(
            "{procedure}: batch_size must be between 1 and 100000, got {}",
            other.map_or("NULL".to_string(), |n| n.to_string())
        ))),
    }
}

/// True when called by CALL outside an explicit transaction block (or from a procedure so
/// called), which is what lets a procedure commit.
fn nonatomic(fcinfo: pg_sys::FunctionCallInfo) -> bool {
    // SAFETY: fcinfo is live; context, when set, is a Node whose tag says what it is.
    unsafe {
        let ctx = (*fcinfo).context;
        !ctx.is_null()
            && (*ctx).type_ == pg_sys::NodeTag::T_CallContext
            && !(*(ctx as *mut pg_sys::CallContext)).atomic
    }
}

/// The schema our functions live in, quoted: where the running procedure is.
pub(crate) fn own_schema(fcinfo: pg_sys::FunctionCallInfo) -> Result<String, AiError> {
    // SAFETY: fcinfo is live and flinfo names the running procedure; the lookups answer NULL
    // or InvalidOid rather than raise.
    let name = unsafe {
        table::owned(pg_sys::get_namespace_name(pg_sys::get_func_namespace((*(*fcinfo).flinfo).fn_oid)))
    };
    name.map(|n| quote_ident(&n)).ok_or_else(|| AiError::Internal { message: "own schema not found".into() })
}

/// A SQL string literal of `text`, as `quote_literal` makes it: an escape string when it
/// holds a backslash, so it reads the same whatever `standard_conforming_strings` says.
pub(crate) fn literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// `CALL ai_update(table_name, target_column, expression, batch_size, filter)`.
fn update(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = "ai_update";
    let (table, target, expression) =
        (arg::<pg_sys::Oid>(fcinfo, 0), name_arg(fcinfo, 1), arg::<String>(fcinfo, 2));
    let (Some(table), Some(target), Some(expression)) = (table, target, expression) else {
        return Err(AiError::NullArgument {
            message: format!("{procedure}: table_name, target_column and expression must not be NULL"),
        });
    };
    if expression.trim().is_empty() {
        return Err(AiError::invalid(format!("{procedure}: expression must not be empty")));
    }
    let batch_size = batch_size(procedure, arg::<i32>(fcinfo, 3))?;
    let filter = arg::<String>(fcinfo, 4).filter(|f| !f.trim().is_empty());
    let batch = batch_file::is_batch(procedure, mode_arg(fcinfo, 5))?;
    in_own_transactions(fcinfo, procedure)?;
    let relid = table;
    let table = Table::open(procedure, table, &target)?;
    let scope = match &filter {
        Some(f) => format!("{} IS NULL AND {f}", quote_ident(&target)),
        None => format!("{} IS NULL", quote_ident(&target)),
    };
    let table = match filter {
        Some(f) => table.with_filter(f),
        None => table,
    };
    run_in(
        Job { procedure, table, expression, batch_size, scope },
        batch.then_some(batch_file::Identity { relid, target }),
    )
}

/// The mode argument at `n` (a procedure of an older version, before ALTER EXTENSION ...
/// UPDATE, has none: 'live').
fn mode_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<String> {
    // SAFETY: fcinfo is the live call info.
    (unsafe { (*fcinfo).nargs } as usize > n).then(|| arg::<String>(fcinfo, n)).flatten()
}

/// A job live, or through the Batch File API when it has a batch identity.
fn run_in(job: Job, batch: Option<batch_file::Identity>) -> Result<Option<pg_sys::Datum>, AiError> {
    // On a Citus coordinator, a distributed table is filled by the nodes that hold its shards.
    if let Some(kind) = shards::kind(job.table.oid)? {
        return match kind {
            shards::Kind::Reference if batch.is_some() => Err(shards::refused(
                job.procedure,
                &job.table.shown,
                "a reference table, which mode => 'batch' does not fill",
            )),
            shards::Kind::Reference => shards::fill_reference(job),
            shards::Kind::Replicated(what) => Err(shards::refused(job.procedure, &job.table.shown, what)),
            shards::Kind::Distributed if batch.is_some() => Err(AiError::InvalidArgument {
                message: format!(
                    "{}: mode => 'batch' is not supported on a distributed table (its shards are filled live, on their nodes)",
                    job.procedure
                ),
                hint: Some("Use mode => 'live' (the default).".into()),
            }),
            shards::Kind::Distributed => shards::spread(shards::Spread {
                procedure: job.procedure,
                relid: job.table.oid,
                target: job.table.target.clone(),
                filter: job.table.filter().map(str::to_string),
                expression: job.expression,
                batch_size: job.batch_size,
            }),
        };
    }
    run_local(job, batch)
}

fn run_local(job: Job, batch: Option<batch_file::Identity>) -> Result<Option<pg_sys::Datum>, AiError> {
    match batch {
        Some(identity) => batch_file::run(job, identity),
        None => run(job),
    }
}

/// `ai_batch_cancel(job_id)`.
fn batch_cancel(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let job = arg::<i64>(fcinfo, 0).ok_or_else(|| AiError::invalid("job_id must not be NULL"))?;
    Ok(batch_file::cancel(job)?.into_datum())
}

/// The arguments both wrappers start with: table, source, target and model, none NULL.
fn wrapper_args(
    fcinfo: pg_sys::FunctionCallInfo,
    procedure: &'static str,
) -> Result<(pg_sys::Oid, String, String, String), AiError> {
    let (table, source, target, model) =
        (arg::<pg_sys::Oid>(fcinfo, 0), name_arg(fcinfo, 1), name_arg(fcinfo, 2), arg::<String>(fcinfo, 3));
    let (Some(table), Some(source), Some(target), Some(model)) = (table, source, target, model) else {
        return Err(AiError::NullArgument {
            message: format!(
                "{procedure}: table_name, source_column, target_column and model_name must not be NULL"
            ),
        });
    };
    Ok((table, source, target, model))
}

/// `CALL ai_embed_column(table_name, source_column, target_column, model_name, batch_size)`:
/// `ai_update` with `ai_embed(model_name, source)`, for rows whose source has text (embedding
/// '' is impossible, so such rows are left alone rather than retried forever).
fn embed_column(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = "ai_embed_column";
    let (table, source, target, model) = wrapper_args(fcinfo, procedure)?;
    let batch_size = batch_size(procedure, arg::<i32>(fcinfo, 4))?;
    let batch = batch_file::is_batch(procedure, mode_arg(fcinfo, 5))?;
    in_own_transactions(fcinfo, procedure)?;
    let relid = table;
    let table = Table::open(procedure, table, &target)?;
    table.column(procedure, &source, "source")?;
    let kind = table.target_kind(procedure, true)?;
    let d = catalog::load_for(&model, procedure, &[Task::Embedding])?;
    if let (TargetKind::Embedding { dims: Some(dims) }, Some(model_dims)) = (kind, d.dimension()) {
        if dims as u32 != model_dims {
            return Err(AiError::DatatypeMismatch {
                message: format!(
                    "{procedure}: target column \"{target}\" holds {dims} dimensions, but model \"{model}\" returns {model_dims}"
                ),
            });
        }
    }
    // The key is resolved now, so a job that cannot send fails before reading a row.
    Target::new(&d, &call_params(&d, None)?)?;
    let src = quote_ident(&source);
    let expression = format!("{}.ai_embed({}, {src}::pg_catalog.text)", own_schema(fcinfo)?, literal(&model));
    let scope = format!("{target} IS NULL, {source} has text");
    let table =
        table.with_filter(format!("{src} IS NOT NULL AND {src}::pg_catalog.text OPERATOR(pg_catalog.<>) ''"));
    run_in(
        Job { procedure, table, expression, batch_size, scope },
        batch.then_some(batch_file::Identity { relid, target }),
    )
}

/// `CALL ai_gen_column(table_name, source_column, target_column, model_name,
/// prompt_template, batch_size, params)`: `ai_update` with `ai_gen(model_name, template with
/// {0} replaced by the source, params)`, for rows whose source is not NULL.
fn gen_column(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = "ai_gen_column";
    let (table, source, target, model) = wrapper_args(fcinfo, procedure)?;
    let (template, batch, params) =
        (arg::<String>(fcinfo, 4), arg::<i32>(fcinfo, 5), arg::<JsonB>(fcinfo, 6).map(|j| j.0));
    let batch_size = batch_size(procedure, batch)?;
    let batch = batch_file::is_batch(procedure, mode_arg(fcinfo, 7))?;
    let template = match template {
        Some(t) if t.contains("{0}") => t,
        _ => {
            return Err(AiError::invalid(format!(
                "{procedure}: prompt_template must contain {{0}}, where the source text goes"
            )))
        }
    };
    in_own_transactions(fcinfo, procedure)?;
    let relid = table;
    let table = Table::open(procedure, table, &target)?;
    table.column(procedure, &source, "source")?;
    table.target_kind(procedure, false)?;
    let d = catalog::load_for(&model, procedure, &[Task::Chat])?;
    // Checked now (params and the key), so a job that cannot send fails before reading a row.
    Target::new(&d, &call_params(&d, params.clone().map(JsonB))?)?;
    let params_sql = match &params {
        Some(p) => format!("{}::pg_catalog.jsonb", literal(&p.to_string())),
        None => "NULL::pg_catalog.jsonb".to_string(),
    };
    let src = quote_ident(&source);
    // ai_prompt sizes the prompt before building it (54000 past its limit, for that row
    // alone), where replace() would build whatever the row's text makes.
    let schema = own_schema(fcinfo)?;
    let expression = format!(
        "{schema}.ai_gen({}, {schema}.ai_prompt({}, {src}::pg_catalog.text), {params_sql})",
        literal(&model),
        literal(&bailian_core::template::from_plain(&template))
    );
    let scope = format!("{target} IS NULL, {source} has text");
    let table = table.with_filter(format!("{src} IS NOT NULL"));
    run_in(
        Job { procedure, table, expression, batch_size, scope },
        batch.then_some(batch_file::Identity { relid, target }),
    )
}

/// A job commits, so it must be the CALL's own work: called by CALL outside a transaction
/// block (see `nonatomic`), and not in a subtransaction.
fn in_own_transactions(fcinfo: pg_sys::FunctionCallInfo, procedure: &str) -> Result<(), AiError> {
    // SAFETY: a plain read of the transaction state.
    if !nonatomic(fcinfo) || unsafe { pg_sys::IsSubTransaction() } {
        return Err(outside_call(procedure));
    }
    Ok(())
}

fn outside_call(procedure: &str) -> AiError {
    AiError::TransactionControl {
        message: format!(
            "{procedure} commits after every batch, so it cannot run inside a transaction block"
        ),
        hint: format!(
            "Run CALL {procedure}(...) on its own, not between BEGIN and COMMIT or inside a function."
        ),
    }
}

/// This backend's `ai_activity` row shows the job `name` of the current CALL, with the rows it
/// has to fill once they are counted (None: not yet); its ETA counts from now.
fn show_job(name: &str, rows_total: Option<i64>) {
    crate::shared::with_slot(|slot| {
        if let Some(slot) = slot {
            // SAFETY: plain reads of the session's identity and the statement's start.
            let (db, role, start) = unsafe {
                (
                    pg_sys::MyDatabaseId.to_u32(),
                    pg_sys::GetUserId().to_u32(),
                    pg_sys::GetCurrentStatementStartTimestamp(),
                )
            };
            slot.begin(db, role, start);
            slot.job(name, rows_total, bailian_core::shared::unix_us());
        }
    });
}

/// A row to fill, as read and claimed.
struct Pending {
    key: Key,
    identity: String,
    claim: Claim,
}

/// A value to write: the expression's datum (in the job's value memory) and the text of the
/// columns it was computed from.
struct Value {
    datum: pg_sys::Datum,
    inputs: String,
}

fn run(job: Job) -> Result<Option<pg_sys::Datum>, AiError> {
    run_job(job, false, false).map(|_| None)
}

fn run_job(job: Job, atomic: bool, keep_failures: bool) -> Result<Progress, AiError> {
    let procedure = job.procedure;
    let table = &job.table;
    table.check_privileges(procedure)?;

    let connection = if atomic { NonAtomicSpi::connect_atomic()? } else { NonAtomicSpi::connect()? };
    transaction_settings()?;
    // Shown as a job before anything makes an account for the CALL (ai_embed_column's
    // checks may, before the rows are counted, which can take long): else ai_activity would
    // show it as a plain statement, or not at all, until the count is done.
    let job_name = format!("{procedure} {}", table.shown);
    show_job(&job_name, None);
    let analysis = chunk::analyze(procedure, table, &job.expression)?;
    let writer = Writer::prepare(table, &analysis)?;
    let chunk_sql = table.chunk_sql(&job.expression, &analysis);
    // Dropped after the plan (declared before it): the plan is made and replanned marked.
    let _marked = capture::mark(&chunk_sql);
    let plan = ChunkPlan::prepare(&chunk_sql)?;
    let total = Spi::connect(|c| {
        c.select(&table.count_sql(), None, &[]).map_err(spi)?.first().get::<i64>(1).map_err(spi)
    })?
    .unwrap_or(0);
    notice!(
        "{procedure}: {total} rows of {} to fill ({}), {} per batch",
        table.shown,
        job.scope,
        job.batch_size
    );
    // Declared after the connection and before the state: dropped in between.
    let scratch = Scratch::new();
    let values = Scratch::new();
    let mut state = State {
        reader: Reader {
            table,
            last_key: None,
            queue: VecDeque::new(),
            exhausted: false,
            deferred: VecDeque::new(),
        },
        claims: Claims::new(table.oid, table.target_attnum),
        progress: {
            let mut p = Progress::new(procedure, table.key_names.clone(), table.target.clone(), total);
            if keep_failures {
                p.failures = Some(Vec::new());
            }
            p
        },
        writer,
        since_commit: 0,
        ready: HashMap::new(),
        stop: None,
    };
    show_job(&job_name, Some(total));
    loop {
        if state.stop.is_some() {
            break;
        }
        let want = chunk_rows(job.batch_size, state.since_commit, capture::round());
        if want == 0 {
            scratch.run(|| state.commit(&connection))?;
            continue;
        }
        if state.claims.written_count() + want > CHUNK_ROWS {
            // A batch larger than a chunk: the written rows' claims make room for the next
            // chunk's (their row locks protect them until the commit).
            state.claims.release_written();
        }
        let next = match analysis.read_ahead {
            true => ahead_rows(next_chunk_rows(job.batch_size, state.since_commit + want, capture::round())),
            false => 0,
        };
        scratch.run(|| state.top_up(want + next))?;
        if let Some(rows) = state.reader.take(want) {
            let next = state.reader.peek(next);
            state.chunk(rows, next, &plan, &values, &scratch)?;
            continue;
        }
        if state.reader.deferred.is_empty() {
            // Nothing queued, nothing deferred: top_up reads on until one of them has rows or
            // the table has no more.
            break;
        }
        // The next deferred row's claim is held: wait for it holding none (all queued work is
        // written) and, once committed, no row or table lock either (a DDL queued behind the
        // job's table locks would otherwise make the job that holds the claim wait for it).
        scratch.run(|| {
            if state.since_commit > 0 {
                state.commit(&connection)?;
            } else {
                connection.commit();
                transaction_settings()?;
            }
            state.wait_deferred()
        })?;
    }
    if let Some(reason) = state.stop.take() {
        scratch.run(|| if state.since_commit > 0 { state.commit(&connection) } else { Ok(()) })?;
        state.progress.finish();
        return Err(AiError::BudgetExceeded {
            message: format!(
                "{procedure} stopped: {reason}; the {} rows filled so far are committed",
                state.progress.filled
            ),
            hint: "Run the same CALL again once the budget is raised (ai_set_budget) or has reset: it goes on with the rows still to do.".into(),
        });
    }
    scratch.run(|| {
        if state.since_commit > 0 {
            state.commit(&connection)?;
        }
        state.recheck_locked()
    })?;
    state.progress.finish();
    if atomic {
        // The caller commits the writes: until then another job must not find their rows
        // free (it would see them unfilled, and locked).
        state.claims.hold_written_until_transaction_end();
    }
    let progress =
        std::mem::replace(&mut state.progress, Progress::new(procedure, String::new(), String::new(), 0));
    drop(state);
    drop(plan);
    drop(connection);
    Ok(progress)
}

/// How many rows the next chunk takes, given the rows one round of requests carried last
/// time (`round`, 0 when not known yet); 0 when the open batch is to be committed first.
///
/// Requests of a chunk go out in rounds of `pg_bailian.max_concurrency`. Once the round is
/// known, chunks are whole rounds, and a batch that has less than a round left is committed
/// early (0 here): with the default batch_size a batch of embeddings is then 960 rows. (Whole
/// rounds once kept the last round of a chunk full, when a chunk's end drained the requests in
/// flight; since the next chunk's rows are read ahead it does not, and whole rounds only
/// decide where batches end, as before.)
fn chunk_rows(batch_size: usize, since_commit: usize, round: usize) -> usize {
    let rows = batch_size.saturating_sub(since_commit).min(CHUNK_ROWS);
    if round == 0 || round > CHUNK_ROWS || batch_size < round {
        return rows;
    }
    rows / round * round
}

/// How many rows the chunk after this one takes, when this one leaves `since_commit` rows
/// in the open batch (and `round` is still what it is): the rows this chunk's query reads
/// after its own.
fn next_chunk_rows(batch_size: usize, since_commit: usize, round: usize) -> usize {
    match chunk_rows(batch_size, since_commit, round) {
        0 => chunk_rows(batch_size, 0, round),
        rows => rows,
    }
}

/// How many of the next chunk's `rows` a chunk's query reads after its own: those its node
/// reads ahead (two rounds of requests), and no more than a page, so that a job's claims stay
/// within a chunk and a page.
fn ahead_rows(rows: usize) -> usize {
    let window = match capture::round() {
        0 => PAGE_ROWS,
        round => 2 * round,
    };
    rows.min(window).min(PAGE_ROWS)
}

/// One fetch from a chunk's cursor in a subtransaction of its own (within the open slab, if
/// any), with the errors its capturing nodes handed over. An error of the query comes back as
/// Err after the subtransaction is rolled back; the cursor is then dead.
fn fetch_step(
    cursor: &mut Cursor,
    count: usize,
    values: &Scratch,
) -> Result<(Vec<Fetched>, Captured), Caught> {
    let sub = SubTransaction::begin();
    let cursor = AssertUnwindSafe(cursor);
    let values = AssertUnwindSafe(values);
    let (result, sub) = try_in_catching(sub, row_or_call, move || {
        let (cursor, values) = (cursor, values);
        let AssertUnwindSafe(cursor) = cursor;
        capture::collect(|| cursor.fetch(count, &values))
    });
    if let Some(sub) = sub {
        sub.release();
    }
    match result? {
        (Ok(fetched), captured) => Ok((fetched, captured)),
        (Err(e), _) => Err(Caught::Statement(reason_of(&e))),
    }
}

/// Errors that one row's expression can raise: those of a write (`spi::row_level`), and an
/// AI call's (a provider's answer, a model not deployed or of the wrong kind).
fn row_or_call(code: &str) -> bool {
    crate::spi::row_level_code(code) || code.starts_with("ZB") || code == "42704" || code == "42809"
}

/// Captured errors by their row's index in the fetch that returned it (the first per row).
fn by_position(captured: Captured, returned_before: u64) -> HashMap<usize, String> {
    let mut out = HashMap::new();
    for (position, e) in captured {
        if let Some(i) = position.checked_sub(returned_before) {
            out.entry(i as usize).or_insert_with(|| reason_of(&e));
        }
    }
    out
}

/// How a failed row is reported: "SQLSTATE message".
fn reason_of(e: &AiError) -> String {
    format!("{} {e}", e.sqlstate())
}

/// Settings for each transaction of the job: deferred constraints checked per row (see the
/// module doc), and floats written with all their digits, so that a float key read as text
/// names the same row when it is compared again.
fn transaction_settings() -> Result<(), AiError> {
    // A shard's job on a Citus node: the shard's metadata lock, and the shard still here.
    shards::guard_transaction()?;
    Spi::connect_mut(|c| {
        c.update("SET CONSTRAINTS ALL IMMEDIATE", None, &[])?;
        c.update("SET LOCAL extra_float_digits = 3", None, &[]).map(drop)
    })
    .map_err(spi)
}

struct State<'t> {
    reader: Reader<'t>,
    claims: Claims,
    progress: Progress,
    writer: Writer,
    since_commit: usize,
    /// Rows of the next chunk that the last chunk's query returned (it does once rows of
    /// its own have gone): their values, written with the next chunk.
    ready: HashMap<String, (Fetched, Option<String>)>,
    /// Why the job stops early: a budget (`ai_set_budget`) covering its calls is spent, so
    /// every further row would fail the same way.
    stop: Option<String>,
}

impl State<'_> {
    /// Keeps at least `want` rows queued while the table has more (reading no more than it
    /// needs, so that the claims held stay within `want` and a page): rows of the next pages
    /// while it has any and fewer than `DEFERRED_ROWS` are deferred, then deferred rows
    /// whose claims can be taken without waiting, in key order. A chunk's rows must be in key
    /// order: deferred rows (behind the pages read) are queued only while no page's rows are
    /// queued, and no page is read once they are.
    fn top_up(&mut self, want: usize) -> Result<(), AiError> {
        if self.reader.queue.len() >= want || (self.reader.exhausted && self.reader.deferred.is_empty()) {
            return Ok(());
        }
        // Reads run outside the write subtransaction: their row locks must not be undone by
        // a failed write, and a failed read is the job's, not a row's.
        self.close_slab()?;
        let mut revisiting = false;
        while self.reader.queue.len() < want {
            if !revisiting && !self.reader.exhausted && self.reader.deferred.len() < DEFERRED_ROWS {
                // No more rows than wanted: the claims a job holds stay within a chunk and a
                // page, the next chunk's rows read ahead included.
                let rows = (want - self.reader.queue.len()).min(PAGE_ROWS);
                self.reader.read_page(rows, &mut self.claims, &mut self.progress)?;
                continue;
            }
            if !revisiting && !self.reader.queue.is_empty() {
                break;
            }
            // Deferred rows whose claims are free now, as many as the queue lacks.
            let mut claimed = Vec::new();
            while self.reader.queue.len() + claimed.len() < want {
                let Some(next) = self.reader.deferred.front() else { break };
                let claim = self.claims.claim_of(&next.key);
                if !self.claims.try_take(claim) {
                    break;
                }
                if let Some(row) = self.reader.deferred.pop_front() {
                    claimed.push((row, claim));
                }
            }
            if claimed.is_empty() {
                break;
            }
            revisiting = true;
            self.revisit(claimed)?;
        }
        Ok(())
    }

    /// Waits for the claim of the next deferred row, which another session holds, and then
    /// revisits it. Called holding no claim (the queue is empty, everything written is
    /// committed).
    fn wait_deferred(&mut self) -> Result<(), AiError> {
        let Some(row) = self.reader.deferred.pop_front() else { return Ok(()) };
        let claim = self.claims.claim_of(&row.key);
        self.claims.wait_for(claim)?;
        self.revisit(vec![(row, claim)])
    }

    /// Deferred rows (in key order), claimed now: queued if they are still to fill and no
    /// other transaction holds them (one locking read for all, in a subtransaction rolled
    /// back at once, as a page's). The others are released: those still to fill counted as
    /// locked (rechecked at the end), the rest as done by another session (the one that held
    /// their claim filled, changed or deleted them meanwhile).
    fn revisit(&mut self, claimed: Vec<(Read, Claim)>) -> Result<(), AiError> {
        let table = self.reader.table;
        let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else { return Ok(()) };
        let bounds = [Some(first.0.key.clone()), Some(last.0.key.clone())];
        let sql =
            (table.lock_claimed_sql(ClaimedFrom::Deferred), table.probe_claimed_sql(ClaimedFrom::Deferred));
        queue_lockable(
            table,
            &sql,
            bounds,
            claimed,
            &mut self.reader.queue,
            &mut self.claims,
            &mut self.progress,
            |p| p.other_session += 1,
        )
    }

    fn write(&mut self, row: Pending, value: Value) -> Result<(), AiError> {
        self.writer.write(row, value, &mut self.claims, &mut self.progress)
    }

    /// A row that failed: reported, and its claim released at once (the job never reads it
    /// again; see `claims`).
    fn failed(&mut self, row: Pending, reason: &str) {
        if self.stop.is_none() && reason.starts_with("ZBB01 ") {
            self.stop = Some(reason["ZBB01 ".len()..].to_string());
        }
        self.progress.failure(&row.key, reason);
        self.claims.release(row.claim);
    }

    /// Computes and writes one chunk of claimed rows (in key order), with the query reading
    /// the next chunk's rows (`next`) after them.
    fn chunk(
        &mut self,
        rows: Vec<Pending>,
        next: Span,
        plan: &ChunkPlan,
        values: &Scratch,
        scratch: &Scratch,
    ) -> Result<(), AiError> {
        // Rows the last chunk's query computed already; the rest of that query's rows of
        // this chunk were only read ahead (their requests were carried, not their values).
        let ready = std::mem::take(&mut self.ready);
        let rows = scratch.run(|| {
            let mut rest = Vec::with_capacity(rows.len());
            let mut ready = ready;
            for row in rows {
                match ready.remove(&row.identity) {
                    Some((found, failure)) => self.settle(row, found, failure.as_ref())?,
                    None => rest.push(row),
                }
            }
            Ok::<_, AiError>(rest)
        })?;
        // The cursor belongs to the transaction, outside any write subtransaction: a slab
        // rolled back must not take it along.
        scratch.run(|| self.close_slab())?;
        values.reset();
        if rows.is_empty() {
            return Ok(());
        }
        let this = Span {
            identities: rows.iter().map(|r| Some(r.identity.clone())).collect(),
            first: rows[0].key.clone(),
            last: rows[rows.len() - 1].key.clone(),
        };
        let mut ahead: HashSet<String> = next.identities.iter().flatten().cloned().collect();
        let mut pending: HashMap<String, Pending> =
            rows.into_iter().map(|r| (r.identity.clone(), r)).collect();
        let mut cursor = Some(plan.open(this.clone(), next, values)?);
        let mut returned = 0u64;
        while !pending.is_empty() {
            let Some(open) = cursor.as_mut() else { break };
            // No more than this chunk's rows left: the next chunk's stay read ahead.
            let count = FETCH_ROWS.min(pending.len());
            match fetch_step(open, count, values) {
                Ok((fetched, captured)) => {
                    let mut done = fetched.len() < count;
                    let failures = by_position(captured, returned);
                    returned += fetched.len() as u64;
                    scratch.run(|| {
                        for (i, row) in fetched.into_iter().enumerate() {
                            let failure = failures.get(&i);
                            if let Some(p) = pending.remove(&row.identity) {
                                self.settle(p, row, failure)?;
                            } else if ahead.contains(&row.identity) {
                                // The next chunk's rows come after all of this one's: those
                                // not returned are gone. Written with the next chunk.
                                done = true;
                                self.ready.insert(row.identity.clone(), (row, failure.cloned()));
                            }
                        }
                        Ok::<_, AiError>(())
                    })?;
                    if done {
                        cursor = None;
                    }
                }
                Err(_) if !ahead.is_empty() => {
                    // The query failed, maybe on a row of the next chunk read ahead: this
                    // chunk's rows not returned are computed again by a query of their own.
                    drop(cursor.take());
                    ahead.clear();
                    let left = Span {
                        identities: pending.keys().map(|i| Some(i.clone())).collect(),
                        ..this.clone()
                    };
                    cursor = Some(plan.open(left, Span::none(), values)?);
                    returned = 0;
                }
                Err(_) => {
                    // The query failed on a row it did not say: the rows it had not returned
                    // are computed one at a time, so that only the failing one is lost.
                    cursor = None;
                    let mut rest: Vec<Pending> = pending.drain().map(|(_, p)| p).collect();
                    rest.sort_by(|a, b| a.key.cmp(&b.key));
                    for row in rest {
                        self.one_by_one(row, plan, values, scratch)?;
                    }
                }
            }
        }
        for (_, row) in pending.drain() {
            self.gone(row);
        }
        scratch.run(|| self.close_slab())?;
        // Closed outside the write subtransaction too; its node carries what it read ahead.
        drop(cursor);
        if self.ready.is_empty() {
            values.reset();
        }
        Ok(())
    }

    /// One row computed by the chunk query alone, in a subtransaction of its own.
    fn one_by_one(
        &mut self,
        row: Pending,
        plan: &ChunkPlan,
        values: &Scratch,
        scratch: &Scratch,
    ) -> Result<(), AiError> {
        let sub = SubTransaction::begin();
        let key = row.key.clone();
        let identity = row.identity.clone();
        let plan = AssertUnwindSafe(plan);
        let values = AssertUnwindSafe(values);
        let (result, sub) = try_in_catching(sub, row_or_call, move || {
            let (plan, values) = (plan, values);
            let row = Span { identities: vec![Some(identity)], first: key.clone(), last: key };
            let mut cursor = plan.open(row, Span::none(), &values)?;
            let (fetched, captured) = capture::collect(|| cursor.fetch(1, &values));
            drop(cursor);
            Ok::<_, AiError>((fetched?, captured))
        });
        if let Some(sub) = sub {
            sub.release();
        }
        scratch.run(|| match result {
            Ok(Ok((mut fetched, captured))) => match fetched.pop() {
                Some(found) => {
                    let reason = captured.into_iter().next().map(|(_, e)| reason_of(&e));
                    self.settle(row, found, reason.as_ref())
                }
                None => {
                    self.gone(row);
                    Ok(())
                }
            },
            Ok(Err(e)) => Err(e),
            Err(Caught::Statement(reason)) => {
                self.failed(row, &reason);
                self.since_commit += 1;
                Ok(())
            }
        })
    }

    /// A row the chunk query did not return: filled, changed or deleted since it was read.
    fn gone(&mut self, row: Pending) {
        self.progress.skipped += 1;
        self.claims.release(row.claim);
        self.since_commit += 1;
    }

    /// A computed row: written, or reported with the reason its value is missing.
    fn settle(&mut self, row: Pending, found: Fetched, failure: Option<&String>) -> Result<(), AiError> {
        self.since_commit += 1;
        match (failure, found.value) {
            (Some(reason), _) => {
                self.failed(row, reason);
                Ok(())
            }
            (None, None) => {
                self.failed(row, NULL_VALUE);
                Ok(())
            }
            (None, Some(datum)) => self.write(row, Value { datum, inputs: found.inputs }),
        }
    }

    fn close_slab(&mut self) -> Result<(), AiError> {
        self.writer.close_slab(&mut self.claims, &mut self.progress)
    }

    fn commit(&mut self, connection: &NonAtomicSpi) -> Result<(), AiError> {
        self.close_slab()?;
        // A reference table's job: the batch's values go to every copy in this transaction.
        shards::before_commit()?;
        connection.commit();
        if connection.commits() {
            self.claims.release_written();
        }
        self.since_commit = 0;
        self.progress.committed();
        let done = self.progress.done();
        crate::shared::with_slot(|slot| {
            if let Some(slot) = slot {
                slot.rows_done(done)
            }
        });
        transaction_settings()
    }

    /// Rows found locked may have been another job's writes, committed since: those count as
    /// done by another session; the rest stay reported as locked.
    fn recheck_locked(&mut self) -> Result<(), AiError> {
        let locked = std::mem::take(&mut self.progress.locked);
        let sql = self.reader.table.still_todo_sql();
        for key in locked {
            let todo =
                Spi::connect(|c| c.select(&sql, Some(1), &[key.clone().into()]).map(|r| !r.is_empty()))
                    .map_err(spi)?;
            if todo {
                self.progress.locked.push(key);
            } else {
                self.progress.other_session += 1;
            }
        }
        Ok(())
    }
}

/// Claimed rows (in key order, between the two `bounds` the locking statements take as $1
/// and $2): queued if they are still to fill and no other transaction holds them, found by
/// one SKIP LOCKED read in a subtransaction rolled back at once, so that no row lock is held
/// while requests are in flight (the write takes its own, and skips a row locked by then).
/// The others give their claim back: those still to fill are counted as locked (rechecked at
/// the end), the rest by `gone` (filled, changed or deleted meanwhile).
#[allow(clippy::too_many_arguments)] // one job's state, lent piece by piece
fn queue_lockable(
    table: &Table,
    (lock_sql, probe_sql): &(String, String),
    bounds: [Option<Key>; 2],
    claimed: Vec<(Read, Claim)>,
    queue: &mut VecDeque<Pending>,
    claims: &mut Claims,
    progress: &mut Progress,
    gone: impl Fn(&mut Progress),
) -> Result<(), AiError> {
    if claimed.is_empty() {
        return Ok(());
    }
    let identities: Vec<Option<String>> = claimed.iter().map(|(r, _)| Some(r.identity.clone())).collect();
    let args = || [bounds[0].clone().into(), bounds[1].clone().into(), identities.clone().into()];
    let probe = SubTransaction::begin();
    let lockable: HashSet<String> =
        Spi::connect_mut(|c| rows_of(table, c.update(lock_sql, None, &args()).map_err(spi)?))?
            .into_iter()
            .map(|r| r.identity)
            .collect();
    probe.rollback();
    let mut unlockable = Vec::new();
    for (row, claim) in claimed {
        if lockable.contains(&row.identity) {
            queue.push_back(Pending { key: row.key, identity: row.identity, claim });
        } else {
            unlockable.push((row, claim));
        }
    }
    if unlockable.is_empty() {
        return Ok(());
    }
    let todo: HashSet<String> =
        Spi::connect(|c| rows_of(table, c.select(probe_sql, None, &args()).map_err(spi)?))?
            .into_iter()
            .map(|r| r.identity)
            .collect();
    for (row, claim) in unlockable {
        claims.release(claim);
        if todo.contains(&row.identity) {
            progress.locked(row.key);
        } else {
            gone(progress);
        }
    }
    Ok(())
}

/// Reads rows in key order, a page at a time (keyset pagination), claims them, and keeps
/// those no other transaction holds; defers those whose claim another session holds.
struct Reader<'t> {
    table: &'t Table,
    last_key: Option<Key>,
    queue: VecDeque<Pending>,
    exhausted: bool,
    /// Rows whose claim was held when they were read, in key order (at most
    /// `DEFERRED_ROWS` and a page).
    deferred: VecDeque<Read>,
}

/// A row as the reading statements return it.
struct Read {
    identity: String,
    key: Key,
}

fn rows_of(table: &Table, rows: pgrx::spi::SpiTupleTable) -> Result<Vec<Read>, AiError> {
    let n = table.key_count();
    rows.map(|r| {
        let identity = r.get::<String>(1).map_err(spi)?.unwrap_or_default();
        let key = (2..=n + 1).map(|i| r.get::<String>(i).map_err(spi)).collect::<Result<Key, AiError>>()?;
        Ok(Read { identity, key })
    })
    .collect()
}

impl Reader<'_> {
    /// Reads the next `rows` rows (at most `PAGE_ROWS`).
    fn read_page(
        &mut self,
        rows: usize,
        claims: &mut Claims,
        progress: &mut Progress,
    ) -> Result<(), AiError> {
        let after = self.last_key.clone();
        let page = Spi::connect(|c| {
            rows_of(
                self.table,
                c.select(&self.table.page_sql(), None, &[after.clone().into(), (rows as i64).into()])
                    .map_err(spi)?,
            )
        })?;
        self.exhausted = page.len() < rows;
        let Some(last) = page.last().map(|r| r.key.clone()) else { return Ok(()) };
        let mut claimed = Vec::with_capacity(page.len());
        for row in page {
            let claim = claims.claim_of(&row.key);
            if claims.try_take(claim) {
                claimed.push((row, claim));
            } else {
                self.deferred.push_back(row);
            }
        }
        let from = ClaimedFrom::AfterPage;
        let sql = (self.table.lock_claimed_sql(from), self.table.probe_claimed_sql(from));
        queue_lockable(
            self.table,
            &sql,
            [after, Some(last.clone())],
            claimed,
            &mut self.queue,
            claims,
            progress,
            |p| p.skipped += 1,
        )?;
        self.last_key = Some(last);
        Ok(())
    }

    fn take(&mut self, n: usize) -> Option<Vec<Pending>> {
        let n = n.min(self.queue.len());
        (n > 0).then(|| self.queue.drain(..n).collect())
    }

    /// The next `n` queued rows (at most), left queued: the next chunk's.
    fn peek(&self, n: usize) -> Span {
        let rows: Vec<&Pending> = self.queue.iter().take(n).collect();
        match (rows.first(), rows.last()) {
            (Some(first), Some(last)) => Span {
                identities: rows.iter().map(|r| Some(r.identity.clone())).collect(),
                first: first.key.clone(),
                last: last.key.clone(),
            },
            _ => Span::none(),
        }
    }
}

/// How a row's write ended.
enum Outcome {
    Filled,
    /// Filled by someone else, or its source changed, since it was read.
    Skipped,
    /// Another transaction holds it locked.
    Locked,
}

/// Writes results through one prepared statement, in subtransaction slabs.
struct Writer {
    plan: OwnedPreparedStatement,
    value_type: pg_sys::Oid,
    slab: Option<SubTransaction>,
    /// Rows written in the open slab: redone if the slab has to be rolled back.
    slab_rows: Vec<(Pending, Value, Outcome)>,
}

impl Writer {
    /// Prepares the UPDATE, with `$1` of the expression's type: a value the target column
    /// has no assignment cast from fails the job here, before any request.
    fn prepare(table: &Table, analysis: &Analysis) -> Result<Writer, AiError> {
        let plan = Spi::connect_mut(|c| {
            c.prepare_mut(
                table.write_sql(&analysis.checked).as_str(),
                &[
                    PgOid::from(analysis.value_type),
                    PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID),
                    PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
                ],
            )
            .map(|p| p.keep())
            .map_err(spi)
        })?;
        Ok(Writer { plan, value_type: analysis.value_type, slab: None, slab_rows: Vec::new() })
    }

    /// One UPDATE in the open subtransaction; a row-level error comes back as Err.
    fn attempt(&mut self, row: &Pending, value: &Value) -> Result<Outcome, String> {
        let sub = self.slab.take().unwrap_or_else(SubTransaction::begin);
        let plan = AssertUnwindSafe(&self.plan);
        let args = AssertUnwindSafe((value, &row.key, self.value_type));
        let (result, sub) = try_in(sub, move || {
            let plan = plan;
            let AssertUnwindSafe((value, key, value_type)) = args;
            Spi::connect_mut(|c| {
                // SAFETY: the datum is of the expression's type, the statement's $1, and
                // lives in the job's value memory until the chunk is written.
                let datum = unsafe { pgrx::datum::DatumWithOid::new(value.datum, value_type) };
                let rows =
                    c.update(&**plan, None, &[datum, key.clone().into(), value.inputs.as_str().into()])?;
                let row = rows.first();
                Ok::<_, pgrx::spi::SpiError>((
                    row.get::<bool>(1)?.unwrap_or(false),
                    row.get::<bool>(2)?.unwrap_or(false),
                ))
            })
        });
        self.slab = sub;
        match result {
            Ok(Ok((_, true))) => Ok(Outcome::Filled),
            Ok(Ok((true, false))) => Ok(Outcome::Skipped),
            Ok(Ok((false, _))) => Ok(Outcome::Locked),
            Ok(Err(e)) => {
                // An SPI error pgrx reports without raising: the subtransaction is still open
                // and must be undone like a failed statement, so the slab can be redone.
                if let Some(sub) = self.slab.take() {
                    sub.rollback();
                }
                Err(format!("XX000: {e}"))
            }
            Err(Caught::Statement(reason)) => Err(reason),
        }
    }

    fn write(
        &mut self,
        row: Pending,
        value: Value,
        claims: &mut Claims,
        progress: &mut Progress,
    ) -> Result<(), AiError> {
        match self.attempt(&row, &value) {
            Ok(outcome) => {
                self.slab_rows.push((row, value, outcome));
                if self.slab_rows.len() >= SLAB_ROWS {
                    self.close_slab(claims, progress)?;
                }
            }
            Err(reason) => {
                // The slab is rolled back: redo what it held, then report this row.
                self.redo(claims, progress)?;
                progress.failure(&row.key, &reason);
                claims.release(row.claim);
            }
        }
        Ok(())
    }

    /// Writes the rows of a rolled-back slab again: together first, and one subtransaction
    /// each if that fails too (a trigger need not fail the same way twice).
    fn redo(&mut self, claims: &mut Claims, progress: &mut Progress) -> Result<(), AiError> {
        let rows = std::mem::take(&mut self.slab_rows);
        let mut again = Vec::with_capacity(rows.len());
        let mut failed_at = None;
        for (i, (row, value, _)) in rows.iter().enumerate() {
            match self.attempt(row, value) {
                Ok(outcome) => again.push(outcome),
                Err(_) => {
                    failed_at = Some(i);
                    break;
                }
            }
        }
        if failed_at.is_none() {
            self.slab_rows = rows.into_iter().zip(again).map(|((r, v, _), o)| (r, v, o)).collect();
            return Ok(());
        }
        for (row, value, _) in rows {
            match self.attempt(&row, &value) {
                Ok(outcome) => {
                    self.slab_rows.push((row, value, outcome));
                    self.close_slab(claims, progress)?;
                }
                Err(reason) => {
                    progress.failure(&row.key, &reason);
                    claims.release(row.claim);
                }
            }
        }
        Ok(())
    }

    /// Keeps the open slab's writes and settles their rows: counted, claims released, but
    /// those of written rows, kept until the commit (see `claims`).
    fn close_slab(&mut self, claims: &mut Claims, progress: &mut Progress) -> Result<(), AiError> {
        if let Some(sub) = self.slab.take() {
            sub.release();
        }
        for (row, _, outcome) in self.slab_rows.drain(..) {
            match outcome {
                Outcome::Filled => {
                    progress.filled += 1;
                    claims.written(row.claim);
                    continue;
                }
                Outcome::Skipped => progress.skipped += 1,
                Outcome::Locked => progress.locked(row.key),
            }
            claims.release(row.claim);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_rows;

    #[test]
    fn literals_read_back_as_their_text() {
        assert_eq!(super::literal("Summarize: {0}"), "'Summarize: {0}'");
        assert_eq!(super::literal("it's"), "'it''s'");
        assert_eq!(super::literal(r"a\b 'c'"), r"E'a\\b ''c'''");
    }

    #[test]
    fn chunks_are_whole_rounds_once_the_round_is_known() {
        // Unknown round: the batch, at most CHUNK_ROWS.
        assert_eq!(chunk_rows(1000, 0, 0), 1000);
        assert_eq!(chunk_rows(5000, 0, 0), 1000);
        assert_eq!(chunk_rows(10, 3, 0), 7);
        // 16 requests of 10 inputs: 960 rows, then commit (0) rather than a chunk of 40.
        assert_eq!(chunk_rows(1000, 0, 160), 960);
        assert_eq!(chunk_rows(1000, 960, 160), 0);
        assert_eq!(chunk_rows(1000, 1000, 160), 0);
        assert_eq!(chunk_rows(5000, 960, 160), 960);
        // A batch smaller than a round, or a round beyond a chunk: as asked.
        assert_eq!(chunk_rows(10, 0, 16), 10);
        assert_eq!(chunk_rows(10, 4, 16), 6);
        assert_eq!(chunk_rows(3000, 0, 1500), 1000);
    }
}
