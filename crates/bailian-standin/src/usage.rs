//! Token usage as the answers report it, by the field names each API documents: compatible
//! chat `prompt_tokens`, `completion_tokens`, `total_tokens`,
//! `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`
//! (research §3.1); compatible embeddings `prompt_tokens` and `total_tokens` (§3.3);
//! multimodal embedding `input_tokens` (§3.4); rerank `total_tokens` (§3.5); OpenSearch
//! `input_tokens`, `output_tokens`, `total_tokens` (seed 003).

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
}
