//! The judge client: OpenAI-compatible chat completions (OpenAI, Azure OpenAI, vLLM,
//! Ollama...), with the monitor's decoding settings, structured output where the judge
//! accepts it, retries on 408, 429 and 5xx that honour `Retry-After`, a timeout per
//! call, and the judge's own token usage summed per run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::quality::monitor::{JudgeConfig, JudgeKind, ResponseFormat};
use crate::quality::prompt::Prompt;
use crate::quality::report::JudgeUsage;

/// Longest wait between attempts, whatever the backoff or the server asks.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The follow-up asked once when an answer could not be read.
const REPAIR: &str = "Your reply could not be read. Reply again with only the JSON object \
the instructions ask for, with the same verdict, and nothing else.";

/// A judge call that failed after its retries, or that the judge refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub message: String,
    /// The judge refused this input and would refuse it again (a content filter, a
    /// context too long): an outcome of the record, cached like an answer, and no sign
    /// that the judge is down.
    pub refusal: bool,
}

impl CallError {
    fn failed(message: String) -> CallError {
        CallError {
            message,
            refusal: false,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Default)]
struct UsageCounters {
    prompt: AtomicU64,
    completion: AtomicU64,
    total: AtomicU64,
    reasoning: AtomicU64,
}

pub struct Judge {
    http: reqwest::Client,
    config: JudgeConfig,
    endpoint: String,
    api_key: Option<String>,
    /// HTTP requests sent, retries included.
    requests: AtomicU64,
    repairs: AtomicU64,
    usage: UsageCounters,
    /// Cleared when the judge refuses `response_format`; the run goes on without it.
    structured: AtomicBool,
}

impl Judge {
    pub fn new(config: &JudgeConfig) -> Result<Judge> {
        let api_key = match &config.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
                _ => bail!(
                    "judge.api_key_env: the environment variable {var} is not set; export the judge's API key in it, or remove api_key_env for a judge without authentication"
                ),
            },
            None => None,
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("tokenmeter/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Judge {
            http,
            endpoint: config.endpoint(),
            config: config.clone(),
            api_key,
            requests: AtomicU64::new(0),
            repairs: AtomicU64::new(0),
            usage: UsageCounters::default(),
            structured: AtomicBool::new(config.response_format != ResponseFormat::None),
        })
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Follow-up requests made because an answer could not be read.
    pub fn repairs(&self) -> u64 {
        self.repairs.load(Ordering::Relaxed)
    }

    pub fn usage(&self) -> JudgeUsage {
        JudgeUsage {
            prompt_tokens: self.usage.prompt.load(Ordering::Relaxed),
            completion_tokens: self.usage.completion.load(Ordering::Relaxed),
            total_tokens: self.usage.total.load(Ordering::Relaxed),
            reasoning_tokens: self.usage.reasoning.load(Ordering::Relaxed),
        }
    }

    /// The response format still in use (`None` after the judge refused it).
    pub fn response_format(&self) -> ResponseFormat {
        if self.structured.load(Ordering::Relaxed) {
            self.config.response_format
        } else {
            ResponseFormat::None
        }
    }

    /// The settings that change the judge's answer besides the prompt, for the cache key.
    pub fn decoding(config: &JudgeConfig) -> String {
        json!({
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "max_completion_tokens": config.max_completion_tokens,
            "reasoning_effort": config.reasoning_effort,
            "response_format": config.response_format.name(),
            "extra_body": config.extra_body,
        })
        .to_string()
    }

    /// Asks the judge; returns the answer's text (`choices[0].message.content`).
    pub async fn ask(&self, prompt: &Prompt) -> Result<String, CallError> {
        let messages = json!([
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ]);
        self.chat(prompt, messages).await
    }

    /// Asks once more, for the format only, after an answer that could not be read.
    pub async fn repair(&self, prompt: &Prompt, answer: &str) -> Result<String, CallError> {
        self.repairs.fetch_add(1, Ordering::Relaxed);
        let messages = json!([
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": REPAIR},
        ]);
        self.chat(prompt, messages).await
    }

    fn body(&self, prompt: &Prompt, messages: &Value) -> Value {
        let c = &self.config;
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!(c.model));
        body.insert("messages".into(), messages.clone());
        if let Some(t) = c.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(n) = c.max_tokens {
            body.insert("max_tokens".into(), json!(n));
        }
        if let Some(n) = c.max_completion_tokens {
            body.insert("max_completion_tokens".into(), json!(n));
        }
        if let Some(e) = &c.reasoning_effort {
            body.insert("reasoning_effort".into(), json!(e));
        }
        match self.response_format() {
            ResponseFormat::JsonSchema => {
                body.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "verdict", "strict": true, "schema": prompt.schema}}),
                );
            }
            ResponseFormat::JsonObject => {
                body.insert("response_format".into(), json!({"type": "json_object"}));
            }
            ResponseFormat::None => {}
        }
        for (k, v) in &c.extra_body {
            body.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(body)
    }

    async fn chat(&self, prompt: &Prompt, messages: Value) -> Result<String, CallError> {
        let attempts = self.config.max_retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let body = self.body(prompt, &messages);
            let (error, retry_after) = match self.send(&body).await {
                Ok(content) => return Ok(content),
                Err(Failure::Final(message)) => {
                    // A judge that does not take `response_format` says so in a 400: go
                    // on without it (the prompt asks for JSON too), for the whole run.
                    if body.get("response_format").is_some() && rejects_format(&message) {
                        self.structured.store(false, Ordering::Relaxed);
                        attempt -= 1;
                        continue;
                    }
                    return Err(CallError::failed(message));
                }
                Err(Failure::Refused(message)) => {
                    return Err(CallError {
                        message,
                        refusal: true,
                    })
                }
                Err(Failure::Retryable {
                    message,
                    retry_after,
                }) => (message, retry_after),
            };
            if attempt >= attempts {
                return Err(CallError::failed(format!(
                    "{error} (gave up after {attempts} attempts)"
                )));
            }
            let backoff = self
                .config
                .initial_backoff
                .saturating_mul(1u32 << (attempt - 1).min(16));
            tokio::time::sleep(retry_after.unwrap_or(backoff).min(MAX_WAIT)).await;
        }
    }

    async fn send(&self, body: &Value) -> Result<String, Failure> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self
            .http
            .post(&self.endpoint)
            .timeout(self.config.timeout)
            .json(body);
        if let Some(key) = &self.api_key {
            request = match self.config.kind {
                JudgeKind::OpenAi => request.bearer_auth(key),
                JudgeKind::Azure => request.header("api-key", key),
            };
        }
        let response = request.send().await.map_err(|e| Failure::Retryable {
            message: if e.is_timeout() {
                format!(
                    "no answer from {} within {:?} (judge.timeout_seconds)",
                    self.endpoint, self.config.timeout
                )
            } else {
                format!("cannot reach {}: {}", self.endpoint, error_chain(&e))
            },
            retry_after: None,
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64())));
        let text = response.text().await.map_err(|e| Failure::Retryable {
            message: if e.is_timeout() {
                format!(
                    "the answer from {} did not finish within {:?}",
                    self.endpoint, self.config.timeout
                )
            } else {
                format!(
                    "reading the answer from {} failed: {}",
                    self.endpoint,
                    error_chain(&e)
                )
            },
            retry_after: None,
        })?;
        if status == StatusCode::OK {
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                Failure::Final(format!(
                    "the judge's answer is not JSON ({e}); is judge.url an OpenAI-compatible API?"
                ))
            })?;
            self.count_usage(&value);
            return content(&value).map_err(Failure::Final);
        }
        let message = format!(
            "HTTP {} from {}: {}",
            status.as_u16(),
            self.endpoint,
            error_message(&text)
        );
        if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            Err(Failure::Retryable {
                message,
                retry_after,
            })
        } else if status == StatusCode::PAYLOAD_TOO_LARGE
            || (matches!(status.as_u16(), 400 | 422) && is_refusal(&text))
        {
            Err(Failure::Refused(message))
        } else {
            Err(Failure::Final(message))
        }
    }

    fn count_usage(&self, answer: &Value) {
        let Some(u) = answer.get("usage") else { return };
        let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let prompt = n(u.get("prompt_tokens"));
        let completion = n(u.get("completion_tokens"));
        let total = match n(u.get("total_tokens")) {
            0 => prompt.saturating_add(completion),
            t => t,
        };
        let reasoning = n(u
            .get("completion_tokens_details")
            .and_then(|d| d.get("reasoning_tokens")));
        self.usage.prompt.fetch_add(prompt, Ordering::Relaxed);
        self.usage
            .completion
            .fetch_add(completion, Ordering::Relaxed);
        self.usage.total.fetch_add(total, Ordering::Relaxed);
        self.usage.reasoning.fetch_add(reasoning, Ordering::Relaxed);
    }
}

/// Whether a 400 says the judge does not take the requested `response_format`.
fn rejects_format(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("http 400")
        && [
            "response_format",
            "json_schema",
            "structured output",
            "json mode",
        ]
        .iter()
        .any(|k| m.contains(k))
}

/// Whether an error body is the judge refusing this input for what it is: a content
/// filter, or a prompt too long for the model. Other 4xx answers (a bad key, an unknown
/// model, a bad parameter) are the monitor's configuration, never cached.
fn is_refusal(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    [
        "content_filter",
        "content management policy",
        "responsibleaipolicyviolation",
        "content_policy_violation",
        "context_length_exceeded",
        "maximum context length",
        "string_above_max_length",
        "prompt is too long",
        "input is too long",
        "too many tokens",
    ]
    .iter()
    .any(|k| b.contains(k))
}

enum Failure {
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    Final(String),
    Refused(String),
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// `choices[0].message.content` of a chat completion; an empty or null content is an
/// answer with nothing in it (unparsed), a body of another shape is an error.
fn content(value: &Value) -> Result<String, String> {
    let message = value
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .ok_or_else(|| "the judge's answer has no choices[0].message; is judge.url an OpenAI-compatible chat completions API?".to_string())?;
    Ok(message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string())
}

/// The `error.message` of an OpenAI-style error body, else the body's start.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.get("message").or(Some(e)))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_and_errors() {
        let v = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        assert_eq!(
            content(&v(
                r#"{"choices":[{"message":{"role":"assistant","content":"4"}}]}"#
            )),
            Ok("4".to_string())
        );
        assert_eq!(
            content(&v(
                r#"{"choices":[{"message":{"role":"assistant","content":null}}]}"#
            )),
            Ok(String::new())
        );
        assert!(content(&v(r#"{"data":[]}"#))
            .unwrap_err()
            .contains("choices[0].message"));
        assert_eq!(
            error_message(r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#),
            "Rate limit reached"
        );
        assert_eq!(error_message("Bad Gateway"), "Bad Gateway");
    }

    #[test]
    fn refusals_are_told_from_configuration_errors() {
        assert!(is_refusal(
            r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400}}"#
        ));
        assert!(is_refusal(
            r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130412 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#
        ));
        assert!(!is_refusal(
            r#"{"error":{"message":"Unsupported value: 'temperature' does not support 0 with this model.","type":"invalid_request_error","param":"temperature","code":"unsupported_value"}}"#
        ));
        assert!(!is_refusal(
            r#"{"error":{"message":"The model `gpt-5o` does not exist","code":"model_not_found"}}"#
        ));
        assert!(rejects_format("HTTP 400 from http://h/v1/chat/completions: Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."));
        assert!(!rejects_format("HTTP 401 from h: response_format"));
    }
}
