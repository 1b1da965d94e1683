//! Load from `wrk`: a fixed number of connections for a fixed time, POSTing one request.
//!
//! wrk's Lua hooks set the method, body and headers, and its `done` hook prints the results
//! as one JSON line, so nothing depends on the layout of its human-readable summary.
//!
//! wrk stops at its deadline in the middle of the requests in flight, which the gateway
//! has partly served; for answers of a few milliseconds that is noise, for trickled streams
//! of half a second it is a tenth of the work. Those are loaded by [`closed`] instead:
//! each connection finishes the request it is in, so the gateway's CPU over the run
//! belongs to whole requests only.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};

/// One wrk run's results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub requests: u64,
    pub duration: Duration,
    /// Connect, read, write and timeout errors.
    pub errors: u64,
    /// Responses with a status other than 2xx or 3xx.
    pub non_2xx: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Load {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// Picks the long-bracket level that does not occur in `text`, so any body can be quoted.
fn lua_long_string(text: &str) -> String {
    let mut level = 0;
    loop {
        let eq = "=".repeat(level);
        if !text.contains(&format!("]{eq}]")) {
            return format!("[{eq}[{text}]{eq}]");
        }
        level += 1;
    }
}

/// The wrk script that POSTs `body` to `path` with `headers`.
pub fn script(path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut s = String::new();
    s.push_str("wrk.method = \"POST\"\n");
    s.push_str(&format!("wrk.path = {}\n", lua_long_string(path)));
    s.push_str(&format!("wrk.body = {}\n", lua_long_string(body)));
    for (name, value) in headers {
        s.push_str(&format!(
            // Spaces keep `[[` from reading as a call with a long-string argument.
            "wrk.headers[ {} ] = {}\n",
            lua_long_string(name),
            lua_long_string(value)
        ));
    }
    s.push_str(
        r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non_2xx":%d,"p50_us":%.0f,"p99_us":%.0f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#,
    );
    s
}

/// Reads the JSON line the script's `done` hook prints.
pub fn parse(output: &str) -> Result<Load> {
    let line = output
        .lines()
        .find(|l| l.starts_with("{\"requests\""))
        .ok_or_else(|| anyhow!("no results in wrk's output:\n{output}"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let n = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| anyhow!("no {k} in wrk's results: {line}"))
    };
    Ok(Load {
        requests: n("requests")? as u64,
        duration: Duration::from_micros(n("duration_us")? as u64),
        errors: n("errors")? as u64,
        non_2xx: n("non_2xx")? as u64,
        p50_us: n("p50_us")?,
        p99_us: n("p99_us")?,
    })
}

/// Runs wrk with one thread and `connections` connections for `duration` against `url`
/// (scheme, host and port), with the script in `script_file`.
pub fn run(url: &str, script_file: &Path, connections: u32, duration: Duration) -> Result<Load> {
    let out = Command::new("wrk")
        .args(["-t", "1", "-c", &connections.to_string()])
        .arg("-d")
        // wrk takes whole seconds.
        .arg(format!("{}s", duration.as_secs().max(1)))
        .args(["--timeout", "10s", "-s"])
        .arg(script_file)
        .arg(url)
        .output()
        .context("running wrk (install it with `apt-get install wrk`)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&stdout)
}

/// Closed-loop load: `connections` threads, each with its own keep-alive connection,
/// send the request again and again until `duration` has passed, then finish the one they
/// are in. A response counts only if it is 2xx and its body ends with `expect_end`.
pub fn closed(
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    expect_end: &str,
    connections: u32,
    duration: Duration,
) -> Load {
    let started = std::time::Instant::now();
    let deadline = started + duration;
    let results: Vec<(u64, u64, Vec<f64>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                scope.spawn(|| {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let (mut errors, mut non_2xx, mut latencies) = (0, 0, Vec::new());
                    while std::time::Instant::now() < deadline {
                        let t = std::time::Instant::now();
                        let mut req = agent.post(url);
                        for (n, v) in headers {
                            req = req.header(*n, *v);
                        }
                        match req.send(body) {
                            Ok(mut resp) => {
                                let ok = resp.status().is_success();
                                match resp
                                    .body_mut()
                                    .with_config()
                                    .limit(64 << 20)
                                    .read_to_string()
                                {
                                    Ok(text) if ok && text.ends_with(expect_end) => {
                                        latencies.push(t.elapsed().as_secs_f64() * 1e6)
                                    }
                                    Ok(_) if !ok => non_2xx += 1,
                                    _ => errors += 1,
                                }
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (errors, non_2xx, latencies)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or((1, 0, Vec::new())))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut latencies: Vec<f64> = results.iter().flat_map(|r| r.2.iter().copied()).collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Load {
        requests: latencies.len() as u64,
        duration: elapsed,
        errors: results.iter().map(|r| r.0).sum(),
        non_2xx: results.iter().map(|r| r.1).sum(),
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_never_close_early() {
        assert_eq!(lua_long_string("a"), "[[a]]");
        assert_eq!(lua_long_string("x]]y"), "[=[x]]y]=]");
        assert_eq!(lua_long_string("x]]y]=]"), "[==[x]]y]=]]==]");
    }

    #[test]
    fn the_script_sets_everything() {
        let s = script("/v1/chat/completions", &[("x-a", "b")], r#"{"a":1}"#);
        assert!(s.contains("wrk.method = \"POST\""));
        assert!(s.contains(r#"wrk.body = [[{"a":1}]]"#));
        assert!(s.contains("wrk.headers[ [[x-a]] ] = [[b]]"));
    }

    #[test]
    fn results_are_read_from_the_done_line() {
        let out = "Running 1s test @ http://127.0.0.1:1\n  1 threads and 16 connections\n{\"requests\":3300,\"duration_us\":1000512,\"errors\":0,\"non_2xx\":2,\"p50_us\":4620,\"p99_us\":9110}\n";
        let l = parse(out).unwrap();
        assert_eq!(l.requests, 3300);
        assert_eq!(l.non_2xx, 2);
        assert_eq!(l.p99_us, 9110.0);
        assert!((l.requests_per_second() - 3298.3).abs() < 0.1);
        assert!(parse("nothing").is_err());
    }
}
