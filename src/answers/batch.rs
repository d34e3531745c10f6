//! A job in batch mode (`functions::column::batch_file`): its AI calls are not sent. They are
//! either collected, as the lines of Bailian Batch File requests (each distinct request once,
//! its answer key as its `custom_id`), or answered from what the job's batches answered
//! (`bailian.batch_answers`, by the same key). The job's expression runs twice over its rows,
//! once each way, so any expression works in batch mode as it does live: a row whose requests
//! are the ones collected gets their answers; a row that changed in between (another request)
//! gets none, and is reported, never sent live at full price behind the caller's back.

use crate::backend::Target;
use crate::functions::calls::Input;
use bailian_core::answers::{self, AnswerKey, Kept};
use bailian_core::batchfile::{Endpoint, Expect};
use bailian_core::providers::{ChatOutcome, ChatRequest, EmbeddingModel};
use bailian_core::registry::Api;
use bailian_core::AiError;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One distinct request of a deployment: its body and what its answer is read as.
pub struct Line {
    pub body: Value,
    pub expect: Expect,
}

/// The requests a deployment's calls would have sent.
pub struct Requests {
    pub target: Arc<Target>,
    pub endpoint: Endpoint,
    pub lines: BTreeMap<AnswerKey, Line>,
}

/// What a collecting run gathered, by deployment.
#[derive(Default)]
pub struct Collected {
    pub by_model: BTreeMap<String, Requests>,
    bytes: u64,
}

enum Mode {
    Collect(Collected),
    Apply { job: i64, owner: pg_sys::Oid },
}

thread_local! {
    static MODE: RefCell<Option<Mode>> = const { RefCell::new(None) };
    /// The read of an answer, prepared once per backend (every row of a job asks).
    static READ_PLAN: RefCell<Option<pgrx::spi::OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// Whether a batch job's calls are being collected or applied now.
pub fn active() -> bool {
    MODE.with(|m| m.borrow().is_some())
}

struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        MODE.with(|m| *m.borrow_mut() = None);
    }
}

/// Runs `f` with every AI call collected, not sent (each answers NULL); returns what the calls
/// would have sent.
pub fn collecting<T>(f: impl FnOnce() -> T) -> (T, Collected) {
    MODE.with(|m| *m.borrow_mut() = Some(Mode::Collect(Collected::default())));
    let reset = Reset;
    let out = f();
    let collected = MODE.with(|m| match m.borrow_mut().take() {
        Some(Mode::Collect(c)) => c,
        _ => Collected::default(),
    });
    drop(reset);
    (out, collected)
}

/// Runs `f` with every AI call answered from job `job`'s batch answers, read as `owner` (the
/// catalog's owner: the caller cannot read the table).
pub fn applying<T>(job: i64, owner: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    MODE.with(|m| *m.borrow_mut() = Some(Mode::Apply { job, owner }));
    let _reset = Reset;
    f()
}

/// What a batch job's chat call gets instead of a request (None: not a batch job's call).
pub fn chat(
    target: &Arc<Target>,
    key: &AnswerKey,
    request: &ChatRequest,
) -> Option<Result<ChatOutcome, AiError>> {
    if !active() {
        return None;
    }
    let line = || {
        if request.api != Api::Compatible || !request.url.ends_with("/chat/completions") {
            return Err(not_batchable(target, "its requests are not compatible-mode chat completions"));
        }
        Ok((Endpoint::ChatCompletions, Line { body: request.body.clone(), expect: Expect::Chat }))
    };
    Some(match answer(target, key, line)? {
        Ok(Kept::Chat(outcome)) => Ok(outcome),
        Ok(Kept::Vector(_)) => Err(mismatch(target)),
        Err(e) => Err(e),
    })
}

/// What a batch job's embedding call gets instead of a request (None: not a batch job's).
pub fn vector(
    target: &Arc<Target>,
    key: &AnswerKey,
    model: &EmbeddingModel,
    input: &Input,
) -> Option<Result<Vec<f32>, AiError>> {
    if !active() {
        return None;
    }
    let line = || {
        if model.api != Api::Compatible {
            return Err(not_batchable(
                target,
                "the Batch File API takes compatible-mode text embeddings only",
            ));
        }
        let Input::Text(_) = input else {
            return Err(not_batchable(target, "the Batch File API takes text embeddings only"));
        };
        let expect = Expect::Embeddings { inputs: 1, dimension: model.dimension };
        Ok((Endpoint::Embeddings, Line { body: model.body(&[input.as_embed_input()]), expect }))
    };
    Some(match answer(target, key, line)? {
        Ok(Kept::Vector(v)) => Ok(v),
        Ok(Kept::Chat(_)) => Err(mismatch(target)),
        Err(e) => Err(e),
    })
}

/// Collects the call's line (and answers with a dry run's NULL), or reads its answer.
fn answer(
    target: &Arc<Target>,
    key: &AnswerKey,
    line: impl FnOnce() -> Result<(Endpoint, Line), AiError>,
) -> Option<Result<Kept, AiError>> {
    MODE.with(|m| {
        let mut m = m.borrow_mut();
        match m.as_mut()? {
            // A collected call answers the dry run's NULL (`AiError::DryRun` settles to it).
            Mode::Collect(collected) => Some(Err(collect(collected, target, key, line))),
            Mode::Apply { job, owner } => Some(read(*job, *owner, target, key)),
        }
    })
}

/// Records the call's request: `AiError::DryRun` when it is recorded (or was), else why it
/// cannot be.
fn collect(
    collected: &mut Collected,
    target: &Arc<Target>,
    key: &AnswerKey,
    line: impl FnOnce() -> Result<(Endpoint, Line), AiError>,
) -> AiError {
    match try_collect(collected, target, key, line) {
        Ok(()) => AiError::DryRun,
        Err(e) => e,
    }
}

fn try_collect(
    collected: &mut Collected,
    target: &Arc<Target>,
    key: &AnswerKey,
    line: impl FnOnce() -> Result<(Endpoint, Line), AiError>,
) -> Result<(), AiError> {
    let d = target.deployment();
    let allowed = bailian_core::tiers::batch_file_models(d.region.as_str());
    if !allowed.contains(&d.spec.model_type) {
        return Err(AiError::invalid_with_hint(
            format!(
                "mode => 'batch': model \"{}\" ({}, region '{}') is not served by Bailian's Batch File API, which serves there: {}",
                d.name,
                d.spec.model_type,
                d.region.as_str(),
                if allowed.is_empty() { "no model".to_string() } else { allowed.join(", ") }
            ),
            "Run the job with mode => 'live' (the default) for other models.",
        ));
    }
    if collected.by_model.get(&d.name).is_some_and(|r| r.lines.contains_key(key)) {
        return Ok(());
    }
    let (endpoint, line) = line()?;
    collected.bytes += line.body.to_string().len() as u64 + 64;
    let budget = crate::guc::max_batch_bytes();
    if collected.bytes > budget {
        return Err(AiError::LimitExceeded {
            what: "the requests of a batch job".into(),
            needed: collected.bytes,
            limit_bytes: budget,
        });
    }
    let requests = collected.by_model.entry(d.name.clone()).or_insert_with(|| Requests {
        target: Arc::clone(target),
        endpoint,
        lines: BTreeMap::new(),
    });
    if requests.endpoint != endpoint {
        return Err(not_batchable(target, "its calls need two endpoints (chat and embeddings)"));
    }
    requests.lines.insert(*key, line);
    Ok(())
}

const READ: &str = "
SELECT answer, error FROM bailian.batch_answers
 WHERE job_id OPERATOR(pg_catalog.=) $1 AND key OPERATOR(pg_catalog.=) $2";

fn read(job: i64, owner: pg_sys::Oid, target: &Target, key: &AnswerKey) -> Result<Kept, AiError> {
    let row: Option<(Option<Vec<u8>>, Option<String>)> = crate::catalog::as_role(owner, || {
        use pgrx::{PgBuiltInOids, PgOid};
        let types = [PgOid::BuiltIn(PgBuiltInOids::INT8OID), PgOid::BuiltIn(PgBuiltInOids::BYTEAOID)];
        crate::spi::with_kept_plan(&READ_PLAN, READ, &types, |plan| {
            Spi::connect(|client| {
                let rows = client.select(plan, Some(1), &[job.into(), key.to_vec().into()])?;
                match rows.into_iter().next() {
                    Some(r) => Ok(Some((r.get::<Vec<u8>>(1)?, r.get::<String>(2)?))),
                    None => Ok(None),
                }
            })
        })
    })
    .map_err(|e| AiError::Internal { message: format!("reading the batch answers failed: {e}") })?;
    let failed = |code: &str, message: String| AiError::BatchLineFailed {
        model: target.deployment().name.clone(),
        custom_id: answers::hex(key),
        code: code.into(),
        message,
    };
    match row {
        Some((Some(bytes), _)) => answers::decode(&bytes)
            .map(|(kept, _)| kept)
            .ok_or_else(|| failed("unreadable", "the stored answer could not be read".into())),
        Some((None, error)) => Err(failed("failed", error.unwrap_or_default())),
        None => Err(failed(
            "not_in_batch",
            "the row's request was not in the job's batches (the row changed since they were made); \
             CALL the job again in batch mode to send it"
                .into(),
        )),
    }
}

/// A call a batch job cannot collect (ai_rank on a rerank model, ai_similarity).
pub fn unbatchable(target: &Target) -> AiError {
    not_batchable(target, "ai_rank and ai_similarity have no Batch File endpoint")
}

fn not_batchable(target: &Target, why: &str) -> AiError {
    AiError::invalid(format!(
        "mode => 'batch': the calls to model \"{}\" cannot go through Bailian's Batch File API: {why}",
        target.deployment().name
    ))
}

fn mismatch(target: &Target) -> AiError {
    AiError::Internal {
        message: format!("a batch answer of model \"{}\" is of another kind", target.deployment().name),
    }
}
