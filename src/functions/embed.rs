//! ai_embed and ai_embed_image (a URL or data URI, or the image's bytes).

use super::arg;
use crate::backend::{self, Target};
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::providers::{self, EmbedInput};
use bailian_core::registry::Task;
use bailian_core::AiError;
use pgrx::{pg_sys, IntoDatum};

sql_entry!(pg_finfo_pg_bailian_embed, pg_bailian_embed, embed);
sql_entry!(pg_finfo_pg_bailian_embed_image_uri, pg_bailian_embed_image_uri, embed_image_uri);
sql_entry!(pg_finfo_pg_bailian_embed_image_bytes, pg_bailian_embed_image_bytes, embed_image_bytes);

/// One input through the model named `model`, as `function`.
fn embed_one(model: &str, function: &str, input: EmbedInput<'_>) -> Result<Option<pg_sys::Datum>, AiError> {
    let d = catalog::load_for(model, function, &[Task::Embedding])?;
    if matches!(input, EmbedInput::Image(_)) && !d.spec.accepts_images() {
        return Err(AiError::invalid_with_hint(
            format!("{function} cannot use model \"{model}\": {} embeds text only", d.spec.model_type),
            "Deploy a multimodal embedding model (SELECT model_type FROM ai_supported_models() \
             WHERE task = 'embedding' AND 'image' = ANY(inputs)).",
        ));
    }
    let embedding = d.embedding_model();
    let target = Target::new(&d, &d.params)?;
    let mut vectors = backend::run(&target, |client, call| async move {
        client.embed(&call, &embedding, std::slice::from_ref(&input)).await
    })?;
    Ok(vectors.pop().into_datum())
}

fn embed(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(content)) = (arg::<String>(fcinfo, 0), arg::<String>(fcinfo, 1)) else {
        return Ok(None);
    };
    if content.is_empty() {
        return Ok(None);
    }
    embed_one(&model, "ai_embed", EmbedInput::Text(&content))
}

fn embed_image_uri(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(image)) = (arg::<String>(fcinfo, 0), arg::<String>(fcinfo, 1)) else {
        return Ok(None);
    };
    if image.is_empty() {
        return Ok(None);
    }
    if !providers::is_image_ref(&image) {
        let shown: String = image.chars().take(40).collect();
        return Err(AiError::invalid(format!(
            "invalid image \"{}{}\"; allowed: an https:// URL or a data:image/<format>;base64,... URI \
             (or pass the image's bytes as bytea)",
            shown.escape_default(),
            if image.chars().count() > 40 { "..." } else { "" }
        )));
    }
    embed_one(&model, "ai_embed_image", EmbedInput::Image(&image))
}

fn embed_image_bytes(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let (Some(model), Some(bytes)) = (arg::<String>(fcinfo, 0), arg::<Vec<u8>>(fcinfo, 1)) else {
        return Ok(None);
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    let Some(uri) = providers::image_data_uri(&bytes) else {
        let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(AiError::invalid(format!(
            "image bytes are not a JPEG, PNG, BMP, WEBP or TIFF image (they start with {head}); \
             allowed: the bytes of an image file in one of those formats"
        )));
    };
    embed_one(&model, "ai_embed_image", EmbedInput::Image(&uri))
}
