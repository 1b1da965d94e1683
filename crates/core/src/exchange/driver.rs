//! The per-request driver: host callbacks in, actions out.
//!
//! This is the one place that decides, callback by callback, when a request body is held,
//! released or rewritten, when a response chunk is replaced, how each way a stream can end
//! (end of stream, trailers, reset) settles the exchange exactly once, and in which order a
//! settlement is recorded: metric points, then the sampled record, then the access-log
//! property. The proxy-wasm filter, the test host's native reference and the benchmark's
//! replay all drive requests through it; each supplies a [`Host`] (see [`super::host`]).
//!
//! The host model is proxy-wasm's, as Envoy implements it: headers go on when their
//! callback returns, a body callback that returns [`Action::Pause`] makes the host buffer,
//! so the next callback's `body_size` counts everything held so far, and a callback reads
//! and replaces bytes of the host's current buffer.

use std::cell::RefCell;
use std::rc::Rc;

use super::host::{Host, Side};
use super::{access_log, handoff, Exchange, Injection};
use crate::body::budget::Budget;
use crate::config::Config;
use crate::series::cardinality::{Cardinality, Registry};
use crate::series::metrics;
use crate::series::rollup::Rollups;

/// What a callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Hold the body (request side only, while it may still be rewritten).
    Pause,
}

/// What one VM keeps for all of its requests: the validated configuration and the
/// cardinality cache in front of the registry the VMs share.
pub struct Plugin {
    pub config: Config,
    cardinality: RefCell<Cardinality>,
    /// The memory all of this VM's requests may keep (`max_vm_bytes`).
    pub budget: Rc<Budget>,
    /// Usage rollups of every settled request, when the collector takes them.
    pub rollups: Option<RefCell<Rollups>>,
}

impl Plugin {
    pub fn new(config: Config, registry: Box<dyn Registry>) -> Plugin {
        let cardinality = RefCell::new(Cardinality::new(&config, registry));
        let budget = Budget::new(config.max_vm_bytes);
        let rollups = config
            .collect
            .as_ref()
            .and_then(|c| c.rollups.as_ref())
            .map(|r| {
                let labels = config.label_names().map(str::to_string).collect();
                RefCell::new(Rollups::new(
                    String::new(),
                    labels,
                    r.max_rows,
                    r.max_batches,
                ))
            });
        Plugin {
            config,
            cardinality,
            budget,
            rollups,
        }
    }

    /// Names the VM in rollup batch ids: unique per VM start (the glue knows how).
    pub fn name_vm(&self, vm: &str) {
        if let Some(r) = &self.rollups {
            if let Ok(mut r) = r.try_borrow_mut() {
                r.name_vm(vm);
            }
        }
    }
}

/// The property that carries the access-log summary on Envoy (filter state
/// `wasm.tokenmeter`); other hosts take another ([`crate::config::host`]).
pub const SUMMARY_PROPERTY: &str = crate::config::host::ENVOY_SUMMARY_PROPERTY;

/// One request through the callbacks, from request headers to `on_log`.
#[derive(Debug, Default)]
pub struct Driver {
    /// `None` until the request headers show an LLM call, and for any other request.
    exchange: Option<Exchange>,
    /// The request body is being held until it is complete (stream usage injection).
    holding: bool,
    /// How much of it the host holds so far.
    held: usize,
}

impl Driver {
    pub fn new() -> Driver {
        Driver::default()
    }

    /// Whether the request is metered (an LLM call).
    pub fn is_metered(&self) -> bool {
        self.exchange.is_some()
    }

    pub fn on_request_headers(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        end_of_stream: bool,
    ) -> Action {
        let req = |name: &str| host.header(Side::Request, name);
        let (Some(method), Some(path)) = (req(":method"), req(":path")) else {
            return Action::Continue;
        };
        let length = req("content-length").and_then(|v| v.trim().parse::<usize>().ok());
        let config = &plugin.config;
        let now = host.now_ms();
        let Some(mut ex) =
            Exchange::start(config, &plugin.budget, &method, &path, req, &*host, now)
        else {
            return Action::Continue;
        };
        if config.identity_encoding {
            host.set_header(Side::Request, "accept-encoding", "identity");
        }
        // The body may be rewritten, so it is held until complete: only when its length is
        // known and small enough that the host's buffer limit can never refuse it, and the
        // VM's memory budget has room for its copy. proxy-wasm cannot hold headers while
        // reading the body, so they go on now without a length (the host then frames the
        // body itself).
        self.holding = !end_of_stream && ex.hold_request(length, config.held_bytes());
        if self.holding {
            host.remove_header(Side::Request, "content-length");
        }
        self.exchange = Some(ex);
        Action::Continue
    }

    pub fn on_request_body(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        if !self.holding {
            if body_size > 0 {
                if let Some(chunk) = host.body(Side::Request, 0, body_size) {
                    ex.on_request_body(&chunk);
                }
            }
            return Action::Continue;
        }
        // While held, `body_size` is everything received so far: copy only what is new.
        if body_size > self.held {
            if let Some(new) = host.body(Side::Request, self.held, body_size - self.held) {
                ex.on_request_body(&new);
            }
            self.held = body_size;
        }
        let config = &plugin.config;
        if !end_of_stream && body_size <= config.held_bytes() {
            return Action::Pause;
        }
        self.holding = false;
        if !end_of_stream {
            ex.release_request();
            return Action::Continue;
        }
        if let Some(rewritten) = ex.request_complete(config) {
            if !host.replace_body(Side::Request, body_size, &rewritten) {
                ex.injection_failed();
            }
        }
        Action::Continue
    }

    pub fn on_request_trailers(&mut self) -> Action {
        // A body that ends with trailers never reaches end of stream in a body callback:
        // stop holding it, unchanged (what was held is already copied), rather than stall.
        if self.holding {
            self.holding = false;
            if let Some(ex) = self.exchange.as_mut() {
                ex.release_request();
            }
        }
        Action::Continue
    }

    pub fn on_response_headers(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        end_of_stream: bool,
    ) -> Action {
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let resp = |name: &str| host.header(Side::Response, name);
        let status = resp(":status").and_then(|s| s.trim().parse::<u16>().ok());
        let edits = ex.on_response_headers(&plugin.config, status, resp);
        if edits.remove_content_length {
            host.remove_header(Side::Response, "content-length");
        }
        if end_of_stream {
            ex.response_complete();
            self.settle(plugin, host);
        }
        Action::Continue
    }

    pub fn on_response_body(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let config = &plugin.config;
        let mut replacement = None;
        if body_size > 0 && ex.wants_response_body() {
            if let Some(chunk) = host.body(Side::Response, 0, body_size) {
                replacement = ex.on_response_body(config, &chunk, || host.now_ms());
            }
        }
        if end_of_stream {
            if let Some(rest) = ex.on_response_end() {
                let mut out = replacement.unwrap_or_default();
                out.extend_from_slice(&rest);
                replacement = Some(out);
            }
        }
        if let Some(bytes) = replacement {
            host.replace_body(Side::Response, body_size, &bytes);
        }
        if end_of_stream {
            self.settle(plugin, host);
        }
        Action::Continue
    }

    pub fn on_response_trailers(&mut self, plugin: &Plugin, host: &mut impl Host) -> Action {
        if let Some(ex) = self.exchange.as_mut() {
            ex.response_complete();
        }
        self.settle(plugin, host);
        Action::Continue
    }

    /// The stream is done, however it ended (Envoy calls this before its access loggers).
    pub fn on_log(&mut self, plugin: &Plugin, host: &mut impl Host) {
        if self.exchange.is_some() {
            self.settle(plugin, host);
        } else {
            // Access log lines stay valid JSON for requests that are not LLM calls.
            if let Some(name) = plugin.config.host.summary_property() {
                host.set_property(name, b"null");
            }
        }
    }

    /// Settles at most once, on whichever ending the host delivers first.
    fn settle(&mut self, plugin: &Plugin, host: &mut impl Host) {
        let Some(ex) = self.exchange.as_mut() else {
            return;
        };
        if ex.is_settled() {
            return;
        }
        let config = &plugin.config;
        let settlement = match plugin.cardinality.try_borrow_mut() {
            Ok(mut cardinality) => ex.settle(config, &*host, &mut cardinality, host.now_ms()),
            Err(_) => return,
        };
        let Some(mut settlement) = settlement else {
            return;
        };
        host.count(&metrics::points(config, &settlement));
        if let Some(rollups) = &plugin.rollups {
            if let Ok(mut rollups) = rollups.try_borrow_mut() {
                rollups.record(host.now_ms(), &settlement);
            }
        }
        if let Some(record) = settlement.record.take() {
            host.collect(record);
        }
        // The usage this instance asked for and hid, for the instances before it in the
        // chain, which see the response after it (see `handoff`).
        if settlement.streamed
            && ex.injection() == Injection::Injected
            && config.host.shares_stream_properties()
        {
            if let Some(shared) = settlement.usage.as_ref().and_then(handoff::encode) {
                host.set_property(handoff::PROPERTY, shared.as_bytes());
            }
        }
        if let Some(name) = config.host.summary_property() {
            host.set_property(name, access_log::summary(&settlement).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::host::Properties;
    use crate::series::cardinality::LocalRegistry;
    use crate::series::metrics::Point;

    /// A host that keeps what the driver did: header edits, body replacements, points,
    /// records and the summary property.
    #[derive(Default)]
    struct TestHost {
        request_headers: Vec<(&'static str, String)>,
        response_headers: Vec<(&'static str, String)>,
        /// The current body buffers.
        request_body: Vec<u8>,
        response_body: Vec<u8>,
        edits: Vec<String>,
        replaced: Vec<(Side, Vec<u8>)>,
        points: Vec<Point>,
        settlements: usize,
        records: Vec<String>,
        summary: Option<Vec<u8>>,
    }

    impl Properties for TestHost {
        fn property(&self, path: &[String]) -> Option<Vec<u8>> {
            (path == ["xds", "route_name"]).then(|| b"chat-route".to_vec())
        }
    }

    impl Host for TestHost {
        fn now_ms(&self) -> u64 {
            7
        }

        fn header(&self, side: Side, name: &str) -> Option<String> {
            let map = match side {
                Side::Request => &self.request_headers,
                Side::Response => &self.response_headers,
            };
            map.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        }

        fn set_header(&mut self, side: Side, name: &str, value: &str) {
            self.edits.push(format!("{side:?} set {name}: {value}"));
        }

        fn remove_header(&mut self, side: Side, name: &str) {
            self.edits.push(format!("{side:?} remove {name}"));
        }

        fn body(&self, side: Side, start: usize, len: usize) -> Option<Vec<u8>> {
            let b = match side {
                Side::Request => &self.request_body,
                Side::Response => &self.response_body,
            };
            b.get(start..start + len).map(<[u8]>::to_vec)
        }

        fn replace_body(&mut self, side: Side, _len: usize, bytes: &[u8]) -> bool {
            self.replaced.push((side, bytes.to_vec()));
            true
        }

        fn set_property(&mut self, name: &str, value: &[u8]) {
            assert_eq!(name, SUMMARY_PROPERTY);
            self.summary = Some(value.to_vec());
        }

        fn count(&mut self, points: &[Point]) {
            self.settlements += 1;
            self.points.extend_from_slice(points);
        }

        fn collect(&mut self, record: String) {
            self.records.push(record);
        }
    }

    fn plugin(config: &str) -> Plugin {
        let config = Config::parse(config.as_bytes()).unwrap();
        Plugin::new(config, Box::new(LocalRegistry::default()))
    }

    fn chat(body: &str) -> TestHost {
        TestHost {
            request_headers: vec![
                (":method", "POST".into()),
                (":path", "/v1/chat/completions".into()),
                ("content-length", body.len().to_string()),
                ("x-request-id", "r-1".into()),
            ],
            ..TestHost::default()
        }
    }

    const STREAM_REQUEST: &str =
        r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

    const REPLY: &str = r#"{"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":2,"total_tokens":10}}"#;

    /// The sum of a metric family's points, over all its series.
    fn total(h: &TestHost, family: &str) -> u64 {
        h.points
            .iter()
            .filter(|p| p.name.starts_with(family))
            .map(|p| p.value)
            .sum()
    }

    #[test]
    fn a_streamed_request_is_held_until_complete_then_asks_for_usage() {
        let p = plugin("{}");
        let mut h = chat(STREAM_REQUEST);
        let mut d = Driver::new();
        assert_eq!(d.on_request_headers(&p, &mut h, false), Action::Continue);
        // The headers go on without a length: the body may change.
        assert_eq!(h.edits, ["Request remove content-length"]);
        let (a, b) = STREAM_REQUEST.split_at(20);
        h.request_body = a.as_bytes().to_vec();
        assert_eq!(d.on_request_body(&p, &mut h, a.len(), false), Action::Pause);
        // While paused the host's buffer grows: the next call sees all of it.
        h.request_body.extend_from_slice(b.as_bytes());
        let size = h.request_body.len();
        assert_eq!(d.on_request_body(&p, &mut h, size, true), Action::Continue);
        let [(Side::Request, rewritten)] = &h.replaced[..] else {
            panic!("one rewrite of the request: {:?}", h.replaced.len());
        };
        let v: serde_json::Value = serde_json::from_slice(rewritten).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], "hi");
    }

    #[test]
    fn a_held_body_past_the_limit_or_ending_in_trailers_passes_unchanged() {
        let p = plugin(r#"{"max_body_bytes": 16384}"#);
        let big = format!(
            r#"{{"model":"gpt-4o","stream":true,"messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(20_000)
        );
        // A length past what may be held: never held, and its headers keep their length.
        let mut h = chat(&big);
        let mut d = Driver::new();
        d.on_request_headers(&p, &mut h, false);
        assert!(h.edits.is_empty(), "{:?}", h.edits);
        h.request_body = big.as_bytes()[..10_000].to_vec();
        assert_eq!(
            d.on_request_body(&p, &mut h, 10_000, false),
            Action::Continue
        );
        h.request_body = big.as_bytes()[10_000..].to_vec();
        let rest = h.request_body.len();
        assert_eq!(d.on_request_body(&p, &mut h, rest, true), Action::Continue);
        assert!(h.replaced.is_empty());

        // No length at all (chunked): never held either.
        let mut h = chat(STREAM_REQUEST);
        h.request_headers.retain(|(k, _)| *k != "content-length");
        let mut d = Driver::new();
        d.on_request_headers(&p, &mut h, false);
        h.request_body = STREAM_REQUEST.as_bytes().to_vec();
        let size = h.request_body.len();
        assert_eq!(d.on_request_body(&p, &mut h, size, true), Action::Continue);
        assert!(h.replaced.is_empty() && h.edits.is_empty());

        // A length that understates the body: held, then released past the limit, unchanged,
        // and never held again.
        let mut h = chat(&big);
        for (k, v) in h.request_headers.iter_mut() {
            if *k == "content-length" {
                *v = "100".into();
            }
        }
        let mut d = Driver::new();
        d.on_request_headers(&p, &mut h, false);
        h.request_body = big.as_bytes()[..10_000].to_vec();
        assert_eq!(d.on_request_body(&p, &mut h, 10_000, false), Action::Pause);
        h.request_body = big.as_bytes().to_vec();
        assert_eq!(
            d.on_request_body(&p, &mut h, big.len(), false),
            Action::Continue
        );
        h.request_body = Vec::new();
        assert_eq!(d.on_request_body(&p, &mut h, 0, true), Action::Continue);
        assert!(h.replaced.is_empty());

        let mut h = chat(STREAM_REQUEST);
        let mut d = Driver::new();
        d.on_request_headers(&p, &mut h, false);
        h.request_body = STREAM_REQUEST.as_bytes().to_vec();
        let size = h.request_body.len();
        assert_eq!(d.on_request_body(&p, &mut h, size, false), Action::Pause);
        // Trailers end the body with no end-of-stream body call: stop holding.
        assert_eq!(d.on_request_trailers(), Action::Continue);
        assert!(h.replaced.is_empty());
    }

    #[test]
    fn settled_requests_are_rolled_up_for_the_collector() {
        let p = plugin(
            r#"{"dimensions":[{"name":"team","value":"{request.header.x-team}"}],
                "collect":{"cluster":"c","sample_rate":0}}"#,
        );
        p.name_vm("vm-a");
        for team in ["red", "red", "blue"] {
            let mut h = chat(r#"{"model":"gpt-4o","messages":[]}"#);
            h.request_headers.push(("x-team", team.into()));
            let mut d = Driver::new();
            d.on_request_headers(&p, &mut h, false);
            h.request_body = br#"{"model":"gpt-4o","messages":[]}"#.to_vec();
            let size = h.request_body.len();
            d.on_request_body(&p, &mut h, size, true);
            h.response_headers = vec![(":status", "200".into())];
            d.on_response_headers(&p, &mut h, false);
            h.response_body = REPLY.as_bytes().to_vec();
            d.on_response_body(&p, &mut h, REPLY.len(), true);
        }
        let mut rollups = p.rollups.as_ref().unwrap().borrow_mut();
        rollups.seal();
        let batch = rollups.next().unwrap();
        assert_eq!(batch.id, "vm-a-1");
        assert_eq!(batch.labels, ["team"]);
        let by_team: Vec<(&str, u64, u64)> = batch
            .rows
            .iter()
            .map(|r| (r.values[0].as_str(), r.requests[1], r.total_tokens))
            .collect();
        assert_eq!(by_team, [("blue", 1, 10), ("red", 2, 20)]);
        // No collect block, or rollups turned off: none kept.
        assert!(plugin("{}").rollups.is_none());
        assert!(
            plugin(r#"{"collect":{"cluster":"c","rollup_interval_ms":0}}"#)
                .rollups
                .is_none()
        );
    }

    #[test]
    fn without_room_to_edit_the_stream_back_a_request_is_not_injected() {
        let p = plugin(r#"{"max_body_bytes": 16384, "max_vm_bytes": 1048576}"#);
        // Room for the request's copy, not for a compressed stream's edit.
        let mut hog = Vec::new();
        let mut lease = crate::body::budget::Lease::new(&p.budget);
        assert!(lease.reserve(&mut hog, p.budget.limit() - 200 * 1024));
        let mut h = chat(STREAM_REQUEST);
        let mut d = Driver::new();
        d.on_request_headers(&p, &mut h, false);
        h.request_body = STREAM_REQUEST.as_bytes().to_vec();
        let size = h.request_body.len();
        assert_eq!(d.on_request_body(&p, &mut h, size, true), Action::Continue);
        assert!(h.replaced.is_empty(), "the request went as sent");
        h.response_headers = vec![(":status", "200".into())];
        d.on_response_headers(&p, &mut h, false);
        h.response_body = REPLY.as_bytes().to_vec();
        d.on_response_body(&p, &mut h, REPLY.len(), true);
        assert_eq!(
            (
                total(&h, "llm_requests_total"),
                total(&h, "llm_over_budget_total")
            ),
            (1, 1),
            "{:?}",
            h.points
        );
    }

    #[test]
    fn a_compressed_response_without_room_for_its_decoder_passes_unread() {
        let p = plugin(r#"{"max_body_bytes": 16384, "max_vm_bytes": 1048576}"#);
        let body = br#"{"model":"gpt-4o","messages":[]}"#;
        let mut h = chat(std::str::from_utf8(body).unwrap());
        let mut d = Driver::new();
        d.on_request_headers(&p, &mut h, false);
        h.request_body = body.to_vec();
        d.on_request_body(&p, &mut h, body.len(), true);
        // Other requests take the budget before the response comes.
        let mut hog = Vec::new();
        let mut lease = crate::body::budget::Lease::new(&p.budget);
        let room = p.budget.limit() - p.budget.used();
        assert!(lease.reserve(&mut hog, room - 1024));
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, REPLY.as_bytes()).unwrap();
        let gz = z.finish().unwrap();
        h.response_headers = vec![
            (":status", "200".into()),
            ("content-encoding", "gzip".into()),
            ("content-type", "application/json".into()),
        ];
        d.on_response_headers(&p, &mut h, false);
        h.response_body = gz.clone();
        d.on_response_body(&p, &mut h, gz.len(), true);
        assert!(h.replaced.is_empty());
        assert_eq!(
            (
                total(&h, "llm_requests_total"),
                total(&h, "llm_over_budget_total")
            ),
            (1, 1),
            "{:?}",
            h.points
        );
        assert_eq!(
            (
                total(&h, "llm_prompt_tokens_total"),
                total(&h, "llm_tokens_total")
            ),
            (0, 0),
            "not read, so not counted: {:?}",
            h.points
        );
    }

    #[test]
    fn without_room_in_the_vm_budget_a_request_passes_unheld_and_is_counted() {
        let p = plugin(r#"{"max_body_bytes": 16384, "max_vm_bytes": 1048576}"#);
        // Other requests of the VM hold all of its budget.
        let mut hog = Vec::new();
        let mut lease = crate::body::budget::Lease::new(&p.budget);
        assert!(lease.reserve(&mut hog, p.budget.limit() - 10));
        let mut h = chat(STREAM_REQUEST);
        let mut d = Driver::new();
        d.on_request_headers(&p, &mut h, false);
        assert!(h.edits.is_empty(), "not held: {:?}", h.edits);
        h.request_body = STREAM_REQUEST.as_bytes().to_vec();
        let size = h.request_body.len();
        assert_eq!(d.on_request_body(&p, &mut h, size, true), Action::Continue);
        h.response_headers = vec![(":status", "200".into())];
        d.on_response_headers(&p, &mut h, false);
        h.response_body = REPLY.as_bytes().to_vec();
        d.on_response_body(&p, &mut h, REPLY.len(), true);
        assert!(h.replaced.is_empty());
        assert_eq!(total(&h, "llm_requests_total"), 1);
        assert_eq!(total(&h, "llm_over_budget_total"), 1, "{:?}", h.points);
        // The budget back in full once the request is done: the next one is held.
        drop(d);
        lease.free(&mut hog);
        assert_eq!(p.budget.used(), 0);
        let mut h = chat(STREAM_REQUEST);
        let mut d = Driver::new();
        d.on_request_headers(&p, &mut h, false);
        h.request_body = STREAM_REQUEST.as_bytes()[..10].to_vec();
        assert_eq!(d.on_request_body(&p, &mut h, 10, false), Action::Pause);
    }

    #[test]
    fn every_ending_settles_exactly_once() {
        let p = plugin(r#"{"inject_stream_usage": false}"#);
        let body = r#"{"model":"gpt-4o","messages":[]}"#;
        // End of stream in a body call, trailers, headers only, and a reset (only on_log).
        for ending in ["body", "trailers", "headers", "reset"] {
            let mut h = chat(body);
            let mut d = Driver::new();
            d.on_request_headers(&p, &mut h, false);
            h.request_body = body.as_bytes().to_vec();
            d.on_request_body(&p, &mut h, body.len(), true);
            if ending != "reset" {
                h.response_headers = vec![
                    (":status", "200".into()),
                    ("content-type", "application/json".into()),
                ];
                d.on_response_headers(&p, &mut h, ending == "headers");
            }
            if ending == "body" || ending == "trailers" {
                h.response_body = REPLY.as_bytes().to_vec();
                d.on_response_body(&p, &mut h, REPLY.len(), ending == "body");
                if ending == "trailers" {
                    d.on_response_trailers(&p, &mut h);
                }
            }
            d.on_log(&p, &mut h);
            d.on_log(&p, &mut h);
            assert_eq!(h.settlements, 1, "{ending}");
            assert_eq!(total(&h, "llm_requests_total"), 1, "{ending}");
            let summary: serde_json::Value =
                serde_json::from_slice(h.summary.as_deref().unwrap()).unwrap();
            let want = if matches!(ending, "body" | "trailers") {
                10
            } else {
                0
            };
            assert_eq!(summary["total"].as_u64().unwrap_or(0), want, "{ending}");
        }
    }

    #[test]
    fn other_requests_pass_untouched_and_log_null() {
        let p = plugin(r#"{"identity_encoding": true}"#);
        let mut h = TestHost {
            request_headers: vec![(":method", "GET".into()), (":path", "/healthz".into())],
            ..TestHost::default()
        };
        let mut d = Driver::new();
        assert_eq!(d.on_request_headers(&p, &mut h, true), Action::Continue);
        assert!(!d.is_metered());
        h.response_headers = vec![(":status", "200".into())];
        d.on_response_headers(&p, &mut h, false);
        h.response_body = b"ok".to_vec();
        d.on_response_body(&p, &mut h, 2, true);
        d.on_log(&p, &mut h);
        assert!(h.edits.is_empty() && h.replaced.is_empty() && h.points.is_empty());
        assert_eq!(h.summary.as_deref(), Some(&b"null"[..]));
        // An LLM call with the same configuration asks the upstream not to compress.
        let mut h = chat("{}");
        Driver::new().on_request_headers(&p, &mut h, true);
        assert_eq!(h.edits, ["Request set accept-encoding: identity"]);
    }

    #[test]
    fn sampled_exchanges_send_their_record_before_the_summary() {
        let p = plugin(r#"{"collect":{"cluster":"c","sample_rate":1}}"#);
        let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Why?"}]}"#;
        let mut h = chat(body);
        let mut d = Driver::new();
        d.on_request_headers(&p, &mut h, false);
        h.request_body = body.as_bytes().to_vec();
        d.on_request_body(&p, &mut h, body.len(), true);
        h.response_headers = vec![(":status", "200".into())];
        d.on_response_headers(&p, &mut h, false);
        h.response_body = REPLY.as_bytes().to_vec();
        d.on_response_body(&p, &mut h, REPLY.len(), true);
        assert_eq!(h.records.len(), 1);
        assert!(
            h.records[0].contains(r#""question":"Why?""#),
            "{}",
            h.records[0]
        );
        assert!(h.summary.is_some());
    }
}
