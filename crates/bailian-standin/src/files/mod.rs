//! Bailian's file API as the Batch File API uses it (`{base}/files`; research §1.2 and §1.7,
//! in the shapes of the S17 captures): upload (multipart `file` and `purpose`), retrieve,
//! list, delete, and download of a batch's output and error files.
//!
//! Files belong to the account (key) that uploaded them, never expire, and an account holds
//! at most 10,000 files and 100 GB (S14), as Bailian's does. The stand-in takes purpose
//! `batch` only: Bailian also stores `file-extract` and `fine-tune` files, which nothing the
//! stand-in plays reads. Where a refusal's wording is not documented, the message says what
//! is wrong and the comment says it is a guess.

pub(crate) mod store;

pub(crate) use store::{PURPOSE_BATCH, PURPOSE_BATCH_OUTPUT};

use crate::errors::{self, refuse};
use crate::multipart;
use crate::query::query_param;
use crate::request::Outcome;
use crate::state::{Account, Config, Shared};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// Files and bytes one account may hold (S14): uploads beyond either fail.
const MAX_FILES_PER_ACCOUNT: usize = 10_000;
const MAX_BYTES_PER_ACCOUNT: u64 = 100_000_000_000;

/// Stores `data` as a file of `owner`'s; returns its id and object.
pub(crate) fn save(
    shared: &Shared,
    owner: u64,
    filename: &str,
    purpose: &'static str,
    data: Bytes,
) -> (String, Value) {
    // Input files are `file-batch-...`; a batch's output and error files are both
    // `file-batch_output-...`, as S17 observed for an error file (the docs' examples show
    // `file-batch_error-...`): a client must not tell them apart by their id.
    let prefix = if purpose == PURPOSE_BATCH { "file-batch-" } else { "file-batch_output-" };
    let file = store::StoredFile {
        id: format!("{prefix}{}", shared.token(24)),
        owner,
        filename: filename.to_string(),
        purpose,
        created_at: shared.service_secs(),
        data,
        seq: shared.next_id(),
    };
    let id = file.id.clone();
    (id, shared.files.insert(file))
}

/// One request to `{base}/files{rest}`.
#[allow(clippy::too_many_arguments)] // One per piece of the request; a struct would only rename them.
pub(crate) fn handle(
    shared: &Shared,
    config: &Config,
    account: &Account,
    method: &str,
    rest: &str,
    query: &str,
    content_type: &str,
    body: &Bytes,
    id: u64,
) -> Outcome {
    let path: Vec<&str> = rest.split('/').skip(1).collect();
    match (method, path.as_slice()) {
        ("POST", []) => upload(shared, config, account, content_type, body, id),
        ("GET", []) => {
            let purpose = query_param(query, "purpose");
            let data = shared.files.list(account.id, purpose.as_deref());
            ok(json!({"object": "list", "data": data, "has_more": false}))
        }
        ("GET", [file]) => match shared.files.object(account.id, file) {
            Some(object) => ok(object),
            None => no_such_file(file, id),
        },
        ("DELETE", [file]) => {
            if shared.files.delete(account.id, file) {
                // The shape the OpenAI SDK's FileDeleted reads, as S17 captured it.
                ok(json!({"id": file, "object": "file", "deleted": true}))
            } else {
                no_such_file(file, id)
            }
        }
        ("GET", [file, "content"]) => match shared.files.get(account.id, file) {
            Some((data, PURPOSE_BATCH_OUTPUT)) => Outcome::Raw {
                status: 200,
                headers: Vec::new(),
                content_type: "application/octet-stream",
                body: data,
            },
            // S1: "Only files whose file_id starts with file-batch_output can be downloaded".
            // The refusal's status and wording are a guess.
            Some(_) => refuse(
                400,
                "invalid_parameter_error",
                &format!("Only batch output files (file-batch_output-...) can be downloaded; {file} is an input file."),
                id,
            ),
            None => no_such_file(file, id),
        },
        _ => errors::respond(404, errors::no_such_path(id)),
    }
}

fn ok(body: Value) -> Outcome {
    errors::respond(200, body)
}

/// OpenAI's wording for a file id it does not have; Bailian's is not documented.
fn no_such_file(file: &str, id: u64) -> Outcome {
    refuse(404, "NotFound", &format!("No such File object: {file}"), id)
}

/// `POST /files`: the multipart form of the OpenAI SDK's `files.create(file=..., purpose="batch")`.
fn upload(
    shared: &Shared,
    config: &Config,
    account: &Account,
    content_type: &str,
    body: &Bytes,
    id: u64,
) -> Outcome {
    let bad = |m: &str| refuse(400, "invalid_parameter_error", m, id);
    let Some(boundary) = multipart::boundary(content_type) else {
        return bad("The request must be multipart/form-data, with a file and a purpose.");
    };
    let parts = match multipart::parse(body, &boundary) {
        Ok(parts) => parts,
        Err(why) => return bad(&format!("The multipart body cannot be read: {why}.")),
    };
    let Some(purpose) = parts.iter().find(|p| p.name == "purpose") else {
        return bad("Missing required parameter: 'purpose'.");
    };
    if &purpose.data[..] != PURPOSE_BATCH.as_bytes() {
        return bad(&format!(
            "Invalid purpose '{}': the stand-in takes files for batches only (purpose 'batch').",
            String::from_utf8_lossy(&purpose.data)
        ));
    }
    let Some(file) = parts.iter().find(|p| p.name == "file" && p.filename.is_some()) else {
        return bad("Missing required parameter: 'file'.");
    };
    let size = file.data.len() as u64;
    if size > config.max_file_bytes {
        // The error-code page's 400 BadRequest.TooLarge (research §1.2); the message is a guess.
        return refuse(
            400,
            "BadRequest.TooLarge",
            &format!(
                "Payload Too Large: the file has {size} bytes, more than the {} a file for batch may have.",
                config.max_file_bytes
            ),
            id,
        );
    }
    // The error-code page's messages for a full account.
    let (files, bytes) = shared.files.held(account.id);
    if files >= MAX_FILES_PER_ACCOUNT {
        return bad("Upload file number exceed limit.");
    }
    if bytes + size > MAX_BYTES_PER_ACCOUNT {
        return bad("Upload file capacity exceed limit.");
    }
    let filename = file.filename.clone().unwrap_or_default();
    let (_, object) = save(shared, account.id, &filename, PURPOSE_BATCH, file.data.clone());
    shared.counters.files_uploaded.fetch_add(1, Ordering::Relaxed);
    ok(object)
}
