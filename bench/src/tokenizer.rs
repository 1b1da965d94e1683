//! Tokenizer throughput: the same counting program natively and inside V8.
//!
//! `tokcount` (built by the benchmark from `bench/wasm/tokcount`) counts a fixed corpus with
//! `tiktoken-rs` and prints one JSON line. Its wasm32-wasip1 build runs under Node's WASI,
//! which executes it with V8, the engine Envoy's Wasm runtime embeds.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context as _, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Building the o200k_base encoding.
    pub init_ms: f64,
    /// Steady state: the median of the counting passes.
    pub tokens_per_s: f64,
    /// The first pass (for V8, before its optimising tier has taken over).
    pub first_tokens_per_s: f64,
    pub tokens: u64,
    pub bytes: u64,
}

pub fn parse(output: &str) -> Result<Throughput> {
    let line = output
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("no results from tokcount: {output}"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let n = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| anyhow!("no {k} in tokcount's results: {line}"))
    };
    Ok(Throughput {
        init_ms: n("init_ms")?,
        tokens_per_s: n("tokens_per_s")?,
        first_tokens_per_s: n("first_tokens_per_s")?,
        tokens: n("tokens")? as u64,
        bytes: n("bytes")? as u64,
    })
}

fn run(mut command: Command) -> Result<Throughput> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

pub fn native(program: &Path, passes: u32) -> Result<Throughput> {
    let mut c = Command::new(program);
    c.arg(passes.to_string());
    run(c)
}

/// Runs the wasm build with `node` and the WASI runner script next to its sources.
pub fn in_v8(runner: &Path, program: &Path, passes: u32) -> Result<Throughput> {
    let mut c = Command::new("node");
    c.arg("--no-warnings")
        .arg(runner)
        .arg(program)
        .arg(passes.to_string());
    run(c)
}

/// tokenmeter's own work per exchange inside V8, by traffic kind: the replay program
/// (`bench/wasm/replay`) drives the filter's core through the benchmark's exchanges without
/// a host, so this is the filter's code alone, with no host calls.
pub fn replay_in_v8(runner: &Path, program: &Path, exchanges: u32) -> Result<Vec<(String, f64)>> {
    // Three runs, the median per kind: one run is at the mercy of whatever else the
    // machine is doing.
    let runs: Vec<Vec<(String, f64)>> = (0..3)
        .map(|_| replay_once(runner, program, exchanges))
        .collect::<Result<_>>()?;
    let first = runs.first().cloned().unwrap_or_default();
    Ok(first
        .into_iter()
        .map(|(kind, _)| {
            let times: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.iter().find(|(k, _)| *k == kind).map(|(_, us)| *us))
                .collect();
            let us = crate::stats::median(&times);
            (kind, us)
        })
        .collect())
}

fn replay_once(runner: &Path, program: &Path, exchanges: u32) -> Result<Vec<(String, f64)>> {
    let mut c = Command::new("node");
    c.arg("--no-warnings")
        .arg(runner)
        .arg(program)
        .arg("all")
        .arg(exchanges.to_string());
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_replay(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_replay(output: &str) -> Result<Vec<(String, f64)>> {
    output
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let us = v["us_per_exchange"]
                .as_f64()
                .ok_or_else(|| anyhow!("no us_per_exchange in {line}"))?;
            Ok((kind, us))
        })
        .collect()
}

/// Node's version, for the report.
pub fn node_version() -> String {
    Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_json_line() {
        let t = parse("{\"init_ms\":84.2,\"bytes\":262558,\"tokens\":50957,\"iterations\":5,\"first_tokens_per_s\":281708,\"tokens_per_s\":935828}\n").unwrap();
        assert_eq!(t.tokens, 50957);
        assert_eq!(t.tokens_per_s, 935828.0);
        assert!(parse("").is_err());
    }

    #[test]
    fn reads_replay_lines() {
        let r = parse_replay(
            "{\"kind\":\"json\",\"exchanges\":20000,\"us_per_exchange\":14.52,\"check\":1}\n",
        )
        .unwrap();
        assert_eq!(r, [("json".to_string(), 14.52)]);
    }
}
