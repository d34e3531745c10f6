//! What a request costs and who counts it: the tokens a provider reported, the price of a
//! model, and the `Meter` a call reports to (usage counters, budgets, live activity, the
//! EXPLAIN of a batch node). The client calls the meter at each step of a request; what the
//! meter does with it is the extension's business.

use crate::error::AiError;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// Tokens as a provider reported them, whichever shape its `usage` has: compatible mode
/// (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`,
/// `completion_tokens_details.reasoning_tokens`), DashScope native and OpenSearch
/// (`input_tokens`, `output_tokens`, `output_tokens_details.reasoning_tokens`), rerank
/// (`total_tokens` only, all input). Research §3.1-3.5.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Value")]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Input tokens served from the context cache (part of prompt_tokens).
    pub cached_tokens: u64,
    /// Thinking tokens (part of completion_tokens).
    pub reasoning_tokens: u64,
}

impl From<Value> for Usage {
    fn from(v: Value) -> Usage {
        Usage::of(&v)
    }
}

impl Usage {
    pub fn of(v: &Value) -> Usage {
        let n = |path: &[&str]| {
            let mut at = v;
            for p in path {
                at = at.get(p)?;
            }
            at.as_u64()
        };
        let completion = n(&["completion_tokens"]).or_else(|| n(&["output_tokens"])).unwrap_or(0);
        let total = n(&["total_tokens"]);
        let prompt = n(&["prompt_tokens"])
            .or_else(|| n(&["input_tokens"]))
            .or_else(|| total.map(|t| t.saturating_sub(completion)))
            .unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total.unwrap_or(prompt + completion),
            // Some VL models and every Singapore model put implicit-cache hits at the top
            // level (research §3.2, "to be migrated").
            cached_tokens: n(&["prompt_tokens_details", "cached_tokens"])
                .or_else(|| n(&["input_tokens_details", "cached_tokens"]))
                .or_else(|| n(&["cached_tokens"]))
                .unwrap_or(0),
            reasoning_tokens: n(&["completion_tokens_details", "reasoning_tokens"])
                .or_else(|| n(&["output_tokens_details", "reasoning_tokens"]))
                .unwrap_or(0),
        }
    }
}

/// A model's price, yuan per million tokens (`ai_prices`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    pub input: f64,
    /// None: the model bills no output (embeddings, rerank).
    pub output: Option<f64>,
    /// Output price in thinking mode, where it differs.
    pub thinking_output: Option<f64>,
    /// Share of the input price a context-cache hit costs (0.2 for the implicit cache).
    pub cached_input_ratio: f64,
}

impl Price {
    /// The price at `ratio` of this one, with no context-cache discount (Bailian's batch
    /// tiers: research §1.10).
    pub fn at_batch_rate(self, ratio: f64) -> Price {
        Price {
            input: self.input * ratio,
            output: self.output.map(|o| o * ratio),
            thinking_output: self.thinking_output.map(|o| o * ratio),
            cached_input_ratio: 1.0,
        }
    }

    /// What an answer's tokens cost, in nano-yuan: uncached input at the input price, cached
    /// input at its share, output at the output price (the thinking one when the answer
    /// reasoned; research §3.6).
    pub fn cost_nano_yuan(&self, u: &Usage) -> u64 {
        let per_token = |yuan_per_mtok: f64| yuan_per_mtok * 1e3; // nano-yuan per token
        let cached = u.cached_tokens.min(u.prompt_tokens);
        let output = if u.reasoning_tokens > 0 { self.thinking_output.or(self.output) } else { self.output };
        let nano = (u.prompt_tokens - cached) as f64 * per_token(self.input)
            + cached as f64 * per_token(self.input * self.cached_input_ratio)
            + u.completion_tokens as f64 * per_token(output.unwrap_or(0.0));
        nano.round().clamp(0.0, u64::MAX as f64) as u64
    }
}

/// How a call was answered without a request of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// By the answer an identical call of the same statement or job was given.
    Shared,
    /// From the answer cache.
    Cache,
    /// With the error an identical call of the same statement or job got (no answer, no
    /// request: an input asked for, and a failure).
    SharedFailure,
}

/// What a call reports, step by step. Every method must be cheap and must not block: it runs
/// inside the backend's runtime, between requests.
pub trait Meter: Sync {
    /// Before anything else: an error here ends the call without sending it (a dry run
    /// answers this way, having counted what would have been sent).
    fn intercept(&self, _body: &Value, _inputs: u64) -> Option<AiError> {
        None
    }
    /// Right before a request goes out (after its rate-limit turn): an error here (a budget
    /// spent) ends the call unsent.
    fn admit(&self) -> Result<(), AiError> {
        Ok(())
    }
    /// A request went out with `inputs` inputs; `retry` when it repeats an earlier one.
    fn sent(&self, _inputs: u64, _retry: bool) {}
    /// An attempt failed after `latency` (`status` None: no HTTP answer).
    fn failed(&self, _status: Option<u16>, _latency: Duration) {}
    /// An answer arrived after `latency`, reporting `usage`.
    fn answered(&self, _usage: &Usage, _latency: Duration) {}
    /// The call failed for good (after its retries).
    fn gave_up(&self) {}
    /// A call was answered without a request of its own: by an identical call's answer in
    /// the same statement or job, or from the answer cache. `usage` is what the answer's
    /// request was billed for: what this call would have cost.
    fn served(&self, _how: Served, _usage: &Usage) {}
    /// A wait for the rate limiter starts (true) or ends (false).
    fn waiting(&self, _starts: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_provider_shape_reads() {
        let compat = Usage::of(
            &json!({"prompt_tokens": 3019, "completion_tokens": 104, "total_tokens": 3123,
            "prompt_tokens_details": {"cached_tokens": 2048}, "completion_tokens_details": {"reasoning_tokens": 38}}),
        );
        assert_eq!(
            compat,
            Usage {
                prompt_tokens: 3019,
                completion_tokens: 104,
                total_tokens: 3123,
                cached_tokens: 2048,
                reasoning_tokens: 38
            }
        );
        let embed = Usage::of(&json!({"prompt_tokens": 6, "total_tokens": 6}));
        assert_eq!((embed.prompt_tokens, embed.completion_tokens, embed.total_tokens), (6, 0, 6));
        let native = Usage::of(&json!({"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}));
        assert_eq!((native.prompt_tokens, native.completion_tokens), (3, 2));
        let rerank = Usage::of(&json!({"total_tokens": 7}));
        assert_eq!((rerank.prompt_tokens, rerank.total_tokens), (7, 7));
        let vl = Usage::of(&json!({"prompt_tokens": 10, "cached_tokens": 4}));
        assert_eq!(vl.cached_tokens, 4);
        assert_eq!(Usage::of(&json!(null)), Usage::default());
        assert_eq!(Usage::of(&json!({"prompt_tokens": -1, "completion_tokens": "x"})), Usage::default());
    }

    #[test]
    fn cost_counts_cache_hits_and_thinking() {
        let p = Price { input: 0.8, output: Some(2.0), thinking_output: Some(8.0), cached_input_ratio: 0.2 };
        let plain = Usage { prompt_tokens: 1000, completion_tokens: 100, ..Usage::default() };
        assert_eq!(p.cost_nano_yuan(&plain), 1000 * 800 + 100 * 2000);
        let cached = Usage { cached_tokens: 500, ..plain };
        assert_eq!(p.cost_nano_yuan(&cached), 500 * 800 + 500 * 160 + 100 * 2000);
        let thinking = Usage { reasoning_tokens: 60, ..plain };
        assert_eq!(p.cost_nano_yuan(&thinking), 1000 * 800 + 100 * 8000);
        let embed = Price { input: 0.5, output: None, thinking_output: None, cached_input_ratio: 1.0 };
        assert_eq!(
            embed.cost_nano_yuan(&Usage { prompt_tokens: 6, total_tokens: 6, ..Usage::default() }),
            3000
        );
    }
}
