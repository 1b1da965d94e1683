//! The latest monitor results as Prometheus text exposition.

use std::fmt::Write as _;

use super::aggregate::Conclusion;
use super::report::Report;

/// Whether a namespace is usable as a metric name prefix: `[a-z][a-z0-9_]*`.
pub fn valid_namespace(ns: &str) -> bool {
    let mut chars = ns.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Escapes a label value: backslash, double quote and newline, per the exposition format.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The state of one monitor for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorState {
    pub monitor: String,
    /// The last successful evaluation and when it finished (Unix seconds).
    pub last_report: Option<(Report, i64)>,
    /// Whether the most recent run failed (judge unreachable, breaker open...).
    pub last_run_failed: bool,
    /// Whether its scheduler still runs (`None` without a schedule).
    pub scheduler_running: Option<bool>,
}

/// Renders the quality metrics of every monitor. Averages and pass rates of a metric
/// with nothing scored are omitted (no NaN); `_breached` is 1 for it.
pub fn render(ns: &str, monitors: &[MonitorState]) -> String {
    let mut out = String::new();
    type Value = fn(&crate::quality::aggregate::Summary) -> Option<f64>;
    let families: [(&str, &str, Value); 10] = [
        ("quality_average_score", "Mean judge score (1-5) of the scored sampled records in the monitor's last window.", |s| s.average_score),
        ("quality_pass_rate", "Fraction of scored records at or above the acceptable score in the last window.", |s| s.pass_rate),
        ("quality_violations", "Scored records below the acceptable score in the last window.", |s| Some(s.violations as f64)),
        ("quality_scored_records", "Records the judge scored in the last window.", |s| Some(s.scored as f64)),
        ("quality_breached", "1 when the metric breached its threshold under its rule in the last window.", |s| Some(if s.breached { 1.0 } else { 0.0 })),
        ("quality_inconclusive", "1 when too little was scored in the last window to decide (coverage or sample size below the floor).", |s| Some(f64::from(u8::from(s.status == Conclusion::Inconclusive)))),
        ("quality_no_data", "1 when the last window had no record eligible for the metric.", |s| Some(f64::from(u8::from(s.status == Conclusion::NoData)))),
        ("quality_coverage", "Scored / eligible sampled records in the last window; absent with no eligible record.", |s| s.coverage),
        ("quality_pass_rate_upper_bound", "Upper bound of the 95 % Wilson interval of the pass rate in the last window.", |s| s.pass_rate_interval.map(|i| i[1])),
        ("quality_average_score_upper_bound", "Upper bound of the 95 % t interval of the average score in the last window.", |s| s.average_interval.map(|i| i[1])),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {ns}_{name} {help}");
        let _ = writeln!(out, "# TYPE {ns}_{name} gauge");
        for m in monitors {
            let Some((report, _)) = &m.last_report else {
                continue;
            };
            // The monitor's own figures, then each group's with its labels (group_by).
            let overall = std::iter::once((String::new(), &report.metrics));
            let groups = report.groups.iter().map(|g| {
                let labels: String = g
                    .labels
                    .iter()
                    .map(|(k, v)| format!(",{k}=\"{}\"", escape_label_value(v)))
                    .collect();
                (labels, &g.metrics)
            });
            for (labels, metrics) in overall.chain(groups) {
                for (metric, summary) in metrics {
                    if let Some(v) = value(summary) {
                        let _ = writeln!(
                            out,
                            "{ns}_{name}{{monitor=\"{}\",metric=\"{}\"{labels}}} {v}",
                            escape_label_value(&m.monitor),
                            metric.name()
                        );
                    }
                }
            }
        }
    }
    let _ = writeln!(out, "# HELP {ns}_quality_last_run_timestamp_seconds Unix time the monitor's last successful evaluation finished.");
    let _ = writeln!(out, "# TYPE {ns}_quality_last_run_timestamp_seconds gauge");
    for m in monitors {
        if let Some((_, at)) = &m.last_report {
            let _ = writeln!(
                out,
                "{ns}_quality_last_run_timestamp_seconds{{monitor=\"{}\"}} {at}",
                escape_label_value(&m.monitor)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP {ns}_quality_last_run_failed 1 when the monitor's most recent evaluation failed."
    );
    let _ = writeln!(out, "# TYPE {ns}_quality_last_run_failed gauge");
    for m in monitors {
        let _ = writeln!(
            out,
            "{ns}_quality_last_run_failed{{monitor=\"{}\"}} {}",
            escape_label_value(&m.monitor),
            u8::from(m.last_run_failed)
        );
    }
    let _ = writeln!(out, "# HELP {ns}_quality_judge_agreement Share of the drift canary's scores inside their bands in the monitor's last run (with canary).");
    let _ = writeln!(out, "# TYPE {ns}_quality_judge_agreement gauge");
    for m in monitors {
        let agreement = m
            .last_report
            .as_ref()
            .and_then(|(r, _)| r.canary.as_ref())
            .and_then(|c| c.agreement);
        if let Some(a) = agreement {
            let _ = writeln!(
                out,
                "{ns}_quality_judge_agreement{{monitor=\"{}\"}} {a}",
                escape_label_value(&m.monitor)
            );
        }
    }
    let _ = writeln!(out, "# HELP {ns}_quality_share_of_traffic Share of all traffic the monitor's last window judged (the lower end when the gateway's rate varied).");
    let _ = writeln!(out, "# TYPE {ns}_quality_share_of_traffic gauge");
    for m in monitors {
        if let Some(s) = m
            .last_report
            .as_ref()
            .and_then(|(r, _)| r.sampling.as_ref())
        {
            let _ = writeln!(
                out,
                "{ns}_quality_share_of_traffic{{monitor=\"{}\"}} {}",
                escape_label_value(&m.monitor),
                s.share_of_traffic[0]
            );
        }
    }
    let _ = writeln!(out, "# HELP {ns}_quality_scheduler_running 1 while the monitor's schedule runs it; 0 once the scheduler stopped (the log and the console say why). Absent for monitors without a schedule.");
    let _ = writeln!(out, "# TYPE {ns}_quality_scheduler_running gauge");
    for m in monitors {
        if let Some(running) = m.scheduler_running {
            let _ = writeln!(
                out,
                "{ns}_quality_scheduler_running{{monitor=\"{}\"}} {}",
                escape_label_value(&m.monitor),
                u8::from(running)
            );
        }
    }
    let _ = writeln!(out, "# HELP {ns}_quality_judge_tokens Tokens the judge reported using in the monitor's last run, by kind (prompt, completion, reasoning).");
    let _ = writeln!(out, "# TYPE {ns}_quality_judge_tokens gauge");
    for m in monitors {
        if let Some((r, _)) = &m.last_report {
            let u = &r.judge.usage;
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
                ("reasoning", u.reasoning_tokens),
            ] {
                let _ = writeln!(
                    out,
                    "{ns}_quality_judge_tokens{{monitor=\"{}\",kind=\"{kind}\"}} {n}",
                    escape_label_value(&m.monitor)
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP {ns}_quality_judge_cost_usd The judge's cost in the monitor's last run at its judge.price, in USD.");
    let _ = writeln!(out, "# TYPE {ns}_quality_judge_cost_usd gauge");
    for m in monitors {
        if let Some(cost) = m.last_report.as_ref().and_then(|(r, _)| r.judge.cost_usd) {
            let _ = writeln!(
                out,
                "{ns}_quality_judge_cost_usd{{monitor=\"{}\"}} {cost}",
                escape_label_value(&m.monitor)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::aggregate::{Status, Tally, Thresholds};
    use crate::quality::metric::Metric;

    fn report(metrics: Vec<(Metric, Tally)>) -> Report {
        let metrics = metrics
            .into_iter()
            .map(|(m, t)| (m, t.summarize(Thresholds::default(), 0)))
            .collect();
        super::super::report::report_for_tests("m", metrics)
    }

    #[test]
    fn renders_families_with_escaped_labels() {
        let mut t = Tally::default();
        t.add(Status::Scored, Some(5));
        t.add(Status::Scored, Some(3));
        let states = vec![
            MonitorState {
                monitor: "a\"b\\c\nd".into(),
                last_report: Some((
                    report(vec![
                        (Metric::Coherence, t),
                        (Metric::Fluency, Tally::default()),
                    ]),
                    1_700_000_000,
                )),
                last_run_failed: false,
                scheduler_running: None,
            },
            MonitorState {
                monitor: "never".into(),
                last_report: None,
                last_run_failed: true,
                scheduler_running: Some(false),
            },
        ];
        let text = render("llm", &states);
        assert!(text.contains("# TYPE llm_quality_average_score gauge\n"));
        assert!(text.contains("# HELP llm_quality_pass_rate "));
        assert!(
            text.contains(
                "llm_quality_average_score{monitor=\"a\\\"b\\\\c\\nd\",metric=\"coherence\"} 4\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "llm_quality_pass_rate{monitor=\"a\\\"b\\\\c\\nd\",metric=\"coherence\"} 0.5\n"
        ));
        assert!(text.contains(
            "llm_quality_violations{monitor=\"a\\\"b\\\\c\\nd\",metric=\"coherence\"} 1\n"
        ));
        assert!(text.contains(
            "llm_quality_scored_records{monitor=\"a\\\"b\\\\c\\nd\",metric=\"fluency\"} 0\n"
        ));
        assert!(text
            .contains("llm_quality_breached{monitor=\"a\\\"b\\\\c\\nd\",metric=\"fluency\"} 0\n"));
        assert!(text
            .contains("llm_quality_no_data{monitor=\"a\\\"b\\\\c\\nd\",metric=\"fluency\"} 1\n"));
        assert!(text.contains(
            "llm_quality_inconclusive{monitor=\"a\\\"b\\\\c\\nd\",metric=\"coherence\"} 1\n"
        ));
        assert!(text.contains(
            "llm_quality_coverage{monitor=\"a\\\"b\\\\c\\nd\",metric=\"coherence\"} 1\n"
        ));
        // Nothing scored: no average or pass rate sample rather than NaN.
        assert!(!text.contains("metric=\"fluency\"} NaN"));
        assert!(!text
            .lines()
            .any(|l| l.starts_with("llm_quality_average_score") && l.contains("fluency")));
        assert!(text.contains("llm_quality_last_run_failed{monitor=\"never\"} 1\n"));
        // A stopped scheduler is a 0; a monitor without a schedule has no sample.
        assert!(text.contains("llm_quality_scheduler_running{monitor=\"never\"} 0\n"));
        assert_eq!(text.matches("llm_quality_scheduler_running{").count(), 1);
        assert!(text
            .contains("llm_quality_judge_tokens{monitor=\"a\\\"b\\\\c\\nd\",kind=\"prompt\"} 0\n"));
        assert!(text.contains("# TYPE llm_quality_judge_cost_usd gauge\n"));
        assert!(text.contains(
            "llm_quality_last_run_timestamp_seconds{monitor=\"a\\\"b\\\\c\\nd\"} 1700000000\n"
        ));
    }

    #[test]
    fn namespaces() {
        assert!(valid_namespace("llm"));
        assert!(valid_namespace("a1_b"));
        assert!(!valid_namespace("1a"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("Llm"));
        assert!(!valid_namespace("l-m"));
    }
}
