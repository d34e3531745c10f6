//! Every account's batches, as plain data: what the API shows of each, and what its task
//! needs to run it. The tasks (`run`) and the endpoints (`batches`) change them; nothing here
//! knows of either.

use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// A batch's status (research §1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    /// Where a batch may still be cancelled, expired or failed: before it finalizes.
    pub(crate) fn running(self) -> bool {
        matches!(self, Status::Validating | Status::InProgress)
    }
}

/// An end a test asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forced {
    Expire,
    Fail,
}

/// A batch as the API shows it, and what its task needs to run it.
pub(crate) struct Batch {
    pub id: String,
    /// Order of creation, for listing.
    pub seq: u64,
    pub owner: u64,
    pub key_hint: String,
    pub endpoint: String,
    pub input_file_id: String,
    /// The input file as it was when the batch was created.
    pub input: Bytes,
    pub completion_window: String,
    pub window_secs: u64,
    pub metadata: Value,
    pub status: Status,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    /// `errors.data`.
    pub errors: Vec<Value>,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// Let go by a test while `Config::batch_hold` holds batches.
    pub released: bool,
    pub forced: Option<Forced>,
    /// Wakes the batch's task when something is done to the batch.
    pub notify: Arc<Notify>,
}

impl Batch {
    /// The batch object (research §1.5). `expires_at` is `created_at` plus the window, as the
    /// docs compute it (S3); S17 saw null there.
    pub(crate) fn object(&self) -> Value {
        let errors =
            if self.errors.is_empty() { Value::Null } else { json!({"object": "list", "data": self.errors}) };
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.as_str(),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.created_at + self.window_secs,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        })
    }
}

/// Every account's batches.
#[derive(Default)]
pub(crate) struct Batches {
    all: Mutex<HashMap<String, Batch>>,
}

impl Batches {
    pub(crate) fn insert(&self, batch: Batch) {
        self.all.lock().unwrap().insert(batch.id.clone(), batch);
    }

    /// `f` of the batches (to list them).
    pub(crate) fn each<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Batch>) -> T) -> T {
        let all = self.all.lock().unwrap();
        f(&mut all.values())
    }

    pub(crate) fn with<T>(&self, id: &str, f: impl FnOnce(&mut Batch) -> T) -> Option<T> {
        self.all.lock().unwrap().get_mut(id).map(f)
    }

    /// Stops every batch: their tasks find them gone.
    pub(crate) fn clear(&self) {
        let gone: Vec<Batch> = self.all.lock().unwrap().drain().map(|(_, b)| b).collect();
        for b in gone {
            b.notify.notify_one();
        }
    }

    /// The batch object of `id`, whoever made it (for tests, in process).
    pub(crate) fn object(&self, id: &str) -> Option<Value> {
        self.with(id, |b| b.object())
    }

    /// Lets held batches go on: `id`, or every one still validating or in progress. Returns
    /// how many were released.
    pub(crate) fn release(&self, id: Option<&str>) -> usize {
        let mut all = self.all.lock().unwrap();
        let mut n = 0;
        let held = |b: &Batch| b.status.running() && !b.released && id.is_none_or(|id| b.id == id);
        for b in all.values_mut().filter(|b| held(b)) {
            b.released = true;
            b.notify.notify_one();
            n += 1;
        }
        n
    }

    /// Makes batch `id` end as `forced` now, if it has not begun to finalize.
    pub(crate) fn force(&self, id: &str, forced: Forced) -> bool {
        self.with(id, |b| {
            if !b.status.running() || b.forced.is_some() {
                return false;
            }
            b.forced = Some(forced);
            b.notify.notify_one();
            true
        })
        .unwrap_or(false)
    }
}
