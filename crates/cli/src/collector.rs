//! The collector's HTTP API: `POST /v1/records`, `POST /v1/rollups`, `GET /api/v1/usage`,
//! `GET /api/v1/operations`, `GET /api/v1/records[/{id}]`, `GET /api/v1/quality`,
//! `GET /api/v1/monitors`, `GET /healthz`, `GET /metrics`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use crate::quality::exposition::{self, MonitorState};
use crate::{browse, ingest, rollups, runs, usage};

use crate::store::Store;
use crate::stores::Stores;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Stores>,
    pub namespace: String,
    pub monitors: Arc<Vec<runs::MonitorInfo>>,
    pub max_body_bytes: usize,
    /// The token reads need, when one was given.
    pub token: Option<Arc<String>>,
    /// The token record and rollup posts need, when one was given.
    pub ingest_token: Option<Arc<String>>,
    /// Places for the deliveries in progress ([`MAX_DELIVERIES`]).
    pub deliveries: Arc<tokio::sync::Semaphore>,
}

pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let reads = Router::new()
        .route("/api/v1/usage", get(get_usage))
        .route("/api/v1/operations", get(get_operations))
        .route("/api/v1/records", get(get_records))
        .route("/api/v1/records/{id}", get(get_record))
        .route("/api/v1/quality", get(get_quality))
        .route("/api/v1/monitors", get(get_monitors))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let ingestion = Router::new()
        .route("/v1/records", post(post_records))
        .route("/v1/rollups", post(post_rollups))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_ingest_token,
        ));
    Router::new()
        .merge(reads)
        .merge(ingestion)
        .merge(crate::console::routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Reads of the store need `Authorization: Bearer TOKEN` when `serve` was given a token.
/// Without one, `serve` listens on loopback only, and reads are answered only to requests
/// addressed to a loopback name: a web page that rebinds its own name to 127.0.0.1 cannot
/// read the store through the user's browser.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.token.is_none() && !loopback_host(&request) {
        return error(
            StatusCode::FORBIDDEN,
            "without --token-file this collector answers reads only for Host 127.0.0.1, localhost or [::1]; give --token-file to read it under another name",
        );
    }
    match refused(
        state.token.as_deref(),
        &request,
        "reads need a token: send Authorization: Bearer TOKEN (the --token-file's)",
    ) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

/// Whether the request's `Host` names this machine (a request without one is not from a
/// browser).
fn loopback_host(request: &Request) -> bool {
    let Some(host) = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Record and rollup posts need the ingestion token when `serve` was given one, and a JSON
/// content type always: a web page can send a cross-site `text/plain` post without asking,
/// never a JSON one.
async fn require_ingest_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| t == "application/json" || t == "application/x-ndjson");
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json or application/x-ndjson",
        );
    }
    match refused(
        state.ingest_token.as_deref(),
        &request,
        "ingestion needs a token: set the filter's collect.token to the --ingest-token-file's",
    ) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

/// A 401 when a token is needed and the request does not carry it.
fn refused(token: Option<&String>, request: &Request, message: &str) -> Option<Response> {
    let token = token?;
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    (!same(given.as_bytes(), token.as_bytes()))
        .then(|| error(StatusCode::UNAUTHORIZED, message.to_string()))
}

/// Compares without stopping at the first difference, so timing does not tell how much of
/// a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// What a handler's work on the store came to when it is the caller's fault: its status
/// and message.
type Refusal = (StatusCode, String);

/// Runs `work` on the store off the async threads and answers with its JSON; a refusal
/// with its status, a database that is unavailable or busy with 503, and any other failure
/// of the store with 500 (logged, naming `what`).
async fn on_store<T: Serialize + Send + 'static>(
    state: &AppState,
    what: &'static str,
    work: impl FnOnce(&mut Store) -> anyhow::Result<Result<T, Refusal>> + Send + 'static,
) -> Response {
    on_store_after(state, what, || Ok(()), move |store, ()| work(store)).await
}

/// [`on_store`] after `prepare` (parsing a body), which runs before a connection is taken:
/// a large body does not hold the store while it is read.
async fn on_store_after<P: Send + 'static, T: Serialize + Send + 'static>(
    state: &AppState,
    what: &'static str,
    prepare: impl FnOnce() -> Result<P, Refusal> + Send + 'static,
    work: impl FnOnce(&mut Store, P) -> anyhow::Result<Result<T, Refusal>> + Send + 'static,
) -> Response {
    let store = state.store.clone();
    let outcome = tokio::task::spawn_blocking(move || match prepare() {
        Ok(p) => store.with(|s| work(s, p)),
        Err(refusal) => Ok(Err(refusal)),
    })
    .await;
    match outcome {
        Ok(Ok(Ok(answer))) => Json(answer).into_response(),
        Ok(Ok(Err((status, message)))) => error(status, message),
        Ok(Err(e)) if crate::db::is_unavailable(&e) => {
            // The sender keeps what it could not deliver, or counts it dropped; the store
            // answers again once the database is back.
            eprintln!("error: {what} failed: {e:#}");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} failed: {e:#}"),
            );
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
            response
        }
        Ok(Err(e)) => {
            eprintln!("error: {what} failed: {e:#}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{what} failed: {e:#}"),
            )
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} failed: {e}"),
        ),
    }
}

/// Most deliveries (record and rollup posts) a collector holds at once, bodies and all;
/// past that it answers 503 at once, so a stalled database cannot make it hoard bodies.
pub const MAX_DELIVERIES: usize = 64;

/// A place among the deliveries in progress, if one is free.
fn ingestion_slot(state: &AppState) -> Option<tokio::sync::OwnedSemaphorePermit> {
    state.deliveries.clone().try_acquire_owned().ok()
}

fn busy() -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{MAX_DELIVERIES} deliveries are already waiting for the store; try again shortly"),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("5"),
    );
    response
}

fn bad_request(message: impl ToString) -> Refusal {
    (StatusCode::BAD_REQUEST, message.to_string())
}

async fn post_records(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} bytes; send smaller batches or raise --max-body-bytes",
                    state.max_body_bytes
                ),
            )
        }
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let Some(slot) = ingestion_slot(&state) else {
        return busy();
    };
    let received = Utc::now();
    on_store_after(
        &state,
        "storing the records",
        // The place is held until the work ends, even if the client has gone.
        move || {
            ingest::parse_batch(&body, received)
                .map_err(bad_request)
                .map(|b| (b, slot))
        },
        move |store, (batch, _slot)| {
            let stored = store.insert(&batch, received.timestamp_micros())?;
            Ok(Ok(
                json!({"stored": stored.stored, "duplicates": stored.duplicates}),
            ))
        },
    )
    .await
}

/// A rollup batch: added once (a retried batch answers 200 with `"duplicate": true`).
async fn post_rollups(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let Some(slot) = ingestion_slot(&state) else {
        return busy();
    };
    on_store_after(
        &state,
        "storing the rollups",
        move || {
            rollups::parse(&body)
                .map_err(bad_request)
                .map(|b| (b, slot))
        },
        move |store, (batch, _slot)| {
            let added = store.insert_rollups(&batch, Utc::now().timestamp_micros())?;
            Ok(Ok(json!({"rows": batch.rows.len(), "duplicate": !added})))
        },
    )
    .await
}

type Params = Query<std::collections::BTreeMap<String, String>>;

/// Usage over time from the rollups (docs/api.md).
async fn get_usage(State(state): State<AppState>, Query(params): Params) -> Response {
    let query = match usage::parse_query(&params, Utc::now()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    on_store(&state, "reading usage", move |store| {
        Ok(Ok(usage::answer(&query, store.usage(&query)?)))
    })
    .await
}

/// Requests, errors and latency over time from the rollups (docs/api.md).
async fn get_operations(State(state): State<AppState>, Query(params): Params) -> Response {
    let query = match usage::parse_query(&params, Utc::now()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    on_store(&state, "reading operations", move |store| {
        Ok(Ok(usage::operations(&query, store.operations(&query)?)))
    })
    .await
}

/// A stored record and its scores.
fn entry(store: &Store, text: &str) -> anyhow::Result<browse::Entry> {
    let record: serde_json::Value = serde_json::from_str(text)?;
    let id = record
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(browse::Entry {
        scores: store.scores(&id)?,
        record,
    })
}

/// The sampled records of a window with their scores, newest first (docs/api.md).
async fn get_records(State(state): State<AppState>, Query(params): Params) -> Response {
    let query = match browse::parse_query(&params, Utc::now()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    on_store(&state, "reading records", move |store| {
        let (total, records) = store.records_page(&query)?;
        let records = records
            .iter()
            .map(|text| entry(store, text))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Ok(browse::Page {
            total,
            limit: query.limit,
            offset: query.offset,
            records,
        }))
    })
    .await
}

/// One record with everything known about it; 404 for an unknown id.
async fn get_record(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    on_store(&state, "reading a record", move |store| {
        Ok(match store.record(&id)? {
            Some(text) => Ok(entry(store, &text)?),
            None => Err((
                StatusCode::NOT_FOUND,
                format!("no record has the id {id:?}"),
            )),
        })
    })
    .await
}

/// The monitors' runs of a window per metric (docs/api.md).
async fn get_quality(State(state): State<AppState>, Query(params): Params) -> Response {
    let query = match runs::parse_query(&params, Utc::now()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    on_store(&state, "reading quality runs", move |store| {
        let histograms = store.score_histograms(&query)?;
        Ok(Ok(runs::answer(&query, store.runs(&query)?, &histograms)))
    })
    .await
}

/// The configured monitors with their last and next run (docs/api.md).
async fn get_monitors(State(state): State<AppState>, Query(params): Params) -> Response {
    if let Err(e) = crate::params::only_known(&params, &[]) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let monitors = state.monitors.clone();
    on_store(&state, "reading monitors", move |store| {
        let now = Utc::now();
        let list = monitors
            .iter()
            .map(|m| {
                let mut s = runs::status(m, store.last_run(&m.name)?, now);
                s.alerts_firing = store
                    .firing_alerts(&m.name)?
                    .into_iter()
                    .map(runs::AlertFiring::from)
                    .collect();
                Ok(s)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Ok(json!({ "monitors": list })))
    })
    .await
}

/// How long `/healthz` waits for a connection to the store.
const HEALTH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn healthz(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let ok = tokio::task::spawn_blocking(move || {
        store.with_deadline(HEALTH_WAIT, |s| s.check()).is_ok()
    })
    .await
    .unwrap_or(false);
    if ok {
        Json(json!({"status": "ok"})).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is not usable",
        )
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let monitors = state.monitors.clone();
    let rendered = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<MonitorState>> {
        store.with(|store| {
            monitors
                .iter()
                .map(|m| {
                    let runs = store.monitor_runs(&m.name)?;
                    Ok(MonitorState {
                        monitor: m.name.clone(),
                        last_report: runs.last_report,
                        last_run_failed: runs.last_failed,
                        scheduler_running: match m.scheduler_state().0 {
                            "running" => Some(true),
                            "stopped" => Some(false),
                            _ => None,
                        },
                    })
                })
                .collect()
        })
    })
    .await;
    match rendered {
        Ok(Ok(states)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            exposition::render(&state.namespace, &states),
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
