//! Bailian's Batch File API (research §1): requests written to a JSONL file, uploaded
//! (`POST /files`), run as a batch (`POST /batches`) at half the live price, and collected
//! hours later from the batch's output and error files (`GET /files/{id}/content`).
//!
//! What can go wrong, and where it is caught:
//! - an input Bailian would refuse (a line over 1 MB, a `custom_id` over 256 characters or
//!   given twice, two models or two thinking modes in one batch, more than 50,000 lines or
//!   500 MB in a file) fails the whole batch hours later with `errors.data`; `input_files`
//!   refuses it before anything is sent ([`AiError::BatchInput`], naming the line and the
//!   rule), and splits what is too much for one file into several;
//! - a batch that failed anyway has no answers at all ([`AiError::BatchFailed`]);
//! - a batch that completed may still have failed lines, and one that expired or was
//!   cancelled has answers for the lines done before: every line is reported by its
//!   `custom_id`, an answer or the error of that line ([`BatchResults`]);
//! - the result files are the provider's bytes: lines come in any order (joined on
//!   `custom_id`), a failed line's shape is not documented (every variant the docs and
//!   OpenAI use is read), an answer is checked by the same parsers as the live call's
//!   (`compatible::parse_chat`, `parse_embeddings`), and which file a line came from, or
//!   the prefix of a file's id, says nothing (S17: an error file named `file-batch_output-`).
//!
//! The requests go through [`Client`] with the [`Call`]'s key, timeout, retries and response
//! cap (a result file must fit `max_response_bytes`), never its rate limiter or meter: the
//! batch's own usage is the sum over its answered lines ([`BatchResults::usage`]).
//!
//! Its rooms: `input` writes input files, `objects` reads the file and batch objects,
//! `results` reads result files; the calls themselves are here.

mod input;
mod objects;
mod results;

pub use input::{
    input_files, Endpoint, Expect, InputFile, Limits, MAX_CUSTOM_ID_CHARS, MAX_FILE_BYTES, MAX_LINES,
    MAX_LINE_BYTES,
};
pub use objects::{Batch, BatchError, BatchStatus, CompletionWindow, FileObject, RequestCounts};
pub use results::{parse_results, Answer, BatchResults, Unreadable};

use crate::client::{redacted, Call, Client, Exchange};
use crate::error::{AiError, BatchRule};
use crate::providers::{malformed, parse};
use bytes::Bytes;
use objects::{parse_batch, parse_file};
use reqwest::Method;
use results::short;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest `metadata.ds_name` and `metadata.ds_description`, in characters (research §1.4).
pub const MAX_DS_NAME_CHARS: usize = 100;
pub const MAX_DS_DESCRIPTION_CHARS: usize = 200;

/// Errors of a failed batch shown in [`AiError::BatchFailed`] at most.
const MAX_ERRORS_SHOWN: usize = 10;

/// `POST {base}/files`: `bytes` as a file for batches, named `filename`, in the multipart
/// form the OpenAI SDK sends (`purpose`, then `file` as application/octet-stream).
pub async fn upload(
    client: &Client,
    call: &Call<'_>,
    bytes: impl Into<Bytes>,
    filename: &str,
) -> Result<FileObject, AiError> {
    let bytes = bytes.into();
    let size = bytes.len() as u64;
    if size > MAX_FILE_BYTES {
        return Err(AiError::BatchInput {
            rule: BatchRule::FileTooLarge,
            line: 0,
            custom_id: String::new(),
            message: format!(
                "the file is {size} bytes; Bailian takes batch files of at most {MAX_FILE_BYTES} bytes"
            ),
        });
    }
    let boundary = boundary_for(&bytes);
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n",
        form_filename(filename)?
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut form = Vec::with_capacity(head.len() + bytes.len() + tail.len());
    form.extend_from_slice(head.as_bytes());
    form.extend_from_slice(&bytes);
    form.extend_from_slice(tail.as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let url = format!("{}/files", call.endpoint);
    let request =
        Exchange { method: Method::POST, url: &url, body: Some((content_type.as_str(), Bytes::from(form))) };
    let body = client.exchange(call, &request).await?;
    parse_file(call, &body)
}

/// `POST {base}/batches`: a batch of the requests in `input_file_id`. `metadata` may name it
/// (`ds_name`, at most 100 characters), describe it (`ds_description`, 200) and ask for a
/// callback when it ends (`ds_batch_finish_callback`).
pub async fn create_batch(
    client: &Client,
    call: &Call<'_>,
    input_file_id: &str,
    endpoint: Endpoint,
    completion_window: &CompletionWindow,
    metadata: &BTreeMap<String, String>,
) -> Result<Batch, AiError> {
    let input_file_id = path_id("input file id", input_file_id)?;
    for (key, most) in [("ds_name", MAX_DS_NAME_CHARS), ("ds_description", MAX_DS_DESCRIPTION_CHARS)] {
        if metadata.get(key).is_some_and(|v| v.chars().count() > most) {
            return Err(AiError::invalid(format!("batch metadata {key} must be at most {most} characters")));
        }
    }
    let mut request = json!({
        "input_file_id": input_file_id,
        "endpoint": endpoint.as_str(),
        "completion_window": completion_window.as_str(),
    });
    // The OpenAI SDK leaves out what is not given.
    if !metadata.is_empty() {
        request["metadata"] = json!(metadata);
    }
    let payload = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
    let url = format!("{}/batches", call.endpoint);
    let exchange = Exchange { method: Method::POST, url: &url, body: Some(("application/json", payload)) };
    parse_batch(call, &client.exchange(call, &exchange).await?)
}

/// `GET {base}/batches/{id}`. Bailian answers for batches of the last 30 days only.
pub async fn retrieve_batch(client: &Client, call: &Call<'_>, id: &str) -> Result<Batch, AiError> {
    let url = format!("{}/batches/{}", call.endpoint, path_id("batch id", id)?);
    parse_batch(call, &client.exchange(call, &Exchange { method: Method::GET, url: &url, body: None }).await?)
}

/// `POST {base}/batches/{id}/cancel`: the batch turns `cancelling`, then `cancelled`; the
/// lines done before are kept, and billed (research §1.6).
pub async fn cancel_batch(client: &Client, call: &Call<'_>, id: &str) -> Result<Batch, AiError> {
    let url = format!("{}/batches/{}/cancel", call.endpoint, path_id("batch id", id)?);
    parse_batch(
        call,
        &client.exchange(call, &Exchange { method: Method::POST, url: &url, body: None }).await?,
    )
}

/// `GET {base}/files/{id}/content`: a result file's bytes, at most `call.max_response_bytes`.
pub async fn file_content(client: &Client, call: &Call<'_>, id: &str) -> Result<Bytes, AiError> {
    let url = format!("{}/files/{}/content", call.endpoint, path_id("file id", id)?);
    client.exchange(call, &Exchange { method: Method::GET, url: &url, body: None }).await
}

/// `DELETE {base}/files/{id}`: whether the file was deleted. Files never expire and an
/// account holds at most 10,000 (research §1.2), so a client deletes what it is done with.
pub async fn delete_file(client: &Client, call: &Call<'_>, id: &str) -> Result<bool, AiError> {
    let url = format!("{}/files/{}", call.endpoint, path_id("file id", id)?);
    let body = client.exchange(call, &Exchange { method: Method::DELETE, url: &url, body: None }).await?;
    #[derive(Deserialize)]
    struct Deleted {
        #[serde(default)]
        deleted: bool,
    }
    let deleted: Deleted = parse(call.model, &body)?;
    Ok(deleted.deleted)
}

/// How often [`wait_for_batch`] asks: `first`, then twice as long each time up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Poll {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Poll {
    /// Bailian asks for more than a minute between polls, with exponential backoff (S1).
    fn default() -> Self {
        Poll { first: Duration::from_secs(60), max: Duration::from_secs(600) }
    }
}

/// Polls batch `id` until it has ended. A batch may take up to its completion window (24 h
/// or more): the caller bounds the wait by dropping the future.
pub async fn wait_for_batch(
    client: &Client,
    call: &Call<'_>,
    id: &str,
    poll: &Poll,
) -> Result<Batch, AiError> {
    let mut delay = poll.first;
    loop {
        let batch = retrieve_batch(client, call, id).await?;
        if batch.status.is_terminal() {
            return Ok(batch);
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(poll.max.max(poll.first));
    }
}

/// The results of an ended batch, for the requests `expected` (an [`InputFile`]'s): its
/// output and error files downloaded and read by [`parse_results`]. A batch that `failed` has
/// none: [`AiError::BatchFailed`] with its errors. One that has not ended is refused.
pub async fn collect(
    client: &Client,
    call: &Call<'_>,
    batch: &Batch,
    expected: &[(String, Expect)],
) -> Result<BatchResults, AiError> {
    if !batch.status.is_terminal() {
        return Err(AiError::invalid(format!(
            "batch {} is still {}: its results can be collected once it has ended",
            batch.id,
            batch.status.as_str()
        )));
    }
    if batch.status == BatchStatus::Failed {
        return Err(batch_failed(call, batch));
    }
    let mut files = Vec::new();
    for id in [&batch.output_file_id, &batch.error_file_id].into_iter().flatten() {
        // An id the service gave that cannot be a path segment is its fault, not the caller's.
        if path_id("file id", id).is_err() {
            return Err(malformed(
                call.model,
                format!("the batch names a result file \"{id}\" that is not an id"),
            ));
        }
        files.push(file_content(client, call, id).await?);
    }
    let files: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let mut results = parse_results(call.model, expected, &files);
    for (_, outcome) in &mut results.lines {
        if let Err(e) = outcome {
            *e = scrubbed(call, e.clone());
        }
    }
    Ok(results)
}

/// `e` without the key, whatever the provider echoed.
fn scrubbed(call: &Call<'_>, e: AiError) -> AiError {
    match e {
        AiError::BatchLineFailed { model, custom_id, code, message } => AiError::BatchLineFailed {
            model,
            custom_id,
            code: call.key.redact(&code),
            message: call.key.redact(&message),
        },
        AiError::BatchFailed { batch_id, message, errors } => AiError::BatchFailed {
            batch_id,
            message: call.key.redact(&message),
            errors: errors.iter().map(|e| call.key.redact(e)).collect(),
        },
        other => redacted(call, other),
    }
}

fn batch_failed(call: &Call<'_>, batch: &Batch) -> AiError {
    let shown: Vec<String> = batch.errors.iter().take(MAX_ERRORS_SHOWN).map(|e| short(&e.shown())).collect();
    let message = match batch.errors.len() {
        0 => "it has no answers, and lists no error".to_string(),
        1 => format!("it has no answers: {}", shown[0]),
        n => format!("it has no answers: {} (and {} more errors)", shown[0], n - 1),
    };
    scrubbed(call, AiError::BatchFailed { batch_id: batch.id.clone(), message, errors: shown })
}

/// An id that goes into a URL path: letters, digits, `-`, `_` and `.`, as Bailian's are
/// (`file-batch-...`, `batch_...`). Anything else (a `/`, `?`, `..`) would reach another
/// path than the one meant.
fn path_id<'a>(what: &str, id: &'a str) -> Result<&'a str, AiError> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !id.is_empty() && id.len() <= 200 && id.chars().all(fits) && !id.contains("..") {
        Ok(id)
    } else {
        Err(AiError::invalid(format!("invalid {what} \"{}\"", crate::limits::shown(id))))
    }
}

/// A filename for a form's Content-Disposition, as browsers and httpx write it (WHATWG):
/// `"`, CR and LF percent-encoded, and the other control characters with them.
fn form_filename(filename: &str) -> Result<String, AiError> {
    if filename.is_empty() {
        return Err(AiError::invalid("a batch file needs a filename"));
    }
    let mut out = String::with_capacity(filename.len());
    for c in filename.chars() {
        match c {
            '"' | '\\' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() && (c as u32) < 0x80 => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A multipart boundary that does not occur in `content`.
fn boundary_for(content: &[u8]) -> String {
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ content.len() as u64;
    let mut attempt = 0u64;
    loop {
        let boundary = format!("pg-bailian-{:016x}{attempt:x}", mix(seed.wrapping_add(attempt)));
        if !content.windows(boundary.len()).any(|w| w == boundary.as_bytes()) {
            return boundary;
        }
        attempt += 1;
    }
}

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_windows_and_ids() {
        for ok in ["24h", "336h", "1d", "14d", "72h"] {
            assert_eq!(CompletionWindow::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["23h", "337h", "15d", "0d", "24", "24H", "1.5d", "", "-24h", "99999999999999999999999d"] {
            assert!(CompletionWindow::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(CompletionWindow::hours(48).unwrap().as_str(), "48h");
        assert!(path_id("file id", "file-batch_output-0a1b.c").is_ok());
        for bad in ["", "a/b", "../x", "a?b", "a b", "..", "é"] {
            assert!(path_id("file id", bad).is_err(), "{bad}");
        }
        assert_eq!(form_filename("a\"b\r\n.jsonl").unwrap(), "a%22b%0D%0A.jsonl");
        assert!(form_filename("").is_err());
        let content = b"--pg-bailian-";
        assert!(!boundary_for(content).is_empty());
        assert_eq!(Endpoint::parse("/v1/embeddings"), Some(Endpoint::Embeddings));
        assert_eq!(Endpoint::parse("/v1/responses"), None);
        assert!(BatchStatus::ALL.iter().all(|s| BatchStatus::parse(s.as_str()) == Some(*s)));
        assert_eq!(
            BatchStatus::ALL.iter().filter(|s| s.is_terminal()).count(),
            4,
            "completed, failed, expired, cancelled"
        );
    }

    #[test]
    fn batch_objects_as_captured() {
        let key = crate::secret::ApiKey::new("sk-unittest0123456789");
        let call = Call {
            model: "m",
            endpoint: "http://x",
            key: &key,
            timeout: Duration::from_secs(1),
            retry: crate::retry::RetryPolicy {
                max_retries: 0,
                initial_delay: Duration::ZERO,
                max_delay: Duration::ZERO,
            },
            limiter: None,
            meter: None,
            max_response_bytes: 1 << 20,
            answers_budget: 0,
        };
        // S17's failed batch, as captured.
        let failed = r#"{"id": "batch_fa05d570-fa04-4935-8b80-2b9c1a4b3ee4", "object": "batch", "endpoint": "/v1/chat/ds-test",
            "errors": {"object": "list", "data": [{"code": "url_not_found", "message": "The provided url '/v1/chat/completion' is not supported by the Batch API.", "param": "url", "line": 1}]},
            "input_file_id": "file-batch-61875e1242854691b8bfd17d", "completion_window": "24h", "status": "failed",
            "output_file_id": null, "error_file_id": null, "created_at": 1776414394, "in_progress_at": null, "expires_at": null,
            "finalizing_at": null, "completed_at": null, "failed_at": 1776414394, "expired_at": null, "cancelling_at": null,
            "cancelled_at": null, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": {"ds_name": "测试任务"}}"#;
        let batch = parse_batch(&call, failed.as_bytes()).unwrap();
        assert_eq!(
            (batch.status, batch.failed_at, batch.expires_at),
            (BatchStatus::Failed, Some(1776414394), None)
        );
        assert_eq!(batch.errors[0].line, Some(1));
        let e = batch_failed(&call, &batch);
        assert_eq!(e.sqlstate(), "ZBF02");
        assert!(e.to_string().contains("line 1: url_not_found: The provided url"), "{e}");
        assert!(parse_batch(&call, br#"{"id": "b", "status": "paused"}"#)
            .unwrap_err()
            .to_string()
            .contains("unknown status"));
        let minimal = parse_batch(
            &call,
            br#"{"id": "b", "status": "in_progress", "errors": null, "request_counts": null}"#,
        )
        .unwrap();
        assert_eq!((minimal.request_counts, minimal.errors.len()), (RequestCounts::default(), 0));
        let leaked = AiError::BatchLineFailed {
            model: "m".into(),
            custom_id: "a".into(),
            code: "c".into(),
            message: "key sk-unittest0123456789 refused".into(),
        };
        assert!(!scrubbed(&call, leaked).to_string().contains("0123456789"));
    }
}
