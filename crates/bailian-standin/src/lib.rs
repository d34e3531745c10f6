//! A stand-in for the Alibaba Cloud Model Studio (Bailian) APIs pg_bailian calls, on loopback,
//! for tests, benchmarks and the demo:
//!
//! - compatible mode under [`Standin::base_url`]: `POST /compatible-mode/v1/chat/completions`
//!   (whole answers, or `"stream": true` server-sent events with reasoning and Qwen-Omni audio
//!   chunks) and `POST /compatible-mode/v1/embeddings`;
//! - DashScope's native multimodal embedding and text rerank under [`Standin::root_url`]:
//!   `POST /api/v1/services/embeddings/multimodal-embedding/multimodal-embedding` and
//!   `POST /api/v1/services/rerank/text-rerank/text-rerank`;
//! - OpenSearch's text generation, also under [`Standin::root_url`]:
//!   `POST /v3/openapi/workspaces/{workspace}/text-generation/{service_id}`;
//! - the Batch File API under [`Standin::base_url`]: `/files` (multipart upload, retrieve,
//!   list, delete, `/files/{id}/content`) and `/batches` (create, retrieve, list,
//!   `/batches/{id}/cancel`). A batch checks its input file as Bailian documents, answers
//!   each line as the live endpoint answers the same body, and writes output and error files;
//!   it runs by itself on a clock a test can speed up (`Config::batch_hour_ms`), and a test
//!   can hold it in progress, release, expire or fail it ([`Standin::release_batches`],
//!   [`Standin::expire_batch`], [`Standin::fail_batch`]). Its usage is booked as batch work,
//!   apart from live requests ([`Billing`]), and not limited by the live rate limits;
//! - Bailian's Batch Chat host when [`Config::batch_chat`] is set: compatible-mode chat for
//!   the models that host serves, booked as batch work.
//!
//! It answers with the documented success and error bodies (each API in its own shape) and
//! refuses what Bailian documents it refuses (stream-only models without `stream`, thinking
//! without `stream`, parameters out of range, misplaced messages, unknown voices, images it
//! cannot read, ...). Content is deterministic so tests can assert on it: [`chat_reply`],
//! [`reasoning_reply`], [`embedding_for`], [`image_embedding_for`], [`audio_pcm`]; a streamed
//! answer concatenates to exactly the whole one; a `response_format` json_schema gets the
//! instance a strict model would derive from the prompt (enums named by the text, fields
//! extracted, entities masked, scores and summaries; see `structured`); rerank scores are
//! the share of query words a document has. Around that: configurable latency and pause
//! between stream events, faults by rate or scripted per input (including answers no client
//! should trust: oversized bodies, NUL in text, numbers beyond f32, any Retry-After,
//! redirects, streams that break or end in an error, structured output that is not JSON or
//! breaks its schema), Bailian's rate limits per key and model (requests and tokens, per
//! minute and per second, refused with the documented 429s; see `limits`), implicit context
//! cache (`cache`), and counters, a request log and per-model usage that tests read (in
//! process through [`Standin`], or over HTTP under `/_standin/`: `stats`, `requests`,
//! `usage`, and for batches `batches/{id}`, `batches/release`, `batches/{id}/expire`,
//! `batches/{id}/fail`).
//!
//! It plays the provider, so it keeps its own notion of models and limits rather than
//! sharing pg_bailian's registry: a disagreement between the two is what tests should catch.

mod audio;
mod b64;
mod batches;
mod cache;
mod chat;
mod embedding;
mod errors;
mod faults;
mod files;
mod handler;
mod limits;
mod models;
mod multimodal;
mod multipart;
mod opensearch;
mod query;
mod request;
mod rerank;
mod state;
mod stream;
mod structured;
mod tokens;
mod usage;

pub use audio::{audio_pcm, AUDIO_SAMPLE_RATE};
pub use chat::{chat_reply, reasoning_reply, translation_reply};
pub use embedding::{embedding_for, image_embedding_for};
pub use state::{Config, Fault, LoggedRequest, StatsSnapshot};
pub use usage::{key_hint, Billing, ModelUsage, Tokens, UsageRow};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running stand-in. Dropping it stops the server.
pub struct Standin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Standin {
    /// Starts on a free loopback port.
    pub fn start(config: Config) -> std::io::Result<Standin> {
        Standin::start_on("127.0.0.1:0", config)
    }

    /// Starts on `addr` in a thread of its own with its own runtime, so synchronous tests can
    /// use it while they block on PostgreSQL.
    pub fn start_on(addr: &str, config: Config) -> std::io::Result<Standin> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let (tx, rx) = oneshot::channel();
        let server_shared = shared.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bailian-standin")
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new().name("bailian-standin".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                serve(listener, server_shared, rx).await;
            });
            // Connections still open (a held request) must not keep the test process waiting.
            runtime.shutdown_background();
        })?;
        Ok(Standin { addr, shared, shutdown: Some(tx), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `base_url` to deploy compatible-mode models with.
    pub fn base_url(&self) -> String {
        format!("http://{}/compatible-mode/v1", self.addr)
    }

    /// `http://addr`: the host of the native DashScope paths (`/api/v1/...`) and of
    /// OpenSearch's (`/v3/openapi/...`).
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn configure(&self, f: impl FnOnce(&mut Config)) {
        f(&mut self.shared.config.lock().unwrap());
    }

    pub fn config(&self) -> Config {
        self.shared.config.lock().unwrap().clone()
    }

    /// The next requests whose input is exactly `input` get these faults, one per request;
    /// after that they succeed.
    pub fn script(&self, input: &str, faults: Vec<Fault>) {
        self.shared.script(input, faults);
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats()
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// What was counted per model and key hint, ordered by model then hint.
    pub fn usage(&self) -> Vec<UsageRow> {
        self.shared.usage.rows()
    }

    /// What live requests counted for `model` (for OpenSearch, the service id) and the key
    /// whose [`key_hint`] is `key_hint`; all zero if nothing was.
    pub fn usage_of(&self, model: &str, key_hint: &str) -> ModelUsage {
        self.shared.usage.of(model, key_hint, Billing::Live)
    }

    /// What live requests counted for every model and key together.
    pub fn usage_total(&self) -> ModelUsage {
        self.shared.usage.total(Billing::Live)
    }

    /// What batch work counted for `model` and the key whose [`key_hint`] is `key_hint`, at
    /// the batch price: the lines of ended batches, and the Batch Chat host's requests.
    pub fn batch_usage_of(&self, model: &str, key_hint: &str) -> ModelUsage {
        self.shared.usage.of(model, key_hint, Billing::Batch)
    }

    /// What batch work counted for every model and key together.
    pub fn batch_usage_total(&self) -> ModelUsage {
        self.shared.usage.total(Billing::Batch)
    }

    /// The batch object of `id` as `GET /batches/{id}` shows it to its owner; None if there
    /// is no such batch.
    pub fn batch(&self, id: &str) -> Option<serde_json::Value> {
        self.shared.batches.object(id)
    }

    /// The bytes of file `id` (an input file too, which the API does not hand back), whoever
    /// uploaded it.
    pub fn file_bytes(&self, id: &str) -> Option<Vec<u8>> {
        self.shared.files.bytes_of(id).map(|b| b.to_vec())
    }

    /// Lets every batch held by [`Config::batch_hold`] go on; returns how many were held.
    pub fn release_batches(&self) -> usize {
        self.shared.batches.release(None)
    }

    /// Lets batch `id` go on; false if there is no such batch or it was released already.
    pub fn release_batch(&self, id: &str) -> bool {
        self.shared.batches.release(Some(id)) == 1
    }

    /// Makes batch `id` expire now, as if its completion window had passed: the lines done
    /// go to its output file and are billed, the rest to its error file, not run. False if it
    /// does not exist or is no longer validating or in progress.
    pub fn expire_batch(&self, id: &str) -> bool {
        self.shared.batches.force(id, batches::Forced::Expire)
    }

    /// Makes batch `id` fail now, with an internal error in `errors`: nothing it did is kept or
    /// billed. False if it does not exist or is no longer validating or in progress.
    pub fn fail_batch(&self, id: &str) -> bool {
        self.shared.batches.force(id, batches::Forced::Fail)
    }

    /// Clears counters, the request log, usage, scripts, the rate-limit windows, the
    /// implicit cache, and every file and batch (a batch still running stops).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Blocks until the server thread ends (for the binary).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: oneshot::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let conn_guard = shared.connection_opened();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _conn_guard = conn_guard;
            let svc = service_fn(move |req| handler::handle(shared.clone(), req));
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
