//! Answers worth keeping: what identifies an answer, so that a call asked again (in the same
//! statement, or later through the answer cache) is served without a request, and how a kept
//! answer is written down.
//!
//! An answer is identified by everything that decides it: the deployment that asks, the model
//! type, where the request goes, and the whole request body (model, parameters as they are
//! sent, and the input). Two calls with the same key would send byte-identical requests to the
//! same endpoint under the same deployment, so one answer serves both. The key is a SHA-256 of
//! those parts, each length-prefixed so no two different sets of parts run together into the
//! same bytes. The API key is not part of it (an answer does not depend on who pays for it),
//! and the deployment name is: a role sees only the answers of deployments it may call.
//!
//! `Memo` holds the answers of one statement or job, bounded in bytes; `encode` and `decode`
//! are the cache's stored form.

use crate::meter::Usage;
use crate::providers::{ChatOutcome, ChatRequest, EmbedInput, EmbeddingModel};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub type AnswerKey = [u8; 32];

struct KeyBuilder(Sha256);

impl KeyBuilder {
    fn new(kind: &str) -> KeyBuilder {
        let mut k = KeyBuilder(Sha256::new());
        k.part(b"pg_bailian answer v1");
        k.part(kind.as_bytes());
        k
    }

    fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    fn finish(self) -> AnswerKey {
        self.0.finalize().into()
    }
}

/// The key of a chat request of the deployment `model_name`. serde_json's maps are ordered
/// by key (the crate is built without `preserve_order`), so equal bodies serialize to equal
/// bytes whatever order their parameters were written in.
pub fn chat_key(model_name: &str, request: &ChatRequest) -> AnswerKey {
    let mut k = KeyBuilder::new("chat");
    k.part(model_name.as_bytes())
        .part(request.model_type.as_bytes())
        .part(request.url.as_bytes())
        .part(&[u8::from(request.stream)])
        .part(request.body.to_string().as_bytes());
    k.finish()
}

/// The key of one embedding input of the deployment `model_name`: the request it would be
/// sent in alone (the answer to an input does not depend on the inputs packed beside it).
pub fn embed_key(model_name: &str, model: &EmbeddingModel, input: EmbedInput<'_>) -> AnswerKey {
    let mut k = KeyBuilder::new("embedding");
    k.part(model_name.as_bytes())
        .part(model.model_type.as_bytes())
        .part(model.url.as_bytes())
        .part(model.body(&[input]).to_string().as_bytes());
    k.finish()
}

/// The SHA-256 of `bytes`: what the cache's inbox files carry to tell a whole answer from one
/// cut short.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The key as text: how the cache's rows and files name it.
pub fn hex(key: &AnswerKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key `hex` wrote; None for any other text (a temporary file's name, a foreign id).
pub fn from_hex(s: &str) -> Option<AnswerKey> {
    if s.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// An answer as the provider gave it, before a SQL function made its value of it (a chat
/// outcome serves ai_gen, ai_chat and the task functions alike).
#[derive(Clone, Debug, PartialEq)]
pub enum Kept {
    Chat(ChatOutcome),
    Vector(Vec<f32>),
}

impl Kept {
    /// About what it holds in memory.
    pub fn bytes(&self) -> u64 {
        64 + match self {
            Kept::Chat(o) => {
                o.content.len()
                    + o.reasoning_content.as_ref().map_or(0, String::len)
                    + o.audio_pcm.len()
                    + o.usage.as_ref().map_or(0, |u| u.to_string().len())
                    + o.search_results.as_ref().map_or(0, |s| s.to_string().len())
            }
            Kept::Vector(v) => 4 * v.len(),
        } as u64
    }
}

/// One statement's (or job's) answers, within a byte budget: once it is spent, further
/// answers are not kept (the calls asking them again are sent again), and nothing is evicted,
/// so what a statement was served never depends on what came after.
#[derive(Debug, Default)]
pub struct Memo {
    answers: HashMap<AnswerKey, (Kept, Usage)>,
    bytes: u64,
    budget: u64,
}

impl Memo {
    pub fn new(budget: u64) -> Memo {
        Memo { answers: HashMap::new(), bytes: 0, budget }
    }

    /// The answer kept for `key`, with the tokens its request was billed for.
    pub fn get(&self, key: &AnswerKey) -> Option<&(Kept, Usage)> {
        self.answers.get(key)
    }

    /// Keeps an answer; false when the budget has no room for it.
    pub fn put(&mut self, key: AnswerKey, kept: Kept, usage: Usage) -> bool {
        if self.answers.contains_key(&key) {
            return true;
        }
        let bytes = kept.bytes() + 32;
        if self.bytes + bytes > self.budget {
            return false;
        }
        self.bytes += bytes;
        self.answers.insert(key, (kept, usage));
        true
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

const VECTOR: u8 = b'V';
const CHAT: u8 = b'C';

/// The stored form of an answer and its billed tokens: a tag byte, then a vector as
/// little-endian f32s after its token count, or a chat outcome as JSON.
pub fn encode(kept: &Kept, usage: &Usage) -> Vec<u8> {
    match kept {
        Kept::Vector(v) => {
            let mut out = Vec::with_capacity(9 + 4 * v.len());
            out.push(VECTOR);
            out.extend_from_slice(&usage.prompt_tokens.to_le_bytes());
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
            out
        }
        Kept::Chat(o) => {
            let mut doc = o.to_json();
            if !o.audio_pcm.is_empty() {
                doc["audio_pcm_b64"] = Value::String(base64_encode(&o.audio_pcm));
            }
            let mut out = vec![CHAT];
            out.extend_from_slice(doc.to_string().as_bytes());
            out
        }
    }
}

/// The answer `encode` wrote, or None for bytes it did not write (a damaged entry is a miss).
pub fn decode(bytes: &[u8]) -> Option<(Kept, Usage)> {
    let (&tag, rest) = bytes.split_first()?;
    match tag {
        VECTOR => {
            let tokens = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
            let floats = rest.get(8..)?;
            if floats.len() % 4 != 0 {
                return None;
            }
            let v = floats.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Some((Kept::Vector(v), Usage { prompt_tokens: tokens, total_tokens: tokens, ..Usage::default() }))
        }
        CHAT => {
            let doc: Value = serde_json::from_slice(rest).ok()?;
            let text = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_string);
            let audio_pcm = match doc.get("audio_pcm_b64").and_then(Value::as_str) {
                Some(b) => base64_decode(b)?,
                None => Vec::new(),
            };
            let outcome = ChatOutcome {
                content: text("content")?,
                reasoning_content: text("reasoning_content"),
                finish_reason: text("finish_reason"),
                usage: doc.get("usage").filter(|u| !u.is_null()).cloned(),
                model: text("model"),
                request_id: text("request_id"),
                search_results: doc.get("search_results").cloned(),
                audio_pcm,
            };
            let usage = outcome.tokens();
            Some((Kept::Chat(outcome), usage))
        }
        _ => None,
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Api;
    use serde_json::json;

    fn request(body: Value) -> ChatRequest {
        ChatRequest {
            model_type: "qwen-plus",
            url: "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions".into(),
            body,
            stream: false,
            api: Api::Compatible,
        }
    }

    fn model(dimension: Option<u32>) -> EmbeddingModel {
        EmbeddingModel {
            model_type: "text-embedding-v4",
            api: Api::Compatible,
            url: "https://dashscope.aliyuncs.com/compatible-mode/v1/embeddings".into(),
            dimension,
            choosable: true,
            per_request: 10,
        }
    }

    #[test]
    fn keys_follow_everything_that_decides_an_answer_and_nothing_else() {
        let a = request(
            json!({"model": "qwen-plus", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}),
        );
        // The same parameters written in another order are the same request.
        let b = request(
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "model": "qwen-plus"}),
        );
        assert_eq!(chat_key("chat", &a), chat_key("chat", &b));
        assert_ne!(chat_key("chat", &a), chat_key("other", &a), "another deployment");
        let hotter = request(
            json!({"model": "qwen-plus", "temperature": 1, "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_ne!(chat_key("chat", &a), chat_key("chat", &hotter), "another parameter");
        let mut elsewhere = a.clone();
        elsewhere.url = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions".into();
        assert_ne!(chat_key("chat", &a), chat_key("chat", &elsewhere), "another endpoint");
        let mut streamed = a.clone();
        streamed.stream = true;
        assert_ne!(chat_key("chat", &a), chat_key("chat", &streamed));

        let m = model(Some(1024));
        assert_eq!(embed_key("emb", &m, EmbedInput::Text("x")), embed_key("emb", &m, EmbedInput::Text("x")));
        assert_ne!(embed_key("emb", &m, EmbedInput::Text("x")), embed_key("emb", &m, EmbedInput::Text("y")));
        assert_ne!(
            embed_key("emb", &m, EmbedInput::Text("x")),
            embed_key("emb", &model(Some(512)), EmbedInput::Text("x")),
            "another dimension"
        );
        // Parts cannot run together: ("ab", "c") is not ("a", "bc").
        assert_ne!(embed_key("ab", &m, EmbedInput::Text("c")), embed_key("a", &m, EmbedInput::Text("bc")));
        let key = embed_key("emb", &m, EmbedInput::Text("x"));
        assert_eq!(hex(&key).len(), 64);
        assert_eq!(from_hex(&hex(&key)), Some(key));
        assert_eq!(from_hex("tmp.1.2"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn the_memo_keeps_answers_within_its_budget_and_never_evicts() {
        let mut memo = Memo::new(1000);
        let usage = Usage { prompt_tokens: 3, total_tokens: 3, ..Usage::default() };
        assert!(memo.put([1; 32], Kept::Vector(vec![0.5; 100]), usage));
        assert_eq!(
            memo.get(&[1; 32]).map(|(k, u)| (k.clone(), *u)),
            Some((Kept::Vector(vec![0.5; 100]), usage))
        );
        assert!(!memo.put([2; 32], Kept::Vector(vec![0.5; 200]), usage), "over the budget");
        assert!(memo.get(&[2; 32]).is_none());
        assert!(memo.put([1; 32], Kept::Vector(vec![9.0; 1]), usage), "already kept");
        assert_eq!(memo.get(&[1; 32]).map(|(k, _)| k.clone()), Some(Kept::Vector(vec![0.5; 100])));
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn stored_answers_read_back_as_they_were() {
        let usage = Usage { prompt_tokens: 7, total_tokens: 7, ..Usage::default() };
        let v = Kept::Vector(vec![0.25, -1.5, f32::MIN_POSITIVE]);
        assert_eq!(decode(&encode(&v, &usage)), Some((v, usage)));

        let outcome = ChatOutcome {
            content: "答案 \"quoted\"".into(),
            reasoning_content: Some("because".into()),
            finish_reason: Some("stop".into()),
            usage: Some(json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})),
            model: Some("qwen-plus".into()),
            request_id: Some("r-1".into()),
            search_results: None,
            audio_pcm: vec![1, 2, 3, 4],
        };
        let (kept, u) = decode(&encode(&Kept::Chat(outcome.clone()), &outcome.tokens())).unwrap();
        assert_eq!(kept, Kept::Chat(outcome.clone()));
        assert_eq!((u.prompt_tokens, u.completion_tokens), (5, 2));

        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"X123"), None);
        assert_eq!(decode(&[VECTOR, 1, 2]), None);
        assert_eq!(decode(&[VECTOR, 0, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(decode(b"C{not json"), None);
    }
}
