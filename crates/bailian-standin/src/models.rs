//! What the stand-in knows about Bailian's models: which answer only as a stream, which
//! think and by default, which search the web, which see images, their limits. Kept apart
//! from pg_bailian's registry on purpose: the provider and the client must each hold their
//! own view, so a disagreement shows up in tests.

/// How a chat model reasons.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Thinking {
    /// Never returns `reasoning_content`; `enable_thinking` is ignored.
    Never,
    /// Always reasons; `enable_thinking` cannot turn it off.
    Always,
    /// Reasons when `enable_thinking` says so; `default` when the request does not.
    Hybrid { default: bool },
}

/// Models that refuse a call without `"stream": true`. Source: the streaming page ("Qwen3
/// open-source edition, QwQ commercial and open-source editions, QVQ, and Qwen-Omni support
/// only streaming output") and the Qwen-Omni page. Open-source Qwen3 is not here: it is a
/// hybrid thinker whose default is on, so a plain non-stream call fails on
/// `enable_thinking` instead, and succeeds with `enable_thinking: false` (observed in
/// ragflow#8972, new-api#1109).
pub fn stream_only(model: &str) -> bool {
    model.starts_with("qwq-") || model.starts_with("qvq-") || is_omni(model)
}

pub fn is_omni(model: &str) -> bool {
    model.starts_with("qwen3-omni-") || model.starts_with("qwen-omni-") || model.starts_with("qwen2.5-omni-")
}

/// Sources: seed 002 §10.1 (qwq-plus, deepseek-r1, kimi-k2-thinking think always; qwen-plus,
/// qwen-turbo, qwen-max are hybrid), the DeepSeek page ("Thinking-only models: deepseek-r1 and
/// deepseek-r1-0528"; deepseek-v3.1/v3.2 hybrid, off by default), the deep-thinking page
/// (commercial Qwen off by default, open-source Qwen3 on by default). qwen3-vl-*-thinking
/// and the `-thinking-2507` snapshots think always by their name.
pub fn thinking(model: &str) -> Thinking {
    let always = model.starts_with("qwq-")
        || model.starts_with("qvq-")
        || model.starts_with("deepseek-r1")
        || model == "kimi-k2-thinking"
        || model.contains("-thinking");
    if always {
        return Thinking::Always;
    }
    const HYBRID_OFF: &[&str] = &[
        "qwen-plus",
        "qwen-plus-latest",
        "qwen-turbo",
        "qwen-turbo-latest",
        "qwen-flash",
        "qwen-max",
        "qwen-max-latest",
        "qwen3-max-preview",
        "qwen3-vl-plus",
        "qwen3-vl-flash",
        "deepseek-v3.1",
        "deepseek-v3.2",
        "deepseek-v3.2-exp",
        "glm-4.5",
        "glm-4.6",
        "glm-4.7",
        "glm-5",
    ];
    if HYBRID_OFF.contains(&model) || model.starts_with("qwen-plus-20") || model.starts_with("qwen-flash-20")
    {
        return Thinking::Hybrid { default: false };
    }
    // Open-source Qwen3 (qwen3-235b-a22b, qwen3-32b, qwen3-8b, ...), but not the
    // `-instruct-2507` snapshots, which never think.
    let open_qwen3 = model.starts_with("qwen3-")
        && !model.contains("-instruct")
        && !model.starts_with("qwen3-max")
        && !model.starts_with("qwen3-vl")
        && !model.starts_with("qwen3-omni")
        && !model.starts_with("qwen3-coder")
        && !model.contains("embedding");
    if open_qwen3 {
        return Thinking::Hybrid { default: true };
    }
    Thinking::Never
}

/// The largest `thinking_budget` (the maximum chain-of-thought length in the model list).
/// The docs give it per model in a table the stand-in does not copy whole; DeepSeek's is
/// 32,768 (DeepSeek page), the Qwen3 hybrids' 38,912 (model list), and that is what the
/// others get here.
pub fn max_thinking_budget(model: &str) -> u64 {
    if model.starts_with("deepseek-") || model.starts_with("qwq-") {
        32_768
    } else if model.starts_with("qwen3-vl") {
        81_920
    } else {
        38_912
    }
}

/// The largest `max_tokens` (maximum output in the model list). Models the stand-in does not
/// list get a generous bound, so only absurd values are refused.
pub fn max_output_tokens(model: &str) -> u64 {
    match model {
        "qwen-max" | "qwen-max-latest" | "qwen-vl-max" | "qwen-vl-plus" | "qwq-plus" | "qwq-plus-latest"
        | "qwen-long" | "qwen-mt-plus" | "qwen-mt-turbo" | "qwen-mt-flash" => 8_192,
        "qwen-turbo" | "qwen-turbo-latest" => 16_384,
        "qwen-plus" | "qwen-plus-latest" | "qwen-flash" | "qwen3-vl-plus" | "qwen3-vl-flash" => 32_768,
        "qwen3-max" | "qwen3-max-preview" => 65_536,
        "deepseek-r1" | "deepseek-r1-0528" | "deepseek-v3" => 16_384,
        "qwen3-omni-flash" => 16_384,
        _ => 131_072,
    }
}

/// Models that take `enable_search` in compatible mode. Source: the web-search page (current
/// qwen3-max, qwen3.5/3.6-plus, qwen3.5-flash; older pages qwen-max, qwen-plus, qwen-flash,
/// qwen-turbo) and seed 002 §10.2 ("not all models support web search"). Others answer the
/// documented "This model does not support enable_search." (error-code page).
pub fn searches(model: &str) -> bool {
    const PREFIXES: &[&str] =
        &["qwen-max", "qwen-plus", "qwen-flash", "qwen-turbo", "qwen3-max", "qwen3.5-", "qwen3.6-"];
    PREFIXES.iter().any(|p| model.starts_with(p))
}

/// Models that read `image_url` parts: the Qwen-VL, QVQ and Omni families.
pub fn sees_images(model: &str) -> bool {
    model.contains("-vl") || model.starts_with("qvq-") || is_omni(model)
}

/// Voices of qwen3-omni-flash. The Qwen-Omni page shows only `Cherry` in its examples; the
/// list is the Qwen3 voice set the Qwen team publishes for qwen3-omni-flash and
/// qwen3-tts-flash (17 voices). Older Omni models (qwen-omni-turbo, qwen2.5-omni-7b) document
/// `Ethan` and `Chelsie`.
pub fn voices(model: &str) -> &'static [&'static str] {
    if model.starts_with("qwen3-omni-") {
        &[
            "Cherry", "Ethan", "Nofish", "Jennifer", "Ryan", "Katerina", "Elias", "Jada", "Dylan", "Sunny",
            "Li", "Marcus", "Roy", "Peter", "Rocky", "Kiki", "Eric",
        ]
    } else {
        &["Ethan", "Chelsie"]
    }
}

/// Models with implicit context cache. Source: the context-cache page (research §3.6, S9,
/// Beijing list): the stable names only, since "snapshot and -latest models are not
/// supported".
pub fn implicit_cache(model: &str) -> bool {
    const MODELS: &[&str] = &[
        "qwen3-max",
        "qwen-max",
        "qwen-plus",
        "qwen-flash",
        "qwen-turbo",
        "qwen3-coder-plus",
        "qwen3-coder-flash",
        "deepseek-v3.2",
        "deepseek-v3.1",
        "deepseek-v3",
        "deepseek-r1",
        "kimi-k2.5",
        "kimi-k2-thinking",
        "Moonshot-Kimi-K2-Instruct",
        "glm-5",
        "glm-4.7",
        "glm-4.6",
        "MiniMax-M2.5",
        "qwen3-vl-plus",
        "qwen3-vl-flash",
        "qwen-vl-max",
        "qwen-vl-plus",
        "qwen-plus-character",
    ];
    MODELS.contains(&model)
}

/// The model of the Batch File API's test mode: free, at `/v1/chat/ds-test` only, answering
/// "This is a test result." (research §1.4).
pub const BATCH_TEST_MODEL: &str = "batch-test-model";

/// Models the Batch File API runs at `endpoint` in Beijing (research §1.8): the text and
/// vision models of S1's list with the additions of the newer S3 (qwen-long, deepseek-v3.2,
/// qwen-vl-ocr-latest), and text-embedding-v1 to v4 at `/v1/embeddings` (S3; S1 listed v4
/// only). The test model is the test endpoint's alone. A model outside these is refused when
/// the batch is created (404 ModelNotFound, S7).
pub fn batch_file(endpoint: &str, model: &str) -> bool {
    const CHAT: &[&str] = &[
        // Text.
        "qwen3-max",
        "qwen-max",
        "qwen-max-latest",
        "qwen3.5-plus",
        "qwen-plus",
        "qwen-plus-latest",
        "qwen3.5-flash",
        "qwen-flash",
        "qwen-long-latest",
        "qwen-long",
        "qwq-plus",
        "deepseek-r1",
        "deepseek-v3",
        "deepseek-v3.2",
        // Vision.
        "qwen3-vl-plus",
        "qwen3-vl-flash",
        "qwen-vl-max",
        "qwen-vl-max-latest",
        "qwen-vl-plus",
        "qwen-vl-plus-latest",
        "qwen-vl-ocr",
        "qwen-vl-ocr-latest",
    ];
    const EMBEDDINGS: &[&str] =
        &["text-embedding-v1", "text-embedding-v2", "text-embedding-v3", "text-embedding-v4"];
    match endpoint {
        "/v1/chat/completions" => CHAT.contains(&model),
        "/v1/embeddings" => EMBEDDINGS.contains(&model),
        "/v1/chat/ds-test" => model == BATCH_TEST_MODEL,
        _ => false,
    }
}

/// Models the Batch Chat host serves (research §1.13, S6, the latest version of the page):
/// of those the stand-in knows, qwen3-max, qwen-plus, qwen-flash, deepseek-v3.2 and the
/// vision models qwen3-vl-plus and qwen3-vl-flash. The list changes between versions of the
/// page; newer qwen3.x names are left out until the stand-in knows them.
pub fn batch_chat(model: &str) -> bool {
    const MODELS: &[&str] =
        &["qwen3-max", "qwen-plus", "qwen-flash", "deepseek-v3.2", "qwen3-vl-plus", "qwen3-vl-flash"];
    MODELS.contains(&model)
}

/// Inputs one compatible-mode embeddings request may carry.
pub fn max_batch(model: &str) -> usize {
    if model == "text-embedding-v1" || model == "text-embedding-v2" {
        25
    } else {
        10
    }
}

/// Allowed `dimensions` of the text embedding models and the default.
pub fn text_dimensions(model: &str) -> (&'static [usize], usize) {
    match model {
        "text-embedding-v4" => (&[2048, 1536, 1024, 768, 512, 256, 128, 64], 1024),
        "text-embedding-v3" => (&[1024, 768, 512, 256, 128, 64], 1024),
        "text-embedding-v1" | "text-embedding-v2" => (&[1536], 1536),
        _ => (&[1024], 1024),
    }
}

pub fn is_text_embedding(model: &str) -> bool {
    model.starts_with("text-embedding-")
}

/// A multimodal embedding model: what it accepts in one request of the native API. Source:
/// the multimodal-embedding API reference (model overview, input formats, independent and
/// fused embeddings).
pub struct MultimodalModel {
    pub dimensions: &'static [usize],
    pub default_dimension: usize,
    /// Largest image, decoded.
    pub max_image_bytes: usize,
    /// Most images in one request.
    pub max_images: usize,
    /// Most texts and videos in one request.
    pub max_texts: usize,
    pub max_videos: usize,
    /// Most content items of any kind in one request.
    pub max_contents: usize,
    /// Image formats a data URI may declare.
    pub image_formats: &'static [&'static str],
    /// `enable_fusion` is accepted.
    pub fuses: bool,
}

const COMMON_IMAGE_FORMATS: &[&str] = &["jpg", "jpeg", "png", "bmp"];
const QWEN3_VL_IMAGE_FORMATS: &[&str] =
    &["jpg", "jpeg", "png", "webp", "bmp", "tiff", "ico", "dib", "icns", "sgi", "x-icon", "x-ms-bmp"];

pub fn multimodal(model: &str) -> Option<MultimodalModel> {
    const MB: usize = 1024 * 1024;
    match model {
        // "单段文字、单张图片或单个视频 ... 允许不同类型单文件组合".
        "multimodal-embedding-v1" => Some(MultimodalModel {
            dimensions: &[1024],
            default_dimension: 1024,
            max_image_bytes: 3 * MB,
            max_images: 1,
            max_texts: 1,
            max_videos: 1,
            max_contents: 3,
            image_formats: COMMON_IMAGE_FORMATS,
            fuses: false,
        }),
        "tongyi-embedding-vision-plus" => Some(MultimodalModel {
            dimensions: &[1152, 1024, 512, 256, 128, 64],
            default_dimension: 1152,
            max_image_bytes: 3 * MB,
            max_images: 8,
            max_texts: 20,
            max_videos: 1,
            max_contents: 20,
            image_formats: COMMON_IMAGE_FORMATS,
            fuses: false,
        }),
        "tongyi-embedding-vision-flash" => Some(MultimodalModel {
            dimensions: &[768, 512, 256, 128, 64],
            default_dimension: 768,
            max_image_bytes: 3 * MB,
            max_images: 8,
            max_texts: 20,
            max_videos: 1,
            max_contents: 20,
            image_formats: COMMON_IMAGE_FORMATS,
            fuses: false,
        }),
        // "一次请求中传入内容元素总数不超过 20".
        "qwen3-vl-embedding" => Some(MultimodalModel {
            dimensions: &[2560, 2048, 1536, 1024, 768, 512, 256],
            default_dimension: 2560,
            max_image_bytes: 10 * MB,
            max_images: 20,
            max_texts: 20,
            max_videos: 20,
            max_contents: 20,
            image_formats: QWEN3_VL_IMAGE_FORMATS,
            fuses: true,
        }),
        _ => None,
    }
}

/// A text rerank model: what one request of the native API may carry. Source: the
/// text-rerank API reference (https://www.alibabacloud.com/help/en/model-studio/text-rerank-api),
/// model overview: at most 500 documents for both; at most 30,000 input tokens per request
/// for gte-rerank-v2 and 120,000 for qwen3-rerank, counted as query tokens × documents + all
/// document tokens; `instruct` is a qwen3-rerank parameter.
pub struct RerankModel {
    pub max_documents: usize,
    pub max_request_tokens: u64,
    pub instructs: bool,
}

pub fn rerank(model: &str) -> Option<RerankModel> {
    match model {
        "gte-rerank-v2" => {
            Some(RerankModel { max_documents: 500, max_request_tokens: 30_000, instructs: false })
        }
        "qwen3-rerank" => {
            Some(RerankModel { max_documents: 500, max_request_tokens: 120_000, instructs: true })
        }
        _ => None,
    }
}

/// OpenSearch text-generation services (seed 003) and their `max_tokens` ceiling where the
/// seed gives one (qwen-turbo 1500, qwen-max and qwen-plus 2000, ops-qwen-turbo 4000).
pub fn opensearch_service(service_id: &str) -> Option<Option<u64>> {
    match service_id {
        "qwen-turbo" => Some(Some(1500)),
        "qwen-plus" | "qwen-max" => Some(Some(2000)),
        "ops-qwen-turbo" => Some(Some(4000)),
        "deepseek-r1"
        | "deepseek-v3"
        | "qwen3-235b-a22b"
        | "qwq-32b"
        | "deepseek-r1-distill-qwen-7b"
        | "deepseek-r1-distill-qwen-14b" => Some(None),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinking_and_streaming_sets() {
        for m in ["qwq-plus", "qwq-plus-latest", "qwen3-omni-flash"] {
            assert!(stream_only(m), "{m}");
        }
        for m in ["deepseek-r1", "qwen-plus", "qwen3-32b", "qwen3-vl-plus"] {
            assert!(!stream_only(m), "{m}");
        }
        for m in
            ["qwq-plus", "deepseek-r1", "deepseek-r1-0528", "kimi-k2-thinking", "qwen3-vl-235b-a22b-thinking"]
        {
            assert_eq!(thinking(m), Thinking::Always, "{m}");
        }
        assert_eq!(thinking("qwen-plus"), Thinking::Hybrid { default: false });
        assert_eq!(thinking("qwen3-32b"), Thinking::Hybrid { default: true });
        assert_eq!(thinking("qwen3-235b-a22b-instruct-2507"), Thinking::Never);
        assert_eq!(thinking("qwen-long"), Thinking::Never);
        assert_eq!(thinking("deepseek-v3"), Thinking::Never);
    }
}
