//! Structured output: the `response_format` a structured call sends, and the check of the
//! model's answer against it on our side.
//!
//! Bailian's structured-output guide promises JSON in JSON-object mode and a schema-conforming
//! object in JSON-Schema mode, on the models that support it. A model that does not, a
//! generation cut short by `max_tokens`, or a proxy in between can still hand back something
//! else, so the answer is parsed and validated here before SQL sees it: an answer that is not
//! JSON or breaks the schema is an `AiError::Inference`, never a value.

use crate::error::{AiError, InferenceKind};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How much of a bad answer an error quotes.
const QUOTED_CHARS: usize = 200;

/// Schema errors one message lists at most.
const LISTED_ERRORS: usize = 3;

/// What a structured call asks for, and how its answer is checked.
pub struct Format {
    /// Sent as the request's `response_format`.
    pub response_format: Value,
    /// None in JSON-object mode, where any JSON will do.
    validator: Option<Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Format").field("response_format", &self.response_format).finish()
    }
}

impl Format {
    /// `given` as `ai_gen_structured` takes it: a JSON Schema (sent in JSON-Schema mode,
    /// strict), `{"type": "json_object"}`, or Bailian's own `{"type": "json_schema",
    /// "json_schema": {...}}` passed through as written.
    pub fn parse(given: &Value) -> Result<Format, AiError> {
        let Some(obj) = given.as_object() else {
            return Err(AiError::invalid_with_hint("response_format must be a JSON object", SHAPES_HINT));
        };
        match obj.get("type").and_then(Value::as_str) {
            Some("json_object") if obj.len() == 1 => {
                Ok(Format { response_format: json!({"type": "json_object"}), validator: None })
            }
            Some("text") if obj.len() == 1 => Err(AiError::invalid_with_hint(
                "response_format {\"type\": \"text\"} asks for plain text, which ai_gen_structured does not return",
                "Use ai_gen for text, or pass a JSON Schema or {\"type\": \"json_object\"}.",
            )),
            Some("json_schema") if obj.contains_key("json_schema") => {
                if !crate::params::response_format_ok(given) {
                    return Err(AiError::invalid_with_hint(
                        "response_format {\"type\": \"json_schema\"} needs \"json_schema\": {\"name\": a non-empty string, \"schema\": an object, optionally \"strict\": true or false and \"description\"} and nothing else",
                        SHAPES_HINT,
                    ));
                }
                let schema = &given["json_schema"]["schema"];
                Ok(Format { response_format: given.clone(), validator: Some(compile(schema)?) })
            }
            _ => {
                let validator = compile(given)?;
                Ok(Format { response_format: json_schema_mode("response", given), validator: Some(validator) })
            }
        }
    }

    /// A schema of pg_bailian's own (the task functions'), sent under `name`.
    pub fn schema(name: &str, schema: &Value) -> Result<Format, AiError> {
        Ok(Format { response_format: json_schema_mode(name, schema), validator: Some(compile(schema)?) })
    }

    /// The answer of `model` as a JSON value that satisfies the format.
    pub fn check(&self, model: &str, answer: &str) -> Result<Value, AiError> {
        let value: Value = serde_json::from_str(answer.trim()).map_err(|e| AiError::Inference {
            model: model.to_string(),
            kind: InferenceKind::NotJson,
            problem: e.to_string(),
            answer: quoted(answer),
        })?;
        let Some(validator) = &self.validator else { return Ok(value) };
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .take(LISTED_ERRORS + 1)
            .map(|e| {
                // A validator's message repeats the offending value, which may be as long as
                // the answer: shortened like the answer itself.
                let at = e.instance_path().to_string();
                let what = quoted(&e.to_string());
                if at.is_empty() {
                    what
                } else {
                    format!("{what} (at {})", quoted(&at))
                }
            })
            .collect();
        if errors.is_empty() {
            return Ok(value);
        }
        let more = if errors.len() > LISTED_ERRORS { "; ..." } else { "" };
        Err(AiError::Inference {
            model: model.to_string(),
            kind: InferenceKind::BreaksSchema,
            problem: format!("{}{more}", errors[..errors.len().min(LISTED_ERRORS)].join("; ")),
            answer: quoted(answer),
        })
    }
}

const SHAPES_HINT: &str = "Pass a JSON Schema such as {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}, or {\"type\": \"json_object\"} for any JSON (the prompt must then mention JSON).";

fn json_schema_mode(name: &str, schema: &Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": name, "strict": true, "schema": schema}})
}

/// Compiled schemas a process keeps: a query calls with one schema (or one per label set)
/// row after row, and compiling is the costly part of a check.
const CACHED_SCHEMAS: usize = 64;

/// Largest schema compiled (as JSON text): a response_format, or a task function's schema with
/// its labels.
pub const MAX_SCHEMA_BYTES: usize = 1 << 20;

static COMPILED: Mutex<Option<HashMap<String, Arc<jsonschema::Validator>>>> = Mutex::new(None);

/// The caller's schema, compiled (or found compiled). Without the crate's resolver features a
/// `$ref` to another document fails here instead of making the server fetch a URL or read a
/// file; `pattern`s run on the linear-time `regex` engine, so no pattern in a schema can make
/// a check backtrack for long.
fn compile(schema: &Value) -> Result<Arc<jsonschema::Validator>, AiError> {
    if !schema.is_object() {
        return Err(AiError::invalid_with_hint("a JSON Schema must be a JSON object", SHAPES_HINT));
    }
    let key = schema.to_string();
    // A schema is a few kB; past MAX_SCHEMA_BYTES it is refused before it is compiled, which
    // also bounds what the cache keeps (CACHED_SCHEMAS of them at most).
    crate::limits::check("a JSON Schema for structured output", key.len() as u128, MAX_SCHEMA_BYTES)?;
    let mut cache = COMPILED.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(hit) = cache.get(&key) {
        return Ok(hit.clone());
    }
    let validator = jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map_err(|e| {
            AiError::invalid_with_hint(
                format!("response_format is not a valid JSON Schema: {e}"),
                SHAPES_HINT,
            )
        })?;
    let validator = Arc::new(validator);
    if cache.len() >= CACHED_SCHEMAS {
        cache.clear();
    }
    cache.insert(key, validator.clone());
    Ok(validator)
}

fn quoted(answer: &str) -> String {
    let mut out: String = answer.chars().take(QUOTED_CHARS).collect();
    if answer.chars().nth(QUOTED_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b"]}},
               "required": ["label"], "additionalProperties": false})
    }

    #[test]
    fn a_plain_schema_is_sent_in_strict_json_schema_mode() {
        let f = Format::parse(&schema()).unwrap();
        assert_eq!(f.response_format["type"], "json_schema");
        assert_eq!(f.response_format["json_schema"]["strict"], true);
        assert_eq!(f.response_format["json_schema"]["schema"], schema());
        assert_eq!(f.check("m", r#" {"label": "a"} "#).unwrap(), json!({"label": "a"}));
    }

    #[test]
    fn json_object_mode_takes_any_json() {
        let f = Format::parse(&json!({"type": "json_object"})).unwrap();
        assert_eq!(f.check("m", "[1, 2]").unwrap(), json!([1, 2]));
    }

    #[test]
    fn bailian_shape_passes_through() {
        let given = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema()}});
        let f = Format::parse(&given).unwrap();
        assert_eq!(f.response_format, given);
        assert!(f.check("m", r#"{"label": "c"}"#).is_err());
        let bad = json!({"type": "json_schema", "json_schema": {"schema": schema()}});
        assert!(Format::parse(&bad).unwrap_err().to_string().contains("name"));
    }

    #[test]
    fn bad_formats_are_refused_before_anything_is_sent() {
        for (given, says) in [
            (json!("x"), "must be a JSON object"),
            (json!({"type": "text"}), "plain text"),
            (json!({"type": 7}), "not a valid JSON Schema"),
            (json!({"$ref": "https://example.com/s.json"}), "not a valid JSON Schema"),
        ] {
            let e = Format::parse(&given).unwrap_err();
            assert_eq!(e.sqlstate(), "22023");
            assert!(e.to_string().contains(says), "{given}: {e}");
        }
    }

    #[test]
    fn a_schema_past_its_limit_is_refused_before_it_is_compiled() {
        let labels: Vec<String> = (0..2000).map(|i| format!("{i}{}", "l".repeat(600))).collect();
        let schema = json!({"type": "object", "properties": {"label": {"type": "string", "enum": labels}}});
        let e = Format::parse(&schema).unwrap_err();
        assert_eq!(e.sqlstate(), "54000");
        assert!(e.to_string().starts_with("a JSON Schema for structured output would need"), "{e}");
    }

    #[test]
    fn a_long_offending_value_is_not_repeated_whole() {
        let f = Format::parse(&schema()).unwrap();
        let answer = format!("{{\"label\": \"{}\"}}", "z".repeat(1 << 20));
        let e = f.check("chat", &answer).unwrap_err();
        assert_eq!(e.sqlstate(), "ZBI02");
        assert!(e.to_string().len() < 1000, "a message of {} bytes", e.to_string().len());
    }

    #[test]
    fn answers_that_are_not_json_or_break_the_schema_are_inference_errors() {
        let f = Format::parse(&schema()).unwrap();
        let e = f.check("chat", "Sure! {\"label\": \"a\"").unwrap_err();
        assert_eq!(e.sqlstate(), "ZBI01");
        assert!(e.to_string().starts_with("model \"chat\" answered with text that is not JSON"), "{e}");
        assert_eq!(e.detail().unwrap(), "the model answered: Sure! {\"label\": \"a\"");
        let e = f.check("chat", r#"{"label": "other"}"#).unwrap_err();
        assert_eq!(e.sqlstate(), "ZBI02");
        assert!(e.to_string().contains("\"other\" is not one of"), "{e}");
        assert!(e.to_string().contains("(at /label)"), "{e}");
        let e = f.check("chat", r#"{"unexpected": true}"#).unwrap_err();
        assert!(e.to_string().contains("\"label\" is a required property"), "{e}");
        assert!(e.is_row_failure());
    }

    #[test]
    fn patterns_run_in_linear_time() {
        // A pattern that backtracks exponentially on a backtracking engine.
        let f = Format::parse(&json!({"type": "string", "pattern": "^(a+)+$"})).unwrap();
        let long = format!("\"{}b\"", "a".repeat(5000));
        assert_eq!(f.check("m", &long).unwrap_err().sqlstate(), "ZBI02");
        // Look-around needs a backtracking engine: refused when the schema is read.
        assert!(Format::parse(&json!({"type": "string", "pattern": "(?=a)a"})).is_err());
    }

    #[test]
    fn long_answers_are_quoted_short() {
        let f = Format::parse(&schema()).unwrap();
        let long = "x".repeat(1000);
        let AiError::Inference { answer, .. } = f.check("m", &long).unwrap_err() else { panic!() };
        assert_eq!(answer.chars().count(), QUOTED_CHARS + 3);
    }
}
