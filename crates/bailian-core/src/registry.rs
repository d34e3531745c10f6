//! The supported models: the single source that deploy-time validation, request building and
//! `ai_supported_models()` read. Bailian's models are transcribed from seed 000 (the Hologres
//! model list), with the embedding dimensions and per-request input limits that
//! `shared/spec/sql-api.md` settles where the seed contradicts itself, and how Bailian's API
//! reference says each one must be called (stream-only, thinking, web search, native API).
//! OpenSearch's text-generation services are transcribed from seed 003.

use std::fmt;

/// What a model does; decides which SQL function may call it and which params it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    Chat,
    Translation,
    Embedding,
    /// Relevance of documents to a query (text rerank models).
    Rerank,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Chat => "chat",
            Task::Translation => "translation",
            Task::Embedding => "embedding",
            Task::Rerank => "rerank",
        }
    }

    pub fn parse(s: &str) -> Option<Task> {
        match s {
            "chat" => Some(Task::Chat),
            "translation" => Some(Task::Translation),
            "embedding" => Some(Task::Embedding),
            "rerank" => Some(Task::Rerank),
            _ => None,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who serves a model: the same id can exist at both (`qwen-plus`), with different APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Alibaba Cloud Model Studio: compatible mode, plus the DashScope native API where a
    /// model is not served in compatible mode.
    Bailian,
    /// OpenSearch AI Search Open Platform's text generation (seed 003).
    OpenSearch,
}

impl Provider {
    pub const ALL: [Provider; 2] = [Provider::Bailian, Provider::OpenSearch];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Bailian => "bailian",
            Provider::OpenSearch => "opensearch",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s.trim().to_ascii_lowercase())
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a model thinks (Bailian's "deep thinking"): the reasoning arrives in
/// `reasoning_content`, apart from the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thinking {
    /// No reasoning output.
    Never,
    /// Hybrid: `enable_thinking` switches it, off unless `default_on`. Thinking needs a
    /// stream (Bailian answers 400 to a non-stream call with `enable_thinking: true`).
    Switchable { default_on: bool },
    /// Thinking only: cannot be switched off; non-stream calls carry the reasoning in
    /// `message.reasoning_content` unless the model is stream-only.
    Always,
}

/// Which API serves a model's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `{base}/chat/completions`, `{base}/embeddings` (OpenAI-compatible).
    Compatible,
    /// DashScope native `{root}/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding`:
    /// the multimodal embedding models are not served by compatible-mode `/embeddings`.
    MultimodalEmbedding,
    /// `{host}/v3/openapi/workspaces/{workspace}/text-generation/{service_id}` (seed 003).
    OpenSearch,
    /// DashScope native `{root}/api/v1/services/rerank/text-rerank/text-rerank`.
    Rerank,
}

/// Extra parameter families beyond what the task gives every model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extras {
    None,
    /// Image inputs (`images` at call time).
    Vision,
    /// Qwen-Omni: `modalities` and `audio`, plus image inputs.
    Omni,
}

#[derive(Debug)]
pub struct ModelSpec {
    pub provider: Provider,
    pub api: Api,
    pub model_type: &'static str,
    /// The seed's category column, in English.
    pub category: &'static str,
    pub task: Task,
    pub inputs: &'static [&'static str],
    pub outputs: &'static [&'static str],
    pub extras: Extras,
    /// Allowed embedding dimensions; empty for non-embedding models.
    pub dimensions: &'static [u32],
    pub default_dimension: Option<u32>,
    /// Inputs one compatible-mode `/embeddings` request may carry.
    pub max_inputs_per_request: Option<u32>,
    /// The seed's remark (region restrictions and the like).
    pub notes: &'static str,
    /// Bailian answers this model only as a stream (400 to a non-stream call).
    pub stream_only: bool,
    pub thinking: Thinking,
    /// Takes `enable_search` (web search).
    pub web_search: bool,
    /// The most `max_tokens` may ask for, where the provider documents a cap.
    pub max_tokens_cap: Option<u32>,
}

impl ModelSpec {
    pub fn accepts_images(&self) -> bool {
        self.inputs.contains(&"image")
    }

    pub fn speaks(&self) -> bool {
        self.outputs.contains(&"audio")
    }

    const fn base(model_type: &'static str, category: &'static str, task: Task) -> ModelSpec {
        ModelSpec {
            provider: Provider::Bailian,
            api: Api::Compatible,
            model_type,
            category,
            task,
            inputs: TEXT,
            outputs: TEXT,
            extras: Extras::None,
            dimensions: &[],
            default_dimension: None,
            max_inputs_per_request: None,
            notes: "",
            stream_only: false,
            thinking: Thinking::Never,
            web_search: false,
            max_tokens_cap: None,
        }
    }

    const fn thinks(mut self, thinking: Thinking) -> ModelSpec {
        self.thinking = thinking;
        self
    }

    const fn searches(mut self) -> ModelSpec {
        self.web_search = true;
        self
    }

    const fn stream_only(mut self) -> ModelSpec {
        self.stream_only = true;
        self
    }
}

const TEXT: &[&str] = &["text"];
const VISION_IN: &[&str] = &["text", "image", "video"];
const OCR_IN: &[&str] = &["text", "image"];
const OMNI_IN: &[&str] = &["text", "image", "audio", "video"];
const OMNI_OUT: &[&str] = &["text", "audio"];
const EMBEDDING_OUT: &[&str] = &["embedding"];
const RERANK_OUT: &[&str] = &["relevance_score"];

const fn chat(model_type: &'static str) -> ModelSpec {
    ModelSpec::base(model_type, "text generation", Task::Chat)
}

const fn vision(model_type: &'static str, inputs: &'static [&'static str]) -> ModelSpec {
    let mut m = ModelSpec::base(model_type, "vision", Task::Chat);
    m.inputs = inputs;
    m.extras = Extras::Vision;
    m
}

const fn translation(model_type: &'static str) -> ModelSpec {
    ModelSpec::base(model_type, "translation", Task::Translation)
}

const fn embedding(
    model_type: &'static str,
    inputs: &'static [&'static str],
    dimensions: &'static [u32],
    default_dimension: u32,
    max_inputs_per_request: u32,
    notes: &'static str,
) -> ModelSpec {
    let mut m = ModelSpec::base(model_type, "embedding", Task::Embedding);
    m.inputs = inputs;
    m.outputs = EMBEDDING_OUT;
    m.dimensions = dimensions;
    m.default_dimension = Some(default_dimension);
    m.max_inputs_per_request = Some(max_inputs_per_request);
    m.notes = notes;
    m
}

const fn multimodal_embedding(
    model_type: &'static str,
    dimensions: &'static [u32],
    default_dimension: u32,
    max_inputs_per_request: u32,
    notes: &'static str,
) -> ModelSpec {
    let mut m =
        embedding(model_type, VISION_IN, dimensions, default_dimension, max_inputs_per_request, notes);
    m.api = Api::MultimodalEmbedding;
    m
}

/// A text rerank model (not in seed 000: Bailian's text-rerank API reference), served by the
/// DashScope native API only.
const fn rerank(model_type: &'static str, notes: &'static str) -> ModelSpec {
    let mut m = ModelSpec::base(model_type, "rerank", Task::Rerank);
    m.api = Api::Rerank;
    m.outputs = RERANK_OUT;
    m.notes = notes;
    m
}

/// An OpenSearch text-generation service (seed 003).
const fn opensearch(service_id: &'static str) -> ModelSpec {
    let mut m = ModelSpec::base(service_id, "opensearch text generation", Task::Chat);
    m.provider = Provider::OpenSearch;
    m.api = Api::OpenSearch;
    m
}

const fn capped(mut m: ModelSpec, max_tokens: u32) -> ModelSpec {
    m.max_tokens_cap = Some(max_tokens);
    m
}

const V4_DIMS: &[u32] = &[2048, 1536, 1024, 768, 512, 256, 128, 64];
const V3_DIMS: &[u32] = &[1024, 768, 512, 256, 128, 64];
const QWEN3_VL_EMBEDDING_DIMS: &[u32] = &[2560, 2048, 1536, 1024, 768, 512, 256];
// Seed 000 lists one size each; the multimodal embedding API reference accepts these.
const VISION_PLUS_DIMS: &[u32] = &[1152, 1024, 512, 256, 128, 64];
const VISION_FLASH_DIMS: &[u32] = &[768, 512, 256, 128, 64];
const NO_VIDEO_OUTSIDE: &str = "video input only in the beijing and singapore regions";

// Thinking per Bailian's deep-thinking and DeepSeek pages and seed 002 §10.1: the commercial
// Qwen models and DeepSeek V3.1/V3.2 are hybrid with thinking off by default; QwQ, DeepSeek-R1
// and the *-thinking models think always. Where Bailian's default is not documented (GLM),
// thinking is taken as on, so calls stream: a stream is accepted either way, while a
// non-stream call to a model that thinks by default is refused.
const HYBRID: Thinking = Thinking::Switchable { default_on: false };
const HYBRID_ON: Thinking = Thinking::Switchable { default_on: true };
const ALWAYS: Thinking = Thinking::Always;

/// Every model of seed 000's table, in the seed's order, then seed 003's services.
pub static MODELS: &[ModelSpec] = &[
    chat("qwen3-max").searches(),
    chat("qwen3-max-2026-01-23").thinks(HYBRID).searches(),
    chat("qwen3-max-preview").thinks(HYBRID).searches(),
    chat("qwen-max").thinks(HYBRID).searches(),
    chat("qwen-max-latest").thinks(HYBRID).searches(),
    chat("qwen-plus").thinks(HYBRID).searches(),
    chat("qwen-plus-latest").thinks(HYBRID).searches(),
    chat("qwen-flash").thinks(HYBRID).searches(),
    chat("qwen-long"),
    chat("qwen-long-latest"),
    chat("qwq-plus").thinks(ALWAYS).stream_only(),
    chat("qwq-plus-latest").thinks(ALWAYS).stream_only(),
    chat("deepseek-v3.2").thinks(HYBRID),
    chat("deepseek-v3.2-exp").thinks(HYBRID),
    chat("deepseek-v3.1").thinks(HYBRID),
    chat("deepseek-r1").thinks(ALWAYS),
    chat("deepseek-r1-0528").thinks(ALWAYS),
    chat("deepseek-v3"),
    chat("deepseek-r1-distill-qwen-1.5b").thinks(ALWAYS),
    chat("deepseek-r1-distill-qwen-7b").thinks(ALWAYS),
    chat("deepseek-r1-distill-qwen-14b").thinks(ALWAYS),
    chat("deepseek-r1-distill-qwen-32b").thinks(ALWAYS),
    chat("kimi-k2-thinking").thinks(ALWAYS),
    chat("Moonshot-Kimi-K2-Instruct"),
    chat("glm-4.6").thinks(HYBRID_ON),
    chat("glm-4.7").thinks(HYBRID_ON),
    chat("glm-5").thinks(HYBRID_ON),
    chat("MiniMax-M2.1").thinks(ALWAYS),
    chat("MiniMax-M2.5").thinks(ALWAYS),
    chat("MiniMax/MiniMax-M2.1").thinks(ALWAYS),
    chat("MiniMax/MiniMax-M2.5").thinks(ALWAYS),
    vision("qwen3-vl-235b-a22b-instruct", VISION_IN),
    vision("qwen3-vl-235b-a22b-thinking", VISION_IN).thinks(ALWAYS),
    vision("qwen3-vl-32b-instruct", VISION_IN),
    vision("qwen3-vl-32b-thinking", VISION_IN).thinks(ALWAYS),
    vision("qwen3-vl-8b-instruct", VISION_IN),
    vision("qwen3-vl-8b-thinking", VISION_IN).thinks(ALWAYS),
    vision("qwen3-vl-plus", VISION_IN).thinks(HYBRID),
    vision("qwen3-vl-flash", VISION_IN).thinks(HYBRID),
    vision("qwen-vl-ocr", OCR_IN),
    vision("qwen-vl-ocr-latest", OCR_IN),
    {
        let mut m = ModelSpec::base("qwen3-omni-flash", "omni", Task::Chat);
        m.inputs = OMNI_IN;
        m.outputs = OMNI_OUT;
        m.extras = Extras::Omni;
        m.stream_only().thinks(HYBRID)
    },
    translation("qwen-mt-plus"),
    translation("qwen-mt-flash"),
    translation("qwen-mt-turbo"),
    translation("qwen-mt-lite"),
    embedding("text-embedding-v1", TEXT, &[1536], 1536, 25, ""),
    embedding("text-embedding-v2", TEXT, &[1536], 1536, 25, ""),
    embedding("text-embedding-v3", TEXT, V3_DIMS, 1024, 10, ""),
    embedding("text-embedding-v4", TEXT, V4_DIMS, 1024, 10, ""),
    // Up to 8 images per request (API reference); batches carry texts, 8 at a time.
    multimodal_embedding("tongyi-embedding-vision-plus", VISION_PLUS_DIMS, 1152, 8, NO_VIDEO_OUTSIDE),
    multimodal_embedding("tongyi-embedding-vision-flash", VISION_FLASH_DIMS, 768, 8, NO_VIDEO_OUTSIDE),
    // One text, one image or one video per request (API reference).
    multimodal_embedding("multimodal-embedding-v1", &[1024], 1024, 1, NO_VIDEO_OUTSIDE),
    multimodal_embedding(
        "qwen3-vl-embedding",
        QWEN3_VL_EMBEDDING_DIMS,
        2560,
        20,
        "image input supported, video input not supported",
    ),
    // Text rerank API reference: the text rerank models and where each is served.
    rerank("gte-rerank-v2", "Beijing region; up to 500 documents per request"),
    rerank("qwen3-rerank", "Singapore region; up to 500 documents per request"),
    // Seed 003: OpenSearch AI Search Open Platform text generation, by service_id.
    capped(opensearch("ops-qwen-turbo"), 4000),
    capped(opensearch("qwen-turbo"), 1500),
    capped(opensearch("qwen-plus"), 2000),
    capped(opensearch("qwen-max"), 2000),
    opensearch("deepseek-r1").thinks(ALWAYS).searches(),
    opensearch("deepseek-v3"),
    opensearch("qwen3-235b-a22b"),
    opensearch("qwq-32b").thinks(ALWAYS),
    opensearch("deepseek-r1-distill-qwen-7b").thinks(ALWAYS),
    opensearch("deepseek-r1-distill-qwen-14b").thinks(ALWAYS),
];

/// Looks a Bailian model up by its exact id (ids are case-sensitive at the provider).
pub fn find(model_type: &str) -> Option<&'static ModelSpec> {
    find_at(Provider::Bailian, model_type)
}

/// Looks a model of `provider` up by its exact id.
pub fn find_at(provider: Provider, model_type: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().find(|m| m.provider == provider && m.model_type == model_type)
}

/// Up to `n` supported ids that resemble `wanted`, for "did you mean" hints.
pub fn similar(provider: Provider, wanted: &str, n: usize) -> Vec<&'static str> {
    let wanted = wanted.to_ascii_lowercase();
    let mut scored: Vec<(usize, &'static str)> = MODELS
        .iter()
        .filter(|m| m.provider == provider)
        .map(|m| (edit_distance(&wanted, &m.model_type.to_ascii_lowercase()), m.model_type))
        .collect();
    scored.sort();
    let limit = wanted.len().max(4) / 2;
    scored.into_iter().filter(|(d, _)| *d <= limit).take(n).map(|(_, m)| m).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn carries_every_model_of_the_seed_once() {
        let bailian: Vec<_> =
            MODELS.iter().filter(|m| m.provider == Provider::Bailian && m.task != Task::Rerank).collect();
        assert_eq!(bailian.len(), 54, "seed 000's table has 54 rows");
        let rerank: Vec<_> = MODELS.iter().filter(|m| m.task == Task::Rerank).map(|m| m.model_type).collect();
        assert_eq!(rerank, ["gte-rerank-v2", "qwen3-rerank"], "the text rerank API reference's text models");
        let opensearch = MODELS.iter().filter(|m| m.provider == Provider::OpenSearch).count();
        assert_eq!(opensearch, 10, "seed 003 lists 10 services");
        let ids: HashSet<_> = MODELS.iter().map(|m| (m.provider, m.model_type)).collect();
        assert_eq!(ids.len(), MODELS.len(), "duplicate model_type");
        let count = |t| bailian.iter().filter(|m| m.task == t).count();
        assert_eq!(count(Task::Chat), 42);
        assert_eq!(count(Task::Translation), 4);
        assert_eq!(count(Task::Embedding), 8);
    }

    #[test]
    fn embedding_dimensions_follow_the_spec() {
        let v4 = find("text-embedding-v4").unwrap();
        assert_eq!(v4.dimensions, &[2048, 1536, 1024, 768, 512, 256, 128, 64]);
        assert_eq!(v4.default_dimension, Some(1024));
        assert_eq!(v4.max_inputs_per_request, Some(10));
        let v3 = find("text-embedding-v3").unwrap();
        assert_eq!(v3.dimensions, &[1024, 768, 512, 256, 128, 64]);
        assert_eq!(v3.default_dimension, Some(1024));
        assert_eq!(find("text-embedding-v1").unwrap().max_inputs_per_request, Some(25));
        assert_eq!(find("text-embedding-v2").unwrap().max_inputs_per_request, Some(25));
        assert_eq!(find("qwen3-vl-embedding").unwrap().default_dimension, Some(2560));
        for m in MODELS {
            match m.task {
                Task::Embedding => {
                    let d = m.default_dimension.expect("embedding default dimension");
                    assert!(m.dimensions.contains(&d), "{}", m.model_type);
                    assert!(m.max_inputs_per_request.is_some());
                }
                _ => assert!(m.dimensions.is_empty() && m.max_inputs_per_request.is_none()),
            }
        }
    }

    #[test]
    fn lookups_are_exact_and_suggest_neighbours() {
        assert!(find("qwen-plus").is_some());
        assert!(find("QWEN-PLUS").is_none());
        assert!(find("MiniMax/MiniMax-M2.5").is_some());
        assert!(similar(Provider::Bailian, "qwen-plsu", 3).contains(&"qwen-plus"));
        assert!(similar(Provider::Bailian, "zzzzzzzzzzzzzzzzzzzz", 3).is_empty());
        assert!(find("qwen-vl-ocr").unwrap().accepts_images());
        assert!(!find("qwen-plus").unwrap().accepts_images());
    }
}
