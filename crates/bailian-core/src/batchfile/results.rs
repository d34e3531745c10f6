//! Result files read into one outcome per request (research §1.7).

use super::input::Expect;
use crate::error::AiError;
use crate::meter::Usage;
use crate::providers::{compatible, malformed, without_nul, ChatOutcome};
use serde_json::Value;
use std::collections::HashMap;

/// A message quoting the provider is cut to this many characters.
const MAX_MESSAGE_CHARS: usize = 1000;

/// One request's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Chat(ChatOutcome),
    /// One vector per input, in input order.
    Embeddings(Vec<Vec<f32>>),
}

/// A line of a result file that could not be joined to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// Which of the files given (0 the first), and which line of it (from 1).
    pub file: usize,
    pub line: usize,
    pub reason: String,
}

/// What a batch answered, request by request.
#[derive(Debug, Default)]
pub struct BatchResults {
    /// Every request expected, in the order given: its answer, or why it has none.
    pub lines: Vec<(String, Result<Answer, AiError>)>,
    /// The tokens of the answered requests, summed: what the batch billed (at the batch
    /// price, research §1.10). An answer this client cannot use was still billed and counts.
    pub usage: Usage,
    /// Result lines that could not be joined to a request (not JSON, no custom_id).
    pub unreadable: Vec<Unreadable>,
    /// custom_ids in the result files that were not expected.
    pub unexpected: Vec<String>,
}

impl BatchResults {
    pub fn get(&self, custom_id: &str) -> Option<&Result<Answer, AiError>> {
        self.lines.iter().find(|(id, _)| id == custom_id).map(|(_, r)| r)
    }

    pub fn succeeded(&self) -> usize {
        self.lines.iter().filter(|(_, r)| r.is_ok()).count()
    }

    pub fn failed(&self) -> usize {
        self.lines.len() - self.succeeded()
    }
}

/// Reads result files (a batch's output and error files, in any order) for the requests
/// `expected`. A line is an answer only if its `error` is null and its
/// `response.status_code` 200 (research §1.7), read by the live call's parser; any other
/// line is that request's error, from whichever variant it carries: `error.code` and
/// `error.message` (S1, S3), `error.error_code` and `error.error_message` (S1's CSV helper),
/// or `response.body.error` (OpenAI's shape for a request refused with a status). A line
/// with a status fails as [`AiError::Provider`], as the live call would have; one without
/// (a request not run) as [`AiError::BatchLineFailed`]. A request with no line at all fails
/// as `BatchLineFailed` with code `missing`. When a request has several lines, an answer
/// wins over an error, and otherwise the first one read.
pub fn parse_results(model: &str, expected: &[(String, Expect)], files: &[&[u8]]) -> BatchResults {
    let index: HashMap<&str, usize> =
        expected.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let mut found: Vec<Option<Result<Answer, AiError>>> = vec![None; expected.len()];
    let mut results = BatchResults::default();
    for (f, file) in files.iter().enumerate() {
        for (n, raw) in file.split(|b| *b == b'\n').enumerate() {
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let unreadable = |reason: &str| Unreadable { file: f, line: n + 1, reason: reason.to_string() };
            let Ok(line) = serde_json::from_slice::<Value>(raw) else {
                results.unreadable.push(unreadable("not JSON"));
                continue;
            };
            let Some(custom_id) = line.get("custom_id").and_then(Value::as_str) else {
                results.unreadable.push(unreadable("no custom_id"));
                continue;
            };
            let Some(&i) = index.get(custom_id) else {
                results.unexpected.push(without_nul(custom_id));
                continue;
            };
            let (outcome, usage) = line_outcome(model, custom_id, expected[i].1, &line);
            if let Some(usage) = usage {
                add(&mut results.usage, &usage);
            }
            match &found[i] {
                Some(Ok(_)) => {}
                Some(Err(_)) if outcome.is_err() => {}
                _ => found[i] = Some(outcome),
            }
        }
    }
    results.lines = expected
        .iter()
        .zip(found)
        .map(|((custom_id, _), outcome)| {
            let outcome = outcome.unwrap_or_else(|| {
                Err(AiError::BatchLineFailed {
                    model: model.into(),
                    custom_id: custom_id.clone(),
                    code: "missing".into(),
                    message: "neither the output file nor the error file of the batch has this request"
                        .into(),
                })
            });
            (custom_id.clone(), outcome)
        })
        .collect();
    results
}

/// One result line read: the request's answer or error, and the usage it billed.
fn line_outcome(
    model: &str,
    custom_id: &str,
    expect: Expect,
    line: &Value,
) -> (Result<Answer, AiError>, Option<Usage>) {
    let response = line.get("response").filter(|r| r.is_object());
    let status = response.and_then(|r| r.get("status_code")).and_then(Value::as_u64);
    let error = line.get("error").filter(|e| !e.is_null());
    let body = response.and_then(|r| r.get("body")).filter(|b| !b.is_null());
    if let (None, Some(200)) = (error, status) {
        let Some(body) = body else {
            return (
                Err(malformed(model, format!("the result of \"{custom_id}\" has no response.body"))),
                None,
            );
        };
        let usage = body.get("usage").map(Usage::of);
        // The live parsers read bytes; the body goes back to JSON text, numbers and escapes
        // as they were (a NUL stays `\u0000`, 1e39 stays out of f32's range), for them to refuse.
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let answer = match expect {
            Expect::Chat => compatible::parse_chat(model, &bytes).map(Answer::Chat),
            Expect::Embeddings { inputs, dimension } => {
                compatible::parse_embeddings(model, &bytes, inputs, dimension)
                    .map(|(v, _)| Answer::Embeddings(v))
            }
        };
        return (answer, usage);
    }
    let (code, message) = error_of(error, body);
    let request_id = response
        .and_then(|r| r.get("request_id"))
        .or_else(|| line.get("id"))
        .and_then(Value::as_str)
        .map(without_nul);
    let error = match status {
        Some(status) if status != 200 => AiError::Provider {
            model: model.into(),
            status: status.min(999) as u16,
            code,
            message,
            request_id,
        },
        _ => {
            AiError::BatchLineFailed { model: model.into(), custom_id: without_nul(custom_id), code, message }
        }
    };
    (Err(error), None)
}

/// The code and message of a failed line, from whichever documented variant it carries.
fn error_of(error: Option<&Value>, body: Option<&Value>) -> (String, String) {
    let text = |v: Option<&Value>, keys: &[&str]| {
        keys.iter().find_map(|k| v?.get(*k)?.as_str().filter(|s| !s.is_empty())).map(short)
    };
    let body_error = body.and_then(|b| b.get("error")).filter(|e| e.is_object()).or(body);
    let code = text(error, &["code", "error_code"])
        .or_else(|| text(body_error, &["code", "type"]))
        .unwrap_or_else(|| "-".into());
    let message = error
        .and_then(Value::as_str)
        .map(short)
        .or_else(|| text(error, &["message", "error_message"]))
        .or_else(|| text(body_error, &["message"]))
        .unwrap_or_else(|| "the batch reports this request failed, without a message".into());
    (code, message)
}

/// Provider text for a message: without NUL, and not too long.
pub(super) fn short(text: &str) -> String {
    let text = without_nul(text);
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{} ...", &text[..cut]),
        None => text,
    }
}

fn add(sum: &mut Usage, u: &Usage) {
    sum.prompt_tokens += u.prompt_tokens;
    sum.completion_tokens += u.completion_tokens;
    sum.total_tokens += u.total_tokens;
    sum.cached_tokens += u.cached_tokens;
    sum.reasoning_tokens += u.reasoning_tokens;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expected() -> Vec<(String, Expect)> {
        ["ok", "status", "code", "legacy", "unrun", "missing", "nul"]
            .iter()
            .map(|id| (id.to_string(), Expect::Chat))
            .collect()
    }

    #[test]
    fn results_read_every_documented_variant() {
        let answer = |content: &str| {
            json!({"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, "model": "qwen-plus"})
        };
        let output = [
            json!({"id": "1", "custom_id": "ok", "response": {"status_code": 200, "request_id": "q1", "body": answer("hi")}, "error": null}),
            json!({"id": "7", "custom_id": "nul", "response": {"status_code": 200, "request_id": "q7", "body": answer("a\u{0}b")}, "error": null}),
            json!({"id": "8", "custom_id": "stranger", "response": {"status_code": 200, "body": answer("?")}, "error": null}),
        ];
        let errors = [
            // OpenAI's shape: a status and the refusal as the body.
            json!({"id": "2", "custom_id": "status", "response": {"status_code": 400, "request_id": "q2",
                   "body": {"error": {"code": "invalid_parameter_error", "message": "Range of temperature"}}}, "error": null}),
            // The docs': `error.code` and `error.message`, with the status.
            json!({"id": "3", "custom_id": "code", "response": {"status_code": 500, "request_id": "q3", "body": {}},
                   "error": {"code": "internal_error", "message": "boom"}}),
            // S1's CSV helper: `error.error_code` and `error.error_message`, no response.
            json!({"id": "4", "custom_id": "legacy", "response": null,
                   "error": {"error_code": "InvalidParameter", "error_message": "bad line"}}),
            json!({"id": "5", "custom_id": "unrun", "response": null,
                   "error": {"code": "batch_expired", "message": "not run"}}),
        ];
        let join = |lines: &[Value]| lines.iter().map(|l| l.to_string() + "\n").collect::<String>();
        let (output, errors) = (join(&output) + "{not json\n\n", join(&errors) + "{\"no\": \"id\"}\n");
        let results = parse_results("qwen-plus", &expected(), &[errors.as_bytes(), output.as_bytes()]);
        let get = |id: &str| results.get(id).unwrap();
        assert!(matches!(get("ok"), Ok(Answer::Chat(c)) if c.content == "hi"));
        let err = |id: &str| get(id).clone().unwrap_err();
        assert_eq!(
            err("status"),
            AiError::Provider {
                model: "qwen-plus".into(),
                status: 400,
                code: "invalid_parameter_error".into(),
                message: "Range of temperature".into(),
                request_id: Some("q2".into()),
            }
        );
        assert!(
            matches!(err("code"), AiError::Provider { status: 500, code, message, .. } if code == "internal_error" && message == "boom")
        );
        assert!(
            matches!(err("legacy"), AiError::BatchLineFailed { code, message, .. } if code == "InvalidParameter" && message == "bad line")
        );
        assert!(matches!(err("unrun"), AiError::BatchLineFailed { code, .. } if code == "batch_expired"));
        assert!(matches!(err("missing"), AiError::BatchLineFailed { code, .. } if code == "missing"));
        assert_eq!(err("unrun").sqlstate(), "ZBF03");
        assert!(err("unrun").is_row_failure());
        // The live parser refuses what it refuses live; the answer was still billed.
        assert_eq!(err("nul").sqlstate(), "ZBM01");
        assert_eq!(results.usage.total_tokens, 10, "ok and nul, not the stranger");
        assert_eq!((results.succeeded(), results.failed()), (1, 6));
        assert_eq!(results.unexpected, ["stranger"]);
        assert_eq!(
            results.unreadable,
            [
                Unreadable { file: 0, line: 5, reason: "no custom_id".into() },
                Unreadable { file: 1, line: 4, reason: "not JSON".into() },
            ]
        );
    }

    #[test]
    fn an_answer_wins_over_an_error_for_the_same_request() {
        let expected = vec![("a".to_string(), Expect::Embeddings { inputs: 1, dimension: Some(2) })];
        let ok = json!({"custom_id": "a", "response": {"status_code": 200, "body": {"data": [{"index": 0, "embedding": [0.6, 0.8]}]}}, "error": null});
        let bad = json!({"custom_id": "a", "response": {"status_code": 429, "body": {}}, "error": {"code": "x", "message": "y"}});
        for files in [[ok.to_string(), bad.to_string()], [bad.to_string(), ok.to_string()]] {
            let r = parse_results("m", &expected, &[files[0].as_bytes(), files[1].as_bytes()]);
            assert_eq!(r.get("a").unwrap().as_ref().unwrap(), &Answer::Embeddings(vec![vec![0.6, 0.8]]));
        }
        let wrong_size = json!({"custom_id": "a", "response": {"status_code": 200, "body": {"data": [{"embedding": [1.0]}]}}});
        let r = parse_results("m", &expected, &[wrong_size.to_string().as_bytes()]);
        assert_eq!(r.get("a").unwrap().as_ref().unwrap_err().sqlstate(), "ZBM01");
    }
}
