//! The answer cache's SQL functions: the rows of `ai_cache` and `ai_cache_clear`. What the
//! cache is and how answers reach it: `crate::answers::cache`.

use super::arg;
use crate::catalog::{self, as_catalog_owner, spi_failed};
use crate::entry::sql_entry;
use crate::srf::materialize;
use bailian_core::AiError;
use pgrx::datum::IntoDatum;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::BTreeMap;

sql_entry!(pg_finfo_pg_bailian_cache_rows, pg_bailian_cache_rows, cache_rows);
sql_entry!(pg_finfo_pg_bailian_cache_clear, pg_bailian_cache_clear, cache_clear);

const ROWS: &str = "
SELECT model_name, pg_catalog.count(*), pg_catalog.sum(pg_catalog.octet_length(answer))::pg_catalog.int8,
       pg_catalog.min(created_at), pg_catalog.max(created_at), pg_catalog.min(expires_at)
  FROM bailian.answer_cache
 GROUP BY model_name";

type Row = (
    i64,
    i64,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<pgrx::datum::TimestampWithTimeZone>,
);

/// bailian.cache_rows(): per model, the answers in the cache (entries, bytes, oldest and
/// newest kept, first to expire) and those still in the inbox (pending). What the answers
/// are is not shown: a role is given one only by calling the model with its input.
fn cache_rows(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let mut models: BTreeMap<String, Row> = as_catalog_owner(|| {
        Spi::connect(|client| {
            let rows = client.select(ROWS, None, &[]).map_err(spi_failed)?;
            rows.into_iter()
                .map(|r| {
                    Ok((
                        r.get::<String>(1).map_err(spi_failed)?.unwrap_or_default(),
                        (
                            r.get::<i64>(2).map_err(spi_failed)?.unwrap_or(0),
                            r.get::<i64>(3).map_err(spi_failed)?.unwrap_or(0),
                            r.get(4).map_err(spi_failed)?,
                            r.get(5).map_err(spi_failed)?,
                            r.get(6).map_err(spi_failed)?,
                        ),
                    ))
                })
                .collect::<Result<BTreeMap<_, _>, AiError>>()
        })
    })?;
    let pending = crate::answers::cache::pending_by_model();
    for name in pending.keys() {
        models.entry(name.clone()).or_insert((0, 0, None, None, None));
    }
    materialize(
        fcinfo,
        models.into_iter().map(|(name, (entries, bytes, oldest, newest, expires))| {
            let (waiting, waiting_bytes) = pending.get(&name).copied().unwrap_or((0, 0));
            vec![
                name.into_datum(),
                entries.into_datum(),
                bytes.into_datum(),
                waiting.into_datum(),
                waiting_bytes.into_datum(),
                oldest.into_datum(),
                newest.into_datum(),
                expires.into_datum(),
            ]
        }),
    )?;
    Ok(None)
}

/// ai_cache_clear(model_name): forgets the model's cached answers; returns how many.
fn cache_clear(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let name = arg::<String>(fcinfo, 0).ok_or_else(|| AiError::invalid("model_name must not be NULL"))?;
    Ok(catalog::clear_cache(&name)?.into_datum())
}
