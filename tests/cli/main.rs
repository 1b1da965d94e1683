//! The CLI layer: the built `tokenmeter` binary run as a user runs it — configuration
//! commands, the record collector and its store (SQLite, and several collectors on one real
//! PostgreSQL), record import and export, the quality
//! evaluator against a local judge server, scheduled monitors, and the Prometheus rules and
//! Grafana dashboard of deploy/.
//!
//! One test binary per layer keeps the build small.
// Tests may panic: a failed assertion is how they report.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod evaluation;

mod alerting;
mod collector;
mod commands;
mod deploy;
mod eval;
mod fleet;
mod gateways;
mod monitor_serve;
mod records;

/// The repository root (test data and examples live there).
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
