//! Bailian's half-price tiers, as its documentation describes them: which models each tier
//! offers, where, and at what share of the real-time price.
//!
//! - **Batch Chat** (research §1.13; "OpenAI compatible - Batch Chat", updated 2026-08): the
//!   same synchronous chat request sent to another host, where it queues while the connection
//!   is held (up to 3600 s, the SDK's timeout, 60-3600 s); Beijing only; 50 % of the price.
//! - **Batch File** (research §1.1-1.10): JSONL files of requests uploaded through `/files`,
//!   run by `/batches` within a completion window; 50 % of the price, no context-cache
//!   discount, not subject to the real-time rate limits.

/// Where Batch Chat requests go: the compatible-mode base of Bailian's batch host.
pub const BATCH_CHAT_ENDPOINT: &str = "https://batch.dashscope.aliyuncs.com/compatible-mode/v1";

/// The models of pg_bailian's registry Batch Chat serves (its page lists newer ones the
/// registry does not have: qwen3.5/3.6/3.7 series).
pub const BATCH_CHAT_MODELS: &[&str] =
    &["qwen3-max", "qwen-plus", "qwen-flash", "deepseek-v3.2", "qwen3-vl-plus", "qwen3-vl-flash"];

/// The client-side wait Batch Chat allows, seconds (its page: "custom timeout 60-3600 s").
pub const BATCH_CHAT_TIMEOUT: (f64, f64) = (60.0, 3600.0);

/// The share of the real-time price both tiers cost where ai_prices names none.
pub const BATCH_RATIO: f64 = 0.5;

/// The models of the registry the Batch File API serves in Beijing (research §1.8: the
/// newest list, S3; qwen-vl-max and qwen-vl-plus are not in the registry): chat and vision
/// models at `/v1/chat/completions`, text embeddings at `/v1/embeddings`.
pub const BATCH_FILE_MODELS_BEIJING: &[&str] = &[
    "qwen3-max",
    "qwen-max",
    "qwen-max-latest",
    "qwen-plus",
    "qwen-plus-latest",
    "qwen-flash",
    "qwen-long",
    "qwen-long-latest",
    "qwq-plus",
    "deepseek-r1",
    "deepseek-v3",
    "deepseek-v3.2",
    "qwen3-vl-plus",
    "qwen3-vl-flash",
    "qwen-vl-ocr",
    "qwen-vl-ocr-latest",
    "text-embedding-v1",
    "text-embedding-v2",
    "text-embedding-v3",
    "text-embedding-v4",
];

/// In Singapore (research §1.8, S1): chat only (qwen-turbo, also listed, is served by
/// OpenSearch alone in the registry).
pub const BATCH_FILE_MODELS_SINGAPORE: &[&str] = &["qwen-max", "qwen-plus", "qwen-flash"];

/// The Batch File models of a region (its name as `Region::as_str` gives it); none elsewhere.
pub fn batch_file_models(region: &str) -> &'static [&'static str] {
    match region {
        "beijing" => BATCH_FILE_MODELS_BEIJING,
        "singapore" => BATCH_FILE_MODELS_SINGAPORE,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_named_is_one_the_registry_knows() {
        for m in BATCH_CHAT_MODELS.iter().chain(BATCH_FILE_MODELS_BEIJING).chain(BATCH_FILE_MODELS_SINGAPORE)
        {
            assert!(crate::registry::find(m).is_some(), "{m}");
        }
        assert!(batch_file_models("virginia").is_empty());
    }
}
