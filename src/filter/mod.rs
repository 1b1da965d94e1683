//! The proxy-wasm glue: moves bytes between the host and the core, nothing more.
//!
//! One [`Vm`] per Wasm VM (Envoy runs one per worker thread) holds the validated
//! configuration, the metric ids defined so far and the cardinality cache; one
//! [`HttpFilter`] per request feeds an [`Exchange`] and records its settlement.

mod host;
mod outbox;
mod shared;
mod store;

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::cardinality::Cardinality;
use crate::config::Config;
use crate::exchange::{self, Exchange};

use store::MetricStore;

proxy_wasm::main! {{
    // Installs a panic hook that logs the message before the trap, for diagnosis.
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { vm: None }) });
}}

/// Per-VM state shared by the VM's requests.
struct Vm {
    config: Config,
    metrics: RefCell<MetricStore>,
    cardinality: RefCell<Cardinality>,
    outbox: RefCell<outbox::Outbox>,
}

impl Vm {
    /// Counts what became of a record.
    fn record_outcome(&self, dropped: Option<&str>) {
        if let Ok(mut metrics) = self.metrics.try_borrow_mut() {
            metrics.record(&[crate::metrics::record_point(&self.config, dropped)]);
        }
    }
}

struct Root {
    vm: Option<Rc<Vm>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let Some(vm) = &self.vm else { return };
        let outcome = match vm.outbox.try_borrow_mut() {
            Ok(mut outbox) => outbox.answered(num_headers),
            Err(_) => return,
        };
        vm.record_outcome(outcome);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let text = if plugin_configuration_size == 0 {
            Vec::new()
        } else {
            host::buffer(
                BufferType::PluginConfiguration,
                0,
                plugin_configuration_size,
            )
            .unwrap_or_default()
        };
        match Config::parse(&text) {
            Ok(config) => {
                let registry = shared::SharedRegistry::new(&config.namespace);
                let cardinality = Cardinality::new(&config, Box::new(registry));
                if config.collect.is_some() {
                    host::set_tick_period_ms(outbox::FLUSH_MS);
                }
                self.vm = Some(Rc::new(Vm {
                    config,
                    metrics: RefCell::new(MetricStore::default()),
                    cardinality: RefCell::new(cardinality),
                    outbox: RefCell::new(outbox::Outbox::default()),
                }));
                true
            }
            Err(e) => {
                host::log(LogLevel::Critical, &e.to_string());
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HttpFilter {
            vm: self.vm.clone(),
            exchange: None,
            holding: false,
            held: 0,
        }))
    }

    fn on_tick(&mut self) {
        let Some(vm) = &self.vm else { return };
        let Some(collect) = &vm.config.collect else {
            return;
        };
        let dropped = match vm.outbox.try_borrow_mut() {
            Ok(mut outbox) => outbox.flush(collect),
            Err(_) => return,
        };
        for reason in dropped {
            vm.record_outcome(Some(reason));
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HttpFilter {
    /// `None` only if the host creates streams on a VM whose configuration failed.
    vm: Option<Rc<Vm>>,
    exchange: Option<Exchange>,
    /// The request body is being held until it is complete (stream usage injection).
    holding: bool,
    /// How much of it the host holds so far.
    held: usize,
}

struct EnvoyHost;

impl exchange::Host for EnvoyHost {
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        host::property(path)
    }
}

impl HttpFilter {
    fn settle(&mut self) {
        let (Some(vm), Some(ex)) = (&self.vm, self.exchange.as_mut()) else {
            return;
        };
        if ex.is_settled() {
            return;
        }
        let Ok(mut cardinality) = vm.cardinality.try_borrow_mut() else {
            return;
        };
        let Some(mut settlement) =
            ex.settle(&vm.config, &EnvoyHost, &mut cardinality, host::now_ms())
        else {
            return;
        };
        if let Ok(mut metrics) = vm.metrics.try_borrow_mut() {
            metrics.record(&crate::metrics::points(&vm.config, &settlement));
        }
        if let (Some(record), Some(collect)) = (settlement.record.take(), &vm.config.collect) {
            let dropped = match vm.outbox.try_borrow_mut() {
                Ok(mut outbox) => outbox.push(collect, record),
                Err(_) => Some("queue_full"),
            };
            if dropped.is_some() {
                vm.record_outcome(dropped);
            }
        }
        // Per-request usage for access logs: %FILTER_STATE(wasm.tokenmeter:PLAIN)%.
        host::set_property(
            "tokenmeter",
            crate::access_log::summary(&settlement).as_bytes(),
        );
    }
}

impl Context for HttpFilter {}

const REQUEST: MapType = MapType::HttpRequestHeaders;
const RESPONSE: MapType = MapType::HttpResponseHeaders;

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(vm) = &self.vm else {
            return Action::Continue;
        };
        let req = host::header_lookup(REQUEST);
        let (Some(method), Some(path)) = (req(":method"), req(":path")) else {
            return Action::Continue;
        };
        let Some(ex) = Exchange::start(&vm.config, &method, &path, req, &EnvoyHost, host::now_ms())
        else {
            return Action::Continue;
        };
        if vm.config.identity_encoding {
            host::set_header(REQUEST, "accept-encoding", "identity");
        }
        // The body may be rewritten, so it is held until complete. proxy-wasm cannot hold
        // headers while reading the body, so they go on now without a length (Envoy then
        // frames the body itself).
        self.holding = ex.holds_request_body() && !end_of_stream;
        if self.holding {
            host::remove_header(REQUEST, "content-length");
        }
        self.exchange = Some(ex);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(vm), Some(ex)) = (&self.vm, self.exchange.as_mut()) else {
            return Action::Continue;
        };
        if !self.holding {
            if body_size > 0 {
                if let Some(chunk) = host::buffer(BufferType::HttpRequestBody, 0, body_size) {
                    ex.on_request_body(&chunk);
                }
            }
            return Action::Continue;
        }
        // While held, `body_size` is everything received so far: copy only what is new.
        if body_size > self.held {
            if let Some(new) = host::buffer(
                BufferType::HttpRequestBody,
                self.held,
                body_size - self.held,
            ) {
                ex.on_request_body(&new);
            }
            self.held = body_size;
        }
        if !end_of_stream && body_size <= vm.config.held_bytes() {
            return Action::Pause;
        }
        self.holding = false;
        if !end_of_stream {
            ex.release_request();
            return Action::Continue;
        }
        if let Some(rewritten) = ex.request_complete(&vm.config) {
            if !host::set_buffer(BufferType::HttpRequestBody, 0, body_size, &rewritten) {
                ex.injection_failed();
            }
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
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

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let (Some(vm), Some(ex)) = (&self.vm, self.exchange.as_mut()) else {
            return Action::Continue;
        };
        let resp = host::header_lookup(RESPONSE);
        let status = resp(":status").and_then(|s| s.trim().parse::<u16>().ok());
        let edits = ex.on_response_headers(&vm.config, status, resp);
        if edits.remove_content_length {
            host::remove_header(RESPONSE, "content-length");
        }
        if end_of_stream {
            ex.response_complete();
            self.settle();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(vm), Some(ex)) = (&self.vm, self.exchange.as_mut()) else {
            return Action::Continue;
        };
        let mut replacement = None;
        if body_size > 0 && ex.wants_response_body() {
            if let Some(chunk) = host::buffer(BufferType::HttpResponseBody, 0, body_size) {
                replacement = ex.on_response_body(&vm.config, &chunk, host::now_ms());
            }
        }
        if end_of_stream {
            if let Some(rest) = ex.on_response_end(&vm.config) {
                let mut out = replacement.unwrap_or_default();
                out.extend_from_slice(&rest);
                replacement = Some(out);
            }
        }
        if let Some(bytes) = replacement {
            host::set_buffer(BufferType::HttpResponseBody, 0, body_size, &bytes);
        }
        if end_of_stream {
            self.settle();
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(ex) = self.exchange.as_mut() {
            ex.response_complete();
        }
        self.settle();
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.exchange.is_some() {
            self.settle();
        } else if self.vm.is_some() {
            // Access log lines stay valid JSON for requests that are not LLM calls.
            host::set_property("tokenmeter", b"null");
        }
    }
}
