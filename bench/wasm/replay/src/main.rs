//! Replays the benchmark's exchanges through tokenmeter's core, the way the filter glue
//! (`src/filter/mod.rs`) drives it, and prints the time per exchange for each kind.
//!
//! Host calls are left out (headers come from a table, properties from a map), so this is
//! the filter's own work: natively under `valgrind --tool=callgrind` it shows where the
//! instructions go, and its wasm32-wasip1 build under Node shows the time inside V8.
//!
//! Usage: replay [KIND] [EXCHANGES]   (KIND: json, sse-usage, sse-injected, sse-estimated, all)

use std::collections::HashMap;

use tokenmeter::cardinality::{Cardinality, LocalRegistry};
use tokenmeter::config::Config;
use tokenmeter::exchange::{Exchange, Host};

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

struct Properties;

impl Host for Properties {
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        match path.join(".").as_str() {
            "xds.route_name" => Some(b"llm-default".to_vec()),
            "xds.cluster_name" => Some(b"llm_upstream".to_vec()),
            _ => None,
        }
    }
}

/// What one VM keeps between requests.
struct Vm {
    config: Config,
    cardinality: Cardinality,
    /// Stands in for the glue's metric store (ids by series name).
    ids: HashMap<String, u32>,
}

fn exchange(vm: &mut Vm, kind: Kind, request: &[u8], response: &[u8]) -> u64 {
    let config = &vm.config;
    let req_headers = |name: &str| match name {
        "content-type" => Some("application/json".to_string()),
        "x-bench-reply" => Some(kind.reply().header_value().to_string()),
        _ => None,
    };
    let Some(mut ex) = Exchange::start(config, "POST", traffic::PATH, req_headers, &Properties, 0)
    else {
        return 0;
    };
    ex.on_request_body(request);
    if ex.holds_request_body() {
        let _ = ex.request_complete(config);
    }
    let content_type = kind.reply().content_type();
    let resp_headers = |name: &str| match name {
        "content-type" => Some(content_type.to_string()),
        _ => None,
    };
    ex.on_response_headers(config, Some(200), resp_headers);
    let mut out = 0;
    if ex.wants_response_body() {
        if let Some(edited) = ex.on_response_body(config, response, 1) {
            out += edited.len();
        }
    }
    if let Some(rest) = ex.on_response_end(config) {
        out += rest.len();
    }
    let Some(settlement) = ex.settle(config, &Properties, &mut vm.cardinality, 2) else {
        return 0;
    };
    let mut sum = 0;
    for p in tokenmeter::metrics::points(config, &settlement) {
        let next = vm.ids.len() as u32;
        sum += u64::from(*vm.ids.entry(p.name).or_insert(next)) + p.value;
    }
    sum + out as u64
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
    let config = Config::parse(CONFIG.as_bytes()).expect("the example configuration is valid");
    let mut vm = Vm {
        cardinality: Cardinality::new(&config, Box::new(LocalRegistry::default())),
        config,
        ids: HashMap::new(),
    };
    for kind in kinds {
        let request = kind.request_body();
        let response = kind.reply().body();
        // Warm up: the tokenizer's tables, the series ids, the engine's optimising tier.
        let mut check = 0;
        for _ in 0..n.div_ceil(10) {
            check += exchange(&mut vm, kind, request.as_bytes(), response.as_bytes());
        }
        let start = cpu_seconds();
        for _ in 0..n {
            check += exchange(&mut vm, kind, request.as_bytes(), response.as_bytes());
        }
        let us = (cpu_seconds() - start) * 1e6 / f64::from(n);
        println!(
            "{{\"kind\":\"{}\",\"exchanges\":{n},\"us_per_exchange\":{us:.2},\"check\":{check}}}",
            kind.name()
        );
    }
}
