//! Property tests of every parser of what the provider sends: answers, error bodies and the
//! Retry-After header. Whatever answers at base_url may send anything, so each parser must
//! take arbitrary bytes without panicking, and what it accepts must be something PostgreSQL
//! can store: text without NUL, vectors of finite f32 of the expected count and length.

use bailian_core::providers::compatible::{self, parse_embeddings};
use bailian_core::providers::{multimodal, opensearch, parse_error_body, sse, Usage};
use bailian_core::retry::{parse_retry_after, parse_retry_after_at, RetryPolicy, MAX_RETRY_AFTER};
use bailian_core::AiError;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The answer text and token count of a compatible-mode chat answer.
fn parse_chat(model: &str, body: &[u8]) -> Result<(String, Usage), AiError> {
    compatible::parse_chat(model, body).map(|o| (o.content.clone(), o.tokens()))
}

/// Every event of `body` through a stream assembler of each provider, as the client does.
fn assemble(body: &[u8]) -> (Result<String, AiError>, Result<String, AiError>) {
    let mut decoder = sse::Decoder::default();
    let mut events = Vec::new();
    decoder.feed(body, &mut events);
    decoder.finish(&mut events);
    let mut c = compatible::StreamAssembler::default();
    let mut o = opensearch::StreamAssembler::default();
    let (mut ce, mut oe) = (None, None);
    for e in &events {
        if ce.is_none() {
            ce = c.feed("m", e).err();
        }
        if oe.is_none() {
            oe = o.feed("m", "qwen-max", e).err();
        }
    }
    (
        match ce {
            Some(e) => Err(e),
            None => c.finish("m").map(|o| o.content),
        },
        match oe {
            Some(e) => Err(e),
            None => o.finish("m").map(|o| o.content),
        },
    )
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, ..ProptestConfig::default() }
}

/// A MalformedResponse detail, or a failure naming what else came back.
fn detail(e: AiError) -> String {
    match e {
        AiError::MalformedResponse { detail, .. } => detail,
        other => panic!("expected MalformedResponse, got {other:?}"),
    }
}

/// Text where NUL is common: every character either any `char` or U+0000.
fn text_with_nuls() -> impl Strategy<Value = String> {
    vec(prop_oneof![3 => any::<char>(), 1 => Just('\0')], 0..40).prop_map(|c| c.into_iter().collect())
}

/// Any JSON value, a few levels deep, with strings that may hold NUL.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text_with_nuls().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((prop_oneof![Just("text".to_string()), Just("type".to_string()), "[a-z]{1,6}"], inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON number literal as a provider might write it: ordinary floats, integers, and
/// exponents anywhere from tiny to beyond f64.
fn number_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (-1.0e3f32..1.0e3).prop_map(|x| format!("{x}")),
        1 => any::<i32>().prop_map(|x| x.to_string()),
        1 => (-9.99f64..9.99, -400i32..400).prop_map(|(m, e)| format!("{m:.3}e{e}")),
        1 => prop_oneof![Just("1e39"), Just("-1e39"), Just("3.5e38"), Just("3.4e38"), Just("1e308"), Just("-0")]
            .prop_map(String::from),
    ]
}

/// What a literal becomes in the Vec<f32> if serde_json takes it; None if it refuses it.
fn as_f32(literal: &str) -> Option<f32> {
    serde_json::from_str::<f32>(literal).ok()
}

proptest! {
    #![proptest_config(config())]

    // ---- streams, OpenSearch and native multimodal answers

    #[test]
    fn streams_take_any_bytes(body in vec(any::<u8>(), 0..512)) {
        let (c, o) = assemble(&body);
        for r in [c, o] {
            match r {
                Ok(text) => prop_assert!(!text.contains('\0')),
                Err(e) => prop_assert!(!e.to_string().contains('\0')),
            }
        }
    }

    #[test]
    fn streams_of_any_json_chunks(chunks in vec(any_json(), 0..6), deltas in vec(text_with_nuls(), 0..4)) {
        let mut body = String::new();
        for c in &chunks {
            body.push_str(&format!("data: {c}\n\n"));
        }
        for d in &deltas {
            body.push_str(&format!("data: {}\n\n", json!({"choices": [{"delta": {"content": d, "reasoning_content": d}}]})));
        }
        body.push_str("data: [DONE]\n\n");
        let (c, o) = assemble(body.as_bytes());
        for r in [c, o] {
            match r {
                Ok(text) => prop_assert!(!text.contains('\0')),
                Err(e) => prop_assert!(!e.to_string().contains('\0')),
            }
        }
    }

    #[test]
    fn opensearch_and_multimodal_answers_take_any_json(v in any_json(), text in text_with_nuls(), n in 0usize..4) {
        for body in [v.to_string(), json!({"result": {"text": text}}).to_string(), json!({"output": {"embeddings": v}}).to_string()] {
            if let Ok(out) = opensearch::parse_chat("m", "qwen-max", body.as_bytes()) {
                prop_assert!(!out.content.contains('\0'));
            }
            if let Ok((vectors, _)) = multimodal::parse("m", body.as_bytes(), n, Some(2)) {
                prop_assert_eq!(vectors.len(), n);
                prop_assert!(vectors.iter().all(|v| v.len() == 2 && v.iter().all(|x| x.is_finite())));
            }
        }
    }

    // ---- parse_chat

    #[test]
    fn chat_takes_any_bytes(body in vec(any::<u8>(), 0..512)) {
        if let Ok((text, _)) = parse_chat("m", &body) {
            prop_assert!(!text.contains('\0'));
        }
    }

    #[test]
    fn chat_takes_any_string(body in any::<String>()) {
        if let Ok((text, _)) = parse_chat("m", body.as_bytes()) {
            prop_assert!(!text.contains('\0'));
        }
    }

    #[test]
    fn chat_text_is_refused_exactly_when_it_holds_nul(content in text_with_nuls(), tokens in any::<u64>()) {
        let body = json!({"choices": [{"message": {"role": "assistant", "content": content}}],
                          "usage": {"total_tokens": tokens}});
        match parse_chat("m", body.to_string().as_bytes()) {
            Ok((text, usage)) => {
                prop_assert!(!content.contains('\0'));
                prop_assert_eq!(text, content);
                prop_assert_eq!(usage.total_tokens, tokens);
            }
            Err(e) => {
                prop_assert!(content.contains('\0'), "{:?}", e);
                let d = detail(e);
                prop_assert!(d.contains("NUL character (U+0000)") && !d.contains('\0'), "{}", d);
            }
        }
    }

    #[test]
    fn chat_content_parts_are_checked_too(parts in vec(text_with_nuls(), 0..5)) {
        let content: Vec<Value> = parts.iter().map(|t| json!({"type": "text", "text": t})).collect();
        let body = json!({"choices": [{"message": {"content": content}}]});
        let joined = parts.concat();
        match parse_chat("m", body.to_string().as_bytes()) {
            Ok((text, _)) => prop_assert_eq!(text, joined),
            Err(_) => prop_assert!(joined.contains('\0')),
        }
    }

    #[test]
    fn chat_with_any_json_in_any_place(content in any_json(), choices in any_json(), usage in any_json()) {
        for body in [
            json!({"choices": [{"message": {"content": content.clone()}}], "usage": usage.clone()}),
            json!({"choices": choices.clone()}),
            json!({"choices": [{"message": content.clone()}]}),
            content.clone(),
        ] {
            match parse_chat("m", body.to_string().as_bytes()) {
                Ok((text, _)) => prop_assert!(!text.contains('\0')),
                Err(e) => prop_assert!(!detail(e).contains('\0')),
            }
        }
    }

    // ---- parse_embeddings

    #[test]
    fn embeddings_take_any_bytes(body in vec(any::<u8>(), 0..512), expected in 0usize..4, dim in proptest::option::of(0u32..4)) {
        if let Ok((vectors, _)) = parse_embeddings("m", &body, expected, dim) {
            prop_assert_eq!(vectors.len(), expected);
            prop_assert!(vectors.iter().flatten().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn embeddings_take_any_json(data in any_json(), expected in 0usize..4) {
        for body in [json!({"data": data.clone()}), json!({"data": [{"embedding": data.clone()}]}), data.clone()] {
            match parse_embeddings("m", body.to_string().as_bytes(), expected, None) {
                Ok((vectors, _)) => {
                    prop_assert_eq!(vectors.len(), expected);
                    prop_assert!(vectors.iter().flatten().all(|x| x.is_finite()));
                }
                Err(e) => prop_assert!(!detail(e).contains('\0')),
            }
        }
    }

    #[test]
    fn accepted_embeddings_are_finite_and_complete(
        values in (1usize..5, 1usize..6).prop_flat_map(|(n, d)| vec(vec(number_literal(), d), n)),
        shuffle in any::<bool>(),
    ) {
        let n = values.len();
        let dim = values[0].len();
        // The items, in input order or reversed, with their index (the order is the client's
        // to restore).
        let items: Vec<String> = (0..n)
            .map(|i| if shuffle { n - 1 - i } else { i })
            .map(|i| format!(r#"{{"object":"embedding","index":{i},"embedding":[{}]}}"#, values[i].join(",")))
            .collect();
        let body = format!(r#"{{"data":[{}],"usage":{{"total_tokens":3}}}}"#, items.join(","));
        let parsed: Vec<Vec<Option<f32>>> =
            values.iter().map(|v| v.iter().map(|l| as_f32(l)).collect()).collect();
        let all_json = parsed.iter().flatten().all(Option::is_some);
        let first_bad = (0..n).map(|p| if shuffle { n - 1 - p } else { p }).find_map(|i| {
            parsed[i].iter().position(|x| x.is_some_and(|x| !x.is_finite())).map(|at| (i, at))
        });
        match parse_embeddings("m", body.as_bytes(), n, Some(dim as u32)) {
            Ok((vectors, usage)) => {
                prop_assert!(all_json && first_bad.is_none());
                prop_assert_eq!(usage.total_tokens, 3);
                prop_assert_eq!(vectors.len(), n);
                for (i, v) in vectors.iter().enumerate() {
                    prop_assert_eq!(v.len(), dim);
                    prop_assert!(v.iter().all(|x| x.is_finite()));
                    let expected: Vec<f32> = parsed[i].iter().flatten().copied().collect();
                    prop_assert_eq!(v, &expected);
                }
            }
            Err(e) => {
                let d = detail(e);
                if all_json {
                    // Refused for a non-finite value, which the detail locates.
                    let (index, at) = first_bad.expect("refused without a bad value");
                    let pos = if shuffle { n - 1 - index } else { index };
                    let place = format!("data[{pos}] (index {index}) embedding[{at}] is not a finite");
                    prop_assert!(d.contains(&place), "{} not in {}", place, d);
                }
            }
        }
    }

    #[test]
    fn embeddings_of_the_wrong_count_or_length_are_refused(n in 0usize..5, expected in 0usize..5, len in 0usize..5, dim in 0u32..5) {
        let items: Vec<Value> = (0..n).map(|i| json!({"index": i, "embedding": vec![0.5f32; len]})).collect();
        let body = json!({"data": items}).to_string();
        let ok = parse_embeddings("m", body.as_bytes(), expected, Some(dim)).is_ok();
        prop_assert_eq!(ok, n == expected && (n == 0 || len == dim as usize));
    }

    // ---- parse_error_body

    #[test]
    fn error_bodies_take_any_bytes(body in vec(any::<u8>(), 0..1024)) {
        let e = parse_error_body(&body);
        prop_assert!(!e.code.contains('\0') && !e.message.contains('\0'));
        prop_assert!(!e.request_id.unwrap_or_default().contains('\0'));
    }

    #[test]
    fn error_bodies_take_any_string(body in any::<String>()) {
        let e = parse_error_body(body.as_bytes());
        prop_assert!(!e.code.contains('\0') && !e.message.contains('\0'));
        prop_assert!(e.message.chars().count() <= 200 || serde_json::from_str::<Value>(&body).is_ok());
    }

    #[test]
    fn error_fields_lose_their_nuls_and_nothing_else(
        message in text_with_nuls(), code in text_with_nuls(), id in text_with_nuls(), native in any::<bool>(),
    ) {
        let body = if native {
            json!({"code": code, "message": message, "request_id": id})
        } else {
            json!({"error": {"message": message, "type": "t", "code": code}, "request_id": id})
        };
        let e = parse_error_body(body.to_string().as_bytes());
        let clean = |s: &str| s.replace('\0', "\u{FFFD}");
        prop_assert_eq!(e.message, clean(&message));
        prop_assert_eq!(e.code, if code.is_empty() && !native { "t".to_string() } else { clean(&code) });
        prop_assert_eq!(e.request_id, Some(clean(&id)));
    }

    #[test]
    fn error_bodies_with_any_json(body in any_json(), inner in any_json()) {
        for v in [body.clone(), json!({"error": inner.clone(), "request_id": body.clone()})] {
            let e = parse_error_body(v.to_string().as_bytes());
            prop_assert!(!e.code.contains('\0') && !e.message.contains('\0'));
        }
    }

    // ---- parse_retry_after

    #[test]
    fn retry_after_takes_any_string(value in any::<String>()) {
        if let Some(d) = parse_retry_after(&value) {
            prop_assert!(d <= MAX_RETRY_AFTER);
        }
    }

    #[test]
    fn retry_after_takes_anything_header_shaped(value in "[ -~]{0,40}") {
        if let Some(d) = parse_retry_after(&value) {
            prop_assert!(d <= MAX_RETRY_AFTER);
        }
    }

    #[test]
    fn delay_seconds_are_capped(secs in any::<u64>(), zeros in 0usize..30, frac in proptest::option::of("[0-9]{1,12}")) {
        let value = match &frac {
            Some(f) => format!("{}{secs}.{f}", "0".repeat(zeros)),
            None => format!("{}{secs}", "0".repeat(zeros)),
        };
        let d = parse_retry_after(&value).expect("digits are delay-seconds");
        if secs >= 60 {
            prop_assert_eq!(d, MAX_RETRY_AFTER);
        } else if frac.is_none() {
            prop_assert_eq!(d, Duration::from_secs(secs));
        } else {
            prop_assert!(d >= Duration::from_secs(secs) && d <= Duration::from_secs(secs + 1));
        }
    }

    #[test]
    fn digit_strings_of_any_length_are_capped(digits in "[0-9]{1,600}") {
        let d = parse_retry_after(&digits).expect("digits are delay-seconds");
        prop_assert!(d <= MAX_RETRY_AFTER);
    }

    #[test]
    fn negative_and_non_numbers_are_ignored(value in prop_oneof![
        "-[0-9]{1,30}(\\.[0-9]{1,5})?",
        "[+-]?(inf|infinity|NaN|nan)",
        "[0-9]{1,5}[eE][+-]?[0-9]{1,4}",
        "0x[0-9a-f]{1,8}",
    ]) {
        prop_assert_eq!(parse_retry_after(&value), None);
    }

    #[test]
    fn http_dates_count_from_now(date in 0u64..253_402_300_800, now in 0u64..253_402_300_800) {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let value = httpdate::fmt_http_date(at(date));
        let expected = Duration::from_secs(date.saturating_sub(now)).min(MAX_RETRY_AFTER);
        prop_assert_eq!(parse_retry_after_at(&value, at(now)), Some(expected));
    }

    #[test]
    fn retry_after_at_any_time(value in any::<String>(), now in any::<u64>()) {
        let now = UNIX_EPOCH.checked_add(Duration::from_secs(now)).unwrap_or(SystemTime::now());
        if let Some(d) = parse_retry_after_at(&value, now) {
            prop_assert!(d <= MAX_RETRY_AFTER);
        }
    }

    // ---- what the retry loop does with it

    #[test]
    fn delays_never_panic(
        initial in any::<(u64, u32)>(), max in any::<(u64, u32)>(), retry in any::<u32>(),
        retry_after in proptest::option::of(any::<(u64, u32)>()),
    ) {
        let d = |(s, n): (u64, u32)| Duration::new(s, n % 1_000_000_000);
        let p = RetryPolicy { max_retries: 3, initial_delay: d(initial), max_delay: d(max) };
        let ra = retry_after.map(d);
        prop_assert!(p.backoff(retry) <= p.max_delay);
        let delay = p.delay(retry, ra);
        prop_assert!(delay <= p.max_delay.max(MAX_RETRY_AFTER));
        if let Some(ra) = ra {
            prop_assert!(delay >= ra.min(MAX_RETRY_AFTER));
        }
    }

    #[test]
    fn parsed_retry_after_never_makes_a_delay_panic(value in any::<String>(), retry in 0u32..40) {
        let p = RetryPolicy { max_retries: 3, initial_delay: Duration::from_millis(500), max_delay: Duration::from_secs(60) };
        prop_assert!(p.delay(retry, parse_retry_after(&value)) <= MAX_RETRY_AFTER);
    }
}
