//! Many texts through one deployment: embedding inputs packed up to the model's
//! per-request limit, prompts one per request, with up to `pg_bailian.max_concurrency`
//! requests in flight. Results are handed over per input as requests complete.

use crate::backend::{self, Target};
use bailian_core::client::embed_each;
use bailian_core::deploy::Deployment;
use bailian_core::request;
use bailian_core::AiError;
use serde_json::{Map, Value};

/// Embeds every non-empty `texts[i]`; `done(i, result)` is called once per embedded input.
/// NULL and empty texts are skipped (their `done` is never called).
pub fn embed_texts(
    d: &Deployment,
    texts: &[Option<&str>],
    mut done: impl FnMut(usize, Result<Vec<f32>, AiError>) -> Result<(), AiError>,
) -> Result<(), AiError> {
    let per_request = d.spec.max_inputs_per_request.unwrap_or(1).max(1) as usize;
    let positions: Vec<usize> =
        (0..texts.len()).filter(|i| texts[*i].is_some_and(|t| !t.is_empty())).collect();
    let chunks: Vec<&[usize]> = positions.chunks(per_request).collect();
    let target = Target::new(d, &Map::new())?;
    let model = d.embedding_model();
    let mut next = 0..chunks.len();
    backend::drive(
        &target,
        |client, call| {
            let chunk = chunks[next.next()?];
            let inputs: Vec<&str> = chunk.iter().map(|p| texts[*p].unwrap_or_default()).collect();
            Some(async move {
                let results = embed_each(client, &call, &model, &inputs).await;
                (chunk, results)
            })
        },
        |(chunk, results)| {
            for (position, result) in chunk.iter().zip(results) {
                done(*position, result)?;
            }
            Ok(())
        },
    )
}

/// Sends every non-NULL `prompts[i]` to the chat model with `params`; `done(i, result)` is
/// called once per prompt sent.
pub fn generate(
    d: &Deployment,
    params: &Map<String, Value>,
    prompts: &[Option<String>],
    mut done: impl FnMut(usize, Result<String, AiError>) -> Result<(), AiError>,
) -> Result<(), AiError> {
    let target = Target::new(d, params)?;
    let mut next = (0..prompts.len()).filter(|i| prompts[*i].is_some());
    backend::drive(
        &target,
        |client, call| {
            let position = next.next()?;
            let body = request::chat_body(
                d.spec.model_type,
                prompts[position].as_deref().unwrap_or_default(),
                params,
            );
            Some(async move { (position, client.chat(&call, &body).await.map(|(text, _)| text)) })
        },
        |(position, result)| done(position, result),
    )
}
