//! Each documented rule the stand-in plays, exercised over real HTTP.

use bailian_standin::{
    audio_pcm, chat_reply, embedding_for, image_embedding_for, reasoning_reply, Config, Fault, Standin,
    AUDIO_SAMPLE_RATE,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const KEY: &str = "sk-test";
const OS_KEY: &str = "OS-test";

struct Reply {
    status: u16,
    content_type: String,
    /// The body, or the error that cut it short.
    body: Result<Bytes, String>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(self.body.as_ref().expect("whole body")).expect("JSON body")
    }

    /// The `data:` payloads of an SSE body, in order.
    fn events(&self) -> Vec<String> {
        let text = String::from_utf8(self.body.as_ref().expect("whole body").to_vec()).unwrap();
        events_of(&text)
    }
}

fn events_of(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
}

async fn post(url: &str, path: &str, key: &str, body: Value) -> Reply {
    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", addr)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let content_type =
        resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).map_err(|e| e.to_string());
    Reply { status, content_type, body }
}

async fn chat(s: &Standin, body: Value) -> Reply {
    post(&s.root_url(), "/compatible-mode/v1/chat/completions", KEY, body).await
}

fn start() -> Standin {
    Standin::start(Config::default()).unwrap()
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// The chunks of a compatible-mode stream as JSON, checking it ends with `[DONE]`.
fn chunks(r: &Reply) -> Vec<Value> {
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("text/event-stream"), "{}", r.content_type);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

fn joined(chunks: &[Value], field: &str) -> String {
    chunks
        .iter()
        .filter_map(|c| c.pointer(&format!("/choices/0/delta/{field}")).and_then(Value::as_str))
        .collect()
}

fn error_of(r: &Reply) -> (u16, String, String) {
    let v = r.json();
    let code = v.pointer("/error/code").or_else(|| v.get("code")).and_then(Value::as_str).unwrap_or_default();
    let msg =
        v.pointer("/error/message").or_else(|| v.get("message")).and_then(Value::as_str).unwrap_or_default();
    (r.status, code.to_string(), msg.to_string())
}

#[tokio::test]
async fn stream_concatenates_to_the_whole_answer() {
    let s = start();
    let whole = chat(&s, json!({"model": "qwen-plus", "messages": user("one two three")})).await.json();
    let expected = chat_reply("qwen-plus", "one two three", 0);
    assert_eq!(whole["choices"][0]["message"]["content"], json!(expected));

    let r = chat(
        &s,
        json!({"model": "qwen-plus", "messages": user("one two three"), "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    let chunks = chunks(&r);
    assert!(chunks.len() > 4, "split over several chunks");
    assert_eq!(joined(&chunks, "content"), expected);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(last["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "stop");
    assert!(chunks[1]["choices"][0]["finish_reason"].is_null());

    // Without include_usage there is no usage chunk; max_tokens still cuts with "length".
    let r = chat(
        &s,
        json!({"model": "qwen-plus", "messages": user("one two three"), "stream": true, "max_tokens": 2}),
    )
    .await;
    let chunks = self::chunks(&r);
    assert!(chunks.iter().all(|c| !c["choices"].as_array().unwrap().is_empty()));
    assert_eq!(joined(&chunks, "content"), "Echo from");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    assert_eq!(s.stats().chat_requests, 3);
    assert_eq!(s.requests()[1].inputs, vec!["one two three".to_string()]);
}

#[tokio::test]
async fn stream_only_and_thinking_rules() {
    let s = start();
    for model in ["qwq-plus", "qwq-plus-latest", "qwen3-omni-flash"] {
        let (status, code, msg) = error_of(&chat(&s, json!({"model": model, "messages": user("hi")})).await);
        assert_eq!((status, code.as_str()), (400, "invalid_parameter_error"), "{model}");
        assert_eq!(
            msg.trim_end(),
            "This model only support stream mode, please enable the stream parameter to access the model."
        );
    }
    let (status, code, msg) = error_of(
        &chat(&s, json!({"model": "qwen-plus", "messages": user("hi"), "enable_thinking": true})).await,
    );
    assert_eq!((status, code.as_str()), (400, "invalid_parameter_error"));
    assert_eq!(msg, "parameter.enable_thinking must be set to false for non-streaming calls");
    // Open-source Qwen3 thinks by default, so a plain call fails and enable_thinking: false works.
    assert_eq!(chat(&s, json!({"model": "qwen3-32b", "messages": user("hi")})).await.status, 400);
    let ok = chat(&s, json!({"model": "qwen3-32b", "messages": user("hi"), "enable_thinking": false})).await;
    assert_eq!(ok.status, 200);
    assert!(ok.json()["choices"][0]["message"].get("reasoning_content").is_none());

    // Thinking streams reasoning first, then content.
    let r = chat(&s, json!({"model": "qwq-plus", "messages": user("why?"), "stream": true})).await;
    let chunks = chunks(&r);
    assert_eq!(joined(&chunks, "reasoning_content"), reasoning_reply("qwq-plus", "why?"));
    assert_eq!(joined(&chunks, "content"), chat_reply("qwq-plus", "why?", 0));
    let first_content = chunks
        .iter()
        .position(|c| {
            c.pointer("/choices/0/delta/content").and_then(Value::as_str).is_some_and(|t| !t.is_empty())
        })
        .unwrap();
    let last_reasoning = chunks
        .iter()
        .rposition(|c| {
            c.pointer("/choices/0/delta/reasoning_content")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty())
        })
        .unwrap();
    assert!(last_reasoning < first_content);
    let r = chat(
        &s,
        json!({"model": "qwen-plus", "messages": user("hm"), "stream": true, "enable_thinking": true}),
    )
    .await;
    assert_eq!(joined(&chunks_of(&r), "reasoning_content"), reasoning_reply("qwen-plus", "hm"));

    // deepseek-r1 thinks always and may be called without stream: reasoning_content in the message.
    let v = chat(&s, json!({"model": "deepseek-r1", "messages": user("x")})).await.json();
    assert_eq!(v["choices"][0]["message"]["reasoning_content"], json!(reasoning_reply("deepseek-r1", "x")));
    assert_eq!(v["choices"][0]["message"]["content"], json!(chat_reply("deepseek-r1", "x", 0)));

    let (status, _, msg) = error_of(
        &chat(&s, json!({"model": "qwen-plus", "messages": user("x"), "stream": true, "enable_thinking": true, "thinking_budget": 0}))
            .await,
    );
    assert_eq!(status, 400);
    assert!(msg.starts_with("The thinking_budget parameter must be a positive integer"), "{msg}");
}

fn chunks_of(r: &Reply) -> Vec<Value> {
    chunks(r)
}

#[tokio::test]
async fn omni_streams_audio_of_the_answer() {
    let s = start();
    let body = json!({"model": "qwen3-omni-flash", "messages": user("who are you"), "stream": true,
        "modalities": ["text", "audio"], "audio": {"voice": "Cherry", "format": "wav"},
        "stream_options": {"include_usage": true}});
    let r = chat(&s, body.clone()).await;
    let chunks = chunks(&r);
    let text = chat_reply("qwen3-omni-flash", "who are you", 0);
    assert_eq!(joined(&chunks, "content"), text);
    let audio: String = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/audio/data").and_then(Value::as_str))
        .collect();
    assert!(chunks.iter().filter(|c| c.pointer("/choices/0/delta/audio").is_some()).count() > 1);
    let pcm = decode_b64(&audio);
    assert_eq!(pcm, audio_pcm(&text, "Cherry"));
    assert_eq!(AUDIO_SAMPLE_RATE, 24_000);
    assert_eq!(pcm.len() % 2, 0, "16-bit samples");

    let mut bad = body.clone();
    bad["audio"]["voice"] = json!("Nobody");
    assert_eq!(error_of(&chat(&s, bad).await).0, 400);
    let mut bad = body.clone();
    bad["audio"]["format"] = json!("mp3");
    assert_eq!(error_of(&chat(&s, bad).await).0, 400);
}

fn decode_b64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        buf = (buf << 6) | A.iter().position(|&a| a == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn parameters_and_messages_are_checked() {
    let s = start();
    let cases = [
        (json!({"temperature": 2.0}), "Range of temperature should be [0.0, 2.0)"),
        (json!({"top_p": 0}), "Range of top_p should be (0.0, 1.0]"),
        (json!({"presence_penalty": 2.5}), "Range of presence_penalty should be [-2.0, 2.0]"),
        (json!({"max_tokens": 0}), "Range of max_tokens should be [1, 32768]"),
        (json!({"n": 5}), "Range of n should be [1, 4]"),
        (json!({"seed": -1}), "seed should be a non-negative integer"),
        (json!({"top_k": -3}), "top_k should be a non-negative integer"),
        (json!({"enable_search": true, "model": "qwen-long"}), "This model does not support enable_search."),
        (json!({"response_format": {"type": "json_object"}}), "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."),
        (json!({"stop": ["a", 1]}), "stop should be a string or an array of strings or token ids, and cannot mix strings and token ids"),
        (json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}]}), "System message must be at the beginning."),
        (json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}), "image_url.url must be a non-empty string."),
    ];
    for (patch, message) in cases {
        let mut body = json!({"model": "qwen-plus", "messages": user("hello")});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, code, msg) = error_of(&chat(&s, body).await);
        assert_eq!((status, code.as_str(), msg.as_str()), (400, "invalid_parameter_error", message));
    }
    // Accepted: search where documented, JSON output, a whole conversation, images for VL.
    let v = chat(
        &s,
        json!({"model": "qwen-plus", "messages": user("hi"), "enable_search": true,
        "search_options": {"forced_search": true, "search_strategy": "max"}}),
    )
    .await;
    assert_eq!(v.status, 200);
    let v = chat(
        &s,
        json!({"model": "qwen-plus", "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]}),
    )
    .await
    .json();
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"answer": chat_reply("qwen-plus", "again", 0)}));
    let schema = json!({"type": "json_schema", "json_schema": {"name": "t", "strict": true, "schema":
        {"type": "object", "properties": {"title": {"type": "string"}, "n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}}}});
    let v = chat(&s, json!({"model": "qwen-plus", "messages": user("hi"), "response_format": schema}))
        .await
        .json();
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    let reply = chat_reply("qwen-plus", "hi", 0);
    assert_eq!(content, json!({"title": reply, "n": 0, "tags": [reply]}));
    let v = chat(&s, json!({"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, {"type": "text", "text": "what?"}]}]})).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], json!(chat_reply("qwen3-vl-plus", "what?", 1)));
    let v = chat(&s, json!({"model": "qwen-plus", "messages": user("one END two"), "stop": "END", "n": 2}))
        .await
        .json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["message"]["content"], json!("Echo from qwen-plus: one "));
}

async fn mm(s: &Standin, model: &str, contents: Value, parameters: Value) -> Reply {
    post(
        &s.root_url(),
        "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding",
        KEY,
        json!({"model": model, "input": {"contents": contents}, "parameters": parameters}),
    )
    .await
}

const PNG: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==";

#[tokio::test]
async fn native_multimodal_embedding() {
    let s = start();
    let r = mm(
        &s,
        "tongyi-embedding-vision-plus",
        json!([{"text": "a red car"}, {"image": PNG}, {"image": "https://example.com/x.jpg"}]),
        json!({"dimension": 512}),
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let e = v["output"]["embeddings"].as_array().unwrap();
    assert_eq!(e.len(), 3);
    assert_eq!(e[0]["type"], "text");
    assert_eq!(e[1]["type"], "image");
    let vec = |i: usize| -> Vec<f32> { serde_json::from_value(e[i]["embedding"].clone()).unwrap() };
    assert_eq!(vec(0), embedding_for("a red car", 512));
    assert_eq!(vec(1), image_embedding_for(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 512));
    assert_eq!(vec(2), image_embedding_for(b"https://example.com/x.jpg", 512));
    assert!(v["request_id"].is_string() && v["usage"].is_object());
    let log = s.requests();
    assert_eq!(
        log[0].inputs,
        vec![
            "a red car".to_string(),
            format!("image:{}", &PNG[..40]),
            "image:https://example.com/x.jpg".into()
        ]
    );
    assert_eq!(s.stats().embedding_requests, 1);

    // Defaults and dimensions per model.
    for (model, dim) in [
        ("multimodal-embedding-v1", 1024),
        ("tongyi-embedding-vision-plus", 1152),
        ("tongyi-embedding-vision-flash", 768),
        ("qwen3-vl-embedding", 2560),
    ] {
        let v = mm(&s, model, json!([{"text": "x"}]), json!({})).await.json();
        assert_eq!(v["output"]["embeddings"][0]["embedding"].as_array().unwrap().len(), dim, "{model}");
    }
    let bad = [
        ("multimodal-embedding-v1", json!([{"text": "x"}]), json!({"dimension": 512})),
        ("multimodal-embedding-v1", json!([{"image": PNG}, {"image": PNG}]), json!({})),
        ("tongyi-embedding-vision-plus", json!([{"image": "data:image/png;base64,!!!"}]), json!({})),
        ("tongyi-embedding-vision-plus", json!([{"image": "data:image/gif;base64,R0lGODlh"}]), json!({})),
        (
            "tongyi-embedding-vision-plus",
            json!([{"image": "data:image/jpeg;base64,iVBORw0KGgo="}]),
            json!({}),
        ),
        ("tongyi-embedding-vision-plus", json!([{"video": "data:video/mp4;base64,AAAA"}]), json!({})),
        ("text-embedding-v4", json!([{"text": "x"}]), json!({})),
    ];
    for (model, contents, params) in bad {
        let r = mm(&s, model, contents.clone(), params).await;
        let (status, code, _) = error_of(&r);
        assert_eq!((status, code.as_str()), (400, "InvalidParameter"), "{model} {contents}");
        assert!(r.json()["request_id"].is_string());
    }
    let (_, _, msg) = error_of(&mm(&s, "text-embedding-v4", json!([{"text": "x"}]), json!({})).await);
    assert!(msg.starts_with("url error"), "{msg}");
    let v =
        mm(&s, "qwen3-vl-embedding", json!([{"video": "https://example.com/v.mp4"}]), json!({})).await.json();
    assert_eq!(v["output"]["embeddings"][0]["type"], "video");

    // A multimodal model on compatible /embeddings: 404 model_not_supported.
    let r = post(
        &s.root_url(),
        "/compatible-mode/v1/embeddings",
        KEY,
        json!({"model": "multimodal-embedding-v1", "input": ["x"]}),
    )
    .await;
    let (status, code, _) = error_of(&r);
    assert_eq!((status, code.as_str()), (404, "model_not_supported"));

    // Native auth and faults in the native shape.
    let r = post(
        &s.root_url(),
        "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding",
        "bad",
        json!({}),
    )
    .await;
    assert_eq!(error_of(&r), (401, "InvalidApiKey".into(), "Invalid API-key provided.".into()));
    s.script("flaky image", vec![Fault::Status(429), Fault::Inspection]);
    let r = mm(&s, "qwen3-vl-embedding", json!([{"text": "flaky image"}]), json!({})).await;
    assert_eq!(error_of(&r).0, 429);
    assert_eq!(error_of(&r).1, "Throttling.RateQuota");
    let r = mm(&s, "qwen3-vl-embedding", json!([{"text": "flaky image"}]), json!({})).await;
    assert_eq!(error_of(&r).1, "DataInspectionFailed");
}

async fn os(s: &Standin, service: &str, key: &str, body: Value) -> Reply {
    post(&s.root_url(), &format!("/v3/openapi/workspaces/default/text-generation/{service}"), key, body).await
}

#[tokio::test]
async fn opensearch_text_generation() {
    let s = start();
    let messages = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "capital of Henan?"},
        {"role": "assistant", "content": "Zhengzhou"}, {"role": "user", "content": "weather there?"}]);
    let v = os(&s, "qwen-max", OS_KEY, json!({"messages": messages})).await.json();
    assert_eq!(v["result"]["text"], json!(chat_reply("qwen-max", "weather there?", 0)));
    assert!(v["result"].get("search_results").is_none());
    assert!(
        v["usage"]["total_tokens"].as_u64().unwrap() > 0
            && v["request_id"].is_string()
            && v["latency"].is_number()
    );
    assert_eq!(s.requests()[0].inputs, vec!["weather there?".to_string()]);
    assert_eq!(s.requests()[0].model, "qwen-max");
    assert_eq!(s.stats().chat_requests, 1);

    let v = os(
        &s,
        "deepseek-r1",
        OS_KEY,
        json!({"messages": user("news"), "enable_search": true,
        "parameters": {"search_return_result": true, "search_top_k": 3, "search_way": "fast"}}),
    )
    .await
    .json();
    assert_eq!(v["result"]["search_results"].as_array().unwrap().len(), 3);

    let r = os(&s, "nope", OS_KEY, json!({"messages": user("x")})).await;
    assert_eq!(error_of(&r), (400, "ServiceIdNotExist".into(), "service_id is not exist.".into()));
    assert_eq!(r.json()["latency"], json!(0));
    assert_eq!(os(&s, "qwen-max", "sk-notopensearch", json!({"messages": user("x")})).await.status, 401);
    let bad = [
        json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
        json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}]}),
        json!({"messages": user("a"), "csi_level": "lax"}),
        json!({"messages": user("a"), "parameters": {"top_p": 1.0}}),
        json!({"messages": user("a"), "parameters": {"max_tokens": 2001}}),
        json!({"messages": user("a"), "parameters": {"temperature": 2}}),
        json!({"messages": user("a"), "parameters": {"presence_penalty": -3}}),
        json!({"messages": user("a"), "parameters": {"search_way": "slow"}}),
    ];
    for body in bad {
        let (status, code, _) = error_of(&os(&s, "qwen-plus", OS_KEY, body.clone()).await);
        assert_eq!((status, code.as_str()), (400, "InvalidParameter"), "{body}");
    }
    assert_eq!(
        os(&s, "ops-qwen-turbo", OS_KEY, json!({"messages": user("a"), "parameters": {"max_tokens": 4000}}))
            .await
            .status,
        200
    );

    // Streaming: every event carries the whole text so far; the last is the complete result.
    let r = os(&s, "qwen-turbo", OS_KEY, json!({"messages": user("tell me more"), "stream": true})).await;
    assert!(r.content_type.starts_with("text/event-stream"));
    let events: Vec<Value> = r.events().iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(events.len() > 2);
    let texts: Vec<&str> = events.iter().map(|e| e["result"]["text"].as_str().unwrap()).collect();
    assert!(texts.windows(2).all(|w| w[1].starts_with(w[0]) && w[1].len() > w[0].len()));
    assert_eq!(*texts.last().unwrap(), chat_reply("qwen-turbo", "tell me more", 0));
}

#[tokio::test]
async fn stream_faults() {
    let s = start();
    s.configure(|c| c.stream_chunk_delay_ms = 5);
    s.script("cut", vec![Fault::StreamBreak { after: 2 }]);
    let r = chat(&s, json!({"model": "qwen-plus", "messages": user("cut"), "stream": true})).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_err(), "the body breaks off");
    // A non-stream request with the same fault scripted answers normally.
    s.script("cut", vec![Fault::StreamBreak { after: 2 }]);
    assert_eq!(chat(&s, json!({"model": "qwen-plus", "messages": user("cut")})).await.status, 200);

    s.script("rude", vec![Fault::StreamError { after: 3 }]);
    let r = chat(&s, json!({"model": "qwen-plus", "messages": user("rude"), "stream": true})).await;
    let events = r.events();
    assert_eq!(events.len(), 4);
    let err: Value = serde_json::from_str(&events[3]).unwrap();
    assert_eq!(err["error"]["code"], "data_inspection_failed");
    assert!(!events.iter().any(|e| e == "[DONE]"));

    s.script("os rude", vec![Fault::StreamError { after: 1 }]);
    let r = os(&s, "qwen-plus", OS_KEY, json!({"messages": user("os rude"), "stream": true})).await;
    let events = r.events();
    assert_eq!(events.len(), 2);
    assert_eq!(serde_json::from_str::<Value>(&events[1]).unwrap()["code"], "DataInspectionFailed");

    // Errors before a stream starts are plain HTTP errors; faults apply to every endpoint.
    s.script("busy", vec![Fault::Status(500)]);
    let r = os(&s, "qwen-plus", OS_KEY, json!({"messages": user("busy")})).await;
    assert_eq!(error_of(&r).1, "InternalServerError");
    s.script("nul", vec![Fault::NulInContent]);
    let v = os(&s, "qwen-plus", OS_KEY, json!({"messages": user("nul")})).await.json();
    assert!(v["result"]["text"].as_str().unwrap().contains('\0'));
    s.configure(|c| c.accepted_keys = Some(vec!["OS-only".into()]));
    assert_eq!(os(&s, "qwen-plus", OS_KEY, json!({"messages": user("x")})).await.status, 401);
    assert_eq!(os(&s, "qwen-plus", "OS-only", json!({"messages": user("x")})).await.status, 200);
}
