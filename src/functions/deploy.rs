//! ai_deploy_model and ai_undeploy_model, and Hologres' names for them:
//! register_external_model (the same deployment, its arguments in a config JSON) and
//! delete_external_model.

use super::arg;
use crate::catalog;
use crate::entry::sql_entry;
use crate::log_filter;
use bailian_core::deploy::{DeployArgs, Deployment};
use bailian_core::hologres;
use bailian_core::secret::KeySource;
use bailian_core::AiError;
use pgrx::{pg_sys, IntoDatum, JsonB};

sql_entry!(pg_finfo_pg_bailian_deploy_model, pg_bailian_deploy_model, deploy_model);
sql_entry!(pg_finfo_pg_bailian_undeploy_model, pg_bailian_undeploy_model, undeploy_model);
sql_entry!(
    pg_finfo_pg_bailian_register_external_model,
    pg_bailian_register_external_model,
    register_external_model
);
sql_entry!(
    pg_finfo_pg_bailian_delete_external_model,
    pg_bailian_delete_external_model,
    delete_external_model
);

fn deploy_model(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    // Every message of this call (its notices, and whatever error ends it, PostgreSQL's own
    // included) reaches the log without the statement that quotes the key (see log_filter).
    let secret = log_filter::SecretStatement::begin();
    deploy(fcinfo)?;
    secret.succeeded();
    Ok(Some(pgrx::fcinfo::pg_return_void()))
}

fn deploy(fcinfo: pg_sys::FunctionCallInfo) -> Result<(), AiError> {
    let args = DeployArgs {
        model_name: arg::<String>(fcinfo, 0),
        model_type: arg::<String>(fcinfo, 1),
        api_key: arg::<String>(fcinfo, 2),
        params: arg::<JsonB>(fcinfo, 3).map(|j| j.0),
        max_retries: arg::<i32>(fcinfo, 4),
        initial_retry_delay: arg::<f64>(fcinfo, 5),
        max_retry_delay: arg::<f64>(fcinfo, 6),
        timeout: arg::<f64>(fcinfo, 7),
        region: arg::<String>(fcinfo, 8),
        base_url: arg::<String>(fcinfo, 9),
        requests_per_minute: arg::<i32>(fcinfo, 11),
        tokens_per_minute: arg::<i32>(fcinfo, 12),
        provider: Some(
            arg::<String>(fcinfo, 13).ok_or_else(|| AiError::invalid("provider must not be NULL"))?,
        ),
        workspace: arg::<String>(fcinfo, 14),
        // SAFETY: fcinfo is the live call info. The library is updated before the SQL
        // (ALTER EXTENSION ... UPDATE): a 0.5 ai_deploy_model has no cache argument.
        cache: if unsafe { (*fcinfo).nargs } > 15 {
            Some(arg::<bool>(fcinfo, 15).ok_or_else(|| AiError::invalid("cache must not be NULL"))?)
        } else {
            None
        },
        // SAFETY: as above.
        batch_chat: if unsafe { (*fcinfo).nargs } > 16 {
            Some(arg::<bool>(fcinfo, 16).ok_or_else(|| AiError::invalid("batch_chat must not be NULL"))?)
        } else {
            None
        },
    };
    let replace = arg::<bool>(fcinfo, 10).ok_or_else(|| AiError::invalid("replace must not be NULL"))?;
    install(Deployment::from_args(args)?, replace)
}

/// Stores a checked deployment as the caller: the settings' policy, ownership, sealing the
/// key (ai_deploy_model and register_external_model alike).
fn install(deployment: Deployment, replace: bool) -> Result<(), AiError> {
    // SAFETY: superuser() only reads the current user's role entry.
    let superuser = unsafe { pg_sys::superuser() };
    deployment.check_policy(&crate::guc::policy(), superuser)?;
    let replaced = catalog::deploy(&deployment, replace)?;
    if let KeySource::Env(var) = &deployment.key {
        if std::env::var_os(var).is_none() {
            pgrx::warning!(
                "environment variable {var} is not set in this PostgreSQL server; calls to model \"{}\" \
                 will fail until it is set and the server restarted",
                deployment.name
            );
        }
    }
    let verb = if replaced { "redeployed" } else { "deployed" };
    let at = match &deployment.workspace {
        Some(ws) => format!("{} (OpenSearch workspace {ws})", deployment.endpoint()),
        None => deployment.endpoint().to_string(),
    };
    pgrx::notice!(
        "{verb} model \"{}\" ({}, {} task) at {at}",
        deployment.name,
        deployment.spec.model_type,
        deployment.spec.task
    );
    Ok(())
}

fn undeploy_model(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(name) = arg::<String>(fcinfo, 0) else {
        return Err(AiError::invalid("model_name must not be NULL"));
    };
    Ok(catalog::undeploy(&name)?.into_datum())
}

fn register_external_model(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    // The config quotes the key: the same protection of the log as ai_deploy_model's.
    let secret = log_filter::SecretStatement::begin();
    register(fcinfo)?;
    secret.succeeded();
    Ok(Some(pgrx::fcinfo::pg_return_void()))
}

/// register_external_model(model_name, model_type, model_provider, config, task).
fn register(fcinfo: pg_sys::FunctionCallInfo) -> Result<(), AiError> {
    let provider = arg::<String>(fcinfo, 2).ok_or_else(|| {
        AiError::invalid("model_provider must not be NULL; allowed: 'bailian', 'opensearch'")
    })?;
    let task = arg::<String>(fcinfo, 4).ok_or_else(|| {
        AiError::invalid(
            "task must not be NULL; allowed: 'chat/completions', 'embedding', 'translation', 'rerank'",
        )
    })?;
    let task = hologres::parse_task(&task)?;
    let config = arg::<pgrx::Json>(fcinfo, 3).map(|j| j.0);
    let args = hologres::deploy_args(
        arg::<String>(fcinfo, 0),
        arg::<String>(fcinfo, 1),
        &provider,
        config.as_ref(),
    )?;
    let deployment = Deployment::from_args(args)?;
    hologres::check_task(task, deployment.spec.model_type, deployment.spec.task)?;
    install(deployment, false)
}

/// delete_external_model(model_name): as Hologres, a name no model has is an error.
fn delete_external_model(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(name) = arg::<String>(fcinfo, 0) else {
        return Err(AiError::NullArgument { message: "model_name must not be NULL".into() });
    };
    if !catalog::undeploy(&name)? {
        return Err(AiError::ModelNotDeployed {
            name,
            hint: Some("SELECT model_name FROM list_external_models() lists the deployed models.".into()),
        });
    }
    Ok(Some(pgrx::fcinfo::pg_return_void()))
}
