//! A proxy-wasm HTTP filter that reads what tokenmeter reads, and nothing else.
//!
//! Per request it reads each header map whole (`proxy_get_header_map_pairs`, as tokenmeter
//! does) and every request and response body chunk as it arrives, then drops them. So
//! "tokenmeter − reads-only" is tokenmeter's own cost, and "reads-only − do-nothing" is what
//! reading through the ABI costs.
//!
//! It also counts the body callbacks of every response that reached its end, in plain
//! per-VM counters that cost no host call on the request path; a timer publishes them every
//! 100 ms as the counters `readsonly.responses`, `readsonly.request_body_callbacks` and
//! `readsonly.response_body_callbacks`, so the benchmark can say how finely the host
//! delivered each stream.

use std::cell::Cell;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

thread_local! {
    static COUNTS: Counts = const { Counts::new() };
}

/// What this VM saw since the last publication.
struct Counts {
    responses: Cell<u64>,
    request_bodies: Cell<u64>,
    response_bodies: Cell<u64>,
}

impl Counts {
    const fn new() -> Counts {
        Counts {
            responses: Cell::new(0),
            request_bodies: Cell::new(0),
            response_bodies: Cell::new(0),
        }
    }
}

/// Adds one finished exchange's callbacks.
fn finished(request_bodies: u64, response_bodies: u64) {
    COUNTS.with(|c| {
        for (cell, n) in [
            (&c.responses, 1),
            (&c.request_bodies, request_bodies),
            (&c.response_bodies, response_bodies),
        ] {
            cell.set(cell.get() + n);
        }
    });
}

#[derive(Default)]
struct Root {
    /// Metric ids: responses, request body callbacks, response body callbacks.
    ids: Option<[u32; 3]>,
}

impl Context for Root {}

impl RootContext for Root {
    // The configuration tokenmeter gets is passed here too (same bootstrap shape) and ignored.
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let define = |name| proxy_wasm::hostcalls::define_metric(MetricType::Counter, name).ok();
        self.ids = match (
            define("readsonly.responses"),
            define("readsonly.request_body_callbacks"),
            define("readsonly.response_body_callbacks"),
        ) {
            (Some(a), Some(b), Some(c)) => Some([a, b, c]),
            _ => None,
        };
        let _ = proxy_wasm::hostcalls::set_tick_period(std::time::Duration::from_millis(100));
        true
    }

    fn on_tick(&mut self) {
        let Some(ids) = self.ids else { return };
        COUNTS.with(|c| {
            for (id, cell) in
                ids.into_iter()
                    .zip([&c.responses, &c.request_bodies, &c.response_bodies])
            {
                let n = cell.replace(0);
                if n > 0 {
                    let _ = proxy_wasm::hostcalls::increment_metric(id, n as i64);
                }
            }
        });
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Reader::default()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
}

/// Takes a host-allocated buffer and frees it.
///
/// # Safety
/// `data` is null or `size` bytes the host allocated with this module's allocator.
unsafe fn free(data: *mut u8, size: usize) {
    if !data.is_null() {
        drop(Vec::from_raw_parts(data, size, size));
    }
}

/// Reads a body chunk with the call tokenmeter makes (the SDK's wrapper would trap on an
/// unexpected status).
fn read_body(buffer: BufferType, size: usize) {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: as in `read_header_map`.
    unsafe {
        proxy_get_buffer_bytes(buffer as u32, 0, size, &mut data, &mut len);
        free(data, len);
    }
}

/// Reads a header map whole with the call tokenmeter makes, and frees it unparsed (parsing
/// is tokenmeter's own work). The SDK's wrapper would also split it into owned pairs.
fn read_header_map(map: MapType) {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host fills both out-pointers; a non-null `data` is `size` bytes it
    // allocated with this module's allocator (`proxy_on_memory_allocate`), freed here.
    unsafe {
        proxy_get_header_map_pairs(map as u32, &mut data, &mut size);
        free(data, size);
    }
}

/// Body callbacks of this exchange so far.
#[derive(Default)]
struct Reader {
    request_bodies: u64,
    response_bodies: u64,
}

impl Context for Reader {}

impl HttpContext for Reader {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        read_header_map(MapType::HttpRequestHeaders);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.request_bodies += 1;
        if body_size > 0 {
            read_body(BufferType::HttpRequestBody, body_size);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        read_header_map(MapType::HttpResponseHeaders);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.response_bodies += 1;
        if body_size > 0 {
            read_body(BufferType::HttpResponseBody, body_size);
        }
        if end_of_stream {
            finished(self.request_bodies, self.response_bodies);
        }
        Action::Continue
    }
}
