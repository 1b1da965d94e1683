//! A webhook receiver for alert tests: records every JSON body POSTed to `/hook`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use crate::axum_thread::AxumThread;

pub struct Webhook {
    server: AxumThread,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    pub fn start() -> Result<Webhook> {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let app = Router::new()
            .route(
                "/hook",
                post(
                    |State(r): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>| async move {
                        if let Ok(mut r) = r.lock() {
                            r.push(body);
                        }
                        "ok"
                    },
                ),
            )
            .with_state(received.clone());
        Ok(Webhook {
            server: AxumThread::start(app)?,
            received,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.server.addr())
    }

    pub fn received(&self) -> Vec<Value> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` alerts arrived; fails after `limit`.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Result<Vec<Value>> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return Ok(got);
            }
            if start.elapsed() > limit {
                bail!(
                    "{} alerts received within {limit:?}, expected {n}",
                    got.len()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
