//! Alerts: what a monitor's run changed (an alert opened or resolved), told to its
//! webhook (tokenmeter's JSON, Slack or Teams), by e-mail over SMTP, and to a Prometheus
//! Alertmanager. The alerts firing are kept in the store between runs, so that overlapping
//! windows do not repeat an alert and a recovery is told once (see `condition`).

mod alertmanager;
pub mod condition;
mod message;

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

use crate::db::Location;
use crate::quality::monitor::{EmailAlerts, Monitor, SmtpTls, WebhookFormat};
use crate::quality::report::Report;
use crate::store::Store;
use condition::Transition;
use message::Notice;

const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the alerts firing are kept between runs.
pub enum AlertState<'a> {
    /// Nowhere (`eval --records` without `--cache-db`): every breach is told, none resolves.
    None,
    /// The store there.
    At(&'a Location),
    /// This open store.
    Shared(&'a Mutex<Store>),
}

impl AlertState<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<Option<T>> {
        match self {
            AlertState::None => Ok(None),
            AlertState::At(l) => f(&mut Store::open(l)?).map(Some),
            AlertState::Shared(m) => {
                let mut store = m
                    .lock()
                    .map_err(|_| anyhow!("the store is unusable after an earlier failure"))?;
                f(&mut store).map(Some)
            }
        }
    }
}

/// After a run (its report, or the error it failed with): works out which alerts opened
/// and resolved, tells the webhook and e-mail about those changes, posts what fires to the
/// Alertmanager, and keeps the alerts firing for the next run. The state is kept even
/// when a destination fails (its error is returned): a failing mail server must not make
/// the webhook repeat an alert at every run.
pub async fn after_run(
    monitor: &Monitor,
    state: AlertState<'_>,
    outcome: Result<&Report, &str>,
    now: DateTime<Utc>,
) -> Result<Transition> {
    let name = monitor.name.as_str();
    let now_us = now.timestamp_micros();
    let before = state
        .with(|s| s.firing_alerts(name))
        .context("reading the alerts firing")?
        .unwrap_or_default();
    let observed = match outcome {
        Ok(report) => {
            let mut o = condition::observe_report(report, monitor.alerts.no_data, now_us);
            let window_us = monitor.window.size.seconds().saturating_mul(1_000_000);
            condition::keep_absent_groups(&mut o, &before, report, now_us, window_us);
            o
        }
        Err(error) => condition::observe_failure(name, error, now_us),
    };
    let t = condition::transition(&before, observed);
    let notice = Notice {
        monitor: name,
        transition: &t,
        report: outcome.ok(),
        error: outcome.err(),
    };
    let mut failures = Vec::new();
    if t.changed() {
        if let Some(url) = &monitor.alerts.webhook {
            let body = match monitor.alerts.webhook_format {
                WebhookFormat::Tokenmeter => message::tokenmeter(&notice),
                WebhookFormat::Slack => message::slack(&notice),
                WebhookFormat::Teams => message::teams(&notice),
            };
            if let Err(e) = post("alerts.webhook", url, &body).await {
                failures.push(format!("{e:#}"));
            }
        }
        if let Some(email) = &monitor.alerts.email {
            if let Err(e) = mail(email, &notice).await {
                failures.push(format!("{e:#}"));
            }
        }
    }
    if let Some(am) = &monitor.alerts.alertmanager {
        let expire = am
            .expire_after
            .unwrap_or_else(|| default_expiry(monitor, now));
        let window = outcome
            .ok()
            .map(|r| (r.window.from.as_str(), r.window.to.as_str()));
        if let Some(body) = alertmanager::payload(am, &t, now_us, expire, window) {
            if let Err(e) = post("alerts.alertmanager", &alertmanager::endpoint(am), &body).await {
                failures.push(format!("{e:#}"));
            }
        }
    }
    state
        .with(|s| s.set_firing_alerts(name, &t.firing))
        .context("keeping the alerts firing")?;
    if failures.is_empty() {
        Ok(t)
    } else {
        Err(anyhow!(failures.join("; ")))
    }
}

/// How long an alert posted to the Alertmanager stays firing without being posted again:
/// three periods of the schedule (two runs may be missed), a day without a schedule.
fn default_expiry(monitor: &Monitor, now: DateTime<Utc>) -> i64 {
    let period = monitor
        .schedule
        .as_deref()
        .and_then(|s| croner::Cron::from_str(s).ok())
        .and_then(|c| {
            let first = c.find_next_occurrence(&now, false).ok()?;
            let second = c.find_next_occurrence(&first, false).ok()?;
            Some((second - first).num_seconds())
        });
    period.map_or(86_400, |p| p.max(60).saturating_mul(3))
}

/// POSTs JSON; retries a failing destination twice.
async fn post(field: &str, url: &str, body: &Value) -> Result<()> {
    let client = reqwest::Client::builder().timeout(TIMEOUT).build()?;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match client.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
            Err(e) => last = e.to_string(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
    }
    bail!("{field} {url}: delivery failed after {ATTEMPTS} attempts: {last}")
}

async fn mail(email: &EmailAlerts, notice: &Notice<'_>) -> Result<()> {
    let (subject, body) = message::email(notice);
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
