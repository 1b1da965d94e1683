//! One metered request and its response, from request headers to settlement.
//!
//! The host glue feeds headers and body chunks in as they pass and asks for a
//! [`Settlement`] when the exchange ends, however it ends. Nothing here talks to the host
//! directly: properties are read through [`Host`], so the whole flow is testable natively.

use sha2::{Digest, Sha256};

use crate::api::{self, Endpoint};
use crate::capture::{Capture, Captured};
use crate::cardinality::Cardinality;
use crate::config::{Config, DimensionConfig};
use crate::dimensions::{self, Derived, Source, ValueSpec};
use crate::usage::{self, lenient, ResponseFacts, Usage};

/// What the exchange needs from its host at settlement.
pub trait Host {
    /// A host property's raw bytes, `None` when the host has none.
    fn property(&self, path: &[String]) -> Option<Vec<u8>>;
}

/// The outcome of one exchange, to be recorded as metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// One sanitised value per configured dimension, in order.
    pub labels: Vec<String>,
    /// Indexes of dimensions whose value was folded into `other`.
    pub folded: Vec<usize>,
    pub usage: Option<Usage>,
    pub status: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    /// A format we do not read (event streams until stream support, compressed bodies).
    Unread,
}

#[derive(Debug)]
pub struct Exchange {
    endpoint: Endpoint,
    /// Per dimension: the request or response header value it reads, once seen.
    header_values: Vec<Option<String>>,
    subscription: Option<String>,
    request: Capture,
    response: Capture,
    response_kind: BodyKind,
    status: Option<u16>,
    settled: bool,
}

impl Exchange {
    /// Starts metering when the request is an LLM call; `None` lets it pass uncounted.
    /// `header` looks up a request header by lower-case name.
    pub fn start(
        config: &Config,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<String>,
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
            credential(&header).map(|secret| subscription_id(&secret))
        } else {
            None
        };
        Some(Exchange {
            endpoint,
            header_values,
            subscription,
            request: Capture::new(config.max_body_bytes),
            response: Capture::new(config.max_body_bytes),
            response_kind: BodyKind::Json,
            status: None,
            settled: false,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn on_request_body(&mut self, chunk: &[u8]) {
        self.request.push(chunk);
    }

    /// `header` looks up a response header by lower-case name.
    pub fn on_response_headers(
        &mut self,
        config: &Config,
        status: Option<u16>,
        header: impl Fn(&str) -> Option<String>,
    ) {
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
        let encoded = header("content-encoding")
            .is_some_and(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"));
        let event_stream = header("content-type")
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("text/event-stream"));
        self.response_kind = if encoded || event_stream {
            BodyKind::Unread
        } else {
            BodyKind::Json
        };
    }

    /// Whether response body chunks are worth passing to [`Exchange::on_response_body`].
    pub fn wants_response_body(&self) -> bool {
        self.response_kind == BodyKind::Json && !self.settled
    }

    pub fn on_response_body(&mut self, chunk: &[u8]) {
        if self.wants_response_body() {
            self.response.push(chunk);
        }
    }

    pub fn is_settled(&self) -> bool {
        self.settled
    }

    /// Computes the outcome once; later calls return `None`, so every ending path of the
    /// host (end of stream, trailers, log) can call it safely.
    pub fn settle(
        &mut self,
        config: &Config,
        host: &dyn Host,
        cardinality: &mut Cardinality,
    ) -> Option<Settlement> {
        if self.settled {
            return None;
        }
        self.settled = true;
        let request = RequestFacts::read(self.request.captured(), config);
        let response = if self.response_kind == BodyKind::Json {
            usage::from_response(self.response.captured())
        } else {
            ResponseFacts::default()
        };
        let response_json = if needs_response_json(config) {
            match self.response.captured() {
                Captured::Whole(b) if self.response_kind == BodyKind::Json => {
                    serde_json::from_slice(b).ok()
                }
                _ => None,
            }
        } else {
            None
        };
        let facts = Facts {
            exchange: self,
            request: &request,
            response: &response,
            response_json: response_json.as_ref(),
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
        Some(Settlement {
            labels,
            folded,
            usage: response.usage,
            status: self.status,
        })
    }
}

fn needs_response_json(config: &Config) -> bool {
    config.dimensions.iter().any(|d| {
        matches!(
            d.dimension.value,
            ValueSpec::Source {
                source: Source::ResponseBody(_),
                ..
            }
        )
    })
}

/// Fields of the request body.
#[derive(Debug, Default)]
struct RequestFacts {
    model: Option<String>,
    user: Option<String>,
    json: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct RequestBody {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    user: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    safety_identifier: Option<String>,
}

impl RequestFacts {
    fn read(body: Captured<'_>, config: &Config) -> RequestFacts {
        let needs_json = config.dimensions.iter().any(|d| {
            matches!(
                d.dimension.value,
                ValueSpec::Source {
                    source: Source::RequestBody(_),
                    ..
                }
            )
        });
        match body {
            Captured::Whole(bytes) => {
                let json = if needs_json {
                    serde_json::from_slice(bytes).ok()
                } else {
                    None
                };
                match serde_json::from_slice::<RequestBody>(bytes) {
                    Ok(r) => RequestFacts {
                        model: r.model,
                        user: r.user.or(r.safety_identifier),
                        json,
                    },
                    Err(_) => Self::from_edges(bytes, bytes),
                }
            }
            Captured::Edges { head, tail } => Self::from_edges(head, tail),
        }
    }

    fn from_edges(head: &[u8], tail: &[u8]) -> RequestFacts {
        use crate::jsonscan::{field_in_head, field_in_tail};
        let field = |key: &str| -> Option<String> {
            field_in_head::<String>(head, key).or_else(|| field_in_tail::<String>(tail, key))
        };
        RequestFacts {
            model: field("model"),
            user: field("user").or_else(|| field("safety_identifier")),
            json: None,
        }
    }
}

struct Facts<'a> {
    exchange: &'a Exchange,
    request: &'a RequestFacts,
    response: &'a ResponseFacts,
    response_json: Option<&'a serde_json::Value>,
    host: &'a dyn Host,
}

impl Facts<'_> {
    /// The raw (unsanitised) value of dimension `i`, `None` when its source has nothing.
    fn value(&self, i: usize, d: &DimensionConfig) -> Option<String> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        match &d.dimension.value {
            ValueSpec::Literal(text) => Some(text.clone()),
            ValueSpec::Source { source, default } => {
                let found = match source {
                    Source::RequestHeader(_) | Source::ResponseHeader(_) => {
                        self.exchange.header_values.get(i).cloned().flatten()
                    }
                    Source::RequestBody(path) => self
                        .request
                        .json
                        .as_ref()
                        .and_then(|j| dimensions::json_path_text(j, path)),
                    Source::ResponseBody(path) => self
                        .response_json
                        .and_then(|j| dimensions::json_path_text(j, path)),
                    Source::Property(path) => self
                        .host
                        .property(path)
                        .and_then(|b| dimensions::property_text(&b)),
                };
                nonempty(found).or_else(|| default.clone())
            }
            ValueSpec::Derived(derived) => nonempty(match derived {
                Derived::Operation => Some(self.exchange.endpoint.operation.as_str().to_string()),
                Derived::User => self.request.user.clone(),
                Derived::Subscription => self.exchange.subscription.clone(),
                Derived::Model => nonempty(self.response.model.clone())
                    .or_else(|| nonempty(self.request.model.clone()))
                    .or_else(|| self.exchange.endpoint.deployment.clone()),
                Derived::UsageSource => Some(
                    self.response
                        .usage
                        .map_or("none", |u| u.source.as_str())
                        .to_string(),
                ),
            }),
        }
    }
}

/// The caller's secret: Azure's `api-key`, else the `Authorization` credentials (after the
/// scheme), else `x-api-key`.
fn credential(header: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let nonempty = |v: String| {
        let v = v.trim().to_string();
        (!v.is_empty()).then_some(v)
    };
    header("api-key")
        .and_then(nonempty)
        .or_else(|| {
            header("authorization").and_then(|v| {
                let v = v.trim();
                nonempty(v.split_once(' ').map_or(v, |(_, cred)| cred).to_string())
            })
        })
        .or_else(|| header("x-api-key").and_then(nonempty))
}

/// A short, non-reversible identifier for a secret: the first 12 hex digits of its SHA-256.
pub fn subscription_id(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(12);
    for b in digest.iter().take(6) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cardinality::LocalRegistry;

    struct FakeHost(HashMap<String, Vec<u8>>);

    impl Host for FakeHost {
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
        let mut ex = Exchange::start(&config, "POST", path, headers(req_headers)).unwrap();
        for chunk in request.as_bytes().chunks(split) {
            ex.on_request_body(chunk);
        }
        ex.on_response_headers(&config, Some(200), headers(resp_headers));
        for chunk in response.as_bytes().chunks(split) {
            ex.on_response_body(chunk);
        }
        let s = ex.settle(&config, &host(), &mut card).unwrap();
        assert_eq!(ex.settle(&config, &host(), &mut card), None, "settles once");
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
    fn encoded_and_event_stream_bodies_are_not_parsed_as_json() {
        let config = r#"{"dimensions":[{"name":"usage_source"}]}"#;
        let s = run(
            config,
            "/v1/chat/completions",
            &[],
            "{}",
            &[("content-encoding", "gzip")],
            CHAT_RESPONSE,
            30,
        );
        assert_eq!(s.usage, None);
        let s = run(
            config,
            "/v1/chat/completions",
            &[],
            "{}",
            &[("content-encoding", "identity")],
            CHAT_RESPONSE,
            30,
        );
        assert!(s.usage.is_some());
    }

    #[test]
    fn a_reset_before_any_response_still_settles() {
        let config = Config::parse(br#"{"dimensions":[{"name":"model"}]}"#).unwrap();
        let mut card = Cardinality::new(&config, Box::new(LocalRegistry::default()));
        let mut ex = Exchange::start(&config, "POST", "/v1/responses", headers(&[])).unwrap();
        ex.on_request_body(br#"{"model":"gpt-4.1","input":"hi"}"#);
        let s = ex.settle(&config, &host(), &mut card).unwrap();
        assert_eq!(s.labels, ["gpt-4.1"]);
        assert_eq!(s.status, None);
        assert_eq!(s.usage, None);
    }
}
