//! Tokenizer throughput: the same counting program natively and inside V8.
//!
//! `tokcount` (built by the benchmark from `bench/wasm/tokcount`) counts a fixed corpus with
//! `tiktoken-rs` and prints one JSON line. Its wasm32-wasip1 build runs under Node's WASI,
//! which executes it with V8, the engine Envoy's Wasm runtime embeds.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context as _, Result};

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

/// Instructions callgrind counted in a run's output (`==PID== I   refs:      1,234`).
pub fn parse_instructions(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.split_once("I   refs:"))
        .and_then(|(_, n)| n.trim().replace(',', "").parse().ok())
}

/// The exchanges a replay run made, warm-up included (the replay warms up with a tenth of
/// the measured count, rounded up).
fn replay_exchanges(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.starts_with('{'))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let n = v["exchanges"].as_u64()?;
    Some(n + n.div_ceil(10))
}

/// tokenmeter's own code per exchange in native instructions, counted by callgrind on the
/// native replay: exact and repeatable whatever the machine's load, unlike any timing. The
/// marginal count of two runs (200 and 400 exchanges asked for), so start-up and the first
/// exchanges' one-off work (the tokenizer's tables) drop out.
pub fn replay_instructions(program: &Path, kind: &str) -> Result<u64> {
    let run = |n: u32| -> Result<(u64, u64)> {
        let mut c = Command::new("valgrind");
        c.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(program)
            .arg(kind)
            .arg(n.to_string());
        let out = c.output().with_context(|| format!("running {c:?}"))?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        match (
            out.status.success(),
            parse_instructions(&stderr),
            replay_exchanges(&stdout),
        ) {
            (true, Some(i), Some(e)) => Ok((i, e)),
            _ => bail!("{c:?} failed ({}): {stderr}", out.status),
        }
    };
    let (i1, e1) = run(200)?;
    let (i2, e2) = run(400)?;
    ensure!(
        e2 > e1 && i2 > i1,
        "callgrind runs of {kind} did not grow: {e1} then {e2} exchanges, {i1} then {i2} instructions"
    );
    Ok((i2 - i1) / (e2 - e1))
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

    #[test]
    fn reads_callgrind_totals_and_replay_counts() {
        let err = "==15891== Events    : Ir\n==15891== Collected : 5\n==15891==\n==15891== I   refs:      536,551,868\n";
        assert_eq!(parse_instructions(err), Some(536_551_868));
        assert_eq!(parse_instructions("nothing"), None);
        assert_eq!(
            replay_exchanges(
                "{\"kind\":\"json\",\"exchanges\":394,\"us_per_exchange\":1.0,\"check\":1}"
            ),
            Some(394 + 40)
        );
    }
}
