//! Counting tokens when no usage is reported: the tokenizers ([`tokenizer`], loaded on the
//! first count), the packed vocabularies they are built from ([`vocab`]) and the estimates
//! per API shape ([`estimate`]). May import [`crate::openai`].

pub mod estimate;
pub mod tokenizer;
mod vocab;
