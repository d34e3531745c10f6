//! Settings under `pg_bailian.`.
//!
//! The security settings are superuser-only (`PGC_SUSET`, or `PGC_SIGHUP` for the master key
//! file, which must be the same for every session of the cluster): they bound what a role
//! that may deploy models can make the server read and where it may send it.

use bailian_core::policy::{HostList, NameList, Policy};
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// The chat model `ai_gen(prompt)` uses when more than one is deployed.
pub static DEFAULT_CHAT_MODEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Requests one batch function or procedure keeps in flight.
pub static MAX_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(16);

/// Whether queries batch the AI calls of their target lists (see `executor`).
pub static BATCH_EXECUTION: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Rows an AI Batch node reads ahead at most.
pub static MAX_READ_AHEAD: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Largest response body read from the provider, in kB.
pub static MAX_RESPONSE_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);

/// The memory a backend's AI calls may hold at once, in kB (superuser-only): half for the
/// rows an AI Batch node reads ahead (with their requests and answers), half for the answers
/// being read.
pub static MAX_BATCH_MEMORY_KB: GucSetting<i32> = GucSetting::<i32>::new(256 * 1024);

// The two defaults below repeat bailian_core::policy::DEFAULT_ENV_KEYS / DEFAULT_HOSTS (a
// GUC default must be a C string constant); pgrx-tests checks that they agree.
pub static ALLOWED_ENV_KEYS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"DASHSCOPE_API_KEY, PG_BAILIAN_*"));

pub static ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(
    c"dashscope.aliyuncs.com, dashscope-intl.aliyuncs.com, dashscope-us.aliyuncs.com, *.opensearch.aliyuncs.com",
));

/// What an AI function does when its row's inference fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
pub enum OnErrorSetting {
    #[name = c"error"]
    Error,
    #[name = c"null"]
    Null,
}

pub static ON_ERROR: GucSetting<OnErrorSetting> = GucSetting::<OnErrorSetting>::new(OnErrorSetting::Error);

/// Which deployments' answers the answer cache keeps and gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
pub enum AnswerCache {
    /// None: every call is sent.
    #[name = c"off"]
    Off,
    /// Those deployed with cache => true.
    #[name = c"deployed"]
    Deployed,
    /// Those, and every embedding deployment (an embedding depends only on its input).
    #[name = c"embeddings"]
    Embeddings,
}

pub static KEY_DIRECTORY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub static MASTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Capacities of the shared state (`shared_preload_libraries`), fixed at server start.
pub static MAX_RATE_BUCKETS: GucSetting<i32> = GucSetting::<i32>::new(256);
pub static MAX_USAGE_ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static MAX_BUDGETS: GucSetting<i32> = GucSetting::<i32>::new(100);

/// Whether usage counters and budget spending are saved at shutdown and read back at start.
pub static SAVE_USAGE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Whether calls are counted in ai_usage and ai_activity (budgets and limits hold either way).
pub static TRACK_USAGE: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static SHARE_ANSWERS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static ANSWER_CACHE: GucSetting<AnswerCache> = GucSetting::<AnswerCache>::new(AnswerCache::Deployed);
pub static CACHE_TTL: GucSetting<i32> = GucSetting::<i32>::new(30 * 24 * 3600);
pub static CACHE_MAX_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// Whether deployments without limits get Bailian's documented ones.
pub static DOCUMENTED_LIMITS: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Qwen's vocabulary for `ai_count_tokens` (superuser-only: the server reads the file).
pub static TOKENIZER_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The name of the master key file in the data directory when `pg_bailian.master_key_file`
/// is not set.
pub const DEFAULT_MASTER_KEY_FILE: &str = "pg_bailian.master.key";

pub fn register() {
    GucRegistry::define_string_guc(
        c"pg_bailian.default_chat_model",
        c"Deployed chat model used by ai_gen(prompt), before the default ai_set_default_model set.",
        c"Needed only when more than one chat model is deployed and no default is set; with exactly one, that one is used.",
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
    GucRegistry::define_bool_guc(
        c"pg_bailian.batch_execution",
        c"Runs the AI calls of a query's rows concurrently, reading rows ahead.",
        c"Off: every call runs row by row, as a plain function call. Applies to queries planned or started while it is set.",
        &BATCH_EXECUTION,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_bailian.max_read_ahead",
        c"Rows an AI Batch node reads ahead at most.",
        c"The read-ahead window is pg_bailian.max_concurrency requests (embeddings packed per request) times two, capped by this.",
        &MAX_READ_AHEAD,
        1,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_bailian.max_response_size",
        c"Largest response body accepted from the provider.",
        c"A larger answer is an error (SQLSTATE ZBM02) and is not read further. Above half of pg_bailian.max_batch_memory (superuser-only) it has no effect.",
        &MAX_RESPONSE_SIZE_KB,
        64,
        1024 * 1024,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pg_bailian.max_batch_memory",
        c"Memory a backend's AI calls may hold at once: rows read ahead with their requests, and answers being read.",
        c"Superuser-only, so that no role can make a backend hold more. Half bounds the rows an AI Batch node reads ahead (at least one row is always read), half the answers being read at once; one answer is also at most half (pg_bailian.max_response_size above that has no effect).",
        &MAX_BATCH_MEMORY_KB,
        1024,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_enum_guc(
        c"pg_bailian.on_error",
        c"What an AI function returns when its row's request or answer fails: error or null.",
        c"error (the default) raises the error; null returns NULL and raises a WARNING naming the error. Only failures of the row's inference (the service refused or failed the request after retries, or the answer is unusable); bad arguments and unknown models always raise. ai_gen_structured's on_error argument overrides it.",
        &ON_ERROR,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_bailian.allowed_env_keys",
        c"Environment variables an 'env:NAME' API key may read.",
        c"Comma-separated names; a name ending in * is a prefix; * alone allows any.",
        &ALLOWED_ENV_KEYS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_bailian.allowed_hosts",
        c"Hosts a non-superuser may name in ai_deploy_model's base_url.",
        c"Comma-separated host names or addresses, *.domain for its subdomains, each optionally with :port.",
        &ALLOWED_HOSTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_bailian.key_directory",
        c"Directory that 'file:/path' API keys must be in.",
        c"Empty disables file: keys.",
        &KEY_DIRECTORY,
        GucContext::Suset,
        GucFlags::default(),
    );
    // Settings fixed at server start may only be defined while preloading (PostgreSQL refuses
    // PGC_POSTMASTER variables later); without preloading the state is per backend and small.
    // SAFETY: a plain read of a flag the postmaster sets while it loads the preload libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_int_guc(
            c"pg_bailian.max_rate_buckets",
            c"Rate-limit buckets the shared state holds: one per (API key, model, host) in use.",
            c"Needs shared_preload_libraries = 'pg_bailian'. Past it, a new bucket is limited in each backend alone (with a WARNING).",
            &MAX_RATE_BUCKETS,
            1,
            100_000,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"pg_bailian.max_usage_entries",
            c"Rows of ai_usage the shared state holds: one per database, role, model and function.",
            c"Past it, new combinations are counted in one overflow row (function '(other)').",
            &MAX_USAGE_ENTRIES,
            1,
            1_000_000,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"pg_bailian.max_budgets",
            c"Budgets (ai_set_budget) the whole cluster may have.",
            c"ai_set_budget refuses a new budget past it.",
            &MAX_BUDGETS,
            1,
            100_000,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_bool_guc(
        c"pg_bailian.save_usage",
        c"Save ai_usage counters and budget spending at a clean shutdown and read them back at start.",
        c"As pg_stat_statements.save: a crash, or an immediate stop (pg_ctl stop -m immediate, which is one), loses what was counted since the last start.",
        &SAVE_USAGE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_bailian.share_answers",
        c"Send identical AI calls of one statement or job once and give every row the same answer.",
        c"Calls are identical when their deployment, endpoint and whole request (model, parameters, input) are; ai_usage counts the others as shared_calls. Off: every call sends its own request (for several samples of one prompt at a temperature above 0).",
        &SHARE_ANSWERS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_bailian.answer_cache",
        c"Which deployments' calls use the answer cache: deployed (those made with cache => true), embeddings (those and every embedding deployment) or off.",
        c"Off: calls neither read nor keep cached answers. SET LOCAL for one transaction, ALTER FUNCTION ... SET for one function.",
        &ANSWER_CACHE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_bailian.cache_ttl",
        c"How long an answer stays in the answer cache.",
        c"Set when the answer is kept; a later change applies to answers kept after it.",
        &CACHE_TTL,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_bailian.cache_max_size",
        c"The most the answer cache of a database holds; past it the oldest answers go.",
        c"Checked when answers are moved into bailian.answer_cache, at most once a minute per session, and by ai_cache_clear.",
        &CACHE_MAX_SIZE_KB,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_bool_guc(
        c"pg_bailian.track_usage",
        c"Count AI calls in ai_usage and ai_activity.",
        c"Budgets, rate limits and EXPLAIN ANALYZE's counts hold either way.",
        &TRACK_USAGE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_bailian.documented_limits",
        c"Give deployments without requests_per_minute/tokens_per_minute Bailian's documented limits for their model and region.",
        c"Applies to Bailian's own hosts (a region, not a base_url) and to OpenSearch (3 requests/s per service); ai_rate_limits shows what each deployment gets.",
        &DOCUMENTED_LIMITS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_bailian.master_key_file",
        c"File holding the master key that encrypts stored API keys.",
        c"Empty: pg_bailian.master.key in the data directory, created on first use with mode 0600.",
        &MASTER_KEY_FILE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_bailian.tokenizer_file",
        c"Qwen's BPE vocabulary (qwen.tiktoken of the dashscope Python package) that ai_count_tokens counts Qwen models' tokens with.",
        c"Empty: extension/pg_bailian/qwen.tiktoken in the server's share directory, where the install scripts put it. Read once per session, again when the setting changes.",
        &TOKENIZER_FILE,
        GucContext::Suset,
        GucFlags::default(),
    );
}

fn text(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().and_then(|s| s.into_string().ok()).map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

pub fn default_chat_model() -> Option<String> {
    text(&DEFAULT_CHAT_MODEL)
}

pub fn max_concurrency() -> usize {
    MAX_CONCURRENCY.get().clamp(1, 256) as usize
}

pub fn batch_execution() -> bool {
    BATCH_EXECUTION.get()
}

pub fn on_error_null() -> bool {
    ON_ERROR.get() == OnErrorSetting::Null
}

pub fn max_read_ahead() -> usize {
    MAX_READ_AHEAD.get().clamp(1, 100_000) as usize
}

/// `pg_bailian.max_batch_memory` in bytes.
pub fn max_batch_bytes() -> u64 {
    u64::try_from(MAX_BATCH_MEMORY_KB.get()).unwrap_or(1024).max(1024) * 1024
}

/// The share of `max_batch_memory` for the rows an AI Batch node reads ahead.
pub fn window_budget() -> u64 {
    max_batch_bytes() / 2
}

/// The share of `max_batch_memory` for the answers being read at once.
pub fn answers_budget() -> u64 {
    max_batch_bytes() / 2
}

/// The largest answer read: `pg_bailian.max_response_size`, at most the answers' share of
/// `pg_bailian.max_batch_memory` (a role may raise the one, not the other).
pub fn max_response_bytes() -> u64 {
    (u64::try_from(MAX_RESPONSE_SIZE_KB.get()).unwrap_or(64) * 1024).min(answers_budget())
}

/// The deploy policy of this session.
pub fn policy() -> Policy {
    Policy {
        env_keys: NameList::parse(&text(&ALLOWED_ENV_KEYS).unwrap_or_default()),
        key_directory: text(&KEY_DIRECTORY).map(PathBuf::from),
        hosts: HostList::parse(&text(&ALLOWED_HOSTS).unwrap_or_default()),
    }
}

/// Where the master key lives: the setting, else the data directory.
pub fn master_key_file() -> PathBuf {
    if let Some(path) = text(&MASTER_KEY_FILE) {
        return PathBuf::from(path);
    }
    // SAFETY: DataDir is set once at backend start-up, before any function can run, and is a
    // NUL-terminated absolute path that lives for the whole process.
    let data_dir = unsafe { CStr::from_ptr(pgrx::pg_sys::DataDir) };
    PathBuf::from(data_dir.to_string_lossy().into_owned()).join(DEFAULT_MASTER_KEY_FILE)
}

/// The capacities of the shared state, from the settings read at server start.
pub fn capacities(backends: u32) -> bailian_core::shared::Capacities {
    bailian_core::shared::Capacities {
        buckets: MAX_RATE_BUCKETS.get().max(1) as u32,
        usage_entries: MAX_USAGE_ENTRIES.get().max(1) as u32,
        budgets: MAX_BUDGETS.get().max(1) as u32,
        backends: backends.max(1),
    }
}

pub fn save_usage() -> bool {
    SAVE_USAGE.get()
}

pub fn documented_limits() -> bool {
    DOCUMENTED_LIMITS.get()
}

pub fn share_answers() -> bool {
    SHARE_ANSWERS.get()
}

pub fn answer_cache() -> AnswerCache {
    ANSWER_CACHE.get()
}

pub fn cache_ttl_secs() -> i64 {
    i64::from(CACHE_TTL.get().max(1))
}

pub fn cache_max_bytes() -> u64 {
    u64::try_from(CACHE_MAX_SIZE_KB.get()).unwrap_or(0) * 1024
}

pub fn track_usage() -> bool {
    TRACK_USAGE.get()
}

/// Where Qwen's vocabulary is read from, and whether that is the default (the setting empty).
pub fn tokenizer_file() -> (PathBuf, bool) {
    match text(&TOKENIZER_FILE) {
        Some(path) => (PathBuf::from(path), false),
        None => (default_tokenizer_file(), true),
    }
}

/// `extension/pg_bailian/qwen.tiktoken` in the share directory, found as PostgreSQL finds it
/// (relative to the server's executable, so a relocated installation finds its own).
pub fn default_tokenizer_file() -> PathBuf {
    let mut buf = [0 as std::ffi::c_char; pgrx::pg_sys::MAXPGPATH as usize];
    // SAFETY: my_exec_path is set at backend start-up, before any function can run, and is a
    // NUL-terminated path; get_share_path writes at most MAXPGPATH bytes, NUL included.
    let share = unsafe {
        pgrx::pg_sys::get_share_path((&raw const pgrx::pg_sys::my_exec_path).cast(), buf.as_mut_ptr());
        CStr::from_ptr(buf.as_ptr())
    };
    PathBuf::from(share.to_string_lossy().into_owned())
        .join("extension")
        .join("pg_bailian")
        .join(bailian_core::tokens::VOCABULARY_FILE)
}
