//! Everything pg_bailian does that does not need PostgreSQL: the model registry, validation of
//! deployments and parameters, the retry policy, rate limits, request bodies and the HTTP
//! client. The extension crate is glue around this.

pub mod answers;
pub mod batchfile;
pub mod chunk;
pub mod client;
pub mod deploy;
pub mod error;
pub mod estimate;
pub mod hologres;
pub mod keystore;
pub mod limits;
pub mod meter;
pub mod params;
pub mod policy;
pub mod providers;
pub mod quotas;
pub mod registry;
pub mod retry;
pub mod runtime;
pub mod secret;
pub mod shared;
pub mod structured;
pub mod tasks;
pub mod template;
pub mod tiers;
pub mod tokens;

pub use error::{AiError, InferenceKind, ResponseLimit};
