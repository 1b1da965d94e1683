//! The same exchange through the core compiled natively, callback by callback as the filter
//! glue drives it: the metrics the filter reports in wasm must be exactly these.

use std::collections::{BTreeMap, HashMap};

use tokenmeter::cardinality::{Cardinality, LocalRegistry};
use tokenmeter::config::Config;
use tokenmeter::exchange::{Exchange, Host};

use super::exchange::{chunks, Call, Ending, Reply};
use super::state::Headers;

struct Props(HashMap<Vec<String>, Vec<u8>>);

impl Host for Props {
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        self.0.get(path).cloned()
    }
}

fn lookup(h: &Headers) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| {
        h.get_raw(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A native model of one VM: configuration, cardinality cache and the points recorded.
pub struct NativeVm {
    pub config: Config,
    cardinality: Cardinality,
    props: Props,
    /// Metric name → value, summed over exchanges.
    pub metrics: BTreeMap<String, i64>,
}

impl NativeVm {
    pub fn new(config: &str) -> NativeVm {
        let config = Config::parse(config.as_bytes()).expect("a valid configuration");
        let cardinality = Cardinality::new(&config, Box::new(LocalRegistry::default()));
        NativeVm {
            config,
            cardinality,
            props: Props(HashMap::new()),
            metrics: BTreeMap::new(),
        }
    }

    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.props
            .0
            .insert(path.iter().map(|s| s.to_string()).collect(), value.to_vec());
    }

    fn settle(&mut self, ex: &mut Exchange) {
        if let Some(s) = ex.settle(&self.config, &self.props, &mut self.cardinality, 0) {
            for p in tokenmeter::metrics::points(&self.config, &s) {
                *self.metrics.entry(p.name).or_insert(0) += p.value as i64;
            }
        }
    }

    /// Runs the exchange the way `exchange::run` delivers it to the filter.
    pub fn run(&mut self, call: &Call, reply: &Reply) {
        let req = lookup(&call.headers);
        let (Some(method), Some(path)) = (req(":method"), req(":path")) else {
            return;
        };
        let Some(mut ex) = Exchange::start(&self.config, &method, &path, &req, &self.props, 0)
        else {
            return;
        };
        let request_ends_at_headers = call.body.is_empty() && call.ending != Ending::Reset;
        let mut holding = ex.holds_request_body() && !request_ends_at_headers;
        let mut held = Vec::new();
        if !request_ends_at_headers {
            let parts = chunks(&call.body, &call.cuts);
            let n = parts.len();
            let mut calls: Vec<(&[u8], bool)> = parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| (p, call.ending == Ending::OnLastChunk && i + 1 == n))
                .collect();
            if call.ending == Ending::EmptyEnd || (call.ending == Ending::OnLastChunk && n == 0) {
                calls.push((&[], true));
            }
            for (chunk, eos) in calls {
                if !holding {
                    if !chunk.is_empty() {
                        ex.on_request_body(chunk);
                    }
                    continue;
                }
                held.extend_from_slice(chunk);
                ex.on_request_body(chunk);
                if !eos && held.len() <= self.config.held_bytes() {
                    continue;
                }
                holding = false;
                if eos {
                    ex.request_complete(&self.config);
                } else {
                    ex.release_request();
                }
            }
        }
        if call.ending != Ending::Reset {
            let resp = lookup(&reply.headers);
            let status = resp(":status").and_then(|s| s.parse::<u16>().ok());
            ex.on_response_headers(&self.config, status, &resp);
            let ends_at_headers = reply.body.is_empty()
                && matches!(reply.ending, Ending::EmptyEnd | Ending::OnLastChunk);
            if ends_at_headers {
                self.settle(&mut ex);
            } else {
                let parts = chunks(&reply.body, &reply.cuts);
                let n = parts.len();
                for (i, p) in parts.into_iter().enumerate() {
                    if ex.wants_response_body() {
                        ex.on_response_body(&self.config, p, 0);
                    }
                    if reply.ending == Ending::OnLastChunk && i + 1 == n {
                        ex.on_response_end(&self.config);
                        self.settle(&mut ex);
                    }
                }
                match &reply.ending {
                    Ending::EmptyEnd => {
                        ex.on_response_end(&self.config);
                        self.settle(&mut ex);
                    }
                    Ending::Trailers(_) => self.settle(&mut ex),
                    Ending::OnLastChunk | Ending::Reset => {}
                }
            }
        }
        // on_log
        self.settle(&mut ex);
    }
}

/// The host's counters as a name → value map, for comparison with [`NativeVm::metrics`].
pub fn counters(m: &super::metrics::Metrics) -> BTreeMap<String, i64> {
    m.0.stats
        .iter()
        .map(|(name, s)| (name.clone(), s.value))
        .collect()
}
