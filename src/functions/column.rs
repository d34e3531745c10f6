//! `bailian.run_fill`: the engine of ai_embed_column and ai_gen_column, a procedure that
//! commits as it goes. The plpgsql wrapper (sql/procedures.sql) checks the arguments and
//! builds the statements; this keeps `pg_bailian.max_concurrency` requests in flight for
//! the whole job, reading rows ahead in primary-key order, writing each result as soon as
//! it arrives and committing every `batch_size` rows. Requests never wait for a commit,
//! so there is no idle tail at the end of each batch.

use super::arg;
use super::generate::call_params;
use crate::backend::{self, Target};
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::client::embed_each;
use bailian_core::registry::Task;
use bailian_core::{request, AiError};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{pg_sys, JsonB, PgBuiltInOids, PgOid};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Instant;

sql_entry!(pg_finfo_pg_bailian_run_fill, pg_bailian_run_fill, run_fill);

/// Failures reported by name per committed batch; the rest are counted only.
const REPORTED_FAILURES: usize = 5;

fn spi(e: pgrx::spi::SpiError) -> AiError {
    AiError::Internal { message: format!("column query failed: {e}") }
}

/// A row to fill: its primary key (as text) and source text, as read.
struct Pending {
    key: Vec<Option<String>>,
    source: String,
}

/// Reads rows ahead in primary-key order (keyset pagination), a chunk at a time.
struct Reader {
    select_first: String,
    select_next: String,
    chunk: usize,
    last_key: Option<Vec<Option<String>>>,
    queue: VecDeque<Pending>,
    exhausted: bool,
}

impl Reader {
    /// Keeps at least `want` rows queued while the table has more.
    fn top_up(&mut self, want: usize) -> Result<(), AiError> {
        while !self.exhausted && self.queue.len() < want {
            let sql = if self.last_key.is_some() { &self.select_next } else { &self.select_first };
            let rows: Vec<Pending> = Spi::connect_mut(|c| {
                c.update(sql.as_str(), None, &[self.last_key.clone().into(), (self.chunk as i64).into()])
                    .map_err(spi)?
                    .map(|r| {
                        Ok(Pending {
                            key: r.get::<Vec<Option<String>>>(1).map_err(spi)?.unwrap_or_default(),
                            source: r.get::<String>(2).map_err(spi)?.unwrap_or_default(),
                        })
                    })
                    .collect::<Result<_, AiError>>()
            })?;
            self.exhausted = rows.len() < self.chunk;
            if let Some(last) = rows.last() {
                self.last_key = Some(last.key.clone());
            }
            self.queue.extend(rows);
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Option<Vec<Pending>> {
        let n = n.min(self.queue.len());
        (n > 0).then(|| self.queue.drain(..n).collect())
    }
}

struct Progress {
    procedure: &'static str,
    key_columns: String,
    target_column: String,
    total: i64,
    filled: i64,
    failed: i64,
    skipped: i64,
    since_commit: usize,
    reported: usize,
    started: Instant,
}

impl Progress {
    fn done(&self) -> i64 {
        self.filled + self.failed + self.skipped
    }

    fn failure(&mut self, row: &Pending, e: &AiError) {
        self.failed += 1;
        if self.reported < REPORTED_FAILURES {
            self.reported += 1;
            let key = row.key.iter().map(|k| k.as_deref().unwrap_or("NULL")).collect::<Vec<_>>().join(", ");
            warning!("{}: row ({})=({key}) failed: {} {e}", self.procedure, self.key_columns, e.sqlstate());
        }
    }

    /// Commits the rows written so far and reports progress.
    fn commit(&mut self) {
        // SAFETY: this procedure's SPI connection is non-atomic (checked on entry) and no
        // nested SPI connection is open here.
        unsafe { pg_sys::SPI_commit() };
        self.since_commit = 0;
        self.reported = 0;
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let done = self.done();
        let rate = done as f64 / elapsed;
        notice!(
            "{}: {done}/{} rows ({:.1} %), {:.1} rows/s, ETA {:.1} s",
            self.procedure,
            self.total,
            100.0 * done as f64 / self.total.max(1) as f64,
            rate,
            (self.total - done).max(0) as f64 / rate.max(0.001)
        );
    }

    fn finish(&self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        notice!(
            "{}: finished in {:.1} s: {} filled, {} failed, {} skipped, {:.1} rows/s",
            self.procedure,
            elapsed,
            self.filled,
            self.failed,
            self.skipped,
            self.done() as f64 / elapsed.max(0.001)
        );
        if self.failed > 0 {
            warning!(
                "{}: {} rows failed and keep a NULL {}; CALL {} again to retry them",
                self.procedure,
                self.failed,
                self.target_column,
                self.procedure
            );
        }
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

fn run_fill(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let text = |n: usize, what: &str| {
        arg::<String>(fcinfo, n).ok_or_else(|| AiError::invalid(format!("{what} must not be NULL")))
    };
    let kind = text(0, "kind")?;
    let (procedure, task, target_type) = match kind.as_str() {
        "embed" => ("ai_embed_column", Task::Embedding, PgBuiltInOids::FLOAT4ARRAYOID),
        "gen" => ("ai_gen_column", Task::Chat, PgBuiltInOids::TEXTOID),
        other => return Err(AiError::invalid(format!("kind must be 'embed' or 'gen', got '{other}'"))),
    };
    if !nonatomic(fcinfo) {
        return Err(AiError::TransactionControl {
            message: format!(
                "{procedure} commits after every batch, so it cannot run inside a transaction block"
            ),
            hint: format!(
                "Run CALL {procedure}(...) on its own, not between BEGIN and COMMIT or inside a function."
            ),
        });
    }
    let model = text(1, "model_name")?;
    let (select_first, select_next, update_sql) =
        (text(2, "select_first")?, text(3, "select_next")?, text(4, "update_sql")?);
    let mut progress = Progress {
        procedure,
        key_columns: text(5, "key_columns")?,
        target_column: text(6, "target_column")?,
        total: arg::<i64>(fcinfo, 7).unwrap_or(0),
        filled: 0,
        failed: 0,
        skipped: 0,
        since_commit: 0,
        reported: 0,
        started: Instant::now(),
    };
    let batch_size = arg::<i32>(fcinfo, 8).unwrap_or(1000).max(1) as usize;
    let template = arg::<String>(fcinfo, 9).unwrap_or_else(|| "{0}".into());

    let d = catalog::load_for(&model, procedure, &[task])?;
    let params = call_params(&d, arg::<JsonB>(fcinfo, 10))?;
    let target = Target::new(&d, &params)?;
    let per_unit = match task {
        Task::Embedding => d.spec.max_inputs_per_request.unwrap_or(1).max(1) as usize,
        _ => 1,
    };
    let ahead = crate::guc::max_concurrency() * per_unit * 2;

    // SAFETY: opens this procedure's own non-atomic SPI connection, closed below; nested
    // pgrx connections come and go inside it. On an error, transaction abort cleans it up.
    if unsafe { pg_sys::SPI_connect_ext(pg_sys::SPI_OPT_NONATOMIC as i32) } != pg_sys::SPI_OK_CONNECT as i32 {
        return Err(AiError::Internal { message: "SPI_connect_ext failed".into() });
    }
    let update: OwnedPreparedStatement = Spi::connect_mut(|c| {
        c.prepare_mut(
            update_sql.as_str(),
            &[
                PgOid::BuiltIn(target_type),
                PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID),
                PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
            ],
        )
        .map(|p| p.keep())
        .map_err(spi)
    })?;
    let reader = RefCell::new(Reader {
        select_first,
        select_next,
        chunk: ahead.max(64),
        last_key: None,
        queue: VecDeque::new(),
        exhausted: false,
    });
    reader.borrow_mut().top_up(ahead)?;

    let model = d.embedding_model();
    backend::drive(
        &target,
        |client, call| {
            let rows = reader.borrow_mut().take(per_unit)?;
            let prompt = (task != Task::Embedding).then(|| template.replace("{0}", &rows[0].source));
            let body = prompt.map(|p| request::chat_body(d.spec.model_type, &p, &params));
            Some(async move {
                let results: Vec<Result<Value, AiError>> = match body {
                    Some(body) => {
                        vec![client.chat(&call, &body).await.map(|(t, _)| Value::Text(t))]
                    }
                    None => {
                        let inputs: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
                        embed_each(client, &call, &model, &inputs)
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
            let outcomes: Vec<Option<bool>> = Spi::connect_mut(|c| {
                rows.iter()
                    .zip(results.iter())
                    .map(|(row, result)| match result {
                        Ok(value) => {
                            let value = match value {
                                Value::Vector(v) => v.clone().into(),
                                Value::Text(t) => t.as_str().into(),
                            };
                            let written = c
                                .update(
                                    &update,
                                    None,
                                    &[value, row.key.clone().into(), row.source.as_str().into()],
                                )
                                .map_err(spi)?;
                            Ok(Some(!written.is_empty()))
                        }
                        Err(_) => Ok(None),
                    })
                    .collect::<Result<_, AiError>>()
            })?;
            for ((row, result), outcome) in rows.iter().zip(results.iter()).zip(outcomes) {
                match (outcome, result) {
                    (Some(true), _) => progress.filled += 1,
                    // Filled by someone else, or the source changed since it was read.
                    (Some(false), _) => progress.skipped += 1,
                    (None, Err(e)) => progress.failure(row, e),
                    (None, Ok(_)) => unreachable!("a result is either written or an error"),
                }
            }
            progress.since_commit += rows.len();
            if progress.since_commit >= batch_size {
                progress.commit();
            }
            reader.borrow_mut().top_up(ahead)
        },
    )?;
    drop(update);
    if progress.since_commit > 0 {
        progress.commit();
    }
    progress.finish();
    // SAFETY: closes the connection opened above; nothing nested is open.
    unsafe { pg_sys::SPI_finish() };
    Ok(None)
}

enum Value {
    Vector(Vec<f32>),
    Text(String),
}
