//! Reading records sent to the collector or imported from a file: one JSON record, a
//! JSON array of records, or NDJSON (one record per line), validated whole before any is
//! stored, so that a batch is accepted or refused as one.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::quality::duration::{format_rfc3339, parse_rfc3339};
use tokenmeter_core::records::record::Record;

/// Longest record id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// A batch that was refused; the message names the line (or array element) and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct IngestError {
    /// `line N`, `record N` or `body`.
    pub location: String,
    pub message: String,
}

/// A validated record and its time, normalised to UTC, in microseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub record: Record,
    pub time_us: i64,
}

/// Parses a body or file. Records without `time` get `received`.
pub fn parse_batch(body: &[u8], received: DateTime<Utc>) -> Result<Vec<Incoming>, IngestError> {
    let text = std::str::from_utf8(body).map_err(|e| IngestError {
        location: "body".into(),
        message: format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ),
    })?;
    if text.trim().is_empty() {
        return Err(IngestError {
            location: "body".into(),
            message: "is empty; send one JSON record or NDJSON, one record per line".into(),
        });
    }
    // A whole-body JSON value is one record (possibly pretty-printed) or an array of them;
    // anything else is NDJSON.
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| record(v, &format!("record {}", i + 1), received))
            .collect(),
        Ok(v @ Value::Object(_)) => Ok(vec![record(v, "line 1", received)?]),
        Ok(_) => Err(IngestError {
            location: "body".into(),
            message: "must be a JSON object (one record), an array of records, or NDJSON".into(),
        }),
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                let location = format!("line {}", i + 1);
                let value: Value = serde_json::from_str(line).map_err(|e| IngestError {
                    location: location.clone(),
                    message: format!("is not a JSON record: {e}"),
                })?;
                record(value, &location, received)
            })
            .collect(),
    }
}

fn record(value: Value, location: &str, received: DateTime<Utc>) -> Result<Incoming, IngestError> {
    let fail = |field: &str, message: String| IngestError {
        location: location.to_string(),
        message: if field.is_empty() {
            message
        } else {
            format!("{field}: {message}")
        },
    };
    if !value.is_object() {
        return Err(fail(
            "",
            "must be a JSON object with at least an \"id\"".into(),
        ));
    }
    let mut record: Record = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            fail("", inner)
        } else {
            fail(&path, inner)
        }
    })?;
    if record.id.trim().is_empty() {
        return Err(fail("id", "must not be empty".into()));
    }
    if record.id.len() > MAX_ID_BYTES {
        return Err(fail("id", format!("is longer than {MAX_ID_BYTES} bytes")));
    }
    if record.id.contains('\0') {
        return Err(fail("id", "holds a NUL character".to_string()));
    }
    let time = match &record.time {
        Some(text) => parse_rfc3339(text).ok_or_else(|| {
            fail(
                "time",
                format!("{text:?} is not an RFC 3339 time, e.g. 2026-11-26T10:00:00Z"),
            )
        })?,
        None => received,
    };
    record.time = Some(format_rfc3339(time));
    Ok(Incoming {
        record,
        time_us: time.timestamp_micros(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        parse_rfc3339("2026-11-26T10:00:00Z").unwrap()
    }

    fn err(body: &str) -> String {
        parse_batch(body.as_bytes(), now()).unwrap_err().to_string()
    }

    #[test]
    fn one_record_pretty_or_compact() {
        let pretty = "{\n  \"id\": \"a\",\n  \"time\": \"2026-11-26T12:00:00+02:00\",\n  \"question\": \"q\"\n}\n";
        let got = parse_batch(pretty.as_bytes(), now()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].record.time.as_deref(), Some("2026-11-26T10:00:00Z"));
        assert_eq!(got[0].time_us, now().timestamp_micros());
        assert_eq!(got[0].record.text("question"), Some("q"));
    }

    #[test]
    fn ndjson_and_arrays() {
        let nd = "{\"id\":\"a\"}\n\n{\"id\":\"b\",\"time\":\"2026-11-25T00:00:00Z\"}\r\n";
        let got = parse_batch(nd.as_bytes(), now()).unwrap();
        assert_eq!(got.len(), 2);
        // Without a time, the record gets the time it was received.
        assert_eq!(got[0].record.time.as_deref(), Some("2026-11-26T10:00:00Z"));
        assert_eq!(got[1].record.time.as_deref(), Some("2026-11-25T00:00:00Z"));
        let arr = parse_batch(br#"[{"id":"a"},{"id":"b"}]"#, now()).unwrap();
        assert_eq!(arr.len(), 2);
    }

    #[test]
    fn errors_name_the_line_and_field() {
        assert_eq!(
            err("{\"id\":\"a\"}\n{\"id\":\"b\",\"status\":\"ok\"}"),
            "line 2: status: invalid type: string \"ok\", expected u16"
        );
        assert!(
            err("{\"id\":\"a\"}\n{\"question\":\"q\"}").starts_with("line 2: missing field `id`"),
            "{}",
            err("{\"id\":\"a\"}\n{\"question\":\"q\"}")
        );
        assert!(err("{\"id\":\"a\"}\nnot json").starts_with("line 2: is not a JSON record"));
        assert_eq!(
            err("{\"id\":\"a\",\"time\":\"yesterday\"}"),
            "line 1: time: \"yesterday\" is not an RFC 3339 time, e.g. 2026-11-26T10:00:00Z"
        );
        assert_eq!(err("{\"id\":\"  \"}"), "line 1: id: must not be empty");
        assert_eq!(
            err("{\"id\":\"a\\u0000\"}"),
            "line 1: id: holds a NUL character"
        );
        assert!(
            err("{\"id\":\"a\",\"usage\":{\"prompt\":-1}}").starts_with("line 1: usage.prompt: ")
        );
        assert!(err("[{\"id\":\"a\"}, 3]").starts_with("record 2: must be a JSON object"));
        assert!(err("").starts_with("body: is empty"));
        assert!(err("42").starts_with("body: must be"));
        assert!(parse_batch(&[0xff, 0xfe], now())
            .unwrap_err()
            .to_string()
            .starts_with("body: is not UTF-8"));
    }
}
