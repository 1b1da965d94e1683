//! Whole exchanges in one call: a request and an upstream response, cut into body chunks
//! where the test says, ended the way the test says, with what each side received.

use super::abi::Action;
use super::state::{Headers, LocalResponse};
use super::stream::Stream;
use super::vm::Vm;

/// How a body's last callback arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The chunks, then an empty `(0, end_of_stream)` call (Envoy's usual shape).
    EmptyEnd,
    /// The last chunk carries end of stream.
    OnLastChunk,
    /// Trailers end the stream; no body call carries end of stream.
    Trailers(Headers),
    /// The stream is reset before it ends: only `on_log` and `on_done` follow.
    Reset,
}

/// A client request.
#[derive(Debug, Clone)]
pub struct Call {
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Offsets where the body is cut into chunks.
    pub cuts: Vec<usize>,
    pub ending: Ending,
}

impl Call {
    /// A POST with Envoy's pseudo-headers and the headers Envoy adds before filters run.
    pub fn post(path: &str, body: &[u8]) -> Call {
        Call {
            headers: request_headers("POST", path, body.len()),
            body: body.to_vec(),
            cuts: Vec::new(),
            ending: Ending::OnLastChunk,
        }
    }

    pub fn method(mut self, method: &str) -> Call {
        self.headers.set(":method", method.as_bytes());
        self
    }

    pub fn header(mut self, key: &str, value: &str) -> Call {
        self.headers.add(key, value.as_bytes());
        self
    }

    pub fn cuts(mut self, cuts: &[usize]) -> Call {
        self.cuts = cuts.to_vec();
        self
    }

    pub fn ending(mut self, ending: Ending) -> Call {
        self.ending = ending;
        self
    }
}

/// Envoy's request headers for a client request: pseudo-headers first.
pub fn request_headers(method: &str, path: &str, content_length: usize) -> Headers {
    let mut h = Headers::new()
        .with(":authority", "llm.example.com")
        .with(":path", path)
        .with(":method", method)
        .with(":scheme", "http")
        .with("user-agent", "OpenAI/Python 1.59.7")
        .with("accept", "application/json")
        .with("content-type", "application/json");
    if content_length > 0 {
        h.add("content-length", content_length.to_string().as_bytes());
    }
    h.with("x-forwarded-proto", "http")
        .with("x-request-id", "5f1c3a2e-8d4b-4e7f-9a61-2b0c7d9e4f13")
}

/// An upstream response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub cuts: Vec<usize>,
    pub ending: Ending,
}

impl Reply {
    /// A JSON answer with its length, as an OpenAI-style upstream sends it.
    pub fn json(status: u16, body: &[u8]) -> Reply {
        Reply {
            headers: Headers::new()
                .with(":status", &status.to_string())
                .with("content-type", "application/json")
                .with("content-length", &body.len().to_string())
                .with("openai-processing-ms", "412")
                .with("date", "Thu, 01 Jan 2026 00:00:00 GMT")
                .with("x-envoy-upstream-service-time", "415"),
            body: body.to_vec(),
            cuts: Vec::new(),
            ending: Ending::EmptyEnd,
        }
    }

    /// A server-sent event stream (chunked, no length).
    pub fn sse(body: &[u8]) -> Reply {
        Reply {
            headers: Headers::new()
                .with(":status", "200")
                .with("content-type", "text/event-stream; charset=utf-8")
                .with("cache-control", "no-cache")
                .with("date", "Thu, 01 Jan 2026 00:00:00 GMT")
                .with("x-envoy-upstream-service-time", "180"),
            body: body.to_vec(),
            cuts: Vec::new(),
            ending: Ending::EmptyEnd,
        }
    }

    pub fn header(mut self, key: &str, value: &str) -> Reply {
        self.headers.set(key, value.as_bytes());
        self
    }

    pub fn without(mut self, key: &str) -> Reply {
        self.headers.remove(key);
        self
    }

    pub fn cuts(mut self, cuts: &[usize]) -> Reply {
        self.cuts = cuts.to_vec();
        self
    }

    pub fn ending(mut self, ending: Ending) -> Reply {
        self.ending = ending;
        self
    }
}

/// What each side saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub context: u32,
    pub upstream_headers: Option<Headers>,
    pub upstream_body: Vec<u8>,
    pub client_headers: Option<Headers>,
    pub client_body: Vec<u8>,
    pub request_actions: Vec<Action>,
    pub response_actions: Vec<Action>,
    pub request_stalled: bool,
    pub response_stalled: bool,
    pub late_edits: Vec<String>,
    pub local_reply: Option<LocalResponse>,
    /// The access-log summary the filter set (`tokenmeter` stream property).
    pub access_log: Option<Vec<u8>>,
}

impl Outcome {
    /// Nothing stalled and no edit came too late: what any exchange must satisfy.
    pub fn assert_flowed(&self) {
        assert!(!self.request_stalled, "the request stalled: {self:#?}");
        assert!(!self.response_stalled, "the response stalled: {self:#?}");
        assert!(
            self.late_edits.is_empty(),
            "headers edited after they went on: {:?}",
            self.late_edits
        );
    }

    pub fn upstream_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.upstream_body).unwrap_or_else(|e| {
            panic!(
                "upstream body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.upstream_body)
            )
        })
    }
}

/// Chunks of `body` cut at `cuts` (out-of-range and repeated cuts are ignored).
pub fn chunks<'b>(body: &'b [u8], cuts: &[usize]) -> Vec<&'b [u8]> {
    let mut out = Vec::new();
    let mut last = 0;
    let mut sorted: Vec<usize> = cuts.iter().copied().filter(|c| *c < body.len()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    for c in sorted {
        if c > last {
            out.push(&body[last..c]);
            last = c;
        }
    }
    if last < body.len() {
        out.push(&body[last..]);
    }
    out
}

/// Delivers a body in chunks and its ending (stopping at a local reply).
fn deliver(s: &mut Stream<'_>, body: &[u8], cuts: &[usize], ending: &Ending, request: bool) {
    let parts = chunks(body, cuts);
    let n = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let eos = *ending == Ending::OnLastChunk && i + 1 == n;
        if request {
            s.request_body(part, eos);
        } else {
            s.response_body(part, eos);
        }
        if s.local_reply.is_some() {
            return;
        }
    }
    match ending {
        Ending::EmptyEnd => {
            if request {
                s.request_body(&[], true);
            } else {
                s.response_body(&[], true);
            }
        }
        Ending::OnLastChunk if n == 0 => {
            // An empty body still ends with an end-of-stream call.
            if request {
                s.request_body(&[], true);
            } else {
                s.response_body(&[], true);
            }
        }
        Ending::Trailers(t) => {
            if request {
                s.request_trailers(t.clone());
            } else {
                s.response_trailers(t.clone());
            }
        }
        Ending::OnLastChunk | Ending::Reset => {}
    }
}

/// Runs one whole exchange on `vm`: request, upstream reply (unless the request was
/// answered locally or stalled), `on_log`, `on_done`.
pub fn run(vm: &mut Vm, call: &Call, reply: &Reply) -> Outcome {
    let mut s = Stream::new(vm);
    let request_ends_at_headers = call.body.is_empty() && call.ending != Ending::Reset;
    s.request_headers(call.headers.clone(), request_ends_at_headers);
    if !request_ends_at_headers && s.local_reply.is_none() {
        deliver(&mut s, &call.body, &call.cuts, &call.ending, true);
    }
    if s.local_reply.is_none() && !s.request_stalled() && call.ending != Ending::Reset {
        let ends_at_headers =
            reply.body.is_empty() && matches!(reply.ending, Ending::EmptyEnd | Ending::OnLastChunk);
        s.response_headers(reply.headers.clone(), ends_at_headers);
        if !ends_at_headers {
            deliver(&mut s, &reply.body, &reply.cuts, &reply.ending, false);
        }
    }
    let late_edits = s.late_edits();
    s.finish();
    Outcome {
        context: s.id,
        upstream_headers: s.upstream_headers().cloned(),
        upstream_body: s.upstream_body().to_vec(),
        client_headers: s.client_headers().cloned(),
        client_body: s.client_body().to_vec(),
        request_actions: s.request_actions().to_vec(),
        response_actions: s.response_actions().to_vec(),
        request_stalled: s.request_stalled(),
        response_stalled: s.response_stalled(),
        late_edits,
        local_reply: s.local_reply.clone(),
        access_log: s.access_log.clone(),
    }
}
