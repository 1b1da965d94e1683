//! Event streams as they pass: server-sent events parsed incrementally ([`sse`]), chat and
//! completions chunks read in one pass ([`chunkscan`]), usage and texts per API shape
//! ([`meter`]), and usage injection: the request rewritten to ask for usage ([`inject`]) and
//! the response edited back to what the client asked for ([`editor`]). May import
//! [`crate::body`], [`crate::openai`] and [`crate::tokens`].

pub mod chunkscan;
pub mod editor;
pub mod inject;
pub mod meter;
#[cfg(test)]
mod scan_vs_serde;
pub mod sse;
