//! `GET /api/v1/usage` and `GET /api/v1/operations`: token usage, requests, errors and
//! latency over time from the stored rollups, for a window, in steps, optionally grouped by
//! one label (see docs/api.md).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::params::{bad, duration, only_known, window_us, BadParam};
use crate::quality::duration::format_rfc3339;
use tokenmeter_core::series::rollup::{ERROR_TYPES, LATENCY_BOUNDS_MS};

/// Most steps one answer holds.
pub const MAX_STEPS: i64 = 10_000;

/// A checked query: `[from, to)` in Unix seconds, `from` on a step boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub from: i64,
    pub to: i64,
    pub step: i64,
    pub group_by: Option<String>,
    /// Only series whose label has this value: `(label, value)`.
    pub scope: Option<(String, String)>,
}

/// Reads `from`, `to` (RFC 3339; `to` defaults to now), `window` (ISO 8601 duration, instead
/// of `from`; default PT1H), `step` (ISO 8601, whole minutes; default the shortest of 1 and
/// 5 minutes, 15 minutes, 1 and 6 hours, 1 and 7 days that gives at most 60 steps), `group_by` (a label name) and `scope` (`LABEL:VALUE`, only the series
/// whose label has that value).
pub fn parse_query(
    params: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Result<Query, BadParam> {
    only_known(
        params,
        &["from", "to", "window", "step", "group_by", "scope"],
    )?;
    let (from_us, to_us) = window_us(params, now, 3600)?;
    let (from, to) = (from_us.div_euclid(1_000_000), to_us.div_euclid(1_000_000));
    let step = match duration(params, "step")? {
        Some(s) if s < 60 || s % 60 != 0 => {
            return Err(bad("step", "must be a whole number of minutes, e.g. PT5M"))
        }
        Some(s) => s,
        None => default_step(to - from),
    };
    let from = from - from.rem_euclid(step);
    if ceil_div(to - from, step) > MAX_STEPS {
        return Err(bad(
            "step",
            format!("gives more than {MAX_STEPS} steps for the window; use a longer step"),
        ));
    }
    let group_by = match params.get("group_by") {
        None => None,
        Some(g) if label_name(g) => Some(g.clone()),
        Some(g) => {
            return Err(bad(
                "group_by",
                format!("{g:?} is not a label name (letters, digits and _)"),
            ))
        }
    };
    let scope = match params.get("scope") {
        None => None,
        Some(s) => match s.split_once(':') {
            Some((label, value)) if label_name(label) => {
                Some((label.to_string(), value.to_string()))
            }
            _ => {
                return Err(bad(
                    "scope",
                    format!("{s:?} is not LABEL:VALUE, e.g. model:gpt-4o"),
                ))
            }
        },
    };
    Ok(Query {
        from,
        to,
        step,
        group_by,
        scope,
    })
}

/// Steps a query gets when it names none, shortest first: each a whole number of the store's
/// rollup buckets (minutes, hours, days), so that the coarsest tier that fits is read.
const DEFAULT_STEPS: [i64; 7] = [60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400];

/// The shortest of [`DEFAULT_STEPS`] that gives at most 60 steps over `seconds` (the
/// longest for longer windows).
fn default_step(seconds: i64) -> i64 {
    DEFAULT_STEPS
        .into_iter()
        .find(|s| ceil_div(seconds, *s) <= 60)
        .unwrap_or(7 * 86_400)
}

/// `a / b` rounded up, for positive `b`.
fn ceil_div(a: i64, b: i64) -> i64 {
    a.saturating_add(b - 1).div_euclid(b)
}

fn label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Sums over a step, a group or the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sums {
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
}

impl Sums {
    /// Adds, saturating: a store fed absurd counts answers absurd sums, not an error.
    pub fn add(&mut self, o: &Sums) {
        for (a, b) in [
            (&mut self.requests, o.requests),
            (&mut self.errors, o.errors),
            (&mut self.prompt_tokens, o.prompt_tokens),
            (&mut self.completion_tokens, o.completion_tokens),
            (&mut self.total_tokens, o.total_tokens),
            (&mut self.cached_tokens, o.cached_tokens),
            (&mut self.reasoning_tokens, o.reasoning_tokens),
        ] {
            *a = a.saturating_add(b);
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Point {
    pub time: String,
    #[serde(flatten)]
    pub sums: Sums,
}

#[derive(Debug, Serialize)]
pub struct Group {
    /// The label's value; `null` without `group_by`, or for rows without the label.
    pub group: Option<String>,
    pub totals: Sums,
    /// Steps with traffic only, in time order.
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    pub from: String,
    pub to: String,
    pub step_seconds: i64,
    pub group_by: Option<String>,
    pub totals: Sums,
    pub groups: Vec<Group>,
}

/// Builds the answer from `(step index, group, sums)` rows, as the store's query gives them
/// (a step may come in several rows, one per tier it was read from).
pub fn answer(q: &Query, rows: Vec<(i64, Option<String>, Sums)>) -> Answer {
    let time = |s: i64| format_rfc3339(Utc.timestamp_opt(s, 0).single().unwrap_or_default());
    let mut groups: BTreeMap<Option<String>, (Sums, BTreeMap<i64, Sums>)> = BTreeMap::new();
    let mut totals = Sums::default();
    for (step, group, sums) in rows {
        totals.add(&sums);
        let (g, steps) = groups.entry(group).or_default();
        g.add(&sums);
        steps.entry(step).or_default().add(&sums);
    }
    Answer {
        from: time(q.from),
        to: time(q.to),
        step_seconds: q.step,
        group_by: q.group_by.clone(),
        totals,
        groups: groups
            .into_iter()
            .map(|(group, (totals, steps))| Group {
                group,
                totals,
                points: steps
                    .into_iter()
                    .map(|(step, sums)| Point {
                        time: time(q.from + step * q.step),
                        sums,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::duration::parse_rfc3339;

    fn q(pairs: &[(&str, &str)]) -> Result<Query, BadParam> {
        let params = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_query(&params, parse_rfc3339("2026-12-01T12:34:56Z").unwrap())
    }

    #[test]
    fn defaults_and_alignment() {
        let now = parse_rfc3339("2026-12-01T12:34:56Z").unwrap().timestamp();
        let d = q(&[]).unwrap();
        assert_eq!((d.to, d.step), (now, 60));
        assert_eq!(d.from, now - 3600 - (now - 3600) % 60);
        let w = q(&[("window", "P7D"), ("step", "PT1H"), ("group_by", "model")]).unwrap();
        let s = q(&[("scope", "model:gpt-4o:2024")]).unwrap();
        assert_eq!(s.scope, Some(("model".into(), "gpt-4o:2024".into())));
        assert_eq!(w.step, 3600);
        assert_eq!(w.from % 3600, 0);
        assert_eq!(w.group_by.as_deref(), Some("model"));
        let r = q(&[
            ("from", "2026-11-01T00:00:00Z"),
            ("to", "2026-12-01T00:00:00Z"),
        ])
        .unwrap();
        assert_eq!(
            r.step, 86_400,
            "30 days: daily steps, read from the day tier"
        );
        for (window, step) in [
            ("PT1H", 60),
            ("PT3H", 300),
            ("P1D", 3600),
            ("P3D", 21_600),
            ("P7D", 21_600),
            ("P90D", 604_800),
        ] {
            assert_eq!(q(&[("window", window)]).unwrap().step, step, "{window}");
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        for (pairs, param) in [
            (&[("from", "yesterday")][..], "from"),
            (&[("to", "2026-13-01T00:00:00Z")][..], "to"),
            (&[("window", "7 days")][..], "window"),
            (&[("step", "PT30S")][..], "step"),
            (&[("window", "P30D"), ("step", "PT1M")][..], "step"),
            (&[("group_by", "Team-Name")][..], "group_by"),
            (&[("scope", "gpt-4o")][..], "scope"),
            (&[("scope", "Model:gpt-4o")][..], "scope"),
            (&[("from", "2026-12-02T00:00:00Z")][..], "from"),
            (
                &[("from", "2026-11-01T00:00:00Z"), ("window", "P1D")][..],
                "window",
            ),
            (&[("limit", "3")][..], "query"),
        ] {
            assert_eq!(q(pairs).unwrap_err().param, param, "{pairs:?}");
        }
    }

    #[test]
    fn rows_become_groups_with_totals() {
        let query = q(&[("window", "PT2H"), ("step", "PT1H"), ("group_by", "team")]).unwrap();
        let s = |requests, total| Sums {
            requests,
            total_tokens: total,
            ..Sums::default()
        };
        let a = answer(
            &query,
            vec![
                (0, Some("blue".into()), s(2, 20)),
                (1, Some("blue".into()), s(1, 5)),
                (1, Some("red".into()), s(4, 40)),
            ],
        );
        assert_eq!(a.totals, s(7, 65));
        assert_eq!(a.groups.len(), 2);
        assert_eq!(a.groups[0].group.as_deref(), Some("blue"));
        assert_eq!(a.groups[0].totals, s(3, 25));
        assert_eq!(
            a.groups[1].points[0].time,
            format_rfc3339(Utc.timestamp_opt(query.from + 3600, 0).unwrap())
        );
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["groups"][1]["points"][0]["total_tokens"], 40);
    }
}

/// Operational figures of a step, a group or the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Operations {
    pub requests: i64,
    /// Failed requests by type, in the order of `ERROR_TYPES`, as an object.
    pub errors: BTreeMap<&'static str, i64>,
    pub error_rate: f64,
    pub duration_ms: Quantiles,
    pub ttft_ms: Quantiles,
}

/// Percentiles estimated from a fixed-bucket histogram, as Prometheus'
/// `histogram_quantile` does (linear within a bucket; the open last bucket reads as its
/// lower bound); `None` without observations.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Quantiles {
    pub fn of(h: &tokenmeter_core::series::rollup::Histogram, bounds: &[u64]) -> Quantiles {
        let q = |q: f64| quantile(&h.buckets, bounds, h.count, q);
        Quantiles {
            count: h.count,
            mean: (h.count > 0).then(|| h.sum as f64 / h.count as f64),
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
        }
    }
}

fn quantile(buckets: &[u64], bounds: &[u64], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && below.saturating_add(n) as f64 >= rank {
            let lower = if i == 0 {
                0
            } else {
                bounds.get(i - 1).copied().unwrap_or(0)
            };
            let Some(&upper) = bounds.get(i) else {
                return Some(lower as f64);
            };
            let within = (rank - below as f64) / n as f64;
            return Some(lower as f64 + (upper - lower) as f64 * within);
        }
        below = below.saturating_add(n);
    }
    bounds.last().map(|&b| b as f64)
}

#[derive(Debug, Serialize)]
pub struct OperationsPoint {
    pub time: String,
    #[serde(flatten)]
    pub figures: Operations,
}

#[derive(Debug, Serialize)]
pub struct OperationsGroup {
    pub group: Option<String>,
    pub totals: Operations,
    pub points: Vec<OperationsPoint>,
}

#[derive(Debug, Serialize)]
pub struct OperationsAnswer {
    pub from: String,
    pub to: String,
    pub step_seconds: i64,
    pub group_by: Option<String>,
    pub totals: Operations,
    pub groups: Vec<OperationsGroup>,
}

/// One stored row as the operations query reads it.
pub struct OperationsRow {
    pub step: i64,
    pub group: Option<String>,
    pub requests: i64,
    pub errors: [i64; 6],
    pub duration: tokenmeter_core::series::rollup::Histogram,
    pub ttft: tokenmeter_core::series::rollup::Histogram,
}

#[derive(Clone)]
struct Acc {
    requests: i64,
    errors: [i64; 6],
    duration: tokenmeter_core::series::rollup::Histogram,
    ttft: tokenmeter_core::series::rollup::Histogram,
}

impl Acc {
    fn new() -> Acc {
        let empty = |n: usize| tokenmeter_core::series::rollup::Histogram {
            buckets: vec![0; n + 1],
            sum: 0,
            count: 0,
        };
        Acc {
            requests: 0,
            errors: [0; 6],
            duration: empty(LATENCY_BOUNDS_MS.len()),
            ttft: empty(LATENCY_BOUNDS_MS.len()),
        }
    }

    fn add(&mut self, r: &OperationsRow) {
        self.requests = self.requests.saturating_add(r.requests);
        for (a, b) in self.errors.iter_mut().zip(r.errors) {
            *a = a.saturating_add(b);
        }
        for (mine, theirs) in [(&mut self.duration, &r.duration), (&mut self.ttft, &r.ttft)] {
            for (a, b) in mine.buckets.iter_mut().zip(&theirs.buckets) {
                *a = a.saturating_add(*b);
            }
            mine.sum = mine.sum.saturating_add(theirs.sum);
            mine.count = mine.count.saturating_add(theirs.count);
        }
    }

    fn figures(&self) -> Operations {
        let failed = self.errors.iter().fold(0i64, |a, b| a.saturating_add(*b));
        Operations {
            requests: self.requests,
            errors: ERROR_TYPES.iter().copied().zip(self.errors).collect(),
            error_rate: if self.requests > 0 {
                failed as f64 / self.requests as f64
            } else {
                0.0
            },
            duration_ms: Quantiles::of(&self.duration, &LATENCY_BOUNDS_MS),
            ttft_ms: Quantiles::of(&self.ttft, &LATENCY_BOUNDS_MS),
        }
    }
}

/// Builds the operations answer from the stored rows of the window.
pub fn operations(q: &Query, rows: Vec<OperationsRow>) -> OperationsAnswer {
    let time = |s: i64| format_rfc3339(Utc.timestamp_opt(s, 0).single().unwrap_or_default());
    let mut total = Acc::new();
    let mut groups: BTreeMap<Option<String>, (Acc, BTreeMap<i64, Acc>)> = BTreeMap::new();
    for r in &rows {
        total.add(r);
        let (g, steps) = groups
            .entry(r.group.clone())
            .or_insert_with(|| (Acc::new(), BTreeMap::new()));
        g.add(r);
        steps.entry(r.step).or_insert_with(Acc::new).add(r);
    }
    OperationsAnswer {
        from: time(q.from),
        to: time(q.to),
        step_seconds: q.step,
        group_by: q.group_by.clone(),
        totals: total.figures(),
        groups: groups
            .into_iter()
            .map(|(group, (acc, steps))| OperationsGroup {
                group,
                totals: acc.figures(),
                points: steps
                    .into_iter()
                    .map(|(step, a)| OperationsPoint {
                        time: time(q.from + step * q.step),
                        figures: a.figures(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod operations_tests {
    use super::*;
    use tokenmeter_core::series::rollup::Histogram;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let bounds = [100, 200, 400];
        // 10 in (0,100], 10 in (100,200], nothing above.
        let h = Histogram {
            buckets: vec![10, 10, 0, 0],
            sum: 2000,
            count: 20,
        };
        let q = Quantiles::of(&h, &bounds);
        assert_eq!(q.p50, Some(100.0));
        assert_eq!(q.p95, Some(190.0));
        assert_eq!(q.mean, Some(100.0));
        // Everything past the last bound reads as that bound.
        let over = Histogram {
            buckets: vec![0, 0, 0, 3],
            sum: 9000,
            count: 3,
        };
        assert_eq!(Quantiles::of(&over, &bounds).p99, Some(400.0));
        assert_eq!(
            Quantiles::of(
                &Histogram {
                    buckets: vec![0; 4],
                    sum: 0,
                    count: 0
                },
                &bounds
            )
            .p50,
            None
        );
    }
}
