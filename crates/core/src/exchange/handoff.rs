//! Stream usage handed from one tokenmeter instance to the others in the same filter chain.
//!
//! Envoy runs response filters in reverse order, so when a later instance asked for a
//! stream's usage on a client's behalf (the client did not ask) and hides it again, the
//! earlier instances never see it and would estimate. The instance that hides it leaves it
//! in a stream property (Envoy filter state `wasm.tokenmeter_stream_usage`, which every
//! Wasm filter of the stream can read); an instance that saw no usage reads it before it
//! estimates. Only on hosts with filter state shared between filters (Envoy).

use serde::{Deserialize, Serialize};

use crate::openai::usage::{Usage, UsageSource};

/// The stream property the usage travels in.
pub const PROPERTY: &str = "tokenmeter_stream_usage";

#[derive(Serialize, Deserialize)]
struct Shared {
    prompt: u64,
    completion: u64,
    total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cached: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audio_prompt: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audio_completion: Option<u64>,
}

/// What to leave for the other instances: reported usage only.
pub fn encode(usage: &Usage) -> Option<String> {
    if usage.source != UsageSource::Reported {
        return None;
    }
    serde_json::to_string(&Shared {
        prompt: usage.prompt,
        completion: usage.completion,
        total: usage.total,
        cached: usage.cached,
        reasoning: usage.reasoning,
        audio_prompt: usage.audio_prompt,
        audio_completion: usage.audio_completion,
    })
    .ok()
}

/// The usage another instance left, if it is whole and plausible.
pub fn decode(bytes: &[u8]) -> Option<Usage> {
    let s: Shared = serde_json::from_slice(bytes).ok()?;
    let plausible = |n: u64| n <= crate::openai::usage::MAX_TOKENS;
    let parts = [s.cached, s.reasoning, s.audio_prompt, s.audio_completion];
    if ![s.prompt, s.completion, s.total].into_iter().all(plausible)
        || !parts.into_iter().flatten().all(plausible)
    {
        return None;
    }
    Some(Usage {
        prompt: s.prompt,
        completion: s.completion,
        total: s.total,
        cached: s.cached,
        reasoning: s.reasoning,
        audio_prompt: s.audio_prompt,
        audio_completion: s.audio_completion,
        source: UsageSource::Reported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_usage_travels_whole_and_nothing_else_does() {
        let u = Usage {
            prompt: 21,
            completion: 27,
            total: 48,
            cached: Some(3),
            reasoning: None,
            audio_prompt: None,
            audio_completion: Some(0),
            source: UsageSource::Reported,
        };
        assert_eq!(decode(encode(&u).unwrap().as_bytes()), Some(u));
        let estimated = Usage {
            source: UsageSource::Estimated,
            ..u
        };
        assert_eq!(encode(&estimated), None);
        assert_eq!(decode(b"{\"prompt\":1}"), None);
        assert_eq!(decode(b"not json"), None);
        assert_eq!(
            decode(b"{\"prompt\":1,\"completion\":1,\"total\":1000000000000}"),
            None
        );
    }
}
