//! The stand-in's configuration, scripted faults, counters and request log, and the state
//! every request shares (limits, usage, cache, the Batch File API's files and batches).

use crate::batches::clock::Clock;
use crate::batches::store::Batches;
use crate::cache::ImplicitCache;
use crate::embedding::fnv1a;
use crate::files::store::Files;
use crate::limits::Limits;
use crate::usage::{key_hint, UsageBook};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Added to every model request before it is answered.
    pub latency_ms: u64,
    /// Share of model requests answered 500 internal_error, at random.
    pub fail_rate_500: f64,
    /// Share of model requests answered 429 limit_requests, at random.
    pub fail_rate_429: f64,
    /// Retry-After seconds sent with the faults' 429 answers (None: no header). When set,
    /// the limits' 429s carry one too: the seconds until the window that refused has room,
    /// rounded up. Bailian documents no Retry-After, nor any rate-limit header (research
    /// §2.4); this is for testing clients that honour one.
    pub retry_after_secs: Option<f64>,
    /// Requests per minute per (key, model), refused with 429 limit_requests
    /// (Throttling.RateQuota in the native shapes): a sliding 60-second window, and per
    /// second a bucket of RPM/60 requests refilled at that rate. See `limits`.
    pub rpm_limit: Option<u32>,
    /// Tokens per minute per (key, model), input plus output (embeddings and rerank: input),
    /// refused with 429 insufficient_quota (Throttling.AllocationQuota): sliding 60-second
    /// and 1-second windows of answered requests' tokens, refusing once a window holds
    /// TPM, or TPM/60 per second.
    pub tpm_limit: Option<u32>,
    /// Implicit context cache for the models the context-cache page lists: a prompt that
    /// begins with 256 tokens or more of an earlier one (same key, same model) reports them
    /// as `prompt_tokens_details.cached_tokens`. See `cache`.
    pub implicit_cache: bool,
    /// Keys that authenticate; None accepts any `sk-` key.
    pub accepted_keys: Option<Vec<String>>,
    /// Models answered 404 model_not_found.
    pub unavailable_models: Vec<String>,
    /// Repeat the presented key in 401 messages, as some providers do, to test redaction.
    pub echo_key_in_errors: bool,
    /// Keep request bodies in the log (benchmarks turn this off to save memory).
    pub log_bodies: bool,
    /// Seed of the random faults, so a run is repeatable.
    pub seed: u64,
    /// Pause between the events of a streamed answer, so a client sees them arrive apart.
    pub stream_chunk_delay_ms: u64,
    /// Play Bailian's Batch Chat host (`batch.dashscope.aliyuncs.com`, research §1.13): the
    /// same compatible-mode chat, for the models that host serves (`models::batch_chat`),
    /// counted as batch usage (half price) and not refused by the live rate limits (the host
    /// queues requests instead). Embeddings, the native and OpenSearch paths, and the Batch
    /// File API (`/files`, `/batches`, served by the normal host) answer 404 there.
    pub batch_chat: bool,
    /// The largest file `POST /files` takes: 500 MB for purpose batch (research §1.2). Decimal
    /// megabytes: the docs do not say which, and the smaller is the one a client must keep to.
    pub max_file_bytes: u64,
    /// Most requests (lines) in a batch input file: 50,000 (research §1.3).
    pub max_batch_lines: u64,
    /// The largest line of a batch input file: 1 MB in the newer docs (S3; S1 said 6 MB).
    pub max_batch_line_bytes: u64,
    /// How long an hour of the batch service's clock lasts, in real milliseconds: 3,600,000
    /// is real time. A batch's phases and its completion window run on that clock (see
    /// `batches::clock`), so with 10 a "24h" window passes in 240 ms.
    pub batch_hour_ms: f64,
    /// Service seconds a batch spends `validating` before it is checked.
    pub batch_validating_secs: f64,
    /// Service seconds a batch waits `in_progress` before its first line runs: Bailian
    /// schedules batches when it has room (a two-line batch queued about 2.4 h, S17).
    pub batch_queued_secs: f64,
    /// Service seconds each line takes.
    pub batch_line_secs: f64,
    /// Service seconds in `finalizing` (and in `cancelling`) before the batch ends.
    pub batch_finalizing_secs: f64,
    /// New batches stay `in_progress`, no line run, until released
    /// (`Standin::release_batches`, `POST /_standin/batches/release`) or until this is
    /// turned off: a client can be tested leaving while Bailian works and collecting later.
    /// The completion window still runs.
    pub batch_hold: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            latency_ms: 0,
            fail_rate_500: 0.0,
            fail_rate_429: 0.0,
            retry_after_secs: None,
            rpm_limit: None,
            tpm_limit: None,
            implicit_cache: true,
            accepted_keys: None,
            unavailable_models: Vec::new(),
            echo_key_in_errors: false,
            log_bodies: true,
            seed: 42,
            stream_chunk_delay_ms: 0,
            batch_chat: false,
            max_file_bytes: 500_000_000,
            max_batch_lines: 50_000,
            max_batch_line_bytes: 1_000_000,
            batch_hour_ms: 3_600_000.0,
            batch_validating_secs: 1.0,
            batch_queued_secs: 0.0,
            batch_line_secs: 0.05,
            batch_finalizing_secs: 1.0,
            batch_hold: false,
        }
    }
}

/// A scripted answer for one request. In JSON (`POST /_standin/script`), serde's external
/// tagging: `"inspection"`, `{"status": 500}`, `{"oversized": {"bytes": 1048577,
/// "content_length": false}}`, `{"rate_limited_raw": {"retry_after": "soon"}}`, ...
///
/// The faults after `Reset` model answers a client must not trust: Bailian documents none of
/// them, but whatever answers at base_url (a gateway, a proxy, a misconfigured or hostile
/// endpoint) can send them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// An error status with the realistic body for it (400, 401, 404, 429, 500, 503, ...).
    Status(u16),
    /// 429 limit_requests with this Retry-After (seconds).
    RateLimited { retry_after_secs: f64 },
    /// 400 data_inspection_failed (content moderation).
    Inspection,
    /// Never answer (until the client goes away).
    Hang,
    /// Answer normally after this many extra milliseconds.
    Delay(u64),
    /// 200 with a body that is not JSON.
    Malformed,
    /// Close the connection without answering.
    Reset,
    /// 200 with the normal answer padded to `bytes` bytes of valid JSON (or its own size, when
    /// that is larger): chat pads the content, OpenSearch `result.text`, embeddings (both
    /// kinds) add a `x_standin_padding` string. The body is generated as it is sent, so 1 GB
    /// costs nothing until a client reads it. With `content_length` the length is declared;
    /// without, it is sent chunked. Models a runaway generation, a gateway answering with a
    /// huge page, an endpoint that never stops. A streamed answer is sent as is.
    Oversized { bytes: u64, content_length: bool },
    /// A chat (or OpenSearch) answer whose text carries a NUL (`\u0000` in the JSON) in the
    /// middle, as a model can emit when asked to echo binary-looking data. Embeddings and
    /// streamed answers are sent as is.
    NulInContent,
    /// An embeddings answer (compatible or native) whose last vector ends with the number
    /// written as `literal` in the JSON text (e.g. `1e39`, which parses as f64 and overflows
    /// f32; JSON has no NaN). Models a provider-side numeric fault or a proxy that rewrites
    /// numbers. Chat answers normally.
    NonFiniteEmbedding { literal: String },
    /// 429 limit_requests with this exact Retry-After header value, whatever it is: a huge
    /// number, a negative one, an HTTP-date, garbage. A value that cannot be a header value
    /// (a control character) is left out, and the log says so.
    RateLimitedRaw { retry_after: String },
    /// A redirect (301, 302, 303, 307, 308; anything outside 3xx becomes 302) to `location`,
    /// with a small HTML body as web servers send. Models an http-to-https redirect, a moved
    /// endpoint, or a gateway's login page in front of base_url.
    Redirect { status: u16, location: String },
    /// A streamed answer (`"stream": true`) that sends its first `after` events and then drops
    /// the connection without ending the chunked body: what a client sees when a gateway or
    /// the network cuts a long generation. A request that does not stream answers normally.
    StreamBreak { after: usize },
    /// A streamed answer that sends its first `after` events, then an error event and no
    /// `[DONE]`: Bailian's output moderation stopping a generation already under way (the
    /// documented `data_inspection_failed`, "Output data may contain inappropriate content.").
    /// OpenSearch streams end the same way with an error in their own shape. A request that
    /// does not stream answers normally.
    StreamError { after: usize },
    /// A non-streamed chat answer to a request with a JSON `response_format` whose content is
    /// not JSON: a model that ignored the format, chatting before the object ("Sure! ") and
    /// cut by max_tokens before its last character, with `finish_reason` "length". Bailian
    /// guarantees valid JSON; a gateway to another model, or a model Bailian does not
    /// constrain, does not. Other requests answer normally.
    NotJson,
    /// A non-streamed chat answer to a json_schema request in which every string the schema
    /// confines to an `enum` has a value outside it ("other"). Other requests answer normally.
    OffList,
    /// A non-streamed chat answer to a json_schema request whose top-level object lacks its
    /// first `required` property and has one the schema does not describe
    /// (`"unexpected": true`). Other requests answer normally.
    SchemaViolation,
}

/// One request as the stand-in saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoggedRequest {
    pub id: u64,
    pub path: String,
    pub model: String,
    /// The presented key as a hint (`sk-...abcd`), never the key.
    pub auth_hint: String,
    pub inputs: Vec<String>,
    pub body: Value,
    /// HTTP status answered; 0 when the client went away first or the connection was reset.
    pub status: u16,
    pub fault: Option<String>,
    /// Milliseconds since the stand-in started.
    pub received_ms: f64,
    pub finished_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    /// Compatible-mode chat and OpenSearch text generation (this one and the three below:
    /// requests the rate limits let through).
    pub chat_requests: u64,
    /// Compatible-mode and native multimodal embeddings.
    pub embedding_requests: u64,
    /// Native text rerank.
    #[serde(default)]
    pub rerank_requests: u64,
    /// Inputs received: one per chat or OpenSearch request, one per embedding input (text,
    /// image or video), the query and each document of a rerank request.
    pub inputs: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// 429s given by the rate limits, requests and tokens (not by fault injection);
    /// `Standin::usage` splits them per model, key and limit.
    pub rate_limited: u64,
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub peak_connections_open: u64,
    /// Requests whose client went away before the answer.
    pub aborted: u64,
    /// Requests being handled right now.
    pub in_flight: u64,
    /// The most requests handled at once.
    pub peak_in_flight: u64,
    /// Bytes of `Fault::Oversized` bodies handed to connections: at most what clients read
    /// plus the sockets' buffers, so tests can tell a client stopped reading early.
    #[serde(default)]
    pub oversized_bytes_sent: u64,
    /// Files `POST /files` stored.
    #[serde(default)]
    pub files_uploaded: u64,
    /// Batches `POST /batches` created.
    #[serde(default)]
    pub batches_created: u64,
    /// Lines of batches answered (each once, whatever became of its batch).
    #[serde(default)]
    pub batch_lines_run: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub chat_requests: AtomicU64,
    pub embedding_requests: AtomicU64,
    pub rerank_requests: AtomicU64,
    pub inputs: AtomicU64,
    pub rate_limited: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    pub peak_connections_open: AtomicU64,
    pub aborted: AtomicU64,
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    pub oversized_bytes_sent: AtomicU64,
    pub files_uploaded: AtomicU64,
    pub batches_created: AtomicU64,
    pub batch_lines_run: AtomicU64,
}

pub(crate) struct Shared {
    pub config: Mutex<Config>,
    pub counters: Counters,
    pub by_status: Mutex<BTreeMap<u16, u64>>,
    pub log: Mutex<Vec<LoggedRequest>>,
    scripts: Mutex<HashMap<String, VecDeque<Fault>>>,
    pub limits: Limits,
    pub usage: UsageBook,
    pub cache: ImplicitCache,
    pub files: Files,
    pub batches: Batches,
    /// The batch service's clock (`batches::clock`).
    pub clock: Clock,
    rng: Mutex<u64>,
    token_seed: u64,
    pub started: Instant,
    next_id: AtomicU64,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        let seed = config.seed;
        let clock = Clock::new(config.batch_hour_ms);
        Shared {
            config: Mutex::new(config),
            counters: Counters::default(),
            by_status: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Vec::new()),
            scripts: Mutex::new(HashMap::new()),
            limits: Limits::default(),
            usage: UsageBook::default(),
            cache: ImplicitCache::default(),
            files: Files::default(),
            batches: Batches::default(),
            clock,
            rng: Mutex::new(seed),
            token_seed: splitmix(seed),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Now on the batch service's clock, in (fractional) Unix seconds.
    pub fn service_now(&self) -> f64 {
        let hour_ms = self.config.lock().unwrap().batch_hour_ms;
        self.clock.now(hour_ms)
    }

    /// Now on the batch service's clock, in whole Unix seconds (the API's timestamps).
    pub fn service_secs(&self) -> u64 {
        self.service_now() as u64
    }

    /// `len` lower-case hex digits (at most 32), different every time: the tails of the ids
    /// of files, batches and batch lines. Two rounds of splitmix64 over a counter, which is a
    /// bijection, so the first 16 digits alone never repeat.
    pub fn token(&self, len: usize) -> String {
        let n = self.next_id();
        let (a, b) = (splitmix(n ^ self.token_seed), splitmix(!n ^ self.token_seed));
        let mut hex = format!("{a:016x}{b:016x}");
        hex.truncate(len.min(32));
        hex
    }

    pub fn ms_since_start(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    pub fn script(&self, input: &str, faults: Vec<Fault>) {
        self.scripts.lock().unwrap().insert(input.to_string(), faults.into());
    }

    /// The next scripted fault for the first input that has one left.
    pub fn take_scripted(&self, inputs: &[String]) -> Option<Fault> {
        let mut scripts = self.scripts.lock().unwrap();
        if scripts.is_empty() {
            return None;
        }
        inputs.iter().find_map(|i| scripts.get_mut(i).and_then(VecDeque::pop_front))
    }

    /// A uniform number in [0, 1) from the seeded sequence.
    pub fn random(&self) -> f64 {
        let mut s = self.rng.lock().unwrap();
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (splitmix(*s) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn count_status(&self, status: u16) {
        *self.by_status.lock().unwrap().entry(status).or_default() += 1;
    }

    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        let c = &self.counters;
        c.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let open = c.connections_open.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_connections_open.fetch_max(open, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    pub fn stats(&self) -> StatsSnapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: get(&c.requests),
            chat_requests: get(&c.chat_requests),
            embedding_requests: get(&c.embedding_requests),
            rerank_requests: get(&c.rerank_requests),
            inputs: get(&c.inputs),
            by_status: self.by_status.lock().unwrap().clone(),
            rate_limited: get(&c.rate_limited),
            connections_accepted: get(&c.connections_accepted),
            connections_open: get(&c.connections_open),
            peak_connections_open: get(&c.peak_connections_open),
            aborted: get(&c.aborted),
            in_flight: get(&c.in_flight),
            peak_in_flight: get(&c.peak_in_flight),
            oversized_bytes_sent: get(&c.oversized_bytes_sent),
            files_uploaded: get(&c.files_uploaded),
            batches_created: get(&c.batches_created),
            batch_lines_run: get(&c.batch_lines_run),
        }
    }

    pub fn reset(&self) {
        let c = &self.counters;
        for a in [
            &c.requests,
            &c.chat_requests,
            &c.embedding_requests,
            &c.rerank_requests,
            &c.inputs,
            &c.rate_limited,
            &c.connections_accepted,
            &c.aborted,
            &c.oversized_bytes_sent,
            &c.files_uploaded,
            &c.batches_created,
            &c.batch_lines_run,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        c.peak_connections_open.store(c.connections_open.load(Ordering::Relaxed), Ordering::Relaxed);
        c.peak_in_flight.store(c.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        self.by_status.lock().unwrap().clear();
        self.log.lock().unwrap().clear();
        self.scripts.lock().unwrap().clear();
        self.limits.clear();
        self.usage.clear();
        self.cache.clear();
        // A batch still running finds itself gone and stops.
        self.batches.clear();
        self.files.clear();
    }
}

/// splitmix64's output function: a bijection of u64 that scatters neighbouring inputs.
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Who a request comes from. The stand-in has no accounts: a key is its account, kept only as
/// a hash (for files and batches, which belong to the account that made them) and shown as
/// its hint (in the usage book).
#[derive(Clone, Debug)]
pub(crate) struct Account {
    pub id: u64,
    pub hint: String,
}

impl Account {
    pub fn of(key: &str) -> Account {
        Account { id: fnv1a(key.as_bytes()), hint: key_hint(key) }
    }
}

pub(crate) struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}
