//! Implicit context cache, as the context-cache page describes it (research §3.6, S9): for
//! the models it lists, Bailian keeps the common prefix of requests and reports the part of a
//! prompt it found there as `usage.prompt_tokens_details.cached_tokens`, part of
//! `prompt_tokens`; the minimum is 256 tokens; it cannot be turned off by the caller and hits
//! are "not guaranteed".
//!
//! What the page does not say, the stand-in decides so that tests can predict it: a prompt is
//! the sequence of its messages' tokens (`tokens::pieces`, each message's first token marked
//! with its role, so a system message does not match the same text as a user message); the
//! cache keeps prefixes in blocks of 256 tokens, so a hit is the longest run of whole
//! blocks, from the start, that an earlier answered request of the same key to the same model
//! also began with (a shared prefix of 300 tokens reports 256, one of 255 nothing). Blocks of
//! the minimum's size are one reading of "minimum 256"; the one documented figure
//! (`cached_tokens` 2048 in S10's sample) is a multiple of it. Every hit the rule allows is
//! reported (Bailian's may miss) and nothing expires. The stand-in has no accounts, so a key
//! stands for the account whose cache it is.

use crate::tokens;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Tokens per cached block: the documented minimum.
pub(crate) const BLOCK: u64 = 256;

/// The blocks of one prompt: the hash of its tokens up to the end of each whole block.
pub(crate) type Blocks = Vec<u64>;

/// The blocks of a prompt given as (role, text) per message.
pub(crate) fn blocks<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Blocks {
    let mut out = Vec::new();
    let mut hash = FNV_OFFSET;
    let mut count = 0u64;
    for (role, text) in messages {
        for (i, piece) in tokens::pieces(text).into_iter().enumerate() {
            if i == 0 {
                // A message starts with its role, as a chat template writes it.
                hash = mix(hash, &[0xff]);
                hash = mix(hash, role.as_bytes());
            }
            hash = mix(hash, &[0xfe]);
            hash = mix(hash, piece.as_bytes());
            count += 1;
            if count.is_multiple_of(BLOCK) {
                out.push(hash);
            }
        }
    }
    out
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn mix(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The prefixes each (key, model) has sent, as block hashes.
#[derive(Default)]
pub(crate) struct ImplicitCache {
    prefixes: Mutex<HashMap<(u64, String), HashSet<u64>>>,
}

impl ImplicitCache {
    /// Tokens of a prompt with these blocks found in the cache of (key, model).
    pub(crate) fn hit(&self, key: u64, model: &str, blocks: &Blocks) -> u64 {
        let prefixes = self.prefixes.lock().unwrap();
        let Some(known) = prefixes.get(&(key, model.to_string())) else { return 0 };
        // Each hash covers every token before it, so the first block not found ends the hit.
        blocks.iter().take_while(|b| known.contains(b)).count() as u64 * BLOCK
    }

    /// Keeps the prefixes of an answered prompt.
    pub(crate) fn keep(&self, key: u64, model: &str, blocks: &Blocks) {
        if blocks.is_empty() {
            return;
        }
        let mut prefixes = self.prefixes.lock().unwrap();
        prefixes.entry((key, model.to_string())).or_default().extend(blocks.iter().copied());
    }

    pub(crate) fn clear(&self) {
        self.prefixes.lock().unwrap().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_are_whole_blocks_of_a_shared_prefix() {
        let long = "x".repeat(4 * 300); // 300 tokens
        let cache = ImplicitCache::default();
        let first = blocks([("system", long.as_str()), ("user", "one")]);
        assert_eq!(first.len(), 1, "301 tokens: one whole block");
        assert_eq!(cache.hit(1, "m", &first), 0, "nothing kept yet");
        cache.keep(1, "m", &first);
        let second = blocks([("system", long.as_str()), ("user", "two")]);
        assert_eq!(cache.hit(1, "m", &second), 256);
        assert_eq!(cache.hit(2, "m", &second), 0, "another key");
        assert_eq!(cache.hit(1, "n", &second), 0, "another model");
        let as_user = blocks([("user", long.as_str())]);
        assert_eq!(cache.hit(1, "m", &as_user), 0, "the role is part of the prompt");
        let short = "x".repeat(4 * 255);
        assert!(blocks([("system", short.as_str())]).is_empty(), "under the minimum");
        // A longer prompt that shares the first block but not the second.
        let two = blocks([("system", long.as_str()), ("user", &"y".repeat(4 * 300))]);
        assert_eq!(two.len(), 2);
        assert_eq!(cache.hit(1, "m", &two), 256);
        cache.keep(1, "m", &two);
        assert_eq!(cache.hit(1, "m", &two), 512);
        cache.clear();
        assert_eq!(cache.hit(1, "m", &two), 0);
    }
}
