//! The objects of the file and batch APIs as this client reads them (research §1.2, §1.5,
//! in the shapes of the S17 captures): files, batches with their status, counts and errors,
//! and the completion window a batch is created with. Provider text is kept free of NUL.

use super::results::short;
use crate::client::Call;
use crate::error::AiError;
use crate::providers::{malformed, parse, without_nul};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A batch's completion window: 24 to 336 hours, written in whole hours or days (research
/// §1.4; OpenAI takes only "24h").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletionWindow(String);

impl CompletionWindow {
    pub fn hours(hours: u32) -> Result<CompletionWindow, AiError> {
        CompletionWindow::parse(&format!("{hours}h"))
    }

    /// `"24h"` to `"336h"`, or `"1d"` to `"14d"`.
    pub fn parse(window: &str) -> Result<CompletionWindow, AiError> {
        let bad = || {
            AiError::invalid_with_hint(
                format!("invalid completion window \"{}\"", crate::limits::shown(window)),
                "A batch's completion window is 24 to 336 hours, written as whole hours or days: \"24h\", \"72h\", \"7d\", \"14d\".",
            )
        };
        let (digits, per_unit) = match window.as_bytes().last() {
            Some(b'h') => (&window[..window.len() - 1], 1),
            Some(b'd') => (&window[..window.len() - 1], 24),
            _ => return Err(bad()),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let hours = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(per_unit)).ok_or_else(bad)?;
        if (24..=336).contains(&hours) {
            Ok(CompletionWindow(window.to_string()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A file as `/files` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileObject {
    pub id: String,
    pub bytes: u64,
    pub created_at: Option<i64>,
    pub filename: String,
    pub purpose: String,
    /// `processed` (S1) or `uploaded` (S3): informational.
    pub status: Option<String>,
}

/// A batch's status (research §1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchStatus {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub(super) const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Failed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Failed => "failed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<BatchStatus> {
        BatchStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the batch has ended: completed, failed, expired or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Completed | BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelled
        )
    }
}

/// One entry of a batch's `errors.data`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct BatchError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
    /// The line of the input file, from 1.
    #[serde(default)]
    pub line: Option<u64>,
}

impl BatchError {
    pub(super) fn shown(&self) -> String {
        let at = self.line.map(|l| format!("line {l}: ")).unwrap_or_default();
        format!(
            "{at}{}: {}",
            self.code.as_deref().unwrap_or("-"),
            self.message.as_deref().unwrap_or("no message")
        )
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RequestCounts {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub failed: u64,
}

/// A batch as `/batches` describes it (research §1.5). Timestamps are Unix seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub id: String,
    pub status: BatchStatus,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub errors: Vec<BatchError>,
    pub request_counts: RequestCounts,
    pub created_at: Option<i64>,
    pub in_progress_at: Option<i64>,
    /// Computed from the window (S3); S17 saw it null.
    pub expires_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct RawFile {
    id: String,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    purpose: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

pub(super) fn parse_file(call: &Call<'_>, body: &[u8]) -> Result<FileObject, AiError> {
    let raw: RawFile = parse(call.model, body)?;
    if raw.id.is_empty() {
        return Err(malformed(call.model, "the file object has an empty id"));
    }
    Ok(FileObject {
        id: without_nul(&raw.id),
        bytes: raw.bytes,
        created_at: raw.created_at,
        filename: without_nul(&raw.filename.unwrap_or_default()),
        purpose: without_nul(&raw.purpose.unwrap_or_default()),
        status: raw.status.map(|s| without_nul(&s)),
    })
}

#[derive(Deserialize)]
struct RawBatch {
    id: String,
    status: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    input_file_id: Option<String>,
    #[serde(default)]
    completion_window: Option<String>,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    errors: Option<RawErrors>,
    #[serde(default)]
    request_counts: Option<RequestCounts>,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    in_progress_at: Option<i64>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    finalizing_at: Option<i64>,
    #[serde(default)]
    completed_at: Option<i64>,
    #[serde(default)]
    failed_at: Option<i64>,
    #[serde(default)]
    expired_at: Option<i64>,
    #[serde(default)]
    cancelling_at: Option<i64>,
    #[serde(default)]
    cancelled_at: Option<i64>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct RawErrors {
    #[serde(default)]
    data: Vec<BatchError>,
}

pub(super) fn parse_batch(call: &Call<'_>, body: &[u8]) -> Result<Batch, AiError> {
    let raw: RawBatch = parse(call.model, body)?;
    let Some(status) = BatchStatus::parse(&raw.status) else {
        return Err(malformed(call.model, format!("the batch has an unknown status \"{}\"", raw.status)));
    };
    if raw.id.is_empty() {
        return Err(malformed(call.model, "the batch object has an empty id"));
    }
    let text = |s: Option<String>| s.map(|s| without_nul(&s));
    let errors = raw
        .errors
        .map(|e| e.data)
        .unwrap_or_default()
        .into_iter()
        .map(|e| BatchError {
            code: text(e.code),
            message: e.message.map(|m| short(&m)),
            param: text(e.param),
            line: e.line,
        })
        .collect();
    Ok(Batch {
        id: without_nul(&raw.id),
        status,
        endpoint: text(raw.endpoint).unwrap_or_default(),
        input_file_id: text(raw.input_file_id).unwrap_or_default(),
        completion_window: text(raw.completion_window).unwrap_or_default(),
        output_file_id: text(raw.output_file_id).filter(|s| !s.is_empty()),
        error_file_id: text(raw.error_file_id).filter(|s| !s.is_empty()),
        errors,
        request_counts: raw.request_counts.unwrap_or_default(),
        created_at: raw.created_at,
        in_progress_at: raw.in_progress_at,
        expires_at: raw.expires_at,
        finalizing_at: raw.finalizing_at,
        completed_at: raw.completed_at,
        failed_at: raw.failed_at,
        expired_at: raw.expired_at,
        cancelling_at: raw.cancelling_at,
        cancelled_at: raw.cancelled_at,
        metadata: raw.metadata,
    })
}
