//! The test host layer: the built `tokenmeter.wasm` under wasmtime, in a proxy-wasm host of
//! our own ([`harness`]) that drives it through every callback sequence Envoy produces, and
//! compares what it reports with the core's driver run natively.
//!
//! One test binary, so that wasmtime and the harness are compiled once.
#![cfg(not(target_arch = "wasm32"))]
// Tests may panic: a failed assertion is how they report.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod harness;

mod host_self;
mod hostile;
mod longrun;
mod metering;
mod streams;

/// The repository root (test data and examples live there).
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
