//! ai_count_tokens: the tokens of a text for a deployed model, exact for Qwen models with
//! Qwen's vocabulary (`bailian_core::tokens`), approximated for the others.
//!
//! The vocabulary (2.5 MB, about 4 MB once built) is read on the first count a backend makes
//! for a Qwen model, from `pg_bailian.tokenizer_file` (empty: the share directory's copy), and
//! kept for the backend's life; a changed setting reads the file it names. A file that cannot
//! be read fails the call (ZBV01) rather than falling back to the approximation: a count that
//! claims to be Qwen's must be Qwen's. Nothing is kept after a failure, so installing the file
//! mends the next call.

use super::arg;
use super::calls::MAX_ARGUMENT_BYTES;
use crate::entry::sql_entry;
use crate::{backend, catalog, guc};
use bailian_core::tokens::{self, QwenTokenizer, TokenCount};
use bailian_core::AiError;
use pgrx::{pg_sys, IntoDatum};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

sql_entry!(pg_finfo_pg_bailian_count_tokens, pg_bailian_count_tokens, count_tokens_fn);

/// ai_count_tokens(model_name, content) (STRICT: no argument is NULL here).
fn count_tokens_fn(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let Some(datum) = arg::<pg_sys::Datum>(fcinfo, 1) else { return Ok(None) };
    // SAFETY: argument 1 is a text, live for the call; toast_raw_datum_size reads only its
    // header (or its toast pointer's), so a huge text is refused before it is detoasted.
    let bytes = unsafe { pg_sys::toast_raw_datum_size(datum) };
    if bytes > MAX_ARGUMENT_BYTES {
        return Err(AiError::LimitExceeded {
            what: "argument 2 of ai_count_tokens".into(),
            needed: bytes as u64,
            limit_bytes: MAX_ARGUMENT_BYTES as u64,
        });
    }
    let (Some(model_name), Some(content)) = (arg::<&str>(fcinfo, 0), arg::<&str>(fcinfo, 1)) else {
        return Ok(None);
    };
    let deployment = catalog::load(model_name)?;
    let counted = count(deployment.spec.model_type, content)?;
    // At most one token per byte of a text of at most 32 MB.
    let tokens = i32::try_from(counted.tokens).unwrap_or(i32::MAX);
    Ok(tokens.into_datum())
}

/// The tokens of `text` for a model of `model_type`: exact for the models of Qwen's
/// vocabulary (an error when it cannot be read), else `tokens::approximate`. A cancel stops
/// the count.
pub(crate) fn count(model_type: &str, text: &str) -> Result<TokenCount, AiError> {
    if !tokens::counts_exactly(model_type) {
        return Ok(TokenCount { tokens: tokens::approximate(text) as u64, exact: false });
    }
    let n = qwen()?.count_checked(text, &backend::cancel_pending)?;
    Ok(TokenCount { tokens: n as u64, exact: true })
}

/// The backend's Qwen tokenizer, read from where `pg_bailian.tokenizer_file` says.
pub(crate) fn qwen() -> Result<Arc<QwenTokenizer>, AiError> {
    static LOADED: Mutex<Option<(PathBuf, Arc<QwenTokenizer>)>> = Mutex::new(None);
    let (path, is_default) = guc::tokenizer_file();
    let mut loaded = LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((from, tokenizer)) = loaded.as_ref() {
        if *from == path {
            return Ok(tokenizer.clone());
        }
    }
    *loaded = None;
    let tokenizer = Arc::new(QwenTokenizer::load(&path).map_err(|e| with_setting_hint(e, is_default))?);
    *loaded = Some((path, tokenizer.clone()));
    Ok(tokenizer)
}

/// A failed read, with a hint that names the setting and the default path.
fn with_setting_hint(e: AiError, is_default: bool) -> AiError {
    let AiError::TokenizerUnavailable { file, reason, .. } = e else { return e };
    let default = guc::default_tokenizer_file();
    let hint = if is_default {
        format!(
            "Qwen models' tokens are counted with qwen.tiktoken of the official dashscope Python package, read from \
             {} while pg_bailian.tokenizer_file is empty: install it there (the extension's install scripts do), or \
             have a superuser set pg_bailian.tokenizer_file to a copy of it.",
            default.display()
        )
    } else {
        format!(
            "pg_bailian.tokenizer_file names this file; it must be qwen.tiktoken of the official dashscope Python \
             package. Empty, the setting reads {}.",
            default.display()
        )
    };
    AiError::TokenizerUnavailable { file, reason, hint }
}
