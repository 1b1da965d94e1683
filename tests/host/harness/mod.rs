//! A proxy-wasm host for tests: it loads the built `tokenmeter.wasm` (the very module Envoy
//! loads) under wasmtime and drives it through the callback sequences Envoy produces.
//!
//! - [`abi`]: the ABI 0.2.1 constants and the full list of host functions.
//! - `imports`: the host functions (real behaviour where the filter can reach them; the
//!   others trap, naming themselves).
//! - `module`: the engine and the compiled module, once per test binary.
//! - [`vm`]: a [`Host`] (what VMs share, like Envoy's workers: metrics, shared data, clock)
//!   and its [`Vm`]s (lifecycle, calls into the guest, logs, memory). A host behaves as
//!   Envoy does unless made with other [`Manners`]: a model of another proxy-wasm host's
//!   observed behaviour where it differs, not that host.
//! - [`stream`]: one HTTP stream, callback by callback, with Envoy's buffering rules.
//! - [`exchange`]: a whole request and response in one call.
//! - [`fixtures`]: recorded OpenAI wire data in `tests/data`.
//! - [`native`]: the same exchange through the core compiled natively, for comparison.
//!
//! Each test makes its own `Host` and `Vm`s (one wasmtime `Store` each), so tests run in
//! parallel.
// Not every test file uses every part.
#![allow(dead_code, unused_imports)]

pub mod abi;
pub mod exchange;
pub mod fixtures;
mod imports;
pub mod metrics;
pub mod module;
pub mod native;
pub mod state;
pub mod stream;
pub mod vm;

pub use abi::{Action, LogLevel};
pub use exchange::{chunks, run, Call, Ending, Outcome, Reply};
pub use state::{Headers, Manners};
pub use stream::Stream;
pub use vm::{Host, Vm};
