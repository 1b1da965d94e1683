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

/// Classifies a failed exchange on a host without `response.code_details`
/// (ngx_wasm_module), from the status the response had, the status the host logs
/// (`logged`: nginx logs 499 when the client hung up before the response began), whether
/// the response reached its end, and whether the upstream answered at all (nginx's
/// `$upstream_header_time`). A 502 or 504 the upstream never answered was made by the
/// gateway: `upstream_reset` or `timeout`. A response cut after it began counts as
/// `client_cancelled`, the usual cause (a user stopping a stream); such a host does not say
/// whether the client or the upstream cut it, and nginx logs the status it had begun with.
pub fn inferred_error_type(
    status: Option<u16>,
    logged: Option<u16>,
    complete: bool,
    upstream_answered: bool,
) -> Option<&'static str> {
    // nginx logs 000 when no status was set at all.
    let logged = logged.filter(|s| (100..600).contains(s));
    if logged == Some(499) {
        return Some("client_cancelled");
    }
    match status.or(logged) {
        Some(504) if !upstream_answered => Some("timeout"),
        // Not 503: nginx's own limit_req and limit_conn answer it with no upstream at all.
        Some(502) if !upstream_answered => Some("upstream_reset"),
        Some(100..=399) if !complete => Some("client_cancelled"),
        s => error_type(s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_code_details_the_error_is_inferred_from_status_and_timing() {
        // The client hung up before the response began: nginx logs 499.
        assert_eq!(
            inferred_error_type(None, Some(499), false, false),
            Some("client_cancelled")
        );
        assert_eq!(
            inferred_error_type(Some(200), Some(499), false, true),
            Some("client_cancelled")
        );
        // The gateway's own 502 and 504: the upstream never sent a header.
        assert_eq!(
            inferred_error_type(Some(502), Some(502), true, false),
            Some("upstream_reset")
        );
        assert_eq!(
            inferred_error_type(Some(504), Some(504), true, false),
            Some("timeout")
        );
        // The upstream's own 502 and 504 stay upstream errors.
        assert_eq!(
            inferred_error_type(Some(502), Some(502), true, true),
            Some("upstream_error")
        );
        assert_eq!(
            inferred_error_type(Some(504), Some(504), true, true),
            Some("upstream_error")
        );
        // A response cut after it began is not a success.
        assert_eq!(
            inferred_error_type(Some(200), Some(200), false, true),
            Some("client_cancelled")
        );
        assert_eq!(inferred_error_type(Some(200), None, true, true), None);
        assert_eq!(
            inferred_error_type(Some(429), Some(429), true, true),
            Some("rate_limited")
        );
        assert_eq!(
            inferred_error_type(None, None, false, false),
            Some("client_cancelled")
        );
    }
}
