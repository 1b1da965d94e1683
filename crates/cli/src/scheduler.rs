//! Runs each monitor of `tokenmeter serve` on its cron schedule (UTC), storing every run
//! and alerting on breaches and failures. Runs of one monitor never overlap.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use chrono::Utc;

use crate::quality::monitor::Monitor;

use crate::alerts;
use crate::evaluate::{self, Options};
use crate::judge::Judge;
use crate::store::Store;

/// Runs the monitor now, then at every time its schedule names, forever.
pub async fn run(db: PathBuf, monitor: Monitor, run_now: bool) {
    let name = monitor.name.clone();
    let cron = match monitor.schedule.as_deref().map(croner::Cron::from_str) {
        Some(Ok(cron)) => Some(cron),
        // Validated when the definition was loaded; a monitor without one runs on demand.
        _ => None,
    };
    if run_now {
        run_once(&db, &monitor).await;
    }
    let Some(cron) = cron else { return };
    loop {
        let now = Utc::now();
        let next = match cron.find_next_occurrence(&now, false) {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "monitor {name}: its schedule has no next run ({e}); not scheduling it again"
                );
                return;
            }
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        run_once(&db, &monitor).await;
    }
}

/// One evaluation of the window ending now, stored and alerted on.
async fn run_once(db: &std::path::Path, monitor: &Monitor) {
    let started = Utc::now();
    let name = &monitor.name;
    let outcome = evaluate_now(db, monitor, started).await;
    let finished = Utc::now();
    let (alert, saved) = match &outcome {
        Ok(eval) => {
            eprintln!(
                "monitor {name}: window {} .. {}: {} records, {} sampled, {}",
                eval.report.window.from,
                eval.report.window.to,
                eval.report.records,
                eval.report.sampled,
                eval.report.status.name()
            );
            (
                eval.report
                    .breached
                    .then(|| (alerts::breach(&eval.report), Some(&eval.report))),
                save(db, name, started, finished, Ok((&eval.report, &eval.rows))),
            )
        }
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("monitor {name}: evaluation failed: {message}");
            (
                Some((alerts::failure(name, &message), None)),
                save(db, name, started, finished, Err(&message)),
            )
        }
    };
    if let Err(e) = saved {
        eprintln!("monitor {name}: cannot store the run: {e:#}");
    }
    if let Some((alert, report)) = alert {
        if let Err(e) = alerts::send(monitor, &alert, report).await {
            eprintln!("monitor {name}: alert not delivered: {e:#}");
        }
    }
}

async fn evaluate_now(
    db: &std::path::Path,
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
    db: &std::path::Path,
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
