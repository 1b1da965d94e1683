//! Dimensions: the labels every tokenmeter metric carries, and where their values come from.
//!
//! A dimension is a label name and a value spec: literal text, one `{source|default}`, or,
//! when no value is given, a built-in meaning of its name (`API ID`, `model`, ...).

use crate::series::labels;
use sha2::{Digest, Sha256};

/// Where a `{source}` reads its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A request header, by lower-case name.
    RequestHeader(String),
    /// A response header, by lower-case name.
    ResponseHeader(String),
    /// A dotted path into the request's JSON body.
    RequestBody(Vec<String>),
    /// A dotted path into the response's JSON body.
    ResponseBody(Vec<String>),
    /// A host property path, e.g. `["xds", "route_name"]`.
    Property(Vec<String>),
}

/// Values only the filter itself knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    /// `chat.completions`, `completions`, `embeddings`, `responses`.
    Operation,
    /// The request body's `user` (else `safety_identifier`).
    User,
    /// A short hash of the caller's API key or bearer token.
    Subscription,
    /// The response's model, else the request's, else the Azure deployment.
    Model,
    /// `reported` when the provider sent usage, `estimated` when tokenmeter counted,
    /// `none` when there were no tokens to count (e.g. an error response).
    UsageSource,
    /// The model the request asked for (else the Azure deployment).
    RequestModel,
    /// The model the response names.
    ResponseModel,
    /// OpenTelemetry's `gen_ai.operation.name`: `chat`, `text_completion`, `embeddings`.
    OtelOperation,
    /// OpenTelemetry's `gen_ai.provider.name`: `openai`, or `azure.ai.openai` on Azure paths.
    Provider,
}

impl Derived {
    /// Whether the values come from a small fixed set (so need no cap).
    pub fn is_bounded(self) -> bool {
        matches!(
            self,
            Derived::Operation | Derived::UsageSource | Derived::OtelOperation | Derived::Provider
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSpec {
    Literal(String),
    Source {
        source: Source,
        default: Option<String>,
    },
    Derived(Derived),
}

/// A configured dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimension {
    /// The label name (normalised).
    pub label: String,
    pub value: ValueSpec,
}

/// Label names the filter's own metrics use; a dimension cannot take them.
pub const RESERVED_LABELS: &[&str] = &[
    "status_class",
    "error_type",
    "token_type",
    "dimension",
    "le",
    "quantile",
];

/// The meaning of a dimension named without a value, by label name.
pub fn builtin(label: &str) -> Option<ValueSpec> {
    let property = |path: &[&str]| ValueSpec::Source {
        source: Source::Property(path.iter().map(|s| s.to_string()).collect()),
        default: None,
    };
    Some(match label {
        "api_id" => property(&["xds", "route_name"]),
        "operation_id" => ValueSpec::Derived(Derived::Operation),
        "product_id" => property(&["xds", "virtual_host_name"]),
        "user_id" => ValueSpec::Derived(Derived::User),
        "subscription_id" => ValueSpec::Derived(Derived::Subscription),
        "location" => property(&["xds", "node", "locality", "region"]),
        "gateway_id" => property(&["xds", "node", "id"]),
        "backend_id" => property(&["xds", "cluster_name"]),
        "model" => ValueSpec::Derived(Derived::Model),
        "usage_source" => ValueSpec::Derived(Derived::UsageSource),
        "request_model" => ValueSpec::Derived(Derived::RequestModel),
        "response_model" => ValueSpec::Derived(Derived::ResponseModel),
        _ => return None,
    })
}

/// Why a value spec was refused; the config layer names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("a value is either literal text or exactly one {{source}}, e.g. \"{{request.header.x-team|none}}\"; got {0:?}")]
    Shape(String),
    #[error("unknown source {0:?}; sources are request.header.NAME, response.header.NAME, request.body.PATH, response.body.PATH and property.PATH")]
    UnknownSource(String),
    #[error("source {0:?} needs a name or path after its prefix")]
    EmptyPath(String),
    #[error("a literal value must not be empty")]
    EmptyLiteral,
}

/// Parses a `value` from the configuration.
pub fn parse_value(text: &str) -> Result<ValueSpec, SpecError> {
    let has_brace = text.contains(['{', '}']);
    if !has_brace {
        if text.trim().is_empty() {
            return Err(SpecError::EmptyLiteral);
        }
        return Ok(ValueSpec::Literal(labels::sanitize_value(text)));
    }
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .filter(|t| !t.contains(['{', '}']))
        .ok_or_else(|| SpecError::Shape(text.to_string()))?;
    let (source, default) = match inner.split_once('|') {
        Some((s, d)) => (s.trim(), Some(d.trim())),
        None => (inner.trim(), None),
    };
    let default = default
        .filter(|d| !d.is_empty())
        .map(labels::sanitize_value);
    Ok(ValueSpec::Source {
        source: parse_source(source)?,
        default,
    })
}

fn parse_source(text: &str) -> Result<Source, SpecError> {
    let path = |rest: &str| -> Result<Vec<String>, SpecError> {
        let parts: Vec<String> = rest.split('.').map(str::to_string).collect();
        if rest.is_empty() || parts.iter().any(String::is_empty) {
            return Err(SpecError::EmptyPath(text.to_string()));
        }
        Ok(parts)
    };
    let header = |rest: &str| -> Result<String, SpecError> {
        if rest.is_empty() {
            return Err(SpecError::EmptyPath(text.to_string()));
        }
        Ok(rest.to_ascii_lowercase())
    };
    if let Some(rest) = text.strip_prefix("request.header.") {
        Ok(Source::RequestHeader(header(rest)?))
    } else if let Some(rest) = text.strip_prefix("response.header.") {
        Ok(Source::ResponseHeader(header(rest)?))
    } else if let Some(rest) = text.strip_prefix("request.body.") {
        Ok(Source::RequestBody(path(rest)?))
    } else if let Some(rest) = text.strip_prefix("response.body.") {
        Ok(Source::ResponseBody(path(rest)?))
    } else if let Some(rest) = text.strip_prefix("property.") {
        Ok(Source::Property(path(rest)?))
    } else {
        Err(SpecError::UnknownSource(text.to_string()))
    }
}

/// Text of a host property value. Envoy returns strings as their bytes and numbers and
/// timestamps as 8 little-endian bytes; anything else is taken as (lossy) UTF-8.
pub fn property_text(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains(|c: char| c.is_control()) => Some(s.to_string()),
        _ => match <[u8; 8]>::try_from(bytes) {
            Ok(raw) => Some(i64::from_le_bytes(raw).to_string()),
            Err(_) => Some(String::from_utf8_lossy(bytes).into_owned()),
        },
    }
}

/// Follows a dotted path into a JSON value; strings, numbers and booleans give text.
pub fn json_path_text(value: &serde_json::Value, path: &[String]) -> Option<String> {
    let mut v = value;
    for part in path {
        v = match v {
            serde_json::Value::Object(map) => map.get(part)?,
            serde_json::Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
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
    use super::*;

    #[test]
    fn literal_and_source_values() {
        assert_eq!(parse_value("prod"), Ok(ValueSpec::Literal("prod".into())));
        assert_eq!(
            parse_value("{request.header.X-Team|none}"),
            Ok(ValueSpec::Source {
                source: Source::RequestHeader("x-team".into()),
                default: Some("none".into())
            })
        );
        assert_eq!(
            parse_value("{request.body.metadata.team}"),
            Ok(ValueSpec::Source {
                source: Source::RequestBody(vec!["metadata".into(), "team".into()]),
                default: None
            })
        );
        assert_eq!(
            parse_value("{property.xds.route_name|no-route}"),
            Ok(ValueSpec::Source {
                source: Source::Property(vec!["xds".into(), "route_name".into()]),
                default: Some("no-route".into())
            })
        );
        assert!(matches!(
            parse_value("{response.header.x-region}"),
            Ok(ValueSpec::Source {
                source: Source::ResponseHeader(_),
                ..
            })
        ));
        assert!(matches!(
            parse_value("{response.body.system_fingerprint}"),
            Ok(ValueSpec::Source {
                source: Source::ResponseBody(_),
                ..
            })
        ));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(matches!(
            parse_value("{request.cookie.x}"),
            Err(SpecError::UnknownSource(_))
        ));
        assert!(matches!(
            parse_value("team-{request.header.x}"),
            Err(SpecError::Shape(_))
        ));
        assert!(matches!(
            parse_value("{request.header.x"),
            Err(SpecError::Shape(_))
        ));
        assert!(matches!(
            parse_value("{{request.header.x}}"),
            Err(SpecError::Shape(_))
        ));
        assert!(matches!(
            parse_value("{request.header.}"),
            Err(SpecError::EmptyPath(_))
        ));
        assert!(matches!(
            parse_value("{request.body.a..b}"),
            Err(SpecError::EmptyPath(_))
        ));
        assert_eq!(parse_value("  "), Err(SpecError::EmptyLiteral));
    }

    #[test]
    fn builtins_cover_the_documented_names() {
        for name in [
            "api_id",
            "operation_id",
            "product_id",
            "user_id",
            "subscription_id",
            "location",
            "gateway_id",
            "backend_id",
            "model",
            "usage_source",
        ] {
            assert!(builtin(name).is_some(), "{name}");
        }
        assert_eq!(builtin("team"), None);
    }

    #[test]
    fn property_bytes_become_text() {
        assert_eq!(property_text(b"route-a").as_deref(), Some("route-a"));
        assert_eq!(
            property_text(&8080i64.to_le_bytes()).as_deref(),
            Some("8080")
        );
        assert_eq!(property_text(b""), None);
    }

    #[test]
    fn json_paths() {
        let v = serde_json::json!({"metadata": {"team": "blue", "n": 3, "tags": ["a", "b"]}});
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            json_path_text(&v, &p("metadata.team")).as_deref(),
            Some("blue")
        );
        assert_eq!(json_path_text(&v, &p("metadata.n")).as_deref(), Some("3"));
        assert_eq!(
            json_path_text(&v, &p("metadata.tags.1")).as_deref(),
            Some("b")
        );
        assert_eq!(json_path_text(&v, &p("metadata")), None);
        assert_eq!(json_path_text(&v, &p("missing.x")), None);
    }
}
