//! Bailian's Batch File API (`{base}/batches`; research §1.4 to §1.11, in the shapes of the
//! S17 captures): create, retrieve, list and cancel, and the batch object with every
//! documented field. A batch then runs by itself (`run`): its input file is checked
//! (`validate`), its lines are answered by the code that answers live requests, and its
//! output and error files join the account's files. It runs on a clock of its own (`clock`),
//! and tests steer it: held `in_progress` until released, expired or failed on demand
//! (`Standin::release_batches`, `expire_batch`, `fail_batch`, and `/_standin/batches/...`).
//!
//! Batches belong to the account (key) that created them. Not played: the 30-day window of
//! retrieval (the stand-in forgets nothing until reset), the management calls' own rate
//! limits and the 1,000 concurrent batches (§1.9), the completion callback and EventBridge,
//! OSS input, and the list filters `create_after` / `create_before`.

pub(crate) mod clock;
mod run;
pub(crate) mod store;
mod validate;

pub(crate) use store::Forced;
use store::{Batch, Status};

use crate::errors::{self, refuse};
use crate::files::PURPOSE_BATCH;
use crate::models::{self, BATCH_TEST_MODEL};
use crate::query::query_param;
use crate::request::Outcome;
use crate::state::{Account, Shared};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::Notify;

/// One request to `{base}/batches{rest}`.
pub(crate) fn handle(
    shared: &Arc<Shared>,
    account: &Account,
    method: &str,
    rest: &str,
    query: &str,
    body: &[u8],
    id: u64,
) -> Outcome {
    let path: Vec<&str> = rest.split('/').skip(1).collect();
    match (method, path.as_slice()) {
        ("POST", []) => create(shared, account, body, id),
        ("GET", []) => list(shared, account, query, id),
        ("GET", [batch]) => match mine(shared, account, batch, |b| b.object()) {
            Some(object) => ok(object),
            None => no_such_batch(batch, id),
        },
        ("POST", [batch, "cancel"]) => cancel(shared, account, batch, id),
        _ => errors::respond(404, errors::no_such_path(id)),
    }
}

fn ok(body: Value) -> Outcome {
    errors::respond(200, body)
}

/// Bailian's wording for a batch it does not have is not documented; this is OpenAI's.
fn no_such_batch(batch: &str, id: u64) -> Outcome {
    refuse(404, "NotFound", &format!("No such batch: {batch}"), id)
}

/// `f` of batch `id` if `account` made it.
fn mine<T>(shared: &Shared, account: &Account, id: &str, f: impl FnOnce(&mut Batch) -> T) -> Option<T> {
    shared.batches.with(id, |b| (b.owner == account.id).then(|| f(b))).flatten()
}

/// `POST /batches` (research §1.4). The refusals' wording is a guess except the model's.
fn create(shared: &Arc<Shared>, account: &Account, body: &[u8], id: u64) -> Outcome {
    let bad = |m: &str| refuse(400, "invalid_parameter_error", m, id);
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return bad("The request body is not valid JSON.");
    };
    let text = |k: &str| request.get(k).and_then(Value::as_str);
    let Some(input_file_id) = text("input_file_id") else {
        return bad("Missing required parameter: 'input_file_id'.");
    };
    let endpoint = text("endpoint").unwrap_or_default();
    if !validate::ENDPOINTS.contains(&endpoint) {
        return bad(&format!(
            "Invalid endpoint '{endpoint}': a batch's endpoint is one of {}.",
            validate::ENDPOINTS.join(", ")
        ));
    }
    let window = text("completion_window").unwrap_or_default();
    let Some(window_hours) = window_hours(window) else {
        return bad(&format!(
            "Invalid completion_window '{window}': it is 24h to 336h, a whole number of hours (h) or days (d)."
        ));
    };
    let metadata = match request.get("metadata") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Object(m)) => match check_metadata(m) {
            Ok(()) => Value::Object(m.clone()),
            Err(why) => return bad(&why),
        },
        Some(_) => return bad("metadata must be an object of strings."),
    };
    let input = match shared.files.get(account.id, input_file_id) {
        Some((data, PURPOSE_BATCH)) => data,
        Some(_) => return bad(&format!("The file {input_file_id} is not an input file (purpose 'batch').")),
        None => return refuse(404, "NotFound", &format!("No such File object: {input_file_id}"), id),
    };
    // S7: 404 ModelNotFound when the batch is created. The test model is taken here and
    // checked against its endpoint when the file is (mismatched_test_url, S17).
    if let Some(model) = validate::first_model(&input) {
        if model != BATCH_TEST_MODEL && !models::batch_file(endpoint, &model) {
            return refuse(
                404,
                "model_not_found",
                &format!("The provided model {model} is not supported by the Batch API."),
                id,
            );
        }
    }
    let batch = Batch {
        // S17's ids are `batch_` and a UUID.
        id: format!("batch_{}", uuid(&shared.token(32))),
        seq: shared.next_id(),
        owner: account.id,
        key_hint: account.hint.clone(),
        endpoint: endpoint.to_string(),
        input_file_id: input_file_id.to_string(),
        input,
        completion_window: window.to_string(),
        window_secs: window_hours * 3600,
        metadata,
        status: Status::Validating,
        created_at: shared.service_secs(),
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        errors: Vec::new(),
        total: 0,
        completed: 0,
        failed: 0,
        output_file_id: None,
        error_file_id: None,
        released: false,
        forced: None,
        notify: Arc::new(Notify::new()),
    };
    let (batch_id, object) = (batch.id.clone(), batch.object());
    shared.batches.insert(batch);
    shared.counters.batches_created.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(run::drive(shared.clone(), batch_id));
    ok(object)
}

/// The hours of a completion window: a whole number of hours (`h`) or days (`d`), 24 to 336
/// hours (research §1.4).
fn window_hours(window: &str) -> Option<u64> {
    let (digits, per_unit) = match window.as_bytes().last()? {
        b'h' => (&window[..window.len() - 1], 1),
        b'd' => (&window[..window.len() - 1], 24),
        _ => return None,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours = digits.parse::<u64>().ok()?.checked_mul(per_unit)?;
    (24..=336).contains(&hours).then_some(hours)
}

/// Metadata is a map of strings; `ds_name` at most 100 characters and `ds_description` 200
/// (research §1.4).
fn check_metadata(metadata: &Map<String, Value>) -> Result<(), String> {
    for (key, value) in metadata {
        let Some(text) = value.as_str() else {
            return Err(format!("metadata.{key} must be a string."));
        };
        let most = match key.as_str() {
            "ds_name" => 100,
            "ds_description" => 200,
            _ => continue,
        };
        if text.chars().count() > most {
            return Err(format!("metadata.{key} must be at most {most} characters."));
        }
    }
    Ok(())
}

/// `GET /batches` (research §1.6): newest first, a page of `limit` (1 to 100, 20 by default)
/// after the batch `after`; filters `status` and `input_file_ids` (comma-separated) and
/// `ds_name` (a substring, for the docs' "fuzzy match").
fn list(shared: &Shared, account: &Account, query: &str, id: u64) -> Outcome {
    let limit = match query_param(query, "limit") {
        None => 20,
        Some(l) => match l.parse::<usize>() {
            Ok(l) if (1..=100).contains(&l) => l,
            _ => {
                return refuse(400, "invalid_parameter_error", "limit must be an integer from 1 to 100.", id)
            }
        },
    };
    let listed =
        |p: &str| query_param(query, p).map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>());
    let (statuses, files) = (listed("status"), listed("input_file_ids"));
    let name = query_param(query, "ds_name");
    let after = query_param(query, "after");
    let (page, has_more) = shared.batches.each(|all| {
        let mut mine: Vec<&Batch> = all
            .filter(|b| b.owner == account.id)
            .filter(|b| statuses.as_ref().is_none_or(|s| s.iter().any(|s| s == b.status.as_str())))
            .filter(|b| files.as_ref().is_none_or(|f| f.contains(&b.input_file_id)))
            .filter(|b| {
                name.as_ref().is_none_or(|n| {
                    b.metadata.get("ds_name").and_then(Value::as_str).is_some_and(|d| d.contains(n.as_str()))
                })
            })
            .collect();
        mine.sort_by_key(|b| std::cmp::Reverse(b.seq));
        let start = match &after {
            None => 0,
            Some(after) => mine.iter().position(|b| &b.id == after).map_or(mine.len(), |i| i + 1),
        };
        let page: Vec<Value> = mine.iter().skip(start).take(limit).map(|b| b.object()).collect();
        let has_more = mine.len() > start + page.len();
        (page, has_more)
    });
    ok(json!({
        "object": "list",
        "first_id": page.first().map(|b| b["id"].clone()),
        "last_id": page.last().map(|b| b["id"].clone()),
        "has_more": has_more,
        "data": page,
    }))
}

/// `POST /batches/{id}/cancel` (research §1.6): a batch validating or in progress turns
/// `cancelling`, then `cancelled` once its task has written what it did. Cancelling a batch
/// that is finalizing or has ended is refused; Bailian's refusal is not documented, and this
/// borrows DashScope's for tasks ("UnsupportedOperation").
fn cancel(shared: &Shared, account: &Account, batch: &str, id: u64) -> Outcome {
    let now = shared.service_secs();
    let result = mine(shared, account, batch, |b| {
        if b.status.running() {
            b.status = Status::Cancelling;
            b.cancelling_at = Some(now);
            b.notify.notify_one();
        }
        match b.status {
            Status::Cancelling => Ok(b.object()),
            status => Err(status),
        }
    });
    match result {
        None => no_such_batch(batch, id),
        Some(Ok(object)) => ok(object),
        Some(Err(status)) => refuse(
            400,
            "UnsupportedOperation",
            &format!("Cannot cancel the batch {batch}: its status is {}.", status.as_str()),
            id,
        ),
    }
}

/// 32 hex digits as a UUID's five groups.
fn uuid(hex: &str) -> String {
    if hex.len() < 32 {
        return hex.to_string();
    }
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_windows() {
        for (w, hours) in
            [("24h", Some(24)), ("336h", Some(336)), ("1d", Some(24)), ("7d", Some(168)), ("14d", Some(336))]
        {
            assert_eq!(window_hours(w), hours, "{w}");
        }
        for w in [
            "23h",
            "337h",
            "15d",
            "0d",
            "24",
            "h",
            "24H",
            "2.5d",
            "-24h",
            "+24h",
            "",
            "99999999999999999999d",
        ] {
            assert_eq!(window_hours(w), None, "{w}");
        }
    }

    #[test]
    fn metadata_and_ids() {
        let m = |v: Value| check_metadata(v.as_object().unwrap());
        assert!(m(json!({"ds_name": "n".repeat(100), "other": "x"})).is_ok());
        assert!(m(json!({"ds_name": "n".repeat(101)})).unwrap_err().contains("100"));
        assert!(m(json!({"ds_description": "d".repeat(201)})).is_err());
        assert!(m(json!({"k": 1})).unwrap_err().contains("string"));
        assert_eq!(uuid("0123456789abcdef0123456789abcdef"), "01234567-89ab-cdef-0123-456789abcdef");
    }
}
