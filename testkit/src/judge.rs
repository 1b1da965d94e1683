//! A scripted OpenAI-compatible judge for tests: `POST /v1/chat/completions` and Azure's
//! `POST /openai/deployments/{deployment}/chat/completions?api-version=...`, answering
//! with real chat completion bodies (`choices[0].message.content`, `usage`) or
//! OpenAI-style error bodies, as each test's script decides. Every request is recorded
//! so tests can assert call counts and request contents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::axum_thread::AxumThread;

/// One request the judge received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    pub authorization: Option<String>,
    pub api_key: Option<String>,
    pub body: Value,
}

impl Received {
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    pub fn temperature(&self) -> Option<f64> {
        self.body.get("temperature").and_then(Value::as_f64)
    }

    fn message(&self, role: &str) -> String {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|ms| {
                ms.iter()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some(role))
            })
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    pub fn system(&self) -> String {
        self.message("system")
    }

    pub fn user(&self) -> String {
        self.message("user")
    }
}

/// What the judge answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this text as `choices[0].message.content`.
    Content(String),
    /// An OpenAI-style error body with this status, and `Retry-After` seconds if set.
    Error {
        status: u16,
        retry_after: Option<u64>,
        message: String,
    },
    /// A raw body (e.g. an HTML error page from a proxy).
    Raw { status: u16, body: String },
    /// Waits, then answers.
    Slow { delay: Duration, then: Box<Reply> },
}

impl Reply {
    /// `{"reason": ..., "score": N}`.
    pub fn json_score(score: u8, reason: &str) -> Reply {
        Reply::Content(json!({"reason": reason, "score": score}).to_string())
    }

    pub fn text(content: &str) -> Reply {
        Reply::Content(content.to_string())
    }

    pub fn rate_limited(retry_after: u64) -> Reply {
        Reply::Error {
            status: 429,
            retry_after: Some(retry_after),
            message: "Rate limit reached for requests".into(),
        }
    }

    pub fn server_error() -> Reply {
        Reply::Error {
            status: 500,
            retry_after: None,
            message: "The server had an error while processing your request.".into(),
        }
    }

    pub fn slow(delay: Duration, then: Reply) -> Reply {
        Reply::Slow {
            delay,
            then: Box::new(then),
        }
    }
}

/// Decides the reply from the request and how many times this same request (same
/// messages) has been received, counting from 1, so retries can be scripted per record.
pub type Script = dyn Fn(&Received, usize) -> Reply + Send + Sync;

#[derive(Clone)]
struct Shared {
    script: Arc<Script>,
    received: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<HashMap<String, usize>>>,
}

/// The running judge; stops when dropped.
pub struct JudgeServer {
    server: AxumThread,
    received: Arc<Mutex<Vec<Received>>>,
}

impl JudgeServer {
    pub fn start(
        script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Result<JudgeServer> {
        let shared = Shared {
            script: Arc::new(script),
            received: Arc::default(),
            attempts: Arc::default(),
        };
        let received = shared.received.clone();
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(azure),
            )
            .with_state(shared);
        Ok(JudgeServer {
            server: AxumThread::start(app)?,
            received,
        })
    }

    /// The OpenAI-style base URL, `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.server.addr())
    }

    /// The Azure-style resource endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn calls(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or_default()
    }
}

async fn openai(
    State(s): State<Shared>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Json<Value>,
) -> Response {
    answer(s, "/v1/chat/completions".to_string(), q, headers, body.0).await
}

async fn azure(
    State(s): State<Shared>,
    Path(deployment): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Json<Value>,
) -> Response {
    let path = format!("/openai/deployments/{deployment}/chat/completions");
    if !q.as_deref().unwrap_or_default().contains("api-version=") {
        return error_response(400, None, "Missing required query parameter: api-version");
    }
    answer(s, path, q, headers, body.0).await
}

async fn answer(
    s: Shared,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Value,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let received = Received {
        path: match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        },
        authorization: header("authorization"),
        api_key: header("api-key"),
        body,
    };
    let key = received
        .body
        .get("messages")
        .map(Value::to_string)
        .unwrap_or_default();
    let attempt = match s.attempts.lock() {
        Ok(mut a) => {
            let n = a.entry(key).or_insert(0);
            *n += 1;
            *n
        }
        Err(_) => 1,
    };
    if let Ok(mut r) = s.received.lock() {
        r.push(received.clone());
    }
    let mut reply = (s.script)(&received, attempt);
    loop {
        match reply {
            Reply::Slow { delay, then } => {
                tokio::time::sleep(delay).await;
                reply = *then;
            }
            Reply::Content(content) => return completion(&received, &content),
            Reply::Error {
                status,
                retry_after,
                message,
            } => return error_response(status, retry_after, &message),
            Reply::Raw { status, body } => {
                return (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body,
                )
                    .into_response()
            }
        }
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn completion(req: &Received, content: &str) -> Response {
    let prompt_tokens = words(&req.system()) + words(&req.user());
    let completion_tokens = words(content);
    Json(json!({
        "id": "chatcmpl-judge",
        "object": "chat.completion",
        "created": 1_764_151_200,
        "model": req.model().unwrap_or("judge"),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    }))
    .into_response()
}

fn error_response(status: u16, retry_after: Option<u64>, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status {
        429 => "rate_limit_exceeded",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let mut response = (
        code,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": null}})),
    )
        .into_response();
    if let Some(secs) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert("retry-after", v);
        }
    }
    response
}
