//! Many texts through one deployment: embedding inputs packed up to the model's
//! per-request limit, prompts one per request, with up to `pg_bailian.max_concurrency`
//! requests in flight. Results are handed over per input as requests complete.

use super::generate::prompt_request;
use crate::backend::{self, Target};
use bailian_core::client::embed_each;
use bailian_core::deploy::Deployment;
use bailian_core::providers::EmbedInput;
use bailian_core::AiError;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Embeds every non-empty `texts[i]`; `done(i, result)` is called once per embedded input.
/// NULL and empty texts are skipped (their `done` is never called).
pub fn embed_texts(
    d: &Arc<Deployment>,
    texts: &[Option<&str>],
    mut done: impl FnMut(usize, Result<Vec<f32>, AiError>) -> Result<(), AiError>,
) -> Result<(), AiError> {
    let model = d.embedding_model();
    let per_request = model.per_request;
    let positions: Vec<usize> =
        (0..texts.len()).filter(|i| texts[*i].is_some_and(|t| !t.is_empty())).collect();
    let chunks: Vec<&[usize]> = positions.chunks(per_request).collect();
    let target = Target::new(d, &Map::new())?;
    let model = &model;
    let mut next = 0..chunks.len();
    backend::drive(
        &target,
        |client, call| {
            let chunk = chunks[next.next()?];
            let inputs: Vec<EmbedInput> =
                chunk.iter().map(|p| EmbedInput::Text(texts[*p].unwrap_or_default())).collect();
            Some(async move {
                let results = embed_each(client, &call, model, &inputs).await;
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
    d: &Arc<Deployment>,
    params: &Map<String, Value>,
    prompts: &[Option<&str>],
    mut done: impl FnMut(usize, Result<String, AiError>) -> Result<(), AiError>,
) -> Result<(), AiError> {
    let target = Target::new(d, params)?;
    let mut next = (0..prompts.len()).filter(|i| prompts[*i].is_some());
    backend::drive(
        &target,
        |client, call| {
            let position = next.next()?;
            let request = prompt_request(d, prompts[position].unwrap_or_default(), params);
            Some(async move {
                let answer = match request {
                    Ok(request) => client.chat(&call, &request).await.map(|out| out.content),
                    Err(e) => Err(e),
                };
                (position, answer)
            })
        },
        |(position, result)| done(position, result),
    )
}
