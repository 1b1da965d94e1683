//! The per-request driver: host callbacks in, actions out.
//!
//! This is the one place that decides, callback by callback, when a request body is held,
//! released or rewritten, when a response chunk is replaced, how each way a stream can end
//! (end of stream, trailers, reset) settles the exchange exactly once, and in which order a
//! settlement is recorded: metric points, then the sampled record, then the access-log
//! property. The proxy-wasm filter, the test host's native reference and the benchmark's
//! replay all drive requests through it; each supplies a [`Host`].
//!
//! The host model is proxy-wasm's, as Envoy implements it: headers go on when their
//! callback returns, a body callback that returns [`Action::Pause`] makes the host buffer,
//! so the next callback's `body_size` counts everything held so far, and a callback reads
//! and replaces bytes of the host's current buffer.

use std::cell::RefCell;

use super::{access_log, Exchange};
use crate::config::Config;
use crate::series::cardinality::{Cardinality, Registry};
use crate::series::metrics::{self, Point};

/// What a callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Hold the body (request side only, while it may still be rewritten).
    Pause,
}

/// Which half of the exchange a header map or body buffer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// A host property's raw bytes, `None` when the host has none (`["xds", "route_name"]`).
pub trait Properties {
    fn property(&self, path: &[String]) -> Option<Vec<u8>>;
}

/// What the driver needs from its host during one callback.
pub trait Host: Properties {
    /// The host clock, in milliseconds.
    fn now_ms(&self) -> u64;
    /// The first value of a header (lower-case name) in the current header map of `side`.
    fn header(&self, side: Side, name: &str) -> Option<String>;
    /// Replaces (or adds) a header; only effective in that side's header callback.
    fn set_header(&mut self, side: Side, name: &str, value: &str);
    fn remove_header(&mut self, side: Side, name: &str);
    /// `len` bytes of the host's current body buffer of `side` from `start`.
    fn body(&self, side: Side, start: usize, len: usize) -> Option<Vec<u8>>;
    /// Replaces `len` bytes from `start` of the current body buffer; `false` if refused.
    fn set_body(&mut self, side: Side, start: usize, len: usize, bytes: &[u8]) -> bool;
    /// Sets a stream property (the access-log summary).
    fn set_property(&mut self, name: &str, value: &[u8]);
    /// Records a settlement's metric points.
    fn count(&mut self, points: &[Point]);
    /// Sends a sampled inference record (JSON) to the collector.
    fn collect(&mut self, record: String);
}

/// What one VM keeps for all of its requests: the validated configuration and the
/// cardinality cache in front of the registry the VMs share.
pub struct Plugin {
    pub config: Config,
    cardinality: RefCell<Cardinality>,
}

impl Plugin {
    pub fn new(config: Config, registry: Box<dyn Registry>) -> Plugin {
        let cardinality = RefCell::new(Cardinality::new(&config, registry));
        Plugin {
            config,
            cardinality,
        }
    }
}

/// The property that carries the access-log summary (Envoy filter state `wasm.tokenmeter`).
pub const SUMMARY_PROPERTY: &str = "tokenmeter";

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
        let config = &plugin.config;
        let Some(ex) = Exchange::start(config, &method, &path, req, &*host, host.now_ms()) else {
            return Action::Continue;
        };
        if config.identity_encoding {
            host.set_header(Side::Request, "accept-encoding", "identity");
        }
        // The body may be rewritten, so it is held until complete. proxy-wasm cannot hold
        // headers while reading the body, so they go on now without a length (the host then
        // frames the body itself).
        self.holding = ex.holds_request_body() && !end_of_stream;
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
            if !host.set_body(Side::Request, 0, body_size, &rewritten) {
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
                replacement = ex.on_response_body(config, &chunk, host.now_ms());
            }
        }
        if end_of_stream {
            if let Some(rest) = ex.on_response_end(config) {
                let mut out = replacement.unwrap_or_default();
                out.extend_from_slice(&rest);
                replacement = Some(out);
            }
        }
        if let Some(bytes) = replacement {
            host.set_body(Side::Response, 0, body_size, &bytes);
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
            host.set_property(SUMMARY_PROPERTY, b"null");
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
        if let Some(record) = settlement.record.take() {
            host.collect(record);
        }
        host.set_property(
            SUMMARY_PROPERTY,
            access_log::summary(&settlement).as_bytes(),
        );
    }
}
