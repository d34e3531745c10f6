//! Every scalar AI function, split where the network starts.
//!
//! `Kernel::prepare` does all of a call that needs PostgreSQL (decoding the arguments, loading
//! the deployment, checking params and building the request) and returns a `Prepared`: an
//! answer known without asking (NULL in, NULL out), or a request that is plain Rust data. The
//! function called row by row (`call_now`) and the batching node of `crate::executor` (which
//! sends many rows' requests at once) both go through `prepare` and `Finish`, so a row gets
//! the same value, or the same error, whichever way it runs.

use super::{defaults, embed, generate, tasks};
use crate::answers;
use crate::backend::{self, Target};
use bailian_core::client::{Call, Client};
use bailian_core::providers::{wav, ChatOutcome, ChatRequest, EmbedInput, EmbeddingModel};
use bailian_core::structured::Format;
use bailian_core::tasks::{self as task, Ask, TaskValue};
use bailian_core::AiError;
use pgrx::datum::FromDatum;
use pgrx::{pg_sys, IntoDatum, JsonB};
use serde_json::{json, Value};
use std::sync::Arc;

/// The scalar AI functions (their C symbols are in `sql/functions.sql`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Gen,
    GenDefault,
    Translate,
    Chat,
    GenAudio,
    Embed,
    EmbedImageUri,
    EmbedImageBytes,
    GenStructured,
    Task(task::TaskFn),
    Similarity,
    /// ai_gen(model_name, prompt object, params).
    GenPrompt,
    /// ai_gen(prompt object), with ai_gen's default model.
    GenPromptDefault,
    /// ai_embed(model_name, image bytea, file_format).
    EmbedImageFormat,
    /// A model-less form: the function with its default model as the first argument.
    ModelLess(ModelLess),
}

/// The functions whose model-less forms take the model from `catalog::default_model` (the
/// model-less ai_gen(prompt) is `Kernel::GenDefault`, older than these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelLess {
    Embed,
    Translate,
    Task(task::TaskFn),
    Similarity,
}

impl ModelLess {
    /// The form with a model_name.
    pub fn with_model(self) -> Kernel {
        match self {
            ModelLess::Embed => Kernel::Embed,
            ModelLess::Translate => Kernel::Translate,
            ModelLess::Task(t) => Kernel::Task(t),
            ModelLess::Similarity => Kernel::Similarity,
        }
    }

    /// The arguments of the model-less form (all of variable length).
    fn arity(self) -> usize {
        match self {
            ModelLess::Embed
            | ModelLess::Task(task::TaskFn::Summarize | task::TaskFn::FixGrammar | task::TaskFn::Sentiment) => {
                1
            }
            ModelLess::Translate | ModelLess::Task(_) | ModelLess::Similarity => 2,
        }
    }
}

/// The arguments of a model-less call as the form with a model_name reads them: the default
/// model first (through `model_name`, so no datum is made per row), then the call's own, then the defaults of the arguments the model-less form
/// does not have (ai_summarize's max_words 50; ai_translate's params NULL).
struct WithModel<'a> {
    form: ModelLess,
    model: String,
    args: &'a dyn Args,
}

impl Args for WithModel<'_> {
    fn datum(&self, n: usize) -> Option<pg_sys::Datum> {
        match n {
            // The model is read through model_name(), never as a datum.
            0 => None,
            n if n <= self.form.arity() => self.args.datum(n - 1),
            2 if self.form == ModelLess::Task(task::TaskFn::Summarize) => 50i32.into_datum(),
            _ => None,
        }
    }

    fn model_name(&self) -> Option<String> {
        Some(self.model.clone())
    }
}

type Entry = unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum;

/// Largest argument an AI call takes (a prompt, a text to embed, an image, a messages or
/// params document): about 8M tokens, more than any Bailian model reads in one request.
pub const MAX_ARGUMENT_BYTES: usize = 32 << 20;

impl Kernel {
    const ALL: [(Kernel, Entry); 30] = [
        (Kernel::Gen, generate::pg_bailian_gen),
        (Kernel::GenDefault, generate::pg_bailian_gen_default),
        (Kernel::Translate, generate::pg_bailian_translate),
        (Kernel::Chat, generate::pg_bailian_chat),
        (Kernel::GenAudio, generate::pg_bailian_gen_audio),
        (Kernel::Embed, embed::pg_bailian_embed),
        (Kernel::EmbedImageUri, embed::pg_bailian_embed_image_uri),
        (Kernel::EmbedImageBytes, embed::pg_bailian_embed_image_bytes),
        (Kernel::GenStructured, tasks::pg_bailian_gen_structured),
        (Kernel::Task(task::TaskFn::Classify), tasks::pg_bailian_classify),
        (Kernel::Task(task::TaskFn::Extract), tasks::pg_bailian_extract),
        (Kernel::Task(task::TaskFn::Mask), tasks::pg_bailian_mask),
        (Kernel::Task(task::TaskFn::Summarize), tasks::pg_bailian_summarize),
        (Kernel::Task(task::TaskFn::FixGrammar), tasks::pg_bailian_fix_grammar),
        (Kernel::Task(task::TaskFn::Sentiment), tasks::pg_bailian_sentiment),
        (Kernel::Task(task::TaskFn::Rank), tasks::pg_bailian_rank),
        (Kernel::Similarity, tasks::pg_bailian_similarity),
        (Kernel::GenPrompt, generate::pg_bailian_gen_prompt),
        (Kernel::GenPromptDefault, generate::pg_bailian_gen_prompt_default),
        (Kernel::EmbedImageFormat, embed::pg_bailian_embed_image_format),
        (Kernel::ModelLess(ModelLess::Embed), defaults::pg_bailian_embed_default),
        (Kernel::ModelLess(ModelLess::Translate), defaults::pg_bailian_translate_default),
        (Kernel::ModelLess(ModelLess::Task(task::TaskFn::Classify)), defaults::pg_bailian_classify_default),
        (Kernel::ModelLess(ModelLess::Task(task::TaskFn::Extract)), defaults::pg_bailian_extract_default),
        (Kernel::ModelLess(ModelLess::Task(task::TaskFn::Mask)), defaults::pg_bailian_mask_default),
        (Kernel::ModelLess(ModelLess::Task(task::TaskFn::Summarize)), defaults::pg_bailian_summarize_default),
        (
            Kernel::ModelLess(ModelLess::Task(task::TaskFn::FixGrammar)),
            defaults::pg_bailian_fix_grammar_default,
        ),
        (Kernel::ModelLess(ModelLess::Task(task::TaskFn::Sentiment)), defaults::pg_bailian_sentiment_default),
        (Kernel::ModelLess(ModelLess::Task(task::TaskFn::Rank)), defaults::pg_bailian_rank_default),
        (Kernel::ModelLess(ModelLess::Similarity), defaults::pg_bailian_similarity_default),
    ];

    /// The kernel whose entry point is at `address`: a function is ours by the code it runs,
    /// not by its name, so a look-alike `ai_gen` in another schema is never taken for it.
    pub fn at_address(address: usize) -> Option<Kernel> {
        Self::ALL.iter().find(|(_, entry)| *entry as usize == address).map(|(k, _)| *k)
    }

    /// The kernel of the function `funcid`, if it is one of ours (found by its entry point).
    pub fn of_function(funcid: pg_sys::Oid) -> Option<Kernel> {
        let mut info = pg_sys::FmgrInfo::default();
        // SAFETY: fmgr_info looks the function up (and loads its library if it is a C
        // function); it raises an error only for a function that does not exist, and callers
        // pass the OID of a function a plan calls.
        unsafe { pg_sys::fmgr_info(funcid, &mut info) };
        info.fn_addr.and_then(|f| Kernel::at_address(f as usize))
    }

    pub fn sql_name(self) -> &'static str {
        match self {
            Kernel::Gen | Kernel::GenDefault | Kernel::GenPrompt | Kernel::GenPromptDefault => "ai_gen",
            Kernel::EmbedImageFormat => "ai_embed",
            Kernel::ModelLess(m) => m.with_model().sql_name(),
            Kernel::Translate => "ai_translate",
            Kernel::Chat => "ai_chat",
            Kernel::GenAudio => "ai_gen_audio",
            Kernel::Embed => "ai_embed",
            Kernel::EmbedImageUri | Kernel::EmbedImageBytes => "ai_embed_image",
            Kernel::GenStructured => "ai_gen_structured",
            Kernel::Task(t) => t.sql_name(),
            Kernel::Similarity => "ai_similarity",
        }
    }

    /// The arguments of variable length (text, bytea, jsonb, arrays), by position: all of
    /// them but ai_summarize's max_words.
    fn varlena_args(self) -> &'static [usize] {
        match self {
            Kernel::GenDefault | Kernel::GenPromptDefault => &[0],
            Kernel::ModelLess(m) if m.arity() == 1 => &[0],
            Kernel::ModelLess(_) => &[0, 1],
            Kernel::GenPrompt | Kernel::EmbedImageFormat => &[0, 1, 2],
            Kernel::Embed
            | Kernel::EmbedImageUri
            | Kernel::EmbedImageBytes
            | Kernel::Task(task::TaskFn::Summarize | task::TaskFn::FixGrammar | task::TaskFn::Sentiment) => {
                &[0, 1]
            }
            Kernel::Gen | Kernel::Chat | Kernel::GenAudio | Kernel::Similarity | Kernel::Task(_) => {
                &[0, 1, 2]
            }
            Kernel::Translate => &[0, 1, 2, 3],
            Kernel::GenStructured => &[0, 1, 2, 3, 4],
        }
    }

    /// The bytes of the call's arguments as they will be read (decompressed), refused past
    /// `MAX_ARGUMENT_BYTES` each before anything is copied out of them: a request holds its
    /// arguments several times over (decoded, in the JSON body, serialized).
    pub fn argument_bytes(self, args: &dyn Args) -> Result<usize, AiError> {
        let mut total = 0;
        for &n in self.varlena_args() {
            let Some(datum) = args.datum(n) else { continue };
            // SAFETY: argument n is of a varlena type (see varlena_args) and live for the call
            // or the row; toast_raw_datum_size reads only its header (or its toast pointer's).
            let bytes = unsafe { pg_sys::toast_raw_datum_size(datum) };
            if bytes > MAX_ARGUMENT_BYTES {
                return Err(AiError::LimitExceeded {
                    what: format!("argument {} of {}", n + 1, self.sql_name()),
                    needed: bytes as u64,
                    limit_bytes: MAX_ARGUMENT_BYTES as u64,
                });
            }
            total += bytes;
        }
        Ok(total)
    }

    pub fn prepare(self, args: &dyn Args) -> Result<Prepared, AiError> {
        self.argument_bytes(args)?;
        crate::backend::as_function(self.sql_name(), || self.prepare_checked(args))
    }

    fn prepare_checked(self, args: &dyn Args) -> Result<Prepared, AiError> {
        match self {
            Kernel::ModelLess(form) => {
                // NULL in, NULL out, without looking for a model (as the forms with a model
                // give NULL before loading theirs).
                let null_gives_null = match form {
                    ModelLess::Task(task::TaskFn::Rank) | ModelLess::Similarity => 2,
                    _ => 1,
                };
                if (0..null_gives_null).any(|n| args.datum(n).is_none()) {
                    return Ok(Prepared::Done(Answer::Null));
                }
                let model = crate::catalog::default_model(self.sql_name())?;
                form.with_model().prepare_checked(&WithModel { form, model, args })
            }
            Kernel::GenPrompt => generate::prepare_gen_prompt(args),
            Kernel::GenPromptDefault => generate::prepare_gen_prompt_default(args),
            Kernel::EmbedImageFormat => embed::prepare_image_format(args),
            Kernel::Gen => generate::prepare_gen(args),
            Kernel::GenDefault => generate::prepare_gen_default(args),
            Kernel::Translate => generate::prepare_translate(args),
            Kernel::Chat => generate::prepare_chat(args),
            Kernel::GenAudio => generate::prepare_gen_audio(args),
            Kernel::Embed => embed::prepare_embed(args),
            Kernel::EmbedImageUri => embed::prepare_image_uri(args),
            Kernel::EmbedImageBytes => embed::prepare_image_bytes(args),
            Kernel::GenStructured => tasks::prepare_gen_structured(args),
            Kernel::Task(t) => tasks::prepare_task(t, args),
            Kernel::Similarity => tasks::prepare_similarity(args),
        }
    }
}

/// A call's arguments, from an fmgr call or from a row the batching node read.
pub trait Args {
    /// Argument `n`, or None for SQL NULL.
    fn datum(&self, n: usize) -> Option<pg_sys::Datum>;

    /// The model name of the forms with a model_name (argument 0), or None for SQL NULL; a
    /// model-less call gives its default model here.
    fn model_name(&self) -> Option<String> {
        // SAFETY: argument 0 of every form with a model_name is text, live for the call or
        // the row.
        self.datum(0).and_then(|d| unsafe { <String as FromDatum>::from_datum(d, false) })
    }
}

/// Argument `n` as `T`, or None for SQL NULL.
pub fn get<T: FromDatum>(args: &dyn Args, n: usize) -> Option<T> {
    // SAFETY: every kernel reads only the arguments its CREATE FUNCTION declares, with their
    // declared (non-polymorphic) types, and the datum is live for the call or the row.
    args.datum(n).and_then(|d| unsafe { T::from_datum(d, false) })
}

/// The arguments of a running fmgr call.
pub struct FcArgs(pub pg_sys::FunctionCallInfo);

impl Args for FcArgs {
    fn datum(&self, n: usize) -> Option<pg_sys::Datum> {
        // SAFETY: fcinfo is the live call info of the running function.
        unsafe { pgrx::fcinfo::pg_getarg_datum(self.0, n) }
    }
}

/// One input to an embedding model, owned.
#[derive(Clone, Debug)]
pub enum Input {
    Text(String),
    Image(String),
}

impl Input {
    pub fn as_embed_input(&self) -> EmbedInput<'_> {
        match self {
            Input::Text(t) => EmbedInput::Text(t),
            Input::Image(i) => EmbedInput::Image(i),
        }
    }
}

/// A call ready to go: nothing in it needs PostgreSQL any more.
pub enum Prepared {
    /// Known without asking (a NULL or empty input).
    Done(Answer),
    Chat {
        target: Arc<Target>,
        request: ChatRequest,
        finish: Finish,
    },
    /// One input; the batching node packs several of one model into a request.
    Embed {
        target: Arc<Target>,
        model: Arc<EmbeddingModel>,
        input: Input,
    },
    /// ai_rank on a rerank model: one document's relevance to the query.
    Rerank {
        target: Arc<Target>,
        url: String,
        query: String,
        document: String,
    },
    /// ai_similarity: two inputs in one request, answered with their cosine.
    Similarity {
        target: Arc<Target>,
        model: Arc<EmbeddingModel>,
        a: String,
        b: String,
    },
}

/// What a call gives for a row whose inference failed (`AiError::is_row_failure`); other
/// errors always raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// The error (pg_bailian.on_error = 'error', on_error => 'abort').
    Raise,
    /// NULL and a WARNING naming the error (pg_bailian.on_error = 'null').
    Warn,
    /// `{"error": {...}}` in place of the value (ai_gen_structured's default).
    Capture,
    /// NULL, silently (on_error => 'skip').
    Skip,
}

impl OnError {
    /// This session's `pg_bailian.on_error`.
    pub fn session() -> OnError {
        if crate::guc::on_error_null() {
            OnError::Warn
        } else {
            OnError::Raise
        }
    }

    /// A row's result under this policy. Plain Rust: the WARNING is raised when the answer
    /// becomes a datum, on the backend's thread.
    pub fn settle(self, result: Result<Answer, AiError>) -> Result<Answer, AiError> {
        match result {
            // ai_estimate: counted, not sent; the statement goes on as if the model had
            // nothing to say.
            Err(AiError::DryRun) => Ok(Answer::Null),
            Err(e) if e.is_row_failure() => match self {
                OnError::Raise => Err(e),
                OnError::Warn => Ok(Answer::Warned(e)),
                OnError::Capture => Ok(Answer::Json(captured(&e))),
                OnError::Skip => Ok(Answer::Null),
            },
            other => other,
        }
    }
}

/// `{"error": {"sqlstate", "message", "detail", "hint"}}`: what on_error => 'capture' returns.
fn captured(e: &AiError) -> Value {
    json!({"error": {"sqlstate": e.sqlstate(), "message": e.to_string(), "detail": e.detail(), "hint": e.hint()}})
}

/// What a chat call's SQL function returns of the answer.
#[derive(Clone, Debug)]
pub enum Finish {
    /// The text (ai_gen, ai_translate).
    Text,
    /// The whole outcome as jsonb (ai_chat).
    Json,
    /// The spoken answer as a WAV file (ai_gen_audio).
    Audio { model: String },
    /// ai_gen_structured: the answer parsed and checked against the format; `on_error` is
    /// its argument (None: pg_bailian.on_error).
    Structured { model: String, format: Arc<Format>, on_error: Option<OnError> },
    /// A task function's value, read from its checked answer.
    Task { model: String, ask: Arc<Ask> },
}

impl Finish {
    /// What this finish makes of an answer, as far as it can differ between two calls of one
    /// call site with the same request: every argument but ai_gen_structured's on_error is
    /// in the request.
    pub fn class(&self) -> u8 {
        match self {
            Finish::Text => 0,
            Finish::Json => 1,
            Finish::Audio { .. } => 2,
            Finish::Task { .. } => 3,
            Finish::Structured { on_error: None, .. } => 4,
            Finish::Structured { on_error: Some(OnError::Raise), .. } => 5,
            Finish::Structured { on_error: Some(OnError::Warn), .. } => 6,
            Finish::Structured { on_error: Some(OnError::Capture), .. } => 7,
            Finish::Structured { on_error: Some(OnError::Skip), .. } => 8,
        }
    }

    /// A chat call's row result, under its own on_error or the session's.
    pub fn settle(&self, target: &Target, out: Result<ChatOutcome, AiError>) -> Result<Answer, AiError> {
        let on_error = match self {
            Finish::Structured { on_error: Some(explicit), .. } => *explicit,
            _ => target.on_error(),
        };
        on_error.settle(out.and_then(|out| self.apply(out)))
    }

    pub fn apply(&self, out: ChatOutcome) -> Result<Answer, AiError> {
        match self {
            Finish::Text => Ok(Answer::Text(out.content)),
            Finish::Json => Ok(Answer::Json(out.to_json())),
            Finish::Audio { model } => {
                if out.audio_pcm.is_empty() {
                    return Err(AiError::MalformedResponse {
                        model: model.clone(),
                        detail: "the answer carried no audio (no choices[0].delta.audio.data in the stream)"
                            .into(),
                    });
                }
                Ok(Answer::Bytes(wav::wav_from_pcm16(&out.audio_pcm, wav::OMNI_SAMPLE_RATE)?))
            }
            Finish::Structured { model, format, .. } => format.check(model, &out.content).map(Answer::Json),
            Finish::Task { model, ask } => {
                Ok(match ask.answer(model, &out.content, backend::cancel_pending)? {
                    TaskValue::Text(t) => Answer::Text(t),
                    TaskValue::Json(v) => Answer::Json(v),
                    TaskValue::Float(f) => Answer::Float(f),
                })
            }
        }
    }
}

/// A call's result, before it becomes a Datum.
#[derive(Clone, Debug)]
pub enum Answer {
    Null,
    Text(String),
    Json(Value),
    Vector(Vec<f32>),
    Bytes(Vec<u8>),
    Float(f64),
    /// NULL, with a WARNING naming this error (pg_bailian.on_error = 'null').
    Warned(AiError),
}

impl Answer {
    /// About what the answer holds in memory, for the AI Batch node's budget.
    pub fn bytes(&self) -> usize {
        fn json(v: &Value) -> usize {
            16 + match v {
                Value::String(s) => s.len(),
                Value::Array(a) => a.iter().map(json).sum(),
                Value::Object(o) => o.iter().map(|(k, v)| k.len() + json(v)).sum(),
                Value::Null | Value::Bool(_) | Value::Number(_) => 0,
            }
        }
        match self {
            Answer::Text(t) => t.len(),
            Answer::Json(v) => json(v),
            Answer::Vector(v) => 4 * v.len(),
            Answer::Bytes(b) => b.len(),
            Answer::Null | Answer::Float(_) | Answer::Warned(_) => 0,
        }
    }

    /// The Datum, allocated in the current memory context.
    pub fn into_datum(self) -> Option<pg_sys::Datum> {
        match self {
            Answer::Null => None,
            Answer::Text(t) => t.into_datum(),
            Answer::Json(v) => JsonB(v).into_datum(),
            Answer::Vector(v) => Some(float4_array(&v)),
            Answer::Bytes(b) => b.into_datum(),
            Answer::Float(f) => f.into_datum(),
            Answer::Warned(e) => {
                crate::entry::warn(e);
                None
            }
        }
    }
}

/// A `real[]` of `v`, built by PostgreSQL in one call (an element at a time through the
/// generic array builder costs a guarded call per element: most of a cached embedding's time).
pub fn float4_array(v: &[f32]) -> pg_sys::Datum {
    let mut elems: Vec<pg_sys::Datum> = v.iter().map(|f| pg_sys::Datum::from(f.to_bits())).collect();
    // SAFETY: elems holds v.len() float4 datums (by value, 4 bytes, int-aligned, as
    // pg_type says of float4); construct_array copies them into a new array in the current
    // memory context and raises only for an impossible size (1 GB), which v cannot reach:
    // an answer is at most pg_bailian.max_response_size.
    let array = unsafe {
        pg_sys::construct_array(
            elems.as_mut_ptr(),
            elems.len() as i32,
            pg_sys::FLOAT4OID,
            4,
            true,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        )
    };
    pg_sys::Datum::from(array)
}

/// ai_similarity's request and answer: the cosine of the two texts' embeddings (NULL for a
/// zero vector, which no model returns). Row by row and the AI Batch node both call this.
pub async fn similarity(
    client: &Client,
    call: &Call<'_>,
    model: &EmbeddingModel,
    a: &str,
    b: &str,
) -> Result<Answer, AiError> {
    let vectors = bailian_core::client::embed_pair(client, call, model, a, b).await?;
    Ok(match vectors.as_slice() {
        [a, b] => task::cosine(a, b).map_or(Answer::Null, Answer::Float),
        _ => Answer::Null,
    })
}

/// ai_rank's request and answer on a rerank model: the one document's relevance score.
pub async fn rerank(
    client: &Client,
    call: &Call<'_>,
    model_type: &str,
    url: &str,
    query: &str,
    document: &str,
) -> Result<Answer, AiError> {
    let scores = client.rerank(call, model_type, url, query, &[document]).await?;
    Ok(scores.first().map_or(Answer::Null, |s| Answer::Float(*s)))
}

/// Row by row: prepare, send, wait (servicing interrupts), answer.
pub fn call_now(kernel: Kernel, fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let answer = match kernel.prepare(&FcArgs(fcinfo))? {
        Prepared::Done(answer) => answer,
        Prepared::Chat { target, request, finish } => {
            let key = answers::chat_key(&target, &request);
            let batched = key.as_ref().and_then(|k| answers::batch::chat(&target, k, &request));
            let out = match batched
                .map(Some)
                .unwrap_or_else(|| answers::recall_chat(&target, key.as_ref()).map(Ok))
            {
                Some(out) => out,
                None => {
                    let request = &request;
                    let out =
                        backend::run(
                            &target,
                            |client, call| async move { client.chat(&call, request).await },
                        );
                    answers::keep_chat(&target, key, &out);
                    out
                }
            };
            finish.settle(&target, out)?
        }
        Prepared::Embed { target, model, input } => {
            let key = answers::embed_key(&target, &model, &input);
            let batched = key.as_ref().and_then(|k| answers::batch::vector(&target, k, &model, &input));
            let vector = match batched
                .map(Some)
                .unwrap_or_else(|| answers::recall_vector(&target, key.as_ref()).map(Ok))
            {
                Some(v) => v.map(Some),
                None => {
                    let (model, input) = (&model, &input);
                    let vectors = backend::run(&target, |client, call| async move {
                        client.embed(&call, model, &[input.as_embed_input()]).await
                    });
                    let vector = vectors.map(|mut v| v.pop());
                    if let Ok(Some(v)) = &vector {
                        answers::keep_vector(&target, key, model, input, v);
                    }
                    vector
                }
            };
            target.on_error().settle(vector.map(|v| v.map_or(Answer::Null, Answer::Vector)))?
        }
        Prepared::Rerank { target, .. } | Prepared::Similarity { target, .. } if answers::batch::active() => {
            return Err(answers::batch::unbatchable(&target));
        }
        Prepared::Rerank { target, url, query, document } => {
            let model_type = target.deployment().spec.model_type;
            let score = backend::run(&target, |client, call| async move {
                rerank(client, &call, model_type, &url, &query, &document).await
            });
            target.on_error().settle(score)?
        }
        Prepared::Similarity { target, model, a, b } => {
            let cosine = backend::run(&target, |client, call| async move {
                similarity(client, &call, &model, &a, &b).await
            });
            target.on_error().settle(cosine)?
        }
    };
    Ok(answer.into_datum())
}
