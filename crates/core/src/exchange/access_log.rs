//! Per-request usage for access logs.
//!
//! Labels must stay few; access logs can carry one line per request. The filter stores this
//! summary as the stream property `tokenmeter` (Envoy filter state `wasm.tokenmeter`), so an
//! access log format can print it with `%FILTER_STATE(wasm.tokenmeter:PLAIN)%`, next to
//! whatever identifies the caller, for exact per-user attribution.

use serde_json::{json, Map, Value};

use crate::exchange::settlement::Settlement;

/// One JSON object: model, usage source, token counts, status, timing, error type.
pub fn summary(s: &Settlement) -> String {
    let mut m = Map::new();
    m.insert("model".into(), json!(s.model));
    match s.usage {
        Some(u) => {
            m.insert("source".into(), json!(u.source.as_str()));
            m.insert("prompt".into(), json!(u.prompt));
            m.insert("completion".into(), json!(u.completion));
            m.insert("total".into(), json!(u.total));
            m.insert("cached".into(), json!(u.cached));
            m.insert("reasoning".into(), json!(u.reasoning));
        }
        None => {
            m.insert("source".into(), json!("none"));
        }
    }
    m.insert("status".into(), json!(s.status));
    m.insert("duration_ms".into(), json!(s.duration_ms));
    if let Some(t) = s.ttft_ms {
        m.insert("ttft_ms".into(), json!(t));
    }
    if let Some(e) = s.error_type {
        m.insert("error".into(), json!(e));
    }
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::usage::{Usage, UsageSource};

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
        let v: Value = serde_json::from_str(&summary(&e)).unwrap();
        assert_eq!(v["source"], "none");
        assert_eq!(v["error"], "rate_limited");
    }
}
