//! What a host keeps for one VM (and what its VMs share): headers, buffers, properties,
//! logs, the clock, metric ids, callouts and the stream records tests inspect.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::abi::{LogLevel, MetricType};
use super::metrics::Registry;

/// A header map in order, as Envoy keeps it: lower-case keys, pseudo-headers first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Vec<u8>)>);

impl Headers {
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// Adds a header (the key is lower-cased, as Envoy stores it).
    pub fn with(mut self, key: &str, value: &str) -> Headers {
        self.add(key, value.as_bytes());
        self
    }

    /// Adds a header whose value need not be UTF-8.
    pub fn with_raw(mut self, key: &str, value: &[u8]) -> Headers {
        self.add(key, value);
        self
    }

    /// Replaces every value of `key` with one (added if absent).
    pub fn set(&mut self, key: &str, value: &[u8]) {
        let key = key.to_ascii_lowercase();
        match self.0.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                self.0[i].1 = value.to_vec();
                let mut seen = false;
                self.0.retain(|(k, _)| {
                    if *k != key {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => self.add(&key, value),
        }
    }

    pub fn add(&mut self, key: &str, value: &[u8]) {
        self.0.push((key.to_ascii_lowercase(), value.to_vec()));
    }

    pub fn remove(&mut self, key: &str) {
        let key = key.to_ascii_lowercase();
        self.0.retain(|(k, _)| *k != key);
    }

    /// The first value of `key`.
    pub fn get_raw(&self, key: &str) -> Option<&[u8]> {
        let key = key.to_ascii_lowercase();
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_raw(key).map(|v| std::str::from_utf8(v).unwrap())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The proxy-wasm serialization: the pair count, each key and value size (all u32 LE),
    /// then each key and value followed by a NUL byte.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    /// Reads the proxy-wasm serialization; `None` when it is malformed.
    pub fn deserialize(bytes: &[u8]) -> Option<Headers> {
        if bytes.is_empty() {
            return Some(Headers::new());
        }
        let word = |at: usize| -> Option<usize> {
            let b = bytes.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let count = word(0)?;
        let mut sizes = Vec::with_capacity(count);
        for i in 0..count {
            sizes.push((word(4 + 8 * i)?, word(8 + 8 * i)?));
        }
        let mut at = 4 + 8 * count;
        let mut out = Headers::new();
        for (ks, vs) in sizes {
            let key = bytes.get(at..at + ks)?;
            if bytes.get(at + ks) != Some(&0) {
                return None;
            }
            at += ks + 1;
            let value = bytes.get(at..at + vs)?;
            if bytes.get(at + vs) != Some(&0) {
                return None;
            }
            at += vs + 1;
            out.0
                .push((String::from_utf8(key.to_vec()).ok()?, value.to_vec()));
        }
        (at == bytes.len()).then_some(out)
    }
}

/// A log line and the context that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub context: u32,
    pub level: LogLevel,
    pub message: String,
}

/// An HTTP callout the guest dispatched.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub token: u32,
    pub context: u32,
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout_ms: u32,
}

/// A callout's response, readable while `proxy_on_http_call_response` runs.
#[derive(Debug, Clone, Default)]
pub struct CalloutResponse {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

/// A local reply the guest asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Headers,
    pub grpc_status: i32,
}

/// Per HTTP context: the maps and buffers the guest can reach, and what it did.
#[derive(Debug, Default)]
pub struct StreamState {
    pub request_headers: Option<Headers>,
    pub request_trailers: Option<Headers>,
    pub response_headers: Option<Headers>,
    pub response_trailers: Option<Headers>,
    /// The body buffer, present only while a body callback runs.
    pub request_body: Option<Vec<u8>>,
    pub response_body: Option<Vec<u8>>,
    /// Set once the map went on to the next hop: edits after that change nothing.
    pub request_headers_sent: bool,
    pub response_headers_sent: bool,
    /// Edits the guest made to a map that had already gone on (they have no effect).
    pub late_edits: Vec<String>,
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    pub local_response: Option<LocalResponse>,
    /// `proxy_continue_stream` / `proxy_close_stream` calls, by stream type.
    pub continued: Vec<u32>,
    pub closed: Vec<u32>,
}

/// A data store every VM of a host shares (`proxy_{get,set}_shared_data`).
#[derive(Debug, Default)]
pub struct SharedData {
    pub entries: HashMap<String, (Vec<u8>, u32)>,
}

/// Whose behaviour the test host copies where proxy-wasm hosts differ. Each is a model
/// written from behaviour observed in that host, not the host itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Manners {
    /// Envoy's, which follow the ABI specification.
    #[default]
    Envoy,
    /// ngx_wasm_module's (Kong; observed with nginx 1.27.4): `proxy_set_buffer_bytes`
    /// keeps only as many of the new bytes as it replaces; no `xds.*`,
    /// `response.code_details` or `plugin_vm_id`; only declared `ngx.*` variables and
    /// `wasmx.*` can be set; metric names past `max_metric_name_length` (256 with the
    /// `pw:NAME:` prefix) trap, and so do shared-data calls without an `shm_kv` zone;
    /// histograms cannot be read back.
    Ngx,
}

impl Manners {
    /// The manners tests run under: `TOKENMETER_TEST_HOST=ngx` runs the suites as
    /// ngx_wasm_module would host the filter; Envoy's otherwise.
    pub fn from_env() -> Manners {
        match std::env::var("TOKENMETER_TEST_HOST").as_deref() {
            Ok("ngx") => Manners::Ngx,
            Ok("envoy") | Ok("") | Err(_) => Manners::Envoy,
            Ok(other) => panic!("TOKENMETER_TEST_HOST={other:?}: use envoy or ngx"),
        }
    }
}

/// The parts of a host its VMs share, like Envoy's workers.
#[derive(Debug, Clone)]
pub struct Shared {
    pub manners: Manners,
    /// ngx_wasm_module: whether an `shm_kv` zone is declared.
    pub kv_zone: bool,
    /// ngx_wasm_module: `metrics { max_metric_name_length }`.
    pub ngx_metric_name_length: usize,
    /// ngx_wasm_module: the nginx variables the configuration declares (settable).
    pub ngx_variables: Vec<String>,
    pub metrics: Arc<Mutex<Registry>>,
    pub data: Arc<Mutex<SharedData>>,
    /// Virtual time in nanoseconds since the epoch.
    pub clock: Arc<AtomicU64>,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }
}

/// The store data of one VM.
pub struct HostState {
    pub shared: Shared,
    /// The guest's memory and allocator, once instantiated.
    pub memory: Option<wasmtime::Memory>,
    pub allocate: Option<wasmtime::TypedFunc<u32, u32>>,
    /// The context whose callback is running (or the effective one the guest set).
    pub current_context: u32,
    pub root_context: u32,
    /// Contexts the host created and has not deleted.
    pub contexts: Vec<u32>,
    pub log_level: LogLevel,
    pub logs: Vec<LogLine>,
    /// WASI stdout and stderr.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub vm_configuration: Vec<u8>,
    pub plugin_configuration: Vec<u8>,
    /// Only during `proxy_on_configure`, as in Envoy.
    pub configuring: bool,
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    pub streams: HashMap<u32, StreamState>,
    /// This VM's metric ids, Envoy's way: the type in the low two bits.
    pub metric_ids: HashMap<u32, (MetricType, String)>,
    pub next_metric_seq: u32,
    /// Every `proxy_define_metric` call, in order.
    pub defines: Vec<(MetricType, String)>,
    /// Refused metric operations, as (call, status).
    pub refused_metric_ops: Vec<(String, u32)>,
    pub tick_period_ms: u32,
    pub http_calls: Vec<HttpCall>,
    pub next_token: u32,
    pub callout_response: Option<CalloutResponse>,
    pub done_calls: u32,
    pub rng: u64,
    /// Properties the host refused to set (ngx_wasm_module's manners).
    pub refused_properties: Vec<String>,
    /// Every property path the guest asked for, dotted.
    pub asked_properties: Vec<String>,
}

impl HostState {
    pub fn new(shared: Shared, vm_configuration: Vec<u8>, plugin_configuration: Vec<u8>) -> Self {
        HostState {
            shared,
            memory: None,
            allocate: None,
            current_context: 0,
            root_context: 0,
            contexts: Vec::new(),
            log_level: LogLevel::Info,
            logs: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            vm_configuration,
            plugin_configuration,
            configuring: false,
            properties: HashMap::new(),
            streams: HashMap::new(),
            metric_ids: HashMap::new(),
            next_metric_seq: 0,
            defines: Vec::new(),
            refused_metric_ops: Vec::new(),
            tick_period_ms: 0,
            http_calls: Vec::new(),
            next_token: 1,
            callout_response: None,
            done_calls: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            refused_properties: Vec::new(),
            asked_properties: Vec::new(),
        }
    }

    pub fn stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.current_context)
    }

    pub fn stream_ref(&self) -> Option<&StreamState> {
        self.streams.get(&self.current_context)
    }

    /// A property: the current stream's first, then the VM's.
    pub fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        self.streams
            .get(&self.current_context)
            .and_then(|s| s.properties.get(path))
            .or_else(|| self.properties.get(path))
            .cloned()
    }

    /// Define calls per name, for "defined once" assertions.
    pub fn define_counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (_, name) in &self.defines {
            *out.entry(name.clone()).or_insert(0) += 1;
        }
        out
    }

    /// Deterministic bytes for `random_get` (xorshift64*).
    pub fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let mut x = self.rng;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.rng = x;
            out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(n);
        out
    }
}
