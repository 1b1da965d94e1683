//! Token usage as providers report it, read from response bodies.
//!
//! One reader serves every API: chat completions, completions and embeddings report
//! `prompt_tokens`/`completion_tokens`, the Responses API `input_tokens`/`output_tokens`;
//! both report `total_tokens` and optional details (cached, reasoning, audio).

use serde::Deserialize;

use crate::body::capture::Captured;
use crate::body::jsonscan;

/// Where a request's token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The provider's own `usage`.
    Reported,
    /// Counted by tokenmeter from the text it saw.
    Estimated,
    /// Reported, but not counts a provider could produce (see [`MAX_TOKENS`]): nothing is
    /// added to the token counters.
    Invalid,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::Invalid => "invalid",
        }
    }
}

/// A request's token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// The provider's `total_tokens`, else prompt + completion.
    pub total: u64,
    /// Part of `prompt` served from the provider's prompt cache.
    pub cached: Option<u64>,
    /// Part of `completion` spent on hidden reasoning.
    pub reasoning: Option<u64>,
    /// Part of `prompt` that was audio.
    pub audio_prompt: Option<u64>,
    /// Part of `completion` that was audio.
    pub audio_completion: Option<u64>,
    pub source: UsageSource,
}

/// The most tokens one request may report in any field, and prompt plus completion together:
/// far above any model's context window, far below what would swamp a counter. A larger
/// count is a broken or hostile upstream, and one such response would stay in the counters
/// for the gateway's lifetime.
pub const MAX_TOKENS: u64 = 100_000_000;

impl Usage {
    /// Whether the counts are ones a provider could report: each at most [`MAX_TOKENS`],
    /// prompt plus completion too, and each breakdown no larger than what it is part of.
    pub fn is_plausible(&self) -> bool {
        let within = |n: u64| n <= MAX_TOKENS;
        let part = |p: Option<u64>, of: u64| p.is_none_or(|p| p <= of);
        within(self.prompt)
            && within(self.completion)
            && within(self.total)
            && within(self.prompt.saturating_add(self.completion))
            && part(self.cached, self.prompt)
            && part(self.audio_prompt, self.prompt)
            && part(self.reasoning, self.completion)
            && part(self.audio_completion, self.completion)
    }

    /// The usage of a response whose reported counts are implausible: no tokens.
    pub fn invalid() -> Usage {
        Usage {
            prompt: 0,
            completion: 0,
            total: 0,
            cached: None,
            reasoning: None,
            audio_prompt: None,
            audio_completion: None,
            source: UsageSource::Invalid,
        }
    }
}

/// The `usage` object in any of its shapes. Unknown fields are ignored; a field of the
/// wrong type makes the whole object unusable rather than half-read.
#[derive(Debug, Deserialize)]
pub(crate) struct RawUsage {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    #[serde(alias = "input_tokens_details")]
    prompt_tokens_details: Option<Details>,
    #[serde(alias = "output_tokens_details")]
    completion_tokens_details: Option<Details>,
}

#[derive(Debug, Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    audio_tokens: Option<u64>,
}

impl RawUsage {
    /// `None` when the object names no token count at all; [`Usage::invalid`] when its counts
    /// are implausible.
    pub(crate) fn into_usage(self) -> Option<Usage> {
        if self.prompt_tokens.is_none()
            && self.completion_tokens.is_none()
            && self.total_tokens.is_none()
        {
            return None;
        }
        let prompt = self.prompt_tokens.unwrap_or(0);
        let completion = self.completion_tokens.unwrap_or(0);
        let p = self.prompt_tokens_details;
        let c = self.completion_tokens_details;
        let usage = Usage {
            prompt,
            completion,
            total: self
                .total_tokens
                .unwrap_or_else(|| prompt.saturating_add(completion)),
            cached: p.as_ref().and_then(|d| d.cached_tokens),
            reasoning: c.as_ref().and_then(|d| d.reasoning_tokens),
            audio_prompt: p.as_ref().and_then(|d| d.audio_tokens),
            audio_completion: c.as_ref().and_then(|d| d.audio_tokens),
            source: UsageSource::Reported,
        };
        Some(if usage.is_plausible() {
            usage
        } else {
            Usage::invalid()
        })
    }
}

/// The fields of a JSON response body that metering needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    pub model: Option<String>,
    pub usage: Option<Usage>,
    /// The body is an error object (`{"error": {...}}`), whatever the status said.
    pub error: bool,
}

#[derive(Deserialize)]
struct ResponseBody {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<RawUsage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// Reads a field, treating a value of the wrong shape as absent.
pub(crate) fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    // `null` is absent. Said outright rather than left to a failed conversion: streams repeat
    // `"usage":null` in every chunk, and building the conversion's error costs more than
    // parsing the rest of the chunk.
    if v.is_null() {
        return Ok(None);
    }
    Ok(serde_json::from_value(v).ok())
}

/// Reads model and usage from a JSON response body, whole or as its two ends.
pub fn from_response(body: Captured<'_>) -> ResponseFacts {
    match body {
        Captured::Whole(bytes) => match serde_json::from_slice::<ResponseBody>(bytes) {
            Ok(r) => ResponseFacts {
                model: r.model.filter(|m| !m.is_empty()),
                usage: r.usage.and_then(RawUsage::into_usage),
                error: r.error.is_some(),
            },
            // Truncated or not quite JSON: take what a scan can still find.
            Err(_) => from_edges(bytes, bytes),
        },
        Captured::Edges { head, tail } => from_edges(head, tail),
    }
}

/// The same facts from a body already parsed into a tree; `None` when it is not an object.
pub fn from_tree(body: &serde_json::Value) -> Option<ResponseFacts> {
    let r = ResponseBody::deserialize(body).ok()?;
    Some(ResponseFacts {
        model: r.model.filter(|m| !m.is_empty()),
        usage: r.usage.and_then(RawUsage::into_usage),
        error: r.error.is_some(),
    })
}

/// What a scan finds in a body's edges (cut off, or not quite JSON).
pub fn from_edges(head: &[u8], tail: &[u8]) -> ResponseFacts {
    let model = jsonscan::field_in_head::<String>(head, "model")
        .or_else(|| jsonscan::field_in_tail::<String>(tail, "model"))
        .filter(|m| !m.is_empty());
    let usage = jsonscan::field_in_tail::<RawUsage>(tail, "usage").and_then(RawUsage::into_usage);
    let error = jsonscan::field_in_head::<Option<serde::de::IgnoredAny>>(head, "error")
        .flatten()
        .is_some();
    ResponseFacts {
        model,
        usage,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &str) -> ResponseFacts {
        from_response(Captured::Whole(body.as_bytes()))
    }

    #[test]
    fn chat_completion_usage_with_details() {
        let f = whole(
            r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-08-06",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,
              "prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},
              "completion_tokens_details":{"reasoning_tokens":4,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
        );
        assert_eq!(f.model.as_deref(), Some("gpt-4o-2024-08-06"));
        let u = f.usage.unwrap();
        assert_eq!((u.prompt, u.completion, u.total), (19, 10, 29));
        assert_eq!((u.cached, u.reasoning), (Some(3), Some(4)));
        assert_eq!(u.source, UsageSource::Reported);
    }

    #[test]
    fn implausible_usage_is_invalid_and_counts_nothing() {
        let bad = [
            r#"{"prompt_tokens":18446744073709551615,"completion_tokens":1,"total_tokens":1}"#,
            r#"{"prompt_tokens":9223372036854775807,"completion_tokens":9223372036854775807}"#,
            r#"{"prompt_tokens":60000000,"completion_tokens":60000000,"total_tokens":5}"#,
            r#"{"prompt_tokens":1,"completion_tokens":1,"total_tokens":100000001}"#,
            r#"{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":11}}"#,
            r#"{"input_tokens":10,"output_tokens":3,"output_tokens_details":{"reasoning_tokens":4}}"#,
            r#"{"prompt_tokens":10,"completion_tokens":3,"prompt_tokens_details":{"audio_tokens":12}}"#,
        ];
        for usage in bad {
            let f = whole(&format!(r#"{{"model":"m","usage":{usage}}}"#));
            assert_eq!(f.usage, Some(Usage::invalid()), "{usage}");
        }
        let edge = format!(
            r#"{{"model":"m","usage":{{"prompt_tokens":{MAX_TOKENS},"completion_tokens":0,"prompt_tokens_details":{{"cached_tokens":{MAX_TOKENS}}}}}}}"#
        );
        let u = whole(&edge).usage.unwrap();
        assert_eq!(
            (u.prompt, u.cached, u.source),
            (MAX_TOKENS, Some(MAX_TOKENS), UsageSource::Reported)
        );
        // A negative or fractional count is not a count: the object is unusable, not invalid.
        assert_eq!(whole(r#"{"usage":{"prompt_tokens":-1}}"#).usage, None);
    }

    #[test]
    fn embeddings_have_prompt_tokens_only() {
        let f = whole(
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],
            "model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
        );
        let u = f.usage.unwrap();
        assert_eq!((u.prompt, u.completion, u.total), (8, 0, 8));
    }

    #[test]
    fn responses_api_usage() {
        let f = whole(
            r#"{"id":"resp_1","object":"response","status":"completed","error":null,"model":"gpt-4.1-2025-04-14",
            "output":[],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},
            "output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#,
        );
        let u = f.usage.unwrap();
        assert_eq!((u.prompt, u.completion, u.total), (36, 87, 123));
        assert!(!f.error, "\"error\": null is no error");
        assert_eq!(u.cached, Some(0));
    }

    #[test]
    fn total_defaults_to_the_sum() {
        let u = whole(r#"{"usage":{"prompt_tokens":5,"completion_tokens":7}}"#)
            .usage
            .unwrap();
        assert_eq!(u.total, 12);
    }

    #[test]
    fn errors_and_broken_bodies_have_no_usage() {
        let e = whole(r#"{"error":{"message":"Rate limit","type":"requests","code":"429"}}"#);
        assert!(e.error);
        assert_eq!(e.usage, None);
        assert_eq!(whole("<html>bad gateway</html>"), ResponseFacts::default());
        assert_eq!(whole(""), ResponseFacts::default());
        assert_eq!(
            whole(r#"{"model": 5, "usage": "many"}"#),
            ResponseFacts::default()
        );
        assert_eq!(whole(r#"{"usage": {}}"#).usage, None);
        assert_eq!(whole(r#"{"usage": {"prompt_tokens": -3}}"#).usage, None);
    }

    #[test]
    fn truncated_body_still_gives_what_it_has() {
        let f = whole(r#"{"model":"gpt-4o","choices":[{"message":{"content":"Hel"#);
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert_eq!(f.usage, None);
    }

    #[test]
    fn edges_of_a_large_body() {
        let head = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,"#;
        let tail = br#"0.3]}],"model":"text-embedding-3-large","usage":{"prompt_tokens":4000,"total_tokens":4000}}"#;
        let f = from_response(Captured::Edges { head, tail });
        assert_eq!(f.model.as_deref(), Some("text-embedding-3-large"));
        assert_eq!(f.usage.unwrap().prompt, 4000);
    }
}
