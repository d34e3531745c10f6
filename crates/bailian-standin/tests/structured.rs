//! Structured output over real HTTP: the answer a strict model would derive from the prompt,
//! the refusals, and the faults of a model that does not obey.

mod common;

use bailian_standin::{chat_reply, Config, Fault, Standin};
use common::{error_of, post, send, Reply, KEY};
use serde_json::{json, Value};

const CHAT: &str = "/compatible-mode/v1/chat/completions";

fn start() -> Standin {
    Standin::start(Config::default()).unwrap()
}

fn schema_format(schema: Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "answer", "strict": true, "schema": schema}})
}

async fn ask(s: &Standin, system: &str, text: &str, format: Value) -> Reply {
    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": text}));
    post(&s.root_url(), CHAT, &json!({"model": "qwen-plus", "messages": messages, "response_format": format}))
        .await
}

/// The parsed JSON content of the first choice.
fn content(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).expect("JSON content")
}

async fn answer(s: &Standin, system: &str, text: &str, schema: Value) -> Value {
    content(&ask(s, system, text, schema_format(schema)).await)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[tokio::test]
async fn enums_are_chosen_from_the_text() {
    let s = start();
    let classify = |values: Value| json!({"type": "object", "properties": {"label": {"type": "string", "enum": values}}, "required": ["label"]});
    let mood = json!(["positive", "negative", "neutral", "mixed"]);
    for (text, expected) in [
        ("I love it, delivery was fast", "positive"),
        ("It crashed twice and support was slow", "negative"),
        ("Great camera, terrible battery", "mixed"),
        ("It arrived on Tuesday", "neutral"),
    ] {
        assert_eq!(answer(&s, "", text, classify(mood.clone())).await, json!({"label": expected}), "{text}");
    }
    let topics = json!(["billing", "shipping", "returns"]);
    // The first value of the enum the text names, whatever comes first in the text.
    let v =
        answer(&s, "", "My SHIPPING address is wrong and the billing too", classify(topics.clone())).await;
    assert_eq!(v, json!({"label": "billing"}));
    // A value only inside another word does not count; with none named, the text's hash picks.
    let text = "Where is my reshipping refund?";
    let v = answer(&s, "", text, classify(topics.clone())).await;
    assert_eq!(v["label"], topics[(fnv1a(text.as_bytes()) % 3) as usize]);
    assert_eq!(answer(&s, "", text, classify(topics)).await, v, "deterministic");
    let v = answer(&s, "", "x", json!({"type": "object", "properties": {"n": {"enum": [7, "seven"]}}})).await;
    assert_eq!(v, json!({"n": 7}));
}

#[tokio::test]
async fn fields_are_extracted_and_entities_masked() {
    let s = start();
    let extract = json!({"type": "object", "properties": {
        "name": {"type": ["string", "null"]},
        "email": {"type": ["string", "null"]},
        "phone_number": {"type": ["string", "null"]},
        "age": {"type": ["string", "null"]}},
        "required": ["name", "email", "phone_number", "age"]});
    let text =
        "Customer name: Ada Lovelace; EMAIL: ada@example.com.\nPhone number: 555 0100 200\nusername: ada";
    assert_eq!(
        answer(&s, "Extract the fields.", text, extract).await,
        json!({"name": "Ada Lovelace", "email": "ada@example.com", "phone_number": "555 0100 200", "age": null})
    );

    let mask = json!({"type": "object", "required": ["entities"], "properties": {"entities": {
        "type": "array", "items": {"type": "object", "required": ["kind", "text"], "properties": {
            "kind": {"type": "string", "enum": ["email", "phone", "name"]},
            "text": {"type": "string"}}}}}});
    let text = "Name: Bob; write to <bob@example.org>, or call +86 138 0013 8000. Cc: eve@example.net.";
    assert_eq!(
        answer(&s, "", text, mask.clone()).await,
        json!({"entities": [
            {"kind": "name", "text": "Bob"},
            {"kind": "email", "text": "bob@example.org"},
            {"kind": "phone", "text": "+86 138 0013 8000"},
            {"kind": "email", "text": "eve@example.net"},
        ]})
    );
    assert_eq!(answer(&s, "", "nothing to hide", mask).await, json!({"entities": []}));
}

#[tokio::test]
async fn summaries_corrections_and_scores() {
    let s = start();
    let summary =
        json!({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]});
    let v =
        answer(&s, "Summarize in at most 5 words.", "one two\n three  four five six seven", summary.clone())
            .await;
    assert_eq!(v, json!({"summary": "one two three four five"}));
    let long: Vec<String> = (1..=60).map(|i| format!("w{i}")).collect();
    let v = answer(&s, "", &long.join(" "), summary).await;
    assert_eq!(v["summary"], json!(long[..50].join(" ")), "50 words without a length");

    let fix = json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]});
    let v = answer(&s, "", "  i  think   this are   fine and i'm sure ", fix).await;
    assert_eq!(v, json!({"text": "I think this are fine and I'm sure."}));

    let rank = json!({"type": "object", "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5}}});
    let v =
        answer(&s, "", "Rate this.\nQuery: red fox den\nDocument: The red fox sleeps.", rank.clone()).await;
    assert_eq!(v, json!({"score": 0.6667, "stars": 1}));
    let v = answer(&s, "", "no markers here", rank).await;
    assert_eq!(v, json!({"score": 0.5, "stars": 3}));

    // Everything else as before: strings echo, numbers 0, booleans false, one array item.
    let plain = json!({"type": "object", "properties": {"title": {"type": "string"}, "ok": {"type": "boolean"},
        "n": {"type": ["integer", "null"]}, "tags": {"type": "array", "items": {"type": "string"}}}});
    let reply = chat_reply("qwen-plus", "hi", 0);
    assert_eq!(
        answer(&s, "", "hi", plain).await,
        json!({"title": reply, "ok": false, "n": 0, "tags": [reply]})
    );
}

#[tokio::test]
async fn refusals() {
    let s = start();
    let refused = |r: &Reply| {
        let (status, code, msg) = error_of(r);
        assert_eq!((status, code.as_str()), (400, "invalid_parameter_error"), "{msg}");
        msg
    };
    assert_eq!(
        refused(&ask(&s, "", "three colours", json!({"type": "json_object"})).await),
        "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
    );
    let v = content(&ask(&s, "Answer in JSON.", "three colours", json!({"type": "json_object"})).await);
    assert_eq!(v, json!({"answer": chat_reply("qwen-plus", "three colours", 0)}));

    let object = json!({"type": "object"});
    for (format, message) in [
        (json!({"type": "yaml"}), "response_format.type should be one of [text, json_object, json_schema]"),
        (
            json!({"type": "json_schema", "json_schema": {"schema": object}}),
            "response_format.json_schema.name is required.",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}),
            "response_format.json_schema.schema must be a JSON Schema object.",
        ),
        (json!({"type": "json_schema"}), "response_format.json_schema must be an object."),
    ] {
        assert_eq!(refused(&ask(&s, "", "hi", format.clone()).await), message, "{format}");
    }

    // JSON output and thinking do not go together, whether thinking is asked for or built in.
    let thinking = json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi in json"}],
        "stream": true, "enable_thinking": true, "response_format": {"type": "json_object"}});
    let message = "Json mode response is not supported when enable_thinking is true";
    assert_eq!(refused(&post(&s.root_url(), CHAT, &thinking).await), message);
    let always = json!({"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}],
        "response_format": schema_format(object.clone())});
    assert_eq!(refused(&post(&s.root_url(), CHAT, &always).await), message);
    let mut off = thinking.clone();
    off["enable_thinking"] = json!(false);
    assert_eq!(post(&s.root_url(), CHAT, &off).await.status, 200);
}

#[tokio::test]
async fn faults_of_a_model_that_does_not_obey() {
    let s = start();
    let schema = json!({"type": "object", "required": ["sentiment", "reason"], "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral", "mixed"]},
        "reason": {"type": "string"},
        "topics": {"type": "array", "items": {"type": "string", "enum": ["price", "quality"]}}}});
    let text = "Great quality, awful price";
    let good = answer(&s, "", text, schema.clone()).await;
    let reply = chat_reply("qwen-plus", text, 0);
    // "price" is the first topic the text names.
    assert_eq!(good, json!({"sentiment": "mixed", "reason": reply, "topics": ["price"]}));

    s.script(text, vec![Fault::NotJson, Fault::OffList]);
    let r = ask(&s, "", text, schema_format(schema.clone())).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let raw = v["choices"][0]["message"]["content"].as_str().unwrap();
    let whole = good.to_string();
    assert_eq!(raw, format!("Sure! {}", &whole[..whole.len() - 1]));
    assert!(serde_json::from_str::<Value>(raw).is_err());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let v = content(&ask(&s, "", text, schema_format(schema.clone())).await);
    assert_eq!(v, json!({"sentiment": "other", "reason": reply, "topics": ["other"]}));

    // Scriptable over the control endpoint too.
    let script = json!({"input": text, "faults": ["schema_violation"]});
    let r = send(&s.root_url(), "POST", "/_standin/script", KEY, &script.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = content(&ask(&s, "", text, schema_format(schema.clone())).await);
    assert_eq!(v, json!({"reason": reply, "topics": ["price"], "unexpected": true}));
    assert_eq!(s.requests().last().unwrap().fault.as_deref(), Some("SchemaViolation"));
    assert_eq!(content(&ask(&s, "", text, schema_format(schema)).await), good, "one fault per script entry");

    // Without response_format the three leave the answer as is; JSON mode only breaks as NotJson.
    s.script("plain", vec![Fault::NotJson, Fault::OffList, Fault::SchemaViolation]);
    for _ in 0..3 {
        let v = post(
            &s.root_url(),
            CHAT,
            &json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "plain"}]}),
        )
        .await
        .json();
        assert_eq!(v["choices"][0]["message"]["content"], json!(chat_reply("qwen-plus", "plain", 0)));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
    s.script("json please", vec![Fault::SchemaViolation, Fault::NotJson]);
    let json_mode = json!({"type": "json_object"});
    let expected = json!({"answer": chat_reply("qwen-plus", "json please", 0)});
    assert_eq!(content(&ask(&s, "", "json please", json_mode.clone()).await), expected);
    let r = ask(&s, "", "json please", json_mode).await;
    assert!(r.json()["choices"][0]["message"]["content"].as_str().unwrap().starts_with("Sure! {"));
}
