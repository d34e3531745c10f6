//! The async runtime a backend waits in: a current-thread tokio runtime (no worker threads
//! inside a PostgreSQL backend) whose waits give way to PostgreSQL's interrupts.
//!
//! A backend that waits without servicing interrupts stalls more than its own statement:
//! cluster-wide operations such as `DROP DATABASE` wait for every backend to absorb a
//! procsignal barrier, and `pg_log_backend_memory_contexts` or client-connection checks expect
//! an answer. So a wait polls the flags every `INTERRUPT_POLL` and, when anything is pending,
//! steps out of the runtime with every request still alive, lets the caller service the
//! interrupt (outside the runtime, where PostgreSQL may run arbitrary code and raise errors),
//! and steps back in. Only a cancel or termination ends the wait; then the requests are dropped
//! (closing their connections) before the caller raises PostgreSQL's own error.

use crate::error::AiError;
use std::future::Future;
use std::time::Duration;

/// How often a wait looks at the interrupt flags; bounds how late a cancel is noticed.
pub const INTERRUPT_POLL: Duration = Duration::from_millis(10);

/// What a wait does about the host's interrupts. In the extension these are PostgreSQL's
/// flags and `CHECK_FOR_INTERRUPTS`; tests use plain flags.
pub trait Interrupts {
    /// Called inside the runtime every `INTERRUPT_POLL`: is anything pending? Must only look.
    fn pending(&self) -> bool;
    /// Called outside the runtime after `pending` said yes, with the wait's requests still in
    /// flight. Services what can be serviced and returns `Err(AiError::Interrupted)` when the
    /// wait must end (a cancel or a termination).
    fn service(&self) -> Result<(), AiError>;
}

/// A plain flag: any pending interrupt ends the wait.
impl<F: Fn() -> bool> Interrupts for F {
    fn pending(&self) -> bool {
        self()
    }

    fn service(&self) -> Result<(), AiError> {
        Err(AiError::Interrupted)
    }
}

pub struct Runtime {
    rt: tokio::runtime::Runtime,
}

impl Runtime {
    /// Helper threads (tokio's blocking pool, used for DNS lookups) block every signal, so
    /// PostgreSQL's handlers keep running on the backend's own thread.
    pub fn new() -> Result<Runtime, AiError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_start(block_signals_in_this_thread)
            .max_blocking_threads(4)
            .build()
            .map_err(|e| AiError::Internal { message: format!("cannot start the async runtime: {e}") })?;
        Ok(Runtime { rt })
    }

    /// Runs `fut` to completion, servicing interrupts as they come (see the module doc). When
    /// `interrupts.service()` ends the wait, `fut` is dropped, which closes its connections,
    /// and its error is returned so the caller can raise the cancel outside the runtime.
    pub fn block_on_interruptible<F, T>(&self, fut: F, interrupts: &impl Interrupts) -> Result<T, AiError>
    where
        F: Future<Output = T>,
    {
        // Boxed so it can be polled across several block_on calls and dropped early.
        let mut fut = Box::pin(fut);
        loop {
            if interrupts.pending() {
                if let Err(e) = interrupts.service() {
                    drop(fut);
                    self.settle();
                    return Err(e);
                }
            }
            let finished = self.rt.block_on(async {
                tokio::select! {
                    biased;
                    out = &mut fut => Some(out),
                    _ = until_pending(interrupts) => None,
                }
            });
            if let Some(out) = finished {
                return Ok(out);
            }
        }
    }

    /// Gives the runtime's tasks a few turns, so connections whose requests were dropped
    /// outside `block_on` see it and close their sockets now, not at this backend's next call.
    pub fn settle(&self) {
        self.rt.block_on(async {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        })
    }
}

/// Completes once `interrupts.pending()`, looking every `INTERRUPT_POLL` (never at once, so an
/// interrupt the host keeps pending, e.g. while it holds interrupts off, costs one check per
/// poll rather than a busy loop).
async fn until_pending(interrupts: &impl Interrupts) {
    let start = tokio::time::Instant::now() + INTERRUPT_POLL;
    let mut ticker = tokio::time::interval_at(start, INTERRUPT_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if interrupts.pending() {
            return;
        }
    }
}

#[cfg(unix)]
fn block_signals_in_this_thread() {
    // SAFETY: sigfillset and pthread_sigmask only touch the local set and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(not(unix))]
fn block_signals_in_this_thread() {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn completes_when_not_interrupted() {
        let rt = Runtime::new().unwrap();
        assert_eq!(rt.block_on_interruptible(async { 7 }, &|| false), Ok(7));
    }

    #[test]
    fn interrupt_ends_the_wait_promptly_and_drops_the_future() {
        let rt = Runtime::new().unwrap();
        let flag = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        struct OnDrop(Arc<AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let setter = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            setter.store(true, Ordering::SeqCst);
        });
        let guard = OnDrop(dropped.clone());
        let start = Instant::now();
        let r = rt.block_on_interruptible(
            async move {
                let _g = guard;
                tokio::time::sleep(Duration::from_secs(30)).await;
            },
            &|| flag.load(Ordering::SeqCst),
        );
        assert_eq!(r, Err(AiError::Interrupted));
        assert!(start.elapsed() < Duration::from_millis(500));
        assert!(dropped.load(Ordering::SeqCst));
        // The runtime is reusable after an interrupt.
        assert_eq!(rt.block_on_interruptible(async { 1 }, &|| false), Ok(1));
    }

    /// An interrupt the host can service in place (a procsignal barrier, say) is serviced
    /// promptly while the wait goes on, and the request still completes.
    #[test]
    fn other_interrupts_are_serviced_without_ending_the_wait() {
        struct Barrier {
            pending: Arc<AtomicBool>,
            serviced_at: std::sync::Mutex<Vec<Instant>>,
        }
        impl Interrupts for Barrier {
            fn pending(&self) -> bool {
                self.pending.load(Ordering::SeqCst)
            }
            fn service(&self) -> Result<(), AiError> {
                self.pending.store(false, Ordering::SeqCst);
                self.serviced_at.lock().unwrap().push(Instant::now());
                Ok(())
            }
        }
        let rt = Runtime::new().unwrap();
        let b = Barrier { pending: Arc::new(AtomicBool::new(false)), serviced_at: Default::default() };
        let setter = b.pending.clone();
        let raised_at = Arc::new(std::sync::Mutex::new(None));
        let raised = raised_at.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            *raised.lock().unwrap() = Some(Instant::now());
            setter.store(true, Ordering::SeqCst);
        });
        let r = rt.block_on_interruptible(
            async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "answer"
            },
            &b,
        );
        assert_eq!(r, Ok("answer"));
        let serviced = b.serviced_at.lock().unwrap().clone();
        assert_eq!(serviced.len(), 1);
        let raised = raised_at.lock().unwrap().unwrap();
        assert!(
            serviced[0] - raised < Duration::from_millis(100),
            "serviced {:?} late",
            serviced[0] - raised
        );
    }
}
