//! The task functions (ai_classify, ai_extract, ai_mask, ai_summarize, ai_fix_grammar,
//! ai_sentiment, ai_rank), ai_gen_structured, ai_similarity, ai_chunk, ai_prompt, the
//! ai_prompts view with ai_set_prompt, and pg_bailian.on_error: a real cluster, the stand-in
//! over loopback, real roles, every value and every request checked.

mod common;

use bailian_standin::{embedding_for, Fault, LoggedRequest, Standin};
use common::*;
use postgres::Client;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- helpers ---------------------------------------------------------------------------

/// A NOTICE or WARNING as the server sent it, SQLSTATE included.
#[derive(Clone, Debug)]
struct Told {
    severity: String,
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

type Heard = Arc<Mutex<Vec<Told>>>;

/// A session of `user` that keeps every notice with its SQLSTATE, detail and hint.
fn connect_hearing(db: &str, user: &str) -> (Client, Heard) {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let mut cfg: postgres::Config =
        format!("host={host} port={} user={user} dbname={db} connect_timeout=10", port()).parse().unwrap();
    let heard: Heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    cfg.notice_callback(move |n| {
        sink.lock().unwrap().push(Told {
            severity: n.severity().to_string(),
            code: n.code().code().to_string(),
            message: n.message().to_string(),
            detail: n.detail().map(str::to_string),
            hint: n.hint().map(str::to_string),
        })
    });
    (cfg.connect(postgres::NoTls).unwrap(), heard)
}

/// The WARNINGs heard since the last call (NOTICEs are dropped).
fn warnings(heard: &Heard) -> Vec<Told> {
    heard.lock().unwrap().drain(..).filter(|t| t.severity == "WARNING").collect()
}

/// SQLSTATE, message, detail and hint of a failed statement.
fn full_error(r: Result<impl Sized, postgres::Error>) -> (String, String, Option<String>, Option<String>) {
    match r {
        Ok(_) => panic!("the statement succeeded; an error was expected"),
        Err(e) => match e.as_db_error() {
            Some(db) => (
                db.code().code().to_string(),
                db.message().to_string(),
                db.detail().map(str::to_string),
                db.hint().map(str::to_string),
            ),
            None => panic!("not a database error: {e}"),
        },
    }
}

fn err(c: &mut Client, sql: &str) -> (String, String) {
    error_of(c.query_one(sql, &[]))
}

fn float(c: &mut Client, sql: &str) -> Option<f64> {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn texts(c: &mut Client, sql: &str) -> Option<Vec<String>> {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// The value of a jsonb-returning query, None for SQL NULL.
fn maybe_json(c: &mut Client, sql: &str) -> Option<Value> {
    let sql = format!("SELECT ({sql})::text");
    let text: Option<String> = c.query_one(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0);
    text.map(|t| serde_json::from_str(&t).unwrap())
}

/// The chat requests whose structured-output schema is named `name`.
fn by_schema(s: &Standin, name: &str) -> Vec<LoggedRequest> {
    s.requests()
        .into_iter()
        .filter(|r| r.body.pointer("/response_format/json_schema/name").and_then(Value::as_str) == Some(name))
        .collect()
}

/// The system message of a chat request, if it has one.
fn system_of(r: &LoggedRequest) -> Option<String> {
    let first = &r.body["messages"][0];
    (first["role"] == "system").then(|| first["content"].as_str().unwrap().to_string())
}

/// The last user message of a chat request.
fn user_of(r: &LoggedRequest) -> String {
    let messages = r.body["messages"].as_array().unwrap();
    let user = messages.iter().rev().find(|m| m["role"] == "user").expect("a user message");
    user["content"].as_str().unwrap().to_string()
}

/// The stand-in's hash (FNV-1a), which picks a label when the text names none.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

const DEPLOY_FN: &str =
    "ai_deploy_model(text, text, text, jsonb, int, float8, float8, float8, text, text, boolean, int, int, text, text, boolean, boolean)";

/// What pg_bailian says after an inference error, in the hint.
const FORMAT_HINT: &str = "The model did not follow the requested format: retry the row or try another model. SET pg_bailian.on_error = 'null' keeps a query going past such rows.";
const NULL_HINT: &str = "The value is NULL because pg_bailian.on_error is 'null'.";

const CLASSIFY_PROMPT: &str = "Classify the text the user gives into exactly one of these labels: {labels}. Answer in JSON with the label that fits best, spelled exactly as listed, in the field \"label\".";
const SENTIMENT_PROMPT: &str = "Classify the sentiment of the text the user gives as positive, negative, neutral, or mixed (both positive and negative). Answer in JSON in the field \"sentiment\".";
const RANK_PROMPT: &str = "Rate how relevant the document is to the query, from 0 (unrelated) to 1 (answers it fully). Answer in JSON with the score in the field \"score\".";

// ---- 1. the task functions ---------------------------------------------------------------

/// Every task function over one table, each row compared with the value the stand-in's
/// rules give for its text, and the requests checked: the instruction as the system message
/// (labels quoted in it), the content as the user message, the function's strict json_schema,
/// thinking switched off on a hybrid model and left alone on a model without the switch, and
/// a deployed "system" persona not sent with a task.
#[test]
fn task_functions_over_a_table() {
    let (mut c, _) = fresh_db("afam_tasks");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "max", "qwen3-max", ", params => '{\"system\": \"You are a pirate.\"}'");
    c.batch_execute(
        "CREATE TABLE tickets (id int PRIMARY KEY, body text);
         INSERT INTO tickets VALUES
           (1, 'The app crashed with a bug. name: Ann Lee; city: Berlin'),
           (2, 'i love it,  shipping was fast and great'),
           (3, 'Order id: A-77; the bug is bad but billing support was good. Mail bob@shop.example.org or call +1 (555) 123-4567'),
           (4, 'nothing to see here'),
           (5, '数据库很慢，我要退款'),
           (6, NULL)",
    )
    .unwrap();
    let labels = ["billing", "bug", "shipping", "praise", "退款"];
    let rows = c
        .query(
            "SELECT id,
                    ai_classify('chat', body, ARRAY['billing', 'bug', 'shipping', 'praise', '退款']),
                    ai_extract('chat', body, ARRAY['name', 'city', 'order_id'])::text,
                    ai_mask('chat', body, ARRAY['email', 'phone', 'name']),
                    ai_summarize('chat', body, 4),
                    ai_fix_grammar('chat', body),
                    ai_sentiment('chat', body),
                    ai_rank('chat', 'the app crashed billing', body)
               FROM tickets ORDER BY id",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 6);
    let hashed = labels[(fnv1a(b"nothing to see here") % 5) as usize];
    let none = json!({"name": null, "city": null, "order_id": null});
    #[allow(clippy::type_complexity)]
    let expected: [(i32, &str, Value, &str, &str, &str, &str, f64); 5] = [
        (
            1,
            "bug",
            json!({"name": "Ann Lee", "city": "Berlin", "order_id": null}),
            "The app crashed with a bug. name: [MASKED]; city: Berlin",
            "The app crashed with",
            "The app crashed with a bug. name: Ann Lee; city: Berlin.",
            "negative",
            0.75,
        ),
        (
            2,
            "shipping",
            none.clone(),
            "i love it,  shipping was fast and great",
            "i love it, shipping",
            "I love it, shipping was fast and great.",
            "positive",
            0.0,
        ),
        (
            // "bug" comes first in the text, "billing" first in the list: the list decides.
            3,
            "billing",
            json!({"name": null, "city": null, "order_id": "A-77"}),
            "Order id: A-77; the bug is bad but billing support was good. Mail [MASKED] or call [MASKED]",
            "Order id: A-77; the",
            "Order id: A-77; the bug is bad but billing support was good. Mail bob@shop.example.org or call +1 (555) 123-4567.",
            "mixed",
            0.5,
        ),
        (4, hashed, none.clone(), "nothing to see here", "nothing to see here", "Nothing to see here.", "neutral", 0.0),
        (5, "退款", none.clone(), "数据库很慢，我要退款", "数据库很慢，我要退款", "数据库很慢，我要退款.", "neutral", 0.0),
    ];
    for (row, want) in rows.iter().zip(expected.iter()) {
        let id: i32 = row.get(0);
        assert_eq!(id, want.0);
        assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some(want.1), "classify row {id}");
        let extracted: Value = serde_json::from_str(&row.get::<_, String>(2)).unwrap();
        assert_eq!(extracted, want.2, "extract row {id}");
        assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some(want.3), "mask row {id}");
        assert_eq!(row.get::<_, Option<String>>(4).as_deref(), Some(want.4), "summarize row {id}");
        assert_eq!(row.get::<_, Option<String>>(5).as_deref(), Some(want.5), "fix_grammar row {id}");
        assert_eq!(row.get::<_, Option<String>>(6).as_deref(), Some(want.6), "sentiment row {id}");
        assert_eq!(row.get::<_, Option<f64>>(7), Some(want.7), "rank row {id}");
    }
    // NULL content: NULL everywhere, and nothing sent for that row.
    let last = &rows[5];
    assert_eq!(last.get::<_, i32>(0), 6);
    for i in 1..7 {
        assert_eq!(last.get::<_, Option<String>>(i), None, "column {i} of the NULL row");
    }
    assert_eq!(last.get::<_, Option<f64>>(7), None);
    assert_eq!(s.stats().chat_requests, 35, "7 functions x 5 rows with content");

    // The requests.
    let bodies: Vec<String> = c
        .query("SELECT body FROM tickets WHERE body IS NOT NULL ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let quoted = "\"billing\", \"bug\", \"shipping\", \"praise\", \"退款\"";
    for name in
        ["ai_classify", "ai_extract", "ai_mask", "ai_summarize", "ai_fix_grammar", "ai_sentiment", "ai_rank"]
    {
        let log = by_schema(&s, name);
        assert_eq!(log.len(), 5, "{name}");
        for r in &log {
            assert_eq!(r.model, "qwen-plus");
            assert_eq!(r.path, "/compatible-mode/v1/chat/completions");
            assert_eq!(r.body["response_format"]["type"], "json_schema", "{name}");
            assert_eq!(r.body["response_format"]["json_schema"]["strict"], true, "{name}");
            assert_eq!(r.body["enable_thinking"], false, "{name}: thinking is off for structured output");
            assert_eq!(r.body["messages"].as_array().unwrap().len(), 2, "{name}");
            assert_eq!(r.body["messages"][1]["role"], "user");
            let schema = &r.body["response_format"]["json_schema"]["schema"];
            assert_eq!(schema["type"], "object");
            assert_eq!(schema["additionalProperties"], false);
        }
        let mut users: Vec<String> = log.iter().map(user_of).collect();
        users.sort();
        let mut want: Vec<String> = if name == "ai_rank" {
            bodies.iter().map(|b| format!("Query: the app crashed billing\n\nDocument: {b}")).collect()
        } else {
            bodies.clone()
        };
        want.sort();
        assert_eq!(users, want, "{name}: the content is the user message");
    }
    let classify = &by_schema(&s, "ai_classify")[0];
    assert_eq!(system_of(classify).unwrap(), CLASSIFY_PROMPT.replace("{labels}", quoted));
    assert_eq!(
        classify.body["response_format"]["json_schema"]["schema"],
        json!({"type": "object", "properties": {"label": {"type": "string", "enum": labels}},
               "required": ["label"], "additionalProperties": false})
    );
    let extract = &by_schema(&s, "ai_extract")[0];
    assert!(system_of(extract)
        .unwrap()
        .contains("fields from the text the user gives: \"name\", \"city\", \"order_id\"."));
    let schema = &extract.body["response_format"]["json_schema"]["schema"];
    for key in ["name", "city", "order_id"] {
        assert_eq!(schema["properties"][key], json!({"type": ["string", "null"]}));
    }
    let mut required: Vec<&str> =
        schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    required.sort();
    assert_eq!(required, ["city", "name", "order_id"]);
    let mask = &by_schema(&s, "ai_mask")[0];
    assert!(system_of(mask)
        .unwrap()
        .contains("these kinds of information in the text the user gives: \"email\", \"phone\", \"name\"."));
    assert_eq!(
        mask.body["response_format"]["json_schema"]["schema"]["properties"]["entities"]["items"]
            ["properties"]["kind"],
        json!({"type": "string", "enum": ["email", "phone", "name"]})
    );
    let summarize = &by_schema(&s, "ai_summarize")[0];
    assert!(system_of(summarize)
        .unwrap()
        .starts_with("Summarize the text the user gives in at most 4 words"));
    assert_eq!(system_of(&by_schema(&s, "ai_sentiment")[0]).unwrap(), SENTIMENT_PROMPT);
    assert_eq!(
        by_schema(&s, "ai_sentiment")[0].body["response_format"]["json_schema"]["schema"]["properties"]
            ["sentiment"]["enum"],
        json!(["positive", "negative", "neutral", "mixed"])
    );
    assert_eq!(system_of(&by_schema(&s, "ai_rank")[0]).unwrap(), RANK_PROMPT);
    assert_eq!(
        by_schema(&s, "ai_rank")[0].body["response_format"]["json_schema"]["schema"]["properties"]["score"],
        json!({"type": "number", "minimum": 0, "maximum": 1})
    );

    // qwen3-max has no thinking switch: none is sent; its deployed persona gives way to the
    // task's instruction.
    s.reset();
    assert_eq!(
        one_text(&mut c, "SELECT ai_sentiment('max', 'a terrible, slow day')").as_deref(),
        Some("negative")
    );
    let r = &s.requests()[0];
    assert_eq!(r.model, "qwen3-max");
    assert!(r.body.get("enable_thinking").is_none(), "{}", r.body);
    assert_eq!(r.body["messages"].as_array().unwrap().len(), 2, "{}", r.body);
    assert_eq!(system_of(r).unwrap(), SENTIMENT_PROMPT);
    // ai_gen on the same model still has its persona.
    one_text(&mut c, "SELECT ai_gen('max', 'hello')");
    assert_eq!(system_of(&s.requests()[1]).as_deref(), Some("You are a pirate."));

    // Default max_words is 50.
    let long: String = (1..=60).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let summary = one_text(&mut c, &format!("SELECT ai_summarize('chat', '{long}')")).unwrap();
    assert_eq!(summary, (1..=50).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" "));
    assert!(system_of(s.requests().last().unwrap()).unwrap().contains("at most 50 words"));
}

// ---- 2. ai_gen_structured ---------------------------------------------------------------

const MOOD: &str = r#"{"type": "object", "properties": {"mood": {"type": "string", "enum": ["happy", "sad"]}}, "required": ["mood"], "additionalProperties": false}"#;

/// The three shapes of response_format, what is sent for each and what comes back.
#[test]
fn gen_structured_formats() {
    let (mut c, _) = fresh_db("afam_structured_formats");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");

    // A plain JSON Schema: sent strict under the name "response".
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string"},
        "mood": {"type": "string", "enum": ["happy", "sad"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["city", "mood", "stars"], "additionalProperties": false});
    let got = json_of(
        &mut c,
        &format!("SELECT ai_gen_structured('chat', 'Write a sad note about Paris', '{schema}')"),
    );
    assert_eq!(
        got,
        json!({"city": "Echo from qwen-plus: Write a sad note about Paris", "mood": "sad", "stars": 3})
    );
    let r = s.requests().pop().unwrap();
    assert_eq!(
        r.body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "response", "strict": true, "schema": schema}})
    );
    assert_eq!(r.body["messages"], json!([{"role": "user", "content": "Write a sad note about Paris"}]));
    assert_eq!(r.body["enable_thinking"], false);

    // Bailian's own shape passes through exactly as written.
    let bailian = json!({"type": "json_schema", "json_schema": {"name": "weather", "strict": false,
        "description": "a forecast",
        "schema": {"type": "object", "properties": {"sky": {"type": "string", "enum": ["sunny", "rainy"]}},
                   "required": ["sky"]}}});
    let got = json_of(
        &mut c,
        &format!("SELECT ai_gen_structured('chat', 'Will it be rainy tomorrow?', '{bailian}')"),
    );
    assert_eq!(got, json!({"sky": "rainy"}));
    assert_eq!(s.requests().pop().unwrap().body["response_format"], bailian);

    // JSON-object mode: any JSON, when the messages say JSON (the prompt, or a system
    // message given per call).
    let got = json_of(
        &mut c,
        "SELECT ai_gen_structured('chat', 'Describe Paris as JSON', '{\"type\": \"json_object\"}')",
    );
    assert_eq!(got, json!({"answer": "Echo from qwen-plus: Describe Paris as JSON"}));
    assert_eq!(s.requests().pop().unwrap().body["response_format"], json!({"type": "json_object"}));
    let got = json_of(
        &mut c,
        "SELECT ai_gen_structured('chat', 'Describe Paris', '{\"type\": \"json_object\"}', params => '{\"system\": \"Always answer in json.\"}')",
    );
    assert_eq!(got, json!({"answer": "Echo from qwen-plus: Describe Paris"}));
    assert_eq!(
        s.requests().pop().unwrap().body["messages"],
        json!([{"role": "system", "content": "Always answer in json."}, {"role": "user", "content": "Describe Paris"}])
    );
    let sent = s.stats().requests;
    let (code, msg, _, hint) = full_error(
        c.query_one("SELECT ai_gen_structured('chat', 'Describe Paris', '{\"type\": \"json_object\"}')", &[]),
    );
    assert_eq!(code, "22023");
    assert_eq!(
        msg,
        "response_format {\"type\": \"json_object\"} needs the word JSON in the messages; Bailian refuses the request otherwise"
    );
    assert!(hint.unwrap().contains("Answer in JSON."));
    // on_error does not capture a bad call: it is not a row's inference failing.
    for mode in ["capture", "skip"] {
        let (code, _) = err(
            &mut c,
            &format!("SELECT ai_gen_structured('chat', 'Describe Paris', '{{\"type\": \"json_object\"}}', '{mode}')"),
        );
        assert_eq!(code, "22023", "{mode}");
    }
    assert_eq!(s.stats().requests, sent, "refused before sending");

    // Per-call params reach the request, next to the format.
    json_of(&mut c, &format!("SELECT ai_gen_structured('chat', 'happy', '{MOOD}', params => '{{\"temperature\": 0.3, \"seed\": 9}}')"));
    let r = s.requests().pop().unwrap();
    assert_eq!((r.body["temperature"].clone(), r.body["seed"].clone()), (json!(0.3), json!(9)));
    assert_eq!(r.body["response_format"]["json_schema"]["name"], "response");

    // A long bad answer is quoted to 200 characters (characters, not bytes).
    let prompt = "数据".repeat(150);
    let fmt = r#"{"type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"]}"#;
    s.script(&prompt, vec![Fault::NotJson]);
    let (code, msg, detail, hint) = full_error(
        c.query_one(&format!("SELECT ai_gen_structured('chat', '{prompt}', '{fmt}', 'abort')"), &[]),
    );
    assert_eq!(code, "ZBI01");
    assert_eq!(msg, "model \"chat\" answered with text that is not JSON: expected value at line 1 column 1");
    let answer = format!("Sure! {{\"t\":\"Echo from qwen-plus: {prompt}\"");
    let first: String = answer.chars().take(200).collect();
    assert_eq!(detail.unwrap(), format!("the model answered: {first}..."));
    assert_eq!(hint.as_deref(), Some(FORMAT_HINT));

    // In JSON-object mode there is no schema to break: OffList and SchemaViolation leave the
    // answer alone, NotJson does not.
    s.script("any JSON please", vec![Fault::OffList]);
    let got =
        json_of(&mut c, "SELECT ai_gen_structured('chat', 'any JSON please', '{\"type\": \"json_object\"}')");
    assert_eq!(got, json!({"answer": "Echo from qwen-plus: any JSON please"}));
    s.script("any JSON please", vec![Fault::NotJson]);
    let got =
        json_of(&mut c, "SELECT ai_gen_structured('chat', 'any JSON please', '{\"type\": \"json_object\"}')");
    assert_eq!(got["error"]["sqlstate"], "ZBI01");
}

/// Every on_error mode for each inference fault and each provider error: 'capture' (the
/// default) gives {"error": {...}}, 'skip' NULL, 'abort' the error, NULL what
/// pg_bailian.on_error says (the error, or NULL with a WARNING).
#[test]
fn gen_structured_on_error_modes() {
    let (mut c, db) = fresh_db("afam_structured_on_error");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", ", max_retries => 0");
    let (mut w, heard) = connect_hearing(&db, "postgres");

    struct Case {
        fault: Fault,
        prompt: &'static str,
        code: &'static str,
        message: &'static str,
        /// None: the detail is the request id the stand-in logged.
        detail: Option<&'static str>,
        hint: Option<&'static str>,
    }
    let cases = [
        Case {
            fault: Fault::NotJson,
            prompt: "nj happy",
            code: "ZBI01",
            message: "model \"chat\" answered with text that is not JSON: expected value at line 1 column 1",
            detail: Some("the model answered: Sure! {\"mood\":\"happy\""),
            hint: Some(FORMAT_HINT),
        },
        Case {
            fault: Fault::OffList,
            prompt: "off happy",
            code: "ZBI02",
            message: "the answer of model \"chat\" does not match the requested schema: \"other\" is not one of \"happy\" or \"sad\" (at /mood)",
            detail: Some("the model answered: {\"mood\":\"other\"}"),
            hint: Some(FORMAT_HINT),
        },
        Case {
            fault: Fault::SchemaViolation,
            prompt: "violate happy",
            code: "ZBI02",
            message: "the answer of model \"chat\" does not match the requested schema: Additional properties are not allowed ('unexpected' was unexpected); \"mood\" is a required property",
            detail: Some("the model answered: {\"unexpected\":true}"),
            hint: Some(FORMAT_HINT),
        },
        Case {
            fault: Fault::Inspection,
            prompt: "rude happy",
            code: "ZB400",
            message: "Bailian rejected the request to model \"chat\": HTTP 400 data_inspection_failed: Input data may contain inappropriate content.",
            detail: None,
            hint: None,
        },
        Case {
            fault: Fault::Status(400),
            prompt: "bad happy",
            code: "ZB400",
            message: "Bailian rejected the request to model \"chat\": HTTP 400 invalid_parameter_error: <400> InternalError.Algo.InvalidParameter: The request is invalid.",
            detail: None,
            hint: None,
        },
    ];
    for case in &cases {
        let p = case.prompt;
        let call = |mode: &str| format!("SELECT ai_gen_structured('chat', '{p}', '{MOOD}'{mode})");
        let detail = |s: &Standin| match case.detail {
            Some(d) => d.to_string(),
            None => format!("request_id: standin-{}", s.requests().last().unwrap().id),
        };
        let what = format!("{:?}", case.fault);

        // Without a fault every mode gives the answer.
        for mode in ["", ", 'capture'", ", 'skip'", ", 'abort'", ", NULL"] {
            assert_eq!(maybe_json(&mut c, &call(mode)), Some(json!({"mood": "happy"})), "{what} {mode}");
        }

        // capture, by default and by name.
        for mode in ["", ", 'capture'"] {
            s.script(p, vec![case.fault.clone()]);
            let got = maybe_json(&mut c, &call(mode)).unwrap();
            let want = json!({"error": {"sqlstate": case.code, "message": case.message,
                                        "detail": detail(&s), "hint": case.hint}});
            assert_eq!(got, want, "{what} {mode}");
        }
        // skip
        s.script(p, vec![case.fault.clone()]);
        assert_eq!(maybe_json(&mut c, &call(", 'skip'")), None, "{what} skip");
        // abort
        s.script(p, vec![case.fault.clone()]);
        let got = full_error(c.query_one(&call(", 'abort'"), &[]));
        assert_eq!(
            got,
            (case.code.into(), case.message.into(), Some(detail(&s)), case.hint.map(str::to_string)),
            "{what} abort"
        );
        // NULL: pg_bailian.on_error = 'error' (the default) raises.
        s.script(p, vec![case.fault.clone()]);
        let got = full_error(c.query_one(&call(", NULL"), &[]));
        assert_eq!(
            got,
            (case.code.into(), case.message.into(), Some(detail(&s)), case.hint.map(str::to_string)),
            "{what} NULL under 'error'"
        );
        // NULL: pg_bailian.on_error = 'null' gives NULL and a WARNING.
        w.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
        warnings(&heard);
        s.script(p, vec![case.fault.clone()]);
        assert_eq!(maybe_json(&mut w, &call(", NULL")), None, "{what} NULL under 'null'");
        let told = warnings(&heard);
        assert_eq!(told.len(), 1, "{what}: {told:?}");
        assert_eq!(told[0].code, case.code);
        assert_eq!(told[0].message, case.message);
        assert_eq!(told[0].detail, Some(detail(&s)));
        // An inference error's own hint (which advises this very setting) is left out.
        let want_hint = match case.hint {
            Some(h) if !case.code.starts_with("ZBI") => format!("{NULL_HINT} {h}"),
            _ => NULL_HINT.to_string(),
        };
        assert_eq!(told[0].hint.as_deref(), Some(want_hint.as_str()));
        // An explicit mode wins over the setting.
        s.script(p, vec![case.fault.clone()]);
        let (code, _) = err(&mut w, &call(", 'abort'"));
        assert_eq!(code, case.code, "{what}: 'abort' raises under pg_bailian.on_error = 'null'");
        s.script(p, vec![case.fault.clone()]);
        assert_eq!(maybe_json(&mut w, &call(", 'capture'")).unwrap()["error"]["sqlstate"], case.code);
        assert!(warnings(&heard).is_empty(), "explicit modes warn of nothing");
        w.batch_execute("RESET pg_bailian.on_error").unwrap();
    }
    // Each call above was one request: nothing retried, nothing sent twice.
    assert_eq!(s.stats().requests, 5 * (5 + 2 + 1 + 1 + 1 + 1 + 2));
}

// ---- 3. pg_bailian.on_error -----------------------------------------------------------------

/// pg_bailian.on_error = 'null': a row whose inference fails is NULL with a WARNING carrying
/// the error's own SQLSTATE, for the task functions, ai_gen, ai_embed and ai_similarity;
/// the row's other calls and the other rows keep their values; bad arguments still raise, a
/// cancel still cancels.
#[test]
fn on_error_null_warns_and_returns_null() {
    let (mut c, db) = fresh_db("afam_on_error_null");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", ", max_retries => 0");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", max_retries => 0");
    deploy(&mut c, &s, "slow", "qwen-plus", ", max_retries => 0, timeout => 1");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('nowhere', 'qwen-plus', '{}', base_url => 'http://127.0.0.1:{closed}/v1', max_retries => 0)",
        key("nowhere")
    ))
    .unwrap();
    let (mut w, heard) = connect_hearing(&db, "postgres");
    assert_eq!(one_text(&mut w, "SELECT ai_prompt('{0}', 'loaded')").as_deref(), Some("loaded"));
    assert_eq!(one_text(&mut w, "SHOW pg_bailian.on_error").as_deref(), Some("error"), "the default");
    w.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
    assert_eq!(one_text(&mut w, "SHOW pg_bailian.on_error").as_deref(), Some("null"));
    warnings(&heard);

    let format_hint = NULL_HINT.to_string();
    // (fault, input, call, SQLSTATE, message, hint)
    let cases: Vec<(Fault, &str, &str, &str, &str, String)> = vec![
        (
            Fault::OffList,
            "off-list ticket",
            "SELECT ai_classify('chat', 'off-list ticket', ARRAY['x', 'y'])",
            "ZBI02",
            "the answer of model \"chat\" does not match the requested schema: \"other\" is not one of \"x\" or \"y\" (at /label)",
            format_hint.clone(),
        ),
        (
            Fault::NotJson,
            "city: Oslo",
            "SELECT ai_extract('chat', 'city: Oslo', ARRAY['city'])::text",
            "ZBI01",
            "model \"chat\" answered with text that is not JSON: expected value at line 1 column 1",
            format_hint.clone(),
        ),
        (
            Fault::SchemaViolation,
            "city: Rome",
            "SELECT ai_extract('chat', 'city: Rome', ARRAY['city'])::text",
            "ZBI02",
            "the answer of model \"chat\" does not match the requested schema: Additional properties are not allowed ('unexpected' was unexpected); \"city\" is a required property",
            format_hint.clone(),
        ),
        (
            Fault::OffList,
            "mail a@b.io",
            "SELECT ai_mask('chat', 'mail a@b.io', ARRAY['email'])",
            "ZBI02",
            "the answer of model \"chat\" does not match the requested schema: \"other\" is not one of \"email\" (at /entities/0/kind)",
            format_hint.clone(),
        ),
        (
            Fault::Status(400),
            "refused prompt",
            "SELECT ai_gen('chat', 'refused prompt')",
            "ZB400",
            "Bailian rejected the request to model \"chat\": HTTP 400 invalid_parameter_error: <400> InternalError.Algo.InvalidParameter: The request is invalid.",
            NULL_HINT.to_string(),
        ),
        (
            Fault::Status(400),
            "refused text",
            "SELECT ai_embed('emb', 'refused text')::text",
            "ZB400",
            "Bailian rejected the request to model \"emb\": HTTP 400 invalid_parameter_error: <400> InternalError.Algo.InvalidParameter: The request is invalid.",
            NULL_HINT.to_string(),
        ),
        (
            Fault::Status(400),
            "refused pair",
            "SELECT ai_similarity('emb', 'refused pair', 'other text')::text",
            "ZB400",
            "Bailian rejected the request to model \"emb\": HTTP 400 invalid_parameter_error: <400> InternalError.Algo.InvalidParameter: The request is invalid.",
            NULL_HINT.to_string(),
        ),
        (
            Fault::Status(500),
            "down",
            "SELECT ai_sentiment('chat', 'down')",
            "ZBR01",
            "request to model \"chat\" failed after 1 attempt: HTTP 500 internal_error: An internal error has occured, please try again later.",
            NULL_HINT.to_string(),
        ),
        (
            Fault::Malformed,
            "garbled",
            "SELECT ai_fix_grammar('chat', 'garbled')",
            "ZBM01",
            "malformed response from Bailian for model \"chat\": the body is not JSON",
            NULL_HINT.to_string(),
        ),
    ];
    for (fault, input, sql, code, message, hint) in &cases {
        s.script(input, vec![fault.clone()]);
        assert_eq!(one_text(&mut w, sql), None, "{sql}");
        let told = warnings(&heard);
        assert_eq!(told.len(), 1, "{sql}: {told:?}");
        assert_eq!(told[0].code, *code, "{sql}");
        if *code == "ZBM01" {
            assert!(told[0].message.starts_with(message), "{sql}: {}", told[0].message);
        } else {
            assert_eq!(told[0].message, *message, "{sql}");
        }
        assert!(told[0].hint.as_deref().unwrap().starts_with(hint.as_str()), "{sql}: {:?}", told[0].hint);
        // The same call under the default raises the same error.
        s.script(input, vec![fault.clone()]);
        let (c_code, c_msg) = err(&mut c, sql);
        assert_eq!((c_code.as_str(), c_msg.starts_with(message)), (*code, true), "{sql}: {c_msg}");
    }
    // Timeouts and unreachable hosts are row failures too.
    s.script("slowly", vec![Fault::Delay(3000)]);
    assert_eq!(one_text(&mut w, "SELECT ai_gen('slow', 'slowly')"), None);
    let told = warnings(&heard);
    assert_eq!(
        (told[0].code.as_str(), told[0].message.as_str()),
        ("ZBT01", "request to model \"slow\" timed out after 1.0 s (1 attempt)")
    );
    assert_eq!(one_text(&mut w, "SELECT ai_classify('nowhere', 'x', ARRAY['a'])"), None);
    let told = warnings(&heard);
    assert_eq!(told[0].code, "ZBC01");
    assert!(
        told[0]
            .message
            .starts_with(&format!("could not reach http://127.0.0.1:{closed}/v1 for model \"nowhere\"")),
        "{}",
        told[0].message
    );

    // Over a table: only the failing call is NULL, the row's other call and the other rows
    // keep their values, one WARNING.
    w.batch_execute(
        "CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes VALUES (1, 'a bug here'), (2, 'a bug there'), (3, 'praise be')",
    )
    .unwrap();
    s.script("a bug there", vec![Fault::OffList]);
    let rows = w
        .query(
            "SELECT id, ai_classify('chat', body, ARRAY['bug', 'praise']), ai_sentiment('chat', 'Feeling: ' || body)
               FROM notes ORDER BY id",
            &[],
        )
        .unwrap();
    let got: Vec<(i32, Option<String>, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        vec![
            (1, Some("bug".into()), Some("neutral".into())),
            (2, None, Some("neutral".into())),
            (3, Some("praise".into()), Some("neutral".into())),
        ]
    );
    let told = warnings(&heard);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].code, "ZBI02");

    // Argument errors still raise, and send nothing.
    let sent = s.stats().requests;
    for (sql, code) in [
        ("SELECT ai_classify('chat', 'x', ARRAY['a', 'a'])", "22023"),
        ("SELECT ai_classify('gone', 'x', ARRAY['a'])", "42704"),
        ("SELECT ai_classify('emb', 'x', ARRAY['a'])", "42809"),
        ("SELECT ai_extract('chat', 'x', NULL)::text", "22004"),
        ("SELECT ai_summarize('chat', 'x', 0)", "22023"),
        ("SELECT ai_gen('chat', 'x', '{\"temperature\": 3}')", "22023"),
        ("SELECT ai_embed('chat', 'x')::text", "42809"),
        ("SELECT ai_similarity('gone', 'a', 'b')::text", "42704"),
        ("SELECT ai_gen_structured('chat', 'x', '{\"type\": 7}')::text", "22023"),
        ("SELECT ai_gen_structured('chat', 'x', '{}', 'ignore')::text", "22023"),
    ] {
        let (got, msg) = err(&mut w, sql);
        assert_eq!(got, code, "{sql}: {msg}");
    }
    assert!(warnings(&heard).is_empty());
    assert_eq!(s.stats().requests, sent);

    // A cancel still cancels.
    s.script("hang", vec![Fault::Hang]);
    w.batch_execute("SET statement_timeout = '400ms'").unwrap();
    let start = Instant::now();
    let (code, msg) = err(&mut w, "SELECT ai_gen('chat', 'hang')");
    assert_eq!((code.as_str(), msg.as_str()), ("57014", "canceling statement due to statement timeout"));
    assert!(start.elapsed() < Duration::from_secs(3));
    w.batch_execute("RESET statement_timeout").unwrap();
    assert!(warnings(&heard).is_empty());
}

/// ai_embed_batch is an AI function too: under pg_bailian.on_error = 'null' an input whose
/// request is refused (after pg_bailian splits the refused pack to find it) should be a NULL
/// embedding with a WARNING, the other inputs keeping theirs, as ai_embed does for a row.
#[test]
fn on_error_null_covers_ai_embed_batch() {
    let (mut c, db) = fresh_db("afam_on_error_embed_batch");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", max_retries => 0, params => '{\"dimension\": 64}'");
    let (mut w, heard) = connect_hearing(&db, "postgres");
    w.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
    // Refused in the pack and again on its own.
    s.script("refused", vec![Fault::Status(400), Fault::Status(400)]);
    let rows = w
        .query("SELECT ord, embedding FROM ai_embed_batch('emb', ARRAY['refused', 'fine']) ORDER BY ord", &[])
        .unwrap();
    let got: Vec<(i32, Option<Vec<f32>>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, None), (2, Some(embedding_for("fine", 64)))]);
    let told = warnings(&heard);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].code, "ZB400");
}

/// The setting is per session, follows SET LOCAL and RESET, may be set before the library
/// is loaded, and refuses values other than error and null.
#[test]
fn on_error_is_a_session_setting() {
    let (mut c, db) = fresh_db("afam_on_error_session");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    let call = "SELECT ai_classify('chat', 'flaky', ARRAY['a', 'b'])";
    let fail = || s.script("flaky", vec![Fault::OffList]);

    // The first statement of a new session, before pg_bailian's library is loaded.
    let (mut w, heard) = connect_hearing(&db, "postgres");
    w.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
    fail();
    assert_eq!(one_text(&mut w, call), None);
    assert_eq!(warnings(&heard).iter().map(|t| t.code.as_str()).collect::<Vec<_>>(), ["ZBI02"]);
    // Another session is not affected.
    fail();
    assert_eq!(err(&mut c, call).0, "ZBI02");

    // RESET goes back to the default.
    w.batch_execute("RESET pg_bailian.on_error").unwrap();
    fail();
    assert_eq!(err(&mut w, call).0, "ZBI02");

    // SET LOCAL lasts the transaction.
    w.batch_execute("BEGIN; SET LOCAL pg_bailian.on_error = 'null'").unwrap();
    fail();
    assert_eq!(one_text(&mut w, call), None);
    assert_eq!(warnings(&heard).len(), 1);
    w.batch_execute("COMMIT").unwrap();
    assert_eq!(one_text(&mut w, "SHOW pg_bailian.on_error").as_deref(), Some("error"));
    fail();
    assert_eq!(err(&mut w, call).0, "ZBI02");

    // A session default for a role, as a DBA would set it.
    fresh_role(&mut c, "afam_lenient", "");
    c.batch_execute(&format!("ALTER ROLE afam_lenient IN DATABASE {db} SET pg_bailian.on_error = 'null'"))
        .unwrap();
    let (mut l, l_heard) = connect_hearing(&db, "afam_lenient");
    fail();
    assert_eq!(one_text(&mut l, call), None);
    assert_eq!(warnings(&l_heard).len(), 1);

    // Bad values.
    let (code, msg, _, hint) = full_error(w.batch_execute("SET pg_bailian.on_error = 'bogus'"));
    assert_eq!(code, "22023");
    assert_eq!(msg, "invalid value for parameter \"pg_bailian.on_error\": \"bogus\"");
    assert_eq!(hint.as_deref(), Some("Available values: error, null."));
    assert_eq!(err(&mut w, "SELECT set_config('pg_bailian.on_error', 'skip', false)").0, "22023");
    assert_eq!(one_text(&mut w, "SHOW pg_bailian.on_error").as_deref(), Some("error"));
    assert_eq!(s.stats().requests, 6);
}

// ---- 4. bad input ---------------------------------------------------------------------------

/// Every bad argument gives its SQLSTATE before anything is sent; NULL content gives NULL
/// and sends nothing.
#[test]
fn bad_input_is_refused_before_sending() {
    let (mut c, _) = fresh_db("afam_bad_input");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    deploy(&mut c, &s, "qwq", "qwq-plus", "");
    deploy(&mut c, &s, "mt", "qwen-mt-plus", "");
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('search', 'qwen-plus', 'OS-{KEY_MARK}-search-0000', provider => 'opensearch', base_url => '{}')",
        s.root_url()
    ))
    .unwrap();
    let many = "(SELECT array_agg('l' || g) FROM generate_series(1, 501) g)";
    let mood = MOOD;
    let cases: Vec<(String, &str, &str)> = vec![
        // labels
        ("SELECT ai_classify('chat', 'x', ARRAY[]::text[])".into(), "22023", "ai_classify needs at least one label"),
        ("SELECT ai_classify('chat', 'x', ARRAY['a', NULL])".into(), "22023", "label 2 of ai_classify is NULL; labels must be non-empty text"),
        ("SELECT ai_extract('chat', 'x', ARRAY['a', ''])::text".into(), "22023", "label 2 of ai_extract is empty; labels must be non-empty text"),
        ("SELECT ai_mask('chat', 'x', ARRAY['  ', 'a'])".into(), "22023", "label 1 of ai_mask is empty; labels must be non-empty text"),
        ("SELECT ai_mask('chat', 'x', ARRAY['email', 'phone', 'email'])".into(), "22023", "label \"email\" is given twice to ai_mask; labels must be distinct"),
        (format!("SELECT ai_classify('chat', 'x', {many})"), "22023", "ai_classify takes at most 500 labels; 501 were given"),
        ("SELECT ai_classify('chat', 'x', NULL)".into(), "22004", "labels of ai_classify must not be NULL"),
        ("SELECT ai_extract('chat', 'x', NULL)::text".into(), "22004", "labels of ai_extract must not be NULL"),
        ("SELECT ai_mask('chat', 'x', NULL)".into(), "22004", "labels of ai_mask must not be NULL"),
        // max_words
        ("SELECT ai_summarize('chat', 'x', 0)".into(), "22023", "max_words must be between 1 and 10000, got 0"),
        ("SELECT ai_summarize('chat', 'x', 10001)".into(), "22023", "max_words must be between 1 and 10000, got 10001"),
        ("SELECT ai_summarize('chat', 'x', -5)".into(), "22023", "max_words must be between 1 and 10000, got -5"),
        ("SELECT ai_summarize('chat', 'x', NULL)".into(), "22004", "max_words of ai_summarize must not be NULL"),
        // models
        ("SELECT ai_classify('nope', 'x', ARRAY['a'])".into(), "42704", "model \"nope\" is not deployed"),
        ("SELECT ai_sentiment('nope', 'x')".into(), "42704", "model \"nope\" is not deployed"),
        ("SELECT ai_rank('nope', 'q', 'd')".into(), "42704", "model \"nope\" is not deployed"),
        ("SELECT ai_classify('emb', 'x', ARRAY['a'])".into(), "42809", "ai_classify cannot use model \"emb\": its task is embedding (text-embedding-v4)"),
        ("SELECT ai_fix_grammar('emb', 'x')".into(), "42809", "ai_fix_grammar cannot use model \"emb\": its task is embedding"),
        ("SELECT ai_summarize('mt', 'x')".into(), "42809", "ai_summarize cannot use model \"mt\": its task is translation (qwen-mt-plus)"),
        ("SELECT ai_sentiment('qwq', 'x')".into(), "22023", "ai_sentiment cannot use model \"qwq\": qwq-plus always thinks, and ai_sentiment needs Bailian's structured output"),
        ("SELECT ai_mask('search', 'x', ARRAY['email'])".into(), "22023", "ai_mask cannot use model \"search\": qwen-plus takes no response_format"),
        ("SELECT ai_similarity('chat', 'a', 'b')".into(), "42809", "ai_similarity cannot use model \"chat\": its task is chat (qwen-plus)"),
        ("SELECT ai_similarity('nope', 'a', 'b')".into(), "42704", "model \"nope\" is not deployed"),
        // ai_gen_structured
        ("SELECT ai_gen_structured('chat', 'x', NULL)::text".into(), "22004", "response_format must not be NULL: pass a JSON Schema or {\"type\": \"json_object\"}"),
        ("SELECT ai_gen_structured('chat', 'x', '{\"type\": 7}')::text".into(), "22023", "response_format is not a valid JSON Schema: "),
        ("SELECT ai_gen_structured('chat', 'x', '\"a string\"')::text".into(), "22023", "response_format must be a JSON object"),
        ("SELECT ai_gen_structured('chat', 'x', '[1]')::text".into(), "22023", "response_format must be a JSON object"),
        ("SELECT ai_gen_structured('chat', 'x', '{\"type\": \"text\"}')::text".into(), "22023", "response_format {\"type\": \"text\"} asks for plain text"),
        ("SELECT ai_gen_structured('chat', 'x', '{\"type\": \"json_schema\", \"json_schema\": {\"schema\": {}}}')::text".into(), "22023", "response_format {\"type\": \"json_schema\"} needs \"json_schema\": {\"name\": a non-empty string"),
        ("SELECT ai_gen_structured('chat', 'x', '{\"$ref\": \"https://example.com/s.json\"}')::text".into(), "22023", "response_format is not a valid JSON Schema"),
        ("SELECT ai_gen_structured('chat', 'no word', '{\"type\": \"json_object\"}')::text".into(), "22023", "response_format {\"type\": \"json_object\"} needs the word JSON in the messages"),
        (format!("SELECT ai_gen_structured('chat', 'x', '{mood}', 'ignore')::text"), "22023", "invalid on_error \"ignore\"; allowed: 'capture'"),
        (format!("SELECT ai_gen_structured('chat', 'x', '{mood}', params => '{{\"response_format\": {{\"type\": \"json_object\"}}}}')::text"), "22023", "ai_gen_structured takes the format as its response_format argument, not in params"),
        (format!("SELECT ai_gen_structured('chat', 'x', '{mood}', params => '{{\"temperature\": 3}}')::text"), "22023", "invalid value for parameter \"temperature\": 3"),
        (format!("SELECT ai_gen_structured('qwq', 'x', '{mood}')::text"), "22023", "ai_gen_structured cannot use model \"qwq\": qwq-plus always thinks"),
        (format!("SELECT ai_gen_structured('search', 'x', '{mood}')::text"), "22023", "ai_gen_structured cannot use model \"search\": qwen-plus takes no response_format"),
        // qwen-mt is a translation model: refused as the wrong kind of model, like ai_gen.
        (format!("SELECT ai_gen_structured('mt', 'x', '{mood}')::text"), "42809", "ai_gen_structured cannot use model \"mt\": its task is translation (qwen-mt-plus)"),
        (format!("SELECT ai_gen_structured('emb', 'x', '{mood}')::text"), "42809", "ai_gen_structured cannot use model \"emb\": its task is embedding"),
        (format!("SELECT ai_gen_structured('nope', 'x', '{mood}')::text"), "42704", "model \"nope\" is not deployed"),
    ];
    for (sql, code, message) in &cases {
        let (got_code, got_msg) = err(&mut c, sql);
        assert_eq!(got_code, *code, "{sql}: {got_msg}");
        assert!(got_msg.starts_with(message), "{sql}:\n  got  {got_msg}\n  want {message}...");
    }
    // NULL in, NULL out, nothing asked.
    for sql in [
        "SELECT ai_classify('chat', NULL, ARRAY['a'])",
        "SELECT ai_extract('chat', NULL, ARRAY['a'])::text",
        "SELECT ai_mask('chat', NULL, ARRAY['email'])",
        "SELECT ai_summarize('chat', NULL)",
        "SELECT ai_fix_grammar('chat', NULL)",
        "SELECT ai_sentiment('chat', NULL)",
        "SELECT ai_rank('chat', NULL, 'doc')::text",
        "SELECT ai_rank('chat', 'query', NULL)::text",
        "SELECT ai_classify(NULL, 'x', ARRAY['a'])",
        "SELECT ai_gen_structured('chat', NULL, '{}')::text",
        "SELECT ai_gen_structured(NULL, 'x', '{}')::text",
        "SELECT ai_similarity('emb', NULL, 'b')::text",
        "SELECT ai_similarity('emb', 'a', NULL)::text",
        "SELECT ai_similarity('emb', '', 'b')::text",
        "SELECT ai_similarity('emb', 'a', '')::text",
    ] {
        assert_eq!(one_text(&mut c, sql), None, "{sql}");
    }
    assert_eq!(s.stats().requests, 0, "nothing was sent");
}

// ---- 5. ai_similarity, ai_chunk, ai_prompt ------------------------------------------------

#[test]
fn similarity_of_two_texts() {
    let (mut c, _) = fresh_db("afam_similarity");
    let s = standin();
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 256}'");
    let sim = |c: &mut Client, a: &str, b: &str| {
        float(c, &format!("SELECT ai_similarity('emb', '{a}', '{b}')")).unwrap()
    };
    let want = |a: &str, b: &str| cosine(&embedding_for(a, 256), &embedding_for(b, 256));

    let same = sim(&mut c, "the quick brown fox", "the quick brown fox");
    assert!((same - 1.0).abs() < 1e-6, "{same}");
    let r = s.requests().pop().unwrap();
    assert_eq!(r.path, "/compatible-mode/v1/embeddings");
    assert_eq!(
        r.body["input"],
        json!(["the quick brown fox", "the quick brown fox"]),
        "one request, both texts"
    );
    assert_eq!(r.body["dimensions"], 256);

    let fox = "the quick brown fox jumps";
    let dog = "the quick brown dog sleeps";
    let tax = "quarterly revenue report for taxes";
    let near = sim(&mut c, fox, dog);
    let far = sim(&mut c, fox, tax);
    assert!((near - want(fox, dog)).abs() < 1e-9, "{near} vs {}", want(fox, dog));
    assert!((far - want(fox, tax)).abs() < 1e-9, "{far} vs {}", want(fox, tax));
    assert!(near > far + 0.3, "texts sharing words are closer: {near} vs {far}");
    let zh = sim(&mut c, "我喜欢猫", "我喜欢狗");
    assert!((zh - want("我喜欢猫", "我喜欢狗")).abs() < 1e-9);
    // Symmetric.
    assert!((sim(&mut c, dog, fox) - near).abs() < 1e-12);
    assert_eq!(s.stats().embedding_requests, 5);
    assert_eq!(s.stats().inputs, 10);

    // Over a table (batched): the same values, one request per row.
    c.batch_execute(&format!(
        "CREATE TABLE pairs (id int PRIMARY KEY, a text, b text);
         INSERT INTO pairs VALUES (1, '{fox}', '{dog}'), (2, '{fox}', '{tax}'), (3, NULL, 'x'), (4, '', 'x'), (5, 'same', 'same')"
    ))
    .unwrap();
    s.reset();
    let got: Vec<Option<f64>> = c
        .query("SELECT ai_similarity('emb', a, b) FROM pairs ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got.len(), 5);
    assert!((got[0].unwrap() - want(fox, dog)).abs() < 1e-9);
    assert!((got[1].unwrap() - want(fox, tax)).abs() < 1e-9);
    assert_eq!((got[2], got[3]), (None, None));
    assert!((got[4].unwrap() - 1.0).abs() < 1e-6);
    assert_eq!(s.stats().embedding_requests, 3);
    for r in s.requests() {
        assert_eq!(r.body["input"].as_array().unwrap().len(), 2, "{}", r.body);
    }
}

#[test]
fn chunk_exact_pieces() {
    let (mut c, _) = fresh_db("afam_chunk");
    let chunk = |c: &mut Client, sql: &str| texts(c, &format!("SELECT ai_chunk({sql})"));
    let v = |items: &[&str]| Some(items.iter().map(|s| s.to_string()).collect::<Vec<_>>());

    // Short text: one trimmed piece with the defaults; blank text: none; NULL: NULL.
    assert_eq!(chunk(&mut c, "E'  hello world \\n'"), v(&["hello world"]));
    assert_eq!(chunk(&mut c, "''"), v(&[]));
    assert_eq!(chunk(&mut c, "E' \\n\\n ', 10, 2"), v(&[]));
    assert_eq!(chunk(&mut c, "NULL"), None);
    assert_eq!(chunk(&mut c, "'x', NULL, 0"), None);
    assert_eq!(chunk(&mut c, "'x', 10, NULL"), None);
    // Paragraphs first, then sentences, then words, then anywhere.
    assert_eq!(
        chunk(
            &mut c,
            "E'First paragraph here.\\n\\nSecond one is a bit longer. It has two sentences.', 40, 0"
        ),
        v(&["First paragraph here.", "Second one is a bit longer.", "It has two sentences."])
    );
    assert_eq!(
        chunk(&mut c, "'alpha beta gamma delta epsilon zeta eta theta', 12, 0"),
        v(&["alpha beta", "gamma delta", "epsilon zeta", "eta theta"])
    );
    assert_eq!(chunk(&mut c, "'abcdefghij', 4, 0"), v(&["abcd", "efgh", "ij"]));
    assert_eq!(chunk(&mut c, "'ab c', 1, 0"), v(&["a", "b", "c"]));
    // Overlap starts at a word; none when the last word is longer than the overlap.
    assert_eq!(chunk(&mut c, "'aaa bbb ccc ddd', 11, 5"), v(&["aaa bbb ccc", "ccc ddd"]));
    assert_eq!(
        chunk(&mut c, "'one two three four five six seven', 14, 6"),
        v(&["one two three", "three four", "four five six", "six seven"])
    );
    // Chinese: counted in characters (a 20-character piece is 60 bytes), cut at 。.
    let zh = "这个数据库非常快。查询几乎是瞬间完成的。我们很满意。";
    assert_eq!(
        chunk(&mut c, &format!("'{zh}', 20, 0")),
        v(&["这个数据库非常快。查询几乎是瞬间完成的。", "我们很满意。"])
    );
    assert_eq!(
        chunk(&mut c, &format!("'{zh}', 10, 0")),
        v(&["这个数据库非常快。", "查询几乎是瞬间完成的", "。我们很满意。"])
    );
    assert_eq!(
        chunk(&mut c, &format!("'{zh}', 20, 5")),
        v(&["这个数据库非常快。查询几乎是瞬间完成的。", "间完成的。我们很满意。"])
    );
    // A long text with the defaults: pieces of at most 512 characters, each after the first
    // starting with words the previous one ended with.
    let words: Vec<String> = (0..400).map(|i| format!("word{i}")).collect();
    let long = words.join(" ");
    let pieces = chunk(&mut c, &format!("'{long}'")).unwrap();
    assert_eq!(pieces.len(), 7, "{pieces:?}");
    assert!(pieces.iter().all(|p| p.chars().count() <= 512));
    assert!(pieces[0].starts_with("word0 word1 "));
    assert!(pieces.last().unwrap().ends_with("word399"));
    for pair in pieces.windows(2) {
        // The next piece starts with the previous one's last words, at most 64 characters.
        let words: Vec<&str> = pair[0].split(' ').collect();
        let first = pair[1].split(' ').next().unwrap();
        let at = words.iter().position(|w| *w == first).unwrap_or_else(|| panic!("no overlap: {pair:?}"));
        let tail = words[at..].join(" ");
        assert!(!tail.is_empty() && tail.chars().count() <= 64, "{pair:?}");
        assert!(pair[1].starts_with(&tail), "{pair:?}");
    }
    // Bounds.
    for (args, message) in [
        ("'x', 0, 0", "chunk_size must be between 1 and 1048576 characters, got 0"),
        ("'x', 1048577, 0", "chunk_size must be between 1 and 1048576 characters, got 1048577"),
        ("'x', -1, 0", "chunk_size must be between 1 and 1048576 characters, got -1"),
        ("'x', 10, 10", "overlap must be at least 0 and less than chunk_size (10), got 10"),
        ("'x', 10, -1", "overlap must be at least 0 and less than chunk_size (10), got -1"),
        ("'x', 1, 1", "overlap must be at least 0 and less than chunk_size (1), got 1"),
    ] {
        let (code, msg) = err(&mut c, &format!("SELECT ai_chunk({args})"));
        assert_eq!((code.as_str(), msg.as_str()), ("22023", message), "{args}");
    }
    assert_eq!(chunk(&mut c, "'x', 1048576, 1048575"), v(&["x"]));
    // IMMUTABLE STRICT, so usable in an index expression.
    let (volatile, strict): (String, bool) = {
        let r = c
            .query_one("SELECT provolatile::text, proisstrict FROM pg_proc WHERE proname = 'ai_chunk'", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((volatile.as_str(), strict), ("i", true));
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text);
         CREATE INDEX ON docs ((ai_chunk(body, 8, 0)));
         INSERT INTO docs VALUES (1, 'one two three'), (2, NULL)",
    )
    .unwrap();
    assert_eq!(texts(&mut c, "SELECT ai_chunk(body, 8, 0) FROM docs WHERE id = 1"), v(&["one two", "three"]));
}

/// When the last word of a piece is longer than the overlap, no word boundary lies within the
/// overlap and the next piece starts after the word (no overlap), never inside it.
#[test]
fn chunk_overlap_never_starts_inside_a_word() {
    let (mut c, _) = fresh_db("afam_chunk_overlap");
    let got = texts(&mut c, "SELECT ai_chunk('aaa bbbbbbbbb ccc', 13, 5)");
    assert_eq!(got, Some(vec!["aaa bbbbbbbbb".to_string(), "ccc".to_string()]));
    let got = texts(&mut c, "SELECT ai_chunk('x Internationalisation y z', 22, 5)");
    assert_eq!(got, Some(vec!["x Internationalisation".to_string(), "y z".to_string()]));
}

#[test]
fn prompt_templates() {
    let (mut c, _) = fresh_db("afam_prompt");
    let cases = [
        ("'{0} and {1}, {0}!', 'a', 'b'", Some("a and b, a!")),
        ("'{{0}} is {0}', 'x'", Some("{0} is x")),
        ("'json: {{\"k\": {0}}}', '1'", Some("json: {\"k\": 1}")),
        ("'{0}|{1}', NULL, 'b'", Some("|b")),
        ("'数据{0}库', 'é'", Some("数据é库")),
        ("'{1}{0}', VARIADIC ARRAY['a', 'b']", Some("ba")),
        ("'no slots', VARIADIC ARRAY[]::text[]", Some("no slots")),
        ("'', 'unused'", Some("")),
        ("'{10}-{0}', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k'", Some("k-a")),
        ("'Summarize: {0}', E'line one\\nline {1} two'", Some("Summarize: line one\nline {1} two")),
        ("NULL, 'a'", None),
    ];
    for (args, want) in cases {
        assert_eq!(one_text(&mut c, &format!("SELECT ai_prompt({args})")).as_deref(), want, "{args}");
    }
    let hint = "Placeholders are {0}, {1}, ... for the arguments after the template; write {{ and }} for literal braces.";
    for (args, message) in [
        ("'{2}', 'a', 'b'", "ai_prompt: the template uses {2}, which has no value: 2 arguments were given ({0} to {1})"),
        ("'{1}', 'a'", "ai_prompt: the template uses {1}, which has no value: 1 argument was given ({0})"),
        ("'{0}', VARIADIC ARRAY[]::text[]", "ai_prompt: the template uses {0}, which has no value: no arguments were given"),
        ("'{name}', 'a'", "ai_prompt: the template uses {name}, which has no value: 1 argument was given ({0})"),
        ("'a } b', 'a'", "ai_prompt: the template has an unmatched '}' at character 3; write }} for a literal brace"),
        ("'é { x', 'a'", "ai_prompt: the template has a '{' at character 3 that does not open a placeholder such as {0} or {name}; write {{ for a literal brace"),
        ("'{}', 'a'", "ai_prompt: the template has a '{' at character 1 that does not open a placeholder such as {0} or {name}; write {{ for a literal brace"),
        ("'{0', 'a'", "ai_prompt: the template has a '{' at character 1 that does not open a placeholder such as {0} or {name}; write {{ for a literal brace"),
        ("'{ 0}', 'a'", "ai_prompt: the template has a '{' at character 1 that does not open a placeholder such as {0} or {name}; write {{ for a literal brace"),
    ] {
        let (code, msg, _, got_hint) = full_error(c.query_one(&format!("SELECT ai_prompt({args})"), &[]));
        assert_eq!((code.as_str(), msg.as_str()), ("22023", message), "{args}");
        assert_eq!(got_hint.as_deref(), Some(hint), "{args}");
    }
    let volatile: String =
        c.query_one("SELECT provolatile::text FROM pg_proc WHERE proname = 'ai_prompt'", &[]).unwrap().get(0);
    assert_eq!(volatile, "i");
    // A template built per row feeds an AI function like any text.
    c.batch_execute("CREATE TABLE q (id int, topic text); INSERT INTO q VALUES (1, 'databases'), (2, NULL)")
        .unwrap();
    let rows: Vec<String> = c
        .query("SELECT ai_prompt('Tell me about {0} in {1} words.', topic, '10') FROM q ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["Tell me about databases in 10 words.", "Tell me about  in 10 words."]);
}

// ---- 6. ai_prompts and ai_set_prompt ---------------------------------------------------------

/// Three roles: the deployer (owns the models), another role allowed to execute
/// ai_set_prompt, and a reader. Only the deployer (its members, a superuser) changes a
/// model's prompts; the override shows in ai_prompts, is the system message for that model
/// only, from the next statement of any session; NULL, a rollback and undeploying take it
/// away.
#[test]
fn prompts_per_model_and_who_may_set_them() {
    let (mut c, db) = fresh_db("afam_prompts");
    let s = standin();
    fresh_role(&mut c, "afam_deployer", "");
    fresh_role(&mut c, "afam_other", "");
    fresh_role(&mut c, "afam_reader", "");
    fresh_role(&mut c, "afam_member", "");
    c.batch_execute(&format!(
        "GRANT EXECUTE ON FUNCTION {DEPLOY_FN}, ai_undeploy_model(text), ai_set_prompt(text, text, text) TO afam_deployer;
         GRANT EXECUTE ON FUNCTION ai_set_prompt(text, text, text) TO afam_other;
         GRANT afam_deployer TO afam_member"
    ))
    .unwrap();
    let mut d = connect_as(&db, "afam_deployer");
    deploy(&mut d, &s, "chat", "qwen-plus", "");
    deploy(&mut d, &s, "chat2", "qwen-plus", "");
    let mut o = connect_as(&db, "afam_other");
    let mut r = connect_as(&db, "afam_reader");
    let mut m = connect_as(&db, "afam_member");

    let overrides = |c: &mut Client| -> Vec<(String, String, String, String)> {
        c.query(
            "SELECT model_name, function_name, prompt, set_by::text FROM ai_prompts
              WHERE NOT is_default ORDER BY model_name, function_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    };
    let classify = "SELECT ai_classify('chat', 'a bug in billing', ARRAY['bug', 'praise'])";
    let classify2 = "SELECT ai_classify('chat2', 'a bug in billing', ARRAY['bug', 'praise'])";
    let default_system = CLASSIFY_PROMPT.replace("{labels}", "\"bug\", \"praise\"");
    let last_system = |s: &Standin| system_of(s.requests().last().unwrap()).unwrap();

    // The defaults, readable by anyone.
    let rows = r
        .query(
            "SELECT function_name, model_name, is_default, placeholders, set_by::text, set_at IS NULL
               FROM ai_prompts ORDER BY function_name",
            &[],
        )
        .unwrap();
    let got: Vec<PromptRow> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect();
    type PromptRow = (String, Option<String>, bool, Vec<String>, Option<String>, bool);
    let p = |f: &str, ph: &[&str]| -> PromptRow {
        (f.to_string(), None, true, ph.iter().map(|s| s.to_string()).collect(), None, true)
    };
    assert_eq!(
        got,
        vec![
            p("ai_classify", &["{labels}"]),
            p("ai_extract", &["{labels}"]),
            p("ai_fix_grammar", &[]),
            p("ai_mask", &["{labels}"]),
            p("ai_rank", &[]),
            p("ai_sentiment", &[]),
            p("ai_summarize", &["{max_words}"]),
        ]
    );
    assert_eq!(
        one_text(&mut r, "SELECT prompt FROM ai_prompts WHERE function_name = 'ai_classify'").as_deref(),
        Some(CLASSIFY_PROMPT)
    );
    assert_eq!(
        maybe_json(&mut r, "SELECT response_schema FROM ai_prompts WHERE function_name = 'ai_sentiment'")
            .unwrap(),
        json!({"type": "object", "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral", "mixed"]}},
               "required": ["sentiment"], "additionalProperties": false})
    );

    // The reader may not execute ai_set_prompt, nor read the table behind the view.
    let (code, msg) = err(&mut r, "SELECT ai_set_prompt('chat', 'ai_classify', 'Pick {labels}, in JSON.')");
    assert_eq!((code.as_str(), msg.as_str()), ("42501", "permission denied for function ai_set_prompt"));
    assert_eq!(err(&mut r, "SELECT count(*) FROM bailian.prompts").0, "42501");
    // The other role may execute it, but not on a model it did not deploy.
    let refused = "model \"chat\" was deployed by role \"afam_deployer\"; only that role, its members or a superuser may change the prompts of it";
    let (code, msg) = err(&mut o, "SELECT ai_set_prompt('chat', 'ai_classify', 'Pick {labels}, in JSON.')");
    assert_eq!((code.as_str(), msg.as_str()), ("42501", refused));
    let (code, msg) = err(&mut o, "SELECT ai_set_prompt('chat', 'ai_classify', NULL)");
    assert_eq!((code.as_str(), msg.as_str()), ("42501", refused));
    assert!(overrides(&mut c).is_empty(), "nothing changed");

    // The deployer sets one; the same session uses it at once, for that model only.
    one_text(&mut d, classify);
    assert_eq!(last_system(&s), default_system);
    d.batch_execute(
        "SELECT ai_set_prompt('chat', 'ai_classify', 'Pick exactly one of {labels}, answering in JSON.')",
    )
    .unwrap();
    assert_eq!(one_text(&mut d, classify).as_deref(), Some("bug"));
    assert_eq!(last_system(&s), "Pick exactly one of \"bug\", \"praise\", answering in JSON.");
    one_text(&mut d, classify2);
    assert_eq!(last_system(&s), default_system, "another model keeps the default");
    // Another session (of a role that only reads) gets it too.
    one_text(&mut r, classify);
    assert_eq!(last_system(&s), "Pick exactly one of \"bug\", \"praise\", answering in JSON.");
    let rows = r
        .query(
            "SELECT p.placeholders, p.response_schema = d.response_schema, p.set_at IS NOT NULL
               FROM ai_prompts p JOIN ai_prompts d ON d.function_name = p.function_name AND d.is_default
              WHERE p.model_name = 'chat' AND p.function_name = 'ai_classify'",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, Vec<String>>(0), ["{labels}"]);
    assert!(rows[0].get::<_, bool>(1) && rows[0].get::<_, bool>(2));
    // The batched path (an AI Batch node over a table) uses it too.
    s.reset();
    let got: Vec<String> = d
        .query(
            "SELECT ai_classify(m, body, ARRAY['bug', 'praise'])
               FROM (VALUES (1, 'chat', 'a bug'), (2, 'chat2', 'a bug'), (3, 'chat', 'praise it')) v(id, m, body)
              ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, ["bug", "bug", "praise"]);
    let mut systems: Vec<(String, String)> =
        s.requests().iter().map(|r| (user_of(r), system_of(r).unwrap())).collect();
    systems.sort();
    let picked = "Pick exactly one of \"bug\", \"praise\", answering in JSON.".to_string();
    assert_eq!(systems.len(), 3);
    assert_eq!(systems.iter().filter(|(_, sys)| *sys == picked).count(), 2, "{systems:?}");
    assert_eq!(systems.iter().filter(|(_, sys)| *sys == default_system).count(), 1, "{systems:?}");
    assert_eq!(systems[2], ("praise it".to_string(), picked.clone()));
    // The override's placeholder drives the answer: the stand-in reads "N words".
    d.batch_execute(
        "SELECT ai_set_prompt('chat', 'ai_summarize', 'Shorten it to {max_words} words; reply in JSON.')",
    )
    .unwrap();
    assert_eq!(
        one_text(&mut d, "SELECT ai_summarize('chat', 'one two three four five', 2)").as_deref(),
        Some("one two")
    );
    assert_eq!(last_system(&s), "Shorten it to 2 words; reply in JSON.");
    // A member of the deployer's role and a superuser may set prompts too.
    m.batch_execute("SELECT ai_set_prompt('chat', 'ai_rank', 'Score relevance 0..1 in JSON.')").unwrap();
    c.batch_execute("SELECT ai_set_prompt('chat2', 'ai_sentiment', 'Mood of the text? JSON.')").unwrap();
    // Setting again replaces.
    d.batch_execute("SELECT ai_set_prompt('chat', 'ai_rank', 'Relevance from 0 to 1, as JSON.')").unwrap();
    assert_eq!(
        overrides(&mut r),
        vec![
            (
                "chat".into(),
                "ai_classify".into(),
                "Pick exactly one of {labels}, answering in JSON.".into(),
                "afam_deployer".into()
            ),
            (
                "chat".into(),
                "ai_rank".into(),
                "Relevance from 0 to 1, as JSON.".into(),
                "afam_deployer".into()
            ),
            (
                "chat".into(),
                "ai_summarize".into(),
                "Shorten it to {max_words} words; reply in JSON.".into(),
                "afam_deployer".into()
            ),
            ("chat2".into(), "ai_sentiment".into(), "Mood of the text? JSON.".into(), "postgres".into()),
        ]
    );
    assert_eq!(float(&mut d, "SELECT ai_rank('chat', 'red fox', 'the red dog')"), Some(0.5));
    assert_eq!(last_system(&s), "Relevance from 0 to 1, as JSON.");
    one_text(&mut d, "SELECT ai_sentiment('chat2', 'great')");
    assert_eq!(last_system(&s), "Mood of the text? JSON.");
    one_text(&mut d, "SELECT ai_sentiment('chat', 'great')");
    assert_eq!(last_system(&s), SENTIMENT_PROMPT);

    // What ai_set_prompt refuses.
    let before = overrides(&mut c);
    for (sql, code, message) in [
        ("SELECT ai_set_prompt('chat', 'ai_gen', 'x')", "22023", "\"ai_gen\" has no prompt to set; allowed: ai_classify, ai_extract, ai_mask, ai_summarize, ai_fix_grammar, ai_sentiment, ai_rank"),
        ("SELECT ai_set_prompt('chat', 'AI_CLASSIFY', 'x {labels}')", "22023", "\"AI_CLASSIFY\" has no prompt to set"),
        ("SELECT ai_set_prompt('chat', 'ai_sentiment', 'Use {labels}, in JSON.')", "22023", "the prompt uses {labels}, which ai_sentiment does not fill"),
        ("SELECT ai_set_prompt('chat', 'ai_classify', 'At most {max_words} words.')", "22023", "the prompt uses {max_words}, which ai_classify does not fill"),
        ("SELECT ai_set_prompt('chat', 'ai_summarize', 'Pick {0}.')", "22023", "the prompt uses {0}, which ai_summarize does not fill"),
        ("SELECT ai_set_prompt('chat', 'ai_rank', 'bad { brace')", "22023", "the prompt has a '{' at character 5"),
        ("SELECT ai_set_prompt('chat', 'ai_rank', '   ')", "22023", "a prompt must not be empty; pass NULL to go back to the default"),
        ("SELECT ai_set_prompt('nope', 'ai_rank', 'Score it in JSON.')", "42704", "model \"nope\" is not deployed"),
        ("SELECT ai_set_prompt(NULL, 'ai_rank', 'Score it in JSON.')", "22004", "model_name must not be NULL"),
        ("SELECT ai_set_prompt('chat', NULL, 'Score it in JSON.')", "22004", "function_name must not be NULL"),
    ] {
        let (got_code, got_msg) = err(&mut d, sql);
        assert_eq!(got_code, code, "{sql}: {got_msg}");
        assert!(got_msg.starts_with(message), "{sql}: {got_msg}");
    }
    assert_eq!(overrides(&mut c), before);

    // Redeploying the model (replace => true) keeps its prompts.
    d.batch_execute(&format!(
        "SELECT ai_deploy_model('chat', 'qwen-flash', '{}', base_url => '{}', replace => true)",
        key("chat"),
        s.base_url()
    ))
    .unwrap();
    assert_eq!(overrides(&mut r), before);
    assert_eq!(float(&mut d, "SELECT ai_rank('chat', 'red fox', 'the red dog')"), Some(0.5));
    assert_eq!(s.requests().last().unwrap().model, "qwen-flash");
    assert_eq!(last_system(&s), "Relevance from 0 to 1, as JSON.");

    // Set in a transaction that rolls back: gone again at the next statement.
    d.batch_execute("BEGIN; SELECT ai_set_prompt('chat2', 'ai_classify', 'Rolled back {labels} JSON.')")
        .unwrap();
    one_text(&mut d, classify2);
    assert_eq!(last_system(&s), "Rolled back \"bug\", \"praise\" JSON.");
    d.batch_execute("ROLLBACK").unwrap();
    one_text(&mut d, classify2);
    assert_eq!(last_system(&s), default_system);

    // NULL goes back to the default.
    d.batch_execute("SELECT ai_set_prompt('chat', 'ai_classify', NULL)").unwrap();
    one_text(&mut d, classify);
    assert_eq!(last_system(&s), default_system);
    assert!(!overrides(&mut r).iter().any(|o| o.1 == "ai_classify"));

    // Undeploying the model takes its overrides with it; a model deployed again under the
    // name starts from the defaults.
    assert_eq!(one_text(&mut d, "SELECT ai_undeploy_model('chat')::text").as_deref(), Some("true"));
    assert_eq!(
        overrides(&mut r),
        vec![("chat2".into(), "ai_sentiment".into(), "Mood of the text? JSON.".into(), "postgres".into())]
    );
    let left: i64 =
        c.query_one("SELECT count(*) FROM bailian.prompts WHERE model_name = 'chat'", &[]).unwrap().get(0);
    assert_eq!(left, 0);
    deploy(&mut d, &s, "chat", "qwen-plus", "");
    assert_eq!(float(&mut d, "SELECT ai_rank('chat', 'red fox', 'the red dog')"), Some(0.5));
    assert_eq!(last_system(&s), RANK_PROMPT);
}

// ---- 7. batched ------------------------------------------------------------------------------

/// The AI Batch node runs ai_classify, ai_extract, ai_mask, ai_similarity and
/// ai_gen_structured over a table, and the rows equal those of the same query row by row,
/// failing calls included (captured, or NULL with a WARNING under pg_bailian.on_error).
#[test]
fn batched_equals_row_by_row() {
    let (mut c, db) = fresh_db("afam_batched");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, body text);
         INSERT INTO t VALUES
           (1, 'billing broke: name: Ann; city: Oslo; mail ann@example.com'),
           (2, 'a bug in the app, call 030 1234 5678'),
           (3, 'happy with the billing, name: Bo'),
           (4, 'sad: the bug is back'),
           (5, NULL),
           (6, 'city: Lima; nothing else'),
           (7, '数据库 bug'),
           (8, 'happy happy')",
    )
    .unwrap();
    let (mut w, heard) = connect_hearing(&db, "postgres");
    w.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
    // Each function gets its own input, so a scripted fault reaches the one call it is for
    // whatever order the batched requests go out in.
    let sql = format!(
        "SELECT id,
                ai_classify('chat', body, ARRAY['billing', 'bug']),
                ai_extract('chat', 'Extract from: ' || body, ARRAY['name', 'city'])::text,
                ai_mask('chat', 'Mask: ' || body, ARRAY['email', 'phone', 'name']),
                ai_similarity('emb', 'About ' || body, 'billing bug report')::text,
                ai_gen_structured('chat', 'Mood of: ' || body, '{MOOD}')::text
           FROM t ORDER BY id"
    );
    // Row 2's classification and row 4's structured answer break their schemas.
    let faults = || {
        s.script("a bug in the app, call 030 1234 5678", vec![Fault::OffList]);
        s.script("Mood of: sad: the bug is back", vec![Fault::SchemaViolation]);
    };
    type Row = (i32, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);
    let run = |w: &mut Client| -> Vec<Row> {
        w.query(&sql, &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect()
    };
    let explain = |w: &mut Client| -> String {
        w.query(&format!("EXPLAIN (COSTS OFF) {sql}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Load the library first: a session's very first statement is planned before it is.
    one_text(&mut w, "SELECT ai_prompt('{0}', 'x')");
    let plan = explain(&mut w);
    assert!(plan.contains("Custom Scan (AI Batch)"), "{plan}");
    assert!(
        plan.contains("AI Calls: ai_classify, ai_extract, ai_mask, ai_similarity, ai_gen_structured"),
        "{plan}"
    );
    assert_eq!(s.stats().requests, 0, "EXPLAIN sends nothing");
    faults();
    let batched = run(&mut w);
    let batched_warnings = warnings(&heard);
    let batched_requests = s.stats();

    s.reset();
    w.batch_execute("SET pg_bailian.batch_execution = off").unwrap();
    let plan = explain(&mut w);
    assert!(!plan.contains("AI Batch"), "{plan}");
    faults();
    let row_by_row = run(&mut w);
    let row_warnings = warnings(&heard);
    assert_eq!(batched, row_by_row);
    assert_eq!(s.stats().chat_requests, batched_requests.chat_requests);
    assert_eq!(s.stats().embedding_requests, batched_requests.embedding_requests);
    assert_eq!(s.stats().chat_requests, 7 * 4, "four chat calls per row with a body");
    assert_eq!(s.stats().embedding_requests, 7, "one per row with a body");

    // The values themselves.
    let row = |id: i32| batched.iter().find(|r| r.0 == id).unwrap().clone();
    assert_eq!(row(1).1.as_deref(), Some("billing"));
    assert_eq!(row(2).1, None, "row 2's classification broke its schema");
    assert_eq!(row(4).1.as_deref(), Some("bug"));
    assert_eq!(row(7).1.as_deref(), Some("bug"));
    let j = |s: &Option<String>| serde_json::from_str::<Value>(s.as_deref().unwrap()).unwrap();
    assert_eq!(j(&row(1).2), json!({"name": "Ann", "city": "Oslo"}));
    assert_eq!(j(&row(3).2), json!({"name": "Bo", "city": null}));
    assert_eq!(j(&row(6).2), json!({"name": null, "city": "Lima"}));
    assert_eq!(row(1).3.as_deref(), Some("Mask: billing broke: name: [MASKED]; city: Oslo; mail [MASKED]"));
    assert_eq!(row(2).3.as_deref(), Some("Mask: a bug in the app, call [MASKED]"));
    assert_eq!(row(3).3.as_deref(), Some("Mask: happy with the billing, name: [MASKED]"));
    assert_eq!(row(6).3.as_deref(), Some("Mask: city: Lima; nothing else"));
    assert_eq!(j(&row(3).5), json!({"mood": "happy"}));
    assert_eq!(j(&row(8).5), json!({"mood": "happy"}));
    // Captured by ai_gen_structured's own default, not NULLed by the setting.
    assert_eq!(j(&row(4).5)["error"]["sqlstate"], "ZBI02");
    let report = embedding_for("billing bug report", 1024);
    for r in c.query("SELECT id, body FROM t WHERE body IS NOT NULL", &[]).unwrap() {
        let (id, body): (i32, String) = (r.get(0), r.get(1));
        let got: f64 = row(id).4.unwrap().parse().unwrap();
        let want = cosine(&embedding_for(&format!("About {body}"), 1024), &report);
        assert!((got - want).abs() < 1e-9, "row {id}: {got} vs {want}");
    }
    let null_row = row(5);
    assert_eq!((null_row.1, null_row.2, null_row.3, null_row.4, null_row.5), (None, None, None, None, None));
    // The same WARNING either way.
    for told in [&batched_warnings, &row_warnings] {
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].code, "ZBI02");
        assert!(
            told[0].message.ends_with("\"other\" is not one of \"billing\" or \"bug\" (at /label)"),
            "{}",
            told[0].message
        );
    }
}

/// Empty content asks nothing; on_error is read like PostgreSQL's own enum settings; ai_mask
/// masks whole words only; a task prompt can only be set on a model that runs task functions.
#[test]
fn empty_content_case_and_word_edges() {
    let (mut c, _) = fresh_db("afam_edges");
    let s = standin();
    deploy(&mut c, &s, "chat", "qwen-plus", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", ", params => '{\"dimension\": 64}'");
    for sql in [
        "SELECT ai_classify('chat', '', ARRAY['a'])",
        "SELECT ai_mask('chat', '', ARRAY['email'])",
        "SELECT ai_summarize('chat', '')",
        "SELECT ai_fix_grammar('chat', '')",
        "SELECT ai_sentiment('chat', '')",
        "SELECT ai_rank('chat', 'q', '')::text",
        "SELECT ai_rank('chat', '', 'd')::text",
        "SELECT ai_extract('chat', '', ARRAY['a'])::text",
    ] {
        assert_eq!(one_text(&mut c, sql), None, "{sql}");
    }
    assert_eq!(s.stats().requests, 0, "empty content sent a request");

    let mood = r#"{"type": "object", "properties": {"mood": {"type": "string"}}, "required": ["mood"]}"#;
    s.script("case test", vec![bailian_standin::Fault::NotJson]);
    let (code, _) =
        err(&mut c, &format!("SELECT ai_gen_structured('chat', 'case test', '{mood}', ' ABORT ')::text"));
    assert_eq!(code, "ZBI01", "'ABORT' is 'abort'");
    s.script("case test", vec![bailian_standin::Fault::NotJson]);
    assert_eq!(
        one_text(&mut c, &format!("SELECT ai_gen_structured('chat', 'case test', '{mood}', 'Skip')::text")),
        None
    );

    // A bad key fails every row alike: not captured, not NULLed, whatever on_error says.
    s.script("key test", vec![bailian_standin::Fault::Status(401)]);
    let (code, _) = err(&mut c, &format!("SELECT ai_gen_structured('chat', 'key test', '{mood}')::text"));
    assert_eq!(code, "ZB401", "a 401 is the query's failure, not the row's");
    c.batch_execute("SET pg_bailian.on_error = 'null'").unwrap();
    s.script("key test", vec![bailian_standin::Fault::Status(401)]);
    let (code, _) = err(&mut c, "SELECT ai_classify('chat', 'key test', ARRAY['a'])");
    assert_eq!(code, "ZB401");
    c.batch_execute("RESET pg_bailian.on_error").unwrap();

    let masked = one_text(&mut c, "SELECT ai_mask('chat', 'name: Al; Alice called Al.', ARRAY['name'])");
    assert_eq!(masked.as_deref(), Some("name: [MASKED]; Alice called [MASKED]."));

    let (code, msg) = err(&mut c, "SELECT ai_set_prompt('emb', 'ai_classify', 'Pick {labels}')");
    assert_eq!(code, "22023");
    assert_eq!(msg, "model \"emb\" has task embedding (text-embedding-v4); task prompts are for the chat models the task functions use");
    deploy(&mut c, &s, "thinker", "qwq-plus", "");
    let (code, msg) = err(&mut c, "SELECT ai_set_prompt('thinker', 'ai_classify', 'Pick {labels}')");
    assert_eq!(code, "22023");
    assert!(msg.contains("always thinks"), "{msg}");
    let overrides: i64 =
        c.query_one("SELECT count(*) FROM ai_prompts WHERE NOT is_default", &[]).unwrap().get(0);
    assert_eq!(overrides, 0);
}
