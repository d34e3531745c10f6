//! The SQL functions of pg_bailian on a Citus cluster that are not column jobs (`sql/citus.sql`;
//! what runs where: `crate::citus`).

use super::arg;
use crate::entry::sql_entry;
use bailian_core::AiError;
use pgrx::datum::IntoDatum;
use pgrx::pg_sys;

sql_entry!(pg_finfo_pg_bailian_master_key_id, pg_bailian_master_key_id, master_key_id);
sql_entry!(pg_finfo_pg_bailian_refuse_on_worker, pg_bailian_refuse_on_worker, refuse_on_worker);
sql_entry!(pg_finfo_pg_bailian_forget_answers, pg_bailian_forget_answers, forget_answers);

/// bailian.master_key_id(): the id of this server's master key, NULL when its file does not
/// exist yet (never created here: a node must get the coordinator's, not one of its own).
fn master_key_id(_fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    Ok(crate::catalog::master_key_id()?.into_datum())
}

/// bailian.refuse_on_worker(what): the error a catalog change gets on a Citus worker.
fn refuse_on_worker(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let what = arg::<String>(fcinfo, 0).unwrap_or_else(|| "this".into());
    crate::citus::refuse_on_worker(&what)?;
    Ok(None)
}

/// bailian.forget_answers(model_name): see `catalog::forget_answers`.
fn forget_answers(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let name = arg::<String>(fcinfo, 0).ok_or_else(|| AiError::invalid("model_name must not be NULL"))?;
    Ok(crate::catalog::forget_answers(&name)?.into_datum())
}

sql_entry!(pg_finfo_pg_bailian_release_rate_share, pg_bailian_release_rate_share, release_rate_share);

/// ai_update_release_share(job_id, rate_share): another node of a column job finished its
/// part; the nodes still running it here may use its share of the rate too.
fn release_rate_share(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(job), Some(share)) = (arg::<i64>(fcinfo, 0), arg::<f64>(fcinfo, 1)) else {
        return Err(AiError::NullArgument { message: "job_id and rate_share must not be NULL".into() });
    };
    if job == 0 || !(share > 0.0 && share <= 1.0) {
        return Err(AiError::invalid(format!(
            "ai_update_release_share: job_id must not be 0 and rate_share must be in (0, 1], not {share}"
        )));
    }
    Ok(crate::citus::release_share(job as u64, share).into_datum())
}
