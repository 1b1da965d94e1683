//! `GET /api/v1/records` and `GET /api/v1/records/{id}`: the sampled records of a window,
//! newest first and paginated, and one record with every score the monitors gave it (see
//! docs/api.md). Record text is returned as stored; the console escapes it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::params::{bad, only_known, window_us, BadParam};
use crate::quality::metric::Metric;

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
    /// Only records a monitor scored on this metric; with `pass`, only those whose latest
    /// score passed (`true`) or failed (`false`) the run's acceptable score.
    pub metric: Option<String>,
    pub pass: Option<bool>,
    pub limit: i64,
    pub offset: i64,
}

/// Reads `from`/`to`/`window` as the usage query does (default: the last day), `model`,
/// `route`, `operation`, `metric`, `verdict` (`pass` or `fail`, with `metric`), `limit`
/// (1 to 500, default 50) and `offset`.
pub fn parse_query(
    params: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Result<RecordsQuery, BadParam> {
    only_known(
        params,
        &[
            "from",
            "to",
            "window",
            "model",
            "route",
            "operation",
            "metric",
            "verdict",
            "limit",
            "offset",
        ],
    )?;
    let (from_us, to_us) = window_us(params, now, 86_400)?;
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
    let metric = match params.get("metric") {
        None => None,
        Some(m) => match Metric::from_name(m) {
            Some(m) => Some(m.name().to_string()),
            None => {
                let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                return Err(bad(
                    "metric",
                    format!("{m:?} is not one of {}", names.join(", ")),
                ));
            }
        },
    };
    let pass = match params.get("verdict").map(String::as_str) {
        None => None,
        Some(_) if metric.is_none() => {
            return Err(bad("verdict", "name the metric it is about with metric=…"))
        }
        Some("pass") => Some(true),
        Some("fail") => Some(false),
        Some(v) => return Err(bad("verdict", format!("{v:?} is not pass or fail"))),
    };
    Ok(RecordsQuery {
        from_us,
        to_us,
        filters,
        metric,
        pass,
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
    use crate::quality::duration::parse_rfc3339;

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
        let v = q(&[("metric", "groundedness"), ("verdict", "fail")]).unwrap();
        assert_eq!(
            (v.metric.as_deref(), v.pass),
            (Some("groundedness"), Some(false))
        );
        for (pairs, param) in [
            (&[("limit", "0")][..], "limit"),
            (&[("limit", "501")][..], "limit"),
            (&[("offset", "-1")][..], "offset"),
            (&[("window", "soon")][..], "window"),
            (&[("sort", "x")][..], "query"),
            (&[("metric", "tone")][..], "metric"),
            (&[("verdict", "pass")][..], "verdict"),
            (
                &[("metric", "fluency"), ("verdict", "maybe")][..],
                "verdict",
            ),
        ] {
            assert_eq!(q(pairs).unwrap_err().param, param, "{pairs:?}");
        }
    }
}
