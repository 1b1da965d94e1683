//! The evaluation report: its JSON shape, the per-record table and the text table.

use std::fmt::Write as _;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::aggregate::{round4, Conclusion, Status, Summary};
use super::metric::Metric;

/// Whether each metric had its own judge call, or one call scored them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    PerMetric,
    Combined,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::PerMetric => "per_metric",
            Mode::Combined => "combined",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReport {
    pub from: String,
    pub to: String,
}

/// The judge that produced the scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeReport {
    pub kind: String,
    pub model: String,
    /// Prompt version per metric (or `combined`).
    pub prompt_versions: std::collections::BTreeMap<String, String>,
    /// Judge calls made in this run (after retries, one per request that got an answer
    /// or failed), and answers taken from the cache instead.
    pub calls: u64,
    pub cached: u64,
    /// Follow-up requests made because an answer could not be read.
    #[serde(default)]
    pub repairs: u64,
    /// `json_schema`, `json_object` or `none`: what the run ended up asking for.
    #[serde(default)]
    pub response_format: String,
    /// The judge's own token usage in this run (cached answers cost none).
    #[serde(default)]
    pub usage: JudgeUsage,
    /// `usage` at the monitor's `judge.price`, in USD; absent without a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// Tokens the judge reported using (`usage` of its answers), summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Of the completion tokens, those a reasoning model spent thinking.
    pub reasoning_tokens: u64,
}

/// One evaluation of one monitor's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub monitor: String,
    pub mode: Mode,
    pub window: WindowReport,
    /// Records in the window.
    pub records: u64,
    /// Records in the sample.
    pub sampled: u64,
    pub judge: JudgeReport,
    #[serde(
        serialize_with = "serialize_metrics",
        deserialize_with = "deserialize_metrics"
    )]
    pub metrics: Vec<(Metric, Summary)>,
    /// The worst of the metrics' verdicts.
    #[serde(default)]
    pub status: Conclusion,
    pub breached: bool,
}

/// One line of the per-record table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub record_id: String,
    pub metric: Metric,
    pub status: String,
    pub score: Option<u8>,
    pub reason: String,
    pub judge_model: String,
    pub prompt_version: String,
    pub cached: bool,
    /// The record lacks an input the metric needs (not eligible); not written out.
    #[serde(skip)]
    pub missing_input: bool,
}

impl Row {
    pub fn status(&self) -> Option<Status> {
        [
            Status::Scored,
            Status::Unparsed,
            Status::Errored,
            Status::NotApplicable,
        ]
        .into_iter()
        .find(|s| s.name() == self.status)
    }
}

/// Serialises the metrics as an object in report order, with ratios rounded for display.
fn serialize_metrics<S: Serializer>(
    metrics: &[(Metric, Summary)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(metrics.len()))?;
    for (metric, summary) in metrics {
        let rounded = Summary {
            average_score: summary.average_score.map(round4),
            pass_rate: summary.pass_rate.map(round4),
            ..summary.clone()
        };
        map.serialize_entry(metric.name(), &rounded)?;
    }
    map.end()
}

fn deserialize_metrics<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(Metric, Summary)>, D::Error> {
    let map: std::collections::BTreeMap<Metric, Summary> = Deserialize::deserialize(d)?;
    let mut metrics: Vec<(Metric, Summary)> = map.into_iter().collect();
    metrics.sort_by_key(|(m, _)| Metric::ALL.iter().position(|x| x == m));
    Ok(metrics)
}

fn ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{:.4}", round4(v)))
}

/// The report as a text table, for people.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "monitor   {}", r.monitor);
    let _ = writeln!(out, "window    {} .. {}", r.window.from, r.window.to);
    let _ = writeln!(
        out,
        "records   {} in window, {} sampled",
        r.records, r.sampled
    );
    let _ = writeln!(
        out,
        "judge     {} {} ({} mode; {} calls, {} cached, {} repairs)",
        r.judge.kind,
        r.judge.model,
        r.mode.name(),
        r.judge.calls,
        r.judge.cached,
        r.judge.repairs
    );
    let u = &r.judge.usage;
    let cost = r
        .judge
        .cost_usd
        .map(|c| format!(", ${c:.4}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "tokens    {} prompt, {} completion ({} reasoning){cost}",
        u.prompt_tokens, u.completion_tokens, u.reasoning_tokens
    );
    let _ = writeln!(out);
    let header = [
        "metric",
        "average",
        "pass rate",
        "violations",
        "scored",
        "unparsed",
        "errored",
        "n/a",
        "coverage",
        "thresholds",
        "status",
    ];
    let mut rows: Vec<[String; 11]> = vec![header.map(String::from)];
    for (metric, s) in &r.metrics {
        rows.push([
            metric.name().to_string(),
            ratio(s.average_score),
            ratio(s.pass_rate),
            s.violations.to_string(),
            s.scored.to_string(),
            s.unparsed.to_string(),
            s.errored.to_string(),
            s.not_applicable.to_string(),
            ratio(s.coverage),
            format!(
                "score>={} rate>={} avg>={}",
                s.acceptable_score, s.pass_rate_threshold, s.average_threshold
            ),
            status_cell(s.status),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let _ = writeln!(out);
    let notes: Vec<String> = r
        .metrics
        .iter()
        .filter_map(|(m, s)| s.why.as_ref().map(|why| format!("{}: {why}", m.name())))
        .collect();
    let intervals: Vec<String> = r
        .metrics
        .iter()
        .filter_map(|(m, s)| {
            let (p, a) = (s.pass_rate_interval?, s.average_interval?);
            Some(format!(
                "{}: pass rate {:.4}..{:.4}, average {:.4}..{:.4}",
                m.name(),
                p[0],
                p[1],
                a[0],
                a[1]
            ))
        })
        .collect();
    if !intervals.is_empty() {
        let _ = writeln!(out, "95 % intervals");
        for i in intervals {
            let _ = writeln!(out, "          {i}");
        }
        let _ = writeln!(out);
    }
    let head = match r.status {
        Conclusion::Ok => "ok: no threshold breached",
        Conclusion::Breached => "BREACHED",
        Conclusion::Inconclusive => "INCONCLUSIVE: too little was scored to decide",
        Conclusion::NoData => "NO DATA: nothing in the window to judge",
    };
    let _ = writeln!(out, "result    {head}");
    for n in notes {
        let _ = writeln!(out, "          {n}");
    }
    out
}

fn status_cell(v: Conclusion) -> String {
    match v {
        Conclusion::Ok => "ok",
        Conclusion::Breached => "BREACHED",
        Conclusion::Inconclusive => "INCONCLUSIVE",
        Conclusion::NoData => "NO DATA",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::aggregate::{Tally, Thresholds};

    fn report() -> Report {
        let mut good = Tally::default();
        for _ in 0..13 {
            good.add(Status::Scored, Some(5));
        }
        good.add(Status::Scored, Some(3));
        let mut none = Tally::default();
        none.add(Status::Errored, None);
        none.add(Status::NotApplicable, None);
        Report {
            monitor: "m".into(),
            mode: Mode::PerMetric,
            window: WindowReport {
                from: "2026-11-19T10:15:00Z".into(),
                to: "2026-11-26T10:15:00Z".into(),
            },
            records: 140,
            sampled: 14,
            judge: JudgeReport {
                kind: "openai".into(),
                model: "gpt-4o".into(),
                prompt_versions: Default::default(),
                calls: 15,
                cached: 0,
                repairs: 0,
                response_format: "json_schema".into(),
                usage: JudgeUsage::default(),
                cost_usd: None,
            },
            metrics: vec![
                (
                    Metric::Coherence,
                    good.summarize(
                        Thresholds {
                            min_samples: 1,
                            ..Thresholds::default()
                        },
                        0,
                    ),
                ),
                (
                    Metric::Groundedness,
                    none.summarize(
                        Thresholds {
                            min_samples: 1,
                            ..Thresholds::default()
                        },
                        0,
                    ),
                ),
            ],
            status: Conclusion::Inconclusive,
            breached: false,
        }
    }

    #[test]
    fn json_shape_keeps_order_rounds_and_uses_null() {
        let json = serde_json::to_value(report()).unwrap();
        assert_eq!(json["mode"], "per_metric");
        let keys: Vec<&String> = json["metrics"].as_object().unwrap().keys().collect();
        // serde_json sorts keys without preserve_order; the text form keeps report order.
        assert_eq!(keys.len(), 2);
        let text = serde_json::to_string(&report()).unwrap();
        assert!(text.find("\"coherence\"").unwrap() < text.find("\"groundedness\"").unwrap());
        let c = &json["metrics"]["coherence"];
        assert_eq!(c["pass_rate"], 0.9286);
        assert_eq!(c["average_score"], 4.8571);
        assert_eq!(c["violations"], 1);
        assert_eq!(c["breached"], false);
        let g = &json["metrics"]["groundedness"];
        assert!(g["average_score"].is_null() && g["pass_rate"].is_null());
        assert_eq!(g["errored"], 1);
        assert_eq!(g["not_applicable"], 1);
        assert_eq!(g["breached"], false);
        assert_eq!(g["status"], "inconclusive");
        assert_eq!(json["status"], "inconclusive");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.metrics.first().unwrap().0, Metric::Groundedness);
    }

    #[test]
    fn table_shows_every_count_and_the_breach() {
        let t = render_table(&report());
        assert!(t.contains("140 in window, 14 sampled"), "{t}");
        assert!(t.contains("per_metric mode"), "{t}");
        let coherence = t.lines().find(|l| l.starts_with("coherence")).unwrap();
        let cells: Vec<&str> = coherence.split_whitespace().collect();
        assert_eq!(
            &cells[..8],
            ["coherence", "4.8571", "0.9286", "1", "14", "0", "0", "0"]
        );
        assert!(coherence.ends_with("ok"));
        let grounded = t.lines().find(|l| l.starts_with("groundedness")).unwrap();
        assert!(
            grounded.contains(" - ") && grounded.ends_with("INCONCLUSIVE"),
            "{grounded}"
        );
        assert!(t.contains("result    INCONCLUSIVE"), "{t}");
        assert!(
            t.contains(
                "groundedness: coverage 0.0000 < 0.8: 0 of 2 eligible records scored (0 unparsed, 1 errored, 1 declined by the judge)"
            ),
            "{t}"
        );
        assert!(
            t.contains("coherence: pass rate 0.6853..0.9873, average"),
            "{t}"
        );
    }
}
