//! Per-backend network state: one runtime, one pooled HTTP client and one rate limiter per
//! deployed model, all created on first use, and the wait that services PostgreSQL's
//! interrupts.

use crate::functions::calls::OnError;
use crate::shared::accounting::{self, Account};
use bailian_core::client::{Call, Client};
use bailian_core::deploy::Deployment;
use bailian_core::retry::RetryPolicy;
use bailian_core::runtime::{Interrupts, Runtime};
use bailian_core::secret::ApiKey;
use bailian_core::shared::{BucketKey, Limiter};
use bailian_core::AiError;
use futures_util::stream::{FuturesUnordered, StreamExt};
use once_cell::sync::OnceCell;
use pgrx::pg_sys;
use serde_json::{Map, Value};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

struct Backend {
    runtime: Runtime,
    client: Client,
}

static BACKEND: OnceCell<Backend> = OnceCell::new();

fn backend() -> Result<&'static Backend, AiError> {
    BACKEND.get_or_try_init(|| Ok(Backend { runtime: Runtime::new()?, client: Client::new()? }))
}

unsafe extern "C-unwind" {
    /// What the inline `PostmasterIsAlive()` of storage/pmsignal.h calls (exported by the
    /// server since PostgreSQL 12; pgrx's bindings leave the inline out): a non-blocking read
    /// of the postmaster-death pipe.
    fn PostmasterIsAliveInternal() -> bool;
}

/// How often a wait asks whether the postmaster is alive (one read(2) each time).
const POSTMASTER_CHECK: Duration = Duration::from_millis(100);

/// What this backend knows of its postmaster.
#[derive(Clone, Copy)]
enum Postmaster {
    Unchecked,
    AliveAt(std::time::Instant),
    /// For good: a dead postmaster does not come back.
    Dead,
}

thread_local! {
    static POSTMASTER: std::cell::Cell<Postmaster> = const { std::cell::Cell::new(Postmaster::Unchecked) };
}

/// False once the postmaster is gone. Asked no more often than POSTMASTER_CHECK.
fn postmaster_alive() -> bool {
    let now = std::time::Instant::now();
    match POSTMASTER.with(|c| c.get()) {
        Postmaster::Dead => return false,
        Postmaster::AliveAt(t) if now.duration_since(t) < POSTMASTER_CHECK => return true,
        Postmaster::AliveAt(_) | Postmaster::Unchecked => {}
    }
    // SAFETY: a non-blocking read on the pipe the postmaster holds open; it raises nothing
    // but a FATAL for a broken pipe, which ends the process as postmaster death would.
    let alive = unsafe { PostmasterIsAliveInternal() };
    POSTMASTER.with(|c| c.set(if alive { Postmaster::AliveAt(now) } else { Postmaster::Dead }));
    alive
}

/// PostgreSQL's interrupts, as a wait in the runtime sees them.
struct PgInterrupts;

impl Interrupts for PgInterrupts {
    /// An interrupt, or the postmaster's death: an orphaned backend must not go on waiting
    /// (and sending) while a new postmaster cannot start because it still holds shared memory.
    fn pending(&self) -> bool {
        // SAFETY: a plain read of a sig_atomic_t flag that signal handlers set; we are on the
        // backend's thread (the runtime is current-thread).
        unsafe { std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0 || !postmaster_alive() }
    }

    /// A cancel or termination ends the wait (the caller raises PostgreSQL's error after the
    /// requests are dropped). Anything else (procsignal barriers, memory-context logging,
    /// client-connection checks, ...) is serviced by CHECK_FOR_INTERRUPTS right here, with the
    /// requests still in flight. Should it raise an ERROR, pgrx unwinds it as a panic through
    /// the wait, dropping the requests on the way; a FATAL ends the process.
    fn service(&self) -> Result<(), AiError> {
        if !postmaster_alive() {
            // SAFETY: what a latch wait with WL_EXIT_ON_PM_DEATH does: exit at once, running
            // the on_proc_exit callbacks; Rust frames are not unwound, and nothing of ours
            // outlives the process (sockets close with it).
            unsafe { pg_sys::proc_exit(1) };
        }
        // SAFETY: plain reads of sig_atomic_t flags, on the backend's thread.
        if unsafe { pg_sys::QueryCancelPending != 0 || pg_sys::ProcDiePending != 0 } {
            return Err(AiError::Interrupted);
        }
        pgrx::check_for_interrupts!();
        Ok(())
    }
}

/// Whether a cancel or termination is pending: what a loop over a caller's data asks now and
/// then (it stops with `AiError::Interrupted`, and PostgreSQL's own error is raised after).
pub fn cancel_pending() -> bool {
    // SAFETY: plain reads of sig_atomic_t flags; they are only read, from any thread.
    unsafe {
        std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
            || std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
    }
}

/// A deployed model ready to call: its deployment, the resolved key, its rate limiter and
/// the settings of this call (deployed retry/timeout overridden by per-call params).
pub struct Target {
    deployment: Arc<Deployment>,
    key: ApiKey,
    timeout: Duration,
    retry: RetryPolicy,
    limiter: Option<Arc<Limiter>>,
    account: Arc<Account>,
    max_response_bytes: u64,
    answers_budget: u64,
    /// pg_bailian.on_error when the call was prepared.
    on_error: OnError,
}

impl Target {
    /// `call_params` may lower the deployment's timeout and max_retries, never raise them.
    pub fn new(deployment: &Arc<Deployment>, call_params: &Map<String, Value>) -> Result<Target, AiError> {
        let settings = deployment.call_settings(call_params)?;
        let key = deployment.key.resolve_with(&deployment.name, crate::guc::policy)?;
        Ok(Target {
            limiter: limiter_for(deployment, &key),
            account: accounting::account(
                &deployment.name,
                deployment.spec.model_type,
                deployment.spec.api != bailian_core::registry::Api::OpenSearch,
                deployment.batch_chat,
                current_function(),
            )?,
            deployment: deployment.clone(),
            key,
            timeout: settings.timeout,
            retry: settings.retry,
            max_response_bytes: crate::guc::max_response_bytes(),
            answers_budget: crate::guc::answers_budget(),
            on_error: OnError::session(),
        })
    }

    /// What a failed row of this call gives, by pg_bailian.on_error (ai_gen_structured's
    /// own on_error argument travels with its request instead).
    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// Counts a call answered without a request (see `crate::answers`).
    pub fn served(&self, how: bailian_core::meter::Served, usage: &bailian_core::meter::Usage) {
        use bailian_core::meter::Meter;
        self.account.served(how, usage);
    }

    pub fn call(&self) -> Call<'_> {
        Call {
            model: &self.deployment.name,
            endpoint: self.deployment.endpoint(),
            key: &self.key,
            timeout: self.timeout,
            retry: self.retry,
            limiter: self.limiter.as_deref(),
            meter: Some(&*self.account),
            max_response_bytes: self.max_response_bytes,
            answers_budget: self.answers_budget,
        }
    }
}

/// The limiter of a deployment's bucket: (key, model, host) as the provider counts them,
/// shared by every backend when the shared state is there. When the shared table of buckets
/// is full, the bucket is this backend's own (and a WARNING says so once).
fn limiter_for(d: &Deployment, key: &ApiKey) -> Option<Arc<Limiter>> {
    let limits = d.effective_limits(crate::guc::documented_limits());
    if limits.requests_per_minute.is_none() && limits.tokens_per_minute.is_none() {
        return None;
    }
    let bucket = BucketKey::new(key.expose().as_bytes(), d.spec.model_type, &d.host());
    // On a Citus cluster every node limits itself to its share, so the nodes together keep to
    // the account's limit (`crate::citus::rate_share`).
    let share = crate::citus::rate_share();
    let (rpm, tpm) = (
        crate::citus::shared_limit(limits.requests_per_minute, share),
        crate::citus::shared_limit(limits.tokens_per_minute, share),
    );
    if let Some(l) = crate::shared::region().buckets.limiter(bucket, rpm, tpm) {
        return Some(Arc::new(l));
    }
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        pgrx::warning!(
            "pg_bailian.max_rate_buckets ({}) buckets are in use: model \"{}\" is rate-limited in this backend alone",
            crate::shared::region().capacities().buckets,
            d.name
        );
    }
    static OWN: once_cell::sync::OnceCell<&'static bailian_core::shared::Region> =
        once_cell::sync::OnceCell::new();
    let own = OWN.get_or_init(|| bailian_core::shared::Region::private(crate::guc::capacities(1)));
    own.buckets.limiter(bucket, rpm, tpm).map(Arc::new)
}

thread_local! {
    static FUNCTION: std::cell::Cell<&'static str> = const { std::cell::Cell::new("ai_gen") };
}

/// The SQL function whose calls the Targets made now count as (in ai_usage).
pub fn current_function() -> &'static str {
    FUNCTION.with(|f| f.get())
}

/// Runs `f` with Targets counted as calls of `function`.
pub fn as_function<T>(function: &'static str, f: impl FnOnce() -> T) -> T {
    let before = FUNCTION.with(|c| c.replace(function));
    struct Restore(&'static str);
    impl Drop for Restore {
        fn drop(&mut self) {
            FUNCTION.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// Runs units of work with up to `pg_bailian.max_concurrency` in flight: `next_unit` starts
/// the next one (None when there is no more, for now), and `done` receives each unit's
/// output as soon as it completes, outside the runtime, so it may use SPI while the other
/// requests are on the wire. `next_unit` runs inside the runtime and must not touch SPI.
/// Stops early on a cancel (returning `AiError::Interrupted`) or the first error of `done`.
pub fn drive<'t, T, Fut>(
    target: &'t Target,
    mut next_unit: impl FnMut(&'static Client, Call<'t>) -> Option<Fut>,
    mut done: impl FnMut(T) -> Result<(), AiError>,
) -> Result<(), AiError>
where
    Fut: Future<Output = T>,
{
    let b = backend()?;
    // Declared before `pending`, so it runs after the dropped requests are gone.
    let _settle = Settle(&b.runtime);
    let limit = crate::guc::max_concurrency();
    let mut pending = FuturesUnordered::new();
    loop {
        // Inside the runtime: wait for a completion, start its replacement and let it reach
        // the socket, and pick up whatever else finished meanwhile. Only then leave, to hand
        // the outputs to `done` (SPI) while the new requests are already on the wire.
        let ready = b.runtime.block_on_interruptible(
            async {
                let mut ready = Vec::new();
                loop {
                    while pending.len() < limit {
                        match next_unit(&b.client, target.call()) {
                            Some(unit) => pending.push(unit),
                            None => break,
                        }
                    }
                    let polled = if ready.is_empty() {
                        Poll::Ready(pending.next().await)
                    } else {
                        futures_util::poll!(pending.next())
                    };
                    match polled {
                        Poll::Ready(Some(out)) => ready.push(out),
                        Poll::Ready(None) => return ready,
                        Poll::Pending => {
                            // New requests were polled once (handed to their connections);
                            // the connection tasks write them on these turns.
                            tokio::task::yield_now().await;
                            tokio::task::yield_now().await;
                            match futures_util::poll!(pending.next()) {
                                Poll::Ready(Some(out)) => ready.push(out),
                                _ => return ready,
                            }
                        }
                    }
                }
            },
            &PgInterrupts,
        )?;
        if ready.is_empty() {
            return Ok(());
        }
        for out in ready {
            done(out)?;
        }
    }
}

/// Lets connections of requests dropped outside the runtime (by an error or a cancel while
/// `done` ran) close at once instead of at this backend's next call.
struct Settle<'a>(&'a Runtime);

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.0.settle();
    }
}

/// Runs `work` with the backend's client and a `Call` for `target`, waiting in the runtime
/// until it finishes or PostgreSQL asks to cancel; the caller raises the cancel afterwards.
pub fn run<'t, T, Fut>(
    target: &'t Target,
    work: impl FnOnce(&'static Client, Call<'t>) -> Fut,
) -> Result<T, AiError>
where
    Fut: Future<Output = Result<T, AiError>>,
{
    let b = backend()?;
    b.runtime.block_on_interruptible(work(&b.client, target.call()), &PgInterrupts)?
}

/// Requests in flight that outlive one call into the runtime (the batching node keeps them
/// between the rows it returns). 'static: each owns its target and request.
pub type Flight<T> = FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = T>>>>;

/// The backend's client, for building requests that go into a `Flight`.
pub fn client() -> Result<&'static Client, AiError> {
    Ok(&backend()?.client)
}

/// Lets the requests just added to `flight` reach the wire and collects what has finished.
/// With `wait`, first waits until at least one finishes (unless none is in flight). A cancel
/// or termination returns `AiError::Interrupted`, with `flight` as it was: the caller drops
/// it (closing the connections, see `settle`) before raising PostgreSQL's error.
pub fn pump<T>(flight: &mut Flight<T>, wait: bool) -> Result<Vec<T>, AiError> {
    let b = backend()?;
    b.runtime.block_on_interruptible(
        async {
            let mut ready = Vec::new();
            if wait {
                if let Some(out) = flight.next().await {
                    ready.push(out);
                }
            }
            // New requests were polled once above or are polled now (handed to their
            // connections); the connection tasks write them on these turns.
            while let Poll::Ready(Some(out)) = futures_util::poll!(flight.next()) {
                ready.push(out);
            }
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            while let Poll::Ready(Some(out)) = futures_util::poll!(flight.next()) {
                ready.push(out);
            }
            ready
        },
        &PgInterrupts,
    )
}

/// Lets the connections of requests dropped outside the runtime close now.
pub fn settle() {
    if let Some(b) = BACKEND.get() {
        b.runtime.settle();
    }
}
