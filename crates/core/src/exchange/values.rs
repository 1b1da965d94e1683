//! Where each dimension's value comes from at settlement: headers seen on the way, the
//! bodies (through [`super::bodies`]), host properties, and what the exchange derived
//! (model, operation, usage source...); and the caller's credential, hashed for the
//! `Subscription ID` dimension.

use super::bodies::RequestBody;
use super::Properties;
use crate::config::DimensionConfig;
use crate::openai::api::{self, Endpoint};
use crate::openai::usage::Usage;
use crate::series::dimensions::{self, Derived, Source, ValueSpec};

/// What dimension values are taken from at settlement.
pub(super) struct Facts<'a> {
    pub endpoint: &'a Endpoint,
    /// Per dimension: the request or response header value it reads.
    pub header_values: &'a [Option<String>],
    pub subscription: Option<&'a str>,
    pub request: &'a RequestBody<'a>,
    pub model: Option<&'a str>,
    pub response_model: Option<&'a str>,
    pub usage: Option<&'a Usage>,
    pub response_json: Option<&'a serde_json::Value>,
    pub host: &'a dyn Properties,
}

impl Facts<'_> {
    /// The raw (unsanitised) value of dimension `i`, `None` when its source has nothing.
    pub fn value(&self, i: usize, d: &DimensionConfig) -> Option<String> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        match &d.dimension.value {
            ValueSpec::Literal(text) => Some(text.clone()),
            ValueSpec::Source { source, default } => {
                let found = match source {
                    Source::RequestHeader(_) | Source::ResponseHeader(_) => {
                        self.header_values.get(i).cloned().flatten()
                    }
                    Source::RequestBody(path) => self
                        .request
                        .fields()
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
                Derived::Operation => Some(self.endpoint.operation.as_str().to_string()),
                Derived::User => self.request.user.clone(),
                Derived::Subscription => self.subscription.map(str::to_string),
                Derived::Model => self.model.map(str::to_string),
                Derived::RequestModel => self
                    .request
                    .model
                    .clone()
                    .or_else(|| self.endpoint.deployment.clone()),
                Derived::ResponseModel => self.response_model.map(str::to_string),
                Derived::OtelOperation => Some(
                    match self.endpoint.operation {
                        api::Operation::ChatCompletions | api::Operation::Responses => "chat",
                        api::Operation::Completions => "text_completion",
                        api::Operation::Embeddings => "embeddings",
                    }
                    .to_string(),
                ),
                Derived::Provider => Some(
                    if self.endpoint.deployment.is_some() {
                        "azure.ai.openai"
                    } else {
                        "openai"
                    }
                    .to_string(),
                ),
                Derived::UsageSource => {
                    Some(self.usage.map_or("none", |u| u.source.as_str()).to_string())
                }
            }),
        }
    }
}

/// The caller's secret: Azure's `api-key`, else the `Authorization` credentials (after the
/// scheme), else `x-api-key`.
pub(super) fn credential(header: &impl Fn(&str) -> Option<String>) -> Option<String> {
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
