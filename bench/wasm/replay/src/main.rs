//! Replays the benchmark's exchanges through tokenmeter's core driver, the very code the
//! filter runs per callback, and prints the time per exchange for each kind.
//!
//! Host calls are left out (headers come from a table, properties from a map, bodies from
//! memory), so this is the filter's own work: natively under `valgrind --tool=callgrind` it shows where the
//! instructions go, and its wasm32-wasip1 build under Node shows the time inside V8.
//!
//! Usage: replay [KIND] [EXCHANGES] [rollups]
//!
//! KIND: json, sse-usage, sse-injected, sse-estimated, trickle-50, trickle-300,
//! trickle-2000, trickle-300-estimated, or all. A trickled stream is delivered one event per
//! callback, as the gateway receives it; streams of more than 60 events get proportionally
//! fewer exchanges. `rollups` adds a `collect` block that samples no record and keeps usage
//! rollups, to measure what keeping them costs per exchange.

use std::collections::HashMap;

use tokenmeter_core::config::Config;
use tokenmeter_core::exchange::driver::{Driver, Plugin};
use tokenmeter_core::exchange::host::{self, Properties, Side};
use tokenmeter_core::series::cardinality::LocalRegistry;
use tokenmeter_core::series::metrics::Point;

#[path = "../../../src/traffic.rs"]
#[allow(dead_code)]
mod traffic;

use traffic::Kind;

const CONFIG: &str = include_str!("../../../../examples/filter-config.json");

/// Seconds of CPU time this process has used: under a loaded machine, far steadier than the
/// wall clock. (Natively, callgrind's instruction counts are the steady measure.)
#[cfg(target_os = "wasi")]
fn cpu_seconds() -> f64 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn clock_time_get(id: u32, precision: u64, time: *mut u64) -> u16;
    }
    const PROCESS_CPUTIME: u32 = 2;
    let mut nanos = 0u64;
    // SAFETY: WASI writes one u64 through the pointer it is given.
    let status = unsafe { clock_time_get(PROCESS_CPUTIME, 1, &mut nanos) };
    assert_eq!(status, 0, "the WASI host has no process CPU clock");
    nanos as f64 / 1e9
}

#[cfg(not(target_os = "wasi"))]
fn cpu_seconds() -> f64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// The host of one exchange: fixed headers and properties, the bodies in memory.
struct Replay<'a> {
    kind: Kind,
    request: &'a [u8],
    response: &'a [u8],
    /// Stands in for the glue's metric store (ids by series name).
    ids: &'a mut HashMap<String, u32>,
    /// Folds everything the exchange produced into one number, so none of it is optimised away.
    check: u64,
}

impl Properties for Replay<'_> {
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        match path.join(".").as_str() {
            "xds.route_name" => Some(b"llm-default".to_vec()),
            "xds.cluster_name" => Some(b"llm_upstream".to_vec()),
            _ => None,
        }
    }
}

impl host::Host for Replay<'_> {
    fn now_ms(&self) -> u64 {
        1
    }

    fn header(&self, side: Side, name: &str) -> Option<String> {
        match (side, name) {
            (Side::Request, ":method") => Some("POST".to_string()),
            (Side::Request, ":path") => Some(traffic::PATH.to_string()),
            (Side::Request, "content-type") => Some("application/json".to_string()),
            (Side::Request, "x-bench-reply") => Some(self.kind.reply_value().to_string()),
            (Side::Response, ":status") => Some("200".to_string()),
            (Side::Response, "content-type") => Some(self.kind.content_type().to_string()),
            _ => None,
        }
    }

    fn set_header(&mut self, _side: Side, _name: &str, _value: &str) {}

    fn remove_header(&mut self, _side: Side, _name: &str) {}

    fn body(&self, side: Side, start: usize, len: usize) -> Option<Vec<u8>> {
        let b = match side {
            Side::Request => self.request,
            Side::Response => self.response,
        };
        b.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }

    fn replace_body(&mut self, _side: Side, _len: usize, bytes: &[u8]) -> bool {
        self.check += bytes.len() as u64;
        true
    }

    fn set_property(&mut self, _name: &str, value: &[u8]) {
        self.check += value.len() as u64;
    }

    fn count(&mut self, points: &[Point]) {
        for p in points {
            let next = self.ids.len() as u32;
            let id = match self.ids.get(&p.name) {
                Some(id) => *id,
                None => *self.ids.entry(p.name.clone()).or_insert(next),
            };
            self.check += u64::from(id) + p.value;
        }
    }

    fn collect(&mut self, record: String) {
        self.check += record.len() as u64;
    }
}

/// What one VM keeps between requests.
struct Vm {
    plugin: Plugin,
    ids: HashMap<String, u32>,
}

/// One exchange, callback by callback: the request body in one call, the response in one
/// call per piece.
fn exchange(vm: &mut Vm, kind: Kind, request: &[u8], response: &[Vec<u8>]) -> u64 {
    let mut host = Replay {
        kind,
        request,
        response: &[],
        ids: &mut vm.ids,
        check: 0,
    };
    let plugin = &vm.plugin;
    let mut d = Driver::new();
    d.on_request_headers(plugin, &mut host, false);
    d.on_request_body(plugin, &mut host, request.len(), true);
    d.on_response_headers(plugin, &mut host, false);
    for (i, piece) in response.iter().enumerate() {
        host.response = piece;
        d.on_response_body(plugin, &mut host, piece.len(), i + 1 == response.len());
    }
    d.on_log(plugin, &mut host);
    host.check
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "all".to_string());
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let kinds: Vec<Kind> = if which == "all" {
        Kind::ALL.to_vec()
    } else {
        Kind::parse(&which).into_iter().collect()
    };
    let mut text: serde_json::Value =
        serde_json::from_str(CONFIG).expect("the example configuration is JSON");
    if args.next().as_deref() == Some("rollups") {
        text["collect"] = serde_json::json!({"cluster": "tokenmeter_collector",
            "sample_rate": 0, "rollup_interval_ms": 1000});
    }
    let config =
        Config::parse(text.to_string().as_bytes()).expect("the example configuration is valid");
    let mut vm = Vm {
        plugin: Plugin::new(config, Box::new(LocalRegistry::default())),
        ids: HashMap::new(),
    };
    for kind in kinds {
        // Long streams get fewer exchanges, so that every kind takes about as long. No
        // floor: callgrind's marginal count needs twice the exchanges asked to give more.
        let n = (n as usize * 60 / kind.events().max(60)).max(1) as u32;
        let request = kind.request_body();
        let response: Vec<Vec<u8>> = kind
            .response_pieces()
            .into_iter()
            .map(String::into_bytes)
            .collect();
        // Warm up: the tokenizer's tables, the series ids, the engine's optimising tier.
        let mut check = 0;
        for _ in 0..n.div_ceil(10) {
            check += exchange(&mut vm, kind, request.as_bytes(), &response);
        }
        let start = cpu_seconds();
        for _ in 0..n {
            check += exchange(&mut vm, kind, request.as_bytes(), &response);
        }
        let us = (cpu_seconds() - start) * 1e6 / f64::from(n);
        println!(
            "{{\"kind\":\"{}\",\"exchanges\":{n},\"us_per_exchange\":{us:.2},\"check\":{check}}}",
            kind.name()
        );
    }
}
