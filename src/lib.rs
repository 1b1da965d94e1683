//! tokenmeter: token metering for OpenAI-style traffic at a proxy-wasm gateway.
//!
//! The crate is a host-agnostic core (parsing, dimensions, usage, metric naming) that the
//! native `tokenmeter` binary and the proxy-wasm filter share. The filter glue in
//! `filter` is compiled only for `wasm32-wasip1`; it moves bytes between the host and the
//! core and nothing else. See `docs/architecture.md`.

// Code a request can reach must never trap the VM.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod access_log;
pub mod api;
#[cfg(not(target_arch = "wasm32"))]
pub mod bootstrap;
pub mod capture;
pub mod cardinality;
pub mod chunkscan;
pub mod collect;
pub mod config;
pub mod decode;
pub mod dimensions;
pub mod estimate;
pub mod exchange;
pub mod headers;
#[cfg(not(target_arch = "wasm32"))]
pub mod ingest;
pub mod inject;
pub mod jsonscan;
pub mod labels;
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
pub mod quality;
pub mod record;
pub mod sse;
pub mod stream;
pub mod tokenizer;
pub mod usage;
mod vocab;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod filter;
