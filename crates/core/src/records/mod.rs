//! Inference records for quality monitoring: the record format shared with the collector
//! ([`record`]), and what a sampled exchange puts in it: question, context and answer from
//! the bodies, redacted and bounded ([`collect`]). May import [`crate::openai`] and
//! [`crate::config`].

pub mod collect;
pub mod record;
