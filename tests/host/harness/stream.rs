//! One HTTP stream through the filter, delivered the way Envoy's filter manager delivers it.
//!
//! - Headers go on when the callback returns `Continue`; edits after that change nothing
//!   (they are recorded as late edits).
//! - A body callback that returns `Pause` makes the host buffer: the next callback sees
//!   everything received so far and its cumulative size. Past the buffer limit (1 MiB, as
//!   Envoy's default) a paused request becomes a 413 local reply.
//! - What the callback leaves in the buffer (after `proxy_set_buffer_bytes`) is what goes on.
//! - A stream that ends (end of stream, or trailers) while paused is stalled: Envoy would
//!   wait forever for `proxy_continue_stream`.
//! - `on_log` runs before `on_done`, then `on_delete`.

use super::abi::{stream_type, Action};
use super::state::{Headers, LocalResponse, Manners, StreamState};
use super::vm::Vm;

/// Envoy's default buffer limit for a paused body.
pub const BUFFER_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Default)]
struct Side {
    /// Headers delivered, not yet gone on (the callback paused).
    headers_held: bool,
    headers_sent: Option<Headers>,
    /// Body bytes the host holds because the filter paused.
    held: Option<Vec<u8>>,
    sent: Vec<u8>,
    ended: bool,
    stalled: bool,
    actions: Vec<Action>,
}

/// A stream on a VM, from context creation to `on_delete`.
pub struct Stream<'a> {
    vm: &'a mut Vm,
    pub id: u32,
    request: Side,
    response: Side,
    pub buffer_limit: usize,
    /// `proxy_continue_stream` calls already acted on.
    continues_seen: usize,
    /// A local reply the host sent (the filter's or Envoy's own, e.g. 413).
    pub local_reply: Option<LocalResponse>,
    /// The `tokenmeter` stream property after `on_log` (the access-log summary).
    pub access_log: Option<Vec<u8>>,
    finished: bool,
}

impl<'a> Stream<'a> {
    pub fn new(vm: &'a mut Vm) -> Stream<'a> {
        let id = vm.new_http_context();
        Stream {
            vm,
            id,
            request: Side::default(),
            response: Side::default(),
            buffer_limit: BUFFER_LIMIT,
            continues_seen: 0,
            local_reply: None,
            access_log: None,
            finished: false,
        }
    }

    pub fn vm(&mut self) -> &mut Vm {
        &mut *self.vm
    }

    fn state(&mut self) -> &mut StreamState {
        self.vm.stream_state(self.id)
    }

    /// A stream-specific property (e.g. `request.id`).
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        let p = path.iter().map(|s| s.to_string()).collect();
        self.state().properties.insert(p, value.to_vec());
    }

    pub fn request_headers(&mut self, headers: Headers, end_of_stream: bool) -> Action {
        let n = headers.len() as u32;
        self.state().request_headers = Some(headers);
        let id = self.id;
        let a = self.vm.action(
            id,
            "proxy_on_request_headers",
            (id, n, u32::from(end_of_stream)),
        );
        self.request.actions.push(a);
        self.request.ended = end_of_stream;
        match a {
            Action::Continue => self.send_request_headers(),
            Action::Pause => {
                self.request.headers_held = true;
                self.request.stalled = end_of_stream;
            }
        }
        self.play_local_reply();
        a
    }

    fn send_request_headers(&mut self) {
        self.request.headers_held = false;
        let st = self.state();
        st.request_headers_sent = true;
        let h = st.request_headers.clone();
        self.request.headers_sent = h;
    }

    fn send_response_headers(&mut self) {
        self.response.headers_held = false;
        let st = self.state();
        st.response_headers_sent = true;
        let h = st.response_headers.clone();
        self.response.headers_sent = h;
    }

    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        let buf = match self.request.held.take() {
            Some(mut held) => {
                held.extend_from_slice(chunk);
                held
            }
            None => chunk.to_vec(),
        };
        let size = buf.len() as u32;
        self.state().request_body = Some(buf);
        let id = self.id;
        let a = self.vm.action(
            id,
            "proxy_on_request_body",
            (id, size, u32::from(end_of_stream)),
        );
        self.request.actions.push(a);
        self.request.ended = end_of_stream;
        let buf = self.state().request_body.take().unwrap_or_default();
        match a {
            Action::Continue => {
                if self.request.headers_held {
                    self.send_request_headers();
                }
                self.request.sent.extend_from_slice(&buf);
            }
            Action::Pause if buf.len() > self.buffer_limit => {
                // Envoy answers a request it cannot buffer with 413.
                self.request.held = Some(buf);
                self.envoy_local_reply(413, "Payload Too Large");
            }
            Action::Pause => {
                self.request.stalled = end_of_stream;
                self.request.held = Some(buf);
            }
        }
        self.play_local_reply();
        a
    }

    pub fn request_trailers(&mut self, trailers: Headers) -> Action {
        let n = trailers.len() as u32;
        self.state().request_trailers = Some(trailers);
        let id = self.id;
        let a = self.vm.action(id, "proxy_on_request_trailers", (id, n));
        self.request.actions.push(a);
        self.request.ended = true;
        match a {
            // Continuing at the trailers lets go of the held headers and body too.
            Action::Continue => {
                if self.request.headers_held {
                    self.send_request_headers();
                }
                if let Some(held) = self.request.held.take() {
                    self.request.sent.extend_from_slice(&held);
                }
            }
            Action::Pause => self.request.stalled = true,
        }
        a
    }

    pub fn response_headers(&mut self, headers: Headers, end_of_stream: bool) -> Action {
        let n = headers.len() as u32;
        self.state().response_headers = Some(headers);
        let id = self.id;
        let a = self.vm.action(
            id,
            "proxy_on_response_headers",
            (id, n, u32::from(end_of_stream)),
        );
        self.response.actions.push(a);
        self.response.ended = end_of_stream;
        match a {
            Action::Continue => self.send_response_headers(),
            Action::Pause => {
                self.response.headers_held = true;
                self.response.stalled = end_of_stream;
            }
        }
        a
    }

    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        let buf = match self.response.held.take() {
            Some(mut held) => {
                held.extend_from_slice(chunk);
                held
            }
            None => chunk.to_vec(),
        };
        let size = buf.len() as u32;
        self.state().response_body = Some(buf);
        let id = self.id;
        let a = self.vm.action(
            id,
            "proxy_on_response_body",
            (id, size, u32::from(end_of_stream)),
        );
        self.response.actions.push(a);
        self.response.ended = end_of_stream;
        let buf = self.state().response_body.take().unwrap_or_default();
        match a {
            Action::Continue => {
                if self.response.headers_held {
                    self.send_response_headers();
                }
                self.response.sent.extend_from_slice(&buf);
            }
            Action::Pause => {
                self.response.stalled = end_of_stream || buf.len() > self.buffer_limit;
                self.response.held = Some(buf);
            }
        }
        a
    }

    /// Response trailers: Envoy then sends no body callback with end of stream.
    pub fn response_trailers(&mut self, trailers: Headers) -> Action {
        let n = trailers.len() as u32;
        self.state().response_trailers = Some(trailers);
        let id = self.id;
        let a = self.vm.action(id, "proxy_on_response_trailers", (id, n));
        self.response.actions.push(a);
        self.response.ended = true;
        match a {
            Action::Continue => {
                if self.response.headers_held {
                    self.send_response_headers();
                }
                if let Some(held) = self.response.held.take() {
                    self.response.sent.extend_from_slice(&held);
                }
            }
            Action::Pause => self.response.stalled = true,
        }
        a
    }

    /// A reply Envoy makes itself (no upstream response): it runs the response callbacks.
    pub fn envoy_local_reply(&mut self, status: u32, body: &str) {
        self.local_reply = Some(LocalResponse {
            status,
            details: String::new(),
            body: body.as_bytes().to_vec(),
            headers: Headers::new(),
            grpc_status: -1,
        });
        self.deliver_local_reply();
    }

    /// Plays a local reply the filter asked for, once.
    fn play_local_reply(&mut self) {
        if self.local_reply.is_some() {
            return;
        }
        let Some(reply) = self.state().local_response.clone() else {
            return;
        };
        self.local_reply = Some(reply);
        self.deliver_local_reply();
    }

    fn deliver_local_reply(&mut self) {
        let Some(reply) = self.local_reply.clone() else {
            return;
        };
        let mut headers = Headers::new()
            .with(":status", &reply.status.to_string())
            .with("content-type", "text/plain");
        for (k, v) in &reply.headers.0 {
            headers.add(k, v);
        }
        if !reply.body.is_empty() {
            headers.set("content-length", reply.body.len().to_string().as_bytes());
        }
        self.response = Side::default();
        if reply.body.is_empty() {
            self.response_headers(headers, true);
        } else {
            self.response_headers(headers, false);
            self.response_body(&reply.body, true);
        }
    }

    /// `on_log`, then `on_done` and `on_delete`: the stream is over (normally or by reset).
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let id = self.id;
        // What the filter left for the access loggers. Envoy runs them after `on_log`;
        // nginx's access log runs before ngx_wasm_module's log-phase handler, so there only
        // what was set before `on_log` is logged (and only nginx variables: `$tokenmeter`).
        match self.vm.manners() {
            Manners::Envoy => {
                self.vm.call::<u32, ()>(id, "proxy_on_log", id);
                let key = vec!["tokenmeter".to_string()];
                self.access_log = self.state().properties.get(&key).cloned();
            }
            Manners::Ngx => {
                let key = vec!["ngx".to_string(), "tokenmeter".to_string()];
                self.access_log = self.state().properties.get(&key).cloned();
                self.vm.call::<u32, ()>(id, "proxy_on_log", id);
            }
        }
        self.vm.finish_context(id);
    }

    /// The `proxy_continue_stream` calls the filter made, by stream type.
    pub fn continued(&mut self) -> Vec<u32> {
        self.state().continued.clone()
    }

    /// Resumes what the filter continued since the last look (after a callback outside the
    /// stream's own, such as a callout's response): Envoy then lets go of the held headers
    /// and body.
    pub fn apply_continues(&mut self) {
        let continued = self.continued();
        for kind in continued.iter().skip(self.continues_seen) {
            let (side, request) = match *kind {
                stream_type::REQUEST => (&mut self.request, true),
                stream_type::RESPONSE => (&mut self.response, false),
                _ => continue,
            };
            let held_headers = side.headers_held;
            if let Some(held) = side.held.take() {
                side.sent.extend_from_slice(&held);
            }
            side.stalled = false;
            if held_headers {
                if request {
                    self.send_request_headers();
                } else {
                    self.send_response_headers();
                }
            }
        }
        self.continues_seen = continued.len();
    }

    pub fn upstream_headers(&self) -> Option<&Headers> {
        self.request.headers_sent.as_ref()
    }

    pub fn upstream_body(&self) -> &[u8] {
        &self.request.sent
    }

    pub fn client_headers(&self) -> Option<&Headers> {
        self.response.headers_sent.as_ref()
    }

    pub fn client_body(&self) -> &[u8] {
        &self.response.sent
    }

    pub fn request_actions(&self) -> &[Action] {
        &self.request.actions
    }

    pub fn response_actions(&self) -> &[Action] {
        &self.response.actions
    }

    /// The request ended while the filter held it: Envoy would wait for a continue.
    pub fn request_stalled(&self) -> bool {
        self.request.stalled
    }

    pub fn response_stalled(&self) -> bool {
        self.response.stalled
    }

    /// Edits the filter made to headers that had already gone on.
    pub fn late_edits(&mut self) -> Vec<String> {
        self.state().late_edits.clone()
    }

    pub fn request_continued(&mut self) -> bool {
        self.continued().contains(&stream_type::REQUEST)
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.finish();
            self.vm.take_stream(self.id);
        }
    }
}
