//! One fill of a sync, in steps a caller runs in transactions of its own (the background
//! worker commits between them; `CALL ai_sync_run` through its non-atomic connection):
//! `scan` (queue a new or restored sync's unfilled rows), `mark` (take up to `RUN_ROWS`
//! queued entries for a run), `fill` (the job engine over them, as the owner), `record`
//! (failed rows, finished entries and the sync's state).

use super::{as_owner, save_state, spi, Def, RUN_ROWS};
use crate::catalog::as_catalog_owner;
use crate::functions::column::{self, Key, Progress};
use bailian_core::AiError;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Why a sync is not filled now, or None when it may be.
pub fn blocked(def: &Def) -> Option<(String, String)> {
    // SAFETY: a syscache lookup by oid; NULL for a dropped relation.
    let exists = unsafe { !pg_sys::get_rel_name(def.relid).is_null() };
    if !exists {
        return Some(("42P01".into(), format!("the table of sync \"{}\" was dropped", def.name)));
    }
    if def.owner_oid.is_none() {
        return Some((
            "42704".into(),
            format!("role \"{}\", which owns sync \"{}\", no longer exists", def.owner, def.name),
        ));
    }
    None
}

/// Queues the rows of `relid` whose target is NULL and whose filter holds, for sync `name`:
/// read as the current user (the filter is that role's SQL), a page at a time, and queued as
/// the catalog owner (no other role may write the queue).
pub fn queue_todo(
    name: &str,
    relid: pg_sys::Oid,
    target: &str,
    filter: Option<&str>,
) -> Result<i64, AiError> {
    let queue = super::queue_table()?;
    let sql = format!(
        "INSERT INTO {queue} (sync_name, relid, key, queued_at, changed_at)
         SELECT $1, $2, ARRAY(SELECT e FROM pg_catalog.jsonb_array_elements_text(k) WITH ORDINALITY AS x(e, n) ORDER BY n),
                pg_catalog.now(), pg_catalog.now()
           FROM pg_catalog.jsonb_array_elements($3) AS k
         ON CONFLICT DO NOTHING"
    );
    let catalog_owner = crate::catalog::catalog_owner();
    column::todo_keys(relid, target, filter, |keys| {
        let keys = pgrx::JsonB(serde_json::to_value(keys).unwrap_or_default());
        crate::catalog::as_role(catalog_owner, || {
            Spi::connect_mut(|c| c.update(&sql, None, &[name.into(), relid.into(), keys.into()]).map(drop))
        })
        .map_err(spi)
    })
}

/// Queues the unfilled rows of a sync whose rows were never queued for this table (new, or
/// restored from a dump: the queue names tables by oid), reading them as the owner.
pub fn scan(def: &Def) -> Result<i64, AiError> {
    let owner = def.owner_oid.ok_or_else(|| AiError::invalid("sync owner missing"))?;
    let n = as_owner(owner, &def.search_path, || {
        queue_todo(&def.name, def.relid, &def.target, def.filter.as_deref())
    })?;
    super::mark_scanned(&def.name, def.relid)?;
    Ok(n)
}

/// Marks up to `RUN_ROWS` of the sync's queued entries, oldest first, with a new run id.
/// Answers the run id and how many entries it took.
pub fn mark(def: &Def) -> Result<(i64, i64), AiError> {
    let queue = super::queue_table()?;
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            let run = c
                .update(
                    "SELECT (pg_catalog.random() OPERATOR(pg_catalog.*) 9e15::pg_catalog.float8)::pg_catalog.int8 OPERATOR(pg_catalog.+) 1",
                    None,
                    &[],
                )?
                .first()
                .get_one::<i64>()?
                .unwrap_or(1);
            let taken = c.update(
                &format!(
                    "UPDATE {queue} SET run = $3 WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY(
                        SELECT q.ctid FROM {queue} q
                         WHERE q.sync_name OPERATOR(pg_catalog.=) $1 AND q.relid OPERATOR(pg_catalog.=) $2
                           AND (q.not_before IS NULL OR q.not_before OPERATOR(pg_catalog.<=) pg_catalog.now())
                         ORDER BY q.queued_at LIMIT {RUN_ROWS} FOR UPDATE SKIP LOCKED))"
                ),
                None,
                &[def.name.as_str().into(), def.relid.into(), run.into()],
            )?;
            Ok((run, taken.len() as i64))
        })
        .map_err(spi)
    })
}

/// Queued entries a fill did not take or leave behind: another transaction held them, or a
/// fill left them for a moment (their row locked, or a transient failure).
pub fn held(def: &Def) -> Result<i64, AiError> {
    let queue = super::queue_table()?;
    as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                &format!(
                    "SELECT pg_catalog.count(*) FROM {queue} q
                      WHERE q.sync_name OPERATOR(pg_catalog.=) $1 AND q.relid OPERATOR(pg_catalog.=) $2"
                ),
                Some(1),
                &[def.name.as_str().into(), def.relid.into()],
            )?
            .first()
            .get_one::<i64>()
        })
        .map(|n| n.unwrap_or(0))
        .map_err(spi)
    })
}

/// The job engine over the run's rows, as the sync's owner.
pub fn fill(def: &Def, run: i64, atomic: bool) -> Result<Progress, AiError> {
    let owner = def.owner_oid.ok_or_else(|| AiError::invalid("sync owner missing"))?;
    let queue = super::queue_table()?;
    let (name, relid) = (def.name.clone(), def.relid);
    as_owner(owner, &def.search_path, || {
        column::fill_queued(
            def.relid,
            &def.target,
            &def.expression,
            def.filter.as_deref(),
            move |t| t.queued_sql(&queue, &name, relid, run),
            atomic,
        )
    })
}

/// How long a row a fill left queued (locked by another transaction, or failing for a
/// transient reason) waits before a fill takes it again.
const KEPT_DELAY_SECS: f64 = 2.0;

/// Codes of failures that are about the provider or the deployment rather than the row: the
/// row stays queued and the sync backs off.
pub fn transient(code: &str) -> bool {
    code.starts_with("ZBR")
        || code.starts_with("ZBT")
        || code.starts_with("ZBC")
        || code.starts_with("ZBK")
        || code.starts_with("ZB5")
        || code == "ZB429"
        || code == "ZB401"
        || code == "ZB403"
        || code == "ZBB01"
        || code == "42704"
        || code == "42809"
}

/// Codes that end a fill without saying anything about the sync: it is simply tried again.
fn interruption(code: &str) -> bool {
    code.starts_with("57") || code == "40001" || code == "40P01" || code == "55P03"
}

fn split(reason: &str) -> (&str, &str) {
    let (code, message) = reason.split_once(' ').unwrap_or(("XX000", reason));
    (code.trim_end_matches(':'), message)
}

fn key_json(key: &Key) -> String {
    serde_json::to_string(key).unwrap_or_default()
}

/// After a fill: rows that failed for good are listed in `sync_errors`; the run's entries are
/// removed but those of rows another transaction held locked and of rows that failed for a
/// transient reason (tried again later); the state says how it went. Answers the state.
pub fn record(def: &Def, run: i64, outcome: Result<Progress, (String, String)>) -> Result<String, AiError> {
    let queue = super::queue_table()?;
    let (progress, job_error) = match outcome {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e)),
    };
    if let Some((code, message)) = &job_error {
        if interruption(code) {
            return Ok(def.state.clone().unwrap_or_else(|| "running".into()));
        }
        let backoff = super::backoff_of(&def.name);
        let (state, retry) = if code == "ZBB01" {
            ("waiting for budget", Some(30.0))
        } else if transient(code) {
            ("failing", Some((backoff * 2.0).clamp(1.0, 60.0)))
        } else {
            ("stopped", None)
        };
        save_state(&def.name, state, 0, 0, Some((code.as_str(), message.as_str())), retry)?;
        return Ok(state.to_string());
    }
    let progress = progress.expect("progress or error");
    let mut keep: Vec<String> = progress.locked.iter().map(key_json).collect();
    let mut permanent: Vec<(Key, String, String)> = Vec::new();
    let mut last_transient: Option<(String, String)> = None;
    for (key, reason) in progress.failures.iter().flatten() {
        if reason == column::NULL_VALUE {
            // NULL is what the expression gives for this row (ai_embed of '' is NULL): the
            // column equals it, which is all a sync promises; nothing failed.
            continue;
        }
        let (code, message) = split(reason);
        if transient(code) {
            keep.push(key_json(key));
            last_transient = Some((code.to_string(), message.to_string()));
        } else {
            permanent.push((key.clone(), code.to_string(), message.to_string()));
        }
    }
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            // The run's rows are failed rows no more, unless they failed again now.
            c.update(
                &format!(
                    "DELETE FROM bailian.sync_errors e WHERE e.sync_name OPERATOR(pg_catalog.=) $1
                        AND EXISTS (SELECT FROM {queue} q
                                     WHERE q.sync_name OPERATOR(pg_catalog.=) $1 AND q.relid OPERATOR(pg_catalog.=) $2
                                       AND q.run OPERATOR(pg_catalog.=) $3 AND q.key OPERATOR(pg_catalog.=) e.key)"
                ),
                None,
                &[def.name.as_str().into(), def.relid.into(), run.into()],
            )?;
            for (key, code, message) in &permanent {
                c.update(
                    "INSERT INTO bailian.sync_errors (sync_name, key, sqlstate, message, failed_at)
                     VALUES ($1, $2, $3, $4, pg_catalog.now())
                     ON CONFLICT (sync_name, key) DO UPDATE
                        SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, failed_at = EXCLUDED.failed_at",
                    None,
                    &[def.name.as_str().into(), key.clone().into(), code.as_str().into(), message.as_str().into()],
                )?;
            }
            c.update(
                &format!(
                    "DELETE FROM {queue} q WHERE q.sync_name OPERATOR(pg_catalog.=) $1 AND q.relid OPERATOR(pg_catalog.=) $2
                        AND q.run OPERATOR(pg_catalog.=) $3
                        AND NOT pg_catalog.array_to_json(q.key)::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($4)"
                ),
                None,
                &[def.name.as_str().into(), def.relid.into(), run.into(), keep.clone().into()],
            )?;
            // What stays waits a little, behind newer entries (see the queue's not_before).
            c.update(
                &format!(
                    "UPDATE {queue} q SET run = NULL,
                            not_before = pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => {KEPT_DELAY_SECS})
                      WHERE q.sync_name OPERATOR(pg_catalog.=) $1 AND q.relid OPERATOR(pg_catalog.=) $2
                        AND q.run OPERATOR(pg_catalog.=) $3"
                ),
                None,
                &[def.name.as_str().into(), def.relid.into(), run.into()],
            )?;
            Ok(())
        })
        .map_err(spi)
    })?;
    let failed = permanent.len() as i64;
    let (state, error, retry) = match (&last_transient, progress.filled) {
        (Some(_), 0) => {
            ("failing", last_transient.clone(), Some((super::backoff_of(&def.name) * 2.0).clamp(1.0, 60.0)))
        }
        _ => (
            "running",
            last_transient.clone().or_else(|| permanent.last().map(|(_, c, m)| (c.clone(), m.clone()))),
            None,
        ),
    };
    save_state(
        &def.name,
        state,
        progress.filled,
        failed,
        error.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
        retry,
    )?;
    Ok(state.to_string())
}
