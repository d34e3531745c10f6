//! Every failure pg_bailian reports, as one typed enum. The SQL layer turns each variant into
//! an ERROR with the SQLSTATE chosen here, so callers can branch on the code
//! (`EXCEPTION WHEN SQLSTATE 'ZBT01'`) instead of parsing text.
//!
//! Custom codes use class `ZB` ("Z" is in the implementation-defined range of SQLSTATE classes).
//! Messages never carry an API key: provider text is redacted before it gets here.

use std::fmt;
use std::time::Duration;

/// What was wrong with an answer the model gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InferenceKind {
    NotJson,
    BreaksSchema,
}

/// Which bound an answer passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseLimit {
    /// The size of one answer.
    OneAnswer,
    /// The bytes of all the answers being read at once.
    InFlight,
}

/// Which rule of Bailian's Batch File API a batch's input breaks (research §1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchRule {
    /// A line longer than one line may be (1 MB), or than a whole file may be.
    LineTooLarge,
    /// A file larger than one file may be (500 MB).
    FileTooLarge,
    /// An empty `custom_id`.
    CustomIdEmpty,
    /// A `custom_id` longer than 256 characters.
    CustomIdTooLong,
    /// A `custom_id` given twice.
    DuplicateCustomId,
    /// A body that is not a JSON object naming its `model`.
    NoModel,
    /// Another model than the first line's: a batch runs one model.
    MixedModels,
    /// Another `enable_thinking` than the first line's: a batch runs one thinking mode.
    MixedThinking,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AiError {
    /// A bad argument or parameter value; the message says what was wrong and what is allowed.
    InvalidArgument { message: String, hint: Option<String> },
    /// `ai_deploy_model` of an existing name without `replace => true`.
    DuplicateModel { name: String },
    /// No deployed model by that name.
    ModelNotDeployed { name: String, hint: Option<String> },
    /// A function used on a model of another task (ai_embed on a chat model, ...).
    WrongTask { model: String, model_type: String, task: String, function: String, allowed: String },
    /// A model-less call (`ai_gen(prompt)`, `ai_embed(content)`, ...) without a way to pick
    /// its model: none of its task is deployed, or several are and no default is set.
    NoDefaultChatModel { message: String, hint: String },
    /// A deployment's key cannot be had at call time: an `env:NAME` variable the server does
    /// not have, a `file:` key that cannot be read, or a source the settings no longer allow.
    /// `reason` completes "API key of model ... is unavailable: ".
    ApiKeyUnavailable { model: String, reason: String, hint: String },
    /// The master key that encrypts stored API keys is missing, unreadable, unsafe, or not the
    /// one a stored key was sealed with.
    MasterKey { message: String, hint: String },
    /// The caller may not do this: replace or undeploy another role's model, use a base_url
    /// host, an `env:` name or a `file:` path the superuser's settings do not allow.
    NotAllowed { message: String, hint: String },
    /// The provider refused the request with a status that retrying cannot fix.
    Provider { model: String, status: u16, code: String, message: String, request_id: Option<String> },
    /// Retryable failures (429, 5xx) until `max_retries` ran out.
    RetriesExhausted { model: String, attempts: u32, last: String },
    /// No response within the per-request timeout, on the last allowed attempt.
    Timeout { model: String, timeout: Duration, attempts: u32 },
    /// Could not connect or the connection broke, on the last allowed attempt.
    Connect { model: String, endpoint: String, detail: String, attempts: u32 },
    /// The provider answered 2xx with a body we cannot use.
    MalformedResponse { model: String, detail: String },
    /// The provider's answer is larger than one answer may be (`pg_bailian.max_response_size`,
    /// itself at most half of `pg_bailian.max_batch_memory`), or would take the answers the
    /// backend is reading at once past their share of `pg_bailian.max_batch_memory`.
    ResponseTooLarge { model: String, limit_bytes: u64, limit: ResponseLimit },
    /// The model answered, but not with what was asked for: text that is not JSON, or JSON
    /// that breaks the requested schema (a label outside the list, a missing key). `answer`
    /// is the model's text, shortened, for the DETAIL.
    Inference { model: String, kind: InferenceKind, problem: String, answer: String },
    /// A required argument is NULL (where NULL cannot mean "nothing to do").
    NullArgument { message: String },
    /// A relation a job cannot work on in its present state (a table without a primary key).
    ObjectNotReady { message: String, hint: String },
    /// A relation of the wrong kind (a view where a table is needed).
    NotATable { message: String, hint: String },
    /// A column that does not exist.
    UndefinedColumn { message: String },
    /// A column of a type the job cannot write, or of another dimension than the model's.
    DatatypeMismatch { message: String },
    /// A procedure that commits was called where it cannot (inside a transaction block).
    TransactionControl { message: String, hint: String },
    /// What a call would build passes a fixed limit (`crate::limits`): refused before it is
    /// built. `what` completes "... would need N bytes".
    LimitExceeded { what: String, needed: u64, limit_bytes: u64 },
    /// Memory for `what` could not be had: an allocation that failed, reported instead of
    /// aborting the backend.
    OutOfMemory { what: String },
    /// A budget (`ai_set_budget`) that covers this call is spent for its period: the request
    /// was not sent. `message` names the budget, what it spent of its limit and when it resets.
    BudgetExceeded { message: String, hint: String },
    /// A fixed capacity of the shared state is used up (`pg_bailian.max_budgets`).
    CapacityExceeded { message: String, hint: String },
    /// `ai_estimate` ran the call dry: counted, not sent. The call answers NULL.
    DryRun,
    /// Qwen's vocabulary (`qwen.tiktoken`) cannot be read or is not one: `file` is the path
    /// tried (None for bytes given directly), `reason` completes "... cannot be used: ".
    TokenizerUnavailable { file: Option<String>, reason: String, hint: String },
    /// A batch's input breaks a rule of Bailian's Batch File API: refused before anything is
    /// uploaded. `line` counts the lines given from 1 (0: the file as a whole).
    BatchInput { rule: BatchRule, line: u64, custom_id: String, message: String },
    /// A batch ended `failed` (its input file broke Bailian's rules, or the service failed
    /// it): none of its lines has an answer. `errors` are the batch's `errors.data`, shown.
    BatchFailed { batch_id: String, message: String, errors: Vec<String> },
    /// One line of a batch failed without an HTTP status of its own: not run before the batch
    /// expired or was cancelled, missing from its result files, or an error the result line
    /// gives no status for. (A line that carries a status fails as `Provider`, like the live
    /// call would have.)
    BatchLineFailed { model: String, custom_id: String, code: String, message: String },
    /// The statement was cancelled while waiting; the SQL layer raises PostgreSQL's own error.
    Interrupted,
    /// A bug or an impossible state; reported rather than panicking.
    Internal { message: String },
}

impl AiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        AiError::InvalidArgument { message: message.into(), hint: None }
    }

    pub fn invalid_with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        AiError::InvalidArgument { message: message.into(), hint: Some(hint.into()) }
    }

    /// The five-character SQLSTATE for this error.
    pub fn sqlstate(&self) -> String {
        match self {
            AiError::InvalidArgument { .. } => "22023".into(), // invalid_parameter_value
            AiError::DuplicateModel { .. } => "42710".into(),  // duplicate_object
            AiError::ModelNotDeployed { .. } => "42704".into(), // undefined_object
            AiError::WrongTask { .. } => "42809".into(),       // wrong_object_type
            AiError::NoDefaultChatModel { .. } => "ZB002".into(),
            AiError::ApiKeyUnavailable { .. } => "ZBK01".into(),
            AiError::MasterKey { .. } => "ZBK02".into(),
            AiError::NotAllowed { .. } => "42501".into(), // insufficient_privilege
            // The HTTP status is part of the code: ZB400, ZB401, ZB404, ...
            AiError::Provider { status, .. } => format!("ZB{:03}", status.min(&999)),
            AiError::RetriesExhausted { .. } => "ZBR01".into(),
            AiError::Timeout { .. } => "ZBT01".into(),
            AiError::Connect { .. } => "ZBC01".into(),
            AiError::MalformedResponse { .. } => "ZBM01".into(),
            AiError::ResponseTooLarge { .. } => "ZBM02".into(),
            AiError::Inference { kind: InferenceKind::NotJson, .. } => "ZBI01".into(),
            AiError::Inference { kind: InferenceKind::BreaksSchema, .. } => "ZBI02".into(),
            AiError::NullArgument { .. } => "22004".into(), // null_value_not_allowed
            AiError::ObjectNotReady { .. } => "55000".into(), // object_not_in_prerequisite_state
            AiError::NotATable { .. } => "42809".into(),    // wrong_object_type
            AiError::UndefinedColumn { .. } => "42703".into(), // undefined_column
            AiError::DatatypeMismatch { .. } => "42804".into(), // datatype_mismatch
            AiError::TransactionControl { .. } => "2D000".into(), // invalid_transaction_termination
            AiError::LimitExceeded { .. } => "54000".into(), // program_limit_exceeded
            AiError::OutOfMemory { .. } => "53200".into(),  // out_of_memory
            AiError::BudgetExceeded { .. } => "ZBB01".into(),
            AiError::DryRun => "ZBE01".into(),
            AiError::CapacityExceeded { .. } => "53400".into(), // configuration_limit_exceeded
            AiError::TokenizerUnavailable { .. } => "ZBV01".into(),
            AiError::BatchInput { .. } => "ZBF01".into(),
            AiError::BatchFailed { .. } => "ZBF02".into(),
            AiError::BatchLineFailed { .. } => "ZBF03".into(),
            AiError::Interrupted => "57014".into(), // query_canceled
            AiError::Internal { .. } => "XX000".into(),
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            AiError::InvalidArgument { hint, .. } | AiError::ModelNotDeployed { hint, .. } => hint.clone(),
            AiError::DuplicateModel { .. } => {
                Some("Pass replace => true to redeploy it, or choose another model_name.".into())
            }
            AiError::WrongTask { allowed, .. } => Some(allowed.clone()),
            AiError::NoDefaultChatModel { hint, .. }
            | AiError::TransactionControl { hint, .. }
            | AiError::ApiKeyUnavailable { hint, .. }
            | AiError::MasterKey { hint, .. }
            | AiError::NotAllowed { hint, .. }
            | AiError::ObjectNotReady { hint, .. }
            | AiError::NotATable { hint, .. }
            | AiError::BudgetExceeded { hint, .. }
            | AiError::CapacityExceeded { hint, .. } => Some(hint.clone()),
            | AiError::TokenizerUnavailable { hint, .. } => Some(hint.clone()),
            AiError::UndefinedColumn { .. }
            | AiError::DatatypeMismatch { .. }
            | AiError::NullArgument { .. } => None,
            AiError::Provider { status: 401, .. } => {
                Some("Check the model's API key and that it belongs to the deployed region.".into())
            }
            AiError::Provider { .. } => None,
            AiError::RetriesExhausted { .. } => {
                Some("Raise max_retries or max_retry_delay, or lower the request rate.".into())
            }
            AiError::Timeout { .. } => Some(
                "Redeploy the model with a longer timeout (a per-call timeout may only lower it).".into(),
            ),
            AiError::ResponseTooLarge { limit: ResponseLimit::OneAnswer, .. } => Some(
                "Raise pg_bailian.max_response_size if the answer is expected to be this large (a superuser may \
                 need to raise pg_bailian.max_batch_memory, whose half bounds it), or ask for less (max_tokens, \
                 a smaller dimension)."
                    .into(),
            ),
            AiError::ResponseTooLarge { limit: ResponseLimit::InFlight, .. } => Some(
                "Lower pg_bailian.max_concurrency so that fewer answers are read at once, or ask a superuser \
                 to raise pg_bailian.max_batch_memory."
                    .into(),
            ),
            AiError::LimitExceeded { .. } => {
                Some("The limits of pg_bailian's functions are listed in its README (Security model).".into())
            }
            AiError::OutOfMemory { .. } => None,
            AiError::BatchInput { .. } => Some(
                "Bailian's Batch File API takes lines of at most 1 MB, each with its own custom_id of 1 to 256 \
                 characters, and one model and one thinking mode per batch."
                    .into(),
            ),
            AiError::BatchFailed { .. } => {
                Some("The batch's errors name the line and the rule it broke; fix the input and submit it again.".into())
            }
            AiError::BatchLineFailed { .. } => None,
            AiError::Inference { .. } => Some(
                "The model did not follow the requested format: retry the row or try another model. SET pg_bailian.on_error = 'null' keeps a query going past such rows."
                    .into(),
            ),
            AiError::Connect { .. }
            | AiError::MalformedResponse { .. }
            | AiError::Interrupted
            | AiError::DryRun
            | AiError::Internal { .. } => None,
        }
    }

    pub fn detail(&self) -> Option<String> {
        match self {
            AiError::Provider { request_id: Some(id), .. } => Some(format!("request_id: {id}")),
            AiError::Inference { answer, .. } => Some(format!("the model answered: {answer}")),
            AiError::BatchFailed { errors, .. } if !errors.is_empty() => Some(errors.join("; ")),
            AiError::Provider { request_id: None, .. }
            | AiError::InvalidArgument { .. }
            | AiError::DuplicateModel { .. }
            | AiError::ModelNotDeployed { .. }
            | AiError::WrongTask { .. }
            | AiError::NoDefaultChatModel { .. }
            | AiError::ApiKeyUnavailable { .. }
            | AiError::MasterKey { .. }
            | AiError::NotAllowed { .. }
            | AiError::RetriesExhausted { .. }
            | AiError::Timeout { .. }
            | AiError::Connect { .. }
            | AiError::MalformedResponse { .. }
            | AiError::ResponseTooLarge { .. }
            | AiError::LimitExceeded { .. }
            | AiError::OutOfMemory { .. }
            | AiError::TokenizerUnavailable { .. }
            | AiError::ObjectNotReady { .. }
            | AiError::NotATable { .. }
            | AiError::UndefinedColumn { .. }
            | AiError::DatatypeMismatch { .. }
            | AiError::NullArgument { .. }
            | AiError::TransactionControl { .. }
            | AiError::CapacityExceeded { .. }
            | AiError::BudgetExceeded { .. }
            | AiError::BatchInput { .. }
            | AiError::BatchFailed { .. }
            | AiError::BatchLineFailed { .. }
            | AiError::DryRun
            | AiError::Interrupted
            | AiError::Internal { .. } => None,
        }
    }

    /// Whether this is a failure of one row's inference (the service refused or failed the
    /// request, or the answer is unusable) rather than of the query itself (a bad argument,
    /// an undeployed model, a key that cannot be had). Only these may become NULL under
    /// `pg_bailian.on_error = 'null'` or be captured by `on_error => 'capture'`.
    pub fn is_row_failure(&self) -> bool {
        matches!(
            self,
            // 401, 403 and 404 (a bad key, a model not activated, a wrong endpoint) fail every
            // row alike: they are the query's failure, not the row's.
            AiError::Provider { status, .. } if !matches!(status, 401 | 403 | 404)
        ) || matches!(
            self,
            AiError::RetriesExhausted { .. }
                | AiError::Timeout { .. }
                | AiError::Connect { .. }
                | AiError::MalformedResponse { .. }
                | AiError::ResponseTooLarge { .. }
                | AiError::Inference { .. }
                | AiError::BudgetExceeded { .. }
                | AiError::BatchLineFailed { .. }
        )
    }

    /// Whether another attempt could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AiError::Provider { status: 429, .. }
                | AiError::Provider { status: 500..=599, .. }
                | AiError::Timeout { .. }
                | AiError::Connect { .. }
        )
    }
}

fn attempts_text(attempts: u32) -> String {
    if attempts == 1 {
        "1 attempt".into()
    } else {
        format!("{attempts} attempts")
    }
}

/// A byte count the way PostgreSQL shows memory settings: "64MB", "512kB", "100 bytes".
pub fn show_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}MB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}kB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

impl fmt::Display for AiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AiError::InvalidArgument { message, .. } => f.write_str(message),
            AiError::DuplicateModel { name } => write!(f, "model \"{name}\" is already deployed"),
            AiError::ModelNotDeployed { name, .. } => {
                write!(f, "model \"{}\" is not deployed", crate::limits::shown(name))
            }
            AiError::WrongTask { model, model_type, task, function, .. } => {
                write!(f, "{function} cannot use model \"{model}\": its task is {task} ({model_type})")
            }
            AiError::NoDefaultChatModel { message, .. } | AiError::TransactionControl { message, .. } => {
                f.write_str(message)
            }
            AiError::ApiKeyUnavailable { model, reason, .. } => {
                write!(f, "API key of model \"{model}\" is unavailable: {reason}")
            }
            AiError::MasterKey { message, .. }
            | AiError::NotAllowed { message, .. }
            | AiError::ObjectNotReady { message, .. }
            | AiError::NotATable { message, .. }
            | AiError::UndefinedColumn { message }
            | AiError::DatatypeMismatch { message }
            | AiError::NullArgument { message } => f.write_str(message),
            AiError::Provider { model, status, code, message, .. } => write!(
                f,
                "Bailian rejected the request to model \"{model}\": HTTP {status} {code}: {message}"
            ),
            AiError::RetriesExhausted { model, attempts, last } => {
                write!(f, "request to model \"{model}\" failed after {}: {last}", attempts_text(*attempts))
            }
            AiError::Timeout { model, timeout, attempts } => write!(
                f,
                "request to model \"{model}\" timed out after {:.1} s ({})",
                timeout.as_secs_f64(),
                attempts_text(*attempts)
            ),
            AiError::Connect { model, endpoint, detail, attempts } => write!(
                f,
                "could not reach {endpoint} for model \"{model}\" ({}): {detail}",
                attempts_text(*attempts)
            ),
            AiError::MalformedResponse { model, detail } => {
                write!(f, "malformed response from Bailian for model \"{model}\": {detail}")
            }
            AiError::Inference { model, kind: InferenceKind::NotJson, problem, .. } => {
                write!(f, "model \"{model}\" answered with text that is not JSON: {problem}")
            }
            AiError::Inference { model, kind: InferenceKind::BreaksSchema, problem, .. } => {
                write!(f, "the answer of model \"{model}\" does not match the requested schema: {problem}")
            }
            AiError::ResponseTooLarge { model, limit_bytes, limit: ResponseLimit::OneAnswer } => write!(
                f,
                "response from Bailian for model \"{model}\" exceeds pg_bailian.max_response_size ({})",
                show_bytes(*limit_bytes)
            ),
            AiError::ResponseTooLarge { model, limit_bytes, limit: ResponseLimit::InFlight } => write!(
                f,
                "response from Bailian for model \"{model}\" would take the answers being read past their share of \
                 pg_bailian.max_batch_memory ({})",
                show_bytes(*limit_bytes)
            ),
            AiError::LimitExceeded { what, needed, limit_bytes } => write!(
                f,
                "{what} would need {needed} bytes, more than the limit of {}",
                show_bytes(*limit_bytes)
            ),
            AiError::OutOfMemory { what } => write!(f, "out of memory for {what}"),
            AiError::BudgetExceeded { message, .. } | AiError::CapacityExceeded { message, .. } => {
                f.write_str(message)
            }
            AiError::DryRun => f.write_str("not sent: ai_estimate runs AI calls dry"),
            AiError::TokenizerUnavailable { file: Some(file), reason, .. } => {
                write!(f, "Qwen's tokenizer vocabulary \"{file}\" cannot be used: {reason}")
            }
            AiError::TokenizerUnavailable { file: None, reason, .. } => {
                write!(f, "Qwen's tokenizer vocabulary cannot be used: {reason}")
            }
            AiError::BatchInput { line: 0, message, .. } => write!(f, "batch input: {message}"),
            AiError::BatchInput { line, custom_id, message, .. } => {
                write!(f, "batch input line {line} (custom_id \"{}\"): {message}", crate::limits::shown(custom_id))
            }
            AiError::BatchFailed { batch_id, message, .. } => write!(f, "batch {batch_id} failed: {message}"),
            AiError::BatchLineFailed { model, custom_id, code, message } => write!(
                f,
                "batch request \"{}\" to model \"{model}\" failed: {code}: {message}",
                crate::limits::shown(custom_id)
            ),
            AiError::Interrupted => f.write_str("canceling statement due to user request"),
            AiError::Internal { message } => write!(f, "pg_bailian internal error: {message}"),
        }
    }
}

impl std::error::Error for AiError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(status: u16) -> AiError {
        AiError::Provider {
            model: "m".into(),
            status,
            code: "c".into(),
            message: "msg".into(),
            request_id: None,
        }
    }

    #[test]
    fn sqlstates_are_distinct_and_well_formed() {
        let all = [
            AiError::invalid("x"),
            AiError::DuplicateModel { name: "m".into() },
            AiError::ModelNotDeployed { name: "m".into(), hint: None },
            AiError::WrongTask {
                model: "m".into(),
                model_type: "t".into(),
                task: "chat".into(),
                function: "ai_embed".into(),
                allowed: String::new(),
            },
            AiError::NoDefaultChatModel { message: String::new(), hint: String::new() },
            AiError::ApiKeyUnavailable { model: "m".into(), reason: "r".into(), hint: "h".into() },
            AiError::MasterKey { message: "m".into(), hint: "h".into() },
            AiError::NotAllowed { message: "m".into(), hint: "h".into() },
            AiError::ResponseTooLarge {
                model: "m".into(),
                limit_bytes: 64 << 20,
                limit: ResponseLimit::OneAnswer,
            },
            AiError::LimitExceeded { what: "w".into(), needed: 2, limit_bytes: 1 },
            AiError::OutOfMemory { what: "w".into() },
            AiError::TokenizerUnavailable { file: None, reason: "r".into(), hint: "h".into() },
            AiError::ObjectNotReady { message: "m".into(), hint: "h".into() },
            AiError::BudgetExceeded { message: "m".into(), hint: "h".into() },
            AiError::CapacityExceeded { message: "m".into(), hint: "h".into() },
            AiError::DryRun,
            AiError::UndefinedColumn { message: "m".into() },
            AiError::NullArgument { message: "m".into() },
            AiError::DatatypeMismatch { message: "m".into() },
            provider(401),
            AiError::RetriesExhausted { model: "m".into(), attempts: 3, last: String::new() },
            AiError::Timeout { model: "m".into(), timeout: Duration::from_secs(1), attempts: 1 },
            AiError::Connect { model: "m".into(), endpoint: "e".into(), detail: String::new(), attempts: 1 },
            AiError::MalformedResponse { model: "m".into(), detail: String::new() },
            AiError::Inference {
                model: "m".into(),
                kind: InferenceKind::NotJson,
                problem: String::new(),
                answer: String::new(),
            },
            AiError::Inference {
                model: "m".into(),
                kind: InferenceKind::BreaksSchema,
                problem: String::new(),
                answer: String::new(),
            },
            AiError::BatchInput {
                rule: BatchRule::LineTooLarge,
                line: 1,
                custom_id: "a".into(),
                message: String::new(),
            },
            AiError::BatchFailed { batch_id: "b".into(), message: String::new(), errors: Vec::new() },
            AiError::BatchLineFailed {
                model: "m".into(),
                custom_id: "a".into(),
                code: "c".into(),
                message: String::new(),
            },
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(|e| e.sqlstate()).collect();
        assert_eq!(codes.len(), all.len());
        for c in &codes {
            assert_eq!(c.len(), 5);
            assert!(c.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()), "{c}");
        }
        assert_eq!(provider(404).sqlstate(), "ZB404");
        assert_eq!(provider(400).sqlstate(), "ZB400");
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(provider(429).is_retryable());
        assert!(provider(500).is_retryable());
        assert!(provider(503).is_retryable());
        assert!(!provider(400).is_retryable());
        assert!(!provider(401).is_retryable());
        assert!(!provider(404).is_retryable());
        assert!(!AiError::MalformedResponse { model: "m".into(), detail: "d".into() }.is_retryable());
    }

    #[test]
    fn only_failures_of_one_row_are_row_failures() {
        assert!(provider(400).is_row_failure());
        assert!(provider(429).is_row_failure());
        assert!(provider(500).is_row_failure());
        for status in [401, 403, 404] {
            assert!(!provider(status).is_row_failure(), "{status}");
        }
        assert!(!AiError::invalid("x").is_row_failure());
        assert!(!AiError::Interrupted.is_row_failure());
    }
}
