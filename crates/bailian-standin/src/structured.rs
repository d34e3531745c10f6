//! Structured output (`response_format` in compatible-mode chat): the checks Bailian makes,
//! the answer a model obeying JSON Schema strict mode would give, and that answer spoiled the
//! ways a model that does not obey spoils it (`Fault::NotJson`, `OffList`, `SchemaViolation`).
//!
//! Sources: the structured-output page
//! (https://www.alibabacloud.com/help/en/model-studio/qwen-structured-output) and the older
//! JSON-mode page (https://www.alibabacloud.com/help/en/model-studio/json-mode).
//!
//! The answer is derived from the request's text, so a client's tests can assert on what a
//! model would have found: which enum value, which field, which entities, how many words,
//! which score. The rules key on the schema's shape; a property's name matters only where
//! the name is all that says what is asked (`summary`, a sole `text`, and the labels an
//! extraction looks for in the text).

use crate::chat::content_text;
use crate::embedding::{fnv1a, words_of};
use crate::rerank::relevance;
use crate::state::Fault;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// JSON-mode and structured-output pages, word for word.
pub(crate) const JSON_WORD_MISSING: &str =
    "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.";

/// The structured-output page lists the hybrid models (qwen-plus, qwen-flash, qwen-turbo,
/// qwen3-max-preview, open-source Qwen3) as supporting structured output "(non-thinking
/// mode)" only. It does not print the refusal; this wording is what Bailian answered a
/// thinking model with JSON output (presenton#184, qwen3-235b-a22b-thinking-2507), 400
/// invalid_parameter_error.
pub(crate) const JSON_WITH_THINKING: &str =
    "Json mode response is not supported when enable_thinking is true";

/// The schema of an array without `items`, of an absent `schema`: anything. Null has no
/// keywords, so it generates what a keyword-less schema does.
static ANY: Value = Value::Null;

/// How deep the generator follows nested schemas: a recursive one (a tree of nodes through
/// `$ref`) would otherwise never end.
const MAX_DEPTH: usize = 16;

/// What `response_format` asks for.
pub(crate) enum Format<'a> {
    Text,
    JsonObject,
    /// The request's schema; None when json_schema came without one (any object will do).
    JsonSchema(Option<&'a Value>),
}

impl Format<'_> {
    pub(crate) fn is_json(&self) -> bool {
        !matches!(self, Format::Text)
    }
}

/// `response_format` as the structured-output page describes it: `type` one of text,
/// json_object, json_schema; json_schema carrying a `name` and an object `schema`. The page
/// documents the fields, not the refusals: their wording is a guess in the style of the
/// documented ones.
pub(crate) fn format(body: &Value) -> Result<Format<'_>, String> {
    let Some(format) = body.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(Format::Text);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Format::Text),
        Some("json_object") => Ok(Format::JsonObject),
        Some("json_schema") => {
            let Some(spec) = format.get("json_schema").and_then(Value::as_object) else {
                return Err("response_format.json_schema must be an object.".into());
            };
            if spec.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err("response_format.json_schema.name is required.".into());
            }
            match spec.get("schema") {
                None | Some(Value::Null) => Ok(Format::JsonSchema(None)),
                Some(schema) if schema.is_object() => Ok(Format::JsonSchema(Some(schema))),
                Some(_) => Err("response_format.json_schema.schema must be a JSON Schema object.".into()),
            }
        }
        _ => Err("response_format.type should be one of [text, json_object, json_schema]".into()),
    }
}

/// The answer's content as `format` asks: `answer` as is; in JSON mode (which needs the word
/// "json" in some message, JSON-mode page) `{"answer": answer}`; for a schema, the instance a
/// strict model would write for `text` (the last user message) under `system`.
pub(crate) fn shaped(
    format: &Format,
    messages: &[Value],
    text: &str,
    system: &str,
    answer: String,
) -> Result<String, String> {
    match format {
        Format::Text => Ok(answer),
        Format::JsonObject => {
            let mentions_json = messages.iter().any(|m| {
                content_text(m.get("content").unwrap_or(&Value::Null)).0.to_lowercase().contains("json")
            });
            if !mentions_json {
                return Err(JSON_WORD_MISSING.into());
            }
            Ok(json!({"answer": answer}).to_string())
        }
        Format::JsonSchema(schema) => {
            let object = json!({"type": "object"});
            Ok(instance(schema.unwrap_or(&object), text, system, &answer).to_string())
        }
    }
}

/// What a model obeying `schema` strictly answers to `text` under the system prompt `system`;
/// `echo` is what it says where the schema asks for free text.
pub(crate) fn instance(schema: &Value, text: &str, system: &str, echo: &str) -> Value {
    Generator { root: schema, text, system, echo }.value(schema, None, false, 0)
}

struct Generator<'a> {
    root: &'a Value,
    text: &'a str,
    system: &'a str,
    echo: &'a str,
}

impl<'a> Generator<'a> {
    /// `name`: the property the value is for; `nullable`: an enclosing `anyOf` allows null.
    fn value(&self, schema: &'a Value, name: Option<&str>, nullable: bool, depth: usize) -> Value {
        let schema = resolve(self.root, schema);
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        if let Some(value) = schema.get("const") {
            return value.clone();
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return self.pick(values);
        }
        // pydantic writes Optional[X] as anyOf [X, null].
        if let Some(branches) = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array)
        {
            let branches: Vec<&'a Value> = branches.iter().map(|b| resolve(self.root, b)).collect();
            let null = branches.iter().any(|b| type_of(b).0 == "null");
            return match branches.into_iter().find(|b| type_of(b).0 != "null") {
                Some(branch) => self.value(branch, name, nullable || null, depth + 1),
                None => Value::Null,
            };
        }
        let (kind, null) = type_of(schema);
        match kind {
            "string" => self.string(name, nullable || null),
            "integer" => self.number(schema, true),
            "number" => self.number(schema, false),
            "boolean" => json!(false),
            "null" => Value::Null,
            "array" => self.array(schema, depth),
            "object" => self.object(schema, depth),
            _ => json!(self.echo),
        }
    }

    /// Rule 1. A sentiment enum gets the lexicon's verdict; another string enum the first
    /// value the text names, else one chosen by the text's hash; other enums their first.
    fn pick(&self, values: &[Value]) -> Value {
        let strings: Option<Vec<&str>> = values.iter().map(Value::as_str).collect();
        let Some(strings) = strings.filter(|s| !s.is_empty()) else {
            return values.first().cloned().unwrap_or(Value::Null);
        };
        let set: BTreeSet<String> = strings.iter().map(|s| s.to_lowercase()).collect();
        if strings.len() == 4
            && set.iter().map(String::as_str).eq(["mixed", "negative", "neutral", "positive"])
        {
            let mood = sentiment(self.text);
            return json!(strings.iter().find(|s| s.eq_ignore_ascii_case(mood)).unwrap_or(&mood));
        }
        if let Some(named) = strings.iter().find(|s| find_phrase(self.text, s).is_some()) {
            return json!(named);
        }
        json!(strings[(fnv1a(self.text.as_bytes()) % strings.len() as u64) as usize])
    }

    fn string(&self, name: Option<&str>, nullable: bool) -> Value {
        match name {
            // Rule 2: how "extract" asks for a field the text may not have.
            Some(name) if nullable => {
                labelled(self.text, name).into_iter().next().map_or(Value::Null, |(_, v)| json!(v))
            }
            // Rule 4: how "summarize" asks, with the length in the system prompt.
            Some("summary") => json!(first_words(self.text, words_asked(self.system).unwrap_or(50))),
            _ => json!(self.echo),
        }
    }

    /// Rule 6: a bounded number is a score, how "rank" asks; a strict model also keeps within
    /// a one-sided bound. An unbounded number is 0, as before.
    fn number(&self, schema: &Value, integer: bool) -> Value {
        let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
        let (lo, hi) = (bound("minimum"), bound("maximum"));
        let x = match (lo, hi) {
            (Some(lo), Some(hi)) => match query_and_document(self.text) {
                Some((query, document)) => relevance(query, document),
                None => (lo + hi) / 2.0,
            },
            (Some(lo), None) if lo > 0.0 => lo,
            (None, Some(hi)) if hi < 0.0 => hi,
            _ => return json!(0),
        };
        let (lo, hi) = (lo.unwrap_or(f64::MIN), hi.unwrap_or(f64::MAX));
        if integer {
            json!(x.round().max(lo.ceil()).min(hi.floor()) as i64)
        } else {
            json!(x.max(lo).min(hi))
        }
    }

    fn array(&self, schema: &'a Value, depth: usize) -> Value {
        let items = resolve(self.root, schema.get("items").unwrap_or(&ANY));
        // Rule 3: how "mask" asks for the entities of the text.
        if let Some(kinds) = mask_kinds(self.root, items) {
            let base = self.value(items, None, false, depth + 1);
            let base = base.as_object().cloned().unwrap_or_default();
            let found = entities(self.text, &kinds).into_iter().map(|(kind, text)| {
                let mut item = base.clone();
                item.insert("kind".into(), json!(kind));
                item.insert("text".into(), json!(text));
                Value::Object(item)
            });
            return Value::Array(found.collect());
        }
        json!([self.value(items, None, false, depth + 1)])
    }

    fn object(&self, schema: &'a Value, depth: usize) -> Value {
        let mut out = Map::new();
        let props = schema.get("properties").and_then(Value::as_object);
        // Rule 5: how "fix grammar" asks, a top-level object of one string `text`.
        if let Some(text) = props.filter(|p| depth == 0 && p.len() == 1).and_then(|p| p.get("text")) {
            let text = resolve(self.root, text);
            if type_of(text) == ("string", false) && text.get("enum").is_none() {
                out.insert("text".into(), json!(corrected(self.text)));
                return Value::Object(out);
            }
        }
        for (name, property) in props.into_iter().flatten() {
            out.insert(name.clone(), self.value(property, Some(name), false, depth + 1));
        }
        // A required property the schema does not describe is still written, as free text.
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = name.as_str().filter(|n| !out.contains_key(*n)) {
                out.insert(name.into(), json!(self.echo));
            }
        }
        Value::Object(out)
    }
}

/// A local `$ref` (`#/$defs/X`, `#/definitions/X`, any pointer into the schema) followed to
/// what it names; anything else as is. A few hops at most, so a cycle of refs ends.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..8 {
        let target = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| root.pointer(pointer));
        match target {
            Some(t) => schema = t,
            None => break,
        }
    }
    schema
}

/// The schema's type and whether it allows null: a `type` array's first type other than
/// "null"; without `type`, an object if it has properties, an array if it has items, else a
/// string.
fn type_of(schema: &Value) -> (&str, bool) {
    match schema.get("type") {
        Some(Value::Array(types)) => {
            let mut names = types.iter().filter_map(Value::as_str);
            let null = names.clone().any(|t| t == "null");
            (names.find(|t| *t != "null").unwrap_or("null"), null)
        }
        Some(Value::String(t)) => (t.as_str(), false),
        _ if schema.get("properties").is_some() => ("object", false),
        _ if schema.get("items").is_some() => ("array", false),
        _ => ("string", false),
    }
}

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "love",
    "loved",
    "excellent",
    "fast",
    "happy",
    "like",
    "liked",
    "wonderful",
    "positive",
];
const NEGATIVE: &[&str] = &[
    "bad", "crash", "crashed", "crashes", "slow", "hate", "terrible", "broken", "awful", "poor", "negative",
];

/// A lexicon's verdict, not a model's: enough for a test to know the answer in advance.
fn sentiment(text: &str) -> &'static str {
    let words = words_of(text);
    let has = |lexicon: &[&str]| words.iter().any(|w| lexicon.contains(&w.as_str()));
    match (has(POSITIVE), has(NEGATIVE)) {
        (true, true) => "mixed",
        (true, false) => "positive",
        (false, true) => "negative",
        (false, false) => "neutral",
    }
}

/// Where `phrase` first stands in `text` as a word or phrase of its own, ASCII case ignored.
fn find_phrase(text: &str, phrase: &str) -> Option<usize> {
    if phrase.is_empty() {
        return None;
    }
    // ASCII case folding keeps every byte where it was, so positions index `text` too.
    let hay = text.to_ascii_lowercase();
    let needle = phrase.to_ascii_lowercase();
    hay.match_indices(&needle).map(|(i, _)| i).find(|&i| stands_alone(text, i, i + needle.len()))
}

/// No ASCII letter or digit touches `text[start..end]` on a side where it ends in one. Other
/// scripts (CJK) write no spaces between words, so they need no boundary.
fn stands_alone(text: &str, start: usize, end: usize) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let inner = &text[start..end];
    let before = !word(inner.chars().next()) || !word(text[..start].chars().next_back());
    let after = !word(inner.chars().next_back()) || !word(text[end..].chars().next());
    before && after
}

/// Every value written after `name:` in `text` (the name in any ASCII case, or with spaces
/// for its underscores), up to the next `;`, line end or the end, trimmed and without one
/// trailing full stop, with where its label stands. Empty values are left out.
fn labelled(text: &str, name: &str) -> Vec<(usize, String)> {
    let hay = text.to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    let mut names = vec![name.clone()];
    if name.contains('_') {
        names.push(name.replace('_', " "));
    }
    let mut found = Vec::new();
    for name in &names {
        let label = format!("{name}:");
        for (at, _) in hay.match_indices(&label) {
            if !stands_alone(text, at, at + name.len()) {
                continue;
            }
            let rest = &text[at + label.len()..];
            let value = rest[..rest.find([';', '\n']).unwrap_or(rest.len())].trim();
            let value = value.strip_suffix('.').unwrap_or(value).trim_end();
            if !value.is_empty() {
                found.push((at, value.to_string()));
            }
        }
    }
    found.sort();
    found
}

/// The entity kinds of a "mask" schema's items: a `kind` string enum beside a `text` string.
fn mask_kinds<'a>(root: &'a Value, items: &'a Value) -> Option<Vec<&'a str>> {
    let props = items.get("properties")?.as_object()?;
    let kind = resolve(root, props.get("kind")?);
    let text = resolve(root, props.get("text")?);
    if type_of(text).0 != "string" || text.get("enum").is_some() {
        return None;
    }
    kind.get("enum")?.as_array()?.iter().map(Value::as_str).collect()
}

/// Rule 3: the entities of each kind in `text`, in order of appearance, as (kind, text).
/// Kinds that name e-mail or phone numbers are found by their shape; others by their label.
fn entities(text: &str, kinds: &[&str]) -> Vec<(String, String)> {
    let mut found: Vec<(usize, usize, String)> = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let lower = kind.to_ascii_lowercase();
        let spans = if lower.contains("email") {
            emails(text)
        } else if lower.contains("phone") {
            phones(text)
        } else {
            labelled(text, kind)
        };
        found.extend(spans.into_iter().map(|(at, span)| (at, k, span)));
    }
    found.sort();
    found.into_iter().map(|(_, k, span)| (kinds[k].to_string(), span)).collect()
}

/// Whitespace-separated tokens with an `@` and a `.` after it, without the punctuation
/// around them in prose.
fn emails(text: &str) -> Vec<(usize, String)> {
    const AROUND: &[char] = &[',', ';', ':', '(', ')', '<', '>', '[', ']', '"', '\''];
    let mut out = Vec::new();
    for token in text.split_whitespace() {
        let at = token.as_ptr() as usize - text.as_ptr() as usize;
        let trimmed = token.trim_start_matches(AROUND);
        let lead = token.len() - trimmed.len();
        let trimmed = trimmed.trim_end_matches(|c| AROUND.contains(&c) || c == '.');
        if let Some((user, domain)) = trimmed.split_once('@') {
            if !user.is_empty() && domain.contains('.') {
                out.push((at + lead, trimmed.to_string()));
            }
        }
    }
    out
}

/// Longest runs of digits, spaces, `+`, `-` and parentheses that hold at least 7 digits.
fn phones(text: &str) -> Vec<(usize, String)> {
    let part = |c: char| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')');
    let mut out = Vec::new();
    let mut start = None;
    // A last position past the end closes a run the text ends with.
    for (i, c) in text.char_indices().map(|(i, c)| (i, Some(c))).chain([(text.len(), None)]) {
        match (c.is_some_and(part), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                let run = &text[s..i];
                if run.chars().filter(char::is_ascii_digit).count() >= 7 {
                    out.push((s + run.len() - run.trim_start().len(), run.trim().to_string()));
                }
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// The N of the first "N words" in the system prompt.
fn words_asked(system: &str) -> Option<usize> {
    let lower = system.to_ascii_lowercase();
    lower.match_indices(" words").find_map(|(i, _)| {
        let digits = lower[..i].bytes().rev().take_while(u8::is_ascii_digit).count();
        (digits > 0).then(|| lower[i - digits..i].parse().unwrap_or(usize::MAX))
    })
}

fn first_words(text: &str, n: usize) -> String {
    text.split_whitespace().take(n).collect::<Vec<_>>().join(" ")
}

/// Rule 5: the corrections any model makes: spacing, a capital "I", a capital first letter,
/// a full stop.
fn corrected(text: &str) -> String {
    let words: Vec<String> = text.split_whitespace().map(capital_i).collect();
    let joined = words.join(" ");
    let mut chars = joined.chars();
    let Some(first) = chars.next() else { return joined };
    let mut out: String = first.to_uppercase().chain(chars).collect();
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// `i` standing alone (between non-letters: "i", "i'm", "(i)") as `I`.
fn capital_i(word: &str) -> String {
    let chars: Vec<char> = word.chars().collect();
    let letter = |j: Option<usize>| j.and_then(|j| chars.get(j)).is_some_and(|c| c.is_alphanumeric());
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| if c == 'i' && !letter(i.checked_sub(1)) && !letter(Some(i + 1)) { 'I' } else { c })
        .collect()
}

/// How "rank" asks: a line starting with `Query:`, and after it `Document:`; the texts after
/// each.
fn query_and_document(text: &str) -> Option<(&str, &str)> {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.trim_start().strip_prefix("Query:") {
            let after = &text[at + line.len() - rest.len()..];
            let d = after.find("Document:")?;
            return Some((&after[..d], &after[d + "Document:".len()..]));
        }
        at += line.len();
    }
    None
}

/// NotJson, OffList, SchemaViolation: the 200 chat answer `body` to `request` as a model that
/// ignored `response_format` writes it. A request without a JSON response_format gets `body`
/// as is; OffList and SchemaViolation break a schema, so JSON mode's answers (which have
/// none) are also left alone by them.
pub(crate) fn spoiled(fault: &Fault, request: &Value, mut body: Value) -> Value {
    let schema = match format(request) {
        Ok(Format::JsonObject) => None,
        Ok(Format::JsonSchema(schema)) => Some(schema.unwrap_or(&ANY)),
        _ => return body,
    };
    let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) else { return body };
    for choice in choices {
        let Some(content) = choice.pointer("/message/content").and_then(Value::as_str) else { continue };
        let mut content = content.to_string();
        match (fault, schema) {
            // Cut short by max_tokens before the closing brace, after a chatty preamble.
            (Fault::NotJson, _) => {
                content.pop();
                content = format!("Sure! {content}");
                choice["finish_reason"] = json!("length");
            }
            (Fault::OffList, Some(schema)) => {
                let Ok(mut answer) = serde_json::from_str::<Value>(&content) else { continue };
                off_list(schema, schema, &mut answer, 0);
                content = answer.to_string();
            }
            (Fault::SchemaViolation, Some(schema)) => {
                let Ok(mut answer) = serde_json::from_str::<Value>(&content) else { continue };
                let required = resolve(schema, schema).get("required").and_then(Value::as_array);
                if let Some(fields) = answer.as_object_mut() {
                    if let Some(first) = required.and_then(|r| r.first()).and_then(Value::as_str) {
                        fields.remove(first);
                    }
                    fields.insert("unexpected".into(), json!(true));
                }
                content = answer.to_string();
            }
            _ => continue,
        }
        choice["message"]["content"] = json!(content);
    }
    body
}

/// Every string the schema confines to an enum, set to a value outside it.
fn off_list(root: &Value, schema: &Value, value: &mut Value, depth: usize) {
    let schema = resolve(root, schema);
    if depth > MAX_DEPTH {
        return;
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if value.is_string() && values.iter().all(Value::is_string) {
            let listed = values.iter().any(|v| v.as_str() == Some("other"));
            *value = json!(if listed { "none of the above" } else { "other" });
        }
        return;
    }
    if let Some(branches) = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array) {
        for branch in branches {
            off_list(root, branch, value, depth + 1);
        }
        return;
    }
    match value {
        Value::Object(fields) => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
            for (name, field) in fields.iter_mut() {
                if let Some(property) = props.get(name) {
                    off_list(root, property, field, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            let Some(item) = schema.get("items") else { return };
            for value in items {
                off_list(root, item, value, depth + 1);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(schema: Value, text: &str, system: &str) -> Value {
        instance(&schema, text, system, "ECHO")
    }

    #[test]
    fn enums_follow_the_text() {
        let mood = json!({"enum": ["positive", "negative", "neutral", "mixed"]});
        assert_eq!(answer(mood.clone(), "I loved it, fast and great", ""), "positive");
        assert_eq!(answer(mood.clone(), "It crashed twice. Terrible.", ""), "negative");
        assert_eq!(answer(mood.clone(), "Good screen but the app crashes", ""), "mixed");
        assert_eq!(answer(mood.clone(), "It is a phone.", ""), "neutral");
        let cased = json!({"enum": ["Mixed", "Neutral", "Negative", "Positive"]});
        assert_eq!(answer(cased, "happy", ""), "Positive");
        let topics = json!({"type": "string", "enum": ["billing", "shipping", "other"]});
        assert_eq!(answer(topics.clone(), "Where is my SHIPPING label? And billing?", ""), "billing");
        assert_eq!(answer(topics.clone(), "the shippingbox", ""), topics["enum"][fnv(b"the shippingbox", 3)]);
        assert_eq!(answer(json!({"enum": [3, 1]}), "1", ""), json!(3));
        assert_eq!(find_phrase("我喜欢退款流程", "退款"), Some(9));
        assert_eq!(find_phrase("c++ rocks", "C++"), Some(0));
    }

    fn fnv(text: &[u8], n: u64) -> usize {
        (fnv1a(text) % n) as usize
    }

    #[test]
    fn extraction_entities_and_words() {
        let schema = json!({"type": "object", "properties": {
            "name": {"type": ["string", "null"]},
            "phone_number": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "city": {"type": ["string", "null"]}}});
        let text = "Order from NAME: Ada Lovelace; phone number: +44 20 7946 0958.\nusername: x";
        assert_eq!(
            answer(schema, text, ""),
            json!({"name": "Ada Lovelace", "phone_number": "+44 20 7946 0958", "city": null})
        );
        let text = "Mail (ada@example.com), call +1 (555) 123-4567 or bob@x.org. Name: Ada";
        assert_eq!(
            entities(text, &["person_name", "email", "phone", "name"]),
            vec![
                ("email".to_string(), "ada@example.com".to_string()),
                ("phone".into(), "+1 (555) 123-4567".into()),
                ("email".into(), "bob@x.org".into()),
                ("name".into(), "Ada".into()),
            ]
        );
        assert_eq!(words_asked("Summarize in at most 12 words, then 3 words."), Some(12));
        assert_eq!(words_asked("Be brief."), None);
        assert_eq!(corrected("  i think  i'm right\tand so do  i "), "I think I'm right and so do I.");
        assert_eq!(corrected("is it?"), "Is it?");
        assert_eq!(corrected(" "), "");
    }

    #[test]
    fn scores_and_bounds() {
        let score = json!({"type": "number", "minimum": 0, "maximum": 1});
        let text = "Query: red fox\nDocument: The red dog.";
        assert_eq!(answer(score.clone(), text, ""), json!(0.5));
        assert_eq!(answer(score.clone(), "no markers", ""), json!(0.5));
        assert_eq!(answer(json!({"type": "integer", "minimum": 1, "maximum": 5}), "x", ""), json!(3));
        assert_eq!(answer(json!({"type": "integer", "minimum": 2}), "x", ""), json!(2));
        assert_eq!(answer(json!({"type": "number"}), "x", ""), json!(0));
        let third = "Query: a b c\nDocument: c";
        assert_eq!(answer(score, third, ""), json!(0.3333));
    }

    #[test]
    fn refs_required_and_spoilers() {
        let schema = json!({"type": "object", "required": ["mood", "note"],
            "properties": {"mood": {"$ref": "#/$defs/Mood"}, "tags": {"type": "array", "items": {"$ref": "#/$defs/Mood"}}},
            "$defs": {"Mood": {"type": "string", "enum": ["positive", "negative", "neutral", "mixed"]}}});
        let v = answer(schema.clone(), "bad", "");
        assert_eq!(v, json!({"mood": "negative", "tags": ["negative"], "note": "ECHO"}));
        let request = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "m", "schema": schema}}});
        let body = json!({"choices": [{"message": {"content": v.to_string()}, "finish_reason": "stop"}]});
        let off = spoiled(&Fault::OffList, &request, body.clone());
        let off: Value =
            serde_json::from_str(off["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(off, json!({"mood": "other", "tags": ["other"], "note": "ECHO"}));
        let bad = spoiled(&Fault::SchemaViolation, &request, body.clone());
        let bad: Value =
            serde_json::from_str(bad["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(bad, json!({"tags": ["negative"], "note": "ECHO", "unexpected": true}));
        let cut = spoiled(&Fault::NotJson, &request, body.clone());
        assert_eq!(cut["choices"][0]["finish_reason"], "length");
        assert!(
            serde_json::from_str::<Value>(cut["choices"][0]["message"]["content"].as_str().unwrap()).is_err()
        );
        assert_eq!(spoiled(&Fault::NotJson, &json!({}), body.clone()), body);
        assert_eq!(
            spoiled(&Fault::OffList, &json!({"response_format": {"type": "json_object"}}), body.clone()),
            body
        );
    }
}
