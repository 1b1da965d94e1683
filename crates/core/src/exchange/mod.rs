//! One metered request and its response, from request headers to settlement.
//!
//! The host glue feeds headers and body chunks in as they pass and asks for a
//! [`Settlement`] when the exchange ends, however it ends. Nothing here talks to the host
//! directly: properties are read through [`Properties`] and times are passed in, so the whole
//! flow is testable natively.
//!
//! Request side: the body is copied (bounded). For a streamed chat or completions request
//! that lacks `stream_options.include_usage`, the glue holds the request body until it is
//! complete (only up to `max_body_bytes`) and [`Exchange::request_complete`] may return a
//! rewritten body that asks for usage.
//!
//! Response side ([`response`]): JSON bodies are copied (bounded) and read at the end; event
//! streams are parsed as they pass ([`StreamMeter`]); gzip and deflate are decoded on a
//! copy. When usage was injected, the stream editor hands back each chunk without what the
//! client did not ask for. Without reported usage, tokens are estimated
//! ([`crate::tokens::estimate`]). At settlement each body is parsed once at most
//! ([`bodies`]).
//!
//! When to call what is the [`driver`]'s business; this type only records and reads. The
//! folder may import every other folder of the core; nothing below it imports it, except
//! [`crate::series::metrics`], which turns a [`Settlement`] into points.

pub mod access_log;
mod bodies;
pub mod driver;
pub mod handoff;
pub mod host;
mod response;
pub mod settlement;
mod values;

use std::rc::Rc;

use crate::body::budget::{Budget, Lease};
use crate::body::capture::{Capture, Captured};
use crate::body::decode::Coding;
use crate::config::collect::{CollectConfig, ContextSource};
use crate::config::Config;
use crate::openai::api::{self, Endpoint};
use crate::openai::usage::{Usage, UsageSource};
use crate::records::collect;
use crate::records::record::Record;
use crate::series::cardinality::Cardinality;
use crate::series::dimensions::{self, subscription_id, Derived, Source, ValueSpec};
use crate::stream::inject;
use crate::stream::meter::StreamMeter;
use crate::tokens::tokenizer::Encoding;
use bodies::{RequestBody, ResponseBody};
pub use host::Properties;
use response::Reader;
pub use settlement::{error_type, inferred_error_type, Settlement};

/// What an injected stream's edit may take of the VM's memory budget at most.
const INJECTION_BYTES: usize = crate::body::decode::DECODER_BYTES
    + crate::body::decode::ENCODER_BYTES
    + 2 * crate::stream::editor::HOLD_LIMIT;

/// Stream usage injection, from request headers to the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// Not a candidate: the body is not held.
    No,
    /// A candidate: the glue holds the request body until it is complete.
    Pending,
    /// Usage was added to the request; the response is edited.
    Injected,
    /// Looked at and left alone (not a stream, already asks for usage, too large, a rule).
    Declined,
}

#[derive(Debug)]
pub struct Exchange {
    endpoint: Endpoint,
    path: String,
    route: Option<String>,
    /// Per dimension: the request or response header value it reads, once seen.
    header_values: Vec<Option<String>>,
    subscription: Option<String>,
    request: Capture,
    injection: Injection,
    response: Reader,
    status: Option<u16>,
    started_ms: u64,
    first_content_ms: Option<u64>,
    settled: bool,
    /// The response reached its end (end of stream or trailers) rather than being cut off.
    complete: bool,
    /// The request's `stream` and `stream_options`, once read for injection.
    stream_request: Option<inject::StreamRequest>,
    /// Set when the request is sampled for an inference record.
    sample: Option<Sample>,
    /// This exchange's share of the VM's memory budget; its buffers hold siblings of it.
    lease: Lease,
    /// The response's first bytes decide whether it is the event stream that was asked for.
    sniff: bool,
    /// The encoding last found and the model it was found for: finding it scans a table of
    /// prefixes, and a stream needs it for every chunk.
    encoding: Option<(String, Encoding)>,
}

/// The time in milliseconds, read when needed: a host's clock is a call, a test's a number.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

impl Clock for u64 {
    fn now_ms(&self) -> u64 {
        *self
    }
}

impl<F: Fn() -> u64> Clock for F {
    fn now_ms(&self) -> u64 {
        self()
    }
}

/// Whether a body starts as server-sent events do (a field name or a comment line).
fn looks_like_event_stream(body: &[u8]) -> bool {
    let start = crate::body::jsonscan::skip_ws(body, 0);
    let rest = body.get(start..).unwrap_or_default();
    [&b"data:"[..], b"event:", b"id:", b"retry:", b":"]
        .iter()
        .any(|f| rest.starts_with(f))
}

#[derive(Debug)]
struct Sample {
    id: String,
    /// The context column, when it comes from a request header.
    context_header: Option<String>,
}

/// Response header changes the glue must make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseHeaderEdits {
    /// The body will be edited: its length changes.
    pub remove_content_length: bool,
}

impl Exchange {
    /// Starts metering when the request is an LLM call; `None` lets it pass uncounted.
    /// `header` looks up a request header by lower-case name; `now_ms` is the host clock.
    /// Every byte the exchange keeps is leased from `budget`, the VM's.
    pub fn start(
        config: &Config,
        budget: &Rc<Budget>,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<String>,
        host: &dyn Properties,
        now_ms: u64,
    ) -> Option<Exchange> {
        let endpoint = api::classify(method, path)?;
        let header_values = config
            .dimensions
            .iter()
            .map(|d| match &d.dimension.value {
                ValueSpec::Source {
                    source: Source::RequestHeader(name),
                    ..
                } => header(name),
                _ => None,
            })
            .collect();
        let needs_subscription = config
            .dimensions
            .iter()
            .any(|d| d.dimension.value == ValueSpec::Derived(Derived::Subscription));
        let subscription = if needs_subscription {
            values::credential(&header).map(|secret| subscription_id(&secret))
        } else {
            None
        };
        let injection = if config.may_inject(endpoint.operation) {
            Injection::Pending
        } else {
            Injection::No
        };
        let sample = config.collect.as_ref().and_then(|c| {
            if endpoint.operation == api::Operation::Embeddings {
                return None;
            }
            let id = header("x-request-id")
                .filter(|id| !id.is_empty())
                .or_else(|| {
                    host.property(&["request".to_string(), "id".to_string()])
                        .and_then(|b| dimensions::property_text(&b))
                })?;
            if !collect::sampled(&id, c.sample_rate) {
                return None;
            }
            let context_header = match &c.context {
                ContextSource::RequestHeader(h) => header(h),
                _ => None,
            };
            Some(Sample { id, context_header })
        });
        let route = if config.stream_usage_rules.iter().any(|r| r.route.is_some()) {
            host.property(&["xds".to_string(), "route_name".to_string()])
                .and_then(|b| dimensions::property_text(&b))
        } else {
            None
        };
        let lease = Lease::new(budget);
        Some(Exchange {
            endpoint,
            path: path.to_string(),
            route,
            header_values,
            subscription,
            request: Capture::within(config.max_body_bytes, lease.for_request()),
            injection,
            response: Reader::new(config.max_body_bytes, lease.sibling()),
            lease,
            sniff: false,
            encoding: None,
            status: None,
            started_ms: now_ms,
            first_content_ms: None,
            settled: false,
            complete: false,
            stream_request: None,
            sample,
        })
    }

    /// Whether the exchange is sampled for an inference record.
    pub fn is_sampled(&self) -> bool {
        self.sample.is_some()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn injection(&self) -> Injection {
        self.injection
    }

    /// Whether the glue should hold the request body until it is complete (and at most
    /// `max_body_bytes` of it).
    pub fn holds_request_body(&self) -> bool {
        self.injection == Injection::Pending
    }

    /// Decides, at the request headers, whether to hold the body: only a candidate for
    /// injection whose `content-length` is known and at most `max` (so the host's buffer
    /// limit never refuses it, whatever the reads), with room for its whole copy in the VM's
    /// memory budget. Otherwise the request passes unchanged and is not injected.
    pub fn hold_request(&mut self, length: Option<usize>, max: usize) -> bool {
        if self.injection != Injection::Pending {
            return false;
        }
        let held = length.is_some_and(|n| n <= max && self.request.reserve_whole(n));
        if !held {
            self.injection = Injection::Declined;
        }
        held
    }

    /// A request body chunk as it arrives, whether it passes or is held: the glue hands
    /// each new piece over at once, so nothing depends on the host's buffer later.
    pub fn on_request_body(&mut self, chunk: &[u8]) {
        self.request.push(chunk);
    }

    /// The held request body passes on as it is (it grew past the holding limit, or ended
    /// with trailers).
    pub fn release_request(&mut self) {
        if self.injection == Injection::Pending {
            self.injection = Injection::Declined;
        }
    }

    /// The held request body is complete. Returns the body to send instead, when usage is
    /// added.
    pub fn request_complete(&mut self, config: &Config) -> Option<Vec<u8>> {
        if self.injection != Injection::Pending {
            return None;
        }
        self.injection = Injection::Declined;
        // Held bodies stay within `max_body_bytes`, so the capture is whole.
        let Captured::Whole(body) = self.request.captured() else {
            return None;
        };
        let model = crate::body::jsonscan::field_in_head::<String>(body, "model");
        if !config.injects_for(self.route.as_deref(), &self.path, model.as_deref()) {
            return None;
        }
        let req = inject::read_stream_request(body)?;
        self.stream_request = Some(req);
        // What editing the response back may take (a compressed stream's decoder and
        // encoder, a held line and member): without room for it, no injection.
        if !self.lease.has_room(INJECTION_BYTES) {
            self.lease.refuse();
            return None;
        }
        let rewritten = inject::request_usage_for(body, req)?;
        self.injection = Injection::Injected;
        Some(rewritten)
    }

    /// The host would not take the rewritten body: the request went on as it was.
    pub fn injection_failed(&mut self) {
        if self.injection == Injection::Injected {
            self.injection = Injection::Declined;
        }
    }

    /// `header` looks up a response header by lower-case name.
    pub fn on_response_headers(
        &mut self,
        config: &Config,
        status: Option<u16>,
        header: impl Fn(&str) -> Option<String>,
    ) -> ResponseHeaderEdits {
        self.status = status;
        for (slot, d) in self.header_values.iter_mut().zip(&config.dimensions) {
            if let ValueSpec::Source {
                source: Source::ResponseHeader(name),
                ..
            } = &d.dimension.value
            {
                *slot = header(name);
            }
        }
        let coding = Coding::from_header(header("content-encoding").as_deref());
        let event_stream = header("content-type").is_some_and(|t| {
            t.trim()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
        let readable = match coding {
            Coding::Identity => true,
            Coding::Gzip | Coding::Deflate => config.decompress,
            Coding::Unsupported => false,
        };
        let meter = (readable && event_stream).then(|| self.stream_meter(config));
        // An injected stream is edited; a compressed one is decoded, edited and compressed
        // again in the same coding.
        let edit = self.injection == Injection::Injected;
        // An injected request's answer labelled as something else may still be the event
        // stream asked for (seen as `application/json`): its first bytes tell. Only without a
        // length, which could not be taken off once the headers are gone.
        self.sniff = edit
            && coding == Coding::Identity
            && !event_stream
            && matches!(status, Some(200..=299))
            && header("content-length").is_none();
        self.response = Reader::for_response(
            coding,
            readable,
            meter,
            edit,
            config.max_body_bytes,
            &self.lease,
        );
        ResponseHeaderEdits {
            remove_content_length: self.response.is_edited(),
        }
    }

    fn stream_meter(&self, config: &Config) -> StreamMeter {
        let mut meter = StreamMeter::within(
            self.endpoint.operation,
            config.max_event_bytes,
            self.lease.sibling(),
        );
        if let (Some(_), Some(c)) = (&self.sample, &config.collect) {
            meter.collect_answer(c.max_record_bytes);
        } else if self.usage_expected() {
            meter.expect_usage(config.max_body_bytes);
        }
        meter
    }

    /// Whether the stream was asked for its usage (by the client, or by tokenmeter).
    fn usage_expected(&self) -> bool {
        if self.injection == Injection::Injected {
            return true;
        }
        let req = match (self.stream_request, self.request.captured()) {
            (Some(req), _) => Some(req),
            (None, Captured::Whole(body)) => inject::read_stream_request(body),
            (None, Captured::Edges { .. }) => None,
        };
        req.is_some_and(|r| r.stream && r.include_usage)
    }

    /// Whether response body chunks are worth passing to [`Exchange::on_response_body`].
    pub fn wants_response_body(&self) -> bool {
        self.response.reads() && !self.settled
    }

    /// A response body chunk. Returns the bytes to send instead, when the stream is edited.
    /// The clock is read only for the chunk that brings the first content.
    pub fn on_response_body(
        &mut self,
        config: &Config,
        chunk: &[u8],
        now_ms: impl Clock,
    ) -> Option<Vec<u8>> {
        if !self.wants_response_body() {
            return None;
        }
        if self.sniff && !chunk.is_empty() {
            self.sniff = false;
            if looks_like_event_stream(chunk) {
                let meter = self.stream_meter(config);
                self.response = Reader::for_response(
                    Coding::Identity,
                    true,
                    Some(meter),
                    true,
                    config.max_body_bytes,
                    &self.lease,
                );
            }
        }
        let encoding = self.encoding(config);
        let fed = self.response.feed(chunk, encoding);
        if fed.saw_content && self.first_content_ms.is_none() {
            self.first_content_ms = Some(now_ms.now_ms());
        }
        fed.replacement
    }

    /// The end of the response body. Returns bytes still held by the editor, to send last.
    pub fn on_response_end(&mut self) -> Option<Vec<u8>> {
        self.complete = true;
        self.response.end()
    }

    /// The response ended without a body, or with trailers.
    pub fn response_complete(&mut self) {
        self.complete = true;
    }

    pub fn is_settled(&self) -> bool {
        self.settled
    }

    /// The encoding for counting this exchange's text, by the best model known so far.
    fn encoding(&mut self, config: &Config) -> Encoding {
        let model = self.response.meter().and_then(|m| m.model.as_deref());
        match (&self.encoding, model) {
            (Some((known, e)), Some(m)) if known == m => *e,
            (_, None) => config.encodings.for_model(None),
            (_, Some(m)) => {
                let e = config.encodings.for_model(Some(m));
                self.encoding = Some((m.to_string(), e));
                e
            }
        }
    }

    /// Computes the outcome once; later calls return `None`, so every ending path of the
    /// host (end of stream, trailers, log) can call it safely.
    ///
    /// Each body is parsed once at most (see [`bodies`] for two rare exceptions): what the
    /// response says comes first, since it decides whether the request's text must be
    /// counted.
    pub fn settle(
        &mut self,
        config: &Config,
        host: &dyn Properties,
        cardinality: &mut Cardinality,
        now_ms: u64,
    ) -> Option<Settlement> {
        if self.settled {
            return None;
        }
        self.settled = true;
        let op = self.endpoint.operation;
        let status_ok = self.status.is_some_and(|s| (200..300).contains(&s));
        let streamed = self.response.is_stream();
        let decoding_failed = self.response.decoding_failed();
        let sampled = self.sample.is_some() && config.collect.is_some();
        let response_dims = needs_body_json(config, |s| matches!(s, Source::ResponseBody(_)));
        let (copy, mut meter) = self.response.parts();
        let whole_json = matches!(copy, Some(Captured::Whole(_)));
        let response = ResponseBody::read(copy, response_dims || sampled, status_ok);
        let mut usage = response.facts.usage;
        // Whether tokens may have to be counted: then the request's tree is wanted. (A
        // stream's usage, once seen, stays; `finish` below can only add it.)
        let may_estimate = status_ok
            && !decoding_failed
            && !response.facts.error
            && usage.is_none()
            && (streamed || whole_json)
            && meter.as_ref().is_none_or(|m| m.usage.is_none());
        let request_dims = needs_body_json(config, |s| matches!(s, Source::RequestBody(_)));
        let request = RequestBody::read(
            self.request.captured(),
            request_dims || sampled || may_estimate,
        );
        let stream_model = meter.as_ref().and_then(|m| m.model.clone());
        let response_model = stream_model
            .clone()
            .or_else(|| response.facts.model.clone());
        let model = response_model
            .clone()
            .or_else(|| request.model.clone())
            .or_else(|| self.endpoint.deployment.clone());
        let enc = config.encodings.for_model(model.as_deref());
        if let Some(m) = meter.as_mut() {
            m.finish(enc);
            usage = m.usage;
        }
        // A later instance in the chain may have asked for this stream's usage and hidden
        // it before this one saw the response: it left the usage behind.
        if usage.is_none() && streamed && status_ok && config.host.shares_stream_properties() {
            usage = host
                .property(&[handoff::PROPERTY.to_string()])
                .and_then(|b| handoff::decode(&b));
        }
        // Estimate only a successful exchange that produced a response the filter could
        // read: a stream, or an answer that is a JSON object (not an error page or a
        // cut-off body).
        if usage.is_none()
            && !response.facts.error
            && status_ok
            && !decoding_failed
            && (streamed || response.is_object())
        {
            let prompt = request.prompt_tokens(op, enc, self.request.total());
            let completion = match meter.as_mut() {
                Some(m) => m.estimated_completion(enc),
                None => response.completion_tokens(op, enc),
            };
            usage = Some(Usage {
                prompt,
                completion,
                total: prompt + completion,
                cached: None,
                reasoning: None,
                audio_prompt: None,
                audio_completion: None,
                source: UsageSource::Estimated,
            });
        }
        let facts = values::Facts {
            endpoint: &self.endpoint,
            header_values: &self.header_values,
            subscription: self.subscription.as_deref(),
            request: &request,
            model: model.as_deref(),
            response_model: response_model.as_deref(),
            usage: usage.as_ref(),
            response_json: if response_dims { response.tree() } else { None },
            host,
        };
        let mut labels = Vec::with_capacity(config.dimensions.len());
        let mut folded = Vec::new();
        for (i, d) in config.dimensions.iter().enumerate() {
            let admitted = cardinality.admit(i, d, facts.value(i, d));
            if admitted.folded {
                folded.push(i);
            }
            labels.push(admitted.value);
        }
        cardinality.admit_series(config, &mut labels, &mut folded);
        // A complete response with a success status needs no explanation; asking the host
        // costs a returned value, the dearest kind of host call.
        let success = self.complete && matches!(self.status, Some(100..=399));
        let error = if success {
            None
        } else if config.host.has_code_details() {
            let details = host
                .property(&["response".to_string(), "code_details".to_string()])
                .and_then(|b| String::from_utf8(b).ok());
            error_type(self.status, details.as_deref())
        } else {
            // The status the host logs (nginx: 499 when the client hung up) tells what
            // Envoy's code details would have.
            let text = |path: [&str; 2]| {
                host.property(&path.map(str::to_string))
                    .and_then(|b| dimensions::property_text(&b))
            };
            let logged = text(["response", "code"]).and_then(|t| t.trim().parse::<u16>().ok());
            // nginx's `$upstream_header_time` is "-" or empty unless an upstream answered;
            // tries are separated by ", " and internal redirects by " : ".
            let answered = text(["ngx", "upstream_header_time"])
                .is_some_and(|t| t.split([',', ':']).any(|t| t.trim().parse::<f64>().is_ok()));
            inferred_error_type(self.status, logged, self.complete, answered)
        };
        let ttft_ms = self
            .first_content_ms
            .map(|t| t.saturating_sub(self.started_ms));
        let duration_ms = now_ms.saturating_sub(self.started_ms);
        let record = match (&self.sample, &config.collect) {
            (Some(sample), Some(c)) => {
                let base = Record {
                    id: sample.id.clone(),
                    time: Some(
                        humantime::format_rfc3339_millis(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms),
                        )
                        .to_string(),
                    ),
                    model: model.clone(),
                    operation: Some(op.as_str().to_string()),
                    route: host
                        .property(&["xds".to_string(), "route_name".to_string()])
                        .and_then(|b| dimensions::property_text(&b)),
                    dimensions: collect::record_dimensions(
                        config.label_names().zip(labels.iter().map(String::as_str)),
                    ),
                    usage: collect::record_usage(usage.as_ref()),
                    status: self.status,
                    duration_ms: Some(duration_ms),
                    ttft_ms,
                    sample_rate: Some(c.sample_rate),
                    truncated: false,
                    extra: Default::default(),
                };
                let answer = match meter.as_deref() {
                    Some(m) => m.answer().map_or((None, false), |(a, cut)| (Some(a), cut)),
                    None => response.answer(op),
                };
                Some(record(c, sample, op, &request, answer, base))
            }
            _ => None,
        };
        Some(Settlement {
            labels,
            folded,
            usage,
            status: self.status,
            streamed,
            duration_ms,
            ttft_ms,
            model,
            oversized_events: meter.as_deref().map_or(0, StreamMeter::oversized),
            error_type: error,
            record,
            over_budget: self.lease.was_refused(),
        })
    }
}

/// The record's JSON: question and context from the request, the answer from the stream
/// or the JSON response (and whether it was cut).
fn record(
    c: &CollectConfig,
    sample: &Sample,
    op: api::Operation,
    request: &RequestBody<'_>,
    (answer, cut): (Option<String>, bool),
    mut base: Record,
) -> String {
    let tree = request.tree();
    let context_header = |_: &str| sample.context_header.clone();
    base.truncated = cut || request.is_cut();
    let texts = collect::Texts {
        question: tree.and_then(|r| collect::question(op, r)),
        context: tree.and_then(|r| collect::context(&c.context, r, &context_header)),
        answer,
    };
    collect::record_json(c, base, texts)
}

/// Whether a dimension reads a body field of the kind `source` matches.
fn needs_body_json(config: &Config, source: impl Fn(&Source) -> bool) -> bool {
    config.dimensions.iter().any(|d| match &d.dimension.value {
        ValueSpec::Source { source: s, .. } => source(s),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::series::cardinality::LocalRegistry;

    struct FakeHost(HashMap<String, Vec<u8>>);

    impl Properties for FakeHost {
        fn property(&self, path: &[String]) -> Option<Vec<u8>> {
            self.0.get(&path.join(".")).cloned()
        }
    }

    fn host() -> FakeHost {
        FakeHost(HashMap::from([
            ("xds.route_name".to_string(), b"chat-route".to_vec()),
            ("xds.cluster_name".to_string(), b"openai".to_vec()),
        ]))
    }

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// An exchange that has seen its request, in chunks of `split` bytes.
    fn started(
        config: &Config,
        path: &str,
        req_headers: &[(&str, &str)],
        request: &str,
        split: usize,
    ) -> Exchange {
        let mut ex = Exchange::start(
            config,
            &Budget::unlimited(),
            "POST",
            path,
            headers(req_headers),
            &host(),
            0,
        )
        .unwrap();
        for chunk in request.as_bytes().chunks(split) {
            ex.on_request_body(chunk);
        }
        ex
    }

    fn run(
        config: &str,
        path: &str,
        req_headers: &[(&str, &str)],
        request: &str,
        resp_headers: &[(&str, &str)],
        response: &str,
        split: usize,
    ) -> Settlement {
        let config = Config::parse(config.as_bytes()).unwrap();
        let mut card = Cardinality::new(&config, Box::new(LocalRegistry::default()));
        let mut ex = started(&config, path, req_headers, request, split);
        ex.on_response_headers(&config, Some(200), headers(resp_headers));
        for chunk in response.as_bytes().chunks(split) {
            assert_eq!(ex.on_response_body(&config, chunk, 5), None);
        }
        let s = ex.settle(&config, &host(), &mut card, 10).unwrap();
        assert_eq!(
            ex.settle(&config, &host(), &mut card, 10),
            None,
            "settles once"
        );
        s
    }

    const CHAT_RESPONSE: &str = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;

    #[test]
    fn a_chat_exchange_settles_with_its_dimensions_for_any_chunking() {
        let config = r#"{"dimensions":[{"name":"API ID"},{"name":"Backend ID"},{"name":"Operation ID"},
            {"name":"model"},{"name":"User ID"},{"name":"Subscription ID"},{"name":"usage_source"},
            {"name":"team","value":"{request.header.x-team|none}"},
            {"name":"region","value":"{response.header.x-region}"},
            {"name":"project","value":"{request.body.metadata.project}"}]}"#;
        let request = r#"{"model":"gpt-4o","user":"u-7","metadata":{"project":"apollo"},"messages":[{"role":"user","content":"hi"}]}"#;
        for split in [1, 2, 7, 64, 10_000] {
            let s = run(
                config,
                "/v1/chat/completions",
                &[("x-team", "blue"), ("authorization", "Bearer sk-abc")],
                request,
                &[("x-region", "eu"), ("content-type", "application/json")],
                CHAT_RESPONSE,
                split,
            );
            assert_eq!(
                s.labels,
                [
                    "chat-route",
                    "openai",
                    "chat.completions",
                    "gpt-4o-2024-08-06",
                    "u-7",
                    &subscription_id("sk-abc"),
                    "reported",
                    "blue",
                    "eu",
                    "apollo",
                ],
                "split {split}"
            );
            let u = s.usage.unwrap();
            assert_eq!((u.prompt, u.completion, u.total), (12, 5, 17));
            assert_eq!(s.status, Some(200));
        }
    }

    #[test]
    fn model_falls_back_to_request_then_azure_deployment() {
        let config = r#"{"dimensions":[{"name":"model"},{"name":"usage_source"},{"name":"team","value":"{request.header.x-team}"}]}"#;
        let err = r#"{"error":{"message":"nope"}}"#;
        let s = run(
            config,
            "/v1/chat/completions",
            &[],
            r#"{"model":"gpt-4o"}"#,
            &[],
            err,
            100,
        );
        assert_eq!(s.labels, ["gpt-4o", "none", "unknown"]);
        assert_eq!(s.usage, None);
        let s = run(
            config,
            "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21",
            &[],
            r#"{"messages":[]}"#,
            &[],
            err,
            100,
        );
        assert_eq!(s.labels[0], "prod-4o");
        let s = run(config, "/v1/embeddings", &[], "not json", &[], "", 100);
        assert_eq!(s.labels[0], "unknown");
    }

    #[test]
    fn credentials_are_hashed_in_order_of_preference() {
        let config = r#"{"dimensions":[{"name":"Subscription ID"}]}"#;
        let sub = |h: &[(&str, &str)]| {
            run(config, "/v1/embeddings", h, "{}", &[], CHAT_RESPONSE, 50).labels[0].clone()
        };
        assert_eq!(
            sub(&[("api-key", "k1"), ("authorization", "Bearer k2")]),
            subscription_id("k1")
        );
        assert_eq!(
            sub(&[("authorization", "Bearer k2")]),
            subscription_id("k2")
        );
        assert_eq!(sub(&[("x-api-key", "k3")]), subscription_id("k3"));
        assert_eq!(sub(&[("authorization", "  ")]), "unknown");
        assert_eq!(subscription_id("k1").len(), 12);
        assert_ne!(subscription_id("k1"), subscription_id("k2"));
    }

    #[test]
    fn bodies_that_cannot_be_read_are_counted_without_tokens() {
        let config = r#"{"dimensions":[{"name":"usage_source"}]}"#;
        // Brotli is not decoded; a body that claims gzip but is not stops decoding.
        for coding in ["br", "gzip"] {
            let s = run(
                config,
                "/v1/chat/completions",
                &[],
                "{}",
                &[("content-encoding", coding)],
                CHAT_RESPONSE,
                30,
            );
            assert_eq!(s.usage, None, "{coding}");
            assert_eq!(s.labels, ["none"], "{coding}");
        }
        let s = run(
            config,
            "/v1/chat/completions",
            &[],
            "{}",
            &[("content-encoding", "identity")],
            CHAT_RESPONSE,
            30,
        );
        assert_eq!(s.usage.unwrap().source, UsageSource::Reported);
    }

    #[test]
    fn error_types() {
        assert_eq!(error_type(Some(200), Some("via_upstream")), None);
        assert_eq!(
            error_type(Some(429), Some("via_upstream")),
            Some("rate_limited")
        );
        assert_eq!(error_type(Some(404), None), Some("client_error"));
        assert_eq!(
            error_type(Some(502), Some("via_upstream")),
            Some("upstream_error")
        );
        assert_eq!(
            error_type(Some(504), Some("upstream_response_timeout")),
            Some("timeout")
        );
        assert_eq!(
            error_type(
                Some(503),
                Some("upstream_reset_before_response_started{remote_reset}")
            ),
            Some("upstream_reset")
        );
        assert_eq!(
            error_type(
                Some(200),
                Some("upstream_reset_after_response_started{remote_reset}")
            ),
            Some("upstream_reset")
        );
        assert_eq!(
            error_type(Some(200), Some("downstream_remote_disconnect")),
            Some("client_cancelled")
        );
        assert_eq!(error_type(None, None), Some("client_cancelled"));
    }

    #[test]
    fn a_reset_before_any_response_still_settles() {
        let config = Config::parse(br#"{"dimensions":[{"name":"model"}]}"#).unwrap();
        let mut card = Cardinality::new(&config, Box::new(LocalRegistry::default()));
        let mut ex = Exchange::start(
            &config,
            &Budget::unlimited(),
            "POST",
            "/v1/responses",
            headers(&[]),
            &host(),
            0,
        )
        .unwrap();
        ex.on_request_body(br#"{"model":"gpt-4.1","input":"hi"}"#);
        let s = ex.settle(&config, &host(), &mut card, 3).unwrap();
        assert_eq!(s.labels, ["gpt-4.1"]);
        assert_eq!(s.status, None);
        assert_eq!(s.usage, None);
    }

    /// A chat stream as OpenAI sends it when usage was requested, and the same stream as a
    /// client that did not ask receives it.
    fn recorded_stream() -> (String, String) {
        let chunk = |choices: &str, usage: &str| {
            format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_1\",\"choices\":{choices}{usage}}}\n\n")
        };
        let deltas = [
            r#"[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]"#,
            r#"[{"index":0,"delta":{"content":"Caf\u00e9 \ud83c\udf89 "},"logprobs":null,"finish_reason":null}]"#,
            r#"[{"index":0,"delta":{"content":"is open."},"logprobs":null,"finish_reason":null}]"#,
            r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#,
        ];
        let mut upstream = String::new();
        let mut client = String::new();
        for d in deltas {
            upstream += &chunk(d, r#","usage":null"#);
            client += &chunk(d, "");
        }
        upstream += &chunk(
            "[]",
            r#","usage":{"prompt_tokens":14,"completion_tokens":6,"total_tokens":20,"prompt_tokens_details":{"cached_tokens":2}}"#,
        );
        upstream += "data: [DONE]\n\n";
        client += "data: [DONE]\n\n";
        (upstream, client)
    }

    fn injected_exchange(cuts: &[usize], crlf: bool) -> (Vec<u8>, Settlement) {
        let config =
            Config::parse(br#"{"dimensions":[{"name":"model"},{"name":"usage_source"}]}"#).unwrap();
        let mut card = Cardinality::new(&config, Box::new(LocalRegistry::default()));
        let mut ex = Exchange::start(
            &config,
            &Budget::unlimited(),
            "POST",
            "/v1/chat/completions",
            headers(&[]),
            &host(),
            100,
        )
        .unwrap();
        assert!(ex.holds_request_body());
        ex.on_request_body(
            br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let rewritten = ex.request_complete(&config).expect("usage is asked for");
        assert!(rewritten.starts_with(br#"{"stream_options":{"include_usage":true},"#));
        let edits = ex.on_response_headers(
            &config,
            Some(200),
            headers(&[("content-type", "text/event-stream")]),
        );
        assert!(edits.remove_content_length);
        let (mut upstream, _) = recorded_stream();
        if crlf {
            upstream = upstream.replace('\n', "\r\n");
        }
        let bytes = upstream.as_bytes();
        let mut client = Vec::new();
        let mut last = 0;
        for (i, &cut) in cuts.iter().chain(std::iter::once(&bytes.len())).enumerate() {
            let cut = cut.clamp(last, bytes.len());
            let out = ex.on_response_body(&config, &bytes[last..cut], 150 + i as u64);
            client.extend(out.expect("an edited stream always hands back bytes"));
            last = cut;
        }
        client.extend(ex.on_response_end().unwrap_or_default());
        let s = ex.settle(&config, &host(), &mut card, 400).unwrap();
        (client, s)
    }

    #[test]
    fn injected_streams_give_the_same_counts_and_client_bytes_for_every_split() {
        let (upstream, client_view) = recorded_stream();
        for crlf in [false, true] {
            let want = if crlf {
                client_view.replace('\n', "\r\n")
            } else {
                client_view.clone()
            };
            for cut in 0..=upstream.len() + 10 {
                let (client, s) = injected_exchange(&[cut], crlf);
                assert_eq!(
                    String::from_utf8(client).unwrap(),
                    want,
                    "cut {cut} crlf {crlf}"
                );
                let u = s.usage.unwrap();
                assert_eq!(
                    (u.prompt, u.completion, u.total, u.cached),
                    (14, 6, 20, Some(2))
                );
                assert_eq!(s.labels, ["gpt-4o-2024-08-06", "reported"]);
                assert!(s.streamed);
                assert_eq!(s.duration_ms, 300);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_of_an_injected_stream(mut cuts in proptest::collection::vec(0usize..1400, 0..12), crlf: bool) {
            cuts.sort_unstable();
            let (client, s) = injected_exchange(&cuts, crlf);
            let (_, view) = recorded_stream();
            let want = if crlf { view.replace('\n', "\r\n") } else { view };
            proptest::prop_assert_eq!(String::from_utf8(client).unwrap(), want);
            proptest::prop_assert_eq!(s.usage.unwrap().total, 20);
        }

        #[test]
        fn any_chunking_of_an_estimated_stream(mut cuts in proptest::collection::vec(0usize..1400, 0..12)) {
            cuts.sort_unstable();
            let (_, stream) = recorded_stream();
            let config = Config::parse(br#"{"inject_stream_usage": false}"#).unwrap();
            let mut card = Cardinality::new(&config, Box::new(LocalRegistry::default()));
            let mut ex = Exchange::start(&config, &Budget::unlimited(), "POST", "/v1/chat/completions", headers(&[]), &host(), 0).unwrap();
            proptest::prop_assert!(!ex.holds_request_body());
            ex.on_request_body(br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#);
            ex.on_response_headers(&config, Some(200), headers(&[("content-type", "text/event-stream")]));
            let bytes = stream.as_bytes();
            let mut last = 0;
            for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
                let cut = cut.clamp(last, bytes.len());
                proptest::prop_assert_eq!(ex.on_response_body(&config, &bytes[last..cut], 1), None);
                last = cut;
            }
            let u = ex.settle(&config, &host(), &mut card, 2).unwrap().usage.unwrap();
            proptest::prop_assert_eq!(u.source, UsageSource::Estimated);
            // "hi" with OpenAI's accounting: 3 + user + hi + 3.
            proptest::prop_assert_eq!(u.prompt, 8);
            proptest::prop_assert_eq!(u.completion, Encoding::O200kBase.count("Café 🎉 is open."));
        }
    }

    #[test]
    fn time_to_first_token_is_the_first_content_not_the_first_byte() {
        let config = Config::parse(br#"{"inject_stream_usage": false}"#).unwrap();
        let mut card = Cardinality::new(&config, Box::new(LocalRegistry::default()));
        let mut ex = Exchange::start(
            &config,
            &Budget::unlimited(),
            "POST",
            "/v1/chat/completions",
            headers(&[]),
            &host(),
            1000,
        )
        .unwrap();
        ex.on_response_headers(
            &config,
            Some(200),
            headers(&[("content-type", "text/event-stream")]),
        );
        let (_, stream) = recorded_stream();
        let events: Vec<&str> = stream.split_inclusive("\n\n").collect();
        // The role-only first chunk arrives at 1040; the first text at 1100.
        ex.on_response_body(&config, events[0].as_bytes(), 1040);
        ex.on_response_body(&config, events[1].as_bytes(), 1100);
        ex.on_response_body(&config, events[2..].concat().as_bytes(), 1200);
        let s = ex.settle(&config, &host(), &mut card, 1250).unwrap();
        assert_eq!(s.ttft_ms, Some(100));
        assert_eq!(s.duration_ms, 250);
    }

    #[test]
    fn gzip_json_is_read_from_a_decoded_copy() {
        use std::io::Write;
        let config = Config::default();
        let mut card = Cardinality::new(&config, Box::new(LocalRegistry::default()));
        let mut ex = Exchange::start(
            &config,
            &Budget::unlimited(),
            "POST",
            "/v1/embeddings",
            headers(&[]),
            &host(),
            0,
        )
        .unwrap();
        ex.on_response_headers(&config, Some(200), headers(&[("content-encoding", "gzip")]));
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(CHAT_RESPONSE.as_bytes()).unwrap();
        let z = z.finish().unwrap();
        for c in z.chunks(5) {
            assert_eq!(ex.on_response_body(&config, c, 1), None);
        }
        let u = ex
            .settle(&config, &host(), &mut card, 2)
            .unwrap()
            .usage
            .unwrap();
        assert_eq!((u.total, u.source), (17, UsageSource::Reported));
    }

    #[test]
    fn sampled_exchanges_carry_a_record() {
        let config = Config::parse(
            br#"{"dimensions":[{"name":"team","value":"{request.header.x-team}"}],
                "collect":{"cluster":"collector","sample_rate":1,"context":"system","columns":{"answer":"response"}}}"#,
        )
        .unwrap();
        let request = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Plan A costs 5 EUR. Mail help@example.com"},{"role":"user","content":"What does plan A cost?"}]}"#;
        let s = run_with(
            &config,
            "/v1/chat/completions",
            &[("x-request-id", "req-7"), ("x-team", "blue")],
            request,
            &[],
            CHAT_RESPONSE_WITH_TEXT,
            9,
        );
        let r: Record = serde_json::from_str(s.record.as_deref().unwrap()).unwrap();
        assert_eq!(r.id, "req-7");
        assert_eq!(r.text("question"), Some("What does plan A cost?"));
        assert_eq!(r.text("context"), Some("Plan A costs 5 EUR. Mail [EMAIL]"));
        assert_eq!(r.text("response"), Some("It costs 5 EUR."));
        assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(r.operation.as_deref(), Some("chat.completions"));
        assert_eq!(r.route.as_deref(), Some("chat-route"));
        assert_eq!(r.dimensions.get("team").map(String::as_str), Some("blue"));
        assert_eq!(r.usage.as_ref().map(|u| u.total), Some(17));
        assert_eq!(r.status, Some(200));
        assert_eq!(r.duration_ms, Some(10));
        assert!(r
            .time
            .as_deref()
            .unwrap()
            .starts_with("1970-01-01T00:00:00.010"));
        assert!(!r.truncated);
        // The same exchange at rate 0, or without an id... is not sampled.
        let off = Config::parse(br#"{"collect":{"cluster":"c","sample_rate":0}}"#).unwrap();
        assert!(run_with(
            &off,
            "/v1/chat/completions",
            &[("x-request-id", "req-7")],
            request,
            &[],
            CHAT_RESPONSE_WITH_TEXT,
            9
        )
        .record
        .is_none());
    }

    #[test]
    fn streamed_answers_are_assembled_into_the_record() {
        let config = Config::parse(
            br#"{"inject_stream_usage":false,"collect":{"cluster":"c","sample_rate":1}}"#,
        )
        .unwrap();
        let (_, stream) = recorded_stream();
        let request = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Is the café open?"}]}"#;
        let s = run_with(
            &config,
            "/v1/chat/completions",
            &[("x-request-id", "s-1")],
            request,
            &[("content-type", "text/event-stream")],
            &stream,
            7,
        );
        let r: Record = serde_json::from_str(s.record.as_deref().unwrap()).unwrap();
        assert_eq!(r.text("answer"), Some("Café 🎉 is open."), "{:?}", s.record);
        assert_eq!(r.text("question"), Some("Is the café open?"));
        assert_eq!(r.usage.unwrap().source.as_deref(), Some("estimated"));
    }

    #[test]
    fn each_body_is_parsed_once_at_settlement() {
        use super::bodies::passes;
        let request = r#"{"model":"gpt-4o","metadata":{"project":"apollo"},"messages":[{"role":"user","content":"What does plan A cost?"}]}"#;
        let dims = r#""dimensions":[{"name":"model"},{"name":"usage_source"},
            {"name":"project","value":"{request.body.metadata.project}"},
            {"name":"fp","value":"{response.body.system_fingerprint}"}]"#;
        let sampled = format!(r#"{{{dims},"collect":{{"cluster":"c","sample_rate":1}}}}"#);
        let plain = r#"{"dimensions":[{"name":"model"}]}"#.to_string();
        let no_usage = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-2024-08-06","system_fingerprint":"fp_9","choices":[{"index":0,"message":{"role":"assistant","content":"It costs 5 EUR."},"finish_reason":"stop"}]}"#;
        // Dimensions from both bodies, a record, and an estimate: every consumer of each
        // body shares one parse. Without any of them, one typed pass each.
        for (config, response, source) in [
            (&sampled, no_usage, UsageSource::Estimated),
            (&sampled, CHAT_RESPONSE_WITH_TEXT, UsageSource::Reported),
            (&plain, no_usage, UsageSource::Estimated),
            (&plain, CHAT_RESPONSE_WITH_TEXT, UsageSource::Reported),
        ] {
            let config = Config::parse(config.as_bytes()).unwrap();
            passes::take();
            let s = run_with(
                &config,
                "/v1/chat/completions",
                &[("x-request-id", "r-1")],
                request,
                &[("content-type", "application/json")],
                response,
                40,
            );
            assert_eq!(passes::take(), 2, "one pass per body: {config:?}");
            assert_eq!(s.usage.unwrap().source, source);
        }
    }

    const CHAT_RESPONSE_WITH_TEXT: &str = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"It costs 5 EUR."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;

    fn run_with(
        config: &Config,
        path: &str,
        req_headers: &[(&str, &str)],
        request: &str,
        resp_headers: &[(&str, &str)],
        response: &str,
        split: usize,
    ) -> Settlement {
        let mut card = Cardinality::new(config, Box::new(LocalRegistry::default()));
        let mut ex = started(config, path, req_headers, request, split);
        if ex.holds_request_body() {
            ex.request_complete(config);
        }
        ex.on_response_headers(config, Some(200), headers(resp_headers));
        for chunk in response.as_bytes().chunks(split) {
            ex.on_response_body(config, chunk, 5);
        }
        ex.on_response_end();
        ex.settle(config, &host(), &mut card, 10).unwrap()
    }

    #[test]
    fn compressed_injected_streams_are_edited_and_compressed_again() {
        use std::io::{Read, Write};
        let config = Config::default();
        let mut card = Cardinality::new(&config, Box::new(LocalRegistry::default()));
        let mut ex = Exchange::start(
            &config,
            &Budget::unlimited(),
            "POST",
            "/v1/chat/completions",
            headers(&[]),
            &host(),
            0,
        )
        .unwrap();
        ex.on_request_body(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#);
        ex.request_complete(&config).unwrap();
        let edits = ex.on_response_headers(
            &config,
            Some(200),
            headers(&[
                ("content-type", "text/event-stream"),
                ("content-encoding", "gzip"),
            ]),
        );
        assert!(edits.remove_content_length);
        let (upstream, client_view) = recorded_stream();
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(upstream.as_bytes()).unwrap();
        let z = z.finish().unwrap();
        let mut client = Vec::new();
        for c in z.chunks(37) {
            client.extend(ex.on_response_body(&config, c, 1).unwrap());
        }
        client.extend(ex.on_response_end().unwrap_or_default());
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&client[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, client_view);
        let u = ex
            .settle(&config, &host(), &mut card, 2)
            .unwrap()
            .usage
            .unwrap();
        assert_eq!((u.total, u.source), (20, UsageSource::Reported));
    }
}
