//! Query-string parameters of the read API, as every endpoint reads them: only known
//! names, RFC 3339 times, ISO 8601 durations, and a window given as `from`/`to` or
//! `window`. A bad one is a [`BadParam`], answered with 400 naming it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::quality::duration::{parse_rfc3339, IsoDuration};

/// A parameter the caller got wrong: 400, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct BadParam {
    pub param: &'static str,
    pub message: String,
}

pub fn bad(param: &'static str, message: impl Into<String>) -> BadParam {
    BadParam {
        param,
        message: message.into(),
    }
}

/// Refuses a parameter not in `known`.
pub fn only_known(params: &BTreeMap<String, String>, known: &[&str]) -> Result<(), BadParam> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(bad(
            "query",
            format!("unknown parameter {key:?}; use {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// An ISO 8601 duration parameter, in seconds.
pub fn duration(
    params: &BTreeMap<String, String>,
    param: &'static str,
) -> Result<Option<i64>, BadParam> {
    params
        .get(param)
        .map(|d| {
            IsoDuration::parse(d)
                .map(|d| d.seconds())
                .map_err(|e| bad(param, e.to_string()))
        })
        .transpose()
}

fn time(params: &BTreeMap<String, String>, param: &'static str) -> Result<Option<i64>, BadParam> {
    params
        .get(param)
        .map(|t| {
            parse_rfc3339(t)
                .map(|t| t.timestamp_micros())
                .ok_or_else(|| {
                    bad(
                        param,
                        format!("{t:?} is not an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"),
                    )
                })
        })
        .transpose()
}

/// The window `[from, to)` in microseconds: `to` (default now), and `from` or `window`
/// (not both; default `default_s` seconds before `to`).
pub fn window_us(
    params: &BTreeMap<String, String>,
    now: DateTime<Utc>,
    default_s: i64,
) -> Result<(i64, i64), BadParam> {
    let to = time(params, "to")?.unwrap_or_else(|| now.timestamp_micros());
    let from = match (time(params, "from")?, duration(params, "window")?) {
        (Some(_), Some(_)) => return Err(bad("window", "give from or window, not both")),
        (Some(from), None) => from,
        (None, window) => window
            .unwrap_or(default_s)
            .checked_mul(1_000_000)
            .and_then(|w| to.checked_sub(w))
            .ok_or_else(|| bad("window", "is too long; use at most a few years"))?,
    };
    if from >= to {
        return Err(bad("from", "must be before to"));
    }
    Ok((from, to))
}
