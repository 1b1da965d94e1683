//! Shared set-up of the end-to-end tests: the example upstream and the real Envoy running
//! the built filter, with the bootstrap `tokenmeter envoy-config` renders.
#![allow(dead_code)]

use std::time::{Duration, Instant};
use tokenmeter_cli::bootstrap::{self, BootstrapSpec};
use tokenmeter_core::config::Config;
use tokenmeter_testkit::client::{self, Reply};
use tokenmeter_testkit::envoy::{self, Envoy};
use tokenmeter_testkit::prom::Exposition;
use tokenmeter_testkit::upstream::Upstream;

pub struct Gateway {
    pub envoy: Envoy,
    pub upstream: Upstream,
}

pub fn spec(filter_config: &str, upstream: &Upstream) -> BootstrapSpec {
    BootstrapSpec {
        filter_config: filter_config.to_string(),
        wasm_path: envoy::wasm_path().display().to_string(),
        listen_host: "127.0.0.1".into(),
        listen_port: 0,
        admin_port: 0,
        upstream_host: upstream.addr.ip().to_string(),
        upstream_port: upstream.addr.port(),
        upstream_tls: false,
        node_id: Some("gw-test-1".into()),
        region: Some("westeurope".into()),
        access_log: None,
        stats_flush_ms: Some(200),
        collectors: Vec::new(),
    }
}

impl Gateway {
    /// Envoy (2 workers) with the filter configured by `filter_config`, before a fresh upstream.
    pub fn start(filter_config: &str) -> Gateway {
        Self::start_with(filter_config, 2)
    }

    pub fn start_with(filter_config: &str, concurrency: usize) -> Gateway {
        let upstream = Upstream::start().expect("upstream");
        let config = Config::parse(filter_config.as_bytes()).expect("test config must be valid");
        let yaml = bootstrap::render(&spec(filter_config, &upstream), &config);
        let envoy = Envoy::start(&yaml, concurrency).expect("envoy starts");
        Gateway { envoy, upstream }
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &serde_json::Value) -> Reply {
        self.post_bytes(path, headers, body.to_string().as_bytes())
    }

    pub fn post_bytes(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        client::post(&self.envoy.url(path), headers, body).expect("request through envoy")
    }

    /// The same request straight to the upstream, bypassing Envoy.
    pub fn post_direct(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        client::post(
            &format!("http://{}{path}", self.upstream.addr),
            headers,
            body,
        )
        .expect("request to upstream")
    }

    pub fn metrics(&self) -> Exposition {
        self.envoy.prometheus().expect("stats")
    }
}

/// prompt, completion and total tokens as the upstream reported them in a JSON body.
pub fn reported(reply: &Reply) -> (f64, f64, f64) {
    let u = &reply.json()["usage"];
    let n = |a: &str, b: &str| u[a].as_u64().or(u[b].as_u64()).unwrap_or(0) as f64;
    (
        n("prompt_tokens", "input_tokens"),
        n("completion_tokens", "output_tokens"),
        n("total_tokens", "total_tokens"),
    )
}

pub fn chat(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": text}]})
}

/// Settlement runs when Envoy finishes a stream, which can be a moment after the client has
/// the last byte, and histograms appear at the next stats flush: polls the stats until
/// `check` holds, or returns the last view after 10 s (the caller's assertions then fail
/// with it).
pub fn eventually(envoy: &Envoy, check: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = envoy.prometheus().expect("stats");
        if check(&m) || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
