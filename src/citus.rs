//! pg_bailian on a Citus cluster (README: Citus).
//!
//! The catalogs a call reads (deployments, keys, prompts, default models, prices, budgets) are
//! Citus reference tables once `ai_citus_enable()` has run on the coordinator: every node holds
//! a copy, written together by Citus' two-phase commit, and a node added later gets them with its
//! first shards. Catalog changes are made on the coordinator only; a worker refuses them, so the
//! nodes never disagree. The master key is not in the database: every node needs the same file,
//! and `ai_citus_check()` compares their ids.
//!
//! Inside a shard query Citus refuses any query of a Citus table ("cannot execute a distributed
//! query from a query on a shard"), because a distributed table's shard may move under it. A
//! reference table's copy never moves, so the catalog reads, and only they, run with
//! `citus.allow_nested_distributed_execution` on, at a GUC nest level of their own (as a
//! function's `SET` clause does), never leaking into the caller's query.

use bailian_core::AiError;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Whether the Citus library is loaded in this backend: its setting exists and is Citus' own,
/// not a placeholder any session can make with `SET citus.x = ...`.
pub fn loaded() -> bool {
    let name = c"citus.allow_nested_distributed_execution";
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown setting, and
    // GetConfigOptionFlags with missing_ok 0 for one; both only read the GUC table.
    unsafe {
        !pg_sys::GetConfigOption(name.as_ptr(), true, false).is_null()
            && pg_sys::GetConfigOptionFlags(name.as_ptr(), true) & pg_sys::GUC_CUSTOM_PLACEHOLDER as i32 == 0
    }
}

/// Work that reads Citus' metadata between commits (a shard's job, the coordinator's rounds)
/// must see each commit of a shard move: only READ COMMITTED takes a snapshot per statement.
pub fn read_committed(procedure: &str) -> Result<(), AiError> {
    // SAFETY: a plain read of the transaction's isolation level.
    if unsafe { pg_sys::XactIsoLevel } as u32 == pg_sys::XACT_READ_COMMITTED {
        return Ok(());
    }
    Err(AiError::invalid_with_hint(
        format!("{procedure} on a Citus table runs in READ COMMITTED transactions only (to see shards move)"),
        "SET default_transaction_isolation = 'read committed' for the session (or ALTER ROLE ... RESET default_transaction_isolation).",
    ))
}

/// Runs `f` (catalog reads of reference tables) with Citus' nested-execution check off and
/// `search_path = pg_catalog, pg_temp`, at a GUC nest level that ends with `f`, also when `f`
/// raises an error. `f` must neither commit nor leave a subtransaction open: the level it pops
/// is the one it pushed.
///
/// The search_path: Citus runs a query on a reference table's local copy from its deparsed
/// text, which names pg_catalog's objects unqualified (`now()`, `::text`), and reads that text
/// again with the search_path then in effect. Under the caller's, a look-alike of another
/// role's would run in our fully-qualified catalog queries.
pub fn with_catalog_reads<T>(f: impl FnOnce() -> T) -> T {
    if !loaded() {
        return f();
    }
    with_settings(
        &[(c"citus.allow_nested_distributed_execution", c"on"), (c"search_path", c"pg_catalog, pg_temp")],
        f,
    )
}

/// Runs `f`, which calls Citus' SQL functions, with `search_path = pg_catalog, pg_temp` (as
/// [`with_catalog_reads`] sets its setting). Some of them (`run_command_on_shards`,
/// `run_command_on_workers`) are PL/pgSQL without a search_path of their own: their
/// unqualified names (`=`, `count(*)`, `::regclass`) would otherwise be read with the
/// caller's, and run whatever another role planted there.
pub fn with_citus_functions<T>(f: impl FnOnce() -> T) -> T {
    with_settings(&[(c"search_path", c"pg_catalog, pg_temp")], f)
}

fn with_settings<T>(settings: &[(&std::ffi::CStr, &std::ffi::CStr)], f: impl FnOnce() -> T) -> T {
    struct Level(i32);
    impl Drop for Level {
        fn drop(&mut self) {
            // SAFETY: pops the nest level opened below, restoring the setting's earlier value;
            // on an error unwinding through here the (sub)transaction abort would do the same.
            unsafe { pg_sys::AtEOXact_GUC(true, self.0) };
        }
    }
    // SAFETY: a nest level and a SET LOCAL-like save of a user-settable setting, as
    // ProcedureCallStmt and fmgr_security_definer do for a function's SET clause; both strings
    // are NUL-terminated and outlive the call.
    let _level = unsafe {
        let level = Level(pg_sys::NewGUCNestLevel());
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    };
    f()
}

/// This database's place in a Citus cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// Not a Citus database (no citus extension, or not part of a cluster).
    Alone,
    Coordinator,
    /// A worker, named `host:port` as pg_dist_node knows it.
    Worker(String),
}

/// Where this database stands; `Alone` unless the citus extension exists here. Looked up once
/// per statement (and transaction): every catalog change and call asks.
pub fn node() -> Node {
    if !loaded() {
        return Node::Alone;
    }
    let stamp = crate::catalog::stamp();
    if let Some(node) =
        NODE.with(|n| n.borrow().as_ref().filter(|(at, _)| *at == stamp).map(|(_, n)| n.clone()))
    {
        return node;
    }
    let node = look_up_node();
    NODE.with(|n| *n.borrow_mut() = Some((stamp, node.clone())));
    node
}

fn look_up_node() -> Node {
    let found = Spi::connect(|client| -> Result<Option<(i32, Option<String>)>, pgrx::spi::SpiError> {
        let present = client
            .select(
                "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL
                    AND EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus')",
                Some(1),
                &[],
            )?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false);
        if !present {
            return Ok(None);
        }
        let row = client.select(
            "SELECT g.groupid,
                    (SELECT n.nodename OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) n.nodeport::pg_catalog.text
                       FROM pg_catalog.pg_dist_node n
                      WHERE n.groupid OPERATOR(pg_catalog.=) g.groupid
                      ORDER BY n.noderole OPERATOR(pg_catalog.<>) 'primary' LIMIT 1)
               FROM pg_catalog.pg_dist_local_group g",
            Some(1),
            &[],
        )?;
        let row = row.first();
        Ok(row.get::<i32>(1)?.map(|g| (g, row.get::<String>(2).ok().flatten())))
    });
    match found {
        Ok(Some((0, _))) => Node::Coordinator,
        Ok(Some((_, name))) => Node::Worker(name.unwrap_or_else(|| "(unnamed)".into())),
        _ => Node::Alone,
    }
}

/// Refuses a catalog change (`what`, e.g. "ai_deploy_model") on a Citus worker.
pub fn refuse_on_worker(what: &str) -> Result<(), AiError> {
    if let Node::Worker(name) = node() {
        return Err(AiError::NotAllowed {
            message: format!(
                "{what} changes pg_bailian's catalog, which on a Citus cluster only the coordinator changes; this is worker node {name}"
            ),
            hint: "Run it on the coordinator: the change reaches every node.".into(),
        });
    }
    Ok(())
}

/// The node this is, for errors that only one node of a cluster may raise (a master key that
/// differs): " on Citus worker node host:port", or nothing.
pub fn where_suffix() -> String {
    match node() {
        Node::Worker(name) => format!(" on Citus worker node {name}"),
        _ => String::new(),
    }
}

/// A worker's answer to `run_command_on_workers`: its `host:port`, whether the command
/// succeeded, and its first field or error.
type WorkerAnswer = (String, bool, String);

/// Runs `command` on every active worker at once (`run_command_on_workers`, over Citus'
/// connections as the current role), with a search_path that Citus' PL/pgSQL cannot be
/// misled by (`with_citus_functions`).
fn on_workers(command: &str) -> Result<Vec<WorkerAnswer>, pgrx::spi::SpiError> {
    with_citus_functions(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "SELECT nodename OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) nodeport, success, result
                       FROM pg_catalog.run_command_on_workers($1)",
                    None,
                    &[command.into()],
                )?
                .map(|r| {
                    Ok((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<bool>(2)?.unwrap_or(false),
                        r.get::<String>(3)?.unwrap_or_default(),
                    ))
                })
                .collect()
        })
    })
}

/// On a coordinator, resets every worker's ai_usage (`schema.ai_usage_reset()`, as the caller,
/// who needs the same right there); how many rows they forgot. A worker that refuses or cannot
/// be reached keeps its rows, said in a WARNING.
pub fn reset_usage_on_workers(schema: &str) -> Result<u64, AiError> {
    let answers =
        on_workers(&format!("SELECT {schema}.ai_usage_reset()")).map_err(crate::catalog::spi_failed)?;
    let mut forgot = 0;
    let mut failed = Vec::new();
    for (node, success, result) in answers {
        match result.trim().parse::<u64>() {
            Ok(n) if success => forgot += n,
            _ => failed.push(format!("{node}: {result}")),
        }
    }
    if !failed.is_empty() {
        pgrx::warning!("ai_usage_reset: the usage rows of these Citus workers stay: {}", failed.join("; "));
    }
    Ok(forgot)
}

/// On a coordinator, makes every worker forget the cached answers of `model_name` (undeployed,
/// or cleared with ai_cache_clear): the workers make the calls of shard queries and keep
/// their answers in their own cache. As the catalog owner, over Citus' connections; a worker
/// that cannot be reached keeps its answers, said in a WARNING (they expire with the TTL).
pub fn forget_answers_on_workers(model_name: &str) {
    if node() != Node::Coordinator {
        return;
    }
    let command = format!("SELECT bailian.forget_answers({})", crate::functions::column::literal(model_name));
    match crate::catalog::as_catalog_owner(|| on_workers(&command)) {
        Ok(answers) => {
            let failed: Vec<String> = answers
                .into_iter()
                .filter(|a| !a.1)
                .map(|(node, _, result)| format!("{node}: {result}"))
                .collect();
            if !failed.is_empty() {
                pgrx::warning!(
                    "the cached answers of model \"{model_name}\" stay on Citus workers that did not answer: {}",
                    failed.join("; ")
                );
            }
        }
        Err(e) => {
            pgrx::warning!("the cached answers of model \"{model_name}\" stay on the Citus workers: {e}")
        }
    }
}

/// Whether Citus manages `relid` (distributed, reference or Citus local table).
pub fn is_citus_table(relid: pgrx::pg_sys::Oid) -> Result<bool, AiError> {
    if !loaded() || node() == Node::Alone {
        return Ok(false);
    }
    Spi::connect(|client| {
        client
            .select(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid OPERATOR(pg_catalog.=) $1)",
                Some(1),
                &[relid.into()],
            )?
            .first()
            .get_one::<bool>()
    })
    .map(|b| b.unwrap_or(false))
    .map_err(crate::catalog::spi_failed)
}

/// `crate::catalog::stamp`: which statement a cached value is for.
type Stamp = (i64, i64, u64);

thread_local! {
    /// The share of each deployment's rate a column job's part on this node was given, and the
    /// job's id (0: none) under which its other nodes release theirs when they finish.
    static JOB_SHARE: std::cell::Cell<Option<(f64, u64)>> = const { std::cell::Cell::new(None) };
    /// `node()`, with the statement it was looked up for.
    static NODE: std::cell::RefCell<Option<(Stamp, Node)>> = const { std::cell::RefCell::new(None) };
    /// The default share, with the statement it was computed for.
    static DEFAULT_SHARE: std::cell::Cell<Option<(Stamp, f64)>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with this node's requests limited to `share` of each deployment's rate, raised by
/// what the other nodes of job `job` release when they finish (`release_share`).
pub fn with_rate_share<T>(share: f64, job: u64, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<(f64, u64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            JOB_SHARE.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(JOB_SHARE.with(|s| s.replace(Some((share, job)))));
    f()
}

/// Records on this node that another node of column job `job` finished its part, releasing
/// `share` of the rate to the nodes still running it. False when it could not be kept (no
/// shared memory, or no room), which leaves those nodes at their first shares.
pub fn release_share(job: u64, share: f64) -> bool {
    crate::shared::released().is_some_and(|r| r.release(job, share, now_seconds()))
}

/// This node's part of column job `job` has finished: what other nodes released to it is
/// no longer read here.
pub fn forget_released(job: u64) {
    if let Some(r) = crate::shared::released() {
        r.forget(job);
    }
}

fn now_seconds() -> u64 {
    u64::try_from(bailian_core::shared::unix_us() / 1_000_000).unwrap_or(0)
}

/// The share of a deployment's rate this node may use, so that the nodes of a cluster together
/// stay under the account's limit: 1 off Citus; for a column job's part, the share it was given
/// (its share of the job's rows), scaled up by what the job's finished nodes released, so the
/// nodes still running use the whole rate between them; else an equal share among the nodes
/// that hold shards (Citus pushes a query's AI calls to them), which `pg_dist_node` says again
/// when nodes join or leave.
pub fn rate_share() -> f64 {
    if let Some((share, job)) = JOB_SHARE.with(|s| s.get()) {
        return crate::shared::released().map_or(share, |r| r.scaled(job, share, now_seconds()));
    }
    default_share()
}

/// This node's share of a budget: its first share of the rate, never raised by what finished
/// nodes release (they have spent from their own shares of the budget, which stay spent).
pub fn budget_share() -> f64 {
    match JOB_SHARE.with(|s| s.get()) {
        Some((share, _)) => share,
        None => default_share(),
    }
}

fn default_share() -> f64 {
    if !loaded() {
        return 1.0;
    }
    let stamp = crate::catalog::stamp();
    if let Some((at, share)) = DEFAULT_SHARE.with(|s| s.get()) {
        if at == stamp {
            return share;
        }
    }
    let share = match node() {
        Node::Alone => 1.0,
        _ => {
            let nodes = Spi::connect(|client| {
                client
                    .select(
                        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_dist_node
                          WHERE isactive AND noderole OPERATOR(pg_catalog.=) 'primary' AND shouldhaveshards",
                        Some(1),
                        &[],
                    )?
                    .first()
                    .get_one::<i64>()
            })
            .ok()
            .flatten()
            .unwrap_or(1);
            1.0 / nodes.max(1) as f64
        }
    };
    DEFAULT_SHARE.with(|s| s.set(Some((stamp, share))));
    share
}

/// `limit` scaled to this node's share, at least 1 (0, no limit, stays 0).
pub fn shared_limit(limit: Option<u32>, share: f64) -> Option<u32> {
    limit.map(|l| if l == 0 || share >= 1.0 { l } else { ((f64::from(l) * share).floor() as u32).max(1) })
}
