//! Test support for tokenmeter, shared by the end-to-end tests, the demo and the benchmarks:
//! an OpenAI-compatible upstream ([`upstream`]), the real Envoy ([`envoy`]), a Prometheus
//! text reader ([`prom`]) and an HTTP client that never treats a status as an error
//! ([`client`]).

pub mod client;
pub mod envoy;
pub mod prom;
pub mod upstream;
