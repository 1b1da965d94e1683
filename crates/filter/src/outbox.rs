//! Delivery of inference records to the collector: a bounded queue per VM, flushed by the
//! root context's timer, at most `max_in_flight` callouts at a time.
//!
//! Callouts are made from the root context because Envoy cancels a stream context's
//! callouts when the stream ends, which is exactly when a record is ready. Nothing here
//! can delay a client: records wait in the queue, and what cannot be sent is dropped and
//! counted.

use std::collections::VecDeque;
use std::time::Duration;

use super::host;
use proxy_wasm::types::MapType;
use tokenmeter_core::config::collect::CollectConfig;

/// How often queued records are sent.
pub const FLUSH_MS: u32 = 100;

#[derive(Default)]
pub struct Outbox {
    queue: VecDeque<String>,
    in_flight: usize,
}

/// What became of a record (for `records_sent_total` / `records_dropped_total`).
pub type Outcome = Option<&'static str>;

impl Outbox {
    /// Queues a record; `Some(reason)` when it had to be dropped.
    pub fn push(&mut self, config: &CollectConfig, record: String) -> Outcome {
        if self.queue.len() >= config.max_queue {
            return Some("queue_full");
        }
        self.queue.push_back(record);
        None
    }

    /// Sends queued records while callouts are free; returns the drops.
    pub fn flush(&mut self, config: &CollectConfig) -> Vec<&'static str> {
        let mut dropped = Vec::new();
        while self.in_flight < config.max_in_flight {
            let Some(record) = self.queue.pop_front() else {
                break;
            };
            match post(config, &config.path, record.as_bytes()) {
                Some(_) => self.in_flight += 1,
                None => dropped.push("dispatch_failed"),
            }
        }
        dropped
    }

    /// A callout finished; reads its status and says what became of the record.
    pub fn answered(&mut self, num_headers: usize) -> Outcome {
        self.in_flight = self.in_flight.saturating_sub(1);
        if num_headers == 0 {
            // No answer at all (the callout was reset or cancelled).
            return Some("callout_failed");
        }
        // Non-2xx, including Envoy's own 503/504 for an unreachable or slow collector.
        match callout_status() {
            Some(200..=299) => None,
            _ => Some("collector_error"),
        }
    }
}

/// POSTs JSON `body` to the collector's `path` from the root context: the callout's token,
/// or `None` when the host refused it (no such cluster).
pub fn post(config: &CollectConfig, path: &str, body: &[u8]) -> Option<u32> {
    let mut headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", config.authority.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(authorization) = &config.authorization {
        headers.push(("authorization", authorization.as_str()));
    }
    // The SDK's call registers the callout so its answer reaches the root context.
    proxy_wasm::hostcalls::dispatch_http_call(
        &config.cluster,
        headers,
        Some(body),
        vec![],
        Duration::from_millis(u64::from(config.timeout_ms)),
    )
    .ok()
}

/// The status of the callout whose answer is being delivered, when it has one.
pub fn callout_status() -> Option<u16> {
    host::header(MapType::HttpCallResponseHeaders, ":status")
        .and_then(|s| s.trim().parse::<u16>().ok())
}
