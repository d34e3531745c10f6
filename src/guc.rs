//! Settings under `pg_bailian.`.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// The chat model `ai_gen(prompt)` uses when more than one is deployed.
pub static DEFAULT_CHAT_MODEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Requests one batch function or procedure keeps in flight.
pub static MAX_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(16);

pub fn register() {
    GucRegistry::define_string_guc(
        c"pg_bailian.default_chat_model",
        c"Deployed chat model used by ai_gen(prompt).",
        c"Needed only when more than one chat model is deployed; with exactly one, that one is used.",
        &DEFAULT_CHAT_MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_bailian.max_concurrency",
        c"Requests a batch function or column procedure keeps in flight at once.",
        c"Per backend and per statement. Bailian's own rate limits still apply.",
        &MAX_CONCURRENCY,
        1,
        256,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub fn default_chat_model() -> Option<String> {
    DEFAULT_CHAT_MODEL
        .get()
        .and_then(|s| s.into_string().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub fn max_concurrency() -> usize {
    MAX_CONCURRENCY.get().clamp(1, 256) as usize
}
