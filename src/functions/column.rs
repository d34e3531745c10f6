//! `bailian.fill_batch`: one batch of ai_embed_column / ai_gen_column. The procedures
//! (sql/procedures.sql) choose the rows and commit; this reads the batch with the SELECT
//! they built, sends it, and writes each result back by ctid as soon as its request
//! completes, while the other requests are still on the wire.

use super::arg;
use super::generate::call_params;
use super::many;
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::registry::Task;
use bailian_core::AiError;
use pgrx::prelude::*;
use pgrx::spi::{PreparedStatement, SpiClient};
use pgrx::{pg_sys, IntoDatum, JsonB, PgBuiltInOids, PgOid};
use serde_json::{json, Value};

sql_entry!(pg_finfo_pg_bailian_fill_batch, pg_bailian_fill_batch, fill_batch);

/// Failures reported per batch; the rest are counted only.
const REPORTED_FAILURES: usize = 5;

struct Row {
    ctid: pg_sys::ItemPointerData,
    source: Option<String>,
    key: Vec<Option<String>>,
}

fn spi(e: pgrx::spi::SpiError) -> AiError {
    AiError::Internal { message: format!("batch query failed: {e}") }
}

fn fill_batch(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let required =
        |v: Option<String>, what: &str| v.ok_or_else(|| AiError::invalid(format!("{what} must not be NULL")));
    let kind = required(arg::<String>(fcinfo, 0), "kind")?;
    let model = required(arg::<String>(fcinfo, 1), "model_name")?;
    let select_sql = required(arg::<String>(fcinfo, 2), "select_sql")?;
    let update_sql = required(arg::<String>(fcinfo, 3), "update_sql")?;
    let last_key = arg::<Vec<Option<String>>>(fcinfo, 4);
    let template = arg::<String>(fcinfo, 5).unwrap_or_else(|| "{0}".into());
    let (procedure, task, target_type) = match kind.as_str() {
        "embed" => ("ai_embed_column", Task::Embedding, PgBuiltInOids::FLOAT4ARRAYOID),
        "gen" => ("ai_gen_column", Task::Chat, PgBuiltInOids::TEXTOID),
        other => return Err(AiError::invalid(format!("kind must be 'embed' or 'gen', got '{other}'"))),
    };
    let d = catalog::load_for(&model, procedure, &[task])?;
    let params = call_params(&d, arg::<JsonB>(fcinfo, 6))?;

    // The result is built as a Rust value and turned into a Datum only after SPI_finish:
    // a Datum made inside would live in SPI's memory, which SPI_finish frees.
    let report = Spi::connect_mut(|client| {
        let rows: Vec<Row> = client
            .update(select_sql.as_str(), None, &[last_key.into()])
            .map_err(spi)?
            .map(|r| {
                Ok(Row {
                    ctid: r.get::<pg_sys::ItemPointerData>(1).map_err(spi)?.unwrap_or_default(),
                    source: r.get::<String>(2).map_err(spi)?,
                    key: r.get::<Vec<Option<String>>>(3).map_err(spi)?.unwrap_or_default(),
                })
            })
            .collect::<Result<_, AiError>>()?;
        let Some(last) = rows.last() else { return Ok(json!({"rows": 0})) };
        let last_key = last.key.clone();
        let update = client
            .prepare_mut(
                update_sql.as_str(),
                &[PgOid::BuiltIn(target_type), PgOid::BuiltIn(PgBuiltInOids::TIDOID)],
            )
            .map_err(spi)?;
        let (mut filled, mut failed) = (0u64, 0u64);
        let mut failures: Vec<Value> = Vec::new();
        let mut on_failure = |row: &Row, e: AiError| {
            failed += 1;
            if failures.len() < REPORTED_FAILURES {
                let key =
                    row.key.iter().map(|k| k.as_deref().unwrap_or("NULL")).collect::<Vec<_>>().join(", ");
                failures.push(json!({"key": key, "sqlstate": e.sqlstate(), "error": e.to_string()}));
            }
        };
        match task {
            Task::Embedding => {
                let texts: Vec<Option<&str>> = rows.iter().map(|r| r.source.as_deref()).collect();
                many::embed_texts(&d, &texts, |i, result| match result {
                    Ok(v) => {
                        filled += 1;
                        write_back(client, &update, rows[i].ctid, v)
                    }
                    Err(AiError::Interrupted) => Err(AiError::Interrupted),
                    Err(e) => {
                        on_failure(&rows[i], e);
                        Ok(())
                    }
                })?;
            }
            _ => {
                let prompts: Vec<Option<String>> =
                    rows.iter().map(|r| r.source.as_ref().map(|s| template.replace("{0}", s))).collect();
                many::generate(&d, &params, &prompts, |i, result| match result {
                    Ok(text) => {
                        filled += 1;
                        write_back(client, &update, rows[i].ctid, text)
                    }
                    Err(AiError::Interrupted) => Err(AiError::Interrupted),
                    Err(e) => {
                        on_failure(&rows[i], e);
                        Ok(())
                    }
                })?;
            }
        }
        let skipped = rows.len() as u64 - filled - failed;
        Ok(json!({
            "rows": rows.len(),
            "filled": filled,
            "failed": failed,
            "skipped": skipped,
            "last_key": last_key,
            "failures": failures,
        }))
    })?;
    Ok(JsonB(report).into_datum())
}

fn write_back<'conn, V: IntoDatum>(
    client: &mut SpiClient<'conn>,
    update: &PreparedStatement<'conn>,
    ctid: pg_sys::ItemPointerData,
    value: V,
) -> Result<(), AiError> {
    client.update(update, None, &[value.into(), ctid.into()]).map_err(spi)?;
    Ok(())
}
