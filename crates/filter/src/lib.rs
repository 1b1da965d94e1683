//! tokenmeter.wasm: the proxy-wasm glue. It moves bytes between the host and the core,
//! nothing more.
#![cfg(all(target_arch = "wasm32", target_os = "wasi"))]
//!
//! One [`Vm`] per Wasm VM (Envoy runs one per worker thread) holds the core's [`Plugin`]
//! (validated configuration, cardinality cache), the metric ids defined so far and the
//! record outbox; one [`HttpFilter`] per request hands each callback to the core's
//! [`Driver`] with an [`EnvoyHost`], which turns the driver's requests into host calls.
//! Every decision (what to hold, rewrite or settle, and when) is the driver's.

mod host;
mod outbox;
mod rollups;
mod shared;
mod store;

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use tokenmeter_core::config::host::{HostAnswers, HostKind};
use tokenmeter_core::config::{Config, ConfigError};
use tokenmeter_core::exchange::driver::{self, Driver, Plugin};
use tokenmeter_core::exchange::host::{self as core_host, Properties, Side};
use tokenmeter_core::host_abi::headers::HeaderPairs;
use tokenmeter_core::series::cardinality::{LocalRegistry, Registry};
use tokenmeter_core::series::metrics::{self, Point};

use store::MetricStore;

proxy_wasm::main! {{
    // Installs a panic hook that logs the message before the trap, for diagnosis.
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { vm: None }) });
}}

/// Per-VM state shared by the VM's requests.
struct Vm {
    plugin: Plugin,
    metrics: RefCell<MetricStore>,
    outbox: RefCell<outbox::Outbox>,
    rollups: RefCell<rollups::Sender>,
}

impl Vm {
    /// Counts what became of a record.
    fn record_outcome(&self, dropped: Option<&str>) {
        if let Ok(mut metrics) = self.metrics.try_borrow_mut() {
            metrics.record(&[tokenmeter_core::series::metrics::record_point(
                &self.plugin.config,
                dropped,
            )]);
        }
    }

    /// Counts what became of rollup batches.
    fn rollup_outcome(&self, outcome: &rollups::Outcome) {
        use tokenmeter_core::series::metrics::{
            rollup_point, ROLLUPS_DROPPED, ROLLUPS_FAILED, ROLLUPS_SENT,
        };
        let config = &self.plugin.config;
        let points: Vec<Point> = [
            (&ROLLUPS_SENT, outcome.sent),
            (&ROLLUPS_FAILED, outcome.failed),
            (&ROLLUPS_DROPPED, outcome.dropped),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(f, n)| rollup_point(config, f, n))
        .collect();
        if points.is_empty() {
            return;
        }
        if let Ok(mut metrics) = self.metrics.try_borrow_mut() {
            metrics.record(&points);
        }
    }
}

struct Root {
    vm: Option<Rc<Vm>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let Some(vm) = &self.vm else { return };
        if let (Some(collect), Some(rollups)) = (&vm.plugin.config.collect, &vm.plugin.rollups) {
            if let Some(config) = &collect.rollups {
                let answer = match vm.rollups.try_borrow_mut() {
                    Ok(mut sender) => sender.answered(token, num_headers, rollups, collect, config),
                    Err(_) => None,
                };
                if let Some(outcome) = answer {
                    vm.rollup_outcome(&outcome);
                    return;
                }
            }
        }
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
        match Config::parse(&text).and_then(settle_host) {
            Ok(config) => {
                let registry: Box<dyn Registry> = if config.host.shared_data() {
                    Box::new(shared::SharedRegistry::new(&config.namespace))
                } else {
                    Box::new(LocalRegistry::default())
                };
                if config.collect.is_some() {
                    host::set_tick_period_ms(outbox::FLUSH_MS);
                }
                let plugin = Plugin::new(config, registry);
                plugin.name_vm(&rollups::vm_id());
                self.vm = Some(Rc::new(Vm {
                    plugin,
                    metrics: RefCell::new(MetricStore::default()),
                    outbox: RefCell::new(outbox::Outbox::default()),
                    rollups: RefCell::new(rollups::Sender::default()),
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
            driver: Driver::new(),
        }))
    }

    fn on_tick(&mut self) {
        let Some(vm) = &self.vm else { return };
        let Some(collect) = &vm.plugin.config.collect else {
            return;
        };
        let dropped = match vm.outbox.try_borrow_mut() {
            Ok(mut outbox) => outbox.flush(collect),
            Err(_) => return,
        };
        for reason in dropped {
            vm.record_outcome(Some(reason));
        }
        if let (Some(rollups), Some(config)) = (&vm.plugin.rollups, &collect.rollups) {
            let outcome = match vm.rollups.try_borrow_mut() {
                Ok(mut sender) => sender.tick(rollups, collect, config, outbox::FLUSH_MS),
                Err(_) => return,
            };
            vm.rollup_outcome(&outcome);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Settles what depends on the host, from what it answers without harm (see
/// [`tokenmeter_core::config::host`]), and says so in one log line.
fn settle_host(mut config: Config) -> Result<Config, ConfigError> {
    let answers = HostAnswers {
        vm_id: config.host.needs_answers() && host::property_of(&["plugin_vm_id"]).is_ok(),
    };
    let limit = config.host.resolve(&answers);
    metrics::settle_name_cap(&mut config, limit)?;
    // A guess about the host is worth a warning: the wrong one can trap.
    let level = if config.host.detected() && config.host.kind != HostKind::Envoy {
        LogLevel::Warn
    } else {
        LogLevel::Info
    };
    host::log(level, &config.host.describe(config.max_metric_name_bytes));
    Ok(config)
}

struct HttpFilter {
    /// `None` only if the host creates streams on a VM whose configuration failed.
    vm: Option<Rc<Vm>>,
    driver: Driver,
}

/// The driver's host for one callback: proxy-wasm calls, with each header map read whole
/// at most once per callback (see [`HeaderPairs`] for why that matters).
struct EnvoyHost<'a> {
    vm: &'a Vm,
    request_headers: OnceCell<Option<HeaderPairs>>,
    response_headers: OnceCell<Option<HeaderPairs>>,
}

impl EnvoyHost<'_> {
    fn new(vm: &Vm) -> EnvoyHost<'_> {
        EnvoyHost {
            vm,
            request_headers: OnceCell::new(),
            response_headers: OnceCell::new(),
        }
    }
}

fn map(side: Side) -> MapType {
    match side {
        Side::Request => MapType::HttpRequestHeaders,
        Side::Response => MapType::HttpResponseHeaders,
    }
}

fn buffer(side: Side) -> BufferType {
    match side {
        Side::Request => BufferType::HttpRequestBody,
        Side::Response => BufferType::HttpResponseBody,
    }
}

impl Properties for EnvoyHost<'_> {
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        self.vm.plugin.config.host.read(path, host::property)
    }
}

impl core_host::Host for EnvoyHost<'_> {
    fn now_ms(&self) -> u64 {
        host::now_ms()
    }

    fn header(&self, side: Side, name: &str) -> Option<String> {
        let cell = match side {
            Side::Request => &self.request_headers,
            Side::Response => &self.response_headers,
        };
        // One call per lookup only if the host will not hand the map over.
        match cell.get_or_init(|| host::header_pairs(map(side))) {
            Some(pairs) => pairs.get(name),
            None => host::header(map(side), name),
        }
    }

    fn set_header(&mut self, side: Side, name: &str, value: &str) {
        host::set_header(map(side), name, value);
    }

    fn remove_header(&mut self, side: Side, name: &str) {
        host::remove_header(map(side), name);
    }

    fn body(&self, side: Side, start: usize, len: usize) -> Option<Vec<u8>> {
        host::buffer(buffer(side), start, len)
    }

    fn replace_body(&mut self, side: Side, len: usize, bytes: &[u8]) -> bool {
        host::replace_buffer(buffer(side), len, bytes)
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        host::set_property(name, value);
    }

    fn count(&mut self, points: &[Point]) {
        if let Ok(mut metrics) = self.vm.metrics.try_borrow_mut() {
            metrics.record(points);
        }
    }

    fn collect(&mut self, record: String) {
        let Some(collect) = &self.vm.plugin.config.collect else {
            return;
        };
        let dropped = match self.vm.outbox.try_borrow_mut() {
            Ok(mut outbox) => outbox.push(collect, record),
            Err(_) => Some("queue_full"),
        };
        if dropped.is_some() {
            self.vm.record_outcome(dropped);
        }
    }
}

impl Context for HttpFilter {}

/// Each callback goes to the driver with a host for it; without a configured VM the
/// request passes untouched.
macro_rules! forward {
    ($self:ident, |$driver:ident, $plugin:ident, $host:ident| $call:expr) => {{
        let Some(vm) = $self.vm.as_deref() else {
            return Action::Continue;
        };
        let $host = &mut EnvoyHost::new(vm);
        let ($driver, $plugin) = (&mut $self.driver, &vm.plugin);
        match $call {
            driver::Action::Continue => Action::Continue,
            driver::Action::Pause => Action::Pause,
        }
    }};
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        forward!(self, |d, p, h| d.on_request_headers(p, h, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        forward!(self, |d, p, h| d.on_request_body(
            p,
            h,
            body_size,
            end_of_stream
        ))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        forward!(self, |d, _p, _h| d.on_request_trailers())
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        forward!(self, |d, p, h| d.on_response_headers(p, h, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        forward!(self, |d, p, h| d.on_response_body(
            p,
            h,
            body_size,
            end_of_stream
        ))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        forward!(self, |d, p, h| d.on_response_trailers(p, h))
    }

    fn on_log(&mut self) {
        if let Some(vm) = self.vm.as_deref() {
            self.driver.on_log(&vm.plugin, &mut EnvoyHost::new(vm));
        }
    }
}
