//! Rendering the Envoy Gateway resources that run the filter: an `EnvoyExtensionPolicy`
//! attaching it to a Gateway or HTTPRoute, and an `EnvoyProxy` whose bootstrap carries the
//! `stats_tags` rules that turn its metric names into labels.
//!
//! Envoy Gateway's proxies are Envoy, and it merges `spec.bootstrap` (`type: Merge`) into
//! the bootstrap it writes, so the rules are exactly the `stats_config` `envoy-config`
//! renders ([`crate::bootstrap::stats_config_yaml`]).

use std::fmt::Write as _;

use tokenmeter_core::config::Config;

use crate::bootstrap::{q, stats_config_yaml};
use crate::istio::json_block;

/// Where the Wasm module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// An OCI image reference (`registry/name:tag`).
    Image(String),
    /// An `http(s)://` URL of the `.wasm` file.
    Http(String),
}

/// What the resources are called, what the policy attaches to, and where the code is.
#[derive(Debug, Clone)]
pub struct EnvoyGatewaySpec {
    pub name: String,
    pub namespace: String,
    /// Gateways the policy attaches to (every route through them is metered).
    pub gateways: Vec<String>,
    /// HTTPRoutes the policy attaches to.
    pub routes: Vec<String>,
    pub code: Code,
    pub sha256: Option<String>,
}

/// The name of the rendered `EnvoyProxy`.
pub fn envoy_proxy_name(spec: &EnvoyGatewaySpec) -> String {
    format!("{}-proxy", spec.name)
}

/// Renders both documents. `filter_config` must be the JSON `config` was parsed from.
pub fn render(
    spec: &EnvoyGatewaySpec,
    filter_config: &serde_json::Value,
    config: &Config,
) -> String {
    let proxy = envoy_proxy_name(spec);
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Rendered by `tokenmeter envoy-gateway-config`: two documents, for `kubectl apply`.\n\
         # 1. The EnvoyExtensionPolicy, which adds the filter to the targeted Gateway or routes.\n\
         # 2. The EnvoyProxy whose bootstrap has the label rules; a Gateway uses it when it names\n\
         #    it in spec.infrastructure.parametersRef (group gateway.envoyproxy.io, kind\n\
         #    EnvoyProxy, name {proxy}, same namespace), or its GatewayClass does in\n\
         #    spec.parametersRef. With an EnvoyProxy in use already, copy spec.bootstrap into it.\n\
         #    Envoy reads its bootstrap at start: Envoy Gateway restarts the proxies when it changes.\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\n\
         kind: EnvoyExtensionPolicy\n\
         metadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  targetRefs:",
        proxy = proxy,
        name = q(&spec.name),
        namespace = q(&spec.namespace),
    );
    let targets = spec
        .gateways
        .iter()
        .map(|g| ("Gateway", g))
        .chain(spec.routes.iter().map(|r| ("HTTPRoute", r)));
    for (kind, name) in targets {
        let _ = writeln!(
            y,
            "  - group: gateway.networking.k8s.io\n    kind: {kind}\n    name: {}",
            q(name)
        );
    }
    let _ = writeln!(y, "  wasm:\n  - name: {}\n    code:", q(&spec.name));
    let sha = spec
        .sha256
        .as_deref()
        .map(|s| format!("\n        sha256: {}", q(s)))
        .unwrap_or_default();
    match &spec.code {
        Code::Image(url) => {
            let _ = writeln!(
                y,
                "      type: Image\n      image:\n        url: {}{sha}",
                q(url)
            );
        }
        Code::Http(url) => {
            let _ = writeln!(
                y,
                "      type: HTTP\n      http:\n        url: {}{sha}",
                q(url)
            );
        }
    }
    let _ = writeln!(
        y,
        "    # Should the VM ever fail, traffic passes unmetered rather than failing.\n\
         \x20   failOpen: true\n\
         \x20   # The filter configuration; Envoy Gateway passes it to the filter as JSON.\n\
         \x20   config:\n{}",
        json_block(filter_config, 6)
    );
    let bootstrap: String = stats_config_yaml(config)
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let _ = write!(
        y,
        "---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\n\
         kind: EnvoyProxy\n\
         metadata:\n  name: {}\n  namespace: {}\n\
         spec:\n  bootstrap:\n\
         \x20   # Merged into the bootstrap Envoy Gateway writes: one stats_tags rule per label the\n\
         \x20   # filter's metrics carry, so /stats/prometheus shows them as labels.\n\
         \x20   type: Merge\n    value: |\n{bootstrap}",
        q(&proxy),
        q(&spec.namespace),
    );
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(y: &str) -> Vec<serde_yaml_ng::Value> {
        serde_yaml_ng::Deserializer::from_str(y)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn renders_the_policy_and_the_bootstrap_rules() {
        let text = r#"{"dimensions":[{"name":"model"},{"name":"team","value":"{request.header.x-team|none}"}]}"#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        let config = Config::parse(text.as_bytes()).unwrap();
        let mut spec = EnvoyGatewaySpec {
            name: "tokenmeter".into(),
            namespace: "default".into(),
            gateways: vec!["eg".into()],
            routes: vec!["llm".into()],
            code: Code::Image("ghcr.io/example/tokenmeter:1".into()),
            sha256: None,
        };
        let y = render(&spec, &value, &config);
        let d = docs(&y);
        assert_eq!(d.len(), 2, "{y}");
        let wasm = &d[0]["spec"]["wasm"][0];
        assert_eq!(wasm["failOpen"].as_bool(), Some(true));
        assert_eq!(wasm["code"]["type"].as_str(), Some("Image"));
        assert_eq!(
            wasm["code"]["image"]["url"].as_str(),
            Some("ghcr.io/example/tokenmeter:1")
        );
        assert_eq!(serde_json::to_value(&wasm["config"]).unwrap(), value);
        let refs = &d[0]["spec"]["targetRefs"];
        assert_eq!(refs[0]["kind"].as_str(), Some("Gateway"));
        assert_eq!(refs[1]["kind"].as_str(), Some("HTTPRoute"));
        assert_eq!(refs[1]["name"].as_str(), Some("llm"));
        // The bootstrap fragment is envoy-config's stats_config, rule for rule.
        let bootstrap = &d[1]["spec"]["bootstrap"];
        assert_eq!(bootstrap["type"].as_str(), Some("Merge"));
        let merged: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(bootstrap["value"].as_str().unwrap()).unwrap();
        let tags = merged["stats_config"]["stats_tags"].as_sequence().unwrap();
        let expected = crate::bootstrap::stats_tags(&config);
        assert_eq!(tags.len(), expected.len());
        for (tag, (name, regex)) in tags.iter().zip(&expected) {
            assert_eq!(tag["tag_name"].as_str(), Some(name.as_str()));
            assert_eq!(tag["regex"].as_str(), Some(regex.as_str()));
        }
        assert_eq!(tags[0]["regex"].as_str(), Some(r"(model=\.=(.*?);\.;)"));

        spec.code = Code::Http("https://example.com/tokenmeter.wasm".into());
        spec.sha256 = Some("ab".repeat(32));
        let d = docs(&render(&spec, &value, &config));
        let code = &d[0]["spec"]["wasm"][0]["code"];
        assert_eq!(code["type"].as_str(), Some("HTTP"));
        assert_eq!(
            code["http"]["sha256"].as_str(),
            Some("ab".repeat(32).as_str())
        );
    }
}
