//! A batch's input file checked as Bailian documents it (research §1.3 to §1.5): UTF-8
//! JSONL, one request per line, at most 50,000 of them and 1 MB each; each with a unique
//! `custom_id` of at most 256 characters, `method` POST, a `url` equal to the batch's
//! endpoint and a `body` naming the model; one model and one thinking mode in the whole
//! file. The test model takes at most 100 lines and 1 MB in all.
//!
//! A file that breaks a rule fails its batch, with the broken rules in `errors.data` as
//! `{code, message, param, line}`. Bailian documents four codes: `url_not_found` (S17's
//! message, word for word), `mismatched_test_url` (S17), `mismatched_model` (S7's message)
//! and `duplicate_custom_id` (S7). The others are OpenAI's where it has one
//! (`invalid_json_line`, `missing_required_parameter`, `empty_file`) and guesses in their
//! style where it has not; every message that is not quoted is a guess too.

use crate::models::{self, BATCH_TEST_MODEL};
use serde_json::{json, Map, Value};
use std::collections::HashSet;

/// The endpoints a batch (and each of its lines) may name (research §1.4).
pub(crate) const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/embeddings", TEST_ENDPOINT];
pub(crate) const EMBEDDINGS_ENDPOINT: &str = "/v1/embeddings";
pub(crate) const TEST_ENDPOINT: &str = "/v1/chat/ds-test";

/// A `custom_id`'s most characters (S3).
pub(crate) const MAX_CUSTOM_ID_CHARS: usize = 256;

/// The test model's file: at most 100 lines and 1 MB (research §1.4).
const TEST_MAX_LINES: u64 = 100;
const TEST_MAX_FILE_BYTES: usize = 1_000_000;

/// Errors listed for one file at most: a file broken on every line does not make a batch
/// object of megabytes. How many Bailian lists is not documented.
const MAX_ERRORS: usize = 100;

/// One request of a valid file.
pub(crate) struct Line {
    pub custom_id: String,
    pub body: Value,
}

/// The limits of the configuration (`Config::max_batch_lines`, `max_batch_line_bytes`).
pub(crate) struct Limits {
    pub max_lines: u64,
    pub max_line_bytes: u64,
}

/// The model the file's first request names, if its first line can be read: Bailian refuses
/// a batch for a model it does not run when the batch is created (S7).
pub(crate) fn first_model(input: &[u8]) -> Option<String> {
    let first = requests(input).next()?.1;
    let line: Value = serde_json::from_slice(first).ok()?;
    line.pointer("/body/model").and_then(Value::as_str).map(str::to_string)
}

/// The requests of `input` for a batch at `endpoint`, or the rules they break.
pub(crate) fn lines(input: &[u8], endpoint: &str, limits: &Limits) -> Result<Vec<Line>, Vec<Value>> {
    let test = first_model(input).as_deref() == Some(BATCH_TEST_MODEL);
    if test && input.len() > TEST_MAX_FILE_BYTES {
        return Err(vec![error(
            "file_too_large",
            format!(
                "The input file has {} bytes; a batch of {BATCH_TEST_MODEL} takes at most {TEST_MAX_FILE_BYTES}.",
                input.len()
            ),
            None,
            None,
        )]);
    }
    let max_lines = if test { TEST_MAX_LINES.min(limits.max_lines) } else { limits.max_lines };
    let mut file = FileRules { endpoint, limits, seen: HashSet::new(), first: None };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut count = 0u64;
    for (number, raw) in requests(input) {
        count += 1;
        if count > max_lines {
            errors.push(error(
                "too_many_lines",
                format!("The input file has more than {max_lines} requests, the most one batch may have."),
                None,
                Some(number),
            ));
            break;
        }
        match file.check(raw, number) {
            Ok(line) => out.push(line),
            Err(e) => errors.push(e),
        }
        if errors.len() >= MAX_ERRORS {
            break;
        }
    }
    if count == 0 {
        errors.push(error("empty_file", "The input file has no requests.".into(), None, None));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The lines of a JSONL file that are not blank, numbered from 1 as an editor numbers them,
/// without their line break (LF or CRLF). Blank lines are skipped, as JSONL readers do.
fn requests(input: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    input
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, raw)| (i + 1, raw.strip_suffix(b"\r").unwrap_or(raw)))
        .filter(|(_, raw)| !raw.iter().all(u8::is_ascii_whitespace))
}

/// One entry of `errors.data`.
fn error(code: &str, message: String, param: Option<&str>, line: Option<usize>) -> Value {
    json!({"code": code, "message": message, "param": param, "line": line})
}

/// The rules a line is checked against, and what the lines before it set.
struct FileRules<'a> {
    endpoint: &'a str,
    limits: &'a Limits,
    seen: HashSet<String>,
    /// The first valid line's model and `enable_thinking` (null when it has none).
    first: Option<(String, Value)>,
}

impl FileRules<'_> {
    fn check(&mut self, raw: &[u8], number: usize) -> Result<Line, Value> {
        let fail =
            |code: &str, message: String, param: Option<&str>| error(code, message, param, Some(number));
        if raw.len() as u64 > self.limits.max_line_bytes {
            return Err(fail(
                "line_too_large",
                format!(
                    "This request has {} bytes, more than the {} one line may have.",
                    raw.len(),
                    self.limits.max_line_bytes
                ),
                None,
            ));
        }
        let Ok(Value::Object(line)) = serde_json::from_slice::<Value>(raw) else {
            return Err(fail("invalid_json_line", "This line is not parseable as valid JSON.".into(), None));
        };
        let missing = |param: &str| {
            fail("missing_required_parameter", format!("Missing required parameter: '{param}'."), Some(param))
        };
        let custom_id = match line.get("custom_id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err(missing("custom_id")),
        };
        if custom_id.chars().count() > MAX_CUSTOM_ID_CHARS {
            return Err(fail(
                "invalid_custom_id",
                format!("The custom_id of this request is longer than {MAX_CUSTOM_ID_CHARS} characters."),
                Some("custom_id"),
            ));
        }
        if !self.seen.insert(custom_id.clone()) {
            return Err(fail(
                "duplicate_custom_id",
                format!(
                    "The custom_id '{custom_id}' for this request is a duplicate of another request. \
                     The custom_id parameter must be unique for each request in a batch."
                ),
                Some("custom_id"),
            ));
        }
        if line.get("method").and_then(Value::as_str) != Some("POST") {
            return Err(fail(
                "invalid_method",
                "The method of a batch request must be 'POST'.".into(),
                Some("method"),
            ));
        }
        let Some(url) = line.get("url").and_then(Value::as_str) else {
            return Err(missing("url"));
        };
        let Some(body) = line.get("body").and_then(Value::as_object) else {
            return Err(missing("body"));
        };
        let Some(model) = body.get("model").and_then(Value::as_str) else {
            return Err(missing("body.model"));
        };
        self.check_url(url, model).map_err(|(code, message)| fail(code, message, Some("url")))?;
        self.check_model(model, body).map_err(|(code, message)| fail(code, message, Some("body.model")))?;
        Ok(Line { custom_id, body: Value::Object(body.clone()) })
    }

    fn check_url(&self, url: &str, model: &str) -> Result<(), (&'static str, String)> {
        if !ENDPOINTS.contains(&url) {
            return Err((
                "url_not_found",
                format!("The provided url '{url}' is not supported by the Batch API."),
            ));
        }
        // S17 names the code for the test model at /v1/chat/completions; the messages are
        // guesses.
        if model == BATCH_TEST_MODEL && url != TEST_ENDPOINT {
            return Err((
                "mismatched_test_url",
                format!("The model '{BATCH_TEST_MODEL}' must be used with the url '{TEST_ENDPOINT}'."),
            ));
        }
        if model != BATCH_TEST_MODEL && url == TEST_ENDPOINT {
            return Err((
                "mismatched_test_url",
                format!("The url '{TEST_ENDPOINT}' is for the model '{BATCH_TEST_MODEL}' only."),
            ));
        }
        if url != self.endpoint {
            return Err((
                "url_not_found",
                format!("The provided url '{url}' does not match the batch's endpoint '{}'.", self.endpoint),
            ));
        }
        Ok(())
    }

    fn check_model(&mut self, model: &str, body: &Map<String, Value>) -> Result<(), (&'static str, String)> {
        let thinking = body.get("enable_thinking").cloned().unwrap_or(Value::Null);
        let Some((first_model, first_thinking)) = &self.first else {
            self.first = Some((model.to_string(), thinking));
            return Ok(());
        };
        if model != first_model {
            return Err((
                "mismatched_model",
                format!(
                    "The model '{model}' for this request does not match the rest of the batch. \
                     Each batch must contain requests for a single model."
                ),
            ));
        }
        // "All lines must use the same model and the same thinking mode" (S1, S3); the code
        // and message are guesses.
        if thinking != *first_thinking && models::thinking(model) != models::Thinking::Never {
            return Err((
                "mismatched_thinking_mode",
                format!(
                    "The enable_thinking of this request ({thinking}) does not match the rest of the batch \
                     ({first_thinking}). Each batch must use a single thinking mode."
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_lines: 50_000, max_line_bytes: 1_000_000 };
    const CHAT: &str = "/v1/chat/completions";

    fn line(custom_id: &str, url: &str, body: Value) -> String {
        json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).to_string()
    }

    fn chat(custom_id: &str, model: &str) -> String {
        line(custom_id, CHAT, json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
    }

    fn codes(input: &str, endpoint: &str, limits: &Limits) -> Vec<(String, Option<u64>)> {
        match lines(input.as_bytes(), endpoint, limits) {
            Ok(_) => Vec::new(),
            Err(errors) => {
                errors.iter().map(|e| (e["code"].as_str().unwrap().to_string(), e["line"].as_u64())).collect()
            }
        }
    }

    #[test]
    fn a_good_file_gives_its_lines() {
        let input = format!("{}\r\n\n{}\n", chat("a", "qwen-plus"), chat("b", "qwen-plus"));
        let got = lines(input.as_bytes(), CHAT, &LIMITS).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(got.iter().map(|l| l.custom_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(first_model(input.as_bytes()).as_deref(), Some("qwen-plus"));
    }

    #[test]
    fn each_rule_names_its_line() {
        let s17 = line("1", "/v1/chat/completion", json!({"model": BATCH_TEST_MODEL}));
        assert_eq!(codes(&s17, TEST_ENDPOINT, &LIMITS), [("url_not_found".into(), Some(1))]);
        let err = lines(s17.as_bytes(), TEST_ENDPOINT, &LIMITS).err().unwrap();
        assert_eq!(
            err[0],
            json!({"code": "url_not_found", "param": "url", "line": 1,
                   "message": "The provided url '/v1/chat/completion' is not supported by the Batch API."})
        );
        let input = [
            chat("a", "qwen-plus"),
            "not json".into(),
            chat("a", "qwen-plus"),
            chat("b", "qwen-flash"),
            line("c", "/v1/embeddings", json!({"model": "qwen-plus"})),
            line("d", CHAT, json!({"messages": []})),
            chat(&"x".repeat(257), "qwen-plus"),
            json!({"custom_id": "e", "method": "GET", "url": CHAT, "body": {"model": "qwen-plus"}})
                .to_string(),
            line("f", CHAT, json!({"model": BATCH_TEST_MODEL})),
            line("g", CHAT, json!({"model": "qwen-plus", "enable_thinking": true})),
            chat("", "qwen-plus"),
        ]
        .join("\n");
        let expected = [
            ("invalid_json_line", 2),
            ("duplicate_custom_id", 3),
            ("mismatched_model", 4),
            ("url_not_found", 5),
            ("missing_required_parameter", 6),
            ("invalid_custom_id", 7),
            ("invalid_method", 8),
            ("mismatched_test_url", 9),
            ("mismatched_thinking_mode", 10),
            ("missing_required_parameter", 11),
        ];
        let expected: Vec<(String, Option<u64>)> =
            expected.iter().map(|(c, l)| (c.to_string(), Some(*l as u64))).collect();
        assert_eq!(codes(&input, CHAT, &LIMITS), expected);
    }

    #[test]
    fn file_limits() {
        assert_eq!(codes("\n\n", CHAT, &LIMITS), [("empty_file".into(), None)]);
        let three = [chat("a", "qwen-plus"), chat("b", "qwen-plus"), chat("c", "qwen-plus")].join("\n");
        let small = Limits { max_lines: 2, max_line_bytes: 1_000_000 };
        assert_eq!(codes(&three, CHAT, &small), [("too_many_lines".into(), Some(3))]);
        let tiny = Limits { max_lines: 10, max_line_bytes: 50 };
        assert_eq!(codes(&three, CHAT, &tiny).len(), 3);
        assert_eq!(codes(&three, CHAT, &tiny)[0].0, "line_too_large");
        let test_lines: Vec<String> = (0..101)
            .map(|i| line(&i.to_string(), TEST_ENDPOINT, json!({"model": BATCH_TEST_MODEL})))
            .collect();
        assert_eq!(
            codes(&test_lines.join("\n"), TEST_ENDPOINT, &LIMITS),
            [("too_many_lines".into(), Some(101))]
        );
        let all_bad: String = (0..500).map(|_| "x\n").collect();
        assert_eq!(codes(&all_bad, CHAT, &LIMITS).len(), MAX_ERRORS);
    }
}
