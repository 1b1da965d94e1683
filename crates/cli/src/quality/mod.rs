//! Quality monitoring: scoring sampled records with an LLM judge, per monitor definition.
//!
//! Everything here is pure logic (definitions, sampling, prompts, score parsing,
//! aggregation, report and exposition formats); the judge calls, the store and the
//! scheduler live in the `tokenmeter` binary. See `docs/quality.md`.

pub mod aggregate;
pub mod canary;
pub mod duration;
pub mod exposition;
pub mod metric;
pub mod monitor;
pub mod prompt;
pub mod report;
pub mod sampling;
pub mod scope;
pub mod score;
