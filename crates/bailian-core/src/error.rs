//! Every failure pg_bailian reports, as one typed enum. The SQL layer turns each variant into
//! an ERROR with the SQLSTATE chosen here, so callers can branch on the code
//! (`EXCEPTION WHEN SQLSTATE 'ZBT01'`) instead of parsing text.
//!
//! Custom codes use class `ZB` ("Z" is in the implementation-defined range of SQLSTATE classes).
//! Messages never carry an API key: provider text is redacted before it gets here.

use std::fmt;
use std::time::Duration;

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
    /// `ai_gen(prompt)` without a way to pick the chat model.
    NoDefaultChatModel { message: String, hint: String },
    /// An `env:NAME` key whose variable the server does not have.
    ApiKeyUnavailable { model: String, variable: String },
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
    /// A procedure that commits was called where it cannot (inside a transaction block).
    TransactionControl { message: String, hint: String },
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
            // The HTTP status is part of the code: ZB400, ZB401, ZB404, ...
            AiError::Provider { status, .. } => format!("ZB{:03}", status.min(&999)),
            AiError::RetriesExhausted { .. } => "ZBR01".into(),
            AiError::Timeout { .. } => "ZBT01".into(),
            AiError::Connect { .. } => "ZBC01".into(),
            AiError::MalformedResponse { .. } => "ZBM01".into(),
            AiError::TransactionControl { .. } => "2D000".into(), // invalid_transaction_termination
            AiError::Interrupted => "57014".into(),               // query_canceled
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
            AiError::NoDefaultChatModel { hint, .. } | AiError::TransactionControl { hint, .. } => {
                Some(hint.clone())
            }
            AiError::ApiKeyUnavailable { .. } => Some(
                "Set the variable in the PostgreSQL server's environment and restart it, \
                 or redeploy the model with an 'sk-...' key."
                    .into(),
            ),
            AiError::Provider { status: 401, .. } => {
                Some("Check the model's API key and that it belongs to the deployed region.".into())
            }
            AiError::RetriesExhausted { .. } => {
                Some("Raise max_retries or max_retry_delay, or lower the request rate.".into())
            }
            AiError::Timeout { .. } => {
                Some("Raise the model's timeout, or pass params => '{\"timeout\": seconds}'.".into())
            }
            _ => None,
        }
    }

    pub fn detail(&self) -> Option<String> {
        match self {
            AiError::Provider { request_id: Some(id), .. } => Some(format!("request_id: {id}")),
            _ => None,
        }
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

impl fmt::Display for AiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AiError::InvalidArgument { message, .. } => f.write_str(message),
            AiError::DuplicateModel { name } => write!(f, "model \"{name}\" is already deployed"),
            AiError::ModelNotDeployed { name, .. } => write!(f, "model \"{name}\" is not deployed"),
            AiError::WrongTask { model, model_type, task, function, .. } => {
                write!(f, "{function} cannot use model \"{model}\": its task is {task} ({model_type})")
            }
            AiError::NoDefaultChatModel { message, .. } | AiError::TransactionControl { message, .. } => {
                f.write_str(message)
            }
            AiError::ApiKeyUnavailable { model, variable } => write!(
                f,
                "API key of model \"{model}\" is unavailable: environment variable {variable} \
                 is not set in the PostgreSQL server"
            ),
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
            AiError::ApiKeyUnavailable { model: "m".into(), variable: "V".into() },
            provider(401),
            AiError::RetriesExhausted { model: "m".into(), attempts: 3, last: String::new() },
            AiError::Timeout { model: "m".into(), timeout: Duration::from_secs(1), attempts: 1 },
            AiError::Connect { model: "m".into(), endpoint: "e".into(), detail: String::new(), attempts: 1 },
            AiError::MalformedResponse { model: "m".into(), detail: String::new() },
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
}
