//! ai_embed and ai_embed_image (a URL or data URI, or the image's bytes).

use super::calls::{self, get, Answer, Args, Input, Kernel, Prepared};
use crate::backend::Target;
use crate::catalog;
use crate::entry::sql_entry;
use bailian_core::registry::Task;
use bailian_core::AiError;
use bailian_core::{hologres, limits, providers};
use pgrx::pg_sys;
use std::sync::Arc;

sql_entry!(pg_finfo_pg_bailian_embed, pg_bailian_embed, embed);
sql_entry!(pg_finfo_pg_bailian_embed_image_uri, pg_bailian_embed_image_uri, embed_image_uri);
sql_entry!(pg_finfo_pg_bailian_embed_image_bytes, pg_bailian_embed_image_bytes, embed_image_bytes);
sql_entry!(pg_finfo_pg_bailian_embed_image_format, pg_bailian_embed_image_format, embed_image_format);

/// One input through the model named `model`, as `function`.
fn embed_one(model: &str, function: &str, input: Input) -> Result<Prepared, AiError> {
    let d = catalog::load_for(model, function, &[Task::Embedding])?;
    if matches!(input, Input::Image(_)) && !d.spec.accepts_images() {
        return Err(AiError::invalid_with_hint(
            format!("{function} cannot use model \"{model}\": {} embeds text only", d.spec.model_type),
            "Deploy a multimodal embedding model (SELECT model_type FROM ai_supported_models() \
             WHERE task = 'embedding' AND 'image' = ANY(inputs)).",
        ));
    }
    let model = Arc::new(d.embedding_model());
    Ok(Prepared::Embed { target: Arc::new(Target::new(&d, &d.params)?), model, input })
}

fn embed(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::Embed, fcinfo)
}

fn embed_image_uri(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::EmbedImageUri, fcinfo)
}

fn embed_image_bytes(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::EmbedImageBytes, fcinfo)
}

fn embed_image_format(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    calls::call_now(Kernel::EmbedImageFormat, fcinfo)
}

pub(crate) fn prepare_embed(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(content)) = (args.model_name(), get::<String>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    if content.is_empty() {
        return Ok(Prepared::Done(Answer::Null));
    }
    embed_one(&model, "ai_embed", Input::Text(content))
}

pub(crate) fn prepare_image_uri(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(image)) = (get::<String>(args, 0), get::<String>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    if image.is_empty() {
        return Ok(Prepared::Done(Answer::Null));
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
    embed_one(&model, "ai_embed_image", Input::Image(image))
}

pub(crate) fn prepare_image_bytes(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(bytes)) = (get::<String>(args, 0), get::<Vec<u8>>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    if bytes.is_empty() {
        return Ok(Prepared::Done(Answer::Null));
    }
    let Some(uri) = providers::image_data_uri(&bytes) else {
        let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(AiError::invalid(format!(
            "image bytes are not a JPEG, PNG, BMP, WEBP or TIFF image (they start with {head}); \
             allowed: the bytes of an image file in one of those formats"
        )));
    };
    embed_one(&model, "ai_embed_image", Input::Image(uri))
}

/// ai_embed(model_name, image bytea, file_format), Hologres' form: the format is named, and
/// bytes that are not an image of that format are refused rather than sent.
pub(crate) fn prepare_image_format(args: &dyn Args) -> Result<Prepared, AiError> {
    let (Some(model), Some(bytes)) = (get::<String>(args, 0), get::<Vec<u8>>(args, 1)) else {
        return Ok(Prepared::Done(Answer::Null));
    };
    let Some(file_format) = get::<String>(args, 2) else {
        return Err(AiError::NullArgument {
            message: "file_format of ai_embed must not be NULL: name the image's format, e.g. 'jpg' or 'png'"
                .into(),
        });
    };
    let format = hologres::image_format(&file_format)?;
    if bytes.is_empty() {
        return Ok(Prepared::Done(Answer::Null));
    }
    match providers::image_format(&bytes) {
        Some(found) if found == format => {}
        Some(found) => {
            return Err(AiError::invalid(format!(
                "the image bytes are a {} image, not {} as file_format '{}' says; pass file_format => '{}'",
                found.to_uppercase(),
                format.to_uppercase(),
                limits::shown(&file_format),
                if found == "jpeg" { "jpg" } else { found }
            )))
        }
        None => {
            let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(AiError::invalid(format!(
                "the image bytes are not a {} image as file_format '{}' says (they start with {head}, no image format pg_bailian knows)",
                format.to_uppercase(),
                limits::shown(&file_format)
            )));
        }
    }
    embed_one(&model, "ai_embed", Input::Image(providers::image_data_uri_as(format, &bytes)))
}
