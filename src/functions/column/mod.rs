//! `ai_embed_column` and `ai_gen_column`: procedures that fill a column of any table with a
//! primary key, committing as they go.
//!
//! The job keeps `pg_bailian.max_concurrency` requests in flight for its whole length: rows
//! are read ahead in key order, each result is written as soon as it arrives, and a commit
//! follows every `batch_size` rows, so requests never wait for a commit.
//!
//! What can go wrong with one row costs only that row:
//! - a request that fails after retries leaves the row NULL, reported by key;
//! - a write that fails (too long for varchar(n), a CHECK or domain constraint, a trigger
//!   that raises, a value the target type rejects) is rolled back alone: writes run in a
//!   subtransaction per slab of rows, and a failed slab is redone with the failing row left
//!   out (so subtransactions stay few when nothing fails, and the job never aborts on a row);
//! - a row another transaction holds locked is not waited for: it is skipped, counted and
//!   reported by key (rechecked at the end, in case it was another job's uncommitted write);
//! - a row another job on the same column has claimed is left to it (see `claims`).
//!
//! Errors that are about the job rather than a row (a cancel, a read-only transaction,
//! running out of memory) end it; committed batches stay, and a later CALL resumes.
//!
//! Deferred constraints are made immediate in every transaction of the job, so that their
//! violations surface on the row's own statement rather than at COMMIT. Keys travel as text
//! and are cast back to the column's exact type (typmod included), with floats printed in
//! full (`extra_float_digits = 3`), so that every key names its row again.

mod claims;
mod progress;
mod table;

use super::generate::{call_params, prompt_request};
use super::{arg, name_arg};
use crate::backend::{self, Target};
use crate::catalog;
use crate::entry::sql_entry;
use crate::spi::{try_in, Caught, NonAtomicSpi, Scratch, SubTransaction};
use bailian_core::client::embed_each;
use bailian_core::providers::EmbedInput;
use bailian_core::registry::Task;
use bailian_core::AiError;
use claims::{Claim, Claims};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{pg_sys, JsonB, PgBuiltInOids, PgOid};
use progress::{Key, Progress};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use table::{Table, TargetKind};

sql_entry!(pg_finfo_pg_bailian_embed_column, pg_bailian_embed_column, embed_column);
sql_entry!(pg_finfo_pg_bailian_gen_column, pg_bailian_gen_column, gen_column);

/// Rows written in one subtransaction at most, which bounds what a failure makes us redo.
const SLAB_ROWS: usize = 256;

fn spi(e: pgrx::spi::SpiError) -> AiError {
    AiError::Internal { message: format!("column query failed: {e}") }
}

/// What a job is asked to do, from the procedure's arguments.
struct Job {
    procedure: &'static str,
    table: pg_sys::Oid,
    source: String,
    target: String,
    model: String,
    batch_size: usize,
    template: String,
    params: Option<serde_json::Value>,
}

impl Job {
    fn from_args(fcinfo: pg_sys::FunctionCallInfo, task: Task) -> Result<Job, AiError> {
        let procedure = match task {
            Task::Embedding => "ai_embed_column",
            _ => "ai_gen_column",
        };
        let (table, source, target, model) = (
            arg::<pg_sys::Oid>(fcinfo, 0),
            name_arg(fcinfo, 1),
            name_arg(fcinfo, 2),
            arg::<String>(fcinfo, 3),
        );
        let (Some(table), Some(source), Some(target), Some(model)) = (table, source, target, model) else {
            return Err(AiError::NullArgument {
                message: format!(
                    "{procedure}: table_name, source_column, target_column and model_name must not be NULL"
                ),
            });
        };
        let (template, batch_size, params) = match task {
            Task::Embedding => (None, arg::<i32>(fcinfo, 4), None),
            _ => (arg::<String>(fcinfo, 4), arg::<i32>(fcinfo, 5), arg::<JsonB>(fcinfo, 6).map(|j| j.0)),
        };
        let batch_size = match batch_size {
            Some(n @ 1..=100_000) => n as usize,
            other => {
                return Err(AiError::invalid(format!(
                    "{procedure}: batch_size must be between 1 and 100000, got {}",
                    other.map_or("NULL".to_string(), |n| n.to_string())
                )))
            }
        };
        let template = match (task, template) {
            (Task::Embedding, _) => "{0}".to_string(),
            (_, Some(t)) if t.contains("{0}") => t,
            _ => {
                return Err(AiError::invalid(format!(
                    "{procedure}: prompt_template must contain {{0}}, where the source text goes"
                )))
            }
        };
        Ok(Job { procedure, table, source, target, model, batch_size, template, params })
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

fn embed_column(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    run(fcinfo, Task::Embedding)
}

fn gen_column(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    run(fcinfo, Task::Chat)
}

/// A row to fill, as read and claimed.
struct Pending {
    key: Key,
    source: String,
    claim: Claim,
}

/// A result to write.
enum Value {
    Vector(Vec<f32>),
    Text(String),
}

fn run(fcinfo: pg_sys::FunctionCallInfo, task: Task) -> Result<Option<pg_sys::Datum>, AiError> {
    let job = Job::from_args(fcinfo, task)?;
    let procedure = job.procedure;
    // SAFETY: a plain read of the transaction state.
    if !nonatomic(fcinfo) || unsafe { pg_sys::IsSubTransaction() } {
        return Err(AiError::TransactionControl {
            message: format!(
                "{procedure} commits after every batch, so it cannot run inside a transaction block"
            ),
            hint: format!(
                "Run CALL {procedure}(...) on its own, not between BEGIN and COMMIT or inside a function."
            ),
        });
    }
    let embedding = task == Task::Embedding;
    let table = Table::open(procedure, job.table, &job.source, &job.target, embedding)?;
    let d = catalog::load_for(&job.model, procedure, &[task])?;
    if let (TargetKind::Embedding { dims: Some(dims) }, Some(model_dims)) = (table.target_kind, d.dimension())
    {
        if dims as u32 != model_dims {
            return Err(AiError::DatatypeMismatch {
                message: format!(
                    "{procedure}: target column \"{}\" holds {dims} dimensions, but model \"{}\" returns {model_dims}",
                    job.target, job.model
                ),
            });
        }
    }
    let params = call_params(&d, job.params.clone().map(JsonB))?;
    let target = Target::new(&d, &params)?;
    table.check_privileges(procedure)?;

    let connection = NonAtomicSpi::connect()?;
    transaction_settings()?;
    let total = Spi::connect(|c| {
        c.select(&table.count_sql(), None, &[]).map_err(spi)?.first().get::<i64>(1).map_err(spi)
    })?
    .unwrap_or(0);
    notice!(
        "{procedure}: {total} rows of {} to fill ({} IS NULL, {} has text), {} per batch",
        table.shown,
        job.target,
        job.source,
        job.batch_size
    );
    let per_unit = if embedding { d.spec.max_inputs_per_request.unwrap_or(1).max(1) as usize } else { 1 };
    let ahead = crate::guc::max_concurrency() * per_unit * 2;
    let writer = Writer::prepare(&table)?;
    // Declared after the connection and before the state: dropped in between.
    let scratch = Scratch::new();
    let state = RefCell::new(State {
        reader: Reader {
            table: &table,
            page: ahead.max(64),
            last_key: None,
            queue: VecDeque::new(),
            exhausted: false,
        },
        claims: Claims::new(table.oid, table.target_attnum),
        progress: Progress::new(procedure, table.key_names.clone(), job.target.clone(), total),
        writer,
        since_commit: 0,
    });
    scratch.run(|| state.borrow_mut().top_up(ahead))?;

    let model = &d.embedding_model();
    backend::drive(
        &target,
        |client, call| {
            let rows = state.borrow_mut().reader.take(per_unit)?;
            let request = (!embedding)
                .then(|| prompt_request(&d, &job.template.replace("{0}", &rows[0].source), &params));
            Some(async move {
                let results: Vec<Result<Value, AiError>> = match request {
                    Some(Ok(request)) => {
                        vec![client.chat(&call, &request).await.map(|o| Value::Text(o.content))]
                    }
                    Some(Err(e)) => vec![Err(e)],
                    None => {
                        let inputs: Vec<EmbedInput> =
                            rows.iter().map(|r| EmbedInput::Text(&r.source)).collect();
                        embed_each(client, &call, model, &inputs)
                            .await
                            .into_iter()
                            .map(|r| r.map(Value::Vector))
                            .collect()
                    }
                };
                (rows, results)
            })
        },
        |(rows, results)| {
            scratch.run(|| {
                let mut s = state.borrow_mut();
                for (row, result) in rows.into_iter().zip(results) {
                    match result {
                        Ok(value) => s.write(row, value)?,
                        Err(AiError::Interrupted) => return Err(AiError::Interrupted),
                        Err(e) => {
                            s.progress.failure(&row.key, &format!("{} {e}", e.sqlstate()));
                            s.claims.keep_until_the_end(row.claim);
                        }
                    }
                    s.since_commit += 1;
                }
                if s.since_commit >= job.batch_size {
                    s.commit(&connection)?;
                }
                s.top_up(ahead)
            })
        },
    )?;
    let mut s = state.into_inner();
    scratch.run(|| {
        if s.since_commit > 0 {
            s.commit(&connection)?;
        }
        s.recheck_locked()
    })?;
    s.progress.finish();
    drop(s);
    drop(connection);
    Ok(None)
}

/// Settings for each transaction of the job: deferred constraints checked per row (see the
/// module doc), and floats written with all their digits, so that a float key read as text
/// names the same row when it is compared again.
fn transaction_settings() -> Result<(), AiError> {
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
}

impl State<'_> {
    /// Keeps at least `want` rows queued while the table has more.
    fn top_up(&mut self, want: usize) -> Result<(), AiError> {
        if self.reader.exhausted || self.reader.queue.len() >= want {
            return Ok(());
        }
        // Reads run outside the write subtransaction: their row locks must not be undone by
        // a failed write, and a failed read is the job's, not a row's.
        self.close_slab()?;
        while !self.reader.exhausted && self.reader.queue.len() < want {
            self.reader.read_page(&mut self.claims, &mut self.progress)?;
        }
        Ok(())
    }

    fn write(&mut self, row: Pending, value: Value) -> Result<(), AiError> {
        self.writer.write(row, value, &mut self.claims, &mut self.progress)
    }

    fn close_slab(&mut self) -> Result<(), AiError> {
        self.writer.close_slab(&mut self.claims, &mut self.progress)
    }

    fn commit(&mut self, connection: &NonAtomicSpi) -> Result<(), AiError> {
        self.close_slab()?;
        connection.commit();
        self.since_commit = 0;
        self.progress.committed();
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

/// Reads rows in key order, a page at a time (keyset pagination), claims them, and keeps
/// those no other transaction holds.
struct Reader<'t> {
    table: &'t Table,
    page: usize,
    last_key: Option<Key>,
    queue: VecDeque<Pending>,
    exhausted: bool,
}

/// A row as the reading statements return it.
struct Read {
    identity: String,
    key: Key,
    source: String,
}

fn rows_of(table: &Table, rows: pgrx::spi::SpiTupleTable) -> Result<Vec<Read>, AiError> {
    let n = table.key_count();
    rows.map(|r| {
        let identity = r.get::<String>(1).map_err(spi)?.unwrap_or_default();
        let key = (2..=n + 1).map(|i| r.get::<String>(i).map_err(spi)).collect::<Result<Key, AiError>>()?;
        let source = r.get::<String>(n + 2).map_err(spi)?.unwrap_or_default();
        Ok(Read { identity, key, source })
    })
    .collect()
}

impl Reader<'_> {
    fn read_page(&mut self, claims: &mut Claims, progress: &mut Progress) -> Result<(), AiError> {
        let after = self.last_key.clone();
        let page = Spi::connect(|c| {
            rows_of(
                self.table,
                c.select(&self.table.page_sql(), None, &[after.clone().into(), (self.page as i64).into()])
                    .map_err(spi)?,
            )
        })?;
        self.exhausted = page.len() < self.page;
        let Some(last) = page.last().map(|r| r.key.clone()) else { return Ok(()) };
        let mut claimed = Vec::with_capacity(page.len());
        for row in page {
            let claim = claims.claim_of(&row.key);
            if claims.try_take(claim) {
                claimed.push((row, claim));
            } else {
                progress.other_session += 1;
            }
        }
        if !claimed.is_empty() {
            // Which claimed rows are still to fill and not locked by another transaction: a
            // SKIP LOCKED read in a subtransaction rolled back at once, so that no row lock is
            // held while requests are in flight (the write takes its own, and skips a row
            // locked by then). The source is re-read, as it may have changed.
            let identities: Vec<Option<String>> =
                claimed.iter().map(|(r, _)| Some(r.identity.clone())).collect();
            let args = || [after.clone().into(), Some(last.clone()).into(), identities.clone().into()];
            let probe = SubTransaction::begin();
            let lockable: HashMap<String, String> = Spi::connect_mut(|c| {
                rows_of(self.table, c.update(&self.table.lock_page_sql(), None, &args()).map_err(spi)?)
            })?
            .into_iter()
            .map(|r| (r.identity, r.source))
            .collect();
            probe.rollback();
            let mut unlockable = Vec::new();
            for (row, claim) in claimed {
                match lockable.get(&row.identity) {
                    Some(source) => {
                        self.queue.push_back(Pending { key: row.key, source: source.clone(), claim })
                    }
                    None => unlockable.push((row, claim)),
                }
            }
            if !unlockable.is_empty() {
                let todo: std::collections::HashSet<String> = Spi::connect(|c| {
                    rows_of(self.table, c.select(&self.table.probe_page_sql(), None, &args()).map_err(spi)?)
                })?
                .into_iter()
                .map(|r| r.identity)
                .collect();
                for (row, claim) in unlockable {
                    claims.release(claim);
                    if todo.contains(&row.identity) {
                        progress.locked(row.key);
                    } else {
                        progress.skipped += 1;
                    }
                }
            }
        }
        self.last_key = Some(last);
        Ok(())
    }

    fn take(&mut self, n: usize) -> Option<Vec<Pending>> {
        let n = n.min(self.queue.len());
        (n > 0).then(|| self.queue.drain(..n).collect())
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
    slab: Option<SubTransaction>,
    /// Rows written in the open slab: redone if the slab has to be rolled back.
    slab_rows: Vec<(Pending, Value, Outcome)>,
}

impl Writer {
    fn prepare(table: &Table) -> Result<Writer, AiError> {
        let plan = Spi::connect_mut(|c| {
            c.prepare_mut(
                table.write_sql().as_str(),
                &[
                    table.value_type(),
                    PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID),
                    PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
                ],
            )
            .map(|p| p.keep())
            .map_err(spi)
        })?;
        Ok(Writer { plan, slab: None, slab_rows: Vec::new() })
    }

    /// One UPDATE in the open subtransaction; a row-level error comes back as Err.
    fn attempt(&mut self, row: &Pending, value: &Value) -> Result<Outcome, String> {
        let sub = self.slab.take().unwrap_or_else(SubTransaction::begin);
        let plan = AssertUnwindSafe(&self.plan);
        let args = AssertUnwindSafe((value, &row.key, &row.source));
        let (result, sub) = try_in(sub, move || {
            let plan = plan;
            let AssertUnwindSafe((value, key, source)) = args;
            Spi::connect_mut(|c| {
                // Datums are built here, in the nested connection's memory, freed with it.
                let value = match value {
                    Value::Vector(v) => v.clone().into(),
                    Value::Text(t) => t.as_str().into(),
                };
                let rows = c.update(&**plan, None, &[value, key.clone().into(), source.as_str().into()])?;
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
                claims.keep_until_the_end(row.claim);
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
                    claims.keep_until_the_end(row.claim);
                }
            }
        }
        Ok(())
    }

    /// Keeps the open slab's writes and settles their rows: counted, claims released (a
    /// written row stays protected by its row lock until the commit).
    fn close_slab(&mut self, claims: &mut Claims, progress: &mut Progress) -> Result<(), AiError> {
        if let Some(sub) = self.slab.take() {
            sub.release();
        }
        for (row, _, outcome) in self.slab_rows.drain(..) {
            match outcome {
                Outcome::Filled => progress.filled += 1,
                Outcome::Skipped => progress.skipped += 1,
                Outcome::Locked => progress.locked(row.key),
            }
            claims.release(row.claim);
        }
        Ok(())
    }
}
