//! Deterministic embeddings with a usable geometry: each word contributes a fixed
//! pseudo-random direction, so texts that share words point closer together than unrelated
//! ones, and the same text always gets the same unit vector. Also the compatible-mode
//! `/embeddings` endpoint that hands them out.

use crate::errors::{self, invalid, Api};
use crate::models;
use crate::request::Outcome;
use crate::tokens::approx_tokens;
use serde_json::{json, Value};

/// The stand-in's vector for `text` at `dim` dimensions (unit length).
pub fn embedding_for(text: &str, dim: usize) -> Vec<f32> {
    let mut acc = vec![0f64; dim];
    let mut words = 0;
    for word in words_of(text) {
        add_direction(&mut acc, fnv1a(word.as_bytes()));
        words += 1;
    }
    if words == 0 {
        add_direction(&mut acc, fnv1a(text.as_bytes()));
    }
    let norm = acc.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    acc.iter().map(|x| (x / norm) as f32).collect()
}

/// The stand-in's vector for an image (or a video) at `dim` dimensions (unit length): one
/// pseudo-random direction from the bytes, which are the decoded file of a data URI or the
/// URL itself for a file the stand-in does not fetch. Identical inputs give identical vectors;
/// any other input an unrelated one.
pub fn image_embedding_for(bytes_or_url: &[u8], dim: usize) -> Vec<f32> {
    let mut acc = vec![0f64; dim];
    add_direction(&mut acc, fnv1a(bytes_or_url) ^ 0x1a6e_5eed);
    let norm = acc.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    acc.iter().map(|x| (x / norm) as f32).collect()
}

/// The compatible-mode embeddings endpoint (`/embeddings`): the checks Bailian documents for
/// text embedding models, and one vector per input.
pub(crate) fn embeddings(body: &Value, model: &str, inputs: &[String], id: u64) -> Outcome {
    let bad = |m: &str| invalid(Api::Compatible, m, id);
    if models::multimodal(model).is_some() {
        // Observed for multimodal-embedding-v1 and qwen3-vl-embedding (cherry-studio#1024,
        // open-notebook#866): compatible mode serves text embedding models only.
        return errors::respond(
            404,
            errors::error_body(
                &format!("Unsupported model `{model}` for OpenAI compatibility mode."),
                "invalid_request_error",
                "model_not_supported",
                None,
                id,
            ),
        );
    }
    if inputs.is_empty() || inputs.iter().any(String::is_empty) {
        return bad("<400> InternalError.Algo.InvalidParameter: Value error, input should not be empty.");
    }
    let limit = models::max_batch(model);
    if inputs.len() > limit {
        return bad(&format!(
            "<400> InternalError.Algo.InvalidParameter: Value error, batch size is invalid, it should not be larger than {limit}."
        ));
    }
    let (allowed, default) = models::text_dimensions(model);
    let dim = match body.get("dimensions") {
        None => default,
        Some(d) => match d.as_u64().map(|d| d as usize).filter(|d| allowed.contains(d)) {
            Some(d) => d,
            None => {
                return bad(&format!(
                    "<400> InternalError.Algo.InvalidParameter: Value error, dimensions should be one of {allowed:?}."
                ))
            }
        },
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embedding_for(text, dim)}))
        .collect();
    let tokens: u64 = inputs.iter().map(|t| approx_tokens(t)).sum();
    Outcome::Respond {
        status: 200,
        body: json!({
            "data": data,
            "model": model,
            "object": "list",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "id": format!("standin-{id}"),
        }),
        retry_after: None,
    }
}

/// Lower-cased runs of ASCII letters and digits; every other alphabetic character (CJK and
/// the like) is a word of its own.
pub(crate) fn words_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            cur.push(c.to_ascii_lowercase());
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if c.is_alphanumeric() {
            out.push(c.to_lowercase().collect());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn add_direction(acc: &mut [f64], seed: u64) {
    let mut s = seed;
    for x in acc.iter_mut() {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        *x += (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
    }
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn deterministic_unit_vectors_of_the_asked_size() {
        let a = embedding_for("The quick brown fox", 256);
        assert_eq!(a.len(), 256);
        assert_eq!(a, embedding_for("The quick brown fox", 256));
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-4);
        assert_eq!(embedding_for("", 8).len(), 8);
    }

    #[test]
    fn shared_words_are_closer() {
        let fox = embedding_for("the quick brown fox jumps", 1024);
        let dog = embedding_for("the quick brown dog sleeps", 1024);
        let tax = embedding_for("quarterly revenue report for taxes", 1024);
        assert!(cosine(&fox, &dog) > cosine(&fox, &tax) + 0.3);
        let zh1 = embedding_for("我喜欢猫", 512);
        let zh2 = embedding_for("我喜欢狗", 512);
        assert!(cosine(&zh1, &zh2) > cosine(&zh1, &tax));
    }
}
