//! The same exchange through the core's driver compiled natively, callback by callback as
//! the test host delivers it to the filter: the metrics the filter reports in wasm must be
//! exactly these.
//!
//! Only the host is modelled here (header maps, body buffers that grow while a callback
//! pauses, properties, the points recorded); every decision is the driver's, the very code
//! the filter runs.

use std::collections::{BTreeMap, HashMap};

use tokenmeter_core::config::host::{HostAnswers, HostSettings};
use tokenmeter_core::config::Config;
use tokenmeter_core::exchange::driver::{Action, Driver, Plugin};
use tokenmeter_core::exchange::host::{self, Properties, Side};
use tokenmeter_core::series::cardinality::LocalRegistry;
use tokenmeter_core::series::metrics::Point;

use super::exchange::{chunks, Call, Ending, Reply};
use super::state::{Headers, Manners};

/// A native model of one VM: the driver's plugin state, properties and the points recorded.
pub struct NativeVm {
    plugin: Plugin,
    props: HashMap<Vec<String>, Vec<u8>>,
    /// Metric name → value, summed over exchanges.
    pub metrics: BTreeMap<String, i64>,
    /// The access-log summary each exchange set, in order.
    pub summaries: Vec<Vec<u8>>,
    /// The request body as it went upstream, per exchange.
    pub upstream_bodies: Vec<Vec<u8>>,
}

/// The host for one stream.
struct NativeHost<'a> {
    props: &'a HashMap<Vec<String>, Vec<u8>>,
    /// Where the host keeps each property (the filter's glue asks the same way).
    settings: &'a HostSettings,
    request_headers: &'a Headers,
    response_headers: Option<&'a Headers>,
    /// The host's current body buffers: the last chunk, or all that is held while paused.
    request_body: Vec<u8>,
    response_body: Vec<u8>,
    /// What went upstream of the request body.
    upstream: Vec<u8>,
    metrics: &'a mut BTreeMap<String, i64>,
    summary: Option<Vec<u8>>,
}

impl Properties for NativeHost<'_> {
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        self.settings.read(path, |p| self.props.get(p).cloned())
    }
}

impl host::Host for NativeHost<'_> {
    fn now_ms(&self) -> u64 {
        0
    }

    fn header(&self, side: Side, name: &str) -> Option<String> {
        let map = match side {
            Side::Request => Some(self.request_headers),
            Side::Response => self.response_headers,
        }?;
        map.get_raw(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn set_header(&mut self, _side: Side, _name: &str, _value: &str) {}

    fn remove_header(&mut self, _side: Side, _name: &str) {}

    fn body(&self, side: Side, start: usize, len: usize) -> Option<Vec<u8>> {
        let b = match side {
            Side::Request => &self.request_body,
            Side::Response => &self.response_body,
        };
        let end = start.checked_add(len)?.min(b.len());
        b.get(start..end).map(<[u8]>::to_vec)
    }

    fn replace_body(&mut self, side: Side, len: usize, bytes: &[u8]) -> bool {
        let b = match side {
            Side::Request => &mut self.request_body,
            Side::Response => &mut self.response_body,
        };
        if len != b.len() {
            return false;
        }
        *b = bytes.to_vec();
        true
    }

    fn set_property(&mut self, _name: &str, value: &[u8]) {
        self.summary = Some(value.to_vec());
    }

    fn count(&mut self, points: &[Point]) {
        for p in points {
            *self.metrics.entry(p.name.clone()).or_insert(0) += p.value as i64;
        }
    }

    fn collect(&mut self, _record: String) {}
}

/// Body callbacks the way the test host delivers a body and its ending.
fn body_calls<'b>(body: &'b [u8], cuts: &[usize], ending: &Ending) -> Vec<(&'b [u8], bool)> {
    let parts = chunks(body, cuts);
    let n = parts.len();
    let mut calls: Vec<(&[u8], bool)> = parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, *ending == Ending::OnLastChunk && i + 1 == n))
        .collect();
    if *ending == Ending::EmptyEnd || (*ending == Ending::OnLastChunk && n == 0) {
        calls.push((&[], true));
    }
    calls
}

impl NativeVm {
    pub fn new(config: &str) -> NativeVm {
        let mut config = Config::parse(config.as_bytes()).expect("a valid configuration");
        // Settled for the host the suite models, as the filter settles it at start-up.
        let limit = config.host.resolve(&HostAnswers {
            vm_id: Manners::from_env() == Manners::Envoy,
        });
        tokenmeter_core::series::metrics::settle_name_cap(&mut config, limit)
            .expect("names that fit");
        NativeVm {
            plugin: Plugin::new(config, Box::new(LocalRegistry::default())),
            props: HashMap::new(),
            metrics: BTreeMap::new(),
            summaries: Vec::new(),
            upstream_bodies: Vec::new(),
        }
    }

    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.props
            .insert(path.iter().map(|s| s.to_string()).collect(), value.to_vec());
    }

    /// Runs the exchange through the driver the way `exchange::run` delivers it to the
    /// filter: request headers, body chunks (buffered while paused) and ending, then the
    /// reply unless the request was reset, then `on_log`.
    pub fn run(&mut self, call: &Call, reply: &Reply) {
        let mut host = NativeHost {
            props: &self.props,
            settings: &self.plugin.config.host,
            request_headers: &call.headers,
            response_headers: None,
            request_body: Vec::new(),
            response_body: Vec::new(),
            upstream: Vec::new(),
            metrics: &mut self.metrics,
            summary: None,
        };
        let plugin = &self.plugin;
        let mut d = Driver::new();
        let request_ends_at_headers = call.body.is_empty() && call.ending != Ending::Reset;
        d.on_request_headers(plugin, &mut host, request_ends_at_headers);
        if !request_ends_at_headers {
            let mut paused = false;
            for (chunk, eos) in body_calls(&call.body, &call.cuts, &call.ending) {
                if !paused {
                    host.request_body.clear();
                }
                host.request_body.extend_from_slice(chunk);
                let size = host.request_body.len();
                paused = d.on_request_body(plugin, &mut host, size, eos) == Action::Pause;
                if !paused {
                    let sent = std::mem::take(&mut host.request_body);
                    host.upstream.extend(sent);
                }
            }
            if let Ending::Trailers(_) = call.ending {
                d.on_request_trailers();
                let sent = std::mem::take(&mut host.request_body);
                host.upstream.extend(sent);
            }
        }
        if call.ending != Ending::Reset {
            host.response_headers = Some(&reply.headers);
            let ends_at_headers = reply.body.is_empty()
                && matches!(reply.ending, Ending::EmptyEnd | Ending::OnLastChunk);
            d.on_response_headers(plugin, &mut host, ends_at_headers);
            if !ends_at_headers {
                for (chunk, eos) in body_calls(&reply.body, &reply.cuts, &reply.ending) {
                    host.response_body = chunk.to_vec();
                    d.on_response_body(plugin, &mut host, chunk.len(), eos);
                }
                if let Ending::Trailers(_) = reply.ending {
                    d.on_response_trailers(plugin, &mut host);
                }
            }
        }
        d.on_log(plugin, &mut host);
        let (summary, upstream) = (host.summary.take(), std::mem::take(&mut host.upstream));
        self.summaries.extend(summary);
        self.upstream_bodies.push(upstream);
    }
}

/// The host's counters as a name → value map, for comparison with [`NativeVm::metrics`].
pub fn counters(m: &super::metrics::Metrics) -> BTreeMap<String, i64> {
    m.0.stats
        .iter()
        .map(|(name, s)| (name.clone(), s.value))
        .collect()
}
