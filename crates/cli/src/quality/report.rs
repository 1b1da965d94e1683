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
    /// `tokenmeter` or `azure`: whose score levels the judge followed.
    #[serde(default = "tokenmeter")]
    pub rubric: String,
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

/// What share of all traffic a run judged (see `quality::sampling`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingReport {
    /// The monitor's `sampling_rate` and `seed`.
    pub rate: f64,
    pub seed: u64,
    /// `nested` (seed 0: the gateway's own draw, so the rates do not multiply) or
    /// `independent` (another seed: they do).
    pub draw: String,
    /// The lowest and highest `sample_rate` the gateway recorded on the window's records;
    /// `null` when none carries one (records collected elsewhere).
    pub collected_rate: Option<[f64; 2]>,
    /// Records in the window without a recorded rate, counted as every request.
    pub collected_rate_unknown: u64,
    /// The share of all traffic judged, lowest and highest over the collected rates.
    pub share_of_traffic: [f64; 2],
}

impl SamplingReport {
    /// From the monitor's rate and seed, and each record's collected rate.
    pub fn new(rate: f64, seed: u64, collected: impl IntoIterator<Item = Option<f64>>) -> Self {
        let mut range: Option<[f64; 2]> = None;
        let mut unknown = 0;
        for c in collected {
            match c.filter(|c| c.is_finite() && (0.0..=1.0).contains(c)) {
                Some(c) => {
                    let r = range.get_or_insert([c, c]);
                    r[0] = r[0].min(c);
                    r[1] = r[1].max(c);
                }
                None => unknown += 1,
            }
        }
        let share = |c: Option<f64>| super::sampling::share_of_traffic(rate, seed, c);
        let share_of_traffic = match range {
            // Records without a rate count as every request: they raise the high end.
            Some([lo, hi]) => [
                share(Some(lo)),
                share(Some(if unknown > 0 { 1.0 } else { hi })),
            ],
            None => [share(None), share(None)],
        };
        SamplingReport {
            rate,
            seed,
            draw: if seed == 0 { "nested" } else { "independent" }.to_string(),
            collected_rate: range,
            collected_rate_unknown: unknown,
            share_of_traffic,
        }
    }

    /// One line for people: the rates and the share of traffic judged.
    pub fn describe(&self) -> String {
        let pct = |x: f64| {
            let p = x * 100.0;
            if p >= 1.0 {
                format!("{}", (p * 10.0).round() / 10.0)
            } else {
                format!("{}", (p * 1000.0).round() / 1000.0)
            }
        };
        let [lo, hi] = self.share_of_traffic;
        let share = if lo == hi {
            format!("{} %", pct(lo))
        } else {
            format!("{}–{} %", pct(lo), pct(hi))
        };
        let how = if self.seed == 0 {
            "seed 0: the gateway's draw, so the rates nest".to_string()
        } else {
            format!(
                "seed {}: drawn apart from the gateway, so the rates multiply",
                self.seed
            )
        };
        match self.collected_rate {
            None => format!(
                "rate {} ({how}); the records carry no gateway rate: {share} of them judged",
                self.rate
            ),
            Some([a, b]) => {
                let gw = if a == b {
                    format!("{a}")
                } else {
                    format!("{a}–{b}")
                };
                let capped = if self.seed == 0 && self.rate > b {
                    " (the monitor's rate is capped by the gateway's)"
                } else {
                    ""
                };
                let unknown = if self.collected_rate_unknown > 0 {
                    format!(
                        ", {} records without a rate counted as all traffic",
                        self.collected_rate_unknown
                    )
                } else {
                    String::new()
                };
                format!("rate {} ({how}); the gateway collected {gw}{unknown}: {share} of traffic judged{capped}", self.rate)
            }
        }
    }
}

fn tokenmeter() -> String {
    "tokenmeter".to_string()
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
    /// How the sample relates to the traffic (absent in reports stored before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingReport>,
    pub judge: JudgeReport,
    #[serde(
        serialize_with = "serialize_metrics",
        deserialize_with = "deserialize_metrics"
    )]
    pub metrics: Vec<(Metric, Summary)>,
    /// How the judge did on the drift canary (absent without `canary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<super::canary::CanaryReport>,
    /// Each group's verdicts, with `group_by` (absent without).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupReport>,
    /// The worst of the metrics' verdicts, the groups' included.
    #[serde(default)]
    pub status: Conclusion,
    pub breached: bool,
}

/// The verdicts of one group of records (`group_by`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    /// The group's value of each `group_by` field, by label (`_other`: the groups past
    /// `max_groups` together).
    pub labels: std::collections::BTreeMap<String, String>,
    pub sampled: u64,
    #[serde(
        serialize_with = "serialize_metrics",
        deserialize_with = "deserialize_metrics"
    )]
    pub metrics: Vec<(Metric, Summary)>,
    pub status: Conclusion,
    pub breached: bool,
}

impl GroupReport {
    /// `model=gpt-4o,team=blue`.
    pub fn name(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
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
            pass_rate_interval: summary.pass_rate_interval.map(|i| i.map(round4)),
            average_interval: summary.average_interval.map(|i| i.map(round4)),
            coverage: summary.coverage.map(round4),
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
    if let Some(s) = &r.sampling {
        let _ = writeln!(out, "sampling  {}", s.describe());
    }
    if let Some(c) = &r.canary {
        let _ = writeln!(out, "canary    {}", c.describe());
    }
    let _ = writeln!(
        out,
        "judge     {} {} ({} mode{}; {} calls, {} cached, {} repairs)",
        r.judge.kind,
        r.judge.model,
        r.mode.name(),
        if r.judge.rubric == "tokenmeter" {
            String::new()
        } else {
            format!(", {} rubric", r.judge.rubric)
        },
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
    let all = r.metrics.iter().map(|(m, s)| (m.name().to_string(), s));
    let grouped = r.groups.iter().flat_map(|g| {
        g.metrics
            .iter()
            .map(move |(m, s)| (format!("{} [{}]", m.name(), g.name()), s))
    });
    for (name, s) in all.chain(grouped) {
        rows.push([
            name,
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
    let mut notes: Vec<String> = r
        .metrics
        .iter()
        .filter_map(|(m, s)| s.why.as_ref().map(|why| format!("{}: {why}", m.name())))
        .collect();
    for g in &r.groups {
        notes.extend(g.metrics.iter().filter_map(|(m, s)| {
            s.why
                .as_ref()
                .map(|why| format!("{} [{}]: {why}", m.name(), g.name()))
        }));
    }
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

/// A report of these metrics with everything else empty, for tests elsewhere.
#[cfg(test)]
pub fn report_for_tests(monitor: &str, metrics: Vec<(Metric, Summary)>) -> Report {
    let status = Conclusion::of_report(metrics.iter().map(|(_, s)| s));
    Report {
        monitor: monitor.into(),
        mode: Mode::PerMetric,
        window: WindowReport {
            from: "2026-12-01T00:00:00Z".into(),
            to: "2026-12-02T00:00:00Z".into(),
        },
        records: 0,
        sampled: 0,
        sampling: None,
        groups: Vec::new(),
        canary: None,
        judge: JudgeReport {
            kind: "openai".into(),
            model: "j".into(),
            rubric: "tokenmeter".into(),
            prompt_versions: Default::default(),
            calls: 0,
            cached: 0,
            repairs: 0,
            response_format: "none".into(),
            usage: Default::default(),
            cost_usd: None,
        },
        metrics,
        status,
        breached: status == Conclusion::Breached,
    }
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
            sampling: None,
            groups: Vec::new(),
            canary: None,
            judge: JudgeReport {
                kind: "openai".into(),
                model: "gpt-4o".into(),
                rubric: "tokenmeter".into(),
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

    #[test]
    fn the_sampling_line_says_what_share_of_traffic_was_judged() {
        let s = SamplingReport::new(0.1, 0, [Some(0.1), Some(0.1)]);
        assert_eq!(s.share_of_traffic, [0.1, 0.1]);
        assert_eq!(
            s.describe(),
            "rate 0.1 (seed 0: the gateway's draw, so the rates nest); the gateway collected 0.1: 10 % of traffic judged"
        );
        let s = SamplingReport::new(0.5, 0, [Some(0.05), Some(0.1)]);
        assert_eq!(s.collected_rate, Some([0.05, 0.1]));
        assert!(s.describe().ends_with("the gateway collected 0.05–0.1: 5–10 % of traffic judged (the monitor's rate is capped by the gateway's)"), "{}", s.describe());
        let s = SamplingReport::new(0.1, 7, [Some(0.1), None]);
        assert_eq!(s.collected_rate_unknown, 1);
        assert_eq!(s.draw, "independent");
        assert!(
            s.describe().contains(
                "1 records without a rate counted as all traffic: 1–10 % of traffic judged"
            ),
            "{}",
            s.describe()
        );
        let s = SamplingReport::new(0.2, 0, [None, Some(f64::NAN), Some(3.0)]);
        assert_eq!((s.collected_rate, s.share_of_traffic), (None, [0.2, 0.2]));
        assert!(s
            .describe()
            .ends_with("the records carry no gateway rate: 20 % of them judged"));
    }
}
