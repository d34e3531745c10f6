//! The task functions (`ai_classify`, `ai_extract`, ...): each is one instruction and one
//! JSON Schema, sent through structured output, and its answer read from the validated JSON,
//! never parsed out of free text.
//!
//! The instructions live here and nowhere else: the `ai_prompts` view shows them, and a DBA
//! may replace one per model (`ai_set_prompt`); a replacement is a template with the same
//! placeholders (`{labels}`, `{max_words}`).

use crate::error::AiError;
use crate::limits::{self, Ticker};
use crate::structured::Format;
use crate::template::{self, TemplateError};
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// The task functions that ask a chat model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskFn {
    Classify,
    Extract,
    Mask,
    Summarize,
    FixGrammar,
    Sentiment,
    Rank,
}

/// What replaces a masked entity.
pub const MASK: &str = "[MASKED]";

/// The answers ai_sentiment gives.
pub const SENTIMENTS: [&str; 4] = ["positive", "negative", "neutral", "mixed"];

/// Labels one call may pass at most: each becomes part of the schema and the prompt.
pub const MAX_LABELS: usize = 500;

impl TaskFn {
    pub const ALL: [TaskFn; 7] = [
        TaskFn::Classify,
        TaskFn::Extract,
        TaskFn::Mask,
        TaskFn::Summarize,
        TaskFn::FixGrammar,
        TaskFn::Sentiment,
        TaskFn::Rank,
    ];

    pub fn sql_name(self) -> &'static str {
        match self {
            TaskFn::Classify => "ai_classify",
            TaskFn::Extract => "ai_extract",
            TaskFn::Mask => "ai_mask",
            TaskFn::Summarize => "ai_summarize",
            TaskFn::FixGrammar => "ai_fix_grammar",
            TaskFn::Sentiment => "ai_sentiment",
            TaskFn::Rank => "ai_rank",
        }
    }

    pub fn from_sql_name(name: &str) -> Option<TaskFn> {
        TaskFn::ALL.into_iter().find(|t| t.sql_name() == name)
    }

    /// The instruction sent as the system message; the content is the user message.
    pub fn default_prompt(self) -> &'static str {
        match self {
            TaskFn::Classify => {
                "Classify the text the user gives into exactly one of these labels: {labels}. \
                 Answer in JSON with the label that fits best, spelled exactly as listed, in the field \"label\"."
            }
            TaskFn::Extract => {
                "Extract these fields from the text the user gives: {labels}. Give each field's value \
                 as the text states it, or null when the text does not state it. Answer in JSON with \
                 exactly these keys."
            }
            TaskFn::Mask => {
                "Find every occurrence of these kinds of information in the text the user gives: {labels}. \
                 Answer in JSON: list each occurrence exactly as it is written in the text, with its kind, \
                 in the field \"entities\"; an empty list when there is none."
            }
            TaskFn::Summarize => {
                "Summarize the text the user gives in at most {max_words} words, in the language of \
                 the text. Answer in JSON with the summary in the field \"summary\"."
            }
            TaskFn::FixGrammar => {
                "Correct the grammar, spelling and punctuation of the text the user gives without \
                 changing its meaning, tone or language. Answer in JSON with the corrected text in \
                 the field \"text\"."
            }
            TaskFn::Sentiment => {
                "Classify the sentiment of the text the user gives as positive, negative, neutral, \
                 or mixed (both positive and negative). Answer in JSON in the field \"sentiment\"."
            }
            TaskFn::Rank => {
                "Rate how relevant the document is to the query, from 0 (unrelated) to 1 (answers it \
                 fully). Answer in JSON with the score in the field \"score\"."
            }
        }
    }

    /// The placeholders a prompt for this function may use.
    pub fn placeholders(self) -> &'static [&'static str] {
        match self {
            TaskFn::Classify | TaskFn::Extract | TaskFn::Mask => &["labels"],
            TaskFn::Summarize => &["max_words"],
            TaskFn::FixGrammar | TaskFn::Sentiment | TaskFn::Rank => &[],
        }
    }

    /// The schema of the answer, with `labels` where the function takes them.
    pub fn schema(self, labels: &[String]) -> Value {
        let object = |properties: Value| {
            let required: Vec<&String> =
                properties.as_object().map(|p| p.keys().collect()).unwrap_or_default();
            json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
        };
        match self {
            TaskFn::Classify => object(json!({"label": {"type": "string", "enum": labels}})),
            TaskFn::Extract => {
                let fields: Map<String, Value> =
                    labels.iter().map(|l| (l.clone(), json!({"type": ["string", "null"]}))).collect();
                object(Value::Object(fields))
            }
            TaskFn::Mask => object(json!({"entities": {"type": "array", "items": object(json!({
                "kind": {"type": "string", "enum": labels},
                "text": {"type": "string"},
            }))}})),
            TaskFn::Summarize => object(json!({"summary": {"type": "string"}})),
            TaskFn::FixGrammar => object(json!({"text": {"type": "string"}})),
            TaskFn::Sentiment => object(json!({"sentiment": {"type": "string", "enum": SENTIMENTS}})),
            TaskFn::Rank => object(json!({"score": {"type": "number", "minimum": 0, "maximum": 1}})),
        }
    }

    /// Checks a DBA's replacement prompt: it parses and uses only this function's placeholders.
    pub fn check_prompt(self, prompt: &str) -> Result<(), AiError> {
        let allowed = self.placeholders();
        let listed = || {
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
            }
        };
        if prompt.trim().is_empty() {
            return Err(AiError::invalid("a prompt must not be empty; pass NULL to go back to the default"));
        }
        let used = template::placeholders(prompt).map_err(|e| {
            AiError::invalid_with_hint(
                format!("the prompt {e}"),
                format!("{} takes these placeholders: {}.", self.sql_name(), listed()),
            )
        })?;
        if let Some(unknown) = used.iter().find(|u| !allowed.contains(&u.as_str())) {
            return Err(AiError::invalid_with_hint(
                format!("the prompt uses {{{unknown}}}, which {} does not fill", self.sql_name()),
                format!(
                    "{} takes these placeholders: {}; write {{{{ and }}}} for literal braces.",
                    self.sql_name(),
                    listed()
                ),
            ));
        }
        Ok(())
    }
}

/// One call of a task function, as its arguments give it.
#[derive(Clone, Debug)]
pub enum Input {
    /// ai_classify, ai_extract, ai_mask.
    Labeled {
        content: String,
        labels: Vec<String>,
    },
    Summarize {
        content: String,
        max_words: i32,
    },
    /// ai_fix_grammar, ai_sentiment.
    Text {
        content: String,
    },
    Rank {
        query: String,
        document: String,
    },
}

/// Largest `max_words` ai_summarize accepts (a summary longer than this is no summary).
pub const MAX_SUMMARY_WORDS: i32 = 10_000;

/// Checks `labels` for ai_classify, ai_extract and ai_mask: at least one, none NULL, empty or
/// repeated.
pub fn check_labels(function: TaskFn, labels: &[Option<String>]) -> Result<Vec<String>, AiError> {
    let name = function.sql_name();
    if labels.is_empty() {
        return Err(AiError::invalid_with_hint(
            format!("{name} needs at least one label"),
            "Pass the labels as a text array, e.g. ARRAY['billing', 'bug', 'praise'].",
        ));
    }
    if labels.len() > MAX_LABELS {
        return Err(AiError::invalid(format!(
            "{name} takes at most {MAX_LABELS} labels; {} were given",
            labels.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(labels.len());
    for (i, label) in labels.iter().enumerate() {
        let Some(label) = label else {
            return Err(AiError::invalid(format!(
                "label {} of {name} is NULL; labels must be non-empty text",
                i + 1
            )));
        };
        if label.trim().is_empty() {
            return Err(AiError::invalid(format!(
                "label {} of {name} is empty; labels must be non-empty text",
                i + 1
            )));
        }
        if out.contains(label) {
            return Err(AiError::invalid(format!(
                "label \"{}\" is given twice to {name}; labels must be distinct",
                limits::shown(label)
            )));
        }
        out.push(label.clone());
    }
    Ok(out)
}

/// Checks ai_summarize's `max_words`.
pub fn check_max_words(max_words: i32) -> Result<i32, AiError> {
    if (1..=MAX_SUMMARY_WORDS).contains(&max_words) {
        Ok(max_words)
    } else {
        Err(AiError::invalid(format!("max_words must be between 1 and {MAX_SUMMARY_WORDS}, got {max_words}")))
    }
}

/// A task call ready to send: its messages and format, and what reads the answer.
#[derive(Debug)]
pub struct Ask {
    pub function: TaskFn,
    pub system: String,
    pub user: String,
    pub format: Format,
    /// ai_mask masks this content itself, from the entities the model lists.
    masked: Option<String>,
}

/// A task function's value.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskValue {
    Text(String),
    Json(Value),
    Float(f64),
}

impl Ask {
    /// The call of `function` on `input`, with `prompt` (the default or a DBA's replacement).
    /// `interrupted` is asked while the prompt is built (a prompt may repeat a long list of
    /// labels).
    pub fn new(
        function: TaskFn,
        prompt: &str,
        input: Input,
        interrupted: impl FnMut() -> bool,
    ) -> Result<Ask, AiError> {
        let (labels, max_words) = match &input {
            Input::Labeled { labels, .. } => (labels.as_slice(), None),
            Input::Summarize { max_words, .. } => (&[][..], Some(*max_words)),
            _ => (&[][..], None),
        };
        let quoted =
            || labels.iter().map(|l| Value::String(l.clone()).to_string()).collect::<Vec<_>>().join(", ");
        let labels_text = (!labels.is_empty()).then(quoted);
        let what = format!("the prompt of {}", function.sql_name());
        let system = template::render(
            &what,
            prompt,
            |name| match name {
                "labels" => labels_text.as_deref().map(Cow::Borrowed),
                "max_words" => max_words.map(|m| Cow::Owned(m.to_string())),
                _ => None,
            },
            interrupted,
        )
        .map_err(|e| match e {
            TemplateError::Mistake(m) => AiError::invalid(format!("{what} {m}")),
            TemplateError::Stopped(e) => e,
        })?;
        let format = Format::schema(function.sql_name(), &function.schema(labels))?;
        let (user, masked) = match input {
            Input::Labeled { content, .. } if function == TaskFn::Mask => (content.clone(), Some(content)),
            Input::Labeled { content, .. } | Input::Summarize { content, .. } | Input::Text { content } => {
                (content, None)
            }
            Input::Rank { query, document } => (format!("Query: {query}\n\nDocument: {document}"), None),
        };
        Ok(Ask { function, system, user, format, masked })
    }

    /// The function's value from the model's answer text.
    /// `interrupted` is asked while a long answer is worked on (ai_mask's replacing).
    pub fn answer(
        &self,
        model: &str,
        text: &str,
        interrupted: impl FnMut() -> bool,
    ) -> Result<TaskValue, AiError> {
        let value = self.format.check(model, text)?;
        let field = |k: &str| value.get(k).cloned().unwrap_or(Value::Null);
        let text_of = |k: &str| field(k).as_str().map(str::to_string).unwrap_or_default();
        Ok(match self.function {
            TaskFn::Classify => TaskValue::Text(text_of("label")),
            TaskFn::Extract => TaskValue::Json(value),
            TaskFn::Mask => {
                let entities: Vec<String> = field("entities")
                    .as_array()
                    .map(|list| {
                        list.iter().filter_map(|e| e.get("text")?.as_str().map(str::to_string)).collect()
                    })
                    .unwrap_or_default();
                TaskValue::Text(mask(self.masked.as_deref().unwrap_or_default(), &entities, interrupted)?)
            }
            TaskFn::Summarize => TaskValue::Text(text_of("summary")),
            TaskFn::FixGrammar => TaskValue::Text(text_of("text")),
            TaskFn::Sentiment => TaskValue::Text(text_of("sentiment")),
            TaskFn::Rank => TaskValue::Float(field("score").as_f64().unwrap_or_default()),
        })
    }
}

/// Most occurrences `mask` replaces in one text: each costs 16 bytes before they are merged.
pub const MAX_MASKED: usize = 1 << 20;

/// `content` with every occurrence of each entity replaced by `[MASKED]`. The occurrences are
/// found in the original text and merged where they overlap, so an entity that happens to be
/// part of `[MASKED]` or of another entity cannot corrupt the result; an entity the content
/// does not contain is ignored.
///
/// The entities come from the model and the content from the caller, so both are bounded:
/// at most `MAX_MASKED` occurrences, and a result (which grows when short entities become
/// `[MASKED]`) of at most `limits::MAX_TEXT_BYTES`, computed before it is built.
pub fn mask(
    content: &str,
    entities: &[String],
    interrupted: impl FnMut() -> bool,
) -> Result<String, AiError> {
    let mut ticker = Ticker::new(interrupted);
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for entity in entities.iter().filter(|e| !e.trim().is_empty()) {
        ticker.tick(1)?;
        for (at, m) in content.match_indices(entity.as_str()) {
            ticker.tick(m.len())?;
            if whole(content, at, at + m.len()) {
                if spans.len() == MAX_MASKED {
                    return Err(AiError::LimitExceeded {
                        what: format!("ai_mask's list of occurrences (more than {MAX_MASKED})"),
                        needed: ((MAX_MASKED + 1) * std::mem::size_of::<(usize, usize)>()) as u64,
                        limit_bytes: (MAX_MASKED * std::mem::size_of::<(usize, usize)>()) as u64,
                    });
                }
                spans
                    .try_reserve(1)
                    .map_err(|_| AiError::OutOfMemory { what: "ai_mask's occurrences".into() })?;
                spans.push((at, at + m.len()));
            }
        }
    }
    spans.sort_unstable();
    // The pieces kept and the masks, in order; the first pass only sizes them.
    let merged = |each: &mut dyn FnMut(&str)| {
        let mut done = 0;
        for &(start, end) in &spans {
            if end <= done {
                continue;
            }
            if start >= done {
                each(&content[done..start]);
                each(MASK);
            }
            done = end;
        }
        each(&content[done..]);
    };
    let mut size: u128 = 0;
    merged(&mut |piece| size += piece.len() as u128);
    limits::check("ai_mask's result", size, limits::MAX_TEXT_BYTES)?;
    let mut out = limits::string_with_capacity("ai_mask's result", size as usize)?;
    merged(&mut |piece| out.push_str(piece));
    Ok(out)
}

/// Whether `content[start..end]` is not part of a longer word: an edge that is an ASCII letter
/// or digit must not continue into one ("Al" is not masked inside "Alice"). Text without
/// spaces (Chinese) has no such edges, so any occurrence counts there.
fn whole(content: &str, start: usize, end: usize) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric();
    let piece = &content[start..end];
    let before = content[..start].chars().next_back();
    let after = content[end..].chars().next();
    !(piece.chars().next().is_some_and(word) && before.is_some_and(word)
        || piece.chars().next_back().is_some_and(word) && after.is_some_and(word))
}

/// Cosine similarity of two embeddings, in [-1, 1]; NULL-like (None) for a zero vector or
/// vectors of different lengths, which no embedding model returns.
pub fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    Some((dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_default_prompt_is_a_valid_template_mentioning_json() {
        for t in TaskFn::ALL {
            t.check_prompt(t.default_prompt()).unwrap();
            let used = template::placeholders(t.default_prompt()).unwrap();
            assert_eq!(used, t.placeholders(), "{t:?}");
            // JSON-object mode needs the word; say it anyway so a DBA's copy keeps it.
            assert!(t.default_prompt().contains("JSON"), "{t:?}");
            assert_eq!(TaskFn::from_sql_name(t.sql_name()), Some(t));
        }
    }

    #[test]
    fn classify_sends_labels_in_prompt_and_schema_and_reads_the_label() {
        let ask = Ask::new(
            TaskFn::Classify,
            TaskFn::Classify.default_prompt(),
            Input::Labeled { content: "the app crashed".into(), labels: labels(&["bug", "praise"]) },
            || false,
        )
        .unwrap();
        assert!(ask.system.contains("labels: \"bug\", \"praise\"."), "{}", ask.system);
        assert_eq!(ask.user, "the app crashed");
        let schema = &ask.format.response_format["json_schema"]["schema"];
        assert_eq!(schema["properties"]["label"]["enum"], json!(["bug", "praise"]));
        assert_eq!(ask.answer("m", r#"{"label": "bug"}"#, || false).unwrap(), TaskValue::Text("bug".into()));
        assert_eq!(ask.answer("m", r#"{"label": "other"}"#, || false).unwrap_err().sqlstate(), "ZBI02");
    }

    #[test]
    fn extract_answers_exactly_the_keys() {
        let ask = Ask::new(
            TaskFn::Extract,
            TaskFn::Extract.default_prompt(),
            Input::Labeled { content: "x".into(), labels: labels(&["name", "city"]) },
            || false,
        )
        .unwrap();
        let v = ask.answer("m", r#"{"name": "Ann", "city": null}"#, || false).unwrap();
        assert_eq!(v, TaskValue::Json(json!({"name": "Ann", "city": null})));
        assert!(ask.answer("m", r#"{"name": "Ann"}"#, || false).is_err());
        assert!(ask.answer("m", r#"{"name": "Ann", "city": null, "zip": "1"}"#, || false).is_err());
    }

    #[test]
    fn mask_replaces_what_the_model_found_and_nothing_else() {
        let text = "Mail ann@example.com or call +1 555 0100 100, Ann.";
        let ask = Ask::new(
            TaskFn::Mask,
            TaskFn::Mask.default_prompt(),
            Input::Labeled { content: text.into(), labels: labels(&["email", "phone"]) },
            || false,
        )
        .unwrap();
        let answer = json!({"entities": [{"kind": "email", "text": "ann@example.com"},
                                         {"kind": "phone", "text": "+1 555 0100 100"},
                                         {"kind": "email", "text": "not@there.com"}]});
        assert_eq!(
            ask.answer("m", &answer.to_string(), || false).unwrap(),
            TaskValue::Text("Mail [MASKED] or call [MASKED], Ann.".into())
        );
        assert_eq!(
            mask("A and AB and [x]", &labels(&["A", "AB", "MASKED", ""]), || false).unwrap(),
            "[MASKED] and [MASKED] and [x]"
        );
        assert_eq!(mask("数据库 and 数据", &labels(&["数据"]), || false).unwrap(), "[MASKED]库 and [MASKED]");
        assert_eq!(
            mask("name: Al; Alice called Al.", &labels(&["Al"]), || false).unwrap(),
            "name: [MASKED]; Alice called [MASKED]."
        );
        assert_eq!(mask("x@y.com,x@y.com", &labels(&["x@y.com"]), || false).unwrap(), "[MASKED],[MASKED]");
    }

    #[test]
    fn masking_is_bounded_and_interruptible() {
        // A one-letter entity grows eightfold where it is masked.
        let text = "a ".repeat(1 << 20) + &"x".repeat(62 << 20);
        let e = mask(&text, &labels(&["a"]), || false).unwrap_err();
        assert_eq!(e.sqlstate(), "54000");
        assert_eq!(e.to_string(), "ai_mask's result would need 74448896 bytes, more than the limit of 64MB");
        let text = "a ".repeat(3 << 20);
        let e = mask(&text, &labels(&["a"]), || false).unwrap_err();
        assert_eq!(e.sqlstate(), "54000");
        assert!(e.to_string().starts_with("ai_mask's list of occurrences (more than 1048576)"), "{e}");
        let text = "a ".repeat(1 << 20);
        assert_eq!(mask(&text, &labels(&["a"]), || false).unwrap().len(), 9 << 20);
        let e = mask(&text, &labels(&["a"]), || true).unwrap_err();
        assert_eq!(e, AiError::Interrupted);
    }

    #[test]
    fn summarize_rank_and_sentiment() {
        let s = Ask::new(
            TaskFn::Summarize,
            TaskFn::Summarize.default_prompt(),
            Input::Summarize { content: "long".into(), max_words: 12 },
            || false,
        )
        .unwrap();
        assert!(s.system.contains("at most 12 words"));
        let r = Ask::new(
            TaskFn::Rank,
            TaskFn::Rank.default_prompt(),
            Input::Rank { query: "q".into(), document: "d".into() },
            || false,
        )
        .unwrap();
        assert_eq!(r.user, "Query: q\n\nDocument: d");
        assert_eq!(r.answer("m", r#"{"score": 0.25}"#, || false).unwrap(), TaskValue::Float(0.25));
        assert!(r.answer("m", r#"{"score": 1.5}"#, || false).is_err());
        let t = Ask::new(
            TaskFn::Sentiment,
            TaskFn::Sentiment.default_prompt(),
            Input::Text { content: "x".into() },
            || false,
        )
        .unwrap();
        assert!(t.answer("m", r#"{"sentiment": "angry"}"#, || false).is_err());
    }

    #[test]
    fn replacement_prompts_are_checked() {
        TaskFn::Classify.check_prompt("Pick from {labels}. Say JSON {{\"label\": ...}}").unwrap();
        let e = TaskFn::Classify.check_prompt("Pick from {choices}").unwrap_err();
        assert!(e.to_string().contains("{choices}"), "{e}");
        assert!(e.hint().unwrap().contains("{labels}"));
        assert!(TaskFn::Sentiment.check_prompt("Use {labels}").is_err());
        assert!(TaskFn::Rank.check_prompt("  ").is_err());
        assert!(TaskFn::Rank.check_prompt("bad { brace").is_err());
    }

    #[test]
    fn labels_and_max_words_are_checked() {
        let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(check_labels(TaskFn::Classify, &some(&["a", "b"])).unwrap(), labels(&["a", "b"]));
        assert!(check_labels(TaskFn::Classify, &[]).is_err());
        assert!(check_labels(TaskFn::Classify, &[None]).is_err());
        assert!(check_labels(TaskFn::Extract, &some(&["a", " "])).is_err());
        assert!(check_labels(TaskFn::Mask, &some(&["a", "a"])).unwrap_err().to_string().contains("twice"));
        assert!(check_max_words(0).is_err());
        assert_eq!(check_max_words(50).unwrap(), 50);
    }

    #[test]
    fn cosine_of_embeddings() {
        assert_eq!(cosine(&[1.0, 0.0], &[1.0, 0.0]), Some(1.0));
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]), Some(0.0));
        assert!((cosine(&[1.0, 1.0], &[1.0, 0.0]).unwrap() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), None);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), None);
    }
}
