//! The contract between the core and its glue: what one exchange came to. The driver
//! ([`super::driver`]) turns it into metric points, a record and the access-log summary;
//! nothing here depends on how the exchange was read. Imports only [`crate::openai`].

use crate::openai::usage::Usage;

/// The outcome of one exchange, to be recorded as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// One sanitised value per configured dimension, in order.
    pub labels: Vec<String>,
    /// Indexes of dimensions whose value was folded into `other`.
    pub folded: Vec<usize>,
    pub usage: Option<Usage>,
    pub status: Option<u16>,
    /// Whether the response was an event stream.
    pub streamed: bool,
    /// Milliseconds from the request's start to the end of the exchange.
    pub duration_ms: u64,
    /// Milliseconds from the request's start to the first event with content (streams).
    pub ttft_ms: Option<u64>,
    /// The model the counts belong to, as far as it is known.
    pub model: Option<String>,
    /// Stream events skipped for exceeding `max_event_bytes`.
    pub oversized_events: u64,
    /// Why the request failed, when it did (see [`error_type`]).
    pub error_type: Option<&'static str>,
    /// The inference record (JSON), when the request was sampled for collection.
    pub record: Option<String>,
    /// The VM's memory budget kept the exchange from holding or copying all it would have.
    pub over_budget: bool,
}

/// Classifies a failed exchange from its status and Envoy's response code details
/// (`response.code_details`): `timeout`, `upstream_reset` and `client_cancelled` from the
/// details, else `rate_limited` (429), `client_error` (4xx), `upstream_error` (5xx).
pub fn error_type(status: Option<u16>, details: Option<&str>) -> Option<&'static str> {
    let d = details.unwrap_or("");
    if d.contains("timeout") || d.contains("max_stream_duration") {
        return Some("timeout");
    }
    if d.contains("upstream_reset")
        || d.contains("upstream_connection")
        || d.starts_with("no_healthy_upstream")
    {
        return Some("upstream_reset");
    }
    if d.starts_with("downstream_remote_disconnect") || d.contains("client_disconnect") {
        return Some("client_cancelled");
    }
    match status {
        Some(429) => Some("rate_limited"),
        Some(400..=499) => Some("client_error"),
        Some(500..=599) => Some("upstream_error"),
        Some(_) => None,
        // No response at all, and the host did not say why: the client went away first.
        None => Some("client_cancelled"),
    }
}
