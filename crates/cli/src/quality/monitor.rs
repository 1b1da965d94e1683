//! The monitor definition: a YAML file naming a window, a sample, the columns, the judge,
//! the metrics with their thresholds, alerts and a schedule.
//!
//! Everything is checked when the file is loaded, so a mistake is refused with a message
//! naming the field (`invalid monitor definition: judge.url: ...`) instead of surfacing
//! halfway through an evaluation.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::aggregate::{Rule, Thresholds, DEFAULT_ACCEPTABLE_SCORE};
use super::canary::DEFAULT_MIN_AGREEMENT;
use super::duration::{IsoDuration, WindowSpec};
use super::metric::{Metric, Rubric};
use super::scope::{Field, Scope, DEFAULT_MAX_GROUPS};

pub const DEFAULT_WINDOW: &str = "P7D";
pub const DEFAULT_SAMPLING_RATE: f64 = 0.1;
pub const DEFAULT_MAX_CONCURRENCY: usize = 8;
pub const DEFAULT_TIMEOUT_SECONDS: f64 = 60.0;
pub const DEFAULT_MAX_RETRIES: u32 = 4;
pub const DEFAULT_INITIAL_BACKOFF_SECONDS: f64 = 1.0;

/// A monitor definition that was refused; `field` names what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid monitor definition: {field}: {message}")]
pub struct MonitorError {
    pub field: String,
    pub message: String,
}

impl MonitorError {
    fn new(field: impl Into<String>, message: impl ToString) -> Self {
        MonitorError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    name: String,
    window: Option<RawWindow>,
    sampling_rate: Option<f64>,
    seed: Option<u64>,
    columns: Option<RawColumns>,
    judge: RawJudge,
    metrics: RawMetrics,
    verdict: Option<RawVerdict>,
    alerts: Option<RawAlerts>,
    schedule: Option<String>,
    filter: Option<std::collections::BTreeMap<String, OneOrMany>>,
    group_by: Option<Vec<String>>,
    max_groups: Option<usize>,
    rubric: Option<String>,
    canary: Option<RawCanary>,
}

/// `canary: true`, or `canary: {min_agreement: 0.8}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawCanary {
    On(bool),
    With { min_agreement: Option<f64> },
}

/// A filter's value: one, or a list of which any matches.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    size: Option<String>,
    offset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumns {
    question: Option<String>,
    answer: Option<String>,
    context: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJudge {
    kind: Option<String>,
    url: String,
    model: Option<String>,
    deployment: Option<String>,
    api_version: Option<String>,
    api_key_env: Option<String>,
    max_concurrency: Option<usize>,
    timeout_seconds: Option<f64>,
    max_retries: Option<u32>,
    initial_backoff_seconds: Option<f64>,
    /// Present and null: not sent (reasoning models refuse it).
    #[serde(default, deserialize_with = "present_number")]
    temperature: Option<Option<f64>>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    reasoning_effort: Option<String>,
    response_format: Option<String>,
    repair: Option<bool>,
    extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    price: Option<RawPrice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input_per_million: f64,
    output_per_million: f64,
}

fn present_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default, deserialize_with = "present")]
    groundedness: Option<Option<RawThresholds>>,
    #[serde(default, deserialize_with = "present")]
    relevance: Option<Option<RawThresholds>>,
    #[serde(default, deserialize_with = "present")]
    coherence: Option<Option<RawThresholds>>,
    #[serde(default, deserialize_with = "present")]
    fluency: Option<Option<RawThresholds>>,
}

/// A metric named with no settings (`fluency:`) is enabled with the defaults, so a present
/// null must not read as absent.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<RawThresholds>>, D::Error> {
    Option::<RawThresholds>::deserialize(d).map(Some)
}

/// Verdict settings for every metric; a metric's own fields override them.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawVerdict {
    min_coverage: Option<f64>,
    min_samples: Option<u64>,
    rule: Option<String>,
    consecutive: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    acceptable_score: Option<u8>,
    pass_rate_threshold: Option<f64>,
    average_threshold: Option<f64>,
    min_coverage: Option<f64>,
    min_samples: Option<u64>,
    rule: Option<String>,
    consecutive: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    webhook: Option<String>,
    webhook_format: Option<String>,
    email: Option<RawEmail>,
    alertmanager: Option<RawAlertmanager>,
    no_data: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertmanager {
    url: String,
    severity: Option<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
    expire_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    smtp_host: String,
    smtp_port: Option<u16>,
    tls: Option<String>,
    username_env: Option<String>,
    password_env: Option<String>,
    from: String,
    to: Vec<String>,
}

/// The record fields holding each text column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub question: String,
    pub answer: String,
    pub context: String,
}

impl Columns {
    /// The record field holding an input.
    pub fn of(&self, input: super::metric::Input) -> &str {
        match input {
            super::metric::Input::Question => &self.question,
            super::metric::Input::Context => &self.context,
            super::metric::Input::Answer => &self.answer,
        }
    }
}

/// Which API the judge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeKind {
    /// OpenAI and compatible servers (vLLM, Ollama, ...): `POST {url}/chat/completions`.
    OpenAi,
    /// Azure OpenAI: `POST {url}/openai/deployments/{deployment}/chat/completions`.
    Azure,
}

/// How the judge is asked for a machine-readable verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// `response_format: {type: json_schema}` with the verdict's schema (OpenAI, Azure
    /// OpenAI, vLLM, Ollama, LiteLLM...); dropped for the run if the judge refuses it.
    JsonSchema,
    /// `response_format: {type: json_object}`.
    JsonObject,
    /// Nothing: the prompt alone asks for JSON.
    None,
}

impl ResponseFormat {
    /// The name the definition and the report use.
    pub fn name(self) -> &'static str {
        match self {
            ResponseFormat::JsonSchema => "json_schema",
            ResponseFormat::JsonObject => "json_object",
            ResponseFormat::None => "none",
        }
    }
}

/// USD per million judge tokens, for the cost of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

/// The judge model and how to call it.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeConfig {
    pub kind: JudgeKind,
    pub url: String,
    /// The model name sent and stored with every score (Azure: defaults to the deployment).
    pub model: String,
    pub deployment: Option<String>,
    pub api_version: Option<String>,
    /// The environment variable holding the API key; none for servers without auth.
    pub api_key_env: Option<String>,
    pub max_concurrency: usize,
    pub timeout: Duration,
    pub max_retries: u32,
    pub initial_backoff: Duration,
    /// `None`: not sent.
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub reasoning_effort: Option<String>,
    pub response_format: ResponseFormat,
    /// Ask once more, for the format only, when an answer cannot be read.
    pub repair: bool,
    /// Fields added to every request body as they are.
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    pub price: Option<Price>,
}

impl JudgeConfig {
    /// The chat completions endpoint.
    pub fn endpoint(&self) -> String {
        let base = self.url.trim_end_matches('/');
        match self.kind {
            JudgeKind::OpenAi => format!("{base}/chat/completions"),
            JudgeKind::Azure => format!(
                "{base}/openai/deployments/{}/chat/completions?api-version={}",
                self.deployment.as_deref().unwrap_or_default(),
                self.api_version.as_deref().unwrap_or_default()
            ),
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            JudgeKind::OpenAi => "openai",
            JudgeKind::Azure => "azure",
        }
    }
}

/// Where alerts go, and which conditions alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alerts {
    pub webhook: Option<String>,
    pub webhook_format: WebhookFormat,
    pub email: Option<EmailAlerts>,
    pub alertmanager: Option<AlertmanagerAlerts>,
    /// Whether a window without any eligible record alerts (an idle app is not a breach).
    pub no_data: bool,
}

/// The body posted to `alerts.webhook`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WebhookFormat {
    /// tokenmeter's own JSON: what changed, and the report.
    #[default]
    Tokenmeter,
    /// A Slack incoming webhook's `{"text": ...}`.
    Slack,
    /// A Microsoft Teams workflow webhook's message with an Adaptive Card.
    Teams,
}

/// Alerts posted to a Prometheus Alertmanager's `/api/v2/alerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerAlerts {
    /// The Alertmanager's base URL, e.g. `http://alertmanager:9093`.
    pub url: String,
    pub severity: String,
    /// Fixed labels added to every alert (team, service...).
    pub labels: std::collections::BTreeMap<String, String>,
    /// How long a firing alert stays active at the Alertmanager without being posted
    /// again, in seconds; `None`: three periods of the schedule, or a day without one.
    pub expire_after: Option<i64>,
}

/// Labels tokenmeter sets itself on Alertmanager alerts.
pub const ALERT_LABELS: [&str; 4] = ["alertname", "monitor", "metric", "severity"];

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required), usually port 587.
    StartTls,
    /// TLS from the first byte, usually port 465.
    Tls,
    /// No encryption: only for a relay on the same host or network.
    None,
}

/// E-mail alerts over SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAlerts {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub tls: SmtpTls,
    /// Environment variables holding the SMTP credentials; none for an open relay.
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    pub from: String,
    pub to: Vec<String>,
}

/// A validated monitor definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Monitor {
    pub name: String,
    pub window: WindowSpec,
    pub sampling_rate: f64,
    pub seed: u64,
    pub columns: Columns,
    pub judge: JudgeConfig,
    /// The metrics to evaluate, in report order.
    pub metrics: Vec<(Metric, Thresholds)>,
    pub alerts: Alerts,
    /// Five- or six-field cron expression (UTC), for `tokenmeter serve`.
    pub schedule: Option<String>,
    /// Which records it judges, and how its verdicts are broken down.
    pub scope: Scope,
    /// Whose score levels the judge follows.
    pub rubric: Rubric,
    /// With the drift canary: the agreement below which the judge has drifted.
    pub canary: Option<f64>,
}

impl Monitor {
    /// Parses and validates a monitor definition (YAML, or JSON which is YAML too).
    pub fn parse(text: &str) -> Result<Monitor, MonitorError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawMonitor = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "monitor".to_string()
            } else {
                path
            };
            let message = e.into_inner().to_string();
            // The YAML parser prefixes its own path ("judge: unknown field"); the field
            // already names it.
            let message = match message.split_once(": ") {
                Some((head, rest)) if !head.contains(' ') && field.starts_with(head) => {
                    rest.to_string()
                }
                _ => message,
            };
            MonitorError::new(field, message)
        })?;
        raw.validate()
    }

    pub fn thresholds(&self, metric: Metric) -> Option<Thresholds> {
        self.metrics
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, t)| *t)
    }
}

fn duration(field: &str, text: Option<String>, default: &str) -> Result<IsoDuration, MonitorError> {
    IsoDuration::parse(text.as_deref().unwrap_or(default)).map_err(|e| MonitorError::new(field, e))
}

fn column(field: &str, name: Option<String>, default: &str) -> Result<String, MonitorError> {
    let name = name.unwrap_or_else(|| default.to_string());
    if name.trim().is_empty() {
        return Err(MonitorError::new(
            field,
            "must name a record field, e.g. question",
        ));
    }
    Ok(name)
}

fn http_url(field: &str, url: &str) -> Result<(), MonitorError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host)
            if !host.is_empty() && !host.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(MonitorError::new(
            field,
            format!("{url:?} must be an http:// or https:// URL, e.g. https://api.openai.com/v1"),
        )),
    }
}

fn positive_seconds(
    field: &str,
    value: Option<f64>,
    default: f64,
    max: f64,
) -> Result<Duration, MonitorError> {
    let v = value.unwrap_or(default);
    if !(v.is_finite() && v > 0.0 && v <= max) {
        return Err(MonitorError::new(
            field,
            format!("must be a number of seconds above 0 and at most {max}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

impl RawMonitor {
    fn validate(self) -> Result<Monitor, MonitorError> {
        let name = self.name.trim().to_string();
        if name.is_empty()
            || name.len() > 100
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(MonitorError::new(
                "name",
                "must be 1 to 100 letters, digits, '-', '_' or '.', e.g. support-bot-quality",
            ));
        }

        let (size, offset) = match self.window {
            Some(w) => (w.size, w.offset),
            None => (None, None),
        };
        let window = WindowSpec {
            size: duration("window.size", size, DEFAULT_WINDOW)?,
            offset: duration("window.offset", offset, "P0D")?,
        };
        if window.size.seconds() == 0 {
            return Err(MonitorError::new(
                "window.size",
                "must be longer than zero, e.g. P7D",
            ));
        }

        let sampling_rate = self.sampling_rate.unwrap_or(DEFAULT_SAMPLING_RATE);
        if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
            return Err(MonitorError::new(
                "sampling_rate",
                "must be above 0 and at most 1, e.g. 0.1 for 10% of the records",
            ));
        }

        let columns = match self.columns {
            Some(c) => Columns {
                question: column("columns.question", c.question, "question")?,
                answer: column("columns.answer", c.answer, "answer")?,
                context: column("columns.context", c.context, "context")?,
            },
            None => Columns {
                question: "question".into(),
                answer: "answer".into(),
                context: "context".into(),
            },
        };

        let judge = self.judge.validate()?;

        let verdict = self.verdict.unwrap_or_default();
        let mut metrics = Vec::new();
        for (metric, raw) in [
            (Metric::Groundedness, self.metrics.groundedness),
            (Metric::Relevance, self.metrics.relevance),
            (Metric::Coherence, self.metrics.coherence),
            (Metric::Fluency, self.metrics.fluency),
        ] {
            if let Some(raw) = raw {
                metrics.push((metric, thresholds(metric, raw, &verdict)?));
            }
        }
        if metrics.is_empty() {
            return Err(MonitorError::new(
                "metrics",
                "name at least one of groundedness, relevance, coherence, fluency, e.g. {coherence: {}}",
            ));
        }

        let alerts = match self.alerts {
            Some(a) => {
                if let Some(url) = &a.webhook {
                    http_url("alerts.webhook", url)?;
                }
                let webhook_format = match a.webhook_format.as_deref() {
                    None | Some("tokenmeter") => WebhookFormat::Tokenmeter,
                    Some("slack") => WebhookFormat::Slack,
                    Some("teams") => WebhookFormat::Teams,
                    Some(other) => {
                        return Err(MonitorError::new(
                            "alerts.webhook_format",
                            format!("{other:?} is not a webhook format: use tokenmeter (the default), slack or teams"),
                        ))
                    }
                };
                if a.webhook_format.is_some() && a.webhook.is_none() {
                    return Err(MonitorError::new(
                        "alerts.webhook_format",
                        "it shapes alerts.webhook's body: give alerts.webhook too",
                    ));
                }
                Alerts {
                    webhook: a.webhook,
                    webhook_format,
                    email: a.email.map(RawEmail::validate).transpose()?,
                    alertmanager: a.alertmanager.map(RawAlertmanager::validate).transpose()?,
                    no_data: a.no_data.unwrap_or(false),
                }
            }
            None => Alerts::default(),
        };

        if let Some(schedule) = &self.schedule {
            let cron = croner::Cron::from_str(schedule).map_err(|e| {
                MonitorError::new(
                    "schedule",
                    format!("{schedule:?} is not a cron expression like \"15 10 * * *\" (minute hour day month weekday, UTC): {e}"),
                )
            })?;
            // A valid expression can still name no time at all (30 February): refuse it
            // now rather than let the scheduler stop after its first run.
            if cron
                .find_next_occurrence(&chrono::Utc::now(), false)
                .is_err()
            {
                return Err(MonitorError::new(
                    "schedule",
                    format!("{schedule:?} never fires (no such date); pick a day every month has, e.g. \"0 0 28 2 *\""),
                ));
            }
        }

        let scope = scope(self.filter, self.group_by, self.max_groups)?;
        let canary = match self.canary {
            None | Some(RawCanary::On(false)) => None,
            Some(RawCanary::On(true)) => Some(DEFAULT_MIN_AGREEMENT),
            Some(RawCanary::With { min_agreement }) => {
                let a = min_agreement.unwrap_or(DEFAULT_MIN_AGREEMENT);
                if !(a > 0.0 && a <= 1.0) {
                    return Err(MonitorError::new(
                        "canary.min_agreement",
                        format!("{a} must be above 0 and at most 1, e.g. 0.8"),
                    ));
                }
                Some(a)
            }
        };
        let rubric = match self.rubric.as_deref() {
            None | Some("tokenmeter") => Rubric::Tokenmeter,
            Some("azure") => Rubric::Azure,
            Some(other) => {
                return Err(MonitorError::new(
                    "rubric",
                    format!("{other:?} is not a rubric: use tokenmeter (the default) or azure"),
                ))
            }
        };

        Ok(Monitor {
            name,
            window,
            sampling_rate,
            seed: self.seed.unwrap_or(0),
            columns,
            judge,
            metrics,
            alerts,
            schedule: self.schedule,
            scope,
            rubric,
            canary,
        })
    }
}

/// A record field `filter` or `group_by` names.
fn scope_field(at: String, name: &str) -> Result<Field, MonitorError> {
    if name.trim().is_empty() || name == "dimensions." {
        return Err(MonitorError::new(
            at,
            "name model, route, operation or a dimension",
        ));
    }
    Ok(Field::parse(name))
}

fn scope(
    filter: Option<std::collections::BTreeMap<String, OneOrMany>>,
    group_by: Option<Vec<String>>,
    max_groups: Option<usize>,
) -> Result<Scope, MonitorError> {
    let mut conditions = Vec::new();
    for (name, values) in filter.unwrap_or_default() {
        let field = format!("filter.{name}");
        let values = match values {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        };
        if values.is_empty() {
            return Err(MonitorError::new(
                field,
                "an empty list admits no record; list the values to keep",
            ));
        }
        conditions.push((scope_field(field, &name)?, values));
    }
    let mut fields: Vec<Field> = Vec::new();
    for (i, name) in group_by.unwrap_or_default().into_iter().enumerate() {
        let at = format!("group_by[{i}]");
        let f = scope_field(at.clone(), &name)?;
        let label = f.label();
        if ALERT_LABELS.contains(&label.as_str()) {
            return Err(MonitorError::new(
                at,
                format!("{name:?} would be the label {label}, which tokenmeter sets itself; group by another dimension"),
            ));
        }
        if fields.iter().any(|g| g.label() == label) {
            return Err(MonitorError::new(
                at,
                format!("{name:?} is named twice (label {label})"),
            ));
        }
        fields.push(f);
    }
    let max_groups = max_groups.unwrap_or(DEFAULT_MAX_GROUPS);
    if !(2..=1000).contains(&max_groups) {
        return Err(MonitorError::new(
            "max_groups",
            format!("{max_groups} must be from 2 to 1000: past it the smaller groups are judged together as _other"),
        ));
    }
    if fields.len() > 4 {
        return Err(MonitorError::new("group_by", "at most 4 fields"));
    }
    Ok(Scope {
        filter: conditions,
        group_by: fields,
        max_groups,
    })
}

fn thresholds(
    metric: Metric,
    raw: Option<RawThresholds>,
    verdict: &RawVerdict,
) -> Result<Thresholds, MonitorError> {
    let d = Thresholds::default();
    let raw = raw.unwrap_or(RawThresholds {
        acceptable_score: None,
        pass_rate_threshold: None,
        average_threshold: None,
        min_coverage: None,
        min_samples: None,
        rule: None,
        consecutive: None,
    });
    // A field set on the metric names the metric; one inherited names `verdict`.
    let field = |f: &str, own: bool| {
        if own {
            format!("metrics.{}.{f}", metric.name())
        } else {
            format!("verdict.{f}")
        }
    };
    let acceptable_score = raw.acceptable_score.unwrap_or(DEFAULT_ACCEPTABLE_SCORE);
    if !(1..=5).contains(&acceptable_score) {
        return Err(MonitorError::new(
            field("acceptable_score", true),
            "must be a whole score from 1 to 5",
        ));
    }
    let pass_rate_threshold = raw.pass_rate_threshold.unwrap_or(d.pass_rate_threshold);
    if !(0.0..=1.0).contains(&pass_rate_threshold) {
        return Err(MonitorError::new(
            field("pass_rate_threshold", true),
            "must be a fraction from 0 to 1, e.g. 0.7",
        ));
    }
    let average_threshold = raw.average_threshold.unwrap_or(d.average_threshold);
    if !(0.0..=5.0).contains(&average_threshold) {
        return Err(MonitorError::new(
            field("average_threshold", true),
            "must be a score from 0 to 5, e.g. 4.0",
        ));
    }
    let own = (
        raw.min_coverage.is_some(),
        raw.min_samples.is_some(),
        raw.rule.is_some(),
        raw.consecutive.is_some(),
    );
    let min_coverage = raw
        .min_coverage
        .or(verdict.min_coverage)
        .unwrap_or(d.min_coverage);
    if !(0.0..=1.0).contains(&min_coverage) {
        return Err(MonitorError::new(
            field("min_coverage", own.0),
            "must be a fraction from 0 to 1, e.g. 0.8",
        ));
    }
    let min_samples = raw
        .min_samples
        .or(verdict.min_samples)
        .unwrap_or(d.min_samples);
    if !(1..=1_000_000).contains(&min_samples) {
        return Err(MonitorError::new(
            field("min_samples", own.1),
            "must be a number of records from 1 to 1000000, e.g. 10",
        ));
    }
    let rule = match raw.rule.as_deref().or(verdict.rule.as_deref()) {
        None | Some("point") => Rule::Point,
        Some("upper_bound") => Rule::UpperBound,
        Some(other) => {
            return Err(MonitorError::new(
                field("rule", own.2),
                format!("{other:?} is not a breach rule; use point or upper_bound"),
            ))
        }
    };
    let consecutive = raw.consecutive.or(verdict.consecutive).unwrap_or(1);
    if !(1..=100).contains(&consecutive) {
        return Err(MonitorError::new(
            field("consecutive", own.3),
            "must be a number of runs from 1 to 100, e.g. 2",
        ));
    }
    Ok(Thresholds {
        acceptable_score,
        pass_rate_threshold,
        average_threshold,
        min_coverage,
        min_samples,
        rule,
        consecutive,
    })
}

fn env_name(field: &str, var: &Option<String>, example: &str) -> Result<(), MonitorError> {
    match var {
        Some(v) if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Err(MonitorError::new(
                field,
                format!("must be the name of an environment variable, e.g. {example}"),
            ))
        }
        _ => Ok(()),
    }
}

fn address(field: &str, text: &str) -> Result<(), MonitorError> {
    let ok = match text.trim().rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !domain.is_empty() && !text.contains(char::is_whitespace)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(MonitorError::new(
            field,
            format!("{text:?} is not an e-mail address like oncall@example.com"),
        ))
    }
}

impl RawAlertmanager {
    fn validate(self) -> Result<AlertmanagerAlerts, MonitorError> {
        http_url("alerts.alertmanager.url", &self.url)?;
        if self.url.contains("/api/") {
            return Err(MonitorError::new(
                "alerts.alertmanager.url",
                format!("{:?}: give the Alertmanager's base URL, e.g. http://alertmanager:9093; tokenmeter posts to its /api/v2/alerts", self.url),
            ));
        }
        let severity = self.severity.unwrap_or_else(|| "warning".to_string());
        if severity.trim().is_empty() {
            return Err(MonitorError::new(
                "alerts.alertmanager.severity",
                "it is empty: use e.g. warning or critical",
            ));
        }
        let labels = self.labels.unwrap_or_default();
        for (name, value) in &labels {
            let field = format!("alerts.alertmanager.labels.{name}");
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with("__");
            if !valid {
                return Err(MonitorError::new(
                    field,
                    "a label name is letters, digits and underscores, not starting with a digit or __",
                ));
            }
            if ALERT_LABELS.contains(&name.as_str()) {
                return Err(MonitorError::new(
                    field,
                    format!("tokenmeter sets {name} itself; pick another name (severity has its own field)"),
                ));
            }
            if value.is_empty() {
                return Err(MonitorError::new(
                    field,
                    "an empty label value is the same as no label; give a value or drop it",
                ));
            }
        }
        let expire_after = self
            .expire_after
            .map(|text| {
                let d = IsoDuration::parse(&text)
                    .map_err(|e| MonitorError::new("alerts.alertmanager.expire_after", e))?;
                if d.seconds() < 60 {
                    return Err(MonitorError::new(
                        "alerts.alertmanager.expire_after",
                        format!("{text:?} is under a minute: a firing alert would flap between runs; give at least the schedule's period, e.g. P2D for a daily monitor"),
                    ));
                }
                Ok(d.seconds())
            })
            .transpose()?;
        Ok(AlertmanagerAlerts {
            url: self.url.trim_end_matches('/').to_string(),
            severity,
            labels,
            expire_after,
        })
    }
}

impl RawEmail {
    fn validate(self) -> Result<EmailAlerts, MonitorError> {
        if self.smtp_host.trim().is_empty() || self.smtp_host.contains(['/', ' ']) {
            return Err(MonitorError::new(
                "alerts.email.smtp_host",
                "must be the SMTP server's host name, e.g. smtp.example.com",
            ));
        }
        let tls = match self.tls.as_deref().unwrap_or("starttls") {
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            "none" => SmtpTls::None,
            other => {
                return Err(MonitorError::new(
                    "alerts.email.tls",
                    format!(
                    "{other:?} is not a TLS mode; use starttls (port 587), tls (port 465) or none"
                ),
                ))
            }
        };
        let smtp_port = self.smtp_port.unwrap_or(match tls {
            SmtpTls::Tls => 465,
            SmtpTls::StartTls | SmtpTls::None => 587,
        });
        env_name(
            "alerts.email.username_env",
            &self.username_env,
            "SMTP_USERNAME",
        )?;
        env_name(
            "alerts.email.password_env",
            &self.password_env,
            "SMTP_PASSWORD",
        )?;
        if self.username_env.is_some() != self.password_env.is_some() {
            return Err(MonitorError::new(
                "alerts.email.password_env",
                "give both username_env and password_env, or neither for a relay without authentication",
            ));
        }
        address("alerts.email.from", &self.from)?;
        if self.to.is_empty() {
            return Err(MonitorError::new(
                "alerts.email.to",
                "list at least one recipient, e.g. [oncall@example.com]",
            ));
        }
        for (i, to) in self.to.iter().enumerate() {
            address(&format!("alerts.email.to[{i}]"), to)?;
        }
        Ok(EmailAlerts {
            smtp_host: self.smtp_host.trim().to_string(),
            smtp_port,
            tls,
            username_env: self.username_env,
            password_env: self.password_env,
            from: self.from,
            to: self.to,
        })
    }
}

impl RawJudge {
    fn validate(self) -> Result<JudgeConfig, MonitorError> {
        let kind = match self.kind.as_deref().unwrap_or("openai") {
            "openai" => JudgeKind::OpenAi,
            "azure" => JudgeKind::Azure,
            other => {
                return Err(MonitorError::new(
                    "judge.kind",
                    format!(
                        "{other:?} is not a judge kind; use openai (also vLLM, Ollama...) or azure"
                    ),
                ))
            }
        };
        http_url("judge.url", &self.url)?;
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let deployment = nonempty(self.deployment);
        let api_version = nonempty(self.api_version);
        let model = match kind {
            JudgeKind::OpenAi => {
                if deployment.is_some() || api_version.is_some() {
                    let field = if deployment.is_some() {
                        "judge.deployment"
                    } else {
                        "judge.api_version"
                    };
                    return Err(MonitorError::new(
                        field,
                        "only applies to kind: azure; remove it",
                    ));
                }
                nonempty(self.model).ok_or_else(|| {
                    MonitorError::new("judge.model", "name the judge model, e.g. gpt-4o")
                })?
            }
            JudgeKind::Azure => {
                let Some(dep) = deployment.clone() else {
                    return Err(MonitorError::new(
                        "judge.deployment",
                        "kind: azure needs the deployment name of the judge model",
                    ));
                };
                if api_version.is_none() {
                    return Err(MonitorError::new(
                        "judge.api_version",
                        "kind: azure needs an api_version, e.g. 2024-10-21",
                    ));
                }
                nonempty(self.model).unwrap_or(dep)
            }
        };
        env_name("judge.api_key_env", &self.api_key_env, "OPENAI_API_KEY")?;
        let max_concurrency = self.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY);
        if !(1..=256).contains(&max_concurrency) {
            return Err(MonitorError::new(
                "judge.max_concurrency",
                "must be from 1 to 256",
            ));
        }
        let max_retries = self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        if max_retries > 20 {
            return Err(MonitorError::new("judge.max_retries", "must be at most 20"));
        }
        let temperature = match self.temperature {
            None => Some(0.0),
            Some(t) => t,
        };
        if let Some(t) = temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(MonitorError::new(
                    "judge.temperature",
                    "must be from 0 to 2, or null to send none (reasoning models)",
                ));
            }
        }
        if self.max_tokens.is_some() && self.max_completion_tokens.is_some() {
            return Err(MonitorError::new(
                "judge.max_completion_tokens",
                "give max_tokens or max_completion_tokens (newer OpenAI models), not both",
            ));
        }
        for (field, v) in [
            ("judge.max_tokens", self.max_tokens),
            ("judge.max_completion_tokens", self.max_completion_tokens),
        ] {
            if v == Some(0) {
                return Err(MonitorError::new(field, "must be above 0, e.g. 2000"));
            }
        }
        if let Some(effort) = &self.reasoning_effort {
            if !matches!(
                effort.as_str(),
                "none" | "minimal" | "low" | "medium" | "high" | "xhigh"
            ) {
                return Err(MonitorError::new(
                    "judge.reasoning_effort",
                    format!("{effort:?} is not a reasoning effort; use none, minimal, low, medium, high or xhigh"),
                ));
            }
        }
        let response_format = match self.response_format.as_deref().unwrap_or("json_schema") {
            "json_schema" => ResponseFormat::JsonSchema,
            "json_object" => ResponseFormat::JsonObject,
            "none" => ResponseFormat::None,
            other => {
                return Err(MonitorError::new(
                    "judge.response_format",
                    format!(
                        "{other:?} is not a response format; use json_schema, json_object or none"
                    ),
                ))
            }
        };
        let extra_body = self.extra_body.unwrap_or_default();
        for key in extra_body.keys() {
            if matches!(key.as_str(), "model" | "messages" | "stream" | "n") {
                return Err(MonitorError::new(
                    format!("judge.extra_body.{key}"),
                    "is set by tokenmeter; remove it",
                ));
            }
        }
        let price = match self.price {
            Some(p) => {
                for (field, v) in [
                    ("judge.price.input_per_million", p.input_per_million),
                    ("judge.price.output_per_million", p.output_per_million),
                ] {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(MonitorError::new(
                            field,
                            "must be USD per million tokens, 0 or more, e.g. 2.5",
                        ));
                    }
                }
                Some(Price {
                    input_per_million: p.input_per_million,
                    output_per_million: p.output_per_million,
                })
            }
            None => None,
        };
        Ok(JudgeConfig {
            temperature,
            max_tokens: self.max_tokens,
            max_completion_tokens: self.max_completion_tokens,
            reasoning_effort: self.reasoning_effort,
            response_format,
            repair: self.repair.unwrap_or(true),
            extra_body,
            price,
            kind,
            url: self.url,
            model,
            deployment,
            api_version,
            api_key_env: self.api_key_env,
            max_concurrency,
            timeout: positive_seconds(
                "judge.timeout_seconds",
                self.timeout_seconds,
                DEFAULT_TIMEOUT_SECONDS,
                3_600.0,
            )?,
            max_retries,
            initial_backoff: positive_seconds(
                "judge.initial_backoff_seconds",
                self.initial_backoff_seconds,
                DEFAULT_INITIAL_BACKOFF_SECONDS,
                600.0,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name: support-bot-quality
window: {size: P7D, offset: P0D}
sampling_rate: 0.1
seed: 0
columns: {question: question, answer: answer, context: context}
judge:
  kind: openai
  url: http://127.0.0.1:8000/v1
  model: gpt-4o
  api_key_env: OPENAI_API_KEY
  max_concurrency: 8
metrics:
  groundedness: {acceptable_score: 4, pass_rate_threshold: 0.7, average_threshold: 4.0}
  relevance:    {acceptable_score: 4, pass_rate_threshold: 0.7}
  coherence:    {}
  fluency:      {}
alerts:
  webhook: http://127.0.0.1:9000/hook
schedule: "15 10 * * *"
"#;

    fn error(text: &str) -> MonitorError {
        Monitor::parse(text).unwrap_err()
    }

    fn with(line_from: &str, line_to: &str) -> String {
        assert!(FULL.contains(line_from), "{line_from}");
        FULL.replacen(line_from, line_to, 1)
    }

    #[test]
    fn full_example_parses() {
        let m = Monitor::parse(FULL).unwrap();
        assert_eq!(m.name, "support-bot-quality");
        assert_eq!(m.window.size.seconds(), 7 * 86_400);
        assert_eq!(m.sampling_rate, 0.1);
        assert_eq!(
            m.judge.endpoint(),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(m.judge.model, "gpt-4o");
        assert_eq!(m.judge.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        let names: Vec<&str> = m.metrics.iter().map(|(m, _)| m.name()).collect();
        assert_eq!(names, ["groundedness", "relevance", "coherence", "fluency"]);
        assert_eq!(m.thresholds(Metric::Coherence), Some(Thresholds::default()));
        assert_eq!(
            m.alerts.webhook.as_deref(),
            Some("http://127.0.0.1:9000/hook")
        );
        assert_eq!(m.schedule.as_deref(), Some("15 10 * * *"));
    }

    #[test]
    fn shipped_example_parses() {
        let m = Monitor::parse(include_str!("../../../../examples/monitor.yaml")).unwrap();
        assert_eq!(m.metrics.len(), 4);
        assert!(m.alerts.webhook.is_some() && m.alerts.email.is_some());
    }

    #[test]
    fn minimal_definition_takes_defaults() {
        let m = Monitor::parse(
            "name: m\njudge: {url: 'http://localhost:11434/v1', model: llama3}\nmetrics: {fluency: }\n",
        )
        .unwrap();
        assert_eq!(m.window.size.as_str(), "P7D");
        assert_eq!(m.window.offset.seconds(), 0);
        assert_eq!(m.sampling_rate, DEFAULT_SAMPLING_RATE);
        assert_eq!(m.columns.context, "context");
        assert_eq!(m.judge.max_concurrency, 8);
        assert_eq!(m.judge.timeout, Duration::from_secs(60));
        assert_eq!(m.metrics, vec![(Metric::Fluency, Thresholds::default())]);
        assert_eq!(m.schedule, None);
    }

    #[test]
    fn azure_endpoint_and_model() {
        let m = Monitor::parse(
            "name: m\njudge: {kind: azure, url: 'https://x.openai.azure.com/', deployment: judge-4o, api_version: 2024-10-21}\nmetrics: {coherence: {}}\n",
        )
        .unwrap();
        assert_eq!(
            m.judge.endpoint(),
            "https://x.openai.azure.com/openai/deployments/judge-4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(m.judge.model, "judge-4o");
        assert_eq!(m.judge.kind_name(), "azure");
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = error(&with("seed: 0", "seed: 0\ncolour: blue"));
        assert!(
            e.to_string().starts_with("invalid monitor definition: "),
            "{e}"
        );
        assert!(e.message.contains("colour"), "{e}");
        let e = error(&with("model: gpt-4o", "model: gpt-4o\n  top_k: 5"));
        assert_eq!(e.field, "judge.top_k");
        assert!(e.message.starts_with("unknown field `top_k`"), "{e}");
        let e = error(&with(
            "fluency:      {}",
            "fluency:      {}\n  toxicity: {}",
        ));
        assert_eq!(e.field, "metrics.toxicity");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = error(&with(
            "average_threshold: 4.0}",
            "average_threshold: 4.0, min: 1}",
        ));
        assert_eq!(e.field, "metrics.groundedness.min");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (with("name: support-bot-quality", "name: 'a b'"), "name"),
            (with("size: P7D", "size: 7 days"), "window.size"),
            (with("size: P7D", "size: P0D"), "window.size"),
            (with("offset: P0D", "offset: P1M"), "window.offset"),
            (
                with("sampling_rate: 0.1", "sampling_rate: 0"),
                "sampling_rate",
            ),
            (
                with("sampling_rate: 0.1", "sampling_rate: 1.5"),
                "sampling_rate",
            ),
            (
                with("sampling_rate: 0.1", "sampling_rate: lots"),
                "sampling_rate",
            ),
            (with("seed: 0", "seed: -1"), "seed"),
            (
                with("question: question,", "question: '',"),
                "columns.question",
            ),
            (with("kind: openai", "kind: anthropic"), "judge.kind"),
            (
                with("url: http://127.0.0.1:8000/v1", "url: localhost:8000"),
                "judge.url",
            ),
            (with("model: gpt-4o", "model: ''"), "judge.model"),
            (
                with("model: gpt-4o", "model: gpt-4o\n  deployment: d"),
                "judge.deployment",
            ),
            (
                with("api_key_env: OPENAI_API_KEY", "api_key_env: 'sk-123 456'"),
                "judge.api_key_env",
            ),
            (
                with("max_concurrency: 8", "max_concurrency: 0"),
                "judge.max_concurrency",
            ),
            (
                with(
                    "max_concurrency: 8",
                    "max_concurrency: 8\n  timeout_seconds: 0",
                ),
                "judge.timeout_seconds",
            ),
            (
                with(
                    "acceptable_score: 4, pass_rate_threshold: 0.7, average",
                    "acceptable_score: 6, pass_rate_threshold: 0.7, average",
                ),
                "metrics.groundedness.acceptable_score",
            ),
            (
                with(
                    "relevance:    {acceptable_score: 4, pass_rate_threshold: 0.7}",
                    "relevance: {pass_rate_threshold: 70}",
                ),
                "metrics.relevance.pass_rate_threshold",
            ),
            (
                with("average_threshold: 4.0", "average_threshold: 9"),
                "metrics.groundedness.average_threshold",
            ),
            (
                with(
                    "average_threshold: 4.0",
                    "average_threshold: 4.0, min_coverage: 2",
                ),
                "metrics.groundedness.min_coverage",
            ),
            (
                with(
                    "average_threshold: 4.0",
                    "average_threshold: 4.0, min_samples: 0",
                ),
                "metrics.groundedness.min_samples",
            ),
            (
                with(
                    "average_threshold: 4.0",
                    "average_threshold: 4.0, rule: lower_bound",
                ),
                "metrics.groundedness.rule",
            ),
            (
                with(
                    "average_threshold: 4.0",
                    "average_threshold: 4.0, consecutive: 0",
                ),
                "metrics.groundedness.consecutive",
            ),
            (
                with("webhook: http://127.0.0.1:9000/hook", "webhook: mailto:ops"),
                "alerts.webhook",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "webhook: http://h/x\n  webhook_format: discord",
                ),
                "alerts.webhook_format",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "webhook_format: slack",
                ),
                "alerts.webhook_format",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "alertmanager: {url: 'am:9093'}",
                ),
                "alerts.alertmanager.url",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "alertmanager: {url: 'http://am:9093/api/v2/alerts'}",
                ),
                "alerts.alertmanager.url",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "alertmanager: {url: 'http://am:9093', labels: {metric: x}}",
                ),
                "alerts.alertmanager.labels.metric",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "alertmanager: {url: 'http://am:9093', labels: {team-a: x}}",
                ),
                "alerts.alertmanager.labels.team-a",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "alertmanager: {url: 'http://am:9093', labels: {team: ''}}",
                ),
                "alerts.alertmanager.labels.team",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "alertmanager: {url: 'http://am:9093', expire_after: PT10S}",
                ),
                "alerts.alertmanager.expire_after",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "alertmanager: {url: 'http://am:9093', expire_after: P1M}",
                ),
                "alerts.alertmanager.expire_after",
            ),
            (
                with(
                    "webhook: http://127.0.0.1:9000/hook",
                    "alertmanager: {url: 'http://am:9093', severity: ' '}",
                ),
                "alerts.alertmanager.severity",
            ),
            (
                with("schedule: \"15 10 * * *\"", "schedule: every day"),
                "schedule",
            ),
            (
                with("schedule: \"15 10 * * *\"", "schedule: \"0 0 30 2 *\""),
                "schedule",
            ),
            (
                with("schedule: \"15 10 * * *\"", "schedule: \"0 0 31 4 *\""),
                "schedule",
            ),
        ];
        for (text, field) in cases {
            let e = error(&text);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn verdict_settings_apply_to_every_metric_unless_overridden() {
        let m = Monitor::parse(&with(
            "schedule:",
            "verdict: {rule: upper_bound, min_samples: 30, min_coverage: 0.9, consecutive: 2}\nschedule:",
        ))
        .unwrap();
        let c = m.thresholds(Metric::Coherence).unwrap();
        assert_eq!(
            (c.rule, c.min_samples, c.min_coverage, c.consecutive),
            (Rule::UpperBound, 30, 0.9, 2)
        );
        let m = Monitor::parse(
            &with(
                "relevance:    {acceptable_score: 4, pass_rate_threshold: 0.7}",
                "relevance:    {rule: point, min_samples: 5}",
            )
            .replacen("schedule:", "verdict: {rule: upper_bound}\nschedule:", 1),
        )
        .unwrap();
        let r = m.thresholds(Metric::Relevance).unwrap();
        assert_eq!((r.rule, r.min_samples), (Rule::Point, 5));
        assert_eq!(
            m.thresholds(Metric::Fluency).unwrap().rule,
            Rule::UpperBound
        );
        let e = error(&with("schedule:", "verdict: {consecutive: 0}\nschedule:"));
        assert_eq!(e.field, "verdict.consecutive");
        let e = error(&with("schedule:", "verdict: {window: 3}\nschedule:"));
        assert_eq!(e.field, "verdict.window");
        let d = Monitor::parse(FULL)
            .unwrap()
            .thresholds(Metric::Coherence)
            .unwrap();
        assert_eq!(d, Thresholds::default());
        assert_eq!((d.min_samples, d.min_coverage), (10, 0.8));
    }

    #[test]
    fn judge_decoding_settings() {
        let m = Monitor::parse(FULL).unwrap();
        assert_eq!(m.judge.temperature, Some(0.0));
        assert_eq!(m.judge.response_format, ResponseFormat::JsonSchema);
        assert!(m.judge.repair && m.judge.price.is_none());
        let m = Monitor::parse(&with(
            "model: gpt-4o",
            "model: o4-mini\n  temperature: null\n  max_completion_tokens: 4000\n  reasoning_effort: low\n  response_format: json_object\n  repair: false\n  extra_body: {seed: 7, top_p: 1}\n  price: {input_per_million: 1.1, output_per_million: 4.4}",
        ))
        .unwrap();
        let j = &m.judge;
        assert_eq!((j.temperature, j.max_completion_tokens), (None, Some(4000)));
        assert_eq!(j.reasoning_effort.as_deref(), Some("low"));
        assert_eq!(j.response_format, ResponseFormat::JsonObject);
        assert!(!j.repair);
        assert_eq!(j.extra_body.get("seed"), Some(&serde_json::json!(7)));
        assert_eq!(j.price.unwrap().output_per_million, 4.4);
        for (line, field) in [
            ("temperature: 3", "judge.temperature"),
            (
                "max_tokens: 10\n  max_completion_tokens: 10",
                "judge.max_completion_tokens",
            ),
            ("max_tokens: 0", "judge.max_tokens"),
            ("reasoning_effort: extreme", "judge.reasoning_effort"),
            ("response_format: yaml", "judge.response_format"),
            ("extra_body: {messages: []}", "judge.extra_body.messages"),
            (
                "price: {input_per_million: -1, output_per_million: 1}",
                "judge.price.input_per_million",
            ),
            ("price: {input_per_million: 1}", "judge.price"),
        ] {
            let e = error(&with("model: gpt-4o", &format!("model: gpt-4o\n  {line}")));
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn the_canary_is_opt_in() {
        assert_eq!(Monitor::parse(FULL).unwrap().canary, None);
        let on = |text: &str| Monitor::parse(&with("schedule: \"15 10 * * *\"", text));
        assert_eq!(on("canary: true").unwrap().canary, Some(0.8));
        assert_eq!(
            on("canary: {min_agreement: 0.9}").unwrap().canary,
            Some(0.9)
        );
        assert_eq!(on("canary: false").unwrap().canary, None);
        assert_eq!(
            on("canary: {min_agreement: 1.5}").unwrap_err().field,
            "canary.min_agreement"
        );
    }

    #[test]
    fn rubric_is_ours_unless_azure_is_named() {
        assert_eq!(Monitor::parse(FULL).unwrap().rubric, Rubric::Tokenmeter);
        let azure = with("schedule: \"15 10 * * *\"", "rubric: azure");
        assert_eq!(Monitor::parse(&azure).unwrap().rubric, Rubric::Azure);
        let bad = with("schedule: \"15 10 * * *\"", "rubric: ragas");
        assert_eq!(error(&bad).field, "rubric");
    }

    #[test]
    fn scope_filters_and_groups() {
        let m = Monitor::parse(&with(
            "schedule: \"15 10 * * *\"",
            "filter: {model: [gpt-4o, gpt-4o-mini], dimensions.team: blue}\ngroup_by: [route, API ID]\nmax_groups: 5",
        ))
        .unwrap();
        assert_eq!(m.scope.filter.len(), 2);
        assert_eq!(
            m.scope.group_by,
            [Field::Route, Field::Dimension("API ID".into())]
        );
        assert_eq!(m.scope.max_groups, 5);
        assert_eq!(
            Monitor::parse(FULL).unwrap().scope.max_groups,
            DEFAULT_MAX_GROUPS
        );
        for (text, field) in [
            ("filter: {model: []}", "filter.model"),
            ("group_by: [monitor]", "group_by[0]"),
            ("group_by: [team, dimensions.team]", "group_by[1]"),
            ("group_by: ['']", "group_by[0]"),
            ("group_by: [model]\nmax_groups: 1", "max_groups"),
        ] {
            let e = error(&with("schedule: \"15 10 * * *\"", text));
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[test]
    fn alert_destinations_and_conditions() {
        let m = Monitor::parse(&with(
            "webhook: http://127.0.0.1:9000/hook",
            "webhook: https://hooks.slack.com/services/T/B/x\n  webhook_format: slack\n  no_data: true\n  alertmanager: {url: 'http://am:9093/', severity: critical, labels: {team: support}, expire_after: P2D}",
        ))
        .unwrap();
        assert_eq!(m.alerts.webhook_format, WebhookFormat::Slack);
        assert!(m.alerts.no_data);
        let am = m.alerts.alertmanager.unwrap();
        assert_eq!(am.url, "http://am:9093");
        assert_eq!(am.severity, "critical");
        assert_eq!(am.labels["team"], "support");
        assert_eq!(am.expire_after, Some(2 * 86_400));
        let plain = Monitor::parse(FULL).unwrap();
        assert_eq!(plain.alerts.webhook_format, WebhookFormat::Tokenmeter);
        assert!(!plain.alerts.no_data && plain.alerts.alertmanager.is_none());
        let am = Monitor::parse(&with(
            "webhook: http://127.0.0.1:9000/hook",
            "alertmanager: {url: 'http://am:9093'}",
        ))
        .unwrap()
        .alerts
        .alertmanager
        .unwrap();
        assert_eq!((am.severity.as_str(), am.expire_after), ("warning", None));
    }

    #[test]
    fn email_alerts() {
        let m = Monitor::parse(&with(
            "  webhook: http://127.0.0.1:9000/hook",
            "  email: {smtp_host: smtp.example.com, username_env: SMTP_USER, password_env: SMTP_PASSWORD, from: tm@example.com, to: [oncall@example.com]}",
        ))
        .unwrap();
        let e = m.alerts.email.unwrap();
        assert_eq!((e.smtp_port, e.tls), (587, SmtpTls::StartTls));
        assert_eq!(e.to, ["oncall@example.com"]);
        let base =
            "  email: {smtp_host: smtp.example.com, from: tm@example.com, to: [oncall@example.com]";
        let cases = [
            (format!("{base}, tls: ssl}}"), "alerts.email.tls"),
            (
                format!("{base}, username_env: U}}"),
                "alerts.email.password_env",
            ),
            (
                "  email: {smtp_host: h, from: nobody, to: [a@b]}".to_string(),
                "alerts.email.from",
            ),
            (
                "  email: {smtp_host: h, from: a@b, to: []}".to_string(),
                "alerts.email.to",
            ),
            (
                "  email: {smtp_host: h, from: a@b, to: [a@b, 'x y']}".to_string(),
                "alerts.email.to[1]",
            ),
            (
                "  email: {smtp_host: '', from: a@b, to: [a@b]}".to_string(),
                "alerts.email.smtp_host",
            ),
            (format!("{base}, port: 25}}"), "alerts.email.port"),
        ];
        for (line, field) in cases {
            let e = error(&with("  webhook: http://127.0.0.1:9000/hook", &line));
            assert_eq!(e.field, field, "{e}");
        }
        let tls = Monitor::parse(&with(
            "  webhook: http://127.0.0.1:9000/hook",
            &format!("{base}, tls: tls}}"),
        ))
        .unwrap();
        assert_eq!(tls.alerts.email.unwrap().smtp_port, 465);
    }

    #[test]
    fn required_parts() {
        let e = error("name: m\nmetrics: {fluency: {}}\n");
        assert!(e.message.contains("judge"), "{e}");
        let e = error("name: m\njudge: {url: 'http://h/v1', model: x}\nmetrics: {}\n");
        assert_eq!(e.field, "metrics");
        let e = error("name: m\njudge: {kind: azure, url: 'https://h', deployment: d}\nmetrics: {fluency: {}}\n");
        assert_eq!(e.field, "judge.api_version");
        let e = error("- a\n- b\n");
        assert_eq!(e.field, "monitor");
    }
}
