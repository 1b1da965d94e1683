//! Alerts: a JSON POST to the monitor's webhook when a window breaches a threshold or
//! an evaluation fails.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use tokenmeter::quality::monitor::Monitor;
use tokenmeter::quality::report::Report;

const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The alert for a breached window: the breached metrics with why, and the full report.
pub fn breach(report: &Report) -> Value {
    let breaches: Vec<Value> = report
        .metrics
        .iter()
        .filter_map(|(metric, s)| {
            s.breach_reason().map(|reason| {
                json!({
                    "metric": metric.name(),
                    "reason": reason,
                    "average_score": s.average_score,
                    "pass_rate": s.pass_rate,
                    "violations": s.violations,
                    "scored": s.scored,
                })
            })
        })
        .collect();
    json!({
        "monitor": report.monitor,
        "status": "breached",
        "window": report.window,
        "breaches": breaches,
        "report": report,
    })
}

/// The alert for an evaluation that could not finish.
pub fn failure(monitor: &str, error: &str) -> Value {
    json!({"monitor": monitor, "status": "failed", "error": error})
}

/// Delivers an alert to every configured destination; retries a failing webhook twice.
pub async fn send(monitor: &Monitor, alert: &Value) -> Result<()> {
    let Some(url) = &monitor.alerts.webhook else {
        return Ok(());
    };
    let client = reqwest::Client::builder().timeout(TIMEOUT).build()?;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match client.post(url).json(alert).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
            Err(e) => last = e.to_string(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
    }
    bail!("alerts.webhook {url}: delivery failed after {ATTEMPTS} attempts: {last}")
}
