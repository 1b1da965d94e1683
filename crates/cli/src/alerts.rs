//! Alerts: a JSON POST to the monitor's webhook and an e-mail over SMTP, when a window
//! breaches a threshold or an evaluation fails.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{json, Value};

use crate::quality::monitor::{EmailAlerts, Monitor, SmtpTls};
use crate::quality::report::{self, Report};

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

/// Delivers an alert to every configured destination; each is tried even if another
/// fails, and the failures are returned together.
pub async fn send(monitor: &Monitor, alert: &Value, report: Option<&Report>) -> Result<()> {
    let mut failures = Vec::new();
    if let Some(url) = &monitor.alerts.webhook {
        if let Err(e) = webhook(url, alert).await {
            failures.push(format!("{e:#}"));
        }
    }
    if let Some(email) = &monitor.alerts.email {
        if let Err(e) = mail(email, &monitor.name, alert, report).await {
            failures.push(format!("{e:#}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(failures.join("; ")))
    }
}

/// POSTs the alert; retries a failing webhook twice.
async fn webhook(url: &str, alert: &Value) -> Result<()> {
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

/// The e-mail's subject and plain-text body.
fn message_text(monitor: &str, alert: &Value, report: Option<&Report>) -> (String, String) {
    match report {
        Some(r) => (
            format!("[tokenmeter] {monitor}: quality threshold breached"),
            format!(
                "The quality monitor {monitor} breached a threshold in the window {} .. {}.\n\n{}",
                r.window.from,
                r.window.to,
                report::render_table(r)
            ),
        ),
        None => (
            format!("[tokenmeter] {monitor}: evaluation failed"),
            format!(
                "The quality monitor {monitor} could not evaluate its window:\n\n{}\n",
                alert
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
            ),
        ),
    }
}

async fn mail(
    email: &EmailAlerts,
    monitor: &str,
    alert: &Value,
    report: Option<&Report>,
) -> Result<()> {
    let (subject, body) = message_text(monitor, alert, report);
    let mut builder = Message::builder()
        .from(email.from.parse().context("alerts.email.from")?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &email.to {
        builder = builder.to(to
            .parse()
            .with_context(|| format!("alerts.email.to: {to}"))?);
    }
    let message = builder.body(body)?;
    let host = email.smtp_host.as_str();
    let transport = match email.tls {
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
    };
    let mut transport = transport.port(email.smtp_port).timeout(Some(TIMEOUT));
    if let (Some(user), Some(pass)) = (&email.username_env, &email.password_env) {
        let read = |var: &str| {
            std::env::var(var).map_err(|_| anyhow!("alerts.email: the environment variable {var} is not set; export the SMTP credentials in it"))
        };
        transport = transport.credentials(Credentials::new(read(user)?, read(pass)?));
    }
    transport.build().send(message).await.with_context(|| {
        format!(
            "alerts.email: sending through {host}:{} failed",
            email.smtp_port
        )
    })?;
    Ok(())
}
