//! Which alert conditions a run leaves firing, and how they changed since the last run.
//!
//! An alert is a condition that starts and ends: a metric breached, the evaluation failed,
//! the window held no data. Each run observes the conditions it can decide; one it cannot
//! (a metric inconclusive or without data, every metric while the evaluation failed) keeps
//! its earlier state, so overlapping windows, a thin day or a judge outage neither repeat
//! nor resolve an alert. Notifications go out on the changes only: an alert that opened,
//! and one that resolved.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quality::aggregate::Conclusion;
use crate::quality::report::Report;

/// `alertname` of a metric that breached its threshold.
pub const BREACHED: &str = "TokenmeterQualityBreached";
/// `alertname` of an evaluation that could not finish.
pub const FAILED: &str = "TokenmeterEvaluationFailed";
/// `alertname` of a window without any eligible record (with `alerts.no_data`).
pub const NO_DATA: &str = "TokenmeterNoData";
/// `alertname` of a judge that no longer scores the drift canary as it should.
pub const JUDGE_DRIFT: &str = "TokenmeterJudgeDrift";

/// A firing alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    /// What the alert is about, unique within its monitor, e.g.
    /// `TokenmeterQualityBreached/groundedness` (see [`key`]).
    pub key: String,
    /// `alertname`, `monitor`, for a metric `metric`, and for a group its labels.
    pub labels: BTreeMap<String, String>,
    /// One line saying why it fires (the latest run's reason).
    pub summary: String,
    /// When it started firing (Unix microseconds).
    pub since_us: i64,
    /// When a run last saw it firing.
    #[serde(default)]
    pub seen_us: i64,
}

/// The labels every alert has besides its group's.
const OWN_LABELS: [&str; 3] = ["alertname", "monitor", "metric"];

/// The key of an alert: its name, its metric, and its group as JSON (values come from
/// traffic, and no value can make two groups' keys the same).
fn key(alertname: &str, metric: Option<&str>, group: &BTreeMap<String, String>) -> String {
    let mut key = alertname.to_string();
    if let Some(m) = metric {
        key.push('/');
        key.push_str(m);
    }
    if !group.is_empty() {
        key.push('/');
        key.push_str(&serde_json::to_string(group).unwrap_or_default());
    }
    key
}

impl Firing {
    fn new(
        monitor: &str,
        alertname: &str,
        metric: Option<&str>,
        summary: String,
        now_us: i64,
    ) -> Self {
        Self::in_group(
            monitor,
            alertname,
            metric,
            &BTreeMap::new(),
            summary,
            now_us,
        )
    }

    /// An alert about one group of records (`group_by`): its labels join the alert's.
    fn in_group(
        monitor: &str,
        alertname: &str,
        metric: Option<&str>,
        group: &BTreeMap<String, String>,
        summary: String,
        now_us: i64,
    ) -> Self {
        let mut labels = group.clone();
        labels.insert("alertname".to_string(), alertname.to_string());
        labels.insert("monitor".to_string(), monitor.to_string());
        if let Some(m) = metric {
            labels.insert("metric".to_string(), m.to_string());
        }
        Firing {
            key: key(alertname, metric, group),
            labels,
            summary,
            since_us: now_us,
            seen_us: now_us,
        }
    }

    /// The group it is about (`group_by`): its labels but tokenmeter's own; empty for the
    /// monitor as a whole.
    pub fn group(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .filter(|(k, _)| !OWN_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn alertname(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    pub fn metric(&self) -> Option<&str> {
        self.labels.get("metric").map(String::as_str)
    }
}

/// What one run decided: the conditions firing, and those it could not decide.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub firing: Vec<Firing>,
    pub undecided: Undecided,
}

/// The conditions a run leaves as they were.
#[derive(Debug, Clone, PartialEq)]
pub enum Undecided {
    /// These keys; every other condition not firing is resolved.
    Keys(Vec<String>),
    /// Every condition but the ones firing (an evaluation that failed decides nothing
    /// about quality).
    AllOthers,
}

/// The conditions of a finished evaluation: each breached metric fires, each `ok` one is
/// resolved, inconclusive and empty ones are undecided; with `no_data`, a window where no
/// metric had data fires [`NO_DATA`]. A finished run resolves [`FAILED`].
pub fn observe_report(report: &Report, no_data: bool, now_us: i64) -> Observed {
    let monitor = report.monitor.as_str();
    let mut firing = Vec::new();
    let mut undecided = Vec::new();
    let overall = BTreeMap::new();
    let scopes = std::iter::once((&overall, &report.metrics, String::new())).chain(
        report
            .groups
            .iter()
            .map(|g| (&g.labels, &g.metrics, format!(" [{}]", g.name()))),
    );
    for (group, metrics, suffix) in scopes {
        for (metric, s) in metrics {
            let name = metric.name();
            if s.breached {
                let why = s.breach_reason().unwrap_or_else(|| "breached".to_string());
                let summary = format!("{name}{suffix}: {why}");
                firing.push(Firing::in_group(
                    monitor,
                    BREACHED,
                    Some(name),
                    group,
                    summary,
                    now_us,
                ));
            } else if s.status != Conclusion::Ok {
                undecided.push(key(BREACHED, Some(name), group));
            }
        }
    }
    match &report.canary {
        Some(c) if c.drifted => firing.push(Firing::new(
            monitor,
            JUDGE_DRIFT,
            None,
            format!("judge drift: {}", c.describe()),
            now_us,
        )),
        Some(c) if c.agreement.is_none() => undecided.push(key(JUDGE_DRIFT, None, &overall)),
        _ => {}
    }
    if no_data && report.status == Conclusion::NoData {
        firing.push(Firing::new(
            monitor,
            NO_DATA,
            None,
            format!(
                "no record to judge in the window {} .. {} ({} records, {} sampled)",
                report.window.from, report.window.to, report.records, report.sampled
            ),
            now_us,
        ));
    }
    Observed {
        firing,
        undecided: Undecided::Keys(undecided),
    }
}

/// Leaves undecided the alerts of groups absent from this run's window (a model without
/// traffic today is not a recovery), for one window's length after a run last saw them
/// firing; past that they resolve, so alerts of groups gone for good do not pile up.
pub fn keep_absent_groups(
    observed: &mut Observed,
    before: &[Firing],
    report: &Report,
    now_us: i64,
    keep_us: i64,
) {
    let Undecided::Keys(keys) = &mut observed.undecided else {
        return;
    };
    for b in before {
        let group = b.group();
        let absent = !group.is_empty() && !report.groups.iter().any(|g| g.labels == group);
        if absent && now_us.saturating_sub(b.seen_us) < keep_us {
            keys.push(b.key.clone());
        }
    }
}

/// The conditions of an evaluation that failed: [`FAILED`] fires, the rest stays.
pub fn observe_failure(monitor: &str, error: &str, now_us: i64) -> Observed {
    Observed {
        firing: vec![Firing::new(
            monitor,
            FAILED,
            None,
            error.to_string(),
            now_us,
        )],
        undecided: Undecided::AllOthers,
    }
}

/// How the firing alerts changed with a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    /// Alerts that started firing with this run.
    pub opened: Vec<Firing>,
    /// Alerts that stopped firing with this run.
    pub resolved: Vec<Firing>,
    /// Every alert firing after this run (the opened ones included), in key order.
    pub firing: Vec<Firing>,
}

impl Transition {
    /// The alerts that fired before this run and still do.
    pub fn still_firing(&self) -> impl Iterator<Item = &Firing> {
        self.firing
            .iter()
            .filter(|f| !self.opened.iter().any(|o| o.key == f.key))
    }

    /// Whether anything changed that people are told about.
    pub fn changed(&self) -> bool {
        !self.opened.is_empty() || !self.resolved.is_empty()
    }
}

/// The change from the alerts firing before a run to what the run observed. A condition
/// still firing keeps when it started and takes the run's reason.
pub fn transition(before: &[Firing], observed: Observed) -> Transition {
    let mut after: BTreeMap<String, Firing> = BTreeMap::new();
    let mut opened = Vec::new();
    for mut now in observed.firing {
        match before.iter().find(|b| b.key == now.key) {
            // Still firing: since when it started; seen now.
            Some(b) => now.since_us = b.since_us,
            None => opened.push(now.clone()),
        }
        after.insert(now.key.clone(), now);
    }
    let mut resolved = Vec::new();
    for b in before {
        if after.contains_key(&b.key) {
            continue;
        }
        let keep = match &observed.undecided {
            Undecided::AllOthers => true,
            Undecided::Keys(keys) => keys.contains(&b.key),
        };
        if keep {
            after.insert(b.key.clone(), b.clone());
        } else {
            resolved.push(b.clone());
        }
    }
    Transition {
        opened,
        resolved,
        firing: after.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::aggregate::{Status, Tally, Thresholds};
    use crate::quality::metric::Metric;

    /// A report whose metrics scored these scores (nothing: no data).
    fn report(metrics: &[(Metric, &[u8])]) -> Report {
        let thresholds = Thresholds {
            min_samples: 1,
            ..Thresholds::default()
        };
        let metrics: Vec<_> = metrics
            .iter()
            .map(|(m, scores)| {
                let mut t = Tally::default();
                for s in *scores {
                    t.add(Status::Scored, Some(*s));
                }
                (*m, t.summarize(thresholds, 0))
            })
            .collect();
        crate::quality::report::report_for_tests("bot", metrics)
    }

    const LOW: &[u8] = &[1, 2, 1, 2, 1];
    const HIGH: &[u8] = &[5, 5, 4, 5, 5];

    fn keys(f: &[Firing]) -> Vec<&str> {
        f.iter().map(|f| f.key.as_str()).collect()
    }

    #[test]
    fn a_breach_opens_once_and_resolves_once() {
        let run = |before: &[Firing], scores: &[u8], at: i64| {
            transition(
                before,
                observe_report(&report(&[(Metric::Fluency, scores)]), false, at),
            )
        };
        let first = run(&[], LOW, 1);
        assert_eq!(keys(&first.opened), ["TokenmeterQualityBreached/fluency"]);
        assert_eq!(first.firing[0].labels["metric"], "fluency");
        assert_eq!(first.firing[0].labels["monitor"], "bot");
        assert!(
            first.firing[0].summary.starts_with("fluency: "),
            "{}",
            first.firing[0].summary
        );
        // The next overlapping window still breaches: nothing new to tell.
        let second = run(&first.firing, LOW, 2);
        assert!(!second.changed());
        assert_eq!(second.firing[0].since_us, 1);
        // Recovered: resolved, and nothing fires.
        let third = run(&second.firing, HIGH, 3);
        assert_eq!(keys(&third.resolved), ["TokenmeterQualityBreached/fluency"]);
        assert!(third.opened.is_empty() && third.firing.is_empty());
        // Healthy again: silence.
        assert!(!run(&third.firing, HIGH, 4).changed());
    }

    #[test]
    fn an_undecided_window_neither_repeats_nor_resolves() {
        let open = transition(
            &[],
            observe_report(&report(&[(Metric::Fluency, LOW)]), false, 1),
        );
        // No data for fluency (an idle day): still firing, not resolved.
        let idle = transition(
            &open.firing,
            observe_report(&report(&[(Metric::Fluency, &[])]), false, 2),
        );
        assert!(!idle.changed());
        assert_eq!(keys(&idle.firing), ["TokenmeterQualityBreached/fluency"]);
        // The judge is down: the failure opens, the breach stays.
        let down = transition(&idle.firing, observe_failure("bot", "judge unreachable", 3));
        assert_eq!(keys(&down.opened), ["TokenmeterEvaluationFailed"]);
        assert_eq!(down.firing.len(), 2);
        // Back and healthy: both resolve.
        let back = transition(
            &down.firing,
            observe_report(&report(&[(Metric::Fluency, HIGH)]), false, 4),
        );
        assert_eq!(
            keys(&back.resolved),
            [
                "TokenmeterEvaluationFailed",
                "TokenmeterQualityBreached/fluency"
            ]
        );
    }

    #[test]
    fn a_group_without_records_keeps_its_alert_for_a_window() {
        let mut grouped = report(&[(Metric::Fluency, HIGH)]);
        let group = BTreeMap::from([("model".to_string(), "gpt-4o".to_string())]);
        let low = report(&[(Metric::Fluency, LOW)]);
        grouped.groups.push(crate::quality::report::GroupReport {
            labels: group.clone(),
            sampled: 5,
            metrics: low.metrics.clone(),
            status: Conclusion::Breached,
            breached: true,
        });
        let open = transition(&[], observe_report(&grouped, false, 1));
        assert_eq!(open.opened.len(), 1);
        assert_eq!(open.opened[0].group(), group);
        // The next window has no gpt-4o record: the alert stays.
        let quiet = report(&[(Metric::Fluency, HIGH)]);
        let mut seen = observe_report(&quiet, false, 50);
        keep_absent_groups(&mut seen, &open.firing, &quiet, 50, 100);
        let t = transition(&open.firing, seen);
        assert!(!t.changed(), "{t:?}");
        // Gone for longer than a window: resolved.
        let mut late = observe_report(&quiet, false, 200);
        keep_absent_groups(&mut late, &t.firing, &quiet, 200, 100);
        assert_eq!(transition(&t.firing, late).resolved.len(), 1);
    }

    #[test]
    fn group_keys_cannot_collide_whatever_the_values() {
        let one = BTreeMap::from([("model".to_string(), "a/team=b".to_string())]);
        let two = BTreeMap::from([
            ("model".to_string(), "a".to_string()),
            ("team".to_string(), "b".to_string()),
        ]);
        let key = |g: &BTreeMap<String, String>| {
            Firing::in_group("bot", BREACHED, Some("fluency"), g, String::new(), 0).key
        };
        assert_ne!(key(&one), key(&two));
        assert_eq!(
            key(&two),
            r#"TokenmeterQualityBreached/fluency/{"model":"a","team":"b"}"#
        );
    }

    #[test]
    fn a_metric_dropped_from_the_monitor_resolves() {
        let open = transition(
            &[],
            observe_report(&report(&[(Metric::Fluency, LOW)]), false, 1),
        );
        let later = transition(
            &open.firing,
            observe_report(&report(&[(Metric::Coherence, HIGH)]), false, 2),
        );
        assert_eq!(keys(&later.resolved), ["TokenmeterQualityBreached/fluency"]);
    }

    #[test]
    fn no_data_alerts_only_when_asked() {
        let empty = report(&[(Metric::Fluency, &[]), (Metric::Coherence, &[])]);
        assert!(observe_report(&empty, false, 1).firing.is_empty());
        let open = transition(&[], observe_report(&empty, true, 1));
        assert_eq!(keys(&open.opened), ["TokenmeterNoData"]);
        assert!(open.opened[0].summary.contains("no record to judge"));
        // One metric with data ends it.
        let data = report(&[(Metric::Fluency, HIGH), (Metric::Coherence, &[])]);
        let back = transition(&open.firing, observe_report(&data, true, 2));
        assert_eq!(keys(&back.resolved), ["TokenmeterNoData"]);
    }
}
