//! Bounds on what pg_bailian builds from a caller's input.
//!
//! Every function a role may call builds its result on the Rust heap, outside PostgreSQL's
//! memory contexts: nothing there stops a result from growing past the machine's memory, and
//! Rust's allocator aborts the process when an allocation fails. An aborted backend makes the
//! postmaster end every session of the cluster and run crash recovery, so a result that
//! grows with its input is sized before it is built, refused with 54000 when it would pass
//! its limit, and reserved fallibly: running out of memory is then an ERROR, never an abort.
//! Loops over a caller's data ask `interrupted` now and then, so a cancel ends them.

use crate::error::{show_bytes, AiError};

/// Most text one function builds for one call: a prompt from a template, a masked text, the
/// pieces of `ai_chunk`. No model takes more than a few MB of text in one request; the
/// limit keeps a backend's result plus its copy in a datum well under the memory of a small
/// server.
pub const MAX_TEXT_BYTES: usize = 64 << 20;

/// How often (in units of work: characters, pieces, matches) a loop asks whether the
/// statement was cancelled.
pub const CHECK_EVERY: usize = 1 << 16;

/// Refuses `needed` bytes of `what` when they pass `limit`. `needed` is computed in u128 by
/// the callers that multiply, so that no count can wrap around to look small.
pub fn check(what: &str, needed: u128, limit: usize) -> Result<(), AiError> {
    if needed > limit as u128 {
        return Err(AiError::LimitExceeded {
            what: what.to_string(),
            needed: u64::try_from(needed).unwrap_or(u64::MAX),
            limit_bytes: limit as u64,
        });
    }
    Ok(())
}

/// An empty String with room for `bytes`, or an ERROR (53200) when the memory cannot be had.
pub fn string_with_capacity(what: &str, bytes: usize) -> Result<String, AiError> {
    let mut s = String::new();
    s.try_reserve_exact(bytes)
        .map_err(|_| AiError::OutOfMemory { what: format!("{what} ({})", show_bytes(bytes as u64)) })?;
    Ok(s)
}

/// An empty Vec with room for `n` items, or an ERROR (53200) when the memory cannot be had.
pub fn vec_with_capacity<T>(what: &str, n: usize) -> Result<Vec<T>, AiError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| AiError::OutOfMemory {
        what: format!("{what} ({})", show_bytes((n as u64).saturating_mul(std::mem::size_of::<T>() as u64))),
    })?;
    Ok(v)
}

/// Characters of a caller's value that a message quotes.
pub const SHOWN_CHARS: usize = 40;

/// `value` as a message quotes it: escaped, and cut to `SHOWN_CHARS` characters (with "...")
/// so that a huge argument never makes a huge error (in the client, the log, a WARNING).
pub fn shown(value: &str) -> String {
    let mut out: String = value.chars().take(SHOWN_CHARS).flat_map(char::escape_debug).collect();
    if value.chars().nth(SHOWN_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Asks `interrupted` once every `CHECK_EVERY` calls of `tick`.
pub struct Ticker<F: FnMut() -> bool> {
    interrupted: F,
    count: usize,
}

impl<F: FnMut() -> bool> Ticker<F> {
    pub fn new(interrupted: F) -> Self {
        Ticker { interrupted, count: 0 }
    }

    /// Counts `work` units; Err(Interrupted) when the statement was cancelled.
    pub fn tick(&mut self, work: usize) -> Result<(), AiError> {
        self.count += work;
        if self.count >= CHECK_EVERY {
            self.count = 0;
            if (self.interrupted)() {
                return Err(AiError::Interrupted);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_refused_with_54000_and_named() {
        assert!(check("x", MAX_TEXT_BYTES as u128, MAX_TEXT_BYTES).is_ok());
        let e = check("ai_prompt's result", u128::from(u64::MAX) * 30, MAX_TEXT_BYTES).unwrap_err();
        assert_eq!(e.sqlstate(), "54000");
        assert_eq!(
            e.to_string(),
            "ai_prompt's result would need 18446744073709551615 bytes, more than the limit of 64MB"
        );
    }

    #[test]
    fn impossible_reservations_are_errors_not_aborts() {
        let e = string_with_capacity("a test", usize::MAX / 2).unwrap_err();
        assert_eq!(e.sqlstate(), "53200");
        let e = vec_with_capacity::<u64>("a test", usize::MAX / 16).unwrap_err();
        assert_eq!(e.sqlstate(), "53200");
        assert!(string_with_capacity("a test", 10).unwrap().capacity() >= 10);
    }

    #[test]
    fn values_are_shown_short() {
        assert_eq!(shown("capture\n"), "capture\\n");
        assert_eq!(shown(&"x".repeat(1 << 20)), format!("{}...", "x".repeat(SHOWN_CHARS)));
        assert_eq!(shown(&"数据".repeat(SHOWN_CHARS)), format!("{}...", "数据".repeat(SHOWN_CHARS / 2)));
    }

    #[test]
    fn the_ticker_asks_now_and_then() {
        let mut asked = 0;
        let mut t = Ticker::new(|| {
            asked += 1;
            asked == 2
        });
        for _ in 0..CHECK_EVERY - 1 {
            t.tick(1).unwrap();
        }
        t.tick(1).unwrap();
        assert_eq!(t.tick(CHECK_EVERY), Err(AiError::Interrupted));
    }
}
