//! Calls answered without a request of their own.
//!
//! Within one statement, or one job (`CALL ai_update` and the column procedures, whose chunk
//! statements all run under the CALL's statement), a call identical to one already answered
//! (same deployment, endpoint and request: `bailian_core::answers`) is given that answer, and
//! one identical to a call still in flight waits for it (the AI Batch node keeps those
//! waiters, see `executor::node`). ai_usage counts such calls in `shared_calls`, with what
//! they would have cost in `saved`. The answers live in this backend's memory until the
//! statement ends, within a quarter of `pg_bailian.max_batch_memory`; past that they are
//! not kept and identical calls are sent again, so memory stays bounded whatever the input.
//!
//! Only answers that arrived are kept, never an error (a failed call's twin asks for itself,
//! as it would row by row), and nothing during a dry run (ai_estimate's calls answer NULL).
//!
//! Deployments made with `cache => true` also keep their answers beyond the statement, in
//! the answer cache (`cache`): a call the statement has no answer for looks there before it
//! sends anything.

pub mod batch;
pub mod cache;

use crate::backend::Target;
use crate::functions::calls::Input;
use bailian_core::answers::{self, AnswerKey, Kept, Memo};
use bailian_core::meter::{Served, Usage};
use bailian_core::providers::{ChatOutcome, ChatRequest, EmbeddingModel};
use std::cell::RefCell;

thread_local! {
    /// The answers of the statement (its start time and the catalog's generation, so a
    /// redeploy starts afresh).
    static MEMO: RefCell<((i64, u64), Memo)> = RefCell::new(((0, 0), Memo::new(0)));
}

/// Whether identical calls share answers now.
pub fn sharing() -> bool {
    crate::guc::share_answers() && !crate::shared::accounting::dry_running()
}

/// The answer for `key`: the statement's, else (for a deployment that caches) the cache's,
/// counted as served either way.
fn recall(target: &Target, key: &AnswerKey) -> Option<(Kept, Usage)> {
    recall_in(target, key, true)
}

/// `recall`, looking in the cache only when `cached`.
fn recall_in(target: &Target, key: &AnswerKey, cached: bool) -> Option<(Kept, Usage)> {
    let (statement, _, generation) = crate::catalog::stamp();
    let shared = MEMO.with(|m| {
        let mut m = m.borrow_mut();
        if m.0 != (statement, generation) {
            *m = ((statement, generation), Memo::new(crate::guc::max_batch_bytes() / 4));
        }
        if sharing() {
            m.1.get(key).cloned()
        } else {
            None
        }
    });
    if let Some((kept, usage)) = shared {
        target.served(Served::Shared, &usage);
        return Some((kept, usage));
    }
    if !cached || !caches(target) {
        return None;
    }
    let (kept, usage) = cache::lookup(&target.deployment().name, key)?;
    target.served(Served::Cache, &usage);
    if sharing() {
        MEMO.with(|m| m.borrow_mut().1.put(*key, kept.clone(), usage));
    }
    Some((kept, usage))
}

/// Whether `target`'s answers go to the cache now.
pub fn caches(target: &Target) -> bool {
    let d = target.deployment();
    match crate::guc::answer_cache() {
        crate::guc::AnswerCache::Off => false,
        crate::guc::AnswerCache::Deployed => d.cache,
        // Where the deployment could opt in at all (`deploy::check_cacheable`).
        crate::guc::AnswerCache::Embeddings => {
            d.cache
                || (d.spec.task == bailian_core::registry::Task::Embedding
                    && d.spec.provider == bailian_core::registry::Provider::Bailian)
        }
    }
}

/// Keeps an answer for the rest of the statement. Called where a request lands, inside the
/// runtime: it touches nothing of PostgreSQL (the statement's memo was opened by the call's
/// `chat_key`/`embed_key` before it was sent).
fn keep(target: &Target, key: AnswerKey, kept: Kept, usage: Usage) {
    if caches(target) {
        cache::store(&target.deployment().name, &key, &kept, &usage);
    }
    if sharing() {
        MEMO.with(|m| m.borrow_mut().1.put(key, kept, usage));
    }
}

/// The key of a chat call, when answers are shared or cached. A request that searches the
/// web is neither: its answer changes with the web.
pub fn chat_key(target: &Target, request: &ChatRequest) -> Option<AnswerKey> {
    let searches = request.body.get("enable_search") == Some(&serde_json::Value::Bool(true));
    (batch::active()
        || (!searches && (sharing() || (caches(target) && !crate::shared::accounting::dry_running()))))
    .then(|| answers::chat_key(&target.deployment().name, request))
}

/// The key of an embedding input, when answers are shared or cached.
pub fn embed_key(target: &Target, model: &EmbeddingModel, input: &Input) -> Option<AnswerKey> {
    (batch::active() || sharing() || (caches(target) && !crate::shared::accounting::dry_running()))
        .then(|| answers::embed_key(&target.deployment().name, model, input.as_embed_input()))
}

/// The chat answer the statement already has for `key`, counted as served.
pub fn recall_chat(target: &Target, key: Option<&AnswerKey>) -> Option<ChatOutcome> {
    match recall(target, key?)? {
        (Kept::Chat(outcome), _) => Some(outcome),
        (Kept::Vector(_), _) => None,
    }
}

/// The embedding the statement already has for `key`, counted as served, not looking in the
/// cache (the AI Batch node looks there for a whole pack at once: `cached_vectors`).
pub fn recall_shared_vector(target: &Target, key: Option<&AnswerKey>) -> Option<Vec<f32>> {
    match recall_in(target, key?, false)? {
        (Kept::Vector(v), _) => Some(v),
        (Kept::Chat(_), _) => None,
    }
}

/// The cached embeddings of `keys` (one query), each counted as served and kept for the
/// statement.
pub fn cached_vectors(target: &Target, keys: &[AnswerKey]) -> std::collections::HashMap<AnswerKey, Vec<f32>> {
    let mut found = std::collections::HashMap::new();
    if keys.is_empty() || !caches(target) {
        return found;
    }
    for (key, (kept, usage)) in cache::lookup_many(&target.deployment().name, keys) {
        if let Kept::Vector(v) = kept {
            target.served(Served::Cache, &usage);
            if sharing() {
                MEMO.with(|m| m.borrow_mut().1.put(key, Kept::Vector(v.clone()), usage));
            }
            found.insert(key, v);
        }
    }
    found
}

/// The embedding the statement already has for `key`, counted as served.
pub fn recall_vector(target: &Target, key: Option<&AnswerKey>) -> Option<Vec<f32>> {
    match recall(target, key?)? {
        (Kept::Vector(v), _) => Some(v),
        (Kept::Chat(_), _) => None,
    }
}

/// What an answer kept for `key` was billed for (nothing known: zero), for a waiter served
/// by it.
pub fn billed(key: &AnswerKey) -> Usage {
    MEMO.with(|m| m.borrow().1.get(key).map(|(_, u)| *u).unwrap_or_default())
}

/// Keeps a chat answer that arrived.
pub fn keep_chat(target: &Target, key: Option<AnswerKey>, out: &Result<ChatOutcome, bailian_core::AiError>) {
    if let (Some(key), Ok(outcome)) = (key, out) {
        keep(target, key, Kept::Chat(outcome.clone()), outcome.tokens());
    }
}

/// Keeps an embedding that arrived. A packed request reports its tokens for all its inputs
/// together, so one input's share is estimated from its text (as ai_estimate estimates it).
pub fn keep_vector(
    target: &Target,
    key: Option<AnswerKey>,
    model: &EmbeddingModel,
    input: &Input,
    vector: &[f32],
) {
    if let Some(key) = key {
        // An image's tokens cannot be told from its URI: its share is left unknown (0).
        let tokens = match input {
            Input::Text(t) => bailian_core::tokens::count(model.model_type, t, None).tokens,
            Input::Image(_) => 0,
        };
        let usage = Usage { prompt_tokens: tokens, total_tokens: tokens, ..Usage::default() };
        keep(target, key, Kept::Vector(vector.to_vec()), usage);
    }
}
