//! Operating pg_bailian: the rows of `ai_usage`, `ai_budgets`, `ai_activity` and
//! `ai_rate_limits`, `ai_usage_reset`, `ai_set_budget` / `ai_drop_budget`, and
//! `ai_estimate`. What they read is the shared state (`crate::shared`); the views in
//! `sql/operating.sql` join it with the catalogs.

use super::{arg, name_arg};
use crate::catalog::{self, as_catalog_owner, spi_failed};
use crate::entry::sql_entry;
use crate::shared::accounting::{self, yuan_text};
use crate::shared::{region, scope};
use crate::srf::materialize;
use bailian_core::{limits, AiError};
use pgrx::datum::IntoDatum;
use pgrx::pg_sys;
use pgrx::prelude::*;

sql_entry!(pg_finfo_pg_bailian_usage_rows, pg_bailian_usage_rows, usage_rows);
sql_entry!(pg_finfo_pg_bailian_state_scope, pg_bailian_state_scope, state_scope);
sql_entry!(pg_finfo_pg_bailian_usage_reset, pg_bailian_usage_reset, usage_reset);
sql_entry!(pg_finfo_pg_bailian_budget_spent, pg_bailian_budget_spent, budget_spent);
sql_entry!(pg_finfo_pg_bailian_set_budget, pg_bailian_set_budget, set_budget);
sql_entry!(pg_finfo_pg_bailian_drop_budget, pg_bailian_drop_budget, drop_budget);
sql_entry!(pg_finfo_pg_bailian_activity_rows, pg_bailian_activity_rows, activity_rows);
sql_entry!(pg_finfo_pg_bailian_rate_limit_rows, pg_bailian_rate_limit_rows, rate_limit_rows);
sql_entry!(pg_finfo_pg_bailian_estimate, pg_bailian_estimate, estimate);

/// Milliseconds, to the microsecond.
fn ms(d: Option<std::time::Duration>) -> Option<pg_sys::Datum> {
    d.map(|d| d.as_micros() as f64 / 1e3).into_datum()
}

/// A `numeric` datum from its decimal text.
fn numeric(text: Option<String>) -> Option<pg_sys::Datum> {
    text.and_then(|t| pgrx::AnyNumeric::try_from(t.as_str()).ok()).into_datum()
}

fn i(v: u64) -> Option<pg_sys::Datum> {
    (v.min(i64::MAX as u64) as i64).into_datum()
}

/// Whether the current role may see every role's counters (as pg_stat_statements: members
/// of pg_read_all_stats).
fn sees_all() -> bool {
    // SAFETY: has_privs_of_role reads the role catalogs.
    unsafe {
        pg_sys::has_privs_of_role(pg_sys::GetUserId(), pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS))
    }
}

/// bailian.scope(): 'cluster' or 'backend'.
fn state_scope(_fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    Ok(scope().into_datum())
}

/// bailian.usage_rows(): the rows of the usage table the current role may see: its own,
/// or all for members of pg_read_all_stats (the overflow row only to them).
fn usage_rows(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let all = sees_all();
    // SAFETY: plain read.
    let me = unsafe { pg_sys::GetUserId() }.to_u32();
    let rows = region().usage.rows().into_iter().filter(|r| all || (!r.is_overflow() && r.key.role == me));
    let scope = scope();
    materialize(
        fcinfo,
        rows.into_iter().map(|r| {
            let overflow = r.is_overflow();
            let text = |s: &str| (!overflow).then(|| s.to_string()).into_datum();
            vec![
                scope.into_datum(),
                (!overflow).then_some(i64::from(r.key.database)).into_datum(),
                (!overflow).then_some(i64::from(r.key.role)).into_datum(),
                text(r.key.model_name.as_str()),
                text(r.key.model_type.as_str()),
                if overflow { "(other)".into_datum() } else { r.key.function.as_str().into_datum() },
                i(r.calls),
                i(r.requests),
                i(r.inputs),
                i(r.failures),
                i(r.retries),
                i(r.throttled),
                i(r.prompt_tokens),
                i(r.completion_tokens),
                i(r.cached_tokens),
                i(r.reasoning_tokens),
                r.cost_nano_yuan().map(yuan_text).into_datum(),
                ms(r.latency_percentile(0.5)),
                ms(r.latency_percentile(0.95)),
                ms((r.requests > 0).then(|| std::time::Duration::from_micros(r.latency_max_us))),
                (r.first_used_us != 0).then_some(r.first_used_us).into_datum(),
                (r.last_used_us != 0).then_some(r.last_used_us).into_datum(),
                i(r.shared_calls),
                i(r.cache_hits),
                yuan_text(r.saved_nano_yuan).into_datum(),
            ]
        }),
    )?;
    Ok(None)
}

/// ai_usage_reset(): forgets this database's rows; a superuser's call also the overflow row
/// and the rows of databases dropped since. Returns how many. On a Citus coordinator, whose
/// ai_usage shows every worker's rows too, each worker's as well.
fn usage_reset(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    // SAFETY: plain reads of the session's database and role.
    let (db, superuser) = unsafe { (pg_sys::MyDatabaseId.to_u32(), pg_sys::superuser()) };
    let existing: Vec<u32> = if superuser {
        Spi::connect(|client| {
            let rows =
                client.select("SELECT oid FROM pg_catalog.pg_database", None, &[]).map_err(spi_failed)?;
            rows.into_iter()
                .map(|r| r.get::<pg_sys::Oid>(1).map_err(spi_failed).map(|o| o.map_or(0, |o| o.to_u32())))
                .collect::<Result<Vec<u32>, AiError>>()
        })?
    } else {
        Vec::new()
    };
    // The workers first: an error there leaves this node's rows too.
    let on_workers = if crate::citus::node() == crate::citus::Node::Coordinator {
        crate::citus::reset_usage_on_workers(&crate::functions::column::own_schema(fcinfo)?)?
    } else {
        0
    };
    let n = region().usage.reset(|r| {
        if r.is_overflow() {
            return superuser;
        }
        r.key.database == db || (superuser && !existing.contains(&r.key.database))
    });
    Ok(i(n + on_workers))
}

/// bailian.budget_spent(): what each budget of this database spent in the period it is
/// counting now (id, period start, yuan, tokens).
fn budget_spent(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    // SAFETY: plain read.
    let db = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let rows = region().budgets.rows();
    let scope = scope();
    materialize(
        fcinfo,
        rows.into_iter().filter(|r| r.key.database == db).map(|r| {
            vec![
                r.key.budget_id.into_datum(),
                r.key.period_start.into_datum(),
                yuan_text(r.spent_nano_yuan).into_datum(),
                i(r.spent_tokens),
                scope.into_datum(),
            ]
        }),
    )?;
    Ok(None)
}

const UNITS: [&str; 2] = ["yuan", "tokens"];
const PERIODS: [&str; 2] = ["day", "month"];

/// The checks ai_set_budget and ai_drop_budget share: who may touch a budget of `role` on
/// `model`. Returns the role's oid (None: every role).
fn may_budget(
    function: &str,
    role: Option<&str>,
    model: Option<&str>,
) -> Result<Option<pg_sys::Oid>, AiError> {
    let (caller, caller_name) = catalog::current_user();
    let role_oid = match role {
        None => None,
        Some(r) => Some(catalog::role_oid(r).ok_or_else(|| AiError::InvalidArgument {
            message: format!("{function}: role \"{}\" does not exist", limits::shown(r)),
            hint: Some("Pass NULL for a budget of every role.".into()),
        })?),
    };
    let owner = match model {
        Some(m) => Some(catalog::deployer(m)?),
        None => None,
    };
    // SAFETY: superuser() reads the current role's entry.
    if unsafe { pg_sys::superuser() } {
        return Ok(role_oid);
    }
    let Some(model) = model else {
        return Err(AiError::NotAllowed {
            message: format!("{function}: only a superuser may set or drop a budget on every model"),
            hint: "Name the model: its deployer may set budgets on it.".into(),
        });
    };
    let owner = owner.unwrap_or_default();
    if owner != caller_name {
        return Err(AiError::NotAllowed {
            message: format!(
                "{function}: only a superuser or the deployer of model \"{}\" (role \"{owner}\") may set or drop its budgets",
                limits::shown(model)
            ),
            hint: "Ask the model's deployer or a superuser.".into(),
        });
    }
    // A budget of every role covers the deployer too. SAFETY: has_privs_of_role reads the
    // role catalogs.
    if role_oid.is_none_or(|r| unsafe { pg_sys::has_privs_of_role(caller, r) }) {
        return Err(AiError::NotAllowed {
            message: format!(
                "{function}: role \"{caller_name}\" may not change a budget that covers itself (role {})",
                role.map_or("NULL: every role".to_string(), |r| format!("\"{}\"", limits::shown(r)))
            ),
            hint: "A budget is lifted by a superuser, or by a deployer for other roles.".into(),
        });
    }
    Ok(role_oid)
}

const UPSERT_BUDGET: &str = "
INSERT INTO bailian.budgets (role, model_name, \"limit\", unit, period, time_zone, set_by, set_at)
VALUES ($1::pg_catalog.oid::pg_catalog.regrole, $2, $3::pg_catalog.numeric, $4, $5,
        pg_catalog.current_setting('TimeZone'), $6, pg_catalog.now())
ON CONFLICT (role, model_name) DO UPDATE SET \"limit\" = EXCLUDED.\"limit\", unit = EXCLUDED.unit,
    period = EXCLUDED.period, time_zone = EXCLUDED.time_zone, set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at
RETURNING id, period, time_zone";

/// When the budget's current period began (unix seconds). Apart from the upsert: on a Citus
/// cluster bailian.budgets is a reference table, whose RETURNING takes immutable functions only.
const PERIOD_START: &str = "
SELECT pg_catalog.date_part('epoch', pg_catalog.date_trunc($1, pg_catalog.now(), $2))::pg_catalog.int8";

const PRICED: &str = "
SELECT p.input_price IS NOT NULL FROM bailian.models m
  LEFT JOIN bailian.effective_prices p ON p.model_type OPERATOR(pg_catalog.=) m.model_type
 WHERE m.model_name OPERATOR(pg_catalog.=) $1";

/// ai_set_budget(role, model_name, limit, unit, period): sets (or replaces) the budget of
/// `role` (NULL: every role) on `model_name` (NULL: every model). Returns its id.
fn set_budget(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    const F: &str = "ai_set_budget";
    crate::citus::refuse_on_worker(F)?;
    let role = name_arg(fcinfo, 0);
    let model = arg::<String>(fcinfo, 1);
    let limit = arg::<pgrx::AnyNumeric>(fcinfo, 2);
    let unit = arg::<String>(fcinfo, 3).unwrap_or_default();
    let period = arg::<String>(fcinfo, 4).unwrap_or_default();
    let unit = unit.trim().to_ascii_lowercase();
    let period = period.trim().to_ascii_lowercase();
    if !UNITS.contains(&unit.as_str()) {
        return Err(AiError::invalid(format!(
            "{F}: unknown unit \"{}\"; allowed: yuan, tokens",
            limits::shown(&unit)
        )));
    }
    if !PERIODS.contains(&period.as_str()) {
        return Err(AiError::invalid(format!(
            "{F}: unknown period \"{}\"; allowed: day, month",
            limits::shown(&period)
        )));
    }
    let Some(limit) = limit else {
        return Err(AiError::NullArgument {
            message: format!("{F}: limit must not be NULL (ai_drop_budget removes a budget)"),
        });
    };
    let limit_f: f64 = limit.to_string().parse().unwrap_or(f64::NAN);
    if !(limit_f > 0.0 && limit_f < 1e12) {
        return Err(AiError::invalid(format!(
            "{F}: limit must be a positive number (below 1e12), got {limit}"
        )));
    }
    if unit == "tokens" && limit_f.fract() != 0.0 {
        return Err(AiError::invalid(format!("{F}: a limit in tokens must be a whole number, got {limit}")));
    }
    let role_oid = may_budget(F, role.as_deref(), model.as_deref())?;
    let set_by = catalog::current_user().1;
    let (id, period_start) = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            if let (Some(m), "yuan") = (&model, unit.as_str()) {
                let priced = client.select(PRICED, Some(1), &[m.as_str().into()]).map_err(spi_failed)?;
                let priced = priced.first().get::<bool>(1).map_err(spi_failed)?.unwrap_or(false);
                if !priced {
                    return Err(AiError::invalid_with_hint(
                        format!("{F}: model \"{}\" has no price in ai_prices, so its spending in yuan cannot be counted", limits::shown(m)),
                        "Set its price (INSERT INTO ai_prices ...) or give the budget in tokens.",
                    ));
                }
            }
            let row = client
                .update(
                    UPSERT_BUDGET,
                    Some(1),
                    &[
                        role_oid.into(),
                        model.as_deref().into(),
                        limit.to_string().as_str().into(),
                        unit.as_str().into(),
                        period.as_str().into(),
                        set_by.as_str().into(),
                    ],
                )
                .map_err(spi_failed)?;
            let row = row.first();
            let id = row.get::<i64>(1).map_err(spi_failed)?.unwrap_or(0);
            let (period, time_zone) = (
                row.get::<String>(2).map_err(spi_failed)?.unwrap_or_default(),
                row.get::<String>(3).map_err(spi_failed)?.unwrap_or_default(),
            );
            let start = client
                .select(PERIOD_START, Some(1), &[period.as_str().into(), time_zone.as_str().into()])
                .map_err(spi_failed)?
                .first()
                .get::<i64>(1)
                .map_err(spi_failed)?
                .unwrap_or(0);
            Ok::<_, AiError>((id, start))
        })
    })?;
    // SAFETY: plain read.
    let db = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let key = bailian_core::shared::BudgetKey::new(db, id, period_start);
    let claimed = region().budgets.claim(&key) || {
        forget_lost_budgets(db)?;
        region().budgets.claim(&key)
    };
    if !claimed {
        return Err(AiError::CapacityExceeded {
            message: format!(
                "{F}: the cluster has {} budgets already, its limit (pg_bailian.max_budgets)",
                region().capacities().budgets
            ),
            hint: "Drop budgets with ai_drop_budget, or raise pg_bailian.max_budgets (needs a restart)."
                .into(),
        });
    }
    region().bump_budget_generation();
    Ok(id.into_datum())
}

/// Frees the shared rows of budgets that are gone, before `ai_set_budget` calls the table
/// full: a budget's row is claimed when it is set, and nothing gives it back when the
/// transaction that set it rolls back, when the budget goes with its model (the catalog's
/// ON DELETE CASCADE) or with its database. So: rows of this database whose budget its
/// catalog no longer has, and rows of databases that no longer exist. (Lost budgets of
/// another database are out of sight from here: its own ai_set_budget frees them when it
/// finds the table full.)
fn forget_lost_budgets(db: u32) -> Result<(), AiError> {
    let (ids, databases) = as_catalog_owner(|| {
        Spi::connect(|client| {
            let ids = client.select("SELECT id FROM bailian.budgets", None, &[]).map_err(spi_failed)?;
            let ids = ids.map(|r| r.get::<i64>(1)).collect::<Result<Vec<_>, _>>().map_err(spi_failed)?;
            let dbs = client
                .select("SELECT oid::pg_catalog.int8 FROM pg_catalog.pg_database", None, &[])
                .map_err(spi_failed)?;
            let dbs = dbs.map(|r| r.get::<i64>(1)).collect::<Result<Vec<_>, _>>().map_err(spi_failed)?;
            Ok::<_, AiError>((ids, dbs))
        })
    })?;
    region().budgets.retain(|k| {
        if k.database == db {
            ids.contains(&Some(k.budget_id))
        } else {
            databases.contains(&Some(i64::from(k.database)))
        }
    });
    Ok(())
}

const DELETE_BUDGET: &str = "
DELETE FROM bailian.budgets
 WHERE (role OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regrole OR (role IS NULL AND $1 IS NULL))
   AND (model_name OPERATOR(pg_catalog.=) $2 OR (model_name IS NULL AND $2 IS NULL))
RETURNING id";

/// ai_drop_budget(role, model_name): removes that budget; false if there was none.
fn drop_budget(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    const F: &str = "ai_drop_budget";
    crate::citus::refuse_on_worker(F)?;
    let role = name_arg(fcinfo, 0);
    let model = arg::<String>(fcinfo, 1);
    let role_oid = may_budget(F, role.as_deref(), model.as_deref())?;
    let dropped = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            let rows = client
                .update(DELETE_BUDGET, Some(1), &[role_oid.into(), model.as_deref().into()])
                .map_err(spi_failed)?;
            match rows.into_iter().next() {
                Some(row) => row.get::<i64>(1).map_err(spi_failed),
                None => Ok(None),
            }
        })
    })?;
    // Its place in the shared state is given back when the transaction commits: a DROP that
    // rolls back keeps the budget and what it spent. (Freeing it holds a spin lock a few
    // instructions and cannot fail, as a post-commit callback must.)
    if let Some(id) = dropped {
        // SAFETY: plain read.
        let db = unsafe { pg_sys::MyDatabaseId.to_u32() };
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
            region().budgets.retain(|k| k.database != db || k.budget_id != id);
            region().bump_budget_generation();
        });
        region().bump_budget_generation();
    }
    Ok(dropped.is_some().into_datum())
}

/// bailian.activity_rows(): every backend's slot.
fn activity_rows(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let rows = region().activity.rows();
    let scope = scope();
    materialize(
        fcinfo,
        rows.into_iter().map(|r| {
            vec![
                scope.into_datum(),
                i64::from(r.pid).into_datum(),
                i64::from(r.database).into_datum(),
                i64::from(r.role).into_datum(),
                r.statement_start.into_datum(),
                Some(r.model_name).filter(|s| !s.is_empty()).into_datum(),
                Some(r.job).filter(|s| !s.is_empty()).into_datum(),
                i(r.requests),
                r.in_flight.into_datum(),
                i(r.retries),
                i(r.throttled),
                i(r.tokens),
                r.cost_nano_yuan.map(yuan_text).into_datum(),
                r.rows_done.into_datum(),
                r.rows_total.into_datum(),
                (r.job_started_us != 0).then_some(r.job_started_us).into_datum(),
                r.waiting.into_datum(),
            ]
        }),
    )?;
    Ok(None)
}

/// bailian.rate_limit_rows(): each deployed model's effective limits and its bucket.
fn rate_limit_rows(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let documented = crate::guc::documented_limits();
    let buckets = region().buckets.view();
    let scope = scope();
    let mut out = Vec::new();
    for name in catalog::model_names()? {
        let Ok(d) = catalog::load(&name) else { continue };
        let limits = d.effective_limits(documented);
        let mut source = limits.describe();
        // On a Citus cluster, this node's pace: its share of the limit (`crate::citus`).
        let share = crate::citus::rate_share();
        if share < 1.0 && (limits.requests_per_minute.is_some() || limits.tokens_per_minute.is_some()) {
            source = format!("{source}; this Citus node's share: {:.0} %", share * 100.0);
        }
        let (rpm, tpm) = (
            crate::citus::shared_limit(limits.requests_per_minute, share),
            crate::citus::shared_limit(limits.tokens_per_minute, share),
        );
        let bucket = d.key.resolve_with(&d.name, crate::guc::policy).ok().and_then(|key| {
            let k =
                bailian_core::shared::BucketKey::new(key.expose().as_bytes(), d.spec.model_type, &d.host());
            buckets.iter().find(|b| b.key == k.0).copied()
        });
        out.push(vec![
            scope.into_datum(),
            name.into_datum(),
            d.spec.model_type.into_datum(),
            rpm.map(i64::from).into_datum(),
            tpm.map(i64::from).into_datum(),
            source.into_datum(),
            bucket.map(|b| b.requests as i64).into_datum(),
            bucket.map(|b| b.throttled as i64).into_datum(),
            bucket.map(|b| i64::from(b.waiting)).into_datum(),
            bucket.map(|b| b.paused_for.as_secs_f64() * 1e3).into_datum(),
        ]);
    }
    materialize(fcinfo, out)?;
    Ok(None)
}

/// ai_estimate(statement): runs one statement with every AI call counted and not sent,
/// inside a subtransaction that is rolled back, and returns per model what it would send.
fn estimate(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(statement) = arg::<String>(fcinfo, 0) else {
        return Err(AiError::NullArgument { message: "ai_estimate: statement must not be NULL".into() });
    };
    check_one_statement(&statement)?;
    let (ran, dry) = accounting::dry_run(|| run_rolled_back(&statement));
    ran?;
    let rows = dry.models.into_iter().map(|m| {
        let cost = |output: Option<u64>| -> Option<String> {
            let p = m.price?;
            let out = output?;
            let u = bailian_core::meter::Usage {
                prompt_tokens: m.input_tokens,
                completion_tokens: out,
                ..Default::default()
            };
            Some(yuan_text(p.cost_nano_yuan(&u)))
        };
        let min_out = if m.output_tokens_max == Some(0) { 0 } else { m.requests };
        vec![
            m.model_name.clone().into_datum(),
            m.model_type.clone().into_datum(),
            i(m.requests),
            i(m.inputs),
            i(m.input_tokens),
            m.input_tokens_exact.into_datum(),
            i(min_out),
            m.output_tokens_max.map(|t| t as i64).into_datum(),
            numeric(cost(Some(min_out))),
            numeric(cost(m.output_tokens_max)),
        ]
    });
    materialize(fcinfo, rows.collect::<Vec<_>>())?;
    Ok(None)
}

/// Exactly one SQL statement, and one that can run in a subtransaction.
fn check_one_statement(sql: &str) -> Result<(), AiError> {
    let c = std::ffi::CString::new(sql)
        .map_err(|_| AiError::invalid("ai_estimate: the statement contains a NUL byte"))?;
    // SAFETY: raw_parser parses in the current memory context and raises a syntax error as
    // a PostgreSQL ERROR (reported with the caller's statement, nothing to clean up).
    let (count, tag) = unsafe {
        let list = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        let n = if list.is_null() { 0 } else { (*list).length };
        let tag = if n == 1 {
            let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
            (*(*raw).stmt).type_
        } else {
            pg_sys::NodeTag::T_Invalid
        };
        (n, tag)
    };
    if count != 1 {
        return Err(AiError::invalid_with_hint(
            format!("ai_estimate takes exactly one statement, got {count}"),
            "Estimate each statement on its own.",
        ));
    }
    use pg_sys::NodeTag::*;
    if !matches!(tag, T_SelectStmt | T_InsertStmt | T_UpdateStmt | T_DeleteStmt | T_MergeStmt) {
        return Err(AiError::invalid_with_hint(
            "ai_estimate takes a SELECT, INSERT, UPDATE, DELETE or MERGE",
            "A CALL of ai_update commits as it goes and cannot run dry: estimate SELECT <expression> FROM <table> WHERE <filter> instead.",
        ));
    }
    Ok(())
}

/// Runs `sql` in a subtransaction and rolls it back, whatever happens.
fn run_rolled_back(sql: &str) -> Result<(), AiError> {
    // SAFETY: the subtransaction is begun and, on every path (PgTryBuilder's finally runs on
    // success and on a PostgreSQL error, which is then re-raised), rolled back, restoring the
    // memory context and resource owner saved here, as PL/pgSQL's exception blocks do.
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pgrx::PgTryBuilder::new(|| Spi::run(sql).map_err(spi_failed))
            .finally(|| {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(old_context);
                pg_sys::CurrentResourceOwner = old_owner;
            })
            .execute()
    }
}
