//! `GET /api/v1/quality` and `GET /api/v1/monitors`: the monitors' runs of a window per
//! metric (the trend, violations, violation rate, score histogram), and each configured
//! monitor with its last and next run (see docs/api.md).

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::params::{only_known, window_us, BadParam};
use crate::quality::aggregate::Summary;
use crate::quality::report::Report;

/// A checked quality query: runs that finished in `[from_us, to_us)`, of one monitor or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualityQuery {
    pub from_us: i64,
    pub to_us: i64,
    pub monitor: Option<String>,
}

/// Reads `from`/`to`/`window` (default: the last 7 days) and `monitor`.
pub fn parse_query(
    params: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Result<QualityQuery, BadParam> {
    only_known(params, &["from", "to", "window", "monitor"])?;
    let (from_us, to_us) = window_us(params, now, 7 * 86_400)?;
    Ok(QualityQuery {
        from_us,
        to_us,
        monitor: params.get("monitor").cloned(),
    })
}

/// One stored run, as the store reads it.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub id: i64,
    pub monitor: String,
    pub finished_us: i64,
    pub error: Option<String>,
    pub report: Option<Report>,
}

/// A metric's result in one run: the point of its trend.
#[derive(Debug, Serialize)]
pub struct Point {
    pub time: String,
    pub run_id: i64,
    #[serde(flatten)]
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct MetricRuns {
    pub metric: String,
    /// Runs that scored this metric, and those among them that breached.
    pub runs: u64,
    pub breached_runs: u64,
    /// Breached runs over runs (`null` without runs).
    pub violation_rate: Option<f64>,
    /// Violations (scored records under the acceptable score) summed over the runs.
    pub violations: u64,
    /// How often each score 1 to 5 was given, counting each record's latest score once.
    pub histogram: BTreeMap<String, u64>,
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize)]
pub struct FailedRun {
    pub time: String,
    pub run_id: i64,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct MonitorRuns {
    pub monitor: String,
    /// Runs that finished in the window, those that breached, and those that failed.
    pub runs: u64,
    pub breached_runs: u64,
    pub failed_runs: u64,
    pub metrics: Vec<MetricRuns>,
    pub failures: Vec<FailedRun>,
}

#[derive(Debug, Serialize)]
pub struct Quality {
    pub from: String,
    pub to: String,
    pub monitors: Vec<MonitorRuns>,
}

pub fn time(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Groups the runs (in time order) per monitor and metric; `histograms` holds
/// `(monitor, metric, score, count)`.
pub fn answer(
    q: &QualityQuery,
    runs: Vec<StoredRun>,
    histograms: &[(String, String, i64, u64)],
) -> Quality {
    let mut monitors: BTreeMap<String, MonitorRuns> = BTreeMap::new();
    for run in runs {
        let m = monitors
            .entry(run.monitor.clone())
            .or_insert_with(|| MonitorRuns {
                monitor: run.monitor.clone(),
                runs: 0,
                breached_runs: 0,
                failed_runs: 0,
                metrics: Vec::new(),
                failures: Vec::new(),
            });
        m.runs += 1;
        let Some(report) = run.report else {
            m.failed_runs += 1;
            m.failures.push(FailedRun {
                time: time(run.finished_us),
                run_id: run.id,
                error: run.error.unwrap_or_default(),
            });
            continue;
        };
        m.breached_runs += u64::from(report.breached);
        for (metric, summary) in report.metrics {
            let name = metric.name();
            let at = match m.metrics.iter().position(|x| x.metric == name) {
                Some(at) => at,
                None => {
                    m.metrics.push(MetricRuns {
                        metric: name.to_string(),
                        runs: 0,
                        breached_runs: 0,
                        violation_rate: None,
                        violations: 0,
                        histogram: (1..=5).map(|s| (s.to_string(), 0)).collect(),
                        points: Vec::new(),
                    });
                    m.metrics.len() - 1
                }
            };
            if let Some(mr) = m.metrics.get_mut(at) {
                mr.runs += 1;
                mr.breached_runs += u64::from(summary.breached);
                mr.violations += summary.violations;
                mr.points.push(Point {
                    time: time(run.finished_us),
                    run_id: run.id,
                    summary,
                });
            }
        }
    }
    for (monitor, metric, score, count) in histograms {
        let Some(mr) = monitors
            .get_mut(monitor)
            .and_then(|m| m.metrics.iter_mut().find(|x| &x.metric == metric))
        else {
            continue;
        };
        if let Some(n) = mr.histogram.get_mut(&score.to_string()) {
            *n += count;
        }
    }
    let mut monitors: Vec<MonitorRuns> = monitors.into_values().collect();
    for m in &mut monitors {
        for mr in &mut m.metrics {
            mr.violation_rate = (mr.runs > 0).then(|| mr.breached_runs as f64 / mr.runs as f64);
        }
    }
    Quality {
        from: time(q.from_us),
        to: time(q.to_us),
        monitors,
    }
}

/// What `serve` knows of a configured monitor.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorInfo {
    pub name: String,
    pub schedule: Option<String>,
    /// The window each run evaluates, ending at the run (ISO 8601).
    pub window: String,
    pub metrics: Vec<String>,
    #[serde(skip)]
    pub scheduler: std::sync::Arc<crate::scheduler::Health>,
}

impl MonitorInfo {
    /// `running`, `stopped`, or `none` for a monitor without a schedule.
    pub fn scheduler_state(&self) -> (&'static str, Option<String>) {
        match (&self.schedule, self.scheduler.stopped()) {
            (_, Some(why)) => ("stopped", Some(why)),
            (Some(_), None) => ("running", None),
            (None, None) => ("none", None),
        }
    }
}

/// A monitor's state for the console.
#[derive(Debug, Serialize)]
pub struct MonitorStatus {
    #[serde(flatten)]
    pub info: MonitorInfo,
    /// `never_run`, `ok`, `breached`, `inconclusive`, `no_data` or `failed` (the last
    /// run's outcome).
    pub status: &'static str,
    pub last_run: Option<LastRun>,
    /// When the schedule runs it next (`null` without a schedule, a next time or a running
    /// scheduler).
    pub next_run: Option<String>,
    /// `running`, `stopped` (the schedule will not run it again: `scheduler_error` says
    /// why) or `none` (no schedule).
    pub scheduler: &'static str,
    pub scheduler_error: Option<String>,
    /// The alerts firing after its last run.
    pub alerts_firing: Vec<AlertFiring>,
}

/// A firing alert, as the console lists it.
#[derive(Debug, Serialize)]
pub struct AlertFiring {
    pub alertname: String,
    pub metric: Option<String>,
    pub summary: String,
    pub since: String,
}

impl From<crate::alerts::condition::Firing> for AlertFiring {
    fn from(f: crate::alerts::condition::Firing) -> Self {
        AlertFiring {
            alertname: f.alertname().to_string(),
            metric: f.metric().map(str::to_string),
            since: time(f.since_us),
            summary: f.summary,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LastRun {
    pub time: String,
    pub run_id: i64,
    pub breached: Option<bool>,
    pub error: Option<String>,
}

pub fn status(info: &MonitorInfo, last: Option<StoredRun>, now: DateTime<Utc>) -> MonitorStatus {
    let (scheduler, scheduler_error) = info.scheduler_state();
    let next_run = info
        .schedule
        .as_deref()
        .filter(|_| scheduler == "running")
        .and_then(|s| croner::Cron::from_str(s).ok())
        .and_then(|c| c.find_next_occurrence(&now, false).ok())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let (status, last_run) = match last {
        None => ("never_run", None),
        Some(run) => {
            let breached = run.report.as_ref().map(|r| r.breached);
            let status = match &run.report {
                None => "failed",
                Some(r) if r.breached => "breached",
                Some(r) => r.status.name(),
            };
            (
                status,
                Some(LastRun {
                    time: time(run.finished_us),
                    run_id: run.id,
                    breached,
                    error: run.error,
                }),
            )
        }
    };
    MonitorStatus {
        info: info.clone(),
        status,
        last_run,
        next_run,
        scheduler,
        scheduler_error,
        alerts_firing: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::duration::parse_rfc3339;

    #[test]
    fn quality_queries_default_to_a_week_and_refuse_unknown_parameters() {
        let now = parse_rfc3339("2026-12-01T12:00:00Z").unwrap();
        let q = parse_query(&BTreeMap::new(), now).unwrap();
        assert_eq!(q.to_us - q.from_us, 7 * 86_400_000_000);
        let params = [("metric".to_string(), "x".to_string())].into();
        assert_eq!(parse_query(&params, now).unwrap_err().param, "query");
    }

    #[test]
    fn a_monitor_without_runs_is_never_run_and_its_schedule_names_the_next() {
        let info = MonitorInfo {
            name: "m".into(),
            schedule: Some("15 10 * * *".into()),
            window: "P7D".into(),
            metrics: vec![],
            scheduler: Default::default(),
        };
        let now = parse_rfc3339("2026-12-01T12:00:00Z").unwrap();
        let s = status(&info, None, now);
        assert_eq!(s.status, "never_run");
        assert_eq!(s.next_run.as_deref(), Some("2026-12-02T10:15:00Z"));
        assert_eq!((s.scheduler, s.scheduler_error), ("running", None));
        let failed = StoredRun {
            id: 3,
            monitor: "m".into(),
            finished_us: 0,
            error: Some("judge down".into()),
            report: None,
        };
        assert_eq!(status(&info, Some(failed), now).status, "failed");
    }
}
