//! `tokenmeter serve`: the collector's HTTP server plus the scheduled monitors.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

use crate::quality::exposition;

use crate::collector::{self, AppState};
use crate::eval::load_monitor;
use crate::judge::Judge;
use crate::scheduler;
use crate::store::Store;

pub struct ServeArgs {
    pub db: PathBuf,
    pub listen: String,
    pub monitors: Vec<PathBuf>,
    pub namespace: String,
    pub max_body_bytes: usize,
    pub run_monitors_now: bool,
}

pub async fn run(args: ServeArgs) -> Result<()> {
    if !exposition::valid_namespace(&args.namespace) {
        bail!("--namespace: {:?} must be lower-case letters, digits and _, starting with a letter, e.g. llm", args.namespace);
    }
    let mut monitors = Vec::new();
    let mut names = HashSet::new();
    for path in &args.monitors {
        let monitor = load_monitor(path)?;
        if monitor.schedule.is_none() && !args.run_monitors_now {
            bail!("{}: invalid monitor definition: schedule: tokenmeter serve runs monitors on their schedule; add one, e.g. schedule: \"15 10 * * *\"", path.display());
        }
        if !names.insert(monitor.name.clone()) {
            bail!(
                "{}: another monitor is already named {:?}; monitor names must be unique",
                path.display(),
                monitor.name
            );
        }
        // Refuse a missing API key now rather than at the first scheduled run.
        Judge::new(&monitor.judge).with_context(|| format!("{}", path.display()))?;
        monitors.push(monitor);
    }
    let store = Store::open(&args.db)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let state = AppState {
        store: Arc::new(Mutex::new(store)),
        namespace: args.namespace.clone(),
        monitors: Arc::new(monitors.iter().map(|m| m.name.clone()).collect()),
        max_body_bytes: args.max_body_bytes,
    };
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    for monitor in monitors {
        eprintln!(
            "monitor {}: schedule {:?}{}",
            monitor.name,
            monitor.schedule.as_deref().unwrap_or("none"),
            if args.run_monitors_now {
                ", running now"
            } else {
                ""
            }
        );
        tokio::spawn(scheduler::run(
            args.db.clone(),
            monitor,
            args.run_monitors_now,
        ));
    }
    axum::serve(listener, collector::router(state))
        .with_graceful_shutdown(shutdown())
        .await
        .context("the HTTP server failed")?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
