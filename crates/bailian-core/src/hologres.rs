//! Hologres' names for what pg_bailian does: its task names, its providers, the config JSON of
//! `register_external_model`, and the `file_format` names of `ai_embed(model, bytea, format)`.
//!
//! Everything here only translates: a registration becomes the `DeployArgs` that
//! `ai_deploy_model` takes, and goes through the same checks from there. What Hologres has and
//! pg_bailian does not (its own AI-node models, image and video generation) is refused with a
//! message that says so, never accepted and ignored.

use crate::deploy::DeployArgs;
use crate::registry::Task;
use crate::AiError;
use serde_json::{Map, Value};

/// Hologres' task names (`CreateModelService`'s `taskType`, `list_external_models().task`) and
/// pg_bailian's task for each.
pub const TASKS: [(&str, Task); 4] = [
    ("chat/completions", Task::Chat),
    ("embedding", Task::Embedding),
    ("translation", Task::Translation),
    ("rerank", Task::Rerank),
];

/// Hologres tasks pg_bailian has no model for.
const MISSING_TASKS: [&str; 3] = ["image-generation", "video-generation", "speech-to-text"];

fn allowed_tasks() -> String {
    TASKS.iter().map(|(n, _)| format!("'{n}'")).collect::<Vec<_>>().join(", ")
}

/// Hologres' name of a pg_bailian task.
pub fn task_name(task: Task) -> &'static str {
    TASKS.iter().find(|(_, t)| *t == task).map_or("chat/completions", |(n, _)| n)
}

/// The pg_bailian task of a Hologres task name.
pub fn parse_task(name: &str) -> Result<Task, AiError> {
    let wanted = name.trim().to_ascii_lowercase();
    if let Some((_, t)) = TASKS.iter().find(|(n, _)| *n == wanted) {
        return Ok(*t);
    }
    let why = if MISSING_TASKS.contains(&wanted.as_str()) {
        " (pg_bailian deploys no model for it)"
    } else if wanted == "chat" {
        " (Hologres calls it 'chat/completions')"
    } else {
        ""
    };
    Err(AiError::invalid(format!(
        "invalid task \"{}\"{why}; allowed: {}",
        crate::limits::shown(name),
        allowed_tasks()
    )))
}

/// The registered task must be the model type's own: a task that disagrees is a mistake in
/// the script, not something to guess about.
pub fn check_task(given: Task, model_type: &str, actual: Task) -> Result<(), AiError> {
    if given == actual {
        return Ok(());
    }
    Err(AiError::invalid_with_hint(
        format!(
            "task '{}' does not fit model_type {model_type}, whose task is '{}'",
            task_name(given),
            task_name(actual)
        ),
        "SELECT model_type, task FROM ai_supported_models() shows each model's task ('chat' is 'chat/completions' here).",
    ))
}

/// pg_bailian's provider for a Hologres provider name: `bailian` (Model Studio) and
/// `opensearch` (OpenSearch AI Search Open Platform, pg_bailian's own second provider).
pub fn parse_provider(name: &str) -> Result<&'static str, AiError> {
    match name.trim().to_ascii_lowercase().as_str() {
        "bailian" => Ok("bailian"),
        "opensearch" => Ok("opensearch"),
        "hologres" => Err(AiError::invalid(
            "invalid model_provider \"hologres\" (models on a Hologres AI node do not exist here); allowed: 'bailian', 'opensearch'",
        )),
        _ => Err(AiError::invalid(format!(
            "invalid model_provider \"{}\"; allowed: 'bailian', 'opensearch'",
            crate::limits::shown(name)
        ))),
    }
}

/// The keys `register_external_model`'s config may hold: the key and the retry settings, as
/// Hologres' `modelParams` has them, and pg_bailian's own deployment options.
pub const CONFIG_KEYS: [&str; 11] = [
    "api_key",
    "max_retries",
    "initial_retry_delay",
    "max_retry_delay",
    "timeout",
    "base_url",
    "region",
    "params",
    "requests_per_minute",
    "tokens_per_minute",
    "workspace",
];

fn config_error(message: String) -> AiError {
    AiError::invalid_with_hint(
        message,
        format!(
            "config is a JSON object with \"api_key\" and optionally {}.",
            CONFIG_KEYS[1..].iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
        ),
    )
}

/// `register_external_model(model_name, model_type, model_provider, config, task)` as the
/// arguments of `ai_deploy_model`, with its defaults for what the config leaves out. The
/// task is checked against the model type by the caller, once the model type is known.
pub fn deploy_args(
    model_name: Option<String>,
    model_type: Option<String>,
    provider: &str,
    config: Option<&Value>,
) -> Result<DeployArgs, AiError> {
    let provider = parse_provider(provider)?;
    let empty = Map::new();
    let config = match config {
        None => &empty,
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(config_error(format!("config must be a JSON object, got {}", kind(other))));
        }
    };
    if let Some(unknown) = config.keys().find(|k| !CONFIG_KEYS.contains(&k.as_str())) {
        return Err(config_error(format!(
            "unknown config key \"{}\"; allowed: {}",
            crate::limits::shown(unknown),
            CONFIG_KEYS.join(", ")
        )));
    }
    let get = |k: &str| config.get(k).filter(|v| !v.is_null());
    let text = |k: &str| -> Result<Option<String>, AiError> {
        match get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(config_error(format!("config \"{k}\" must be a string, got {}", kind(other)))),
        }
    };
    let number = |k: &str| -> Result<Option<f64>, AiError> {
        match get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err(config_error(format!("config \"{k}\" must be a number, got {}", kind(other)))),
        }
    };
    let integer = |k: &str| -> Result<Option<i32>, AiError> {
        match get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                Some(i) => Ok(Some(i)),
                None => Err(config_error(format!("config \"{k}\" must be an integer, got {n}"))),
            },
            Some(other) => {
                Err(config_error(format!("config \"{k}\" must be an integer, got {}", kind(other))))
            }
        }
    };
    let Some(api_key) = text("api_key")? else {
        return Err(config_error("config has no \"api_key\"; it is required".into()));
    };
    let params = match get("params") {
        None => None,
        Some(p @ Value::Object(_)) => Some(p.clone()),
        Some(other) => {
            return Err(config_error(format!(
                "config \"params\" must be a JSON object, got {}",
                kind(other)
            )));
        }
    };
    // ai_deploy_model's defaults (sql/functions.sql), which are also Hologres'.
    Ok(DeployArgs {
        model_name,
        model_type,
        api_key: Some(api_key),
        params: Some(params.unwrap_or_else(|| Value::Object(Map::new()))),
        max_retries: Some(integer("max_retries")?.unwrap_or(2)),
        initial_retry_delay: Some(number("initial_retry_delay")?.unwrap_or(0.5)),
        max_retry_delay: Some(number("max_retry_delay")?.unwrap_or(8.0)),
        timeout: Some(number("timeout")?.unwrap_or(600.0)),
        region: Some(text("region")?.unwrap_or_else(|| "beijing".into())),
        base_url: text("base_url")?,
        requests_per_minute: integer("requests_per_minute")?,
        tokens_per_minute: integer("tokens_per_minute")?,
        provider: Some(provider.into()),
        workspace: text("workspace")?,
        cache: None,
        batch_chat: None,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `file_format` names `ai_embed(model_name, image bytea, file_format)` takes, each with
/// the format its bytes must be: what Bailian's multimodal embedding models accept (JPG, PNG,
/// BMP in the API reference's table; WEBP and TIFF for the newer models). Hologres also lists
/// 'gif' and 'heic', which Bailian's API reference does not: they are refused by name.
pub const IMAGE_FORMATS: [(&str, &str); 7] = [
    ("jpg", "jpeg"),
    ("jpeg", "jpeg"),
    ("png", "png"),
    ("bmp", "bmp"),
    ("webp", "webp"),
    ("tiff", "tiff"),
    ("tif", "tiff"),
];

/// The image format `file_format` names (`jpeg`, `png`, ...), or an error naming those allowed.
pub fn image_format(file_format: &str) -> Result<&'static str, AiError> {
    let wanted = file_format.trim().trim_start_matches('.').to_ascii_lowercase();
    if let Some((_, f)) = IMAGE_FORMATS.iter().find(|(n, _)| *n == wanted) {
        return Ok(f);
    }
    let allowed = IMAGE_FORMATS.iter().map(|(n, _)| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    let why = if matches!(wanted.as_str(), "gif" | "heic" | "heif") {
        " (Bailian's multimodal embedding models do not take it)"
    } else {
        ""
    };
    Err(AiError::invalid(format!(
        "invalid file_format \"{}\"{why}; allowed: {allowed}",
        crate::limits::shown(file_format)
    )))
}

/// `{"prompt": template, "args": [...]}` (or Snowflake's `"template"` key), with Hologres'
/// optional `"parameters"`, as the template, its arguments (JSON null as NULL; numbers and
/// booleans as their JSON text) and the parameters.
pub struct PromptObject {
    pub template: String,
    pub args: Vec<Option<String>>,
    pub parameters: Option<Value>,
}

pub const PROMPT_KEYS: [&str; 4] = ["prompt", "template", "args", "parameters"];

pub fn prompt_object(v: &Value) -> Result<PromptObject, AiError> {
    let hint = "A prompt object is what prompt(template, VARIADIC args) returns: \
                {\"prompt\": \"... {0} ...\", \"args\": [\"...\"]}, optionally with \"parameters\" (per-call params).";
    let bad = |m: String| AiError::invalid_with_hint(m, hint);
    let Value::Object(map) = v else {
        return Err(bad(format!("a prompt object must be a JSON object, got {}", kind(v))));
    };
    if let Some(unknown) = map.keys().find(|k| !PROMPT_KEYS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown key \"{}\" in a prompt object; allowed: {}",
            crate::limits::shown(unknown),
            PROMPT_KEYS.join(", ")
        )));
    }
    let template = match (map.get("prompt"), map.get("template")) {
        (Some(Value::String(t)), None) | (None, Some(Value::String(t))) => t.clone(),
        (Some(_), Some(_)) => {
            return Err(bad("a prompt object has \"prompt\" or \"template\", not both".into()))
        }
        (None, None) => return Err(bad("a prompt object needs \"prompt\", the template text".into())),
        (Some(other), None) | (None, Some(other)) => {
            return Err(bad(format!("the template of a prompt object must be a string, got {}", kind(other))))
        }
    };
    let args = match map.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = crate::limits::vec_with_capacity("a prompt object's arguments", items.len())?;
            for (i, item) in items.iter().enumerate() {
                out.push(match item {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    other => {
                        return Err(bad(format!(
                            "args[{i}] of a prompt object must be text, a number, a boolean or null, got {}",
                            kind(other)
                        )))
                    }
                });
            }
            out
        }
        Some(other) => {
            return Err(bad(format!("\"args\" of a prompt object must be an array, got {}", kind(other))))
        }
    };
    let parameters = match map.get("parameters") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => Some(p.clone()),
        Some(other) => {
            return Err(bad(format!(
                "\"parameters\" of a prompt object must be an object, got {}",
                kind(other)
            )))
        }
    };
    Ok(PromptObject { template, args, parameters })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tasks_map_both_ways() {
        for (name, task) in TASKS {
            assert_eq!(parse_task(name).unwrap(), task);
            assert_eq!(task_name(task), name);
        }
        let e = parse_task("image-generation").unwrap_err().to_string();
        assert!(e.contains("deploys no model") && e.contains("'chat/completions'"), "{e}");
        assert!(parse_task("chat").unwrap_err().to_string().contains("Hologres calls it"));
        assert!(check_task(Task::Embedding, "qwen-plus", Task::Chat)
            .unwrap_err()
            .to_string()
            .contains("whose task is 'chat/completions'"));
    }

    #[test]
    fn config_is_checked() {
        let ok = deploy_args(
            None,
            None,
            "Bailian",
            Some(&json!({"api_key": "sk-x", "max_retries": 5, "timeout": 30})),
        )
        .unwrap();
        assert_eq!((ok.max_retries, ok.timeout, ok.initial_retry_delay), (Some(5), Some(30.0), Some(0.5)));
        assert_eq!(ok.provider.as_deref(), Some("bailian"));
        let err = |c: Value| deploy_args(None, None, "bailian", Some(&c)).err().unwrap().to_string();
        assert!(err(json!({})).contains("no \"api_key\""));
        assert!(err(json!({"api_key": "k", "retries": 1})).contains("allowed: api_key, max_retries"));
        assert!(err(json!({"api_key": "k", "max_retries": 1.5})).contains("must be an integer"));
        assert!(err(json!({"api_key": "k", "timeout": "10"})).contains("must be a number"));
        assert!(err(json!([1])).contains("must be a JSON object"));
        assert!(deploy_args(None, None, "hologres", Some(&json!({"api_key": "k"}))).is_err());
    }

    #[test]
    fn image_formats() {
        assert_eq!(image_format("JPG").unwrap(), "jpeg");
        assert_eq!(image_format(".png").unwrap(), "png");
        assert!(image_format("gif").unwrap_err().to_string().contains("do not take it"));
        assert!(image_format("svg").unwrap_err().to_string().contains("allowed: 'jpg'"));
    }

    #[test]
    fn prompt_objects() {
        let p = prompt_object(&json!({"prompt": "a {0} {1}", "args": ["x", 2, null]})).unwrap();
        assert_eq!(p.template, "a {0} {1}");
        assert_eq!(p.args, vec![Some("x".into()), Some("2".into()), None]);
        assert!(prompt_object(&json!({"template": "t"})).is_ok());
        assert!(prompt_object(&json!({"prompt": "t", "extra": 1})).is_err());
        assert!(prompt_object(&json!({"args": []})).is_err());
        assert!(prompt_object(&json!({"prompt": "t", "args": [[1]]})).is_err());
    }
}
