//! What proxy-wasm hosts hand the filter, in the ABI's own encodings. Imports nothing from
//! the rest of the core; the filter's host calls (in the filter crate) use it.

pub mod headers;
