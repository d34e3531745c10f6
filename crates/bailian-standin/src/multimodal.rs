//! DashScope's native multimodal embedding
//! (`POST /api/v1/services/embeddings/multimodal-embedding/multimodal-embedding`).
//!
//! Source: the multimodal-embedding API reference (request, response, per-model dimensions,
//! limits and formats; videos by URL only) and the DashScope SDK
//! (`dashscope/embeddings/multimodal_embedding.py`: options go in `parameters`). Refusals
//! use the native shape `{"code", "message", "request_id"}`; their wording is not documented
//! except where a comment says so.

use crate::b64;
use crate::embedding::{embedding_for, image_embedding_for};
use crate::errors::{invalid, Api};
use crate::models::{self, MultimodalModel};
use crate::request::Outcome;
use crate::tokens::approx_tokens;
use serde_json::{json, Value};

/// Observed for a model sent to a native path that does not serve it (dify-official-plugins
/// #2236); what a text embedding model gets here is not documented, and this is the likeliest.
pub(crate) const URL_ERROR: &str =
    "url error, please check url！ For details, see: https://help.aliyun.com/zh/model-studio/error-code#error-url";

fn contents(body: &Value) -> &[Value] {
    body.pointer("/input/contents").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// What the request log and scripts key on: each text, and `image:`/`video:` with the first
/// 40 characters of the URL or data URI.
pub(crate) fn inputs_of(body: &Value) -> Vec<String> {
    let head = |s: &str| s.chars().take(40).collect::<String>();
    contents(body)
        .iter()
        .filter_map(|c| {
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                Some(t.to_string())
            } else if let Some(i) = c.get("image").and_then(Value::as_str) {
                Some(format!("image:{}", head(i)))
            } else {
                c.get("video").and_then(Value::as_str).map(|v| format!("video:{}", head(v)))
            }
        })
        .collect()
}

enum Item {
    Text(String),
    Image(Vec<u8>),
    Video(String),
}

pub(crate) fn embed(body: &Value, model: &str, id: u64) -> Outcome {
    let bad = |m: &str| invalid(Api::Native, m, id);
    let Some(spec) = models::multimodal(model) else {
        if models::is_text_embedding(model) {
            return bad(URL_ERROR);
        }
        return bad(crate::errors::UNKNOWN_MODEL);
    };
    if body.pointer("/input/contents").is_none() {
        return crate::errors::empty_input(id);
    }
    let items = contents(body);
    if items.is_empty() {
        return bad("input.contents must be a non-empty array.");
    }
    let dim = match body.pointer("/parameters/dimension").filter(|v| !v.is_null()) {
        None => spec.default_dimension,
        Some(d) => match d.as_u64().map(|d| d as usize).filter(|d| spec.dimensions.contains(d)) {
            Some(d) => d,
            None => return bad(&format!("parameters.dimension should be one of {:?}.", spec.dimensions)),
        },
    };
    let fuse = match body.pointer("/parameters/enable_fusion") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) if spec.fuses => true,
        Some(_) => return bad(&format!("parameters.enable_fusion is not supported by {model}.")),
    };
    let mut parsed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match parse_item(item, &spec) {
            Ok(p) => parsed.push(p),
            Err(m) => return bad(&format!("input.contents[{i}]: {m}")),
        }
    }
    let count = |f: fn(&Item) -> bool| parsed.iter().filter(|i| f(i)).count();
    let (texts, images, videos) = (
        count(|i| matches!(i, Item::Text(_))),
        count(|i| matches!(i, Item::Image(_))),
        count(|i| matches!(i, Item::Video(_))),
    );
    if parsed.len() > spec.max_contents
        || texts > spec.max_texts
        || images > spec.max_images
        || videos > spec.max_videos
    {
        return bad(&format!(
            "{model} takes at most {} contents per request: {} texts, {} images, {} videos.",
            spec.max_contents, spec.max_texts, spec.max_images, spec.max_videos
        ));
    }
    let vectors: Vec<(Vec<f32>, &str)> = parsed
        .iter()
        .map(|item| match item {
            Item::Text(t) => (embedding_for(t, dim), "text"),
            Item::Image(b) => (image_embedding_for(b, dim), "image"),
            Item::Video(u) => (image_embedding_for(u.as_bytes(), dim), "video"),
        })
        .collect();
    let embeddings: Vec<Value> = if fuse {
        // One vector for all contents: their normalized sum. The item's `type` for a fused
        // vector is not documented; "fusion" is a guess.
        let mut sum = vec![0f32; dim];
        for (v, _) in &vectors {
            sum.iter_mut().zip(v).for_each(|(s, x)| *s += x);
        }
        let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        vec![
            json!({"index": 0, "embedding": sum.iter().map(|x| x / norm).collect::<Vec<_>>(), "type": "fusion"}),
        ]
    } else {
        vectors
            .into_iter()
            .enumerate()
            .map(|(i, (v, t))| json!({"index": i, "embedding": v, "type": t}))
            .collect()
    };
    let text_tokens: u64 =
        parsed.iter().map(|i| if let Item::Text(t) = i { approx_tokens(t) } else { 0 }).sum();
    // The names inside `usage` are not confirmed by the docs.
    let image_tokens = images as u64 * 256;
    Outcome::Respond {
        status: 200,
        body: json!({
            "output": {"embeddings": embeddings},
            "usage": {"input_tokens": text_tokens + image_tokens, "image_tokens": image_tokens, "image_count": images},
            "request_id": crate::errors::request_id(id),
        }),
        retry_after: None,
    }
}

fn parse_item(item: &Value, spec: &MultimodalModel) -> Result<Item, String> {
    let Some(obj) = item.as_object().filter(|o| o.len() == 1) else {
        return Err("each content must be an object with one of text, image, video.".into());
    };
    if let Some(text) = obj.get("text") {
        return match text.as_str() {
            Some(t) if !t.is_empty() => Ok(Item::Text(t.to_string())),
            _ => Err("text must be a non-empty string.".into()),
        };
    }
    if let Some(image) = obj.get("image") {
        let image = image.as_str().unwrap_or_default();
        if is_url(image) {
            return Ok(Item::Image(image.as_bytes().to_vec()));
        }
        return image_data(image, spec).map(Item::Image);
    }
    if let Some(video) = obj.get("video") {
        let video = video.as_str().unwrap_or_default();
        // "MP4, AVI, MOV (仅支持URL)": videos are taken by URL only.
        if is_url(video) {
            return Ok(Item::Video(video.to_string()));
        }
        return Err("video only supports URL input.".into());
    }
    Err("each content must be an object with one of text, image, video.".into())
}

fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://") || s.starts_with("oss://")
}

/// A `data:image/<format>;base64,<data>` URI (the reference's base64 example) of a format the
/// model reads, whose bytes are base64, look like that format, and fit the size limit.
fn image_data(uri: &str, spec: &MultimodalModel) -> Result<Vec<u8>, String> {
    let Some((format, data)) = uri.strip_prefix("data:image/").and_then(|r| r.split_once(";base64,")) else {
        return Err("image must be a URL or a data URI data:image/<format>;base64,<data>.".into());
    };
    let format = format.to_ascii_lowercase();
    if !spec.image_formats.contains(&format.as_str()) {
        return Err(format!("image format {format} is not supported; supported: {:?}.", spec.image_formats));
    }
    let Some(bytes) = b64::decode(data) else {
        return Err("image data is not valid base64.".into());
    };
    if bytes.len() > spec.max_image_bytes {
        return Err(format!("image is larger than {} bytes.", spec.max_image_bytes));
    }
    if !looks_like(&format, &bytes) {
        return Err(format!("image data is not a {format} file."));
    }
    Ok(bytes)
}

/// The file's signature matches the declared format (formats without a fixed signature
/// pass).
fn looks_like(format: &str, b: &[u8]) -> bool {
    match format {
        "png" => b.starts_with(b"\x89PNG\r\n\x1a\n"),
        "jpg" | "jpeg" => b.starts_with(b"\xff\xd8\xff"),
        "bmp" | "dib" | "x-ms-bmp" => b.starts_with(b"BM"),
        "webp" => b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP",
        "tiff" => b.starts_with(b"II*\0") || b.starts_with(b"MM\0*"),
        "ico" | "x-icon" => b.starts_with(b"\0\0\x01\0"),
        "icns" => b.starts_with(b"icns"),
        "sgi" => b.starts_with(b"\x01\xda"),
        _ => !b.is_empty(),
    }
}
