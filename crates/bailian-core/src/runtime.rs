//! The async runtime a backend waits in: a current-thread tokio runtime (no worker threads
//! inside a PostgreSQL backend) whose waits can be interrupted from outside.

use crate::error::AiError;
use std::future::Future;
use std::time::Duration;

/// How often a wait looks at the interrupt flags; bounds how late a cancel is noticed.
pub const INTERRUPT_POLL: Duration = Duration::from_millis(10);

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

    /// Runs `fut` to completion unless `interrupted()` turns true first; then `fut` is dropped,
    /// which closes its connections, and `Err(AiError::Interrupted)` is returned so the caller
    /// can raise the cancel outside the runtime.
    pub fn block_on_interruptible<F, T>(&self, fut: F, interrupted: impl Fn() -> bool) -> Result<T, AiError>
    where
        F: Future<Output = T>,
    {
        if interrupted() {
            return Err(AiError::Interrupted);
        }
        self.rt.block_on(async {
            let finished = {
                let mut ticker = tokio::time::interval(INTERRUPT_POLL);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut fut = std::pin::pin!(fut);
                loop {
                    tokio::select! {
                        biased;
                        out = &mut fut => break Some(out),
                        _ = ticker.tick() => {
                            if interrupted() {
                                break None;
                            }
                        }
                    }
                }
                // `fut` is dropped here, before the runtime stops.
            };
            match finished {
                Some(out) => Ok(out),
                None => {
                    // Connections live in tasks that run only inside block_on: give them a
                    // turn so they see their request gone and close the socket now, not at
                    // this backend's next call.
                    for _ in 0..8 {
                        tokio::task::yield_now().await;
                    }
                    Err(AiError::Interrupted)
                }
            }
        })
    }
}

impl Runtime {
    /// Gives the runtime's tasks a few turns, so connections whose requests were dropped
    /// outside `block_on` see it and close their sockets now.
    pub fn settle(&self) {
        self.rt.block_on(async {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        })
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
        assert_eq!(rt.block_on_interruptible(async { 7 }, || false), Ok(7));
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
            || flag.load(Ordering::SeqCst),
        );
        assert_eq!(r, Err(AiError::Interrupted));
        assert!(start.elapsed() < Duration::from_millis(500));
        assert!(dropped.load(Ordering::SeqCst));
        // The runtime is reusable after an interrupt.
        assert_eq!(rt.block_on_interruptible(async { 1 }, || false), Ok(1));
    }
}
