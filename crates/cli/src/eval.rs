//! `tokenmeter eval`: one evaluation of a monitor's window, printed and stored.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use chrono::Utc;

use crate::quality::duration::parse_rfc3339;
use crate::quality::monitor::Monitor;
use crate::quality::report;

use crate::alerts::{self, AlertState};
use crate::db::Location;
use crate::evaluate::{self, Options};
use crate::judge::Judge;
use crate::store::Store;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub struct EvalArgs {
    pub monitor: PathBuf,
    pub db: Option<Location>,
    pub records: Option<PathBuf>,
    pub cache_db: Option<Location>,
    pub format: Format,
    pub out: Option<PathBuf>,
    pub records_out: Option<PathBuf>,
    pub combined: bool,
    pub now: Option<String>,
    pub no_alerts: bool,
}

pub fn load_monitor(path: &Path) -> Result<Monitor> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read monitor definition {}", path.display()))?;
    Monitor::parse(&text).with_context(|| format!("{}", path.display()))
}

/// Exit code 0 when every metric is ok, 2 on a breach, 3 when inconclusive, 4 with no data.
pub async fn run(args: EvalArgs) -> Result<ExitCode> {
    let monitor = load_monitor(&args.monitor)?;
    let now = match &args.now {
        Some(text) => parse_rfc3339(text).with_context(|| {
            format!("--now: {text:?} is not an RFC 3339 time, e.g. 2026-11-26T10:15:00Z")
        })?,
        None => Utc::now(),
    };
    let judge = Arc::new(Judge::new(&monitor.judge)?);
    let window = monitor.window.at(now);

    let (records, store) = match (&args.db, &args.records) {
        (Some(db), _) => {
            if let Some(path) = db.sqlite_path().filter(|p| !p.exists()) {
                anyhow::bail!("{}: no such database; collect records with tokenmeter serve or records import, or pass --records FILE.jsonl", path.display());
            }
            let store = Store::open(db)?;
            (evaluate::records_from_store(&store, window)?, Some(store))
        }
        (None, Some(file)) => {
            let records = evaluate::records_from_file(file, window)?;
            let store = args.cache_db.as_ref().map(Store::open).transpose()?;
            (records, store)
        }
        (None, None) => anyhow::bail!("give the records with --db FILE or --records FILE.jsonl"),
    };
    let previous = match &store {
        Some(s) => s.monitor_runs(&monitor.name)?.last_report.map(|(r, _)| r),
        None => None,
    };
    let store = store.map(|s| Arc::new(Mutex::new(s)));
    let started = Utc::now();
    let evaluation = evaluate::evaluate(
        &monitor,
        judge,
        records,
        window,
        store.clone(),
        previous.as_ref(),
        &Options {
            combined: args.combined,
            progress: true,
        },
    )
    .await?;
    let report = &evaluation.report;

    if let Some(store) = &store {
        let mut store = store
            .lock()
            .map_err(|_| anyhow::anyhow!("the store is unusable after an earlier failure"))?;
        store.save_run(
            &monitor.name,
            started.timestamp_micros(),
            Utc::now().timestamp_micros(),
            Ok((report, &evaluation.rows)),
        )?;
    }

    let rendered = match args.format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(report)?),
        Format::Table => report::render_table(report),
    };
    match &args.out {
        Some(path) => std::fs::write(path, &rendered)
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(rendered.as_bytes())?;
            stdout.flush()?;
        }
    }
    if let Some(path) = &args.records_out {
        let mut text = String::new();
        for row in &evaluation.rows {
            text.push_str(&serde_json::to_string(row)?);
            text.push('\n');
        }
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the per-record table to {}", path.display()))?;
    }

    if !args.no_alerts {
        let state = match &store {
            Some(s) => AlertState::Shared(s),
            None => AlertState::None,
        };
        if let Err(e) = alerts::after_run(&monitor, state, Ok(report), Utc::now()).await {
            eprintln!("warning: alert not delivered: {e:#}");
        }
    }
    Ok(ExitCode::from(report.status.exit_code()))
}
