//! `GET /api/v1/records` and `GET /api/v1/records/{id}`: the sampled records of a window,
//! newest first and paginated, and one record with every score the monitors gave it (see
//! docs/api.md). Record text is returned as stored; the console escapes it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::quality::duration::{parse_rfc3339, IsoDuration};
use crate::usage::BadParam;

/// Records per page by default, and at most.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

/// A checked records query: `[from_us, to_us)`, filters on record fields, a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsQuery {
    pub from_us: i64,
    pub to_us: i64,
    /// `(field, value)`: `model`, `route`, `operation`.
    pub filters: Vec<(&'static str, String)>,
    pub limit: i64,
    pub offset: i64,
}

fn bad(param: &'static str, message: impl Into<String>) -> BadParam {
    BadParam {
        param,
        message: message.into(),
    }
}

/// Reads `from`/`to`/`window` as the usage query does (default: the last day), `model`,
/// `route`, `operation`, `limit` (1 to 500, default 50) and `offset`.
pub fn parse_query(
    params: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Result<RecordsQuery, BadParam> {
    const KNOWN: [&str; 8] = [
        "from",
        "to",
        "window",
        "model",
        "route",
        "operation",
        "limit",
        "offset",
    ];
    for key in params.keys() {
        if !KNOWN.contains(&key.as_str()) {
            return Err(bad(
                "query",
                format!("unknown parameter {key:?}; use {}", KNOWN.join(", ")),
            ));
        }
    }
    let time = |param: &'static str| -> Result<Option<i64>, BadParam> {
        params
            .get(param)
            .map(|t| {
                parse_rfc3339(t)
                    .map(|t| t.timestamp_micros())
                    .ok_or_else(|| bad(param, format!("{t:?} is not an RFC 3339 time")))
            })
            .transpose()
    };
    let to_us = time("to")?.unwrap_or_else(|| now.timestamp_micros());
    let window = params
        .get("window")
        .map(|w| IsoDuration::parse(w).map_err(|e| bad("window", e.to_string())))
        .transpose()?;
    let from_us = match (time("from")?, window) {
        (Some(_), Some(_)) => return Err(bad("window", "give from or window, not both")),
        (Some(from), None) => from,
        (None, Some(w)) => to_us - w.seconds() * 1_000_000,
        (None, None) => to_us - 86_400 * 1_000_000,
    };
    if from_us >= to_us {
        return Err(bad("from", "must be before to"));
    }
    let number = |param: &'static str, default: i64, max: i64, min: i64| -> Result<i64, BadParam> {
        match params.get(param) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    bad(
                        param,
                        format!("{v:?} is not a whole number from {min} to {max}"),
                    )
                }),
        }
    };
    let filters = ["model", "route", "operation"]
        .into_iter()
        .filter_map(|f| params.get(f).map(|v| (f, v.clone())))
        .collect();
    Ok(RecordsQuery {
        from_us,
        to_us,
        filters,
        limit: number("limit", DEFAULT_LIMIT, MAX_LIMIT, 1)?,
        offset: number("offset", 0, i64::MAX, 0)?,
    })
}

/// One monitor score of a record: the latest run's, per metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Score {
    pub metric: String,
    pub status: String,
    pub score: Option<i64>,
    pub reason: String,
    pub judge_model: String,
    pub prompt_version: String,
    pub monitor: String,
    pub run_id: i64,
}

/// A record and its scores.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub record: Value,
    pub scores: Vec<Score>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    /// Records in the window that match the filters, on every page.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub records: Vec<Entry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<RecordsQuery, BadParam> {
        let params = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_query(&params, parse_rfc3339("2026-12-01T12:00:00Z").unwrap())
    }

    #[test]
    fn records_queries_and_their_bad_parameters() {
        let d = q(&[]).unwrap();
        assert_eq!(d.to_us - d.from_us, 86_400_000_000);
        assert_eq!((d.limit, d.offset), (50, 0));
        let f = q(&[("model", "gpt-4o"), ("limit", "10"), ("offset", "20")]).unwrap();
        assert_eq!(f.filters, [("model", "gpt-4o".to_string())]);
        for (pairs, param) in [
            (&[("limit", "0")][..], "limit"),
            (&[("limit", "501")][..], "limit"),
            (&[("offset", "-1")][..], "offset"),
            (&[("window", "soon")][..], "window"),
            (&[("sort", "x")][..], "query"),
        ] {
            assert_eq!(q(pairs).unwrap_err().param, param, "{pairs:?}");
        }
    }
}
