//! Runs each monitor of `tokenmeter serve` on its cron schedule (UTC), storing every run
//! and alerting on breaches and failures. Runs of one monitor never overlap. A scheduler
//! that stops says so in its [`Health`], which `/metrics` and the console show.
//!
//! Several collectors sharing one database each schedule every monitor; each scheduled
//! time is claimed in the store, and only the collector that claims it runs it (the others
//! read its result from the store). Runs asked for at start (`--run-monitors-now`) are not
//! claimed.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use chrono::Utc;

use crate::quality::monitor::Monitor;

use crate::alerts::{self, AlertState};
use crate::db::Location;
use crate::evaluate::{self, Options};
use crate::judge::Judge;
use crate::store::Store;

/// Whether a monitor's scheduler still runs: written by the scheduler, read by `/metrics`
/// and `GET /api/v1/monitors`.
#[derive(Debug, Default)]
pub struct Health {
    stopped: Mutex<Option<String>>,
}

impl Health {
    /// Why the scheduler stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.lock().map_or_else(
            |_| Some("the scheduler's state is unreadable".to_string()),
            |s| s.clone(),
        )
    }

    fn stop(&self, why: String) {
        if let Ok(mut s) = self.stopped.lock() {
            *s = Some(why);
        }
    }
}

/// Runs the monitor now, then at every time its schedule names, forever; if the schedule
/// ends, says why in `health`.
/// `instance` names this collector in the claims.
pub async fn run(
    db: Location,
    monitor: Monitor,
    run_now: bool,
    health: Arc<Health>,
    instance: Arc<str>,
) {
    if let Err(why) = schedule(&db, &monitor, run_now, &instance).await {
        eprintln!("monitor {}: {why}; not scheduling it again", monitor.name);
        health.stop(why);
    }
}

async fn schedule(
    db: &Location,
    monitor: &Monitor,
    run_now: bool,
    instance: &str,
) -> Result<(), String> {
    // Validated when the definition was loaded; a monitor without one runs on demand.
    let cron = monitor
        .schedule
        .as_deref()
        .map(|s| {
            croner::Cron::from_str(s).map_err(|e| format!("its schedule {s:?} is unreadable ({e})"))
        })
        .transpose();
    if run_now {
        run_once(db, monitor).await;
    }
    let Some(cron) = cron? else { return Ok(()) };
    loop {
        let now = Utc::now();
        let next = cron
            .find_next_occurrence(&now, false)
            .map_err(|e| format!("its schedule has no next run after {now} ({e})"))?;
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        let name = &monitor.name;
        // Off the async threads: connecting to a database may take seconds.
        let (d, n, i) = (db.clone(), name.clone(), instance.to_string());
        let claimed =
            tokio::task::spawn_blocking(move || claim(&d, &n, next.timestamp_micros(), &i))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the claim stopped: {e}")));
        match claimed {
            Ok(true) => run_once(db, monitor).await,
            Ok(false) => eprintln!("monitor {name}: the run of {next} is another collector's"),
            Err(e) => {
                eprintln!("monitor {name}: cannot claim the run of {next}, not running it: {e:#}")
            }
        }
    }
}

fn claim(db: &Location, monitor: &str, slot_us: i64, instance: &str) -> Result<bool> {
    Store::open(db)?.claim_run(monitor, slot_us, instance, Utc::now().timestamp_micros())
}

/// One evaluation of the window ending now, stored and alerted on.
async fn run_once(db: &Location, monitor: &Monitor) {
    let started = Utc::now();
    let name = &monitor.name;
    let outcome = evaluate_now(db, monitor, started)
        .await
        .map_err(|e| format!("{e:#}"));
    let finished = Utc::now();
    let saved = match &outcome {
        Ok(eval) => {
            eprintln!(
                "monitor {name}: window {} .. {}: {} records, {} sampled, {}",
                eval.report.window.from,
                eval.report.window.to,
                eval.report.records,
                eval.report.sampled,
                eval.report.status.name()
            );
            save(db, name, started, finished, Ok((&eval.report, &eval.rows)))
        }
        Err(message) => {
            eprintln!("monitor {name}: evaluation failed: {message}");
            save(db, name, started, finished, Err(message))
        }
    };
    if let Err(e) = saved {
        eprintln!("monitor {name}: cannot store the run: {e:#}");
    }
    let result = outcome
        .as_ref()
        .map(|eval| &eval.report)
        .map_err(String::as_str);
    match alerts::after_run(monitor, AlertState::At(db), result, finished).await {
        Ok(t) => {
            for f in &t.opened {
                eprintln!("monitor {name}: alert firing: {}", f.summary);
            }
            for f in &t.resolved {
                eprintln!("monitor {name}: alert resolved: {}", f.key);
            }
        }
        Err(e) => eprintln!("monitor {name}: alert not delivered: {e:#}"),
    }
}

async fn evaluate_now(
    db: &Location,
    monitor: &Monitor,
    now: chrono::DateTime<Utc>,
) -> Result<evaluate::Evaluation> {
    let store = Store::open(db)?;
    let window = monitor.window.at(now);
    let records = evaluate::records_from_store(&store, window)?;
    let previous = store
        .monitor_runs(&monitor.name)?
        .last_report
        .map(|(r, _)| r);
    let store = Arc::new(Mutex::new(store));
    // A fresh client per run, so that the call count reported is this run's.
    let judge = Arc::new(Judge::new(&monitor.judge)?);
    evaluate::evaluate(
        monitor,
        judge,
        records,
        window,
        Some(store),
        previous.as_ref(),
        &Options {
            combined: false,
            progress: false,
        },
    )
    .await
}

fn save(
    db: &Location,
    name: &str,
    started: chrono::DateTime<Utc>,
    finished: chrono::DateTime<Utc>,
    outcome: Result<
        (
            &crate::quality::report::Report,
            &[crate::quality::report::Row],
        ),
        &str,
    >,
) -> Result<()> {
    Store::open(db)?
        .save_run(
            name,
            started.timestamp_micros(),
            finished.timestamp_micros(),
            outcome,
        )
        .context("saving the run")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONITOR: &str =
        "name: m\nschedule: \"0 3 * * *\"\njudge:\n  url: http://127.0.0.1:9/v1\n  model: j\nmetrics: {fluency: {}}\n";

    #[tokio::test]
    async fn a_scheduler_that_stops_says_why() {
        let mut monitor = Monitor::parse(MONITOR).unwrap();
        monitor.schedule = Some("not a schedule".into());
        let health = Arc::new(Health::default());
        let dir = tempfile::tempdir().unwrap();
        let db = Location::Sqlite(dir.path().join("t.db"));
        run(db, monitor, false, health.clone(), "test".into()).await;
        let why = health.stopped().unwrap();
        assert!(why.contains("\"not a schedule\" is unreadable"), "{why}");
    }

    #[tokio::test]
    async fn a_monitor_without_a_schedule_has_no_scheduler_to_stop() {
        let mut monitor = Monitor::parse(MONITOR).unwrap();
        monitor.schedule = None;
        let health = Arc::new(Health::default());
        let dir = tempfile::tempdir().unwrap();
        let db = Location::Sqlite(dir.path().join("t.db"));
        run(db, monitor, false, health.clone(), "test".into()).await;
        assert_eq!(health.stopped(), None);
    }
}
