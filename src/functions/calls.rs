//! Every scalar AI function, split where the network starts.
//!
//! `Kernel::prepare` does all of a call that needs PostgreSQL (decoding the arguments, loading
//! the deployment, checking params and building the request) and returns a `Prepared`: an
//! answer known without asking (NULL in, NULL out), or a request that is plain Rust data. The
//! function called row by row (`call_now`) and the batching node of `crate::executor` (which
//! sends many rows' requests at once) both go through `prepare` and `Finish`, so a row gets
//! the same value, or the same error, whichever way it runs.

use super::{embed, generate};
use crate::backend::{self, Target};
use bailian_core::providers::{wav, ChatOutcome, ChatRequest, EmbedInput, EmbeddingModel};
use bailian_core::AiError;
use pgrx::datum::FromDatum;
use pgrx::{pg_sys, IntoDatum, JsonB};
use serde_json::Value;
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
}

type Entry = unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum;

impl Kernel {
    const ALL: [(Kernel, Entry); 8] = [
        (Kernel::Gen, generate::pg_bailian_gen),
        (Kernel::GenDefault, generate::pg_bailian_gen_default),
        (Kernel::Translate, generate::pg_bailian_translate),
        (Kernel::Chat, generate::pg_bailian_chat),
        (Kernel::GenAudio, generate::pg_bailian_gen_audio),
        (Kernel::Embed, embed::pg_bailian_embed),
        (Kernel::EmbedImageUri, embed::pg_bailian_embed_image_uri),
        (Kernel::EmbedImageBytes, embed::pg_bailian_embed_image_bytes),
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
            Kernel::Gen | Kernel::GenDefault => "ai_gen",
            Kernel::Translate => "ai_translate",
            Kernel::Chat => "ai_chat",
            Kernel::GenAudio => "ai_gen_audio",
            Kernel::Embed => "ai_embed",
            Kernel::EmbedImageUri | Kernel::EmbedImageBytes => "ai_embed_image",
        }
    }

    pub fn prepare(self, args: &dyn Args) -> Result<Prepared, AiError> {
        match self {
            Kernel::Gen => generate::prepare_gen(args),
            Kernel::GenDefault => generate::prepare_gen_default(args),
            Kernel::Translate => generate::prepare_translate(args),
            Kernel::Chat => generate::prepare_chat(args),
            Kernel::GenAudio => generate::prepare_gen_audio(args),
            Kernel::Embed => embed::prepare_embed(args),
            Kernel::EmbedImageUri => embed::prepare_image_uri(args),
            Kernel::EmbedImageBytes => embed::prepare_image_bytes(args),
        }
    }
}

/// A call's arguments, from an fmgr call or from a row the batching node read.
pub trait Args {
    /// Argument `n`, or None for SQL NULL.
    fn datum(&self, n: usize) -> Option<pg_sys::Datum>;
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
}

impl Finish {
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
                Ok(Answer::Bytes(wav::wav_from_pcm16(&out.audio_pcm, wav::OMNI_SAMPLE_RATE)))
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
}

impl Answer {
    /// The Datum, allocated in the current memory context.
    pub fn into_datum(self) -> Option<pg_sys::Datum> {
        match self {
            Answer::Null => None,
            Answer::Text(t) => t.into_datum(),
            Answer::Json(v) => JsonB(v).into_datum(),
            Answer::Vector(v) => v.into_datum(),
            Answer::Bytes(b) => b.into_datum(),
        }
    }
}

/// Row by row: prepare, send, wait (servicing interrupts), answer.
pub fn call_now(kernel: Kernel, fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let answer = match kernel.prepare(&FcArgs(fcinfo))? {
        Prepared::Done(answer) => answer,
        Prepared::Chat { target, request, finish } => {
            let out =
                backend::run(&target, |client, call| async move { client.chat(&call, &request).await })?;
            finish.apply(out)?
        }
        Prepared::Embed { target, model, input } => {
            let mut vectors = backend::run(&target, |client, call| async move {
                client.embed(&call, &model, &[input.as_embed_input()]).await
            })?;
            vectors.pop().map_or(Answer::Null, Answer::Vector)
        }
    };
    Ok(answer.into_datum())
}
