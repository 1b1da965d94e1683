//! The filter configuration: the JSON string the host passes, parsed and validated.
//!
//! Everything is checked at load time so that a bad configuration is refused by the host
//! (Envoy refuses the listener) with a message that names the field, rather than being
//! discovered on traffic. `tokenmeter check-config` runs the same code.
//!
//! Owns the configuration types and their validation; `collect` is the `collect` block.
//! May import [`crate::body`], [`crate::openai`], [`crate::tokens`] and the leaf modules
//! of [`crate::series`] (`labels`, `dimensions`) it validates with.

pub mod collect;
pub mod host;

use std::collections::HashSet;

use serde::Deserialize;

use crate::series::dimensions::{self, Dimension, ValueSpec, RESERVED_LABELS};
use crate::series::labels;
use crate::tokens::tokenizer::{Encoding, EncodingMap};

pub const DEFAULT_NAMESPACE: &str = "llm";
pub const MAX_DIMENSIONS: usize = 10;
/// Default for `max_body_bytes`: bodies up to this size are copied whole and parsed exactly.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Default for a dimension's `max_values`.
pub const DEFAULT_MAX_VALUES: usize = 100;
/// The value a capped dimension reports for values past its cap or outside its allow list.
pub const OTHER: &str = "other";

/// A configuration that was refused; `field` names what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tokenmeter configuration: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl ToString) -> Self {
        ConfigError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    namespace: Option<String>,
    #[serde(default)]
    dimensions: Vec<RawDimension>,
    max_body_bytes: Option<usize>,
    inject_stream_usage: Option<bool>,
    #[serde(default)]
    stream_usage_rules: Vec<RawRule>,
    max_event_bytes: Option<usize>,
    max_vm_bytes: Option<usize>,
    max_series: Option<usize>,
    #[serde(default)]
    encodings: std::collections::BTreeMap<String, String>,
    default_encoding: Option<String>,
    decompress: Option<bool>,
    identity_encoding: Option<bool>,
    metric_names: Option<String>,
    max_metric_name_bytes: Option<usize>,
    host: Option<host::RawHost>,
    collect: Option<collect::RawCollect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    route: Option<String>,
    path_prefix: Option<String>,
    model_prefix: Option<String>,
    inject: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDimension {
    name: String,
    value: Option<String>,
    max_values: Option<usize>,
    allow: Option<Vec<String>>,
    #[serde(default)]
    hash: bool,
}

/// The most of a request body held for usage injection, whatever `max_body_bytes` says:
/// Envoy answers 413 when a held body passes its buffer limit (1 MiB by default).
pub const MAX_HELD_BYTES: usize = 960 * 1024;

/// The bounds of `max_vm_bytes`: below 1 MiB few requests could be read at once; a Wasm VM
/// cannot address much more than 1 GiB alongside its own code and tables.
pub const MIN_VM_BYTES: usize = 1024 * 1024;
pub const MAX_VM_BYTES: usize = 1024 * 1024 * 1024;

/// Default for `max_series`: label combinations per VM (each is one series of every metric).
pub const DEFAULT_MAX_SERIES: usize = 1000;
pub const MAX_MAX_SERIES: usize = 100_000;

/// The bounds of `max_metric_name_bytes` (whether a configuration's names fit under it is
/// checked by [`crate::series::metrics::settle_name_cap`]).
pub const MIN_METRIC_NAME_BYTES: usize = 64;
pub const MAX_METRIC_NAME_BYTES: usize = 64 * 1024;

/// Default for `max_event_bytes`: the largest server-sent event read.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub namespace: String,
    pub dimensions: Vec<DimensionConfig>,
    pub max_body_bytes: usize,
    /// Add `stream_options.include_usage` to streamed requests that lack it.
    pub inject_stream_usage: bool,
    /// Per-request exceptions to `inject_stream_usage`; the first match decides.
    pub stream_usage_rules: Vec<StreamUsageRule>,
    pub max_event_bytes: usize,
    /// The memory all requests of one VM may keep together (see [`crate::body::budget`]).
    pub max_vm_bytes: usize,
    /// The label combinations (series per metric) one VM produces at most.
    pub max_series: usize,
    pub encodings: EncodingMap,
    /// Decode gzip and deflate response bodies (a copy) to read their usage.
    pub decompress: bool,
    /// Ask upstreams for uncompressed responses on metered requests.
    pub identity_encoding: bool,
    pub naming: Naming,
    /// The longest metric name the filter defines; longer ones have their longest label
    /// values shortened (see [`crate::series::metrics::settle_name_cap`]).
    pub max_metric_name_bytes: Option<usize>,
    /// The longest label value a name keeps under that cap (set with it by
    /// `settle_name_cap`); longer ones are cut to a start and a hash.
    pub label_value_bytes: Option<usize>,
    /// Which host runs the filter, and what follows from it.
    pub host: host::HostSettings,
    /// Sampled inference records for quality monitoring.
    pub collect: Option<collect::CollectConfig>,
}

/// Which names the token and latency metrics take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `{namespace}_prompt_tokens_total` and friends.
    Tokenmeter,
    /// OpenTelemetry GenAI names (`gen_ai_client_token_usage`, ...), with the
    /// `gen_ai_operation_name`, `gen_ai_provider_name`, `gen_ai_request_model` and
    /// `gen_ai_response_model` labels added before the configured dimensions.
    Otel,
}

/// The labels `"metric_names": "otel"` adds, with their values.
pub const OTEL_LABELS: [(&str, dimensions::Derived); 4] = [
    ("gen_ai_operation_name", dimensions::Derived::OtelOperation),
    ("gen_ai_provider_name", dimensions::Derived::Provider),
    ("gen_ai_request_model", dimensions::Derived::RequestModel),
    ("gen_ai_response_model", dimensions::Derived::ResponseModel),
];

/// When a request matches every condition given, `inject` decides for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUsageRule {
    pub route: Option<String>,
    pub path_prefix: Option<String>,
    pub model_prefix: Option<String>,
    pub inject: bool,
}

impl StreamUsageRule {
    fn matches(&self, route: Option<&str>, path: &str, model: Option<&str>) -> bool {
        self.route.as_deref().is_none_or(|r| route == Some(r))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self
                .model_prefix
                .as_deref()
                .is_none_or(|m| model.is_some_and(|model| model.starts_with(m)))
    }
}

/// A dimension with its cardinality controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimensionConfig {
    pub dimension: Dimension,
    /// Distinct values reported before further ones become `other`.
    pub max_values: usize,
    /// When set, only these values are reported; others become `other`.
    pub allow: Option<HashSet<String>>,
    /// Report a short hash of the value instead of the value.
    pub hash: bool,
}

impl DimensionConfig {
    /// Whether the dimension's values can come from clients, so they must be capped.
    pub fn is_capped(&self) -> bool {
        match self.dimension.value {
            ValueSpec::Literal(_) => false,
            ValueSpec::Derived(d) => !d.is_bounded(),
            ValueSpec::Source { .. } => true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: DEFAULT_NAMESPACE.to_string(),
            dimensions: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            inject_stream_usage: true,
            stream_usage_rules: Vec::new(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_vm_bytes: crate::body::budget::DEFAULT_VM_BYTES,
            max_series: DEFAULT_MAX_SERIES,
            encodings: EncodingMap::default(),
            decompress: true,
            identity_encoding: false,
            naming: Naming::Tokenmeter,
            max_metric_name_bytes: None,
            label_value_bytes: None,
            host: host::HostSettings::default(),
            collect: None,
        }
    }
}

impl Config {
    /// Parses and validates the filter configuration. Empty text means all defaults.
    pub fn parse(text: &[u8]) -> Result<Config, ConfigError> {
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ConfigError::new(
                "configuration",
                "must be a JSON object, e.g. {\"namespace\": \"llm\", \"dimensions\": [{\"name\": \"model\"}]}",
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            // "." is the document itself, "?" a syntax error before any field was reached.
            let field = if path == "." || path == "?" {
                "configuration".to_string()
            } else {
                path
            };
            ConfigError::new(field, e.into_inner())
        })?;
        raw.validate()
    }

    /// How much of a request body the filter holds before letting it go unchanged.
    pub fn held_bytes(&self) -> usize {
        self.max_body_bytes.min(MAX_HELD_BYTES)
    }

    /// Whether stream usage may be injected for some request of `endpoint`'s operation.
    pub fn may_inject(&self, operation: crate::openai::api::Operation) -> bool {
        use crate::openai::api::Operation::{ChatCompletions, Completions};
        matches!(operation, ChatCompletions | Completions)
            && (self.inject_stream_usage || self.stream_usage_rules.iter().any(|r| r.inject))
    }

    /// Whether to inject stream usage for a request with this route, path and model.
    pub fn injects_for(&self, route: Option<&str>, path: &str, model: Option<&str>) -> bool {
        self.stream_usage_rules
            .iter()
            .find(|r| r.matches(route, path, model))
            .map_or(self.inject_stream_usage, |r| r.inject)
    }

    /// The label names, in order.
    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.dimensions.iter().map(|d| d.dimension.label.as_str())
    }
}

/// Refuses label names of which one ends with another. Gateways extract each label from the
/// metric name with one pattern, `(name=\.=(.*?);\.;)` (Envoy `stats_tags`, Istio
/// `extraStatTags`, Kong `label_patterns`), which also matches inside a longer name that ends
/// with it (`user` inside `end_user=.=…`): the series would come out mislabelled. `first_user`
/// is the index in `dims` of the first configured dimension (the OpenTelemetry labels come
/// first).
fn suffix_free(dims: &[DimensionConfig], first_user: usize) -> Result<(), ConfigError> {
    let fixed = labels::FIXED_LABELS.iter().map(|l| (*l, None));
    let all: Vec<(&str, Option<usize>)> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| (d.dimension.label.as_str(), Some(i)))
        .chain(fixed)
        .collect();
    let describe = |l: &str, at: Option<usize>| match at {
        Some(i) if i >= first_user => format!("{l:?} (dimensions[{}])", i - first_user),
        Some(_) => format!("{l:?} (an OpenTelemetry label)"),
        None => format!("{l:?} (a label of tokenmeter's own metrics)"),
    };
    for (i, d) in dims.iter().enumerate().skip(first_user) {
        let label = d.dimension.label.as_str();
        // Each pair once, reported at the later dimension (fixed labels count as earlier).
        for &(other, at) in all.iter().filter(|(_, at)| *at < Some(i)) {
            if label == other {
                return Err(ConfigError::new(
                    format!("dimensions[{}].name", i - first_user),
                    format!(
                        "label {label:?} is used by tokenmeter's own metrics; pick another name"
                    ),
                ));
            }
            if label.ends_with(other) || other.ends_with(label) {
                let (short, long) = if label.len() < other.len() {
                    (label, other)
                } else {
                    (other, label)
                };
                return Err(ConfigError::new(
                    format!("dimensions[{}].name", i - first_user),
                    format!(
                        "label {:?} and {} cannot both be used: {short:?} is the end of {long:?}, and gateways extract labels with a pattern per name that would also match inside {long:?}; rename one (for example {:?})",
                        label,
                        describe(other, at),
                        format!("{short}_id"),
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let namespace = self
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        if !valid_namespace(&namespace) {
            return Err(ConfigError::new(
                "namespace",
                format!("{namespace:?} must match [a-z][a-z0-9_]* (e.g. \"llm\")"),
            ));
        }
        if self.dimensions.len() > MAX_DIMENSIONS {
            return Err(ConfigError::new(
                "dimensions",
                format!(
                    "{} dimensions given, at most {MAX_DIMENSIONS} are allowed",
                    self.dimensions.len()
                ),
            ));
        }
        let naming = match self.metric_names.as_deref() {
            None | Some("tokenmeter") => Naming::Tokenmeter,
            Some("otel") => Naming::Otel,
            Some(other) => {
                return Err(ConfigError::new(
                    "metric_names",
                    format!(
                        "{other:?} is not a naming; use \"tokenmeter\" (the default) or \"otel\""
                    ),
                ))
            }
        };
        let mut seen = HashSet::new();
        let mut dims = Vec::with_capacity(self.dimensions.len() + OTEL_LABELS.len());
        if naming == Naming::Otel {
            for (label, derived) in OTEL_LABELS {
                seen.insert(label.to_string());
                dims.push(DimensionConfig {
                    dimension: Dimension {
                        label: label.to_string(),
                        value: ValueSpec::Derived(derived),
                    },
                    max_values: DEFAULT_MAX_VALUES,
                    allow: None,
                    hash: false,
                });
            }
        }
        let user_dims = self.dimensions.len();
        for (i, raw) in self.dimensions.into_iter().enumerate() {
            let at = |f: &str| format!("dimensions[{i}].{f}");
            let label = labels::label_name(&raw.name).ok_or_else(|| {
                ConfigError::new(
                    at("name"),
                    format!(
                        "{:?} does not make a label name: it needs a letter first and letters or digits",
                        raw.name
                    ),
                )
            })?;
            if RESERVED_LABELS.contains(&label.as_str()) {
                return Err(ConfigError::new(
                    at("name"),
                    format!(
                        "label {label:?} is used by tokenmeter's own metrics; pick another name"
                    ),
                ));
            }
            if !seen.insert(label.clone()) {
                return Err(ConfigError::new(
                    at("name"),
                    format!(
                        "{:?} gives label {label:?}, which an earlier dimension already has",
                        raw.name
                    ),
                ));
            }
            let value = match raw.value {
                Some(text) => dimensions::parse_value(&text)
                    .map_err(|e| ConfigError::new(at("value"), e))?,
                None => dimensions::builtin(&label).ok_or_else(|| {
                    ConfigError::new(
                        at("value"),
                        format!(
                            "dimension {:?} needs a value: it is not a built-in (API ID, Operation ID, Product ID, User ID, Subscription ID, Location, Gateway ID, Backend ID, model, usage_source)",
                            raw.name
                        ),
                    )
                })?,
            };
            let max_values = raw.max_values.unwrap_or(DEFAULT_MAX_VALUES);
            if max_values == 0 {
                return Err(ConfigError::new(at("max_values"), "must be at least 1"));
            }
            let allow = match raw.allow {
                Some(list) if list.is_empty() => {
                    return Err(ConfigError::new(at("allow"), "an empty allow list would fold every value into \"other\"; remove it or list values"))
                }
                Some(list) => Some(list.iter().map(|v| labels::sanitize_value(v)).collect()),
                None => None,
            };
            dims.push(DimensionConfig {
                dimension: Dimension { label, value },
                max_values,
                allow,
                hash: raw.hash,
            });
        }
        suffix_free(&dims, dims.len() - user_dims)?;
        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < crate::body::capture::EDGE {
            return Err(ConfigError::new(
                "max_body_bytes",
                format!(
                    "{max_body_bytes} is too small; use at least {}",
                    crate::body::capture::EDGE
                ),
            ));
        }
        let mut rules = Vec::with_capacity(self.stream_usage_rules.len());
        for (i, r) in self.stream_usage_rules.into_iter().enumerate() {
            if r.route.is_none() && r.path_prefix.is_none() && r.model_prefix.is_none() {
                return Err(ConfigError::new(
                    format!("stream_usage_rules[{i}]"),
                    "a rule needs at least one of route, path_prefix, model_prefix",
                ));
            }
            rules.push(StreamUsageRule {
                route: r.route,
                path_prefix: r.path_prefix,
                model_prefix: r.model_prefix,
                inject: r.inject,
            });
        }
        let max_event_bytes = self.max_event_bytes.unwrap_or(DEFAULT_MAX_EVENT_BYTES);
        if max_event_bytes < 1024 {
            return Err(ConfigError::new(
                "max_event_bytes",
                format!("{max_event_bytes} is too small; use at least 1024"),
            ));
        }
        let max_vm_bytes = self
            .max_vm_bytes
            .unwrap_or(crate::body::budget::DEFAULT_VM_BYTES);
        if !(MIN_VM_BYTES..=MAX_VM_BYTES).contains(&max_vm_bytes) {
            return Err(ConfigError::new(
                "max_vm_bytes",
                format!(
                    "{max_vm_bytes} is out of range; use {MIN_VM_BYTES} (1 MiB) to {MAX_VM_BYTES} (1 GiB)"
                ),
            ));
        }
        if max_vm_bytes < 2 * max_body_bytes {
            return Err(ConfigError::new(
                "max_vm_bytes",
                format!(
                    "{max_vm_bytes} leaves no room for one request at max_body_bytes {max_body_bytes}; use at least twice max_body_bytes"
                ),
            ));
        }
        let max_series = self.max_series.unwrap_or(DEFAULT_MAX_SERIES);
        if !(1..=MAX_MAX_SERIES).contains(&max_series) {
            return Err(ConfigError::new(
                "max_series",
                format!("{max_series} is out of range; use 1 to {MAX_MAX_SERIES}"),
            ));
        }
        let encoding = |field: String, name: &str| {
            Encoding::parse(name).ok_or_else(|| {
                ConfigError::new(
                    field,
                    format!("unknown encoding {name:?}; use \"o200k_base\" or \"cl100k_base\""),
                )
            })
        };
        let mut encodings = EncodingMap::default();
        for (prefix, name) in &self.encodings {
            encodings.rules.push((
                prefix.clone(),
                encoding(format!("encodings.{prefix}"), name)?,
            ));
        }
        if let Some(name) = &self.default_encoding {
            encodings.default = encoding("default_encoding".into(), name)?;
        }
        let max_metric_name_bytes = self.max_metric_name_bytes;
        if let Some(n) = max_metric_name_bytes {
            if !(MIN_METRIC_NAME_BYTES..=MAX_METRIC_NAME_BYTES).contains(&n) {
                return Err(ConfigError::new(
                    "max_metric_name_bytes",
                    format!("{n} is out of range; use {MIN_METRIC_NAME_BYTES} to {MAX_METRIC_NAME_BYTES}"),
                ));
            }
        }
        Ok(Config {
            namespace,
            dimensions: dims,
            max_body_bytes,
            inject_stream_usage: self.inject_stream_usage.unwrap_or(true),
            stream_usage_rules: rules,
            max_event_bytes,
            max_vm_bytes,
            max_series,
            encodings,
            decompress: self.decompress.unwrap_or(true),
            identity_encoding: self.identity_encoding.unwrap_or(false),
            naming,
            max_metric_name_bytes,
            label_value_bytes: None,
            host: self.host.unwrap_or_default().validate()?,
            collect: self
                .collect
                .map(collect::RawCollect::validate)
                .transpose()?,
        })
    }
}

fn valid_namespace(ns: &str) -> bool {
    let mut chars = ns.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::dimensions::{Derived, Source};

    fn err(text: &str) -> ConfigError {
        Config::parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn the_documented_example_parses() {
        let c = Config::parse(
            br#"{
              "namespace": "llm",
              "dimensions": [
                {"name": "API ID"},
                {"name": "model"},
                {"name": "team", "value": "{request.header.x-team|none}"},
                {"name": "env", "value": "prod"}
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(c.namespace, "llm");
        assert_eq!(
            c.label_names().collect::<Vec<_>>(),
            ["api_id", "model", "team", "env"]
        );
        assert_eq!(
            c.dimensions[0].dimension.value,
            ValueSpec::Source {
                source: Source::Property(vec!["xds".into(), "route_name".into()]),
                default: None
            }
        );
        assert_eq!(
            c.dimensions[1].dimension.value,
            ValueSpec::Derived(Derived::Model)
        );
        assert_eq!(
            c.dimensions[3].dimension.value,
            ValueSpec::Literal("prod".into())
        );
        assert!(c.dimensions[2].is_capped());
        assert!(!c.dimensions[3].is_capped());
    }

    #[test]
    fn empty_configuration_means_defaults() {
        assert_eq!(Config::parse(b"").unwrap(), Config::default());
        assert_eq!(Config::parse(b"{}").unwrap(), Config::default());
    }

    #[test]
    fn each_error_names_its_field() {
        let cases = [
            (r#"{"namespace": "LLM"}"#, "namespace"),
            (r#"{"namespace": "9x"}"#, "namespace"),
            (r#"{"namespace": 3}"#, "namespace"),
            (r#"{"nmespace": "llm"}"#, "nmespace"),
            (r#"[1, 2]"#, "configuration"),
            (r#"{,}"#, "configuration"),
            (
                r#"{"dimensions": [{"name": "model", "vale": "x"}]}"#,
                "dimensions[0].vale",
            ),
            (
                r#"{"dimensions": [{"name": "team"}]}"#,
                "dimensions[0].value",
            ),
            (
                r#"{"dimensions": [{"name": "a", "value": "{cookie.x}"}]}"#,
                "dimensions[0].value",
            ),
            (
                r#"{"dimensions": [{"name": "model"}, {"name": "Model"}]}"#,
                "dimensions[1].name",
            ),
            (r#"{"dimensions": [{"name": "**"}]}"#, "dimensions[0].name"),
            // One label name ending with another (see `suffix_free`).
            (
                r#"{"dimensions": [{"name": "end_user", "value": "x"}, {"name": "user", "value": "y"}]}"#,
                "dimensions[1].name",
            ),
            (
                r#"{"dimensions": [{"name": "user", "value": "x"}, {"name": "end user", "value": "y"}]}"#,
                "dimensions[1].name",
            ),
            (
                r#"{"dimensions": [{"name": "http status class", "value": "x"}]}"#,
                "dimensions[0].name",
            ),
            (
                r#"{"dimensions": [{"name": "kind", "value": "x"}, {"name": "type", "value": "x"}]}"#,
                "dimensions[1].name",
            ),
            (
                r#"{"dimensions": [{"name": "reason", "value": "x"}]}"#,
                "dimensions[0].name",
            ),
            (
                r#"{"metric_names": "otel", "dimensions": [{"name": "model"}]}"#,
                "dimensions[0].name",
            ),
            (
                r#"{"metric_names": "otel", "dimensions": [{"name": "name", "value": "x"}]}"#,
                "dimensions[0].name",
            ),
            (
                r#"{"dimensions": [{"name": "status class", "value": "x"}]}"#,
                "dimensions[0].name",
            ),
            (
                r#"{"dimensions": [{"name": "a", "value": "x", "max_values": 0}]}"#,
                "dimensions[0].max_values",
            ),
            (
                r#"{"dimensions": [{"name": "a", "value": "x", "allow": []}]}"#,
                "dimensions[0].allow",
            ),
            (r#"{"max_body_bytes": 10}"#, "max_body_bytes"),
            (r#"{"max_body_bytes": -1}"#, "max_body_bytes"),
            (r#"{"inject_stream_usage": "yes"}"#, "inject_stream_usage"),
            (
                r#"{"stream_usage_rules": [{"inject": false}]}"#,
                "stream_usage_rules[0]",
            ),
            (
                r#"{"stream_usage_rules": [{"route": "r"}]}"#,
                "stream_usage_rules[0]",
            ),
            (r#"{"max_event_bytes": 10}"#, "max_event_bytes"),
            (r#"{"max_vm_bytes": 1000}"#, "max_vm_bytes"),
            (r#"{"max_series": 0}"#, "max_series"),
            (r#"{"max_vm_bytes": 2000000000}"#, "max_vm_bytes"),
            (
                r#"{"max_body_bytes": 900000, "max_vm_bytes": 1048576}"#,
                "max_vm_bytes",
            ),
            (r#"{"encodings": {"llama": "llama3"}}"#, "encodings.llama"),
            (r#"{"default_encoding": "p50k_base"}"#, "default_encoding"),
            (r#"{"metric_names": "prometheus"}"#, "metric_names"),
            (
                r#"{"metric_names": "otel", "dimensions": [{"name": "gen_ai_request_model"}]}"#,
                "dimensions[0].name",
            ),
        ];
        for (text, field) in cases {
            let e = err(text);
            assert_eq!(e.field, field, "{text}: {e}");
        }
        let many: Vec<String> = (0..11)
            .map(|i| format!(r#"{{"name":"d{i}","value":"x"}}"#))
            .collect();
        let e = err(&format!(r#"{{"dimensions":[{}]}}"#, many.join(",")));
        assert_eq!(e.field, "dimensions");
        assert!(e.to_string().contains("at most 10"), "{e}");
    }

    #[test]
    fn stream_usage_rules_decide_in_order() {
        let c = Config::parse(
            br#"{"inject_stream_usage": true, "stream_usage_rules": [
                {"route": "legacy-vllm", "inject": false},
                {"path_prefix": "/local/", "model_prefix": "llama", "inject": false}]}"#,
        )
        .unwrap();
        assert!(!c.injects_for(Some("legacy-vllm"), "/v1/chat/completions", Some("gpt-4o")));
        assert!(!c.injects_for(None, "/local/v1/chat/completions", Some("llama-3")));
        assert!(c.injects_for(None, "/local/v1/chat/completions", Some("gpt-4o")));
        assert!(c.injects_for(Some("main"), "/v1/chat/completions", None));
        let off = Config::parse(br#"{"inject_stream_usage": false, "stream_usage_rules": [{"route": "openai", "inject": true}]}"#).unwrap();
        assert!(off.injects_for(Some("openai"), "/v1/chat/completions", None));
        assert!(!off.injects_for(Some("vllm"), "/v1/chat/completions", None));
        assert!(off.may_inject(crate::openai::api::Operation::ChatCompletions));
        assert!(!off.may_inject(crate::openai::api::Operation::Embeddings));
        let never = Config::parse(br#"{"inject_stream_usage": false}"#).unwrap();
        assert!(!never.may_inject(crate::openai::api::Operation::ChatCompletions));
    }

    #[test]
    fn otel_naming_adds_its_labels_first() {
        let c = Config::parse(
            br#"{"metric_names": "otel", "dimensions": [{"name": "team", "value": "x"}]}"#,
        )
        .unwrap();
        assert_eq!(c.naming, Naming::Otel);
        assert_eq!(
            c.label_names().collect::<Vec<_>>(),
            [
                "gen_ai_operation_name",
                "gen_ai_provider_name",
                "gen_ai_request_model",
                "gen_ai_response_model",
                "team"
            ]
        );
        assert!(!c.dimensions[0].is_capped());
        assert!(c.dimensions[2].is_capped());
    }

    #[test]
    fn encodings_are_configurable() {
        let c = Config::parse(
            br#"{"encodings": {"llama": "cl100k_base"}, "default_encoding": "cl100k_base"}"#,
        )
        .unwrap();
        assert_eq!(c.encodings.for_model(Some("llama-3")), Encoding::Cl100kBase);
        assert_eq!(c.encodings.for_model(Some("gpt-4o")), Encoding::O200kBase);
        assert_eq!(c.encodings.for_model(Some("mistral")), Encoding::Cl100kBase);
    }

    #[test]
    fn bad_json_is_refused() {
        let e = err("{\"namespace\": ");
        assert!(
            e.to_string().contains("invalid tokenmeter configuration"),
            "{e}"
        );
        let e = err("namespace=llm");
        assert!(e.to_string().contains("must be a JSON object"), "{e}");
    }

    #[test]
    fn unknown_field_message_lists_known_ones() {
        let e = err(r#"{"nmespace": "llm"}"#);
        assert!(e.message.contains("unknown field `nmespace`"), "{e}");
        assert!(e.message.contains("namespace"), "{e}");
    }
}
