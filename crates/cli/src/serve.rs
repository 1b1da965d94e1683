//! `tokenmeter serve`: the collector's HTTP server plus the scheduled monitors.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::quality::exposition;

use crate::collector::{self, AppState};
use crate::db::Location;
use crate::eval::load_monitor;
use crate::judge::Judge;
use crate::retention::Retention;
use crate::runs;
use crate::scheduler;
use crate::stores::Stores;

pub struct ServeArgs {
    pub db: Location,
    pub retention: Retention,
    pub listen: String,
    pub monitors: Vec<PathBuf>,
    pub namespace: String,
    pub max_body_bytes: usize,
    pub run_monitors_now: bool,
    pub token_file: Option<PathBuf>,
    pub ingest_token_file: Option<PathBuf>,
}

/// The shortest token accepted.
const MIN_TOKEN_BYTES: usize = 16;

fn read_token(flag: &str, path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("{flag}: {} must hold one token of at least {MIN_TOKEN_BYTES} printable ASCII characters without spaces (e.g. from `openssl rand -hex 24`)", path.display());
    }
    Ok(token.to_string())
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
    let token = args
        .token_file
        .as_deref()
        .map(|p| read_token("--token-file", p))
        .transpose()?;
    let ingest_token = args
        .ingest_token_file
        .as_deref()
        .map(|p| read_token("--ingest-token-file", p))
        .transpose()?;
    let stores = Stores::open(&args.db)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && token.is_none() {
        bail!("--listen: {addr} is reachable from other machines, and the store holds users' prompts and answers; give --token-file so that reads need a token, or listen on 127.0.0.1");
    }
    let state = AppState {
        store: Arc::new(stores),
        namespace: args.namespace.clone(),
        monitors: Arc::new(
            monitors
                .iter()
                .map(|m| runs::MonitorInfo {
                    name: m.name.clone(),
                    schedule: m.schedule.clone(),
                    window: m.window.size.as_str().to_string(),
                    metrics: m
                        .metrics
                        .iter()
                        .map(|(x, _)| x.name().to_string())
                        .collect(),
                    scheduler: Arc::default(),
                })
                .collect(),
        ),
        max_body_bytes: args.max_body_bytes,
        token: token.map(Arc::new),
        ingest_token: ingest_token.map(Arc::new),
        deliveries: Arc::new(tokio::sync::Semaphore::new(collector::MAX_DELIVERIES)),
    };
    // Names this collector in the claims of scheduled runs, among others sharing the store.
    let instance: Arc<str> = format!("{addr}/{}", std::process::id()).into();
    eprintln!("retention: {}", args.retention.describe());
    tokio::spawn(crate::retention::run(
        args.db.clone(),
        args.retention.clone(),
    ));
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    for (monitor, info) in monitors.into_iter().zip(state.monitors.iter()) {
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
            info.scheduler.clone(),
            instance.clone(),
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
