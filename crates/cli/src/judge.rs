//! The judge client: OpenAI-compatible chat completions (OpenAI, Azure OpenAI, vLLM,
//! Ollama...), at temperature 0, with retries on 408, 429 and 5xx that honour
//! `Retry-After`, and a timeout per call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::quality::monitor::{JudgeConfig, JudgeKind};
use crate::quality::prompt::Prompt;

/// Longest wait between attempts, whatever the backoff or the server asks.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// A judge call that failed after its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError(pub String);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Judge {
    http: reqwest::Client,
    config: JudgeConfig,
    endpoint: String,
    api_key: Option<String>,
    /// HTTP requests sent, retries included.
    requests: AtomicU64,
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
        })
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Asks the judge; returns the answer's text (`choices[0].message.content`).
    pub async fn ask(&self, prompt: &Prompt) -> Result<String, CallError> {
        let body = json!({
            "model": self.config.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
        });
        let attempts = self.config.max_retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (error, retry_after) = match self.send(&body).await {
                Ok(content) => return Ok(content),
                Err(Failure::Final(message)) => return Err(CallError(message)),
                Err(Failure::Retryable {
                    message,
                    retry_after,
                }) => (message, retry_after),
            };
            if attempt >= attempts {
                return Err(CallError(format!(
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
            return content(&text).map_err(Failure::Final);
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
        } else {
            Err(Failure::Final(message))
        }
    }
}

enum Failure {
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    Final(String),
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
fn content(body: &str) -> Result<String, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| {
        format!("the judge's answer is not JSON ({e}); is judge.url an OpenAI-compatible API?")
    })?;
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
        assert_eq!(
            content(r#"{"choices":[{"message":{"role":"assistant","content":"4"}}]}"#),
            Ok("4".to_string())
        );
        assert_eq!(
            content(r#"{"choices":[{"message":{"role":"assistant","content":null}}]}"#),
            Ok(String::new())
        );
        assert!(content(r#"{"data":[]}"#)
            .unwrap_err()
            .contains("choices[0].message"));
        assert!(content("<html>").unwrap_err().contains("not JSON"));
        assert_eq!(
            error_message(r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#),
            "Rate limit reached"
        );
        assert_eq!(error_message("Bad Gateway"), "Bad Gateway");
    }
}
