//! tokenmeter's core: everything the filter knows about OpenAI-style traffic, with no host
//! calls, compiled unchanged natively (unit tests, the `tokenmeter` binary) and into the
//! proxy-wasm filter.
//!
//! The folders, from the bottom up (a module imports only from folders above it in this
//! list, or from its own folder):
//!
//! - [`host_abi`]: what proxy-wasm hosts hand over (header map serialisation).
//! - [`body`]: bounded copies of bodies, top-level JSON field scans, content codings.
//! - [`openai`]: the API shapes (endpoint classification) and their `usage` objects.
//! - [`tokens`]: tokenizers, packed vocabularies and token estimates.
//! - [`stream`]: server-sent events, per-API stream metering, usage injection and editing.
//! - [`series`]: label naming and sanitising, dimension sources, cardinality caps, and the
//!   metric points a settlement becomes. `labels` and `dimensions` sit below `config`
//!   (which validates names and value specs with them); `cardinality` and `metrics` above.
//! - [`config`]: the filter configuration, validated at load time.
//! - [`records`]: inference records: sampling, texts, redaction.
//! - [`exchange`]: one request and its response, from headers to a [`exchange::Settlement`],
//!   and the [`exchange::driver`] that turns host callbacks into that flow.
//!
//! See `docs/architecture.md`.

pub mod body;
pub mod config;
pub mod exchange;
pub mod host_abi;
#[cfg(test)]
mod layering;
pub mod openai;
pub mod records;
pub mod series;
pub mod stream;
pub mod tokens;
