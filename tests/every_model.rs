//! Every model of seed 000, the text rerank models, and every OpenSearch service of seed 003, deployed with its
//! defaults and called once through the function that fits its task, checked on the wire
//! (what the stand-in received) and in the answer. The case table must cover the registry
//! exactly: a model added to `ai_supported_models()` without a case fails the test.

mod common;

use bailian_standin::{
    audio_pcm, chat_reply, embedding_for, image_embedding_for, reasoning_reply, translation_reply, Standin,
};
use common::*;
use postgres::Client;
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `ai_chat`; `reasons`: the answer carries reasoning_content; `streams`: the call must go
    /// as a stream (stream-only, or a model that thinks by default).
    Chat {
        reasons: bool,
        streams: bool,
    },
    /// `ai_gen` with an image.
    Vision {
        reasons: bool,
    },
    /// `ai_gen_audio` and `ai_gen`.
    Omni,
    Translation,
    /// `ai_embed`; `images`: also `ai_embed_image` (the native multimodal API).
    Embedding {
        dimension: usize,
        images: bool,
    },
    /// OpenSearch text generation through `ai_chat`.
    OpenSearch,
    /// A text rerank model through `ai_rank` (the DashScope native API).
    Rerank,
}

use Kind::*;

const fn chat(reasons: bool, streams: bool) -> Kind {
    Chat { reasons, streams }
}
const PLAIN: Kind = chat(false, false);
/// Thinks always, answers without a stream.
const REASONS: Kind = chat(true, false);
/// Thinking is on unless switched off (undocumented default: pg_bailian streams).
const STREAMS: Kind = chat(false, true);

const CASES: &[(&str, &str, Kind)] = &[
    ("bailian", "qwen3-max", PLAIN),
    ("bailian", "qwen3-max-2026-01-23", PLAIN),
    ("bailian", "qwen3-max-preview", PLAIN),
    ("bailian", "qwen-max", PLAIN),
    ("bailian", "qwen-max-latest", PLAIN),
    ("bailian", "qwen-plus", PLAIN),
    ("bailian", "qwen-plus-latest", PLAIN),
    ("bailian", "qwen-flash", PLAIN),
    ("bailian", "qwen-long", PLAIN),
    ("bailian", "qwen-long-latest", PLAIN),
    ("bailian", "qwq-plus", chat(true, true)),
    ("bailian", "qwq-plus-latest", chat(true, true)),
    ("bailian", "deepseek-v3.2", PLAIN),
    ("bailian", "deepseek-v3.2-exp", PLAIN),
    ("bailian", "deepseek-v3.1", PLAIN),
    ("bailian", "deepseek-r1", REASONS),
    ("bailian", "deepseek-r1-0528", REASONS),
    ("bailian", "deepseek-v3", PLAIN),
    ("bailian", "deepseek-r1-distill-qwen-1.5b", REASONS),
    ("bailian", "deepseek-r1-distill-qwen-7b", REASONS),
    ("bailian", "deepseek-r1-distill-qwen-14b", REASONS),
    ("bailian", "deepseek-r1-distill-qwen-32b", REASONS),
    ("bailian", "kimi-k2-thinking", REASONS),
    ("bailian", "Moonshot-Kimi-K2-Instruct", PLAIN),
    ("bailian", "glm-4.6", STREAMS),
    ("bailian", "glm-4.7", STREAMS),
    ("bailian", "glm-5", STREAMS),
    ("bailian", "MiniMax-M2.1", PLAIN),
    ("bailian", "MiniMax-M2.5", PLAIN),
    ("bailian", "MiniMax/MiniMax-M2.1", PLAIN),
    ("bailian", "MiniMax/MiniMax-M2.5", PLAIN),
    ("bailian", "qwen3-vl-235b-a22b-instruct", Vision { reasons: false }),
    ("bailian", "qwen3-vl-235b-a22b-thinking", Vision { reasons: true }),
    ("bailian", "qwen3-vl-32b-instruct", Vision { reasons: false }),
    ("bailian", "qwen3-vl-32b-thinking", Vision { reasons: true }),
    ("bailian", "qwen3-vl-8b-instruct", Vision { reasons: false }),
    ("bailian", "qwen3-vl-8b-thinking", Vision { reasons: true }),
    ("bailian", "qwen3-vl-plus", Vision { reasons: false }),
    ("bailian", "qwen3-vl-flash", Vision { reasons: false }),
    ("bailian", "qwen-vl-ocr", Vision { reasons: false }),
    ("bailian", "qwen-vl-ocr-latest", Vision { reasons: false }),
    ("bailian", "qwen3-omni-flash", Omni),
    ("bailian", "qwen-mt-plus", Translation),
    ("bailian", "qwen-mt-flash", Translation),
    ("bailian", "qwen-mt-turbo", Translation),
    ("bailian", "qwen-mt-lite", Translation),
    ("bailian", "text-embedding-v1", Embedding { dimension: 1536, images: false }),
    ("bailian", "text-embedding-v2", Embedding { dimension: 1536, images: false }),
    ("bailian", "text-embedding-v3", Embedding { dimension: 1024, images: false }),
    ("bailian", "text-embedding-v4", Embedding { dimension: 1024, images: false }),
    ("bailian", "tongyi-embedding-vision-plus", Embedding { dimension: 1152, images: true }),
    ("bailian", "tongyi-embedding-vision-flash", Embedding { dimension: 768, images: true }),
    ("bailian", "multimodal-embedding-v1", Embedding { dimension: 1024, images: true }),
    ("bailian", "qwen3-vl-embedding", Embedding { dimension: 2560, images: true }),
    ("bailian", "gte-rerank-v2", Rerank),
    ("bailian", "qwen3-rerank", Rerank),
    ("opensearch", "ops-qwen-turbo", OpenSearch),
    ("opensearch", "qwen-turbo", OpenSearch),
    ("opensearch", "qwen-plus", OpenSearch),
    ("opensearch", "qwen-max", OpenSearch),
    ("opensearch", "deepseek-r1", OpenSearch),
    ("opensearch", "deepseek-v3", OpenSearch),
    ("opensearch", "qwen3-235b-a22b", OpenSearch),
    ("opensearch", "qwq-32b", OpenSearch),
    ("opensearch", "deepseek-r1-distill-qwen-7b", OpenSearch),
    ("opensearch", "deepseek-r1-distill-qwen-14b", OpenSearch),
];

/// A real PNG header plus bytes, so the stand-in's format check passes.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00";

fn os_key(tag: &str) -> String {
    format!("OS-{KEY_MARK}-{tag}-0000")
}

/// The request the stand-in logged last.
fn last_request(s: &Standin) -> (String, Value) {
    let r = s.requests().pop().expect("a request reached the stand-in");
    (r.path, r.body)
}

fn deploy_case(c: &mut Client, s: &Standin, name: &str, provider: &str, model: &str) {
    let sql = if provider == "opensearch" {
        format!(
            "SELECT ai_deploy_model('{name}', '{model}', '{}', provider => 'opensearch', base_url => '{}')",
            os_key(name),
            s.root_url()
        )
    } else {
        format!(
            "SELECT ai_deploy_model('{name}', '{model}', '{}', base_url => '{}')",
            key(name),
            s.base_url()
        )
    };
    c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[test]
fn every_model_answers_through_its_function() {
    let (mut c, _) = fresh_db("every_model");
    let s = standin();
    s.configure(|cfg| cfg.log_bodies = true);

    let registry: BTreeSet<(String, String)> = c
        .query("SELECT provider, model_type FROM ai_supported_models()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let cases: BTreeSet<(String, String)> =
        CASES.iter().map(|(p, m, _)| (p.to_string(), m.to_string())).collect();
    let missing: Vec<_> = registry.difference(&cases).collect();
    let extra: Vec<_> = cases.difference(&registry).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "registry models without a case: {missing:?}; cases not in the registry: {extra:?}"
    );

    for (i, (provider, model, kind)) in CASES.iter().enumerate() {
        let name = format!("m{i}");
        deploy_case(&mut c, &s, &name, provider, model);
        let prompt = format!("hello from case {i}");
        match *kind {
            Chat { reasons, streams } => {
                let out = json_of(
                    &mut c,
                    &format!(
                        "SELECT ai_chat('{name}', '[{{\"role\": \"user\", \"content\": \"{prompt}\"}}]')"
                    ),
                );
                assert_eq!(out["content"], chat_reply(model, &prompt, 0), "{model}: {out}");
                let expected_reasoning =
                    if reasons { json!(reasoning_reply(model, &prompt)) } else { Value::Null };
                assert_eq!(out["reasoning_content"], expected_reasoning, "{model}: {out}");
                assert_eq!(out["finish_reason"], "stop", "{model}: {out}");
                assert_eq!(out["model"], *model, "{model}: {out}");
                assert!(out["usage"]["total_tokens"].as_u64().is_some_and(|n| n > 0), "{model}: {out}");
                assert!(out["request_id"].as_str().is_some_and(|r| !r.is_empty()), "{model}: {out}");
                let (path, body) = last_request(&s);
                assert!(path.ends_with("/compatible-mode/v1/chat/completions"), "{model}: {path}");
                assert_eq!(body["model"], *model);
                assert_eq!(body["messages"], json!([{"role": "user", "content": prompt}]));
                if streams {
                    assert_eq!(body["stream"], true, "{model}: {body}");
                    assert_eq!(body["stream_options"], json!({"include_usage": true}), "{model}");
                } else {
                    assert!(body.get("stream").is_none(), "{model}: {body}");
                }
            }
            Vision { reasons } => {
                let params = json!({"images": ["https://example.com/cat.png"]}).to_string();
                let out = one_text(&mut c, &format!("SELECT ai_gen('{name}', '{prompt}', '{params}')"));
                assert_eq!(out.as_deref(), Some(chat_reply(model, &prompt, 1).as_str()), "{model}");
                let (_, body) = last_request(&s);
                assert_eq!(
                    body["messages"][0]["content"],
                    json!([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, {"type": "text", "text": prompt}]),
                    "{model}"
                );
                let out = json_of(
                    &mut c,
                    &format!(
                        "SELECT ai_chat('{name}', '[{{\"role\": \"user\", \"content\": \"{prompt}\"}}]')"
                    ),
                );
                let expected_reasoning =
                    if reasons { json!(reasoning_reply(model, &prompt)) } else { Value::Null };
                assert_eq!(out["reasoning_content"], expected_reasoning, "{model}: {out}");
            }
            Omni => {
                let wav: Vec<u8> =
                    c.query_one(&format!("SELECT ai_gen_audio('{name}', '{prompt}')"), &[]).unwrap().get(0);
                let (_, body) = last_request(&s);
                assert_eq!(body["stream"], true);
                assert_eq!(body["modalities"], json!(["text", "audio"]));
                assert_eq!(body["audio"], json!({"voice": "Cherry", "format": "wav"}));
                let pcm = audio_pcm(&chat_reply(model, &prompt, 0), "Cherry");
                assert_eq!(&wav[..4], b"RIFF");
                assert_eq!(&wav[8..16], b"WAVEfmt ");
                assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 24_000);
                assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize, pcm.len());
                assert!(wav[44..] == pcm[..], "{model}: the WAV's samples differ from the streamed audio");
                let voiced: Vec<u8> = c
                    .query_one(
                        &format!("SELECT ai_gen_audio('{name}', '{prompt}', '{{\"voice\": \"Ethan\"}}')"),
                        &[],
                    )
                    .unwrap()
                    .get(0);
                assert!(voiced[44..] == audio_pcm(&chat_reply(model, &prompt, 0), "Ethan")[..]);
                let text = one_text(&mut c, &format!("SELECT ai_gen('{name}', '{prompt}')"));
                assert_eq!(text.as_deref(), Some(chat_reply(model, &prompt, 0).as_str()));
                let (_, body) = last_request(&s);
                assert_eq!(body["stream"], true, "qwen3-omni-flash answers only as a stream");
            }
            Translation => {
                let out = one_text(&mut c, &format!("SELECT ai_translate('{name}', '{prompt}', 'French')"));
                assert_eq!(out.as_deref(), Some(translation_reply(&prompt, "auto", "French", &[]).as_str()));
                let (path, body) = last_request(&s);
                assert!(path.ends_with("/chat/completions"));
                assert_eq!(body["translation_options"]["target_lang"], "French");
            }
            Embedding { dimension, images } => {
                let v: Vec<f32> =
                    c.query_one(&format!("SELECT ai_embed('{name}', '{prompt}')"), &[]).unwrap().get(0);
                assert_eq!(v, embedding_for(&prompt, dimension), "{model}");
                let (path, body) = last_request(&s);
                if images {
                    assert!(
                        path.ends_with(
                            "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding"
                        ),
                        "{model}: {path}"
                    );
                    assert_eq!(body["input"]["contents"], json!([{"text": prompt}]), "{model}");
                    let v: Vec<f32> = c
                        .query_one(&format!("SELECT ai_embed_image('{name}', $1::bytea)"), &[&PNG])
                        .unwrap()
                        .get(0);
                    assert_eq!(v, image_embedding_for(PNG, dimension), "{model}");
                    let (_, body) = last_request(&s);
                    let sent = body["input"]["contents"][0]["image"].as_str().unwrap().to_string();
                    assert!(sent.starts_with("data:image/png;base64,"), "{model}: {sent}");
                    let url = "https://example.com/photo.jpg";
                    let v: Vec<f32> = c
                        .query_one(&format!("SELECT ai_embed_image('{name}', '{url}')"), &[])
                        .unwrap()
                        .get(0);
                    assert_eq!(v, image_embedding_for(url.as_bytes(), dimension), "{model}");
                } else {
                    assert!(path.ends_with("/compatible-mode/v1/embeddings"), "{model}: {path}");
                    let (code, msg) = error_of(
                        c.query_one(&format!("SELECT ai_embed_image('{name}', $1::bytea)"), &[&PNG]),
                    );
                    assert_eq!(code, "22023", "{msg}");
                    assert!(msg.contains("embeds text only"), "{msg}");
                }
            }
            Rerank => {
                let score: f64 = c
                    .query_one(
                        &format!("SELECT ai_rank('{name}', 'fast database {i}', 'a fast database')"),
                        &[],
                    )
                    .unwrap()
                    .get(0);
                // The stand-in scores by the share of the query's words the document holds.
                assert_eq!(score, 0.6667, "{model}");
                let (path, body) = last_request(&s);
                assert!(path.ends_with("/api/v1/services/rerank/text-rerank/text-rerank"), "{model}: {path}");
                assert_eq!(
                    body,
                    json!({"model": model, "input": {"query": format!("fast database {i}"), "documents": ["a fast database"]},
                           "parameters": {"return_documents": false}}),
                    "{model}"
                );
                let (code, msg) =
                    error_of(c.query_one(&format!("SELECT ai_classify('{name}', 'x', ARRAY['a'])"), &[]));
                assert_eq!(code, "42809", "{msg}");
            }
            OpenSearch => {
                let out = json_of(
                    &mut c,
                    &format!(
                        "SELECT ai_chat('{name}', '[{{\"role\": \"user\", \"content\": \"{prompt}\"}}]')"
                    ),
                );
                assert_eq!(out["content"], chat_reply(model, &prompt, 0), "{model}: {out}");
                assert!(out["usage"]["total_tokens"].as_u64().is_some_and(|n| n > 0), "{model}: {out}");
                let (path, body) = last_request(&s);
                assert_eq!(path, format!("/v3/openapi/workspaces/default/text-generation/{model}"));
                assert_eq!(
                    body,
                    json!({"messages": [{"role": "user", "content": prompt}], "stream": false}),
                    "{model}"
                );
                let text = one_text(&mut c, &format!("SELECT ai_gen('{name}', 'plain {i}')"));
                assert_eq!(text.as_deref(), Some(chat_reply(model, &format!("plain {i}"), 0).as_str()));
            }
        }
    }
    // Every request carried its deployment's key: OpenSearch ones an OS- key.
    for r in s.requests() {
        let os = r.path.starts_with("/v3/openapi/");
        assert!(r.auth_hint.starts_with(if os { "OS-" } else { "sk-" }), "{} {}", r.path, r.auth_hint);
    }
}
