//! The catalog of deployed models (`bailian.models`, keys in `bailian.model_keys`).
//!
//! Neither table is readable by PUBLIC. The AI functions read them as the catalog's owner for
//! the duration of one fixed, fully-qualified query, so any role allowed to call a function
//! can use a model without any path to its key. Loaded deployments are cached for the rest
//! of the statement (and transaction): a column of 10,000 rows reads the catalog once.
//!
//! Literal keys are stored sealed with the cluster's master key (a file outside the
//! database, see `bailian_core::keystore`), bound to the model name: a reader of the table,
//! of a dump, or a member of `pg_read_all_data` sees ciphertext only.
//!
//! A deployed model belongs to the role that deployed it: only that role, its members or a
//! superuser may replace or undeploy it, as with PostgreSQL's own objects.

use bailian_core::deploy::{DeployArgs, Deployment};
use bailian_core::keystore::MasterKey;
use bailian_core::registry::Task;
use bailian_core::secret::KeySource;
use bailian_core::AiError;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::Arc;

const SCHEMA: &str = "bailian";

/// Runs `f` as the owner of the catalog schema, restoring the caller's identity afterwards,
/// also when `f` raises an error. Every query run this way must name schemas and operators
/// explicitly: the caller's search_path is still in effect. On a Citus cluster the catalogs
/// are reference tables, which these queries may read from inside a shard query (`crate::citus`).
pub(crate) fn as_catalog_owner<T>(f: impl FnOnce() -> T) -> T {
    as_role(catalog_owner(), || crate::citus::with_catalog_reads(f))
}

/// The owner of the catalog schema.
pub(crate) fn catalog_owner() -> pg_sys::Oid {
    // Read-only (`select`, not pgrx's `Spi::get_one`, which marks the transaction as writing
    // and so assigns it an XID): the lookups of a parallel-safe function run in parallel mode,
    // where assigning an XID is an error, and a plain SELECT of an AI function need not take one.
    Spi::connect(|client| {
        client
            .select(
                "SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) 'bailian'",
                Some(1),
                &[],
            )?
            .first()
            .get_one::<pg_sys::Oid>()
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        error!("pg_bailian: the catalog schema \"{SCHEMA}\" is missing; recreate the extension")
    })
}

/// Runs `f` as `role` in a security-restricted context, restoring the caller's identity
/// afterwards, also when `f` raises an error.
pub(crate) fn as_role<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the identity saved below; a plain setter with no failure path.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let mut saved_user = pg_sys::Oid::INVALID;
    let mut saved_context = 0;
    // SAFETY: reads and sets this backend's current user id and security context.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let _restore = Restore(saved_user, saved_context);
    f()
}

/// The current user: its id and name.
pub(crate) fn current_user() -> (pg_sys::Oid, String) {
    // SAFETY: GetUserId is a plain read; GetUserNameFromId returns a palloc'd C string for a
    // valid role id (the current user always is one).
    unsafe {
        let id = pg_sys::GetUserId();
        let name = pg_sys::GetUserNameFromId(id, false);
        (id, CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// The role named `name`, if it exists.
pub(crate) fn role_oid(name: &str) -> Option<pg_sys::Oid> {
    let name = CString::new(name).ok()?;
    // SAFETY: get_role_oid with missing_ok=true returns InvalidOid instead of raising.
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    (oid != pg_sys::Oid::INVALID).then_some(oid)
}

/// Whether `caller` may replace or undeploy a model `owner` deployed: the same role, a member
/// of it (with its privileges), or a superuser. A role that no longer exists is no one's.
fn may_manage(caller: pg_sys::Oid, owner: &str) -> bool {
    // SAFETY: superuser_arg and has_privs_of_role only read the role catalogs.
    unsafe {
        pg_sys::superuser_arg(caller) || role_oid(owner).is_some_and(|o| pg_sys::has_privs_of_role(caller, o))
    }
}

/// Whether the role named `role` exists and is a superuser now.
fn is_superuser(role: &str) -> bool {
    // SAFETY: superuser_arg reads the role's entry.
    role_oid(role).is_some_and(|oid| unsafe { pg_sys::superuser_arg(oid) })
}

fn not_owner(name: &str, owner: &str, verb: &str) -> AiError {
    AiError::NotAllowed {
        message: format!(
            "model \"{name}\" was deployed by role \"{owner}\"; only that role, its members or a superuser may {verb} it"
        ),
        hint: "Deploy under another model_name, or ask that role or a superuser.".into(),
    }
}

// ---- the master key ------------------------------------------------------------------

thread_local! {
    /// Loaded once per backend and path (the path may change on a configuration reload).
    static MASTER: RefCell<Option<(PathBuf, Arc<MasterKey>)>> = const { RefCell::new(None) };
}

/// The master key, read from its file (created on first use when `create`).
fn master_key(create: bool) -> Result<Arc<MasterKey>, AiError> {
    let path = crate::guc::master_key_file();
    if let Some(hit) =
        MASTER.with(|m| m.borrow().as_ref().filter(|(p, _)| *p == path).map(|(_, k)| k.clone()))
    {
        return Ok(hit);
    }
    let key = Arc::new(if create { MasterKey::load_or_create(&path)? } else { MasterKey::load(&path)? });
    MASTER.with(|m| *m.borrow_mut() = Some((path, key.clone())));
    Ok(key)
}

/// The id of this server's master key; None when its file does not exist (not created here).
pub(crate) fn master_key_id() -> Result<Option<String>, AiError> {
    if !crate::guc::master_key_file().exists() {
        return Ok(None);
    }
    Ok(Some(master_key(false)?.id()))
}

pub(crate) fn spi_failed(e: pgrx::spi::SpiError) -> AiError {
    AiError::Internal { message: format!("catalog query failed: {e}") }
}

// ---- per-statement cache -------------------------------------------------------------

#[derive(Default)]
struct Cache {
    stamp: (i64, i64, u64),
    models: HashMap<String, Arc<Deployment>>,
    /// The default model of each model-less function, or the error a call raises.
    defaults: HashMap<String, Result<String, AiError>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static GENERATION: RefCell<u64> = const { RefCell::new(0) };
}

/// Changes with every statement, transaction, and deploy/undeploy in this backend.
pub(crate) fn stamp() -> (i64, i64, u64) {
    // SAFETY: plain reads of the current transaction's timestamps.
    let (stmt, xact) = unsafe {
        (pg_sys::GetCurrentStatementStartTimestamp(), pg_sys::GetCurrentTransactionStartTimestamp())
    };
    (stmt, xact, GENERATION.with(|g| *g.borrow()))
}

fn with_cache<T>(f: impl FnOnce(&mut Cache) -> T) -> T {
    let now = stamp();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.stamp != now {
            *c = Cache { stamp: now, ..Cache::default() };
        }
        f(&mut c)
    })
}

fn invalidate() {
    GENERATION.with(|g| *g.borrow_mut() += 1);
}

// ---- reads ---------------------------------------------------------------------------

const LOAD: &str = "
SELECT m.model_type, m.params, m.max_retries, m.initial_retry_delay, m.max_retry_delay,
       m.timeout, m.region, m.base_url, m.requests_per_minute, m.tokens_per_minute, k.api_key,
       m.deployed_by::pg_catalog.text, m.provider, m.workspace,
       (SELECT pg_catalog.jsonb_object_agg(p.function_name, p.prompt) FROM bailian.prompts p
         WHERE p.model_name OPERATOR(pg_catalog.=) m.model_name),
       m.cache, m.batch_chat
  FROM bailian.models m
  JOIN bailian.model_keys k ON k.model_name OPERATOR(pg_catalog.=) m.model_name
 WHERE m.model_name OPERATOR(pg_catalog.=) $1";

/// Whether bailian.models has 0.6's columns (cache, batch_chat): a database not yet updated
/// (ALTER EXTENSION ... UPDATE) runs this library with an older catalog, whose deployments
/// neither cache nor use Batch Chat.
fn models_have_tiers(client: &pgrx::spi::SpiClient<'_>) -> Result<bool, AiError> {
    Ok(client
        .select(
            "SELECT pg_catalog.count(*) OPERATOR(pg_catalog.=) 2 FROM pg_catalog.pg_attribute
              WHERE attrelid OPERATOR(pg_catalog.=) 'bailian.models'::pg_catalog.regclass
                AND attname OPERATOR(pg_catalog.=) ANY ('{cache,batch_chat}'::pg_catalog.name[])
                AND NOT attisdropped",
            Some(1),
            &[],
        )
        .map_err(spi_failed)?
        .first()
        .get_one::<bool>()
        .map_err(spi_failed)?
        .unwrap_or(false))
}

/// The deployment named `name`.
pub fn load(name: &str) -> Result<Arc<Deployment>, AiError> {
    if let Some(hit) = with_cache(|c| c.models.get(name).cloned()) {
        return Ok(hit);
    }
    let args = as_catalog_owner(|| {
        Spi::connect(|client| {
            let load = if models_have_tiers(client)? {
                LOAD.to_string()
            } else {
                LOAD.replace("m.cache, m.batch_chat", "false, false")
            };
            let rows = client.select(&load, Some(1), &[name.into()]).map_err(spi_failed)?;
            let Some(row) = rows.into_iter().next() else {
                return Ok(None);
            };
            let get_err = spi_failed;
            Ok::<_, AiError>(Some((
                DeployArgs {
                    model_name: Some(name.to_string()),
                    model_type: row.get::<String>(1).map_err(get_err)?,
                    params: row.get::<JsonB>(2).map_err(get_err)?.map(|j| j.0),
                    max_retries: row.get::<i32>(3).map_err(get_err)?,
                    initial_retry_delay: row.get::<f64>(4).map_err(get_err)?,
                    max_retry_delay: row.get::<f64>(5).map_err(get_err)?,
                    timeout: row.get::<f64>(6).map_err(get_err)?,
                    region: row.get::<String>(7).map_err(get_err)?,
                    base_url: row.get::<String>(8).map_err(get_err)?,
                    requests_per_minute: row.get::<i32>(9).map_err(get_err)?,
                    tokens_per_minute: row.get::<i32>(10).map_err(get_err)?,
                    api_key: None,
                    provider: row.get::<String>(13).map_err(get_err)?,
                    workspace: row.get::<String>(14).map_err(get_err)?,
                    cache: row.get::<bool>(16).map_err(get_err)?,
                    batch_chat: row.get::<bool>(17).map_err(get_err)?,
                },
                row.get::<String>(11).map_err(get_err)?.unwrap_or_default(),
                row.get::<String>(12).map_err(get_err)?.unwrap_or_default(),
                row.get::<JsonB>(15).map_err(get_err)?.map(|j| j.0),
            )))
        })
    })?;
    let Some((args, stored_key, deployed_by, prompts)) = args else {
        return Err(AiError::ModelNotDeployed {
            name: name.to_string(),
            hint: Some("SELECT model_name FROM ai_models lists the deployed models.".into()),
        });
    };
    let key =
        KeySource::from_stored(&stored_key, |sealed| master_key(false)?.open(sealed, name)).map_err(|e| {
            match e {
                AiError::MasterKey { message, hint } => AiError::MasterKey {
                    message: format!(
                        "cannot decrypt the API key of model \"{name}\"{}: {message}",
                        crate::citus::where_suffix()
                    ),
                    hint,
                },
                other => other,
            }
        })?;
    let mut deployment = Deployment::from_catalog(args, key).map_err(|e| {
        AiError::invalid(format!("deployed model \"{name}\" is no longer valid: {e}; redeploy it"))
    })?;
    if let Some(serde_json::Value::Object(prompts)) = prompts {
        deployment.prompts =
            prompts.into_iter().filter_map(|(f, p)| Some((f, p.as_str()?.to_string()))).collect();
    }
    // The host list applies at every use of a model a non-superuser deployed, so narrowing
    // it takes effect for models already deployed (as the key lists do).
    if let Some(url) = &deployment.base_url {
        if !is_superuser(&deployed_by) {
            crate::guc::policy().check_host(url).map_err(|e| match e {
                AiError::NotAllowed { message, hint } => AiError::NotAllowed {
                    message: format!("model \"{name}\" was deployed by role \"{deployed_by}\": {message}"),
                    hint,
                },
                other => other,
            })?;
        }
    }
    let deployment = Arc::new(deployment);
    with_cache(|c| c.models.insert(name.to_string(), deployment.clone()));
    Ok(deployment)
}

const PRICE_AND_BUDGETS: &str = "
SELECT 'price', NULL::pg_catalog.int8, p.input_price::pg_catalog.float8, p.output_price::pg_catalog.float8, p.thinking_output_price::pg_catalog.float8,
       p.cached_input_ratio::pg_catalog.float8, NULL::pg_catalog.text, NULL::pg_catalog.text, NULL::pg_catalog.int8, NULL::pg_catalog.text, NULL::pg_catalog.text,
       p.batch_ratio::pg_catalog.float8
  FROM bailian.effective_prices p
 WHERE p.model_type OPERATOR(pg_catalog.=) $2 AND p.input_price IS NOT NULL
UNION ALL
SELECT 'budget', b.id, b.\"limit\"::pg_catalog.float8, NULL, NULL, NULL, b.unit, b.period,
       pg_catalog.date_part('epoch', pg_catalog.date_trunc(b.period, pg_catalog.now(), b.time_zone))::pg_catalog.int8,
       (((pg_catalog.date_trunc(b.period, pg_catalog.now(), b.time_zone) AT TIME ZONE b.time_zone)
          OPERATOR(pg_catalog.+) ('1 ' OPERATOR(pg_catalog.||) b.period)::pg_catalog.interval) AT TIME ZONE b.time_zone)::pg_catalog.text,
       pg_catalog.format('%s on %s', COALESCE('of role ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(b.role::pg_catalog.text), 'of every role'),
                         COALESCE('model ' OPERATOR(pg_catalog.||) pg_catalog.quote_literal(b.model_name), 'every model')),
       NULL
  FROM bailian.budgets b
 WHERE (b.role IS NULL OR b.role OPERATOR(pg_catalog.=) $3::pg_catalog.oid::pg_catalog.regrole)
   AND (b.model_name IS NULL OR b.model_name OPERATOR(pg_catalog.=) $1)";

const CATALOG_HAS_PRICES: &str = "
SELECT pg_catalog.to_regclass('bailian.budgets') IS NOT NULL
   AND pg_catalog.to_regclass('bailian.effective_prices') IS NOT NULL";

/// The price of `model_type` (None when ai_prices has none) and the budgets that cover
/// `role` calling `model_name`, with their current periods. `batch`: the price of Bailian's
/// batch tiers: ai_prices' batch_ratio of it (the tiers' documented half where it names none),
/// with no context-cache discount (research §1.10).
pub fn price_and_budgets(
    model_name: &str,
    model_type: &str,
    role: pg_sys::Oid,
    batch: bool,
) -> Result<(Option<bailian_core::meter::Price>, Vec<crate::shared::accounting::BudgetDef>), AiError> {
    // On a Citus cluster each node counts its own spending: it keeps to its share of a budget,
    // the share of the work it was given (never raised, as its rate share is, when other nodes
    // finish: they spent from their own shares), so the nodes together keep to the whole.
    let share = crate::citus::budget_share();
    as_catalog_owner(|| {
        Spi::connect(|client| {
            let mut price = None;
            let mut budgets = Vec::new();
            // A database still on a version before 0.3.0 (not yet ALTER EXTENSION ... UPDATE)
            // has neither: its calls have no price and no budget until it is updated.
            let current = client.select(CATALOG_HAS_PRICES, Some(1), &[]).map_err(spi_failed)?;
            let current = match current.into_iter().next() {
                Some(row) => row.get::<bool>(1).map_err(spi_failed)?.unwrap_or(false),
                None => false,
            };
            if !current {
                return Ok((price, budgets));
            }
            let rows = client
                .select(PRICE_AND_BUDGETS, None, &[model_name.into(), model_type.into(), role.into()])
                .map_err(spi_failed)?;
            for row in rows {
                let kind = row.get::<String>(1).map_err(spi_failed)?.unwrap_or_default();
                let f = |i: usize| row.get::<f64>(i).map_err(spi_failed);
                let t = |i: usize| row.get::<String>(i).map_err(spi_failed).map(Option::unwrap_or_default);
                if kind == "price" {
                    let live = bailian_core::meter::Price {
                        input: f(3)?.unwrap_or(0.0),
                        output: f(4)?,
                        thinking_output: f(5)?,
                        cached_input_ratio: f(6)?.unwrap_or(1.0),
                    };
                    let ratio = f(12)?.unwrap_or(bailian_core::tiers::BATCH_RATIO);
                    price = Some(if batch { live.at_batch_rate(ratio) } else { live });
                } else {
                    budgets.push(crate::shared::accounting::BudgetDef {
                        id: row.get::<i64>(2).map_err(spi_failed)?.unwrap_or(0),
                        limit: f(3)?.unwrap_or(0.0) * share,
                        unit: t(7)?,
                        period: t(8)?,
                        period_start: row.get::<i64>(9).map_err(spi_failed)?.unwrap_or(0),
                        resets_at: t(10)?,
                        label: t(11)?,
                    });
                }
            }
            Ok((price, budgets))
        })
    })
}

/// Who deployed model `name` (42704 when it is not deployed).
pub fn deployer(name: &str) -> Result<String, AiError> {
    let by = as_catalog_owner(|| {
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT deployed_by::pg_catalog.text FROM bailian.models WHERE model_name OPERATOR(pg_catalog.=) $1",
                    Some(1),
                    &[name.into()],
                )
                .map_err(spi_failed)?;
            match rows.into_iter().next() {
                Some(row) => row.get::<String>(1).map_err(spi_failed),
                None => Ok(None),
            }
        })
    })?;
    by.ok_or_else(|| AiError::ModelNotDeployed {
        name: name.to_string(),
        hint: Some("SELECT model_name FROM ai_models lists the deployed models.".into()),
    })
}

/// The names of the deployed models, sorted.
pub fn model_names() -> Result<Vec<String>, AiError> {
    as_catalog_owner(|| {
        Spi::connect(|client| {
            let rows = client
                .select("SELECT model_name FROM bailian.models ORDER BY model_name", None, &[])
                .map_err(spi_failed)?;
            rows.into_iter()
                .map(|r| r.get::<String>(1).map_err(spi_failed).map(Option::unwrap_or_default))
                .collect()
        })
    })
}

/// The deployment named `name`, checked to be usable by `function`.
pub fn load_for(name: &str, function: &str, tasks: &[Task]) -> Result<Arc<Deployment>, AiError> {
    let d = load(name)?;
    if tasks.contains(&d.spec.task) {
        return Ok(d);
    }
    let allowed = tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" or ");
    Err(AiError::WrongTask {
        model: name.to_string(),
        model_type: d.spec.model_type.to_string(),
        task: d.spec.task.to_string(),
        function: function.to_string(),
        allowed: format!(
            "{function} needs a model whose task is {allowed}; SELECT model_name, task FROM ai_models shows each model's task."
        ),
    })
}

// ---- default models of the model-less calls ------------------------------------------

/// The AI functions with a model-less form, how that form is written (for messages), and the
/// tasks of the models it takes in order of preference: unset, a function uses the only
/// deployed model of the first of its tasks that any deployed model has. The names are those
/// of the CHECK on `bailian.default_models` (sql/catalog.sql).
pub const MODEL_LESS: [(&str, &str, &[Task]); 11] = [
    ("ai_gen", "ai_gen(prompt)", &[Task::Chat]),
    ("ai_embed", "ai_embed(content)", &[Task::Embedding]),
    ("ai_translate", "ai_translate(content, target_lang)", &[Task::Translation, Task::Chat]),
    ("ai_classify", "ai_classify(content, labels)", &[Task::Chat]),
    ("ai_extract", "ai_extract(content, labels)", &[Task::Chat]),
    ("ai_mask", "ai_mask(content, labels)", &[Task::Chat]),
    ("ai_summarize", "ai_summarize(content)", &[Task::Chat]),
    ("ai_fix_grammar", "ai_fix_grammar(content)", &[Task::Chat]),
    ("ai_sentiment", "ai_sentiment(content)", &[Task::Chat]),
    ("ai_rank", "ai_rank(query, document)", &[Task::Rerank, Task::Chat]),
    ("ai_similarity", "ai_similarity(a, b)", &[Task::Embedding]),
];

/// The entry of `function` in `MODEL_LESS`.
pub fn model_less(function: &str) -> Option<&'static (&'static str, &'static str, &'static [Task])> {
    MODEL_LESS.iter().find(|(f, _, _)| *f == function)
}

/// One function's default: what a DBA set, and what a call uses now and why.
pub struct Choice {
    pub function: &'static str,
    pub tasks: &'static [Task],
    /// As set with ai_set_default_model: the model, the role, when.
    pub set: Option<(String, String, pgrx::datum::TimestampWithTimeZone)>,
    /// The model a call uses now: Ok(model, why) or the error it raises.
    pub effective: Result<(String, String), AiError>,
}

fn tasks_text(tasks: &[Task]) -> String {
    tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" or ")
}

/// The defaults of every model-less function (`only`: of that one), from one read of the
/// catalog as its owner. The rule: for ai_gen, `pg_bailian.default_chat_model` when set;
/// then the model set with ai_set_default_model; then the only deployed model of the first of
/// the function's tasks any deployed model has; otherwise an error saying how to choose.
pub fn choices(only: Option<&str>) -> Result<Vec<Choice>, AiError> {
    type Set = (String, String, String, pgrx::datum::TimestampWithTimeZone);
    let (set, models): (Vec<Set>, Vec<(String, String)>) = as_catalog_owner(|| {
        Spi::connect(|client| {
            // A database still on the SQL of a version before the table (this library serves
            // it until ALTER EXTENSION UPDATE) has no defaults set: only the automatic rule.
            let has_table = client
                .select("SELECT pg_catalog.to_regclass('bailian.default_models') IS NOT NULL", None, &[])
                .map_err(spi_failed)?
                .first()
                .get::<bool>(1)
                .map_err(spi_failed)?
                .unwrap_or(false);
            let query = if has_table {
                "SELECT function_name, model_name, set_by::pg_catalog.text, set_at FROM bailian.default_models"
            } else {
                "SELECT NULL::pg_catalog.text, NULL::pg_catalog.text, NULL::pg_catalog.text, \
                 NULL::pg_catalog.timestamptz WHERE false"
            };
            let set = client
                .select(query, None, &[])
                .map_err(spi_failed)?
                .map(|r| {
                    Ok((
                        r.get::<String>(1).map_err(spi_failed)?.unwrap_or_default(),
                        r.get::<String>(2).map_err(spi_failed)?.unwrap_or_default(),
                        r.get::<String>(3).map_err(spi_failed)?.unwrap_or_default(),
                        r.get::<pgrx::datum::TimestampWithTimeZone>(4)
                            .map_err(spi_failed)?
                            .ok_or_else(|| AiError::Internal { message: "set_at is NULL".into() })?,
                    ))
                })
                .collect::<Result<Vec<_>, AiError>>()?;
            let models = client
                .select("SELECT model_name, task FROM bailian.models ORDER BY model_name", None, &[])
                .map_err(spi_failed)?
                .map(|r| {
                    Ok((
                        r.get::<String>(1).map_err(spi_failed)?.unwrap_or_default(),
                        r.get::<String>(2).map_err(spi_failed)?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<Vec<_>, AiError>>()?;
            Ok::<_, AiError>((set, models))
        })
    })?;
    let guc = crate::guc::default_chat_model();
    Ok(MODEL_LESS
        .iter()
        .filter(|(f, _, _)| only.is_none_or(|o| o == *f))
        .map(|&(function, call, tasks)| {
            let set =
                set.iter().find(|(f, ..)| f == function).map(|(_, m, by, at)| (m.clone(), by.clone(), *at));
            let effective = if let (Some(name), "ai_gen") = (&guc, function) {
                Ok((name.clone(), "pg_bailian.default_chat_model".to_string()))
            } else if let Some((m, by, _)) = &set {
                Ok((m.clone(), format!("set with ai_set_default_model by {by}")))
            } else {
                automatic(function, call, tasks, &models)
            };
            Choice { function, tasks, set, effective }
        })
        .collect())
}

/// The only deployed model of the first of `tasks` any deployed model has.
fn automatic(
    function: &str,
    call: &str,
    tasks: &[Task],
    models: &[(String, String)],
) -> Result<(String, String), AiError> {
    let hint = |example: &str| {
        let guc =
            if function == "ai_gen" { "SET pg_bailian.default_chat_model = '<model_name>', or " } else { "" };
        format!(
            "{guc}SELECT ai_set_default_model('{function}', '<model_name>') (as a role allowed to deploy), or call {function} with a model_name first{example}."
        )
    };
    for task in tasks {
        let of_task: Vec<&str> =
            models.iter().filter(|(_, t)| t == task.as_str()).map(|(m, _)| m.as_str()).collect();
        match of_task.as_slice() {
            [] => continue,
            [only] => return Ok((only.to_string(), format!("the only deployed {task} model"))),
            several => {
                return Err(AiError::NoDefaultChatModel {
                    message: format!(
                        "{call} cannot choose among the deployed {task} models ({}{})",
                        several.iter().take(5).map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", "),
                        if several.len() > 5 { ", ..." } else { "" }
                    ),
                    hint: hint(""),
                })
            }
        }
    }
    let wanted = tasks_text(tasks);
    let article = if wanted.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    Err(AiError::NoDefaultChatModel {
        message: format!("{call} needs {article} {wanted} model, and none is deployed"),
        hint: hint(", after deploying one with ai_deploy_model"),
    })
}

/// The model the model-less form of `function` uses (see `choices`), cached for the statement.
pub fn default_model(function: &str) -> Result<String, AiError> {
    if function == "ai_gen" {
        if let Some(name) = crate::guc::default_chat_model() {
            return Ok(name);
        }
    }
    if let Some(hit) = with_cache(|c| c.defaults.get(function).cloned()) {
        return hit;
    }
    let choice = choices(Some(function))?
        .pop()
        .ok_or_else(|| AiError::Internal { message: format!("{function} has no model-less form") })?;
    let result = choice.effective.map(|(model, _)| model);
    with_cache(|c| c.defaults.insert(function.to_string(), result.clone()));
    result
}

/// Sets (Some) or unsets (None) the default model of `function`. Only a role that may manage
/// the mapping there is (the role that set it, its members, a superuser) replaces or removes
/// it; the model must be deployed, and `fits` checks it for the function.
pub fn set_default_model(
    function: &str,
    model: Option<&str>,
    fits: impl FnOnce(&'static bailian_core::registry::ModelSpec) -> Result<(), AiError>,
) -> Result<(), AiError> {
    crate::citus::refuse_on_worker("ai_set_default_model")?;
    let (caller, caller_name) = current_user();
    let done = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            let current = client
                .update(
                    "SELECT set_by::pg_catalog.text FROM bailian.default_models
                      WHERE function_name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
                    Some(1),
                    &[function.into()],
                )
                .map_err(spi_failed)?
                .next()
                .map(|r| r.get::<String>(1).map_err(spi_failed).map(Option::unwrap_or_default))
                .transpose()?;
            if let Some(owner) = &current {
                if !may_manage(caller, owner) {
                    return Err(AiError::NotAllowed {
                        message: format!(
                            "the default model of {function} was set by role \"{owner}\"; only that role, its members or a superuser may change it"
                        ),
                        hint: "Ask that role or a superuser, or call the function with a model_name.".into(),
                    });
                }
            }
            let Some(model) = model else {
                client
                    .update(
                        "DELETE FROM bailian.default_models WHERE function_name OPERATOR(pg_catalog.=) $1",
                        None,
                        &[function.into()],
                    )
                    .map_err(spi_failed)?;
                return Ok(());
            };
            // FOR KEY SHARE: the model cannot be undeployed before this mapping is stored.
            let row = client
                .update(
                    "SELECT model_type, provider FROM bailian.models
                      WHERE model_name OPERATOR(pg_catalog.=) $1 FOR KEY SHARE",
                    Some(1),
                    &[model.into()],
                )
                .map_err(spi_failed)?
                .next()
                .map(|r| {
                    Ok::<_, AiError>((
                        r.get::<String>(1).map_err(spi_failed)?.unwrap_or_default(),
                        r.get::<String>(2).map_err(spi_failed)?.unwrap_or_default(),
                    ))
                })
                .transpose()?;
            let Some((model_type, provider)) = row else {
                return Err(AiError::ModelNotDeployed {
                    name: model.to_string(),
                    hint: Some("SELECT model_name FROM ai_models lists the deployed models.".into()),
                });
            };
            let spec = bailian_core::registry::Provider::parse(&provider)
                .and_then(|p| bailian_core::registry::find_at(p, &model_type))
                .ok_or_else(|| {
                    AiError::invalid(format!(
                        "deployed model \"{model}\" is no longer valid ({model_type}); redeploy it"
                    ))
                })?;
            fits(spec)?;
            client
                .update(
                    "INSERT INTO bailian.default_models (function_name, model_name, set_by, set_at)
                     VALUES ($1, $2, $3, pg_catalog.now())
                     ON CONFLICT (function_name) DO UPDATE
                        SET model_name = EXCLUDED.model_name, set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at",
                    None,
                    &[function.into(), model.into(), caller_name.as_str().into()],
                )
                .map_err(spi_failed)?;
            Ok::<_, AiError>(())
        })
    });
    invalidate();
    done
}

// ---- writes --------------------------------------------------------------------------

const OWNER_OF: &str = "
SELECT deployed_by::pg_catalog.text FROM bailian.models
 WHERE model_name OPERATOR(pg_catalog.=) $1 FOR UPDATE";

/// The role that deployed `name`, locking its row until the transaction ends; None when no
/// model has that name.
fn owner_of(client: &mut pgrx::spi::SpiClient<'_>, name: &str) -> Result<Option<String>, AiError> {
    client
        .update(OWNER_OF, Some(1), &[name.into()])
        .map_err(spi_failed)?
        .next()
        .map(|row| row.get::<String>(1).map_err(spi_failed).map(Option::unwrap_or_default))
        .transpose()
}

const INSERT_MODEL: &str = "
INSERT INTO bailian.models (model_name, model_type, task, params, max_retries,
    initial_retry_delay, max_retry_delay, timeout, region, base_url, endpoint,
    requests_per_minute, tokens_per_minute, key_hint, deployed_by, provider, workspace, cache, batch_chat, deployed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, pg_catalog.now())
ON CONFLICT (model_name) DO NOTHING
RETURNING true";

const UPDATE_MODEL: &str = "
UPDATE bailian.models SET
    model_type = $2, task = $3, params = $4, max_retries = $5, initial_retry_delay = $6,
    max_retry_delay = $7, timeout = $8, region = $9, base_url = $10, endpoint = $11,
    requests_per_minute = $12, tokens_per_minute = $13, key_hint = $14, deployed_by = $15,
    provider = $16, workspace = $17, cache = $18, batch_chat = $19, deployed_at = pg_catalog.now()
 WHERE model_name OPERATOR(pg_catalog.=) $1";

const UPSERT_KEY: &str = "
INSERT INTO bailian.model_keys (model_name, api_key) VALUES ($1, $2)
ON CONFLICT (model_name) DO UPDATE SET api_key = EXCLUDED.api_key";

/// Stores `d`; an existing model of that name is replaced only when `replace` is true and the
/// caller may manage it. Returns whether a model was replaced.
pub fn deploy(d: &Deployment, replace: bool) -> Result<bool, AiError> {
    crate::citus::refuse_on_worker("ai_deploy_model")?;
    let (caller, caller_name) = current_user();
    // Sealed before switching identity: the key file belongs to the server, not to a role.
    let master = match &d.key {
        KeySource::Literal(_) => Some(master_key(true)?),
        KeySource::Env(_) | KeySource::File(_) => None,
    };
    let stored_key = d.key.stored(|plain| match &master {
        Some(m) => m.try_seal(plain, &d.name),
        None => Err(AiError::Internal { message: "no master key to seal with".into() }),
    })?;
    let replaced = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            // A catalog before 0.6 has neither cache nor batch_chat (its ai_deploy_model cannot
            // ask for them either).
            let tiers = models_have_tiers(client)?;
            let (insert_model, update_model) = if tiers {
                (INSERT_MODEL.to_string(), UPDATE_MODEL.to_string())
            } else {
                (
                    INSERT_MODEL
                        .replace(", cache, batch_chat, deployed_at)", ", deployed_at)")
                        .replace(", $18, $19, pg_catalog.now()", ", pg_catalog.now()"),
                    UPDATE_MODEL.replace(", cache = $18, batch_chat = $19", ""),
                )
            };
            // Two rounds at most: a new name can be taken by a concurrent deploy between the
            // owner check and the insert, and is then treated as an existing model.
            for _ in 0..2 {
                let owner = owner_of(client, &d.name)?;
                let values = || {
                    let mut values: Vec<pgrx::datum::DatumWithOid> = vec![
                        d.name.as_str().into(),
                        d.spec.model_type.into(),
                        d.spec.task.as_str().into(),
                        JsonB(serde_json::Value::Object(d.params.clone())).into(),
                        (d.retry.max_retries as i32).into(),
                        d.retry.initial_retry_delay.into(),
                        d.retry.max_retry_delay.into(),
                        d.retry.timeout.into(),
                        d.region.as_str().into(),
                        d.base_url.clone().into(),
                        d.endpoint().into(),
                        d.limits.requests_per_minute.map(|n| n as i32).into(),
                        d.limits.tokens_per_minute.map(|n| n as i32).into(),
                        d.key.hint().into(),
                        caller_name.as_str().into(),
                        d.spec.provider.as_str().into(),
                        d.workspace.clone().into(),
                    ];
                    if tiers {
                        values.push(d.cache.into());
                        values.push(d.batch_chat.into());
                    }
                    values
                };
                let replaced = match owner {
                    Some(_) if !replace => return Err(AiError::DuplicateModel { name: d.name.clone() }),
                    Some(owner) if !may_manage(caller, &owner) => {
                        return Err(not_owner(&d.name, &owner, "replace"))
                    }
                    Some(_) => {
                        client.update(&update_model, None, &values()).map_err(spi_failed)?;
                        true
                    }
                    None => {
                        let inserted = client.update(&insert_model, None, &values()).map_err(spi_failed)?;
                        if inserted.is_empty() {
                            continue;
                        }
                        false
                    }
                };
                client
                    .update(UPSERT_KEY, None, &[d.name.as_str().into(), stored_key.as_str().into()])
                    .map_err(spi_failed)?;
                return Ok(replaced);
            }
            Err(AiError::Internal {
                message: format!("model \"{}\" changed hands twice while deploying", d.name),
            })
        })
    });
    invalidate();
    replaced
}

/// Replaces the prompt of task function `function` for the model `name` (None: back to the
/// default). Only the role that deployed the model, its members or a superuser.
/// `fits` checks the model (its registry entry) once the caller is known to manage it; the
/// key is never touched.
pub fn set_prompt(
    name: &str,
    function: &str,
    prompt: Option<&str>,
    fits: impl FnOnce(&'static bailian_core::registry::ModelSpec) -> Result<(), AiError>,
) -> Result<(), AiError> {
    crate::citus::refuse_on_worker("ai_set_prompt")?;
    let (caller, caller_name) = current_user();
    let done = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            let row = client
                .update(
                    "SELECT deployed_by::pg_catalog.text, model_type, provider FROM bailian.models
                      WHERE model_name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
                    Some(1),
                    &[name.into()],
                )
                .map_err(spi_failed)?
                .next()
                .map(|r| {
                    Ok::<_, AiError>((
                        r.get::<String>(1).map_err(spi_failed)?.unwrap_or_default(),
                        r.get::<String>(2).map_err(spi_failed)?.unwrap_or_default(),
                        r.get::<String>(3).map_err(spi_failed)?.unwrap_or_default(),
                    ))
                })
                .transpose()?;
            let Some((owner, model_type, provider)) = row else {
                return Err(AiError::ModelNotDeployed {
                    name: name.to_string(),
                    hint: Some("SELECT model_name FROM ai_models lists the deployed models.".into()),
                });
            };
            if !may_manage(caller, &owner) {
                return Err(not_owner(name, &owner, "change the prompts of"));
            }
            let spec = bailian_core::registry::Provider::parse(&provider)
                .and_then(|p| bailian_core::registry::find_at(p, &model_type))
                .ok_or_else(|| {
                    AiError::invalid(format!(
                        "deployed model \"{name}\" is no longer valid ({model_type}); redeploy it"
                    ))
                })?;
            fits(spec)?;
            match prompt {
                Some(prompt) => client.update(
                    "INSERT INTO bailian.prompts (model_name, function_name, prompt, set_by, set_at)
                     VALUES ($1, $2, $3, $4, pg_catalog.now())
                     ON CONFLICT (model_name, function_name) DO UPDATE
                        SET prompt = EXCLUDED.prompt, set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at",
                    None,
                    &[name.into(), function.into(), prompt.into(), caller_name.as_str().into()],
                ),
                None => client.update(
                    "DELETE FROM bailian.prompts WHERE model_name OPERATOR(pg_catalog.=) $1
                        AND function_name OPERATOR(pg_catalog.=) $2",
                    None,
                    &[name.into(), function.into()],
                ),
            }
            .map_err(spi_failed)?;
            Ok::<_, AiError>(())
        })
    });
    invalidate();
    done
}

/// Forgets the cached answers of the model named `name`: only its deployer (or a member of
/// it) or a superuser, as for undeploying. Returns how many entries went.
pub fn clear_cache(name: &str) -> Result<i64, AiError> {
    let (caller, _) = current_user();
    as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            let Some(owner) = owner_of(client, name)? else {
                return Err(AiError::ModelNotDeployed {
                    name: name.to_string(),
                    hint: Some(
                        "SELECT model_name FROM ai_cache lists the models with cached answers.".into(),
                    ),
                });
            };
            if !may_manage(caller, &owner) {
                return Err(not_owner(name, &owner, "clear the cached answers of"));
            }
            let gone = forget_here(client, name)?;
            crate::citus::forget_answers_on_workers(name);
            Ok(gone)
        })
    })
}

/// This node's cached answers of `name` (table and inbox), forgotten; how many.
fn forget_here(client: &mut pgrx::spi::SpiClient<'_>, name: &str) -> Result<i64, AiError> {
    let mut gone = 0;
    if cache_table_exists(client)? {
        gone = client
            .update(
                "DELETE FROM bailian.answer_cache WHERE model_name OPERATOR(pg_catalog.=) $1",
                None,
                &[name.into()],
            )
            .map_err(spi_failed)?
            .len() as i64;
    }
    Ok(gone + crate::answers::cache::clear_inbox(name))
}

/// bailian.forget_answers(model_name): this node's cached answers of the model, forgotten (a
/// Citus coordinator asks its workers, as the catalog owner, when the model is undeployed or
/// its cache cleared); how many.
pub fn forget_answers(name: &str) -> Result<i64, AiError> {
    as_catalog_owner(|| Spi::connect_mut(|client| forget_here(client, name)))
}

/// Whether this catalog has the answer cache (0.6 on; the library may run against an older one).
fn cache_table_exists(client: &pgrx::spi::SpiClient<'_>) -> Result<bool, AiError> {
    Ok(client
        .select("SELECT pg_catalog.to_regclass('bailian.answer_cache') IS NOT NULL", Some(1), &[])
        .map_err(spi_failed)?
        .first()
        .get_one::<bool>()
        .map_err(spi_failed)?
        .unwrap_or(false))
}

/// Removes the model named `name`; false when there was none.
pub fn undeploy(name: &str) -> Result<bool, AiError> {
    crate::citus::refuse_on_worker("ai_undeploy_model")?;
    let (caller, _) = current_user();
    let removed = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            let owner = owner_of(client, name)?;
            let Some(owner) = owner else { return Ok(false) };
            if !may_manage(caller, &owner) {
                return Err(not_owner(name, &owner, "undeploy"));
            }
            // What belongs to the model goes with it. The foreign keys would cascade, but
            // ai_citus_enable() drops them: Citus allows none from the local answer cache to a
            // reference table, and those among reference tables clash with the workers' copies.
            let mut tables = vec!["model_keys", "prompts", "default_models", "budgets"];
            if cache_table_exists(client)? {
                tables.push("answer_cache");
            }
            for table in tables.into_iter().chain(["models"]) {
                client
                    .update(
                        &format!("DELETE FROM bailian.{table} WHERE model_name OPERATOR(pg_catalog.=) $1"),
                        None,
                        &[name.into()],
                    )
                    .map_err(spi_failed)?;
            }
            // Its cached answers go with it, on every node: a model deployed later under this
            // name, perhaps by another role, must not be given them.
            crate::answers::cache::clear_inbox(name);
            crate::citus::forget_answers_on_workers(name);
            Ok::<_, AiError>(true)
        })
    });
    invalidate();
    removed
}
