//! The OpenAI-style APIs: which endpoint a request is ([`api`]: chat completions,
//! completions, embeddings, Responses; OpenAI and Azure OpenAI paths) and what a response
//! reports as `usage` ([`usage`]). May import [`crate::body`].

pub mod api;
pub mod usage;
