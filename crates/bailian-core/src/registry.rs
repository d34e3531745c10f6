//! The supported Bailian models: the single source that both deploy-time validation and
//! `ai_supported_models()` read. Transcribed from seed 000 (the Hologres model list), with the
//! embedding dimensions and per-request input limits that `shared/spec/sql-api.md` settles
//! where the seed contradicts itself.

use std::fmt;

/// What a model does; decides which SQL function may call it and which params it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    Chat,
    Translation,
    Embedding,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Chat => "chat",
            Task::Translation => "translation",
            Task::Embedding => "embedding",
        }
    }

    pub fn parse(s: &str) -> Option<Task> {
        match s {
            "chat" => Some(Task::Chat),
            "translation" => Some(Task::Translation),
            "embedding" => Some(Task::Embedding),
            _ => None,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
}

impl ModelSpec {
    pub fn accepts_images(&self) -> bool {
        self.inputs.contains(&"image")
    }
}

const TEXT: &[&str] = &["text"];
const VISION_IN: &[&str] = &["text", "image", "video"];
const OCR_IN: &[&str] = &["text", "image"];
const OMNI_IN: &[&str] = &["text", "image", "audio", "video"];
const OMNI_OUT: &[&str] = &["text", "audio"];
const EMBEDDING_OUT: &[&str] = &["embedding"];

const fn chat(model_type: &'static str, category: &'static str) -> ModelSpec {
    ModelSpec {
        model_type,
        category,
        task: Task::Chat,
        inputs: TEXT,
        outputs: TEXT,
        extras: Extras::None,
        dimensions: &[],
        default_dimension: None,
        max_inputs_per_request: None,
        notes: "",
    }
}

const fn vision(model_type: &'static str, inputs: &'static [&'static str]) -> ModelSpec {
    ModelSpec {
        model_type,
        category: "vision",
        task: Task::Chat,
        inputs,
        outputs: TEXT,
        extras: Extras::Vision,
        dimensions: &[],
        default_dimension: None,
        max_inputs_per_request: None,
        notes: "",
    }
}

const fn translation(model_type: &'static str) -> ModelSpec {
    ModelSpec {
        model_type,
        category: "translation",
        task: Task::Translation,
        inputs: TEXT,
        outputs: TEXT,
        extras: Extras::None,
        dimensions: &[],
        default_dimension: None,
        max_inputs_per_request: None,
        notes: "",
    }
}

const fn embedding(
    model_type: &'static str,
    inputs: &'static [&'static str],
    dimensions: &'static [u32],
    default_dimension: u32,
    max_inputs_per_request: u32,
    notes: &'static str,
) -> ModelSpec {
    ModelSpec {
        model_type,
        category: "embedding",
        task: Task::Embedding,
        inputs,
        outputs: EMBEDDING_OUT,
        extras: Extras::None,
        dimensions,
        default_dimension: Some(default_dimension),
        max_inputs_per_request: Some(max_inputs_per_request),
        notes,
    }
}

const V4_DIMS: &[u32] = &[2048, 1536, 1024, 768, 512, 256, 128, 64];
const V3_DIMS: &[u32] = &[1024, 768, 512, 256, 128, 64];
const QWEN3_VL_EMBEDDING_DIMS: &[u32] = &[2560, 2048, 1536, 1024, 768, 512, 256];
const NO_VIDEO_OUTSIDE: &str = "video input only in the beijing and singapore regions";

/// Every model of seed 000's table, in the seed's order.
pub static MODELS: &[ModelSpec] = &[
    chat("qwen3-max", "text generation"),
    chat("qwen3-max-2026-01-23", "text generation"),
    chat("qwen3-max-preview", "text generation"),
    chat("qwen-max", "text generation"),
    chat("qwen-max-latest", "text generation"),
    chat("qwen-plus", "text generation"),
    chat("qwen-plus-latest", "text generation"),
    chat("qwen-flash", "text generation"),
    chat("qwen-long", "text generation"),
    chat("qwen-long-latest", "text generation"),
    chat("qwq-plus", "text generation"),
    chat("qwq-plus-latest", "text generation"),
    chat("deepseek-v3.2", "text generation"),
    chat("deepseek-v3.2-exp", "text generation"),
    chat("deepseek-v3.1", "text generation"),
    chat("deepseek-r1", "text generation"),
    chat("deepseek-r1-0528", "text generation"),
    chat("deepseek-v3", "text generation"),
    chat("deepseek-r1-distill-qwen-1.5b", "text generation"),
    chat("deepseek-r1-distill-qwen-7b", "text generation"),
    chat("deepseek-r1-distill-qwen-14b", "text generation"),
    chat("deepseek-r1-distill-qwen-32b", "text generation"),
    chat("kimi-k2-thinking", "text generation"),
    chat("Moonshot-Kimi-K2-Instruct", "text generation"),
    chat("glm-4.6", "text generation"),
    chat("glm-4.7", "text generation"),
    chat("glm-5", "text generation"),
    chat("MiniMax-M2.1", "text generation"),
    chat("MiniMax-M2.5", "text generation"),
    chat("MiniMax/MiniMax-M2.1", "text generation"),
    chat("MiniMax/MiniMax-M2.5", "text generation"),
    vision("qwen3-vl-235b-a22b-instruct", VISION_IN),
    vision("qwen3-vl-235b-a22b-thinking", VISION_IN),
    vision("qwen3-vl-32b-instruct", VISION_IN),
    vision("qwen3-vl-32b-thinking", VISION_IN),
    vision("qwen3-vl-8b-instruct", VISION_IN),
    vision("qwen3-vl-8b-thinking", VISION_IN),
    vision("qwen3-vl-plus", VISION_IN),
    vision("qwen3-vl-flash", VISION_IN),
    vision("qwen-vl-ocr", OCR_IN),
    vision("qwen-vl-ocr-latest", OCR_IN),
    ModelSpec {
        model_type: "qwen3-omni-flash",
        category: "omni",
        task: Task::Chat,
        inputs: OMNI_IN,
        outputs: OMNI_OUT,
        extras: Extras::Omni,
        dimensions: &[],
        default_dimension: None,
        max_inputs_per_request: None,
        notes: "",
    },
    translation("qwen-mt-plus"),
    translation("qwen-mt-flash"),
    translation("qwen-mt-turbo"),
    translation("qwen-mt-lite"),
    embedding("text-embedding-v1", TEXT, &[1536], 1536, 25, ""),
    embedding("text-embedding-v2", TEXT, &[1536], 1536, 25, ""),
    embedding("text-embedding-v3", TEXT, V3_DIMS, 1024, 10, ""),
    embedding("text-embedding-v4", TEXT, V4_DIMS, 1024, 10, ""),
    embedding("tongyi-embedding-vision-plus", VISION_IN, &[1152], 1152, 10, NO_VIDEO_OUTSIDE),
    embedding("tongyi-embedding-vision-flash", VISION_IN, &[768], 768, 10, NO_VIDEO_OUTSIDE),
    embedding("multimodal-embedding-v1", VISION_IN, &[1024], 1024, 10, NO_VIDEO_OUTSIDE),
    embedding(
        "qwen3-vl-embedding",
        VISION_IN,
        QWEN3_VL_EMBEDDING_DIMS,
        2560,
        10,
        "image input supported, video input not supported",
    ),
];

/// Looks a model up by its exact Bailian id (ids are case-sensitive at the provider).
pub fn find(model_type: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().find(|m| m.model_type == model_type)
}

/// Up to `n` supported ids that resemble `wanted`, for "did you mean" hints.
pub fn similar(wanted: &str, n: usize) -> Vec<&'static str> {
    let wanted = wanted.to_ascii_lowercase();
    let mut scored: Vec<(usize, &'static str)> = MODELS
        .iter()
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
        assert_eq!(MODELS.len(), 54, "seed 000's table has 54 rows");
        let ids: HashSet<_> = MODELS.iter().map(|m| m.model_type).collect();
        assert_eq!(ids.len(), MODELS.len(), "duplicate model_type");
        let count = |t| MODELS.iter().filter(|m| m.task == t).count();
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
        assert!(similar("qwen-plsu", 3).contains(&"qwen-plus"));
        assert!(similar("zzzzzzzzzzzzzzzzzzzz", 3).is_empty());
        assert!(find("qwen-vl-ocr").unwrap().accepts_images());
        assert!(!find("qwen-plus").unwrap().accepts_images());
    }
}
