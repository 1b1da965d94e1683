//! The inference record: one sampled request/response, as the filter sends it to the
//! collector and as the evaluator reads it (from the store or from any JSONL file).
//!
//! The three text columns are top-level fields whose names the filter may rename
//! (`collect.columns`); the evaluator maps them back with its monitor's `columns`. So the
//! struct keeps them, and any other field a producer adds, in `extra`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Token counts of the sampled request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordUsage {
    #[serde(default)]
    pub prompt: u64,
    #[serde(default)]
    pub completion: u64,
    #[serde(default)]
    pub total: u64,
    /// `reported`, `estimated` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One inference record. Only `id` is required; everything else may be absent in
/// records collected elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique per request (the request id); storing a record twice keeps one.
    pub id: String,
    /// RFC 3339 time the response ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `chat.completions`, `completions`, `embeddings` or `responses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Configured dimension values by label name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<RecordUsage>,
    /// HTTP status of the response, absent when there was none (reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    /// The share of traffic the gateway collected records of when it kept this one
    /// (`collect.sample_rate`); a monitor reads it to say what share of traffic it judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<f64>,
    /// True when text columns were cut to fit `max_record_bytes`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The text columns (`question`, `answer`, `context` by default) and anything else.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Record {
    /// A text column by its (possibly renamed) field name; empty text counts as absent.
    pub fn text(&self, column: &str) -> Option<&str> {
        self.extra
            .get(column)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_columns_and_unknown_fields() {
        let line = r#"{"id":"r1","time":"2026-11-26T10:00:00Z","model":"gpt-4o","operation":"chat.completions","dimensions":{"team":"blue"},"usage":{"prompt":12,"completion":30,"total":42,"source":"reported"},"status":200,"duration_ms":812,"ttft_ms":140,"question":"What is 2+2?","answer":"4","context":"","app":"x"}"#;
        let r: Record = serde_json::from_str(line).unwrap();
        assert_eq!(r.text("question"), Some("What is 2+2?"));
        assert_eq!(r.text("context"), None);
        assert_eq!(r.extra.get("app").and_then(|v| v.as_str()), Some("x"));
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn only_id_is_required() {
        let r: Record = serde_json::from_str(r#"{"id":"x","q":"hi"}"#).unwrap();
        assert_eq!(r.text("q"), Some("hi"));
        assert!(serde_json::from_str::<Record>(r#"{"q":"hi"}"#).is_err());
    }
}
