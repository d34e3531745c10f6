//! Model parameters (`params jsonb`): which keys each model takes, their ranges, and the merge
//! of deployed defaults with per-call overrides. Deploy-time and call-time checks are the same
//! code, so a value accepted at one is accepted at the other.

use crate::error::AiError;
use crate::registry::{Extras, ModelSpec, Provider, Task, Thinking};
use serde_json::{Map, Value};

/// When the params are checked: some keys exist only per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Deploy,
    Call,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    Temperature,
    TopP,
    MaxTokens,
    EnableThinking,
    Seed,
    Stop,
    System,
    Modalities,
    Audio,
    Images,
    SourceLang,
    Terms,
    TmList,
    Domains,
    Dimension,
    Timeout,
    MaxRetries,
    Stream,
    TopK,
    PresencePenalty,
    RepetitionPenalty,
    ThinkingBudget,
    EnableSearch,
    SearchOptions,
    ResponseFormat,
    Voice,
    CsiLevel,
    SearchReturnResult,
    SearchTopK,
    SearchWay,
}

use Param::*;

const ALL: &[Param] = &[
    Temperature,
    TopP,
    MaxTokens,
    EnableThinking,
    Seed,
    Stop,
    System,
    Modalities,
    Audio,
    Images,
    SourceLang,
    Terms,
    TmList,
    Domains,
    Dimension,
    Timeout,
    MaxRetries,
    Stream,
    TopK,
    PresencePenalty,
    RepetitionPenalty,
    ThinkingBudget,
    EnableSearch,
    SearchOptions,
    ResponseFormat,
    Voice,
    CsiLevel,
    SearchReturnResult,
    SearchTopK,
    SearchWay,
];

/// Compatible-mode chat parameters every Bailian chat model takes (Bailian's chat API
/// reference); thinking, search and audio parameters are added per model.
const CHAT: &[Param] = &[
    Temperature,
    TopP,
    TopK,
    MaxTokens,
    Seed,
    Stop,
    PresencePenalty,
    RepetitionPenalty,
    System,
    ResponseFormat,
];
const OMNI: &[Param] = &[Modalities, Audio, Voice];
/// Seed 003's request parameters.
const OPENSEARCH: &[Param] =
    &[Temperature, TopP, TopK, MaxTokens, Seed, Stop, PresencePenalty, RepetitionPenalty, System, CsiLevel];
const OPENSEARCH_SEARCH: &[Param] = &[EnableSearch, SearchReturnResult, SearchTopK, SearchWay];
const TRANSLATION: &[Param] = &[SourceLang, Terms, TmList, Domains];

impl Param {
    fn name(self) -> &'static str {
        match self {
            Temperature => "temperature",
            TopP => "top_p",
            MaxTokens => "max_tokens",
            EnableThinking => "enable_thinking",
            Seed => "seed",
            Stop => "stop",
            System => "system",
            Modalities => "modalities",
            Audio => "audio",
            Images => "images",
            SourceLang => "source_lang",
            Terms => "terms",
            TmList => "tm_list",
            Domains => "domains",
            Dimension => "dimension",
            Timeout => "timeout",
            MaxRetries => "max_retries",
            Stream => "stream",
            TopK => "top_k",
            PresencePenalty => "presence_penalty",
            RepetitionPenalty => "repetition_penalty",
            ThinkingBudget => "thinking_budget",
            EnableSearch => "enable_search",
            SearchOptions => "search_options",
            ResponseFormat => "response_format",
            Voice => "voice",
            CsiLevel => "csi_level",
            SearchReturnResult => "search_return_result",
            SearchTopK => "search_top_k",
            SearchWay => "search_way",
        }
    }

    fn from_name(name: &str) -> Option<Param> {
        ALL.iter().copied().find(|p| p.name() == name)
    }

    fn allowed(self, spec: &ModelSpec) -> String {
        let opensearch = spec.provider == Provider::OpenSearch;
        match self {
            Temperature => "a number in [0, 2)".into(),
            TopP if opensearch => "a number in (0, 1)".into(),
            TopP => "a number in (0, 1]".into(),
            MaxTokens => match spec.max_tokens_cap {
                Some(cap) => format!("a positive integer up to {cap}"),
                None => "a positive integer up to 2147483647".into(),
            },
            EnableThinking | Stream | EnableSearch | SearchReturnResult => "true or false".into(),
            Seed if opensearch => "an integer in [0, 18446744073709551615]".into(),
            Seed => "an integer in [0, 2147483647]".into(),
            TopK => "an integer in [0, 2147483647] (above 100 turns top_k off)".into(),
            PresencePenalty => "a number in [-2, 2]".into(),
            RepetitionPenalty => "a number greater than 0 (1 means no penalty)".into(),
            ThinkingBudget | SearchTopK => "a positive integer up to 2147483647".into(),
            SearchOptions => "an object with forced_search (true or false) and search_strategy \
                              (\"turbo\", \"max\", \"agent\" or \"agent_max\")"
                .into(),
            ResponseFormat => {
                "{\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \
                               \"json_schema\": {\"name\": \"...\", \"schema\": {...}, \"strict\": true}}"
                    .into()
            }
            Voice => "a non-empty voice name, e.g. \"Cherry\"".into(),
            CsiLevel => "\"none\", \"loose\", \"strict\" or \"rigorous\"".into(),
            SearchWay => "\"normal\", \"fast\" or \"full\"".into(),
            Stop => "a non-empty string or an array of 1 to 4 non-empty strings".into(),
            System => "a non-empty string".into(),
            Modalities => "[\"text\"] or [\"text\", \"audio\"]".into(),
            Audio => "an object {\"voice\": \"<voice name>\", \"format\": \"wav\"}".into(),
            Images => "a non-empty array of image URLs (http://, https://) or data:image/... URIs".into(),
            SourceLang => "a non-empty language name or code, e.g. \"auto\", \"zh\", \"English\"".into(),
            Terms | TmList => {
                "an array of objects {\"source\": \"...\", \"target\": \"...\"} with non-empty strings".into()
            }
            Domains => "a non-empty string describing the domain".into(),
            Dimension => {
                let dims: Vec<String> = spec
                    .dimensions
                    .iter()
                    .map(|d| {
                        if Some(*d) == spec.default_dimension {
                            format!("{d} (default)")
                        } else {
                            d.to_string()
                        }
                    })
                    .collect();
                format!("one of {}", dims.join(", "))
            }
            Timeout => "a number of seconds in [1, 1200]".into(),
            MaxRetries => "an integer in [0, 100]".into(),
        }
    }

    /// Checks one value; `Some(normalized)` when it is allowed.
    fn check(self, v: &Value, spec: &ModelSpec) -> Option<Value> {
        let opensearch = spec.provider == Provider::OpenSearch;
        let one_of = |allowed: &[&str]| v.as_str().is_some_and(|s| allowed.contains(&s));
        let ok = match self {
            Temperature => v.as_f64().is_some_and(|t| (0.0..2.0).contains(&t)),
            TopP if opensearch => v.as_f64().is_some_and(|p| p > 0.0 && p < 1.0),
            TopP => v.as_f64().is_some_and(|p| p > 0.0 && p <= 1.0),
            MaxTokens => {
                let cap = spec.max_tokens_cap.map_or(i32::MAX as u64, u64::from);
                v.as_u64().is_some_and(|n| (1..=cap).contains(&n))
            }
            EnableThinking | Stream | EnableSearch | SearchReturnResult => v.is_boolean(),
            Seed if opensearch => v.as_u64().is_some(),
            Seed => v.as_u64().is_some_and(|n| n <= i32::MAX as u64),
            TopK => v.as_u64().is_some_and(|n| n <= i32::MAX as u64),
            PresencePenalty => v.as_f64().is_some_and(|p| (-2.0..=2.0).contains(&p)),
            RepetitionPenalty => v.as_f64().is_some_and(|p| p > 0.0 && p.is_finite()),
            ThinkingBudget | SearchTopK => v.as_u64().is_some_and(|n| (1..=i32::MAX as u64).contains(&n)),
            SearchOptions => v.as_object().is_some_and(|o| {
                o.iter().all(|(k, v)| match k.as_str() {
                    "forced_search" => v.is_boolean(),
                    "search_strategy" => {
                        v.as_str().is_some_and(|s| ["turbo", "max", "agent", "agent_max"].contains(&s))
                    }
                    _ => false,
                })
            }),
            ResponseFormat => response_format_ok(v),
            Voice => v.as_str().is_some_and(|s| !s.trim().is_empty()),
            CsiLevel => one_of(&["none", "loose", "strict", "rigorous"]),
            SearchWay => one_of(&["normal", "fast", "full"]),
            Stop => match v {
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => {
                    (1..=4).contains(&a.len()) && a.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty()))
                }
                _ => false,
            },
            System | Domains | SourceLang => v.as_str().is_some_and(|s| !s.trim().is_empty()),
            Modalities => {
                let m: Option<Vec<&str>> = v.as_array().and_then(|a| a.iter().map(Value::as_str).collect());
                matches!(m.as_deref(), Some(["text"]) | Some(["text", "audio"]))
            }
            Audio => v.as_object().is_some_and(|o| {
                o.keys().all(|k| k == "voice" || k == "format")
                    && o.get("voice").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
                    && o.get("format").is_none_or(|f| f == "wav")
            }),
            Images => v.as_array().is_some_and(|a| {
                !a.is_empty()
                    && a.iter().all(|i| {
                        i.as_str().is_some_and(|s| {
                            let lower = s.to_ascii_lowercase();
                            (lower.starts_with("https://") || lower.starts_with("http://")) && s.len() > 8
                                || lower.starts_with("data:image/") && s.contains(',')
                        })
                    })
            }),
            Terms | TmList => v.as_array().is_some_and(|a| {
                a.iter().all(|pair| {
                    pair.as_object().is_some_and(|o| {
                        o.len() == 2
                            && ["source", "target"]
                                .iter()
                                .all(|k| o.get(*k).and_then(Value::as_str).is_some_and(|s| !s.is_empty()))
                    })
                })
            }),
            Dimension => {
                v.as_u64().is_some_and(|d| spec.dimensions.iter().any(|allowed| u64::from(*allowed) == d))
            }
            Timeout => v.as_f64().is_some_and(|t| (1.0..=1200.0).contains(&t)),
            MaxRetries => v.as_u64().is_some_and(|n| n <= 100),
        };
        if !ok {
            return None;
        }
        // Integers written as 1.0 are refused by as_u64, so values pass through unchanged.
        Some(v.clone())
    }
}

/// `response_format` as Bailian's structured-output guide describes it.
pub(crate) fn response_format_ok(v: &Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    match o.get("type").and_then(Value::as_str) {
        Some("text" | "json_object") => o.len() == 1,
        Some("json_schema") => {
            o.len() == 2
                && o.get("json_schema").and_then(Value::as_object).is_some_and(|js| {
                    js.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty())
                        && js.get("schema").is_some_and(Value::is_object)
                        && js.get("strict").is_none_or(Value::is_boolean)
                        && js
                            .keys()
                            .all(|k| ["name", "schema", "strict", "description"].contains(&k.as_str()))
                })
        }
        _ => false,
    }
}

/// The keys `spec` accepts in `phase`, in the order error messages list them.
fn accepted(spec: &ModelSpec, phase: Phase) -> Vec<Param> {
    let opensearch = spec.provider == Provider::OpenSearch;
    let mut keys: Vec<Param> = match spec.task {
        Task::Chat if opensearch => OPENSEARCH.to_vec(),
        Task::Chat => CHAT.to_vec(),
        Task::Translation => TRANSLATION.to_vec(),
        Task::Embedding => vec![Dimension],
        Task::Rerank => vec![],
    };
    if spec.task == Task::Chat {
        match spec.thinking {
            Thinking::Switchable { .. } if !opensearch => {
                keys.extend_from_slice(&[EnableThinking, ThinkingBudget])
            }
            Thinking::Always if !opensearch => keys.push(ThinkingBudget),
            _ => {}
        }
        if spec.web_search {
            keys.extend_from_slice(if opensearch {
                OPENSEARCH_SEARCH
            } else {
                &[EnableSearch, SearchOptions]
            });
        }
    }
    if spec.extras == Extras::Omni {
        keys.extend_from_slice(OMNI);
    }
    if phase == Phase::Call {
        if spec.task == Task::Chat {
            keys.push(Stream);
            if spec.accepts_images() {
                keys.push(Images);
            }
        }
        keys.extend_from_slice(&[Timeout, MaxRetries]);
    }
    keys
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Accepts the seed's `{"extra_body": {"translation_options": {...}}}` shape by lifting the
/// options to the top level, refusing a key given both ways.
fn flatten_translation_shape(obj: &Map<String, Value>) -> Result<Map<String, Value>, AiError> {
    let Some(extra) = obj.get("extra_body") else {
        return Ok(obj.clone());
    };
    let bad_shape = || {
        AiError::invalid(format!(
            "invalid value for parameter \"extra_body\": {}; allowed: an object \
             {{\"translation_options\": {{...}}}} holding source_lang, terms, tm_list, domains",
            show(extra)
        ))
    };
    let extra = extra.as_object().ok_or_else(bad_shape)?;
    if extra.keys().any(|k| k != "translation_options") {
        return Err(bad_shape());
    }
    let options = match extra.get("translation_options") {
        Some(Value::Object(o)) => o.clone(),
        None => Map::new(),
        Some(_) => return Err(bad_shape()),
    };
    let mut flat: Map<String, Value> =
        obj.iter().filter(|(k, _)| *k != "extra_body").map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in options {
        if k == "target_lang" {
            return Err(target_lang_error());
        }
        if flat.contains_key(&k) {
            return Err(AiError::invalid(format!(
                "parameter \"{k}\" is given twice: at the top level and in extra_body.translation_options"
            )));
        }
        flat.insert(k, v);
    }
    Ok(flat)
}

fn target_lang_error() -> AiError {
    AiError::invalid_with_hint(
        "parameter \"target_lang\" is not a model parameter",
        "Pass the target language as the third argument of ai_translate(model_name, content, target_lang).",
    )
}

/// Validates `params` for `spec`, returning the object to store or use.
pub fn validate(spec: &ModelSpec, params: &Value, phase: Phase) -> Result<Map<String, Value>, AiError> {
    let obj = match params {
        Value::Object(o) => o,
        Value::Null => return Ok(Map::new()),
        other => return Err(AiError::invalid(format!("params must be a JSON object, got {}", kind(other)))),
    };
    let obj = if spec.task == Task::Translation { flatten_translation_shape(obj)? } else { obj.clone() };
    let keys = accepted(spec, phase);
    let allowed_list = || keys.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ");
    for (name, value) in &obj {
        let param = Param::from_name(name).filter(|p| keys.contains(p));
        let Some(param) = param else {
            if name == "target_lang" {
                return Err(target_lang_error());
            }
            let per_call_only =
                matches!(Param::from_name(name), Some(Timeout | MaxRetries | Images | Stream))
                    && accepted(spec, Phase::Call).contains(&Param::from_name(name).unwrap());
            if per_call_only {
                let hint = if name == "images" {
                    "Images are per call: ai_gen(model, prompt, params => '{\"images\": [...]}')."
                } else if name == "stream" {
                    "Streaming is per call (params => '{\"stream\": true}'); models that need it always stream."
                } else {
                    "Retry and timeout settings are arguments of ai_deploy_model \
                     (max_retries, timeout); per call they go in params."
                };
                return Err(AiError::invalid_with_hint(
                    format!("parameter \"{name}\" is not allowed in deployed params"),
                    hint,
                ));
            }
            let what = if Param::from_name(name).is_some() {
                format!("parameter \"{name}\" does not apply to {} model {}", spec.task, spec.model_type)
            } else {
                format!("unknown parameter \"{name}\" for {} model {}", spec.task, spec.model_type)
            };
            return Err(AiError::invalid(format!("{what}; allowed: {}", allowed_list())));
        };
        if param.check(value, spec).is_none() {
            return Err(AiError::invalid(format!(
                "invalid value for parameter \"{name}\": {}; allowed: {}",
                show(value),
                param.allowed(spec)
            )));
        }
    }
    Ok(obj)
}

/// Deployed defaults overlaid with per-call params (both already validated).
pub fn merge(deployed: &Map<String, Value>, call: &Map<String, Value>) -> Map<String, Value> {
    let mut out = deployed.clone();
    for (k, v) in call {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// The parameter names `spec` accepts, for `ai_supported_models()`.
pub fn accepted_names(spec: &ModelSpec, phase: Phase) -> Vec<&'static str> {
    accepted(spec, phase).into_iter().map(Param::name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;
    use serde_json::json;

    fn deploy(model: &str, v: Value) -> Result<Map<String, Value>, String> {
        validate(find(model).unwrap(), &v, Phase::Deploy).map_err(|e| e.to_string())
    }

    #[test]
    fn chat_ranges() {
        assert!(deploy("qwen-plus", json!({"temperature": 0, "top_p": 1, "max_tokens": 1})).is_ok());
        assert!(deploy("qwen-plus", json!({"temperature": 1.99, "top_p": 0.01})).is_ok());
        let e = deploy("qwen-plus", json!({"temperature": 2})).unwrap_err();
        assert_eq!(e, "invalid value for parameter \"temperature\": 2; allowed: a number in [0, 2)");
        assert!(deploy("qwen-plus", json!({"temperature": -0.1})).is_err());
        assert!(deploy("qwen-plus", json!({"temperature": "0.5"})).is_err());
        assert!(deploy("qwen-plus", json!({"top_p": 0})).unwrap_err().contains("(0, 1]"));
        assert!(deploy("qwen-plus", json!({"top_p": 1.01})).is_err());
        assert!(deploy("qwen-plus", json!({"max_tokens": 0})).is_err());
        assert!(deploy("qwen-plus", json!({"max_tokens": 1.5})).is_err());
        assert!(deploy("qwen-plus", json!({"max_tokens": -3})).is_err());
        assert!(deploy("qwen-plus", json!({"max_tokens": 2147483648u64})).is_err());
        assert!(deploy("qwen-plus", json!({"enable_thinking": "yes"})).is_err());
        assert!(deploy("qwen-plus", json!({"seed": 42, "stop": ["\n\n"], "system": "Be brief."})).is_ok());
        assert!(deploy("qwen-plus", json!({"stop": []})).is_err());
        assert!(deploy("qwen-plus", json!({"system": "  "})).is_err());
    }

    #[test]
    fn keys_are_checked_by_task() {
        let e = deploy("qwen-plus", json!({"foo": 1})).unwrap_err();
        assert!(
            e.starts_with("unknown parameter \"foo\" for chat model qwen-plus; allowed: temperature"),
            "{e}"
        );
        let e = deploy("text-embedding-v4", json!({"temperature": 0.5})).unwrap_err();
        assert_eq!(e, "parameter \"temperature\" does not apply to embedding model text-embedding-v4; allowed: dimension");
        let e = deploy("qwen-plus", json!({"source_lang": "zh"})).unwrap_err();
        assert!(e.contains("does not apply to chat model"), "{e}");
        assert!(deploy("qwen-mt-plus", json!({"temperature": 0.5})).is_err());
        assert!(deploy("qwen-plus", json!({"modalities": ["text"]})).is_err());
        assert!(deploy(
            "qwen3-omni-flash",
            json!({"modalities": ["text", "audio"], "audio": {"voice": "Cherry", "format": "wav"}})
        )
        .is_ok());
        assert!(deploy("qwen3-omni-flash", json!({"audio": {"voice": "Cherry", "format": "mp3"}})).is_err());
        assert!(deploy("qwen3-omni-flash", json!({"modalities": ["audio"]})).is_err());
    }

    #[test]
    fn embedding_dimensions() {
        assert!(deploy("text-embedding-v4", json!({"dimension": 2048})).is_ok());
        let e = deploy("text-embedding-v3", json!({"dimension": 2048})).unwrap_err();
        assert_eq!(e, "invalid value for parameter \"dimension\": 2048; allowed: one of 1024 (default), 768, 512, 256, 128, 64");
        assert!(deploy("text-embedding-v1", json!({"dimension": 1536})).is_ok());
        assert!(deploy("text-embedding-v1", json!({"dimension": 1024})).is_err());
        assert!(deploy("text-embedding-v4", json!({"dimension": "1024"})).is_err());
    }

    #[test]
    fn translation_options_in_both_shapes() {
        let seed_shape = json!({"extra_body": {"translation_options": {
            "source_lang": "zh", "domains": "The sentence is from Ali Cloud IT domain.",
            "terms": [{"source": "生物特徵辨識感應器", "target": "biological sensor"}],
            "tm_list": [{"source": "bla", "target": "bla"}]}}});
        let flat = deploy("qwen-mt-plus", seed_shape).unwrap();
        assert_eq!(flat["source_lang"], "zh");
        assert!(flat.get("extra_body").is_none());
        assert!(deploy("qwen-mt-turbo", json!({"terms": [{"source": "a"}]})).is_err());
        assert!(deploy("qwen-mt-turbo", json!({"extra_body": {"other": {}}})).is_err());
        let e = deploy(
            "qwen-mt-turbo",
            json!({"source_lang": "en", "extra_body": {"translation_options": {"source_lang": "zh"}}}),
        )
        .unwrap_err();
        assert!(e.contains("given twice"), "{e}");
        let e = deploy("qwen-mt-turbo", json!({"target_lang": "en"})).unwrap_err();
        assert!(e.contains("target_lang"), "{e}");
    }

    #[test]
    fn per_call_keys() {
        let spec = find("qwen3-vl-plus").unwrap();
        let call = json!({"images": ["https://example.com/a.png", "data:image/png;base64,AAAA"], "timeout": 5, "max_retries": 0});
        assert!(validate(spec, &call, Phase::Call).is_ok());
        let e = validate(spec, &json!({"images": ["https://example.com/a.png"]}), Phase::Deploy).unwrap_err();
        assert!(e.to_string().contains("not allowed in deployed params"), "{e}");
        assert!(validate(find("qwen-plus").unwrap(), &json!({"images": ["https://x.y/z.png"]}), Phase::Call)
            .is_err());
        assert!(validate(spec, &json!({"images": ["ftp://x"]}), Phase::Call).is_err());
        assert!(validate(spec, &json!({"timeout": 0.5}), Phase::Call).is_err());
        assert!(validate(spec, &json!({"max_retries": 101}), Phase::Call).is_err());
        assert!(validate(spec, &json!([1]), Phase::Call).unwrap_err().to_string().contains("JSON object"));
    }

    #[test]
    fn merge_overrides_per_call() {
        let deployed = deploy("qwen-plus", json!({"temperature": 0.2, "max_tokens": 10})).unwrap();
        let call = deploy("qwen-plus", json!({"temperature": 0.9})).unwrap();
        let m = merge(&deployed, &call);
        assert_eq!(m["temperature"], 0.9);
        assert_eq!(m["max_tokens"], 10);
    }
}
