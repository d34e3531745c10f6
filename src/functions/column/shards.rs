//! Column jobs on Citus distributed tables.
//!
//! Citus refuses `UPDATE dist SET c = ai_embed(...)` (a VOLATILE function in a distributed
//! UPDATE) and the job engine's `FOR UPDATE` reads of a distributed table. But each shard is an
//! ordinary table on the node that holds it, where the engine works as on one server, AI Batch
//! node included. So `CALL ai_update` on the coordinator:
//! 1. counts the rows to fill in each shard (`run_command_on_shards`, as the caller), and gives
//!    each node holding some its share of the work, which is also its share of each
//!    deployment's rate (`crate::citus::rate_share`), so the nodes together keep to the limit;
//! 2. runs `CALL ai_update_local_shards(...)` on those nodes at once, over Citus' connections
//!    (`master_run_on_worker`) as the calling role, where the job engine fills the node's shards
//!    one after the other, committing as it goes;
//! 3. adds up the nodes' reports into one.
//!
//! A shard may move while the job runs (the rebalancer, `citus_move_shard_placement`). Citus'
//! own writes take the shard's metadata lock (ShareLock), which a move takes exclusively
//! before it switches the shard over; every transaction of a shard's job takes it too, before
//! it reads a row, and then checks that the shard is still here. A move therefore waits for
//! the batch being written (which its logical replication carries over), and the next batch
//! finds the shard gone and stops; the coordinator then runs another round, which finds its
//! rows on their new node. No write goes to a copy that is being dropped, and none is doubled:
//! a row is written only while its target is NULL.
//!
//! A reference table has a copy on every node: filled copy by copy, each would get answers of
//! its own. So its job runs on the coordinator over a temporary copy of the rows to fill, and
//! each batch's values are written, as constants, to the reference table in the batch's own
//! transaction, which Citus commits on every copy at once (two-phase commit): one answer per
//! row, the same on every node, paid for once. Distributed tables with more than one copy of
//! a shard, and Citus local tables, are refused with a clear error.

use super::{literal, quote_ident, run_job, Job, Progress};
use crate::catalog::{as_catalog_owner, spi_failed};
use crate::citus::{self, Node};
use bailian_core::AiError;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use std::collections::BTreeMap;

/// Rounds of fan-out at most: a round after one in which shards moved.
const ROUNDS: usize = 3;

/// Failed rows a node reports by key (the rest are counted).
const REPORTED_FAILURES: usize = 10;

thread_local! {
    /// The shard whose job is running in this backend: every transaction of it locks the
    /// shard's metadata and checks that it is still here (`guard_transaction`).
    static SHARD: std::cell::RefCell<Option<i64>> = const { std::cell::RefCell::new(None) };
    /// Set when the running shard's job found the shard gone.
    static MOVED: Cell<bool> = const { Cell::new(false) };
    /// A reference table's job: how each batch's values reach the reference table.
    static REFERENCE: std::cell::RefCell<Option<CopyBack>> = const { std::cell::RefCell::new(None) };
}

/// The statements that copy a batch's values from a reference table job's temporary copy to
/// the reference table.
struct CopyBack {
    /// Marks the temporary rows filled since the last batch as copied, returning their keys
    /// and values as text.
    take: String,
    /// Writes one (its value, then its keys, as text cast back) where the target is still NULL.
    write: String,
    keys: usize,
}

/// The name of the column that marks a temporary row as copied to the reference table.
const COPIED: &str = "pg_bailian copied";

/// `CALL ai_update(...)` on a reference table, on the coordinator (see the module doc).
pub(super) fn fill_reference(mut job: Job) -> Result<Option<pg_sys::Datum>, AiError> {
    on_coordinator(job.procedure)?;
    // The rights on the reference table itself, before anything is paid for (the job checks
    // them again on its temporary copy, which the caller owns).
    job.table.check_privileges(job.procedure)?;
    // One job a reference table at a time: each fills a copy of its own, so two would pay
    // for the same rows.
    let _only = ReferenceLock::take(job.procedure, &job.table)?;
    let table = &job.table;
    let target = table.target.clone();
    let keys = super::table::key_definitions(job.procedure, table.oid, &table.shown)?;
    let target_type = qualified_type(table.oid, table.target_attnum);
    let copy = format!("pg_temp.{}", quote_ident(&format!("ai_update_{}", table.oid.to_u32())));
    let quoted_keys: Vec<String> = keys.iter().map(|(k, _, _)| quote_ident(k)).collect();
    // The newlines: a filter ending in a -- comment leaves the rest standing.
    let filter = table.filter().map_or(String::new(), |f| format!(" AND (\n{f}\n)"));
    Spi::connect_mut(|client| {
        client.update(&format!("DROP TABLE IF EXISTS {copy}"), None, &[])?;
        client.update(
            &format!("CREATE TEMP TABLE {copy} (LIKE {} INCLUDING DEFAULTS)", table.name_sql),
            None,
            &[],
        )?;
        client.update(
            &format!("ALTER TABLE {copy} ADD PRIMARY KEY ({})", quoted_keys.join(", ")),
            None,
            &[],
        )?;
        client.update(
            &format!(
                "INSERT INTO {copy} SELECT * FROM {} WHERE {} IS NULL{filter}",
                table.name_sql,
                quote_ident(&target)
            ),
            None,
            &[],
        )?;
        client
            .update(
                &format!(
                    "ALTER TABLE {copy} ADD COLUMN {} boolean NOT NULL DEFAULT false",
                    quote_ident(COPIED)
                ),
                None,
                &[],
            )
            .map(drop)
    })
    .map_err(spi_failed)?;
    let copy_oid = Spi::get_one::<pg_sys::Oid>(&format!(
        "SELECT {}::pg_catalog.regclass::pg_catalog.oid",
        literal(&copy)
    ))
    .map_err(spi_failed)?
    .ok_or_else(|| AiError::Internal { message: "the temporary copy is gone".into() })?;
    let take = format!(
        "UPDATE {copy} SET {copied} = true WHERE {t} IS NOT NULL AND NOT {copied} RETURNING {}, {t}::pg_catalog.text",
        quoted_keys.iter().map(|k| format!("{k}::pg_catalog.text")).collect::<Vec<_>>().join(", "),
        copied = quote_ident(COPIED),
        t = quote_ident(&target),
    );
    let n = keys.len();
    // One row a statement, its values as parameters: Citus refuses a STABLE cast (text to
    // real[], say) over a column in a modification, but evaluates it over parameters.
    let write = format!(
        "UPDATE {} r SET {t} = CAST($1 AS {target_type}) WHERE {} AND r.{t} IS NULL",
        table.name_sql,
        keys.iter()
            .enumerate()
            .map(|(i, (k, type_sql, eq))| format!("r.{} {eq} CAST(${} AS {type_sql})", quote_ident(k), i + 2))
            .collect::<Vec<_>>()
            .join(" AND "),
        t = quote_ident(&target),
    );
    let shown = table.shown.clone();
    let mut copy_table = super::Table::open(job.procedure, copy_oid, &target)?;
    copy_table.shown = shown;
    if let Some(f) = job.table.filter() {
        copy_table = copy_table.with_filter(f.to_string());
    }
    job.table = copy_table;
    let done = {
        let _copying = Reset::new(&REFERENCE, Some(CopyBack { take, write, keys: n }));
        run_job(job, false, false)
    };
    let _ = Spi::run(&format!("DROP TABLE IF EXISTS {copy}"));
    done.map(|_| None)
}

/// Sets a thread-local for a job and resets it when the job ends, also when an error or a
/// cancel unwinds through (a later job of the session must not find it set).
struct Reset<T: 'static> {
    key: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>,
}

impl<T: 'static> Reset<T> {
    fn new(key: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>, value: Option<T>) -> Reset<T> {
        key.with(|k| *k.borrow_mut() = value);
        Reset { key }
    }
}

impl<T: 'static> Drop for Reset<T> {
    fn drop(&mut self) {
        self.key.with(|k| *k.borrow_mut() = None);
    }
}

/// The session-level advisory lock that makes a reference table's job the only one on it,
/// released when the job ends however it ends.
struct ReferenceLock(u32);

/// The advisory lock space of reference table jobs (two-key advisory locks: this, the table's oid).
const REFERENCE_LOCKS: i32 = 20563;

impl ReferenceLock {
    fn take(procedure: &str, table: &super::Table) -> Result<ReferenceLock, AiError> {
        let oid = table.oid.to_u32();
        let got = Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
            &[REFERENCE_LOCKS.into(), (oid as i32).into()],
        )
        .map_err(spi_failed)?
        .unwrap_or(false);
        if !got {
            return Err(AiError::invalid_with_hint(
                format!("{procedure}: another job is filling reference table {} now", table.shown),
                "Wait for it to end (ai_activity shows it), then CALL again for what it left.",
            ));
        }
        Ok(ReferenceLock(oid))
    }
}

impl Drop for ReferenceLock {
    fn drop(&mut self) {
        let _ = Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.pg_advisory_unlock($1, $2)",
            &[REFERENCE_LOCKS.into(), (self.0 as i32).into()],
        );
    }
}

/// Called before each commit of a job: a reference table's job copies the batch's values.
pub(super) fn before_commit() -> Result<(), AiError> {
    REFERENCE.with(|r| {
        let r = r.borrow();
        let Some(copy) = r.as_ref() else { return Ok(()) };
        Spi::connect_mut(|client| {
            let rows = client.update(&copy.take, None, &[])?;
            let mut taken: Vec<Vec<Option<String>>> = Vec::new();
            for row in rows {
                // The value first, then the keys: the write's parameters.
                let mut values = vec![row.get::<String>(copy.keys + 1)?];
                for i in 1..=copy.keys {
                    values.push(row.get::<String>(i)?);
                }
                taken.push(values);
            }
            if taken.is_empty() {
                return Ok(());
            }
            let unknown = || pgrx::PgOid::BuiltIn(pgrx::PgBuiltInOids::TEXTOID);
            let write = client.prepare(&copy.write, &vec![unknown(); copy.keys + 1])?;
            for values in taken {
                let args: Vec<pgrx::datum::DatumWithOid> = values.into_iter().map(Into::into).collect();
                client.update(&write, None, &args)?;
            }
            Ok(())
        })
        .map_err(spi_failed)
    })
}

/// The type of column `attnum` of `relid`, schema-qualified and with its typmod (as the job
/// engine names key types: whatever the search_path, it names the column's own type).
fn qualified_type(relid: pg_sys::Oid, attnum: i16) -> String {
    // SAFETY: catalog lookups for a column that exists (the job opened it); format_type_extended
    // returns a palloc'd name.
    unsafe {
        let (mut typid, mut typmod, mut coll) = (pg_sys::Oid::INVALID, -1, pg_sys::Oid::INVALID);
        pg_sys::get_atttypetypmodcoll(relid, attnum, &mut typid, &mut typmod, &mut coll);
        super::table::owned(pg_sys::format_type_extended(
            typid,
            typmod,
            (pg_sys::FORMAT_TYPE_FORCE_QUALIFY | pg_sys::FORMAT_TYPE_TYPEMOD_GIVEN) as u16,
        ))
        .unwrap_or_default()
    }
}

/// What kind of Citus table a job's table is.
pub(super) enum Kind {
    /// Hash-distributed (or single-shard), one copy of each shard: filled on its nodes.
    Distributed,
    /// A reference table: filled through a temporary copy (see the module doc).
    Reference,
    /// A table with several copies of a shard, or a Citus local table: refused.
    Replicated(&'static str),
}

/// The kind of Citus table `relid` is, None for a table Citus does not manage (or no Citus).
pub(super) fn kind(relid: pg_sys::Oid) -> Result<Option<Kind>, AiError> {
    if !citus::loaded() || citus::node() == Node::Alone {
        return Ok(None);
    }
    let row = Spi::connect(|client| {
        let rows = client.select(
            "SELECT p.partmethod::pg_catalog.text, p.repmodel::pg_catalog.text, p.colocationid,
                    (SELECT pg_catalog.max(c.n) FROM (SELECT pg_catalog.count(*) AS n FROM pg_catalog.pg_dist_placement pl
                       JOIN pg_catalog.pg_dist_shard s ON s.shardid OPERATOR(pg_catalog.=) pl.shardid
                      WHERE s.logicalrelid OPERATOR(pg_catalog.=) p.logicalrelid GROUP BY pl.shardid) c)
               FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[relid.into()],
        )?;
        let row = rows.first();
        if row.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?.unwrap_or_default(),
            row.get::<i32>(3)?.unwrap_or(0),
            row.get::<i64>(4)?.unwrap_or(1),
        )))
    })
    .map_err(spi_failed)?;
    Ok(row.map(|(method, repmodel, colocation, copies)| match (method.as_str(), repmodel.as_str()) {
        ("n", "t") => Kind::Reference,
        // A Citus local table: a table of the coordinator's own that Citus knows.
        ("n", _) if colocation == 0 => Kind::Replicated("a Citus local table"),
        _ if copies > 1 => Kind::Replicated("a distributed table with more than one copy of a shard"),
        _ => Kind::Distributed,
    }))
}

/// The error a job on a table of a kind that is not filled gets.
pub(super) fn refused(procedure: &str, table: &str, what: &str) -> AiError {
    AiError::InvalidArgument {
        message: format!(
            "{procedure}: \"{table}\" is {what}; on a Citus cluster pg_bailian fills hash-distributed tables (one copy of each shard, each node filling its own) and reference tables"
        ),
        hint: Some(
            "For a small table: UPDATE t SET c = s.v FROM (SELECT key, <expression> AS v FROM t WHERE c IS NULL OFFSET 0) s WHERE t.key = s.key computes each value once.".into(),
        ),
    }
}

/// What the coordinator runs on every node that holds shards of the table.
pub(super) struct Spread {
    pub procedure: &'static str,
    pub relid: pg_sys::Oid,
    pub target: String,
    pub expression: String,
    pub batch_size: usize,
    pub filter: Option<String>,
}

/// A node's report, as `ai_update_local_shards` answers it.
#[derive(Default)]
struct Report {
    shards: usize,
    total: i64,
    filled: i64,
    failed: i64,
    skipped: i64,
    locked: i64,
    other_session: i64,
    moved: Vec<i64>,
    failures: Vec<(String, String)>,
    seconds: f64,
    /// The node's share of the rate when it was given the work, and when it finished (raised
    /// by what the job's nodes that finished before it released).
    first_share: f64,
    last_share: f64,
}

impl Report {
    fn to_json(&self) -> String {
        serde_json::json!({
            "shards": self.shards, "total": self.total, "filled": self.filled, "failed": self.failed,
            "skipped": self.skipped, "locked": self.locked, "other_session": self.other_session,
            "moved": self.moved, "failures": self.failures, "seconds": self.seconds,
            "first_share": self.first_share, "last_share": self.last_share,
        })
        .to_string()
    }

    fn from_json(text: &str) -> Option<Report> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_i64);
        Some(Report {
            shards: n("shards")? as usize,
            total: n("total")?,
            filled: n("filled")?,
            failed: n("failed")?,
            skipped: n("skipped")?,
            locked: n("locked")?,
            other_session: n("other_session")?,
            moved: v.get("moved")?.as_array()?.iter().filter_map(serde_json::Value::as_i64).collect(),
            failures: v
                .get("failures")?
                .as_array()?
                .iter()
                .filter_map(|f| Some((f.get(0)?.as_str()?.to_string(), f.get(1)?.as_str()?.to_string())))
                .collect(),
            seconds: v.get("seconds")?.as_f64()?,
            first_share: v.get("first_share").and_then(serde_json::Value::as_f64).unwrap_or(0.0),
            last_share: v.get("last_share").and_then(serde_json::Value::as_f64).unwrap_or(0.0),
        })
    }
}

/// Jobs on Citus tables run from the coordinator.
pub(super) fn on_coordinator(procedure: &str) -> Result<(), AiError> {
    if let Node::Worker(name) = citus::node() {
        return Err(AiError::NotAllowed {
            message: format!(
                "{procedure} on a Citus table runs from the coordinator; this is worker node {name}"
            ),
            hint: "CALL it on the coordinator: it fills every node's shards.".into(),
        });
    }
    Ok(())
}

/// `CALL ai_update(...)` on a distributed table, from the coordinator.
pub(super) fn spread(job: Spread) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = job.procedure;
    on_coordinator(procedure)?;
    citus::read_committed(procedure)?;
    let (qualified, public) = qualified_name(job.relid)?;
    let schema = extension_schema()?;
    let search_path = Spi::get_one::<String>("SELECT pg_catalog.current_setting('search_path')")
        .map_err(spi_failed)?
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let mut sum = Report::default();
    let mut nodes_used = 0;
    let mut shares = Vec::new();
    for round in 0..ROUNDS {
        // Where the shards are now: a move since the last round changed Citus' metadata, which
        // this backend's caches learn from the invalidations sent at its commit.
        // SAFETY: processes pending shared invalidation messages, as every statement start does.
        unsafe { pg_sys::AcceptInvalidationMessages() };
        let work = rows_per_node(&job, &schema, &qualified, public, &search_path)?;
        let total: i64 = work.values().map(|n| n.rows).sum();
        if total == 0 {
            if round == 0 {
                pgrx::notice!("{procedure}: no rows of {qualified} to fill");
            }
            break;
        }
        let (mut names, mut ports, mut commands) = (Vec::new(), Vec::new(), Vec::new());
        let busy: Vec<&Node_> = work.values().filter(|n| n.rows > 0).collect();
        // The round's id, which its nodes release their shares under when they finish: made
        // up here and told only to them, so no other session can raise their rates.
        let job_id = job_id()?;
        for node in &busy {
            // The node's share of the work is its share of each deployment's rate.
            let share = node.rows as f64 / total as f64;
            names.push(node.host.clone());
            ports.push(node.port);
            let shards: Vec<String> = node.shards.iter().map(i64::to_string).collect();
            let peers: Vec<String> = busy
                .iter()
                .filter(|p| (&p.host, p.port) != (&node.host, node.port))
                .map(|p| format!("{}:{}", p.host, p.port))
                .collect();
            commands.push(format!(
                "CALL {schema}.ai_update_local_shards({}::pg_catalog.regclass, {}, {}, {}, {}, {}, {share}, {}, '{{{}}}', {job_id}, {})",
                literal(&qualified),
                literal(&job.target),
                literal(&job.expression),
                job.batch_size,
                job.filter.as_deref().map_or("NULL".to_string(), literal),
                literal(procedure),
                literal(&search_path),
                shards.join(","),
                literal(&format!("{{{}}}", peers.iter().map(|p| array_element(p)).collect::<Vec<_>>().join(","))),
            ));
        }
        nodes_used = nodes_used.max(names.len());
        pgrx::notice!(
            "{procedure}: {total} rows of {qualified} to fill on {} nodes ({}){}",
            names.len(),
            names.iter().zip(&ports).map(|(n, p)| format!("{n}:{p}")).collect::<Vec<_>>().join(", "),
            if round > 0 { " (again: shards moved)" } else { "" }
        );
        let answers = run_on_nodes(names, ports, commands).map_err(spi_failed)?;
        let mut errors = Vec::new();
        let mut moved = false;
        for (node, success, result) in answers {
            let result = result.unwrap_or_default();
            // A CALL with an INOUT argument answers its row; master_run_on_worker the first field.
            match (success, Report::from_json(&result)) {
                (Some(true), Some(r)) => {
                    moved |= !r.moved.is_empty();
                    shares.push(format!(
                        "{node} {:.0} %{}{}",
                        r.first_share * 100.0,
                        if r.last_share > r.first_share + 1e-6 {
                            format!(" then {:.0} %", r.last_share * 100.0)
                        } else {
                            String::new()
                        },
                        if round > 0 { format!(" (round {})", round + 1) } else { String::new() }
                    ));
                    sum.shards += r.shards;
                    sum.filled += r.filled;
                    sum.failed += r.failed;
                    sum.skipped += r.skipped;
                    sum.locked += r.locked;
                    sum.other_session += r.other_session;
                    sum.failures.extend(r.failures);
                }
                _ => errors.push(format!("{node}: {result}")),
            }
        }
        if !errors.is_empty() {
            return Err(AiError::Internal {
                message: format!(
                    "{procedure} failed on {} of the nodes ({}); the batches committed before stay filled, {} rows so far",
                    errors.len(),
                    errors.join("; "),
                    sum.filled
                ),
            });
        }
        if !moved {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    pgrx::notice!(
        "{procedure}: finished on {nodes_used} nodes in {seconds:.1} s: {} filled, {} failed, {} skipped, {} locked by other transactions, {} done by another session, {:.1} rows/s; shares of the rate: {}",
        sum.filled,
        sum.failed,
        sum.skipped,
        sum.locked,
        sum.other_session,
        (sum.filled + sum.failed) as f64 / seconds.max(0.001),
        shares.join(", ")
    );
    if sum.failed > 0 {
        let examples: Vec<String> =
            sum.failures.iter().take(5).map(|(k, why)| format!("({k}): {why}")).collect();
        pgrx::warning!(
            "{procedure}: {} rows failed and keep a NULL {}: {}{}; CALL {procedure} again to retry them",
            sum.failed,
            job.target,
            examples.join("; "),
            if sum.failed > 5 { "; ..." } else { "" }
        );
    }
    Ok(None)
}

/// A node's `host:port`, whether its command succeeded, and its first field or error.
type NodeAnswer = (String, Option<bool>, Option<String>);

/// Runs `commands[i]` on node `names[i]:ports[i]`, all at once, over Citus' connections as the
/// current role: per node, its `host:port`, whether the command succeeded, and its first
/// field or error.
fn run_on_nodes(
    names: Vec<String>,
    ports: Vec<i32>,
    commands: Vec<String>,
) -> Result<Vec<NodeAnswer>, pgrx::spi::SpiError> {
    crate::citus::with_citus_functions(|| {
        Spi::connect(|client| {
            client
            .select(
                "SELECT node_name OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) node_port, success, result
                   FROM pg_catalog.master_run_on_worker($1, $2, $3, true)",
                None,
                &[names.into(), ports.into(), commands.into()],
            )?
            .map(|r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<bool>(2)?, r.get::<String>(3)?)))
            .collect()
        })
    })
}

/// `text` as an element of an array literal, double-quoted.
fn array_element(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A random nonzero id for a round of a job.
fn job_id() -> Result<i64, AiError> {
    let mut bytes = [0u8; 8];
    loop {
        // SAFETY: fills the 8 bytes given.
        if !unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) } {
            return Err(AiError::Internal { message: "could not make a random job id".into() });
        }
        let id = i64::from_le_bytes(bytes);
        if id != 0 {
            return Ok(id);
        }
    }
}

/// The schema of pg_bailian's objects, quoted (the same on every node: CREATE EXTENSION
/// reaches the workers with its SCHEMA).
fn extension_schema() -> Result<String, AiError> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_extension e
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
                  WHERE e.extname OPERATOR(pg_catalog.=) 'pg_bailian'",
                Some(1),
                &[],
            )?
            .first()
            .get_one::<String>()
    })
    .map_err(spi_failed)?
    .map(|n| quote_ident(&n))
    .ok_or_else(|| AiError::Internal { message: "pg_bailian's schema not found".into() })
}

/// `schema.table`, quoted: how every node names the table (its oid differs from node to node);
/// and whether its schema is public.
fn qualified_name(relid: pg_sys::Oid) -> Result<(String, bool), AiError> {
    let (name, public) = Spi::connect(|client| {
        let rows = client.select(
            "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname),
                    n.nspname OPERATOR(pg_catalog.=) 'public'
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
              WHERE c.oid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[relid.into()],
        )?;
        let row = rows.first();
        Ok::<_, pgrx::spi::SpiError>((row.get::<String>(1)?, row.get::<bool>(2)?.unwrap_or(false)))
    })
    .map_err(spi_failed)?;
    Ok((name.ok_or_else(|| AiError::Internal { message: "the table is gone".into() })?, public))
}

/// A node holding shards of the table: where it is, the rows to fill there and in which shards.
struct Node_ {
    host: String,
    port: i32,
    rows: i64,
    shards: Vec<i64>,
}

/// The rows to fill per node holding shards of the table, by group id: each shard's count,
/// asked of the node holding it (`ai_update_rows_to_fill`, all at once), as the caller, the filter
/// read with the caller's search_path.
fn rows_per_node(
    job: &Spread,
    schema: &str,
    qualified: &str,
    schema_is_public: bool,
    search_path: &str,
) -> Result<BTreeMap<i32, Node_>, AiError> {
    let shards = shard_placements(qualified)?;
    // shard_name() leaves out the public schema: named here, not left to a search_path.
    let prefix = if schema_is_public { "public." } else { "" };
    let commands: Vec<String> = shards
        .iter()
        .map(|p| {
            format!(
                "SELECT {schema}.ai_update_rows_to_fill({}::pg_catalog.regclass, {}, {}, {})",
                literal(&format!("{prefix}{}", p.name)),
                literal(&job.target),
                job.filter.as_deref().map_or("NULL".to_string(), literal),
                literal(search_path)
            )
        })
        .collect();
    let answers = run_on_nodes(
        shards.iter().map(|p| p.host.clone()).collect(),
        shards.iter().map(|p| p.port).collect(),
        commands,
    )
    .map_err(spi_failed)?;
    let mut by_node: BTreeMap<i32, Node_> = BTreeMap::new();
    // master_run_on_worker answers in the order it was asked.
    for (p, (node, success, result)) in shards.into_iter().zip(answers) {
        let result = result.unwrap_or_default();
        let n = match (success, result.trim().parse::<i64>()) {
            (Some(true), Ok(n)) => n,
            _ => {
                return Err(AiError::invalid(format!(
                    "{}: counting the rows to fill in shard {} on {node} failed: {result}",
                    job.procedure, p.shard
                )))
            }
        };
        let node = by_node.entry(p.group).or_insert(Node_ {
            host: p.host,
            port: p.port,
            rows: 0,
            shards: Vec::new(),
        });
        node.rows += n;
        if n > 0 {
            node.shards.push(p.shard);
        }
    }
    Ok(by_node)
}

/// A shard of a distributed table where Citus' metadata places it now.
struct Placement {
    shard: i64,
    /// As `shard_name()` gives it: quoted, with its schema unless that is public.
    name: String,
    group: i32,
    host: String,
    port: i32,
}

fn shard_placements(qualified: &str) -> Result<Vec<Placement>, AiError> {
    // `update`, for a snapshot of its own: the CALL's may predate a shard move.
    crate::citus::with_citus_functions(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "SELECT s.shardid, pg_catalog.shard_name(s.logicalrelid, s.shardid), n.groupid, n.nodename, n.nodeport
                       FROM pg_catalog.pg_dist_shard s
                       JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid
                       JOIN pg_catalog.pg_dist_node n ON n.groupid OPERATOR(pg_catalog.=) p.groupid
                        AND n.noderole OPERATOR(pg_catalog.=) 'primary'
                      WHERE s.logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass
                        AND p.shardstate OPERATOR(pg_catalog.=) 1
                      ORDER BY s.shardid",
                    None,
                    &[qualified.into()],
                )?
                .map(|r| {
                    Ok(Placement {
                        shard: r.get::<i64>(1)?.unwrap_or(0),
                        name: r.get::<String>(2)?.unwrap_or_default(),
                        group: r.get::<i32>(3)?.unwrap_or(0),
                        host: r.get::<String>(4)?.unwrap_or_default(),
                        port: r.get::<i32>(5)?.unwrap_or(0),
                    })
                })
                .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
        })
    })
    .map_err(spi_failed)
}

/// `CALL ai_update_local_shards(table_name, target_column, expression, batch_size, filter,
/// procedure_name, rate_share, report)`: this node's part of a job on a distributed table.
pub(super) fn local_shards(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    use super::arg;
    let procedure = match arg::<String>(fcinfo, 5).as_deref() {
        Some("ai_embed_column") => "ai_embed_column",
        Some("ai_gen_column") => "ai_gen_column",
        _ => "ai_update",
    };
    let (Some(relid), Some(target), Some(expression)) =
        (arg::<pg_sys::Oid>(fcinfo, 0), super::name_arg(fcinfo, 1), arg::<String>(fcinfo, 2))
    else {
        return Err(AiError::NullArgument {
            message: "ai_update_local_shards: table_name, target_column and expression must not be NULL"
                .into(),
        });
    };
    let batch_size = super::batch_size(procedure, arg::<i32>(fcinfo, 3))?;
    let filter = arg::<String>(fcinfo, 4).filter(|f| !f.trim().is_empty());
    let share = arg::<f64>(fcinfo, 6).filter(|s| *s > 0.0 && *s <= 1.0).unwrap_or(1.0);
    let search_path = arg::<String>(fcinfo, 7);
    if citus::node() == Node::Alone {
        return Err(AiError::invalid(
            "ai_update_local_shards: this database is not a node of a Citus cluster; CALL ai_update on the coordinator runs it on the nodes",
        ));
    }
    super::in_own_transactions(fcinfo, "ai_update_local_shards")?;
    citus::read_committed(procedure)?;
    // The expression and filter read names as they did in the caller's session on the
    // coordinator (this connection is Citus' own, with the role's default search_path).
    let _path = match &search_path {
        Some(path) => Some(SearchPath::set(path)?),
        None => None,
    };
    let started = std::time::Instant::now();
    let only = arg::<Vec<i64>>(fcinfo, 8);
    let job_id = arg::<i64>(fcinfo, 9).unwrap_or(0) as u64;
    let peers = arg::<Vec<Option<String>>>(fcinfo, 10).unwrap_or_default();
    let mut report = Report { first_share: share, ..Report::default() };
    let here = local_shards_of(relid, only.clone())?;
    // Shards the coordinator counted here and that moved away since: the next round's.
    if let Some(only) = &only {
        report.moved.extend(only.iter().filter(|s| !here.iter().any(|(h, _)| h == *s)));
    }
    for (shard, shard_relid) in here {
        let table = super::Table::open(procedure, shard_relid, &target)?;
        let table = match &filter {
            Some(f) => table.with_filter(f.clone()),
            None => table,
        };
        let scope = format!("{} IS NULL, shard {shard}", quote_ident(&target));
        let job = Job { procedure, table, expression: expression.clone(), batch_size, scope };
        MOVED.with(|m| m.set(false));
        let done = {
            let _shard = Reset::new(&SHARD, Some(shard));
            citus::with_rate_share(share, job_id, || run_job(job, false, false))
        };
        report.shards += 1;
        match done {
            Ok(p) => add(&mut report, &p),
            Err(_) if MOVED.with(|m| m.get()) => report.moved.push(shard),
            Err(e) => return Err(e),
        }
    }
    report.last_share = citus::with_rate_share(share, job_id, citus::rate_share);
    citus::forget_released(job_id);
    // Done here: the job's nodes still running may use this node's share of the rate.
    release_to(&super::own_schema(fcinfo)?, &peers, job_id, share);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(Some(one_field_row(fcinfo, &report.to_json())?))
}

/// Tells the other nodes of a round (`host:port`) that this one finished, releasing `share`
/// of the rate to them (`ai_update_release_share`), over Citus' connections as the job's
/// role. A node that cannot be told keeps its first share, which is safe: that is logged, not
/// raised (the work here is done and committed), unless it is a cancel or a shortage of
/// resources, which ends the statement as anywhere else.
fn release_to(schema: &str, peers: &[Option<String>], job_id: u64, share: f64) {
    let peers: Vec<(String, i32)> = peers
        .iter()
        .flatten()
        .filter_map(|p| p.rsplit_once(':'))
        .filter_map(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
        .collect();
    if peers.is_empty() || job_id == 0 {
        return;
    }
    let command = format!("SELECT {schema}.ai_update_release_share({}, {share})", job_id as i64);
    let (names, ports): (Vec<String>, Vec<i32>) = peers.into_iter().unzip();
    let commands = vec![command; names.len()];
    let sub = crate::spi::SubTransaction::begin();
    let (told, sub) = crate::spi::try_in_catching(
        sub,
        |code| !code.starts_with("57") && !code.starts_with("53"),
        move || run_on_nodes(names, ports, commands),
    );
    if let Some(sub) = sub {
        sub.release();
    }
    let told = match told {
        Ok(told) => told.map_err(|e| e.to_string()),
        Err(crate::spi::Caught::Statement(why)) => Err(why),
    };
    match told {
        Ok(rows) => {
            for (node, ok, result) in rows {
                if ok != Some(true) || result.as_deref() != Some("t") {
                    pgrx::log!(
                        "pg_bailian: node {node} could not take this node's share of column job {job_id:x}: {}",
                        result.unwrap_or_default()
                    );
                }
            }
        }
        Err(e) => pgrx::log!("pg_bailian: could not release this node's share of column job {job_id:x}: {e}"),
    }
}

/// The session's search_path set for a job, the earlier one back when it ends (this may be a
/// connection Citus keeps for later commands, or a session that CALLed the procedure itself).
struct SearchPath(String);

impl SearchPath {
    fn set(path: &str) -> Result<SearchPath, AiError> {
        let before = Spi::get_one::<String>("SELECT pg_catalog.current_setting('search_path')")
            .map_err(spi_failed)?
            .unwrap_or_default();
        Self::apply(path)?;
        Ok(SearchPath(before))
    }

    fn apply(path: &str) -> Result<(), AiError> {
        Spi::connect_mut(|c| {
            c.update("SELECT pg_catalog.set_config('search_path', $1, false)", None, &[path.into()]).map(drop)
        })
        .map_err(spi_failed)
    }
}

impl Drop for SearchPath {
    fn drop(&mut self) {
        let _ = Self::apply(&self.0);
    }
}

fn add(report: &mut Report, p: &Progress) {
    report.total += p.total;
    report.filled += p.filled;
    report.failed += p.failed;
    report.skipped += p.skipped;
    report.locked += p.locked_count();
    report.other_session += p.other_session;
    let room = REPORTED_FAILURES.saturating_sub(report.failures.len());
    report.failures.extend(p.reported_failures().into_iter().take(room));
}

/// This node's shards of `relid` (id and relation), in shard order.
fn local_shards_of(relid: pg_sys::Oid, only: Option<Vec<i64>>) -> Result<Vec<(i64, pg_sys::Oid)>, AiError> {
    // `update`, for a snapshot of its own (see rows_per_node).
    Spi::connect_mut(|client| {
        let rows = client.update(
            // The shard is a table in its table's schema (looked up there, never through the
            // search_path, which shard_name() leaves the public schema to): named by Citus'
            // shard_name(), unqualified or qualified, or relname_shardid as it makes them.
            "SELECT s.shardid,
                    (SELECT c.oid FROM pg_catalog.pg_class c
                      WHERE c.relnamespace OPERATOR(pg_catalog.=) t.relnamespace
                        AND (c.relname OPERATOR(pg_catalog.=) (t.relname::pg_catalog.text OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) s.shardid::pg_catalog.text)
                             OR pg_catalog.quote_ident(c.relname) OPERATOR(pg_catalog.=) pg_catalog.shard_name(s.logicalrelid, s.shardid)
                             OR pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname)
                                OPERATOR(pg_catalog.=) pg_catalog.shard_name(s.logicalrelid, s.shardid))
                      ORDER BY c.relname OPERATOR(pg_catalog.<>) (t.relname::pg_catalog.text OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) s.shardid::pg_catalog.text)
                      LIMIT 1)
               FROM pg_catalog.pg_dist_shard s
               JOIN pg_catalog.pg_class t ON t.oid OPERATOR(pg_catalog.=) s.logicalrelid
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.relnamespace
               JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid
              WHERE s.logicalrelid OPERATOR(pg_catalog.=) $1
                AND p.groupid OPERATOR(pg_catalog.=) (SELECT groupid FROM pg_catalog.pg_dist_local_group)
                AND (pg_catalog.cardinality($2::pg_catalog.int8[]) IS NULL OR s.shardid OPERATOR(pg_catalog.=) ANY ($2))
              ORDER BY s.shardid",
            None,
            &[relid.into(), only.into()],
        )?;
        let mut shards = Vec::new();
        for r in rows {
            let shard = r.get::<i64>(1)?.unwrap_or(0);
            let Some(oid) = r.get::<pg_sys::Oid>(2)? else {
                return Ok(Err(AiError::Internal { message: format!("the table of shard {shard} is missing on this node") }));
            };
            shards.push((shard, oid));
        }
        Ok(Ok(shards))
    })
    .map_err(spi_failed)?
}

/// Called at the start of every transaction of a job: on a shard's job, takes the shard's
/// metadata lock as Citus' own writes do, and stops the job if the shard is no longer here.
pub(super) fn guard_transaction() -> Result<(), AiError> {
    let Some(shard) = SHARD.with(|s| *s.borrow()) else { return Ok(()) };
    citus::read_committed("ai_update")?;
    // lock_shard_metadata asks for the table's owner: taken as the catalog owner, for a job a
    // role with UPDATE on the table runs (the lock only orders it before a move).
    let here = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            client.update(
                "SELECT pg_catalog.lock_shard_metadata(5, ARRAY[$1]::pg_catalog.int8[])",
                None,
                &[shard.into()],
            )?;
            // Not `select`: a read-only query would see the snapshot from before the lock
            // wait, where a move that just committed has not happened yet.
            client
                .update(
                    "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_placement p
                                     WHERE p.shardid OPERATOR(pg_catalog.=) $1
                                       AND p.groupid OPERATOR(pg_catalog.=) (SELECT groupid FROM pg_catalog.pg_dist_local_group))",
                    Some(1),
                    &[shard.into()],
                )?
                .first()
                .get_one::<bool>()
        })
    })
    .map_err(spi_failed)?
    .unwrap_or(false);
    if !here {
        MOVED.with(|m| m.set(true));
        return Err(AiError::Internal { message: format!("shard {shard} moved to another node") });
    }
    Ok(())
}

/// The row a procedure with one INOUT text argument answers.
fn one_field_row(fcinfo: pg_sys::FunctionCallInfo, text: &str) -> Result<pg_sys::Datum, AiError> {
    use pgrx::datum::IntoDatum;
    // SAFETY: fcinfo is the live call info of a procedure whose result is a row of one text
    // field (its INOUT argument); the tuple is formed from a text datum of that type.
    unsafe {
        let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc)
            != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
        {
            return Err(AiError::Internal { message: "the result type is not a row type".into() });
        }
        let tupdesc = pg_sys::BlessTupleDesc(tupdesc);
        let mut values = [text.into_datum().unwrap_or(pg_sys::Datum::from(0))];
        let mut nulls = [false];
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        Ok(pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc))
    }
}
