//! The `collect` block of the filter configuration: where sampled records go, at which
//! rate, which columns they carry and what is redacted from them (see
//! [`crate::records::collect`] for what is done with it).

use regex::Regex;
use serde::Deserialize;

use super::ConfigError;

/// Where a record's `context` column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// System and developer messages (chat), `instructions` (Responses API).
    System,
    /// Tool and function results in the conversation.
    ToolResults,
    /// A dotted path into the request body.
    RequestBody(Vec<String>),
    /// A request header (lower-case name).
    RequestHeader(String),
    None,
}

/// The validated `collect` block.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub sample_rate: f64,
    pub timeout_ms: u32,
    pub max_in_flight: usize,
    pub max_queue: usize,
    pub max_record_bytes: usize,
    pub question: String,
    pub answer: String,
    pub context_column: String,
    pub context: ContextSource,
    pub redact: Vec<(Regex, String)>,
    /// Usage rollups of all traffic, `None` when turned off (`rollup_interval_ms: 0`).
    pub rollups: Option<RollupConfig>,
    /// `Bearer TOKEN`, sent as `authorization` on every post when `token` is set (the
    /// collector's `--ingest-token-file`).
    pub authorization: Option<String>,
}

/// Where and how often rollups are sent (see [`crate::series::rollup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupConfig {
    pub path: String,
    pub interval_ms: u32,
    /// Rows kept between sends, and batches kept for retry.
    pub max_rows: usize,
    pub max_batches: usize,
}

pub const DEFAULT_ROLLUP_INTERVAL_MS: u32 = 10_000;
pub const DEFAULT_MAX_ROLLUP_ROWS: usize = 2000;
pub const DEFAULT_MAX_ROLLUP_BATCHES: usize = 30;

impl PartialEq for CollectConfig {
    fn eq(&self, other: &Self) -> bool {
        let patterns = |c: &CollectConfig| -> Vec<(String, String)> {
            c.redact
                .iter()
                .map(|(r, s)| (r.as_str().to_string(), s.clone()))
                .collect()
        };
        self.cluster == other.cluster
            && self.authority == other.authority
            && self.path == other.path
            && self.sample_rate == other.sample_rate
            && self.timeout_ms == other.timeout_ms
            && self.max_in_flight == other.max_in_flight
            && self.max_queue == other.max_queue
            && self.max_record_bytes == other.max_record_bytes
            && self.question == other.question
            && self.answer == other.answer
            && self.context_column == other.context_column
            && self.context == other.context
            && self.rollups == other.rollups
            && self.authorization == other.authorization
            && patterns(self) == patterns(other)
    }
}

impl Eq for CollectConfig {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCollect {
    cluster: String,
    authority: Option<String>,
    path: Option<String>,
    sample_rate: Option<f64>,
    timeout_ms: Option<u32>,
    max_in_flight: Option<usize>,
    max_queue: Option<usize>,
    max_record_bytes: Option<usize>,
    #[serde(default)]
    columns: RawColumns,
    context: Option<String>,
    redact: Option<Vec<String>>,
    rollup_path: Option<String>,
    rollup_interval_ms: Option<u32>,
    max_rollup_rows: Option<usize>,
    max_rollup_batches: Option<usize>,
    token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawColumns {
    question: Option<String>,
    answer: Option<String>,
    context: Option<String>,
}

/// Built-in redaction sets, named `@email` and `@api_key` in `redact`.
const EMAIL: &str = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}";
/// `@api_key`, one alternative per key family (the README lists them): OpenAI, Anthropic and
/// other `sk-`/`rk-`/`pk-` keys; Stripe-style `sk_live_`/`sk_test_`; AWS access key ids, long-term
/// (`AKIA`) and temporary (`ASIA`) and the other IAM id prefixes; GitHub classic (`ghp_`,
/// `gho_`, `ghu_`, `ghs_`, `ghr_`) and fine-grained (`github_pat_`) tokens; Slack tokens;
/// Google API keys; JSON Web Tokens; bearer credentials.
const API_KEY: &str = concat!(
    r"(?:\b(?:sk|rk|pk)-(?:proj-|ant-|live-|test-|svcacct-|admin-)?[A-Za-z0-9_-]{16,}",
    r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",
    r"|\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[0-9A-Z]{16}\b",
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}",
    r"|\bgithub_pat_[A-Za-z0-9_]{22,}",
    r"|\bxox[abeprs]-[A-Za-z0-9-]{10,}",
    r"|\bAIza[0-9A-Za-z_-]{35}",
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*)"
);
pub const DEFAULT_REDACT: &[&str] = &["@email", "@api_key"];
pub const DEFAULT_SAMPLE_RATE: f64 = 0.1;
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;

impl RawCollect {
    pub(crate) fn validate(self) -> Result<CollectConfig, ConfigError> {
        let err = |field: &str, msg: String| ConfigError {
            field: format!("collect.{field}"),
            message: msg,
        };
        if self.cluster.trim().is_empty() {
            return Err(err(
                "cluster",
                "name the Envoy cluster of the collector".into(),
            ));
        }
        let sample_rate = self.sample_rate.unwrap_or(DEFAULT_SAMPLE_RATE);
        if !(0.0..=1.0).contains(&sample_rate) {
            return Err(err(
                "sample_rate",
                format!("{sample_rate} is not between 0 and 1"),
            ));
        }
        let path = self.path.unwrap_or_else(|| "/v1/records".into());
        if !path.starts_with('/') {
            return Err(err("path", format!("{path:?} must start with /")));
        }
        let max_record_bytes = self.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        if max_record_bytes < 1024 {
            return Err(err(
                "max_record_bytes",
                format!("{max_record_bytes} is too small; use at least 1024"),
            ));
        }
        let interval_ms = self
            .rollup_interval_ms
            .unwrap_or(DEFAULT_ROLLUP_INTERVAL_MS);
        let rollups = if interval_ms == 0 {
            None
        } else {
            if !(1000..=300_000).contains(&interval_ms) {
                return Err(err(
                    "rollup_interval_ms",
                    format!(
                        "{interval_ms} is not between 1000 and 300000 (or 0 to send no rollups)"
                    ),
                ));
            }
            let path = self.rollup_path.unwrap_or_else(|| "/v1/rollups".into());
            if !path.starts_with('/') {
                return Err(err("rollup_path", format!("{path:?} must start with /")));
            }
            let max_rows = self.max_rollup_rows.unwrap_or(DEFAULT_MAX_ROLLUP_ROWS);
            if !(1..=100_000).contains(&max_rows) {
                return Err(err(
                    "max_rollup_rows",
                    format!("{max_rows} is not between 1 and 100000"),
                ));
            }
            let max_batches = self
                .max_rollup_batches
                .unwrap_or(DEFAULT_MAX_ROLLUP_BATCHES);
            if !(1..=1000).contains(&max_batches) {
                return Err(err(
                    "max_rollup_batches",
                    format!("{max_batches} is not between 1 and 1000"),
                ));
            }
            Some(RollupConfig {
                path,
                interval_ms,
                max_rows,
                max_batches,
            })
        };
        let authorization = match self.token {
            None => None,
            Some(t) if t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(format!("Bearer {t}"))
            }
            Some(_) => {
                return Err(err(
                    "token",
                    "must be at least 16 printable ASCII characters without spaces, the same as the collector's --ingest-token-file".into(),
                ))
            }
        };
        let max_in_flight = self.max_in_flight.unwrap_or(16);
        if max_in_flight == 0 {
            return Err(err("max_in_flight", "must be at least 1".into()));
        }
        // Not `system` by default: groundedness judged against "You are a helpful
        // assistant" measures nothing. Tool results are what an answer should rest on.
        let context = match self.context.as_deref().unwrap_or("tool_results") {
            "system" => ContextSource::System,
            "tool_results" => ContextSource::ToolResults,
            "none" => ContextSource::None,
            other => match (other.strip_prefix("request.body."), other.strip_prefix("request.header.")) {
                (Some(p), _) if !p.is_empty() && p.split('.').all(|s| !s.is_empty()) => {
                    ContextSource::RequestBody(p.split('.').map(str::to_string).collect())
                }
                (_, Some(h)) if !h.is_empty() => ContextSource::RequestHeader(h.to_ascii_lowercase()),
                _ => {
                    return Err(err(
                        "context",
                        format!("{other:?}: use \"system\", \"tool_results\", \"request.body.PATH\", \"request.header.NAME\" or \"none\""),
                    ))
                }
            },
        };
        let column =
            |v: Option<String>, default: &str, field: &str| -> Result<String, ConfigError> {
                let v = v.unwrap_or_else(|| default.to_string());
                let reserved = [
                    "id",
                    "time",
                    "model",
                    "operation",
                    "route",
                    "dimensions",
                    "usage",
                    "status",
                    "duration_ms",
                    "ttft_ms",
                    "truncated",
                ];
                if v.is_empty() || reserved.contains(&v.as_str()) {
                    return Err(err(
                        &format!("columns.{field}"),
                        format!("{v:?} is empty or a field every record has"),
                    ));
                }
                Ok(v)
            };
        let question = column(self.columns.question, "question", "question")?;
        let answer = column(self.columns.answer, "answer", "answer")?;
        let context_column = column(self.columns.context, "context", "context")?;
        if question == answer || question == context_column || answer == context_column {
            return Err(err(
                "columns",
                "the three columns need different names".into(),
            ));
        }
        let mut redact = Vec::new();
        let patterns = self
            .redact
            .unwrap_or_else(|| DEFAULT_REDACT.iter().map(|s| s.to_string()).collect());
        for (i, p) in patterns.iter().enumerate() {
            let (pattern, replacement) = match p.as_str() {
                "@email" => (EMAIL, "[EMAIL]"),
                "@api_key" => (API_KEY, "[API_KEY]"),
                other => (other, "[REDACTED]"),
            };
            let re =
                Regex::new(pattern).map_err(|e| err(&format!("redact[{i}]"), e.to_string()))?;
            redact.push((re, replacement.to_string()));
        }
        Ok(CollectConfig {
            authority: self.authority.unwrap_or_else(|| self.cluster.clone()),
            cluster: self.cluster,
            path,
            sample_rate,
            timeout_ms: self.timeout_ms.unwrap_or(5000).max(1),
            max_in_flight,
            max_queue: self.max_queue.unwrap_or(1000),
            max_record_bytes,
            question,
            answer,
            context_column,
            context,
            redact,
            rollups,
            authorization,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_collect_blocks_name_their_field() {
        for (extra, field) in [
            (r#", "sample_rate": 1.5"#, "collect.sample_rate"),
            (r#", "path": "v1/records""#, "collect.path"),
            (r#", "context": "cookie.x""#, "collect.context"),
            (r#", "redact": ["("]"#, "collect.redact[0]"),
            (r#", "columns": {"answer": "id"}"#, "collect.columns.answer"),
            (r#", "columns": {"answer": "question"}"#, "collect.columns"),
            (r#", "max_in_flight": 0"#, "collect.max_in_flight"),
            (r#", "max_record_bytes": 10"#, "collect.max_record_bytes"),
            (
                r#", "rollup_interval_ms": 10"#,
                "collect.rollup_interval_ms",
            ),
            (r#", "rollup_path": "x""#, "collect.rollup_path"),
            (r#", "token": "short""#, "collect.token"),
            (r#", "token": "a token with spaces in it""#, "collect.token"),
            (r#", "max_rollup_rows": 0"#, "collect.max_rollup_rows"),
            (
                r#", "max_rollup_batches": 5000"#,
                "collect.max_rollup_batches",
            ),
        ] {
            let raw: RawCollect =
                serde_json::from_str(&format!(r#"{{"cluster": "c"{extra}}}"#)).unwrap();
            assert_eq!(raw.validate().unwrap_err().field, field, "{extra}");
        }
    }

    #[test]
    fn the_default_context_is_tool_results_and_system_stays_by_name() {
        let parse = |extra: &str| {
            serde_json::from_str::<RawCollect>(&format!(r#"{{"cluster": "c"{extra}}}"#))
                .unwrap()
                .validate()
                .unwrap()
                .context
        };
        assert_eq!(parse(""), ContextSource::ToolResults);
        assert_eq!(parse(r#", "context": "system""#), ContextSource::System);
    }
}
