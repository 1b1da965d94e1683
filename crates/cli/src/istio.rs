//! Rendering the Istio resources that run the filter: a `WasmPlugin` and the mesh
//! configuration that turns its metric names into labels.
//!
//! Istio's proxies are Envoy, so the filter behaves as under `envoy-config`; what differs is
//! who writes the bootstrap. Istio generates one `stats_tags` rule per `extraStatTags` entry
//! (the same `(label=\.=(.*?);\.;)` regex), and keeps only its own stats unless
//! `proxyStatsMatcher` includes others, so both are rendered from the configuration.

use std::fmt::Write as _;

use tokenmeter_core::config::Config;

use crate::bootstrap::{label_names, q};

/// Envoy names the filter's metrics `wasmcustom.NAME`; Istio drops every stat outside its
/// inclusion list, so this prefix keeps them.
pub const STATS_PREFIX: &str = "wasmcustom.";

/// What the `WasmPlugin` is called, where it lives and which proxies it runs in.
#[derive(Debug, Clone)]
pub struct IstioSpec {
    pub name: String,
    pub namespace: String,
    /// `spec.selector.matchLabels`: the proxies' pod labels.
    pub selector: Vec<(String, String)>,
    /// `oci://`, `https://`, `http://` or `file://`.
    pub url: String,
    pub sha256: Option<String>,
}

/// The filter configuration as a YAML value: JSON is YAML, and indenting every line keeps a
/// pretty-printed object inside its key.
pub(crate) fn json_block(value: &serde_json::Value, indent: usize) -> String {
    let pretty = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    let pad = " ".repeat(indent);
    let lines: Vec<String> = pretty.lines().map(|l| format!("{pad}{l}")).collect();
    lines.join("\n")
}

/// Renders both documents. `filter_config` must be the JSON `config` was parsed from.
pub fn render(spec: &IstioSpec, filter_config: &serde_json::Value, config: &Config) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Rendered by `tokenmeter istio-config`: two documents.\n\
         # 1. The WasmPlugin: `kubectl apply` it (the first document alone).\n\
         # 2. Mesh configuration, as an IstioOperator overlay for `istioctl install -f` (with Helm,\n\
         #    the same `meshConfig:` block goes in istiod's values). Proxies read it when they\n\
         #    start: restart the gateway's pods after changing it."
    );
    let _ = writeln!(
        y,
        "apiVersion: extensions.istio.io/v1alpha1\n\
         kind: WasmPlugin\n\
         metadata:\n  name: {}\n  namespace: {}\n\
         spec:\n  selector:\n    matchLabels:{}",
        q(&spec.name),
        q(&spec.namespace),
        if spec.selector.is_empty() { " {}" } else { "" }
    );
    for (k, v) in &spec.selector {
        let _ = writeln!(y, "      {}: {}", q(k), q(v));
    }
    let _ = writeln!(y, "  url: {}", q(&spec.url));
    if let Some(sha) = &spec.sha256 {
        let _ = writeln!(y, "  sha256: {}", q(sha));
    }
    let _ = writeln!(
        y,
        "  imagePullPolicy: IfNotPresent\n\
         \x20 # After authentication and authorization, before Istio's own stats.\n\
         \x20 phase: STATS\n\
         \x20 # Should the VM ever fail, traffic passes unmetered rather than failing.\n\
         \x20 failStrategy: FAIL_OPEN\n\
         \x20 # The filter configuration; Istio passes it to the filter as JSON.\n\
         \x20 pluginConfig:\n{}",
        json_block(filter_config, 4)
    );
    let tags: Vec<String> = label_names(config).iter().map(|l| q(l)).collect();
    let _ = writeln!(
        y,
        "---\n\
         apiVersion: install.istio.io/v1alpha1\n\
         kind: IstioOperator\n\
         metadata:\n  name: {name}\n  namespace: istio-system\n\
         spec:\n  meshConfig:\n    defaultConfig:\n\
         \x20     # One per label the filter's metrics carry: Istio writes Envoy's stats_tags rule\n\
         \x20     # (label=\\.=(.*?);\\.;) for each, which makes the label out of the metric name.\n\
         \x20     extraStatTags: [{tags}]\n\
         \x20     # Istio's proxies keep only Istio's own stats unless told to keep others.\n\
         \x20     proxyStatsMatcher:\n        inclusionPrefixes: [{prefix}]\n\
         # For one workload instead of the mesh, annotate its pod template with\n\
         #   proxy.istio.io/config: '{annotation}'",
        name = q(&format!("{}-stats", spec.name)),
        tags = tags.join(", "),
        prefix = q(STATS_PREFIX),
        annotation = serde_json::json!({
            "extraStatTags": label_names(config),
            "proxyStatsMatcher": {"inclusionPrefixes": [STATS_PREFIX]},
        }),
    );
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_plugin_and_every_label() {
        let text = r#"{"namespace":"llm","dimensions":[{"name":"API ID"},{"name":"team","value":"{request.header.x-team|none}"}]}"#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        let config = Config::parse(text.as_bytes()).unwrap();
        let spec = IstioSpec {
            name: "tokenmeter".into(),
            namespace: "istio-system".into(),
            selector: vec![("istio".into(), "ingressgateway".into())],
            url: "oci://ghcr.io/example/tokenmeter:1".into(),
            sha256: None,
        };
        let y = render(&spec, &value, &config);
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&y)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2, "{y}");
        let plugin = &docs[0];
        assert_eq!(plugin["kind"].as_str(), Some("WasmPlugin"));
        assert_eq!(plugin["spec"]["phase"].as_str(), Some("STATS"));
        assert_eq!(plugin["spec"]["failStrategy"].as_str(), Some("FAIL_OPEN"));
        assert_eq!(
            plugin["spec"]["selector"]["matchLabels"]["istio"].as_str(),
            Some("ingressgateway")
        );
        let back: serde_json::Value =
            serde_json::to_value(&plugin["spec"]["pluginConfig"]).unwrap();
        assert_eq!(back, value);
        let proxy = &docs[1]["spec"]["meshConfig"]["defaultConfig"];
        let tags: Vec<&str> = proxy["extraStatTags"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tags, label_names(&config));
        assert!(tags.starts_with(&["api_id", "team"]), "{tags:?}");
        assert_eq!(
            proxy["proxyStatsMatcher"]["inclusionPrefixes"][0].as_str(),
            Some(STATS_PREFIX)
        );
        // The annotation in the closing comment says the same.
        let annotation = y
            .lines()
            .find_map(|l| l.strip_prefix("#   proxy.istio.io/config: '"))
            .and_then(|l| l.strip_suffix('\''))
            .unwrap();
        let a: serde_json::Value = serde_json::from_str(annotation).unwrap();
        assert_eq!(a["extraStatTags"], serde_json::json!(tags));
    }
}
