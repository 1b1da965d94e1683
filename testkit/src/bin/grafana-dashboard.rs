//! Writes the Grafana dashboard (`deploy/grafana/tokenmeter.json`) for a filter
//! configuration, from the core's metric families (see `tokenmeter_testkit::grafana`).
//!
//! `grafana-dashboard [--config FILE] [--by LABEL,LABEL] [--out FILE]`
//!
//! Defaults: `examples/filter-config.json`, `--by model,team`, standard output. The
//! committed dashboard is `make dashboard`, and a test keeps it equal to this output.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use tokenmeter_core::config::Config;
use tokenmeter_testkit::envoy::repo_root;
use tokenmeter_testkit::grafana;

fn main() -> Result<()> {
    let mut config = repo_root().join("examples/filter-config.json");
    let mut by = "model,team".to_string();
    let mut out: Option<PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().context("missing value");
        match flag.as_str() {
            "--config" => config = PathBuf::from(val()?),
            "--by" => by = val()?,
            "--out" => out = Some(PathBuf::from(val()?)),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let text =
        std::fs::read(&config).with_context(|| format!("cannot read {}", config.display()))?;
    let config = Config::parse(&text).with_context(|| config.display().to_string())?;
    let labels: Vec<&str> = by
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let json = grafana::render(&config, &labels)?;
    match out {
        Some(path) => std::fs::write(&path, json)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{json}"),
    }
    Ok(())
}
