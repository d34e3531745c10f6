//! Input files: requests written as Bailian's JSONL (research §1.3), within its limits,
//! split into several files when one does not hold them all.

use crate::error::{AiError, BatchRule};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Most requests in one input file (research §1.3).
pub const MAX_LINES: u64 = 50_000;
/// Largest input file: 500 MB (research §1.2). Decimal megabytes: the docs do not say, and
/// the smaller reading is the one that is safe.
pub const MAX_FILE_BYTES: u64 = 500_000_000;
/// Largest line: 1 MB in the newer docs (S3; S1 said 6 MB), decimal as above.
pub const MAX_LINE_BYTES: u64 = 1_000_000;
/// Longest `custom_id`, in characters (S3).
pub const MAX_CUSTOM_ID_CHARS: usize = 256;

/// What a batch's requests call (research §1.4): every line's `url` and the batch's
/// `endpoint` are the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`: text and vision models.
    ChatCompletions,
    /// `/v1/embeddings`: text embedding models (Beijing).
    Embeddings,
    /// `/v1/chat/ds-test`: `batch-test-model`, free, for trying the flow.
    Test,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Test => "/v1/chat/ds-test",
        }
    }

    pub fn parse(s: &str) -> Option<Endpoint> {
        [Endpoint::ChatCompletions, Endpoint::Embeddings, Endpoint::Test]
            .into_iter()
            .find(|e| e.as_str() == s)
    }
}

/// The limits input files are built within: Bailian's by default; lower ones for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_lines: u64,
    pub max_file_bytes: u64,
    pub max_line_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_lines: MAX_LINES, max_file_bytes: MAX_FILE_BYTES, max_line_bytes: MAX_LINE_BYTES }
    }
}

impl Limits {
    /// Each limit between 1 and Bailian's: a file built within higher ones would be refused.
    fn check(&self) -> Result<(), AiError> {
        for (name, value, most) in [
            ("max_lines", self.max_lines, MAX_LINES),
            ("max_file_bytes", self.max_file_bytes, MAX_FILE_BYTES),
            ("max_line_bytes", self.max_line_bytes, MAX_LINE_BYTES),
        ] {
            if !(1..=most).contains(&value) {
                return Err(AiError::invalid(format!(
                    "batch limit {name} must be between 1 and {most}, got {value}"
                )));
            }
        }
        Ok(())
    }
}

/// What a line's answer is read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A chat completion (`/v1/chat/completions`, `/v1/chat/ds-test`).
    Chat,
    /// An embeddings answer with one vector per input, of `dimension` values when the
    /// request asked for one.
    Embeddings { inputs: usize, dimension: Option<u32> },
}

/// One input file: its JSONL bytes, and the requests in it in order.
#[derive(Clone, Debug, PartialEq)]
pub struct InputFile {
    pub bytes: Vec<u8>,
    /// Each request's `custom_id` and what its answer is read as.
    pub expected: Vec<(String, Expect)>,
    /// The model every request names.
    pub model: String,
}

/// The input files of `lines`, `(custom_id, body)` each, for one `endpoint` and one model:
/// one file, or several when they do not fit one within `limits` (each file is a batch of
/// its own). A body is a live request body for the endpoint (`compatible::chat_request`,
/// `embedding_body`); `stream` and `stream_options` are left out of it, since a batch answers
/// whole bodies (a thinking model's `reasoning_content` included). No lines make no files.
///
/// Refused with [`AiError::BatchInput`], naming the line, before anything is sent: an empty
/// `custom_id`, one longer than 256 characters or given twice; a body that is not an object
/// naming its `model`; another model or another `enable_thinking` than the first line's; a
/// line larger than `limits.max_line_bytes` (or than a whole file).
pub fn input_files<I>(endpoint: Endpoint, lines: I, limits: &Limits) -> Result<Vec<InputFile>, AiError>
where
    I: IntoIterator<Item = (String, Value)>,
{
    limits.check()?;
    let mut files = Vec::new();
    let mut current: Option<InputFile> = None;
    let mut seen = HashSet::new();
    // The first line's model and enable_thinking (null when it has none).
    let mut first: Option<(String, Value)> = None;
    for (i, (custom_id, body)) in lines.into_iter().enumerate() {
        let number = i as u64 + 1;
        let refuse = |rule, message: String| AiError::BatchInput {
            rule,
            line: number,
            custom_id: custom_id.clone(),
            message,
        };
        if custom_id.is_empty() {
            return Err(refuse(BatchRule::CustomIdEmpty, "the custom_id is empty".into()));
        }
        let chars = custom_id.chars().count();
        if chars > MAX_CUSTOM_ID_CHARS {
            return Err(refuse(
                BatchRule::CustomIdTooLong,
                format!("the custom_id has {chars} characters; Bailian takes at most {MAX_CUSTOM_ID_CHARS}"),
            ));
        }
        if !seen.insert(custom_id.clone()) {
            return Err(refuse(
                BatchRule::DuplicateCustomId,
                "the custom_id is given twice; each request of a batch needs its own".into(),
            ));
        }
        let Value::Object(mut body) = body else {
            return Err(refuse(BatchRule::NoModel, "the request body is not a JSON object".into()));
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(refuse(BatchRule::NoModel, "the request body names no model".into())),
        };
        body.remove("stream");
        body.remove("stream_options");
        let thinking = body.get("enable_thinking").cloned().unwrap_or(Value::Null);
        match &first {
            None => first = Some((model.clone(), thinking)),
            Some((first_model, _)) if *first_model != model => {
                return Err(refuse(
                    BatchRule::MixedModels,
                    format!("the model is \"{model}\" and the first line's \"{first_model}\"; a batch runs one model"),
                ))
            }
            Some((_, first_thinking)) if *first_thinking != thinking => {
                return Err(refuse(
                    BatchRule::MixedThinking,
                    format!(
                        "enable_thinking is {thinking} and the first line's {first_thinking}; a batch runs one thinking mode"
                    ),
                ))
            }
            Some(_) => {}
        }
        let expect = match endpoint {
            Endpoint::Embeddings => Expect::Embeddings {
                inputs: match body.get("input") {
                    Some(Value::Array(items)) => items.len(),
                    Some(_) => 1,
                    None => 0,
                },
                dimension: body.get("dimensions").and_then(Value::as_u64).and_then(|d| u32::try_from(d).ok()),
            },
            Endpoint::ChatCompletions | Endpoint::Test => Expect::Chat,
        };
        let line = json!({"custom_id": custom_id, "method": "POST", "url": endpoint.as_str(), "body": body});
        let line = serde_json::to_vec(&line)
            .map_err(|e| AiError::Internal { message: format!("cannot serialize a batch line: {e}") })?;
        let size = line.len() as u64;
        if size > limits.max_line_bytes {
            return Err(refuse(
                BatchRule::LineTooLarge,
                format!(
                    "the line is {size} bytes; Bailian takes lines of at most {} bytes",
                    limits.max_line_bytes
                ),
            ));
        }
        if size + 1 > limits.max_file_bytes {
            return Err(refuse(
                BatchRule::LineTooLarge,
                format!(
                    "the line is {size} bytes, more than a file of at most {} bytes holds",
                    limits.max_file_bytes
                ),
            ));
        }
        let full = current.as_ref().is_some_and(|f| {
            f.expected.len() as u64 >= limits.max_lines
                || f.bytes.len() as u64 + size + 1 > limits.max_file_bytes
        });
        if full {
            files.extend(current.take());
        }
        let file =
            current.get_or_insert_with(|| InputFile { bytes: Vec::new(), expected: Vec::new(), model });
        file.bytes.extend_from_slice(&line);
        file.bytes.push(b'\n');
        file.expected.push((custom_id, expect));
    }
    files.extend(current);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_lines(n: usize) -> Vec<(String, Value)> {
        (0..n)
            .map(|i| {
                (
                    format!("r{i}"),
                    json!({"model": "qwen-plus", "messages": [{"role": "user", "content": format!("q{i}")}]}),
                )
            })
            .collect()
    }

    fn rule(result: Result<Vec<InputFile>, AiError>) -> (BatchRule, u64) {
        match result {
            Err(AiError::BatchInput { rule, line, .. }) => (rule, line),
            other => panic!("not a BatchInput error: {other:?}"),
        }
    }

    #[test]
    fn lines_become_jsonl_in_the_documented_shape() {
        let mut lines = chat_lines(2);
        lines[0].1["stream"] = json!(true);
        lines[0].1["stream_options"] = json!({"include_usage": true});
        let files = input_files(Endpoint::ChatCompletions, lines, &Limits::default()).unwrap();
        assert_eq!(files.len(), 1);
        let text = String::from_utf8(files[0].bytes.clone()).unwrap();
        let parsed: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            parsed[0],
            json!({"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "qwen-plus", "messages": [{"role": "user", "content": "q0"}]}}),
            "stream left out"
        );
        assert!(text.ends_with('\n'));
        assert_eq!(files[0].expected, [("r0".to_string(), Expect::Chat), ("r1".to_string(), Expect::Chat)]);
        assert_eq!(files[0].model, "qwen-plus");
        let emb = input_files(
            Endpoint::Embeddings,
            [("e".to_string(), json!({"model": "text-embedding-v4", "input": ["a", "b"], "dimensions": 64}))],
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(emb[0].expected[0].1, Expect::Embeddings { inputs: 2, dimension: Some(64) });
        assert!(input_files(Endpoint::Test, Vec::new(), &Limits::default()).unwrap().is_empty());
    }

    #[test]
    fn what_does_not_fit_one_file_is_split() {
        let limits = Limits { max_lines: 3, ..Limits::default() };
        let files = input_files(Endpoint::ChatCompletions, chat_lines(7), &limits).unwrap();
        assert_eq!(files.iter().map(|f| f.expected.len()).collect::<Vec<_>>(), [3, 3, 1]);
        let one = input_files(Endpoint::ChatCompletions, chat_lines(1), &Limits::default()).unwrap();
        let line = one[0].bytes.len() as u64;
        let limits = Limits { max_file_bytes: 2 * line + 1, ..Limits::default() };
        let files = input_files(Endpoint::ChatCompletions, chat_lines(5), &limits).unwrap();
        assert_eq!(files.iter().map(|f| f.expected.len()).collect::<Vec<_>>(), [2, 2, 1]);
        assert!(files.iter().all(|f| f.bytes.len() as u64 <= limits.max_file_bytes));
        let ids: Vec<&str> =
            files.iter().flat_map(|f| f.expected.iter().map(|(id, _)| id.as_str())).collect();
        assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
    }

    #[test]
    fn every_rule_is_refused_naming_its_line() {
        let chat = Endpoint::ChatCompletions;
        let limits = Limits::default();
        let with = |i: usize, f: &dyn Fn(&mut (String, Value))| {
            let mut lines = chat_lines(3);
            f(&mut lines[i]);
            input_files(chat, lines, &limits)
        };
        assert_eq!(rule(with(1, &|l| l.0.clear())), (BatchRule::CustomIdEmpty, 2));
        assert_eq!(rule(with(2, &|l| l.0 = "é".repeat(257))), (BatchRule::CustomIdTooLong, 3));
        assert!(with(2, &|l| l.0 = "é".repeat(256)).is_ok(), "characters, not bytes");
        assert_eq!(rule(with(2, &|l| l.0 = "r0".into())), (BatchRule::DuplicateCustomId, 3));
        assert_eq!(rule(with(0, &|l| l.1 = json!("hi"))), (BatchRule::NoModel, 1));
        assert_eq!(rule(with(0, &|l| l.1["model"] = json!(""))), (BatchRule::NoModel, 1));
        assert_eq!(rule(with(1, &|l| l.1["model"] = json!("qwen-flash"))), (BatchRule::MixedModels, 2));
        assert_eq!(rule(with(2, &|l| l.1["enable_thinking"] = json!(false))), (BatchRule::MixedThinking, 3));
        let big = |l: &mut (String, Value)| l.1["messages"][0]["content"] = json!("x".repeat(1_000_000));
        assert_eq!(rule(with(1, &big)), (BatchRule::LineTooLarge, 2));
        let e = with(1, &big).unwrap_err();
        assert_eq!(e.sqlstate(), "ZBF01");
        assert!(e.to_string().contains("at most 1000000 bytes"), "{e}");
        assert!(e.to_string().starts_with("batch input line 2 (custom_id \"r1\")"), "{e}");
        let tiny = Limits { max_file_bytes: 50, ..Limits::default() };
        assert_eq!(rule(input_files(chat, chat_lines(1), &tiny)), (BatchRule::LineTooLarge, 1));
        for bad in
            [Limits { max_lines: 0, ..limits }, Limits { max_line_bytes: MAX_LINE_BYTES + 1, ..limits }]
        {
            assert_eq!(input_files(chat, chat_lines(1), &bad).unwrap_err().sqlstate(), "22023");
        }
    }
}
