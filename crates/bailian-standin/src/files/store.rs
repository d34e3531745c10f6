//! The files of every account, as plain data: what `POST /files` stored and the result
//! files batches wrote. Files belong to the account (key) that made them and never expire.

use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// The purpose of input files.
pub(crate) const PURPOSE_BATCH: &str = "batch";
/// The purpose of the files a batch writes (its output and error files). Bailian's docs show
/// none; this is OpenAI's name for them (UNCONFIRMED).
pub(crate) const PURPOSE_BATCH_OUTPUT: &str = "batch_output";

pub(crate) struct StoredFile {
    pub id: String,
    pub owner: u64,
    pub filename: String,
    pub purpose: &'static str,
    pub created_at: u64,
    pub data: Bytes,
    /// Order of creation, for listing.
    pub seq: u64,
}

impl StoredFile {
    /// The file object: S1's upload example (`status_details` included) and the fields the
    /// S17 captures show.
    pub(crate) fn object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.data.len(),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
        })
    }
}

/// Every account's files.
#[derive(Default)]
pub(crate) struct Files {
    all: Mutex<HashMap<String, StoredFile>>,
}

impl Files {
    /// Stores a file; returns its object.
    pub(crate) fn insert(&self, file: StoredFile) -> Value {
        let object = file.object();
        self.all.lock().unwrap().insert(file.id.clone(), file);
        object
    }

    /// The bytes and purpose of `id`, if `owner` has it.
    pub(crate) fn get(&self, owner: u64, id: &str) -> Option<(Bytes, &'static str)> {
        let all = self.all.lock().unwrap();
        all.get(id).filter(|f| f.owner == owner).map(|f| (f.data.clone(), f.purpose))
    }

    /// The bytes of `id`, whoever has it (for tests, in process).
    pub(crate) fn bytes_of(&self, id: &str) -> Option<Bytes> {
        self.all.lock().unwrap().get(id).map(|f| f.data.clone())
    }

    pub(crate) fn clear(&self) {
        self.all.lock().unwrap().clear();
    }

    pub(crate) fn object(&self, owner: u64, id: &str) -> Option<Value> {
        let all = self.all.lock().unwrap();
        all.get(id).filter(|f| f.owner == owner).map(StoredFile::object)
    }

    pub(crate) fn delete(&self, owner: u64, id: &str) -> bool {
        let mut all = self.all.lock().unwrap();
        let mine = all.get(id).is_some_and(|f| f.owner == owner);
        mine && all.remove(id).is_some()
    }

    /// `owner`'s files, newest first, of `purpose` if given.
    pub(crate) fn list(&self, owner: u64, purpose: Option<&str>) -> Vec<Value> {
        let all = self.all.lock().unwrap();
        let mut mine: Vec<&StoredFile> =
            all.values().filter(|f| f.owner == owner && purpose.is_none_or(|p| f.purpose == p)).collect();
        mine.sort_by_key(|f| std::cmp::Reverse(f.seq));
        mine.into_iter().map(StoredFile::object).collect()
    }

    /// How many files and bytes `owner` holds.
    pub(crate) fn held(&self, owner: u64) -> (usize, u64) {
        let all = self.all.lock().unwrap();
        all.values().filter(|f| f.owner == owner).fold((0, 0), |(n, b), f| (n + 1, b + f.data.len() as u64))
    }
}
