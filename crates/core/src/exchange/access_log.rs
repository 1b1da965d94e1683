//! Per-request usage for access logs.
//!
//! Labels must stay few; access logs can carry one line per request. The filter stores this
//! summary as the stream property `tokenmeter` (Envoy filter state `wasm.tokenmeter`), so an
//! access log format can print it with `%FILTER_STATE(wasm.tokenmeter:PLAIN)%`, next to
//! whatever identifies the caller, for exact per-user attribution.

use serde::Serialize;

use crate::exchange::settlement::Settlement;

/// The summary's fields in their order. A struct rather than a `serde_json` map: it is
/// written once per request, and a map costs an allocation and a hash per key.
#[derive(Serialize)]
struct Summary<'a> {
    model: Option<&'a str>,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    /// Present (possibly null) whenever usage is.
    #[serde(skip_serializing_if = "Option::is_none")]
    cached: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<Option<u64>>,
    status: Option<u16>,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttft_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// One JSON object: model, usage source, token counts, status, timing, error type.
pub fn summary(s: &Settlement) -> String {
    let u = s.usage.as_ref();
    let line = Summary {
        model: s.model.as_deref(),
        source: u.map_or("none", |u| u.source.as_str()),
        prompt: u.map(|u| u.prompt),
        completion: u.map(|u| u.completion),
        total: u.map(|u| u.total),
        cached: u.map(|u| u.cached),
        reasoning: u.map(|u| u.reasoning),
        status: s.status,
        duration_ms: s.duration_ms,
        ttft_ms: s.ttft_ms,
        error: s.error_type,
    };
    // Serialising plain fields cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::usage::{Usage, UsageSource};
    use serde_json::{json, Value};

    #[test]
    fn summaries() {
        let s = Settlement {
            model: Some("gpt-4o-2024-08-06".into()),
            usage: Some(Usage {
                prompt: 8,
                completion: 23,
                total: 31,
                cached: Some(0),
                reasoning: None,
                audio_prompt: None,
                audio_completion: None,
                source: UsageSource::Reported,
            }),
            status: Some(200),
            duration_ms: 120,
            ttft_ms: Some(30),
            ..Settlement::default()
        };
        // Keys in this order, as the map wrote them.
        assert_eq!(
            summary(&s),
            r#"{"model":"gpt-4o-2024-08-06","source":"reported","prompt":8,"completion":23,"total":31,"cached":0,"reasoning":null,"status":200,"duration_ms":120,"ttft_ms":30}"#
        );
        let v: Value = serde_json::from_str(&summary(&s)).unwrap();
        assert_eq!(
            v,
            json!({"model": "gpt-4o-2024-08-06", "source": "reported", "prompt": 8, "completion": 23,
                   "total": 31, "cached": 0, "reasoning": null, "status": 200, "duration_ms": 120, "ttft_ms": 30})
        );
        let e = Settlement {
            status: Some(429),
            error_type: Some("rate_limited"),
            ..Settlement::default()
        };
        assert_eq!(
            summary(&e),
            r#"{"model":null,"source":"none","status":429,"duration_ms":0,"error":"rate_limited"}"#
        );
        let v: Value = serde_json::from_str(&summary(&e)).unwrap();
        assert_eq!(v["source"], "none");
        assert_eq!(v["error"], "rate_limited");
    }
}
