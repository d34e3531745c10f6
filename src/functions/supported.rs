//! ai_supported_models(): the registry as rows.

use bailian_core::params::{accepted_names, Phase};
use bailian_core::registry::{Thinking, MODELS};
use pgrx::prelude::*;

#[allow(clippy::type_complexity)]
#[pg_extern(name = "ai_supported_models", stable, parallel_safe)]
fn ai_supported_models() -> TableIterator<
    'static,
    (
        name!(model_type, String),
        name!(category, String),
        name!(task, String),
        name!(inputs, Vec<String>),
        name!(outputs, Vec<String>),
        name!(params, Vec<String>),
        name!(call_params, Vec<String>),
        name!(dimensions, Option<Vec<i32>>),
        name!(default_dimension, Option<i32>),
        name!(max_inputs_per_request, Option<i32>),
        name!(notes, Option<String>),
        name!(provider, String),
        name!(stream_only, bool),
        name!(thinking, String),
        name!(web_search, bool),
    ),
> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    TableIterator::new(MODELS.iter().map(move |m| {
        let deploy = accepted_names(m, Phase::Deploy);
        let per_call: Vec<&str> =
            accepted_names(m, Phase::Call).into_iter().filter(|p| !deploy.contains(p)).collect();
        (
            m.model_type.to_string(),
            m.category.to_string(),
            m.task.to_string(),
            strings(m.inputs),
            strings(m.outputs),
            strings(&deploy),
            strings(&per_call),
            (!m.dimensions.is_empty()).then(|| m.dimensions.iter().map(|d| *d as i32).collect()),
            m.default_dimension.map(|d| d as i32),
            m.max_inputs_per_request.map(|n| n as i32),
            (!m.notes.is_empty()).then(|| m.notes.to_string()),
            m.provider.to_string(),
            m.stream_only,
            match m.thinking {
                Thinking::Never => "never",
                Thinking::Switchable { default_on: false } => "switchable (off by default)",
                Thinking::Switchable { default_on: true } => "switchable (on by default)",
                Thinking::Always => "always",
            }
            .to_string(),
            m.web_search,
        )
    }))
}
