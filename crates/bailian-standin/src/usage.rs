//! What the stand-in counts per model and key, for tests that compare a client's own
//! accounting with it exactly: the requests received and how each was answered, and the sums
//! of the token usage the stand-in put in its successful answers.
//!
//! The usage of an answer is read from the `usage` object it carries, by the field names each
//! API documents: compatible chat `prompt_tokens`, `completion_tokens`, `total_tokens`,
//! `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`
//! (research §3.1); compatible embeddings `prompt_tokens` and `total_tokens` (§3.3);
//! multimodal embedding `input_tokens` (§3.4); rerank `total_tokens` (§3.5); OpenSearch
//! `input_tokens`, `output_tokens`, `total_tokens` (seed 003).
//!
//! Live requests and batch work are booked apart ([`Billing`]): Bailian bills a batch line,
//! and a Batch Chat request, at half the live price, as a billing item of its own (research
//! §1.10, §1.13), so a test can tell which price a token was counted at.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Token counts of one answer's `usage`, or their sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// `prompt_tokens`, or `input_tokens` in the native and OpenSearch answers.
    pub prompt_tokens: u64,
    /// `completion_tokens`, or `output_tokens`.
    pub completion_tokens: u64,
    /// `total_tokens`; where an answer has none (multimodal embedding), prompt plus
    /// completion. A rerank answer has only this one: its prompt tokens stay 0.
    pub total_tokens: u64,
    /// `prompt_tokens_details.cached_tokens` (implicit cache hits, part of prompt tokens).
    pub cached_tokens: u64,
    /// `completion_tokens_details.reasoning_tokens` (part of completion tokens).
    pub reasoning_tokens: u64,
}

impl Tokens {
    /// The numbers of a `usage` object in any of the stand-in's APIs' shapes.
    pub fn of_usage(usage: &Value) -> Tokens {
        let num = |pointers: &[&str]| pointers.iter().find_map(|p| usage.pointer(p)).and_then(Value::as_u64);
        let prompt_tokens = num(&["/prompt_tokens", "/input_tokens"]).unwrap_or(0);
        let completion_tokens = num(&["/completion_tokens", "/output_tokens"]).unwrap_or(0);
        Tokens {
            prompt_tokens,
            completion_tokens,
            total_tokens: num(&["/total_tokens"]).unwrap_or(prompt_tokens + completion_tokens),
            cached_tokens: num(&["/prompt_tokens_details/cached_tokens"]).unwrap_or(0),
            reasoning_tokens: num(&[
                "/completion_tokens_details/reasoning_tokens",
                "/output_tokens_details/reasoning_tokens",
            ])
            .unwrap_or(0),
        }
    }

    /// The usage of a JSON answer (its top-level `usage`), if it has one.
    pub(crate) fn of_answer(body: &Value) -> Option<Tokens> {
        body.get("usage").filter(|u| u.is_object()).map(Tokens::of_usage)
    }

    fn add(&mut self, other: &Tokens) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cached_tokens += other.cached_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
    }

    /// `self - earlier`, field by field (a stream's usage only grows).
    pub(crate) fn since(&self, earlier: &Tokens) -> Tokens {
        Tokens {
            prompt_tokens: self.prompt_tokens.saturating_sub(earlier.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_sub(earlier.completion_tokens),
            total_tokens: self.total_tokens.saturating_sub(earlier.total_tokens),
            cached_tokens: self.cached_tokens.saturating_sub(earlier.cached_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_sub(earlier.reasoning_tokens),
        }
    }
}

/// What the stand-in counted for one model and key hint. Every request a model endpoint
/// received counts once in `requests` and once in exactly one of `answered`,
/// `rate_limited_rpm`, `rate_limited_tpm`, `errors` and `unanswered`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    /// Requests received, whatever became of them.
    pub requests: u64,
    /// Answered 2xx (a stream counts when it starts, even if it then breaks).
    pub answered: u64,
    /// Answered 429 by the requests-per-minute limit, per minute or per second
    /// (`limit_requests` / `Throttling.RateQuota`).
    pub rate_limited_rpm: u64,
    /// Answered 429 by the tokens-per-minute limit, per minute or per second
    /// (`insufficient_quota` / `Throttling.AllocationQuota`).
    pub rate_limited_tpm: u64,
    /// Answered with any other status: refusals, and every fault (a scripted or random 429
    /// included).
    pub errors: u64,
    /// Never answered: the client went away first, or a fault reset the connection.
    pub unanswered: u64,
    /// Requests per status answered (the limits' 429s and the faults' together).
    pub statuses: BTreeMap<u16, u64>,
    /// Inputs of the requests the limits let through, counted as `StatsSnapshot::inputs`.
    pub inputs: u64,
    /// 2xx answers that carried a `usage` (a stream's once its usage event was sent).
    pub answers_with_usage: u64,
    /// Sums of the usage in those answers: a whole answer's when it is handed to the
    /// connection; a stream's as its events carrying usage are sent, so it ends as the usage
    /// of the last one sent (a stream cut before its usage chunk adds nothing).
    pub tokens: Tokens,
}

impl ModelUsage {
    fn add(&mut self, other: &ModelUsage) {
        self.requests += other.requests;
        self.answered += other.answered;
        self.rate_limited_rpm += other.rate_limited_rpm;
        self.rate_limited_tpm += other.rate_limited_tpm;
        self.errors += other.errors;
        self.unanswered += other.unanswered;
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.inputs += other.inputs;
        self.answers_with_usage += other.answers_with_usage;
        self.tokens.add(&other.tokens);
    }
}

/// At which price the usage of a row was counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    /// A live (real-time) request: the list price.
    #[default]
    Live,
    /// A line of a Batch File batch, or a request to the Batch Chat host: half the live
    /// price, no context-cache discount (research §1.10). A batch line counts once its batch
    /// has ended with it in the output or error file (completed, or lines done before a cancel
    /// or an expiry); a line not run, or run in a batch that then failed, counts nowhere.
    Batch,
}

/// One row of [`crate::Standin::usage`]: a model (the request's `model`; for OpenSearch the
/// service id of the path), a key hint ([`key_hint`]) and the price it was counted at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub model: String,
    pub key_hint: String,
    #[serde(default)]
    pub billing: Billing,
    pub usage: ModelUsage,
}

/// The hint the stand-in logs and counts a key under: its first three and last four
/// characters (`sk-...abcd`), empty for no key.
pub fn key_hint(key: &str) -> String {
    let tail: String = key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    if key.is_empty() {
        String::new()
    } else {
        let head: String = key.chars().take(3).collect();
        format!("{head}...{tail}")
    }
}

/// How a request ended, for the book.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Ending {
    /// Answered with this status, not by a limit.
    Status(u16),
    /// 429 by the request limit or the token limit.
    RpmLimit,
    TpmLimit,
    /// No answer.
    Unanswered,
}

#[derive(Default)]
pub(crate) struct UsageBook {
    rows: Mutex<BTreeMap<(String, String, Billing), ModelUsage>>,
}

impl UsageBook {
    fn with(&self, model: &str, hint: &str, billing: Billing, f: impl FnOnce(&mut ModelUsage)) {
        let mut rows = self.rows.lock().unwrap();
        f(rows.entry((model.to_string(), hint.to_string(), billing)).or_default());
    }

    pub(crate) fn ended(&self, model: &str, hint: &str, billing: Billing, ending: Ending) {
        self.with(model, hint, billing, |u| {
            u.requests += 1;
            let status = match ending {
                Ending::Status(s) => {
                    if (200..300).contains(&s) {
                        u.answered += 1;
                    } else {
                        u.errors += 1;
                    }
                    s
                }
                Ending::RpmLimit => {
                    u.rate_limited_rpm += 1;
                    429
                }
                Ending::TpmLimit => {
                    u.rate_limited_tpm += 1;
                    429
                }
                Ending::Unanswered => {
                    u.unanswered += 1;
                    return;
                }
            };
            *u.statuses.entry(status).or_default() += 1;
        });
    }

    pub(crate) fn inputs(&self, model: &str, hint: &str, billing: Billing, n: u64) {
        self.with(model, hint, billing, |u| u.inputs += n);
    }

    /// Adds usage an answer carried; `first` for the first usage of an answer.
    pub(crate) fn reported(&self, model: &str, hint: &str, billing: Billing, tokens: &Tokens, first: bool) {
        self.with(model, hint, billing, |u| {
            if first {
                u.answers_with_usage += 1;
            }
            u.tokens.add(tokens);
        });
    }

    pub(crate) fn rows(&self) -> Vec<UsageRow> {
        let rows = self.rows.lock().unwrap();
        rows.iter()
            .map(|((model, key_hint, billing), usage)| UsageRow {
                model: model.clone(),
                key_hint: key_hint.clone(),
                billing: *billing,
                usage: usage.clone(),
            })
            .collect()
    }

    pub(crate) fn of(&self, model: &str, hint: &str, billing: Billing) -> ModelUsage {
        let rows = self.rows.lock().unwrap();
        rows.get(&(model.to_string(), hint.to_string(), billing)).cloned().unwrap_or_default()
    }

    pub(crate) fn total(&self, billing: Billing) -> ModelUsage {
        let rows = self.rows.lock().unwrap();
        rows.iter().filter(|((_, _, b), _)| *b == billing).fold(ModelUsage::default(), |mut sum, (_, u)| {
            sum.add(u);
            sum
        })
    }

    pub(crate) fn clear(&self) {
        self.rows.lock().unwrap().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_of_every_shape() {
        let chat = json!({"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320,
            "prompt_tokens_details": {"cached_tokens": 256}, "completion_tokens_details": {"reasoning_tokens": 8}});
        assert_eq!(
            Tokens::of_usage(&chat),
            Tokens {
                prompt_tokens: 300,
                completion_tokens: 20,
                total_tokens: 320,
                cached_tokens: 256,
                reasoning_tokens: 8
            }
        );
        let os = json!({"input_tokens": 3, "output_tokens": 4, "total_tokens": 7});
        assert_eq!(Tokens::of_usage(&os).completion_tokens, 4);
        let mm = json!({"input_tokens": 5, "image_tokens": 0, "image_count": 0});
        assert_eq!(Tokens::of_usage(&mm).total_tokens, 5);
        let rerank = json!({"total_tokens": 9});
        assert_eq!((Tokens::of_usage(&rerank).prompt_tokens, Tokens::of_usage(&rerank).total_tokens), (0, 9));
    }

    #[test]
    fn hints_and_endings() {
        assert_eq!(key_hint("sk-test0123456789"), "sk-...6789");
        assert_eq!(key_hint(""), "");
        assert_eq!(key_hint("ab"), "ab...ab");
        let book = UsageBook::default();
        let live = Billing::Live;
        book.ended("m", "h", live, Ending::Status(200));
        book.ended("m", "h", live, Ending::RpmLimit);
        book.ended("m", "h", live, Ending::Status(429));
        book.ended("m", "h", live, Ending::Unanswered);
        book.ended("n", "h", live, Ending::TpmLimit);
        book.ended("m", "h", Billing::Batch, Ending::Status(200));
        let m = book.of("m", "h", live);
        assert_eq!((m.requests, m.answered, m.rate_limited_rpm, m.errors, m.unanswered), (4, 1, 1, 1, 1));
        assert_eq!(m.statuses, BTreeMap::from([(200, 1), (429, 2)]));
        let total = book.total(live);
        assert_eq!((total.requests, total.rate_limited_tpm), (5, 1));
        assert_eq!(book.total(Billing::Batch).answered, 1, "batch work is booked apart");
        assert_eq!(book.of("m", "h", Billing::Batch).requests, 1);
        assert_eq!(book.rows().len(), 3);
    }
}
