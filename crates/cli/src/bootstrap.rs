//! Rendering a complete Envoy bootstrap for a filter configuration.
//!
//! The label rules (`stats_tags`) must match the configuration's dimensions exactly, so
//! they are generated from it rather than written by hand. Every value placed into the
//! YAML is written as a JSON string, which YAML reads as a double-quoted scalar, so no
//! path, name or configuration text can break the document.

use std::fmt::Write as _;

use tokenmeter_core::config::Config;
use tokenmeter_core::series::labels;
use tokenmeter_core::series::metrics;

/// Where Envoy listens, where it forwards, and what it loads.
#[derive(Debug, Clone)]
pub struct BootstrapSpec {
    /// The filter configuration JSON, exactly as the filter will receive it.
    pub filter_config: String,
    pub wasm_path: String,
    pub listen_host: String,
    pub listen_port: u16,
    pub admin_port: u16,
    pub upstream_host: String,
    pub upstream_port: u16,
    /// Speak TLS to the upstream (with SNI and `Host` set to the upstream host).
    pub upstream_tls: bool,
    pub node_id: Option<String>,
    pub region: Option<String>,
    /// Write an access log with each request's usage to this path (`/dev/stdout` works).
    pub access_log: Option<String>,
    /// How often Envoy computes histograms for `/stats` (its default is 5 s).
    pub stats_flush_ms: Option<u64>,
    /// The record collectors (`tokenmeter serve`), as the `COLLECTOR_CLUSTER` cluster: one,
    /// or several sharing one store, which Envoy balances the deliveries over (a batch
    /// retried after a failure may reach another; they store it once).
    pub collectors: Vec<(String, u16)>,
}

/// The cluster name `envoy-config --collector` gives the collector.
pub const COLLECTOR_CLUSTER: &str = "tokenmeter_collector";

/// The access log line: one JSON object per request, with tokenmeter's usage summary
/// (`%FILTER_STATE(wasm.tokenmeter:PLAIN)%`, a JSON text in a string field) beside what
/// identifies the request. Envoy's `json_format` writes each value as a JSON value of its
/// own, so a header that contains quotes stays inside its field.
pub const ACCESS_LOG_FIELDS: &[(&str, &str)] = &[
    ("time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("status", "%RESPONSE_CODE%"),
    ("route", "%ROUTE_NAME%"),
    ("upstream", "%UPSTREAM_CLUSTER%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("tokenmeter", "%FILTER_STATE(wasm.tokenmeter:PLAIN)%"),
];

/// [`ACCESS_LOG_FIELDS`] as the YAML flow mapping of a `json_format`.
pub fn access_log_json_format() -> String {
    let fields: Vec<String> = ACCESS_LOG_FIELDS
        .iter()
        .map(|(k, v)| format!("{k}: {}", q(v)))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// `s` as a JSON string, which YAML reads as a double-quoted scalar: no value can break the
/// document it is placed in.
pub(crate) fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Every label the filter's metrics can carry under `config`: the dimensions' labels, in
/// order, then the fixed labels. Each host needs a rule for each (Envoy `stats_tags`, Istio
/// `extraStatTags`, Kong `label_patterns`).
pub fn label_names(config: &Config) -> Vec<String> {
    config
        .label_names()
        .map(str::to_string)
        .chain(metrics::FIXED_LABELS.iter().map(|s| s.to_string()))
        .collect()
}

/// Every tag rule the configuration needs: one per dimension, plus the fixed labels.
pub fn stats_tags(config: &Config) -> Vec<(String, String)> {
    label_names(config)
        .into_iter()
        .map(|l| {
            let re = labels::extraction_regex(&l);
            (l, re)
        })
        .collect()
}

/// The `stats_config` block with [`stats_tags`], as YAML starting at column 0 (the
/// bootstrap's top level).
pub fn stats_config_yaml(config: &Config) -> String {
    let tags = stats_tags(config);
    let mut y = format!(
        "stats_config:\n  stats_tags:{}\n",
        if tags.is_empty() { " []" } else { "" }
    );
    for (name, regex) in tags {
        let _ = writeln!(y, "  - tag_name: {}\n    regex: {}", q(&name), q(&regex));
    }
    y
}

/// Renders the bootstrap. `config` must be the parse of `spec.filter_config`.
pub fn render(spec: &BootstrapSpec, config: &Config) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Envoy bootstrap rendered by `tokenmeter envoy-config`.\n\
         # listener -> tokenmeter filter -> router -> upstream cluster; metrics at admin /stats/prometheus."
    );
    if spec.node_id.is_some() || spec.region.is_some() {
        let _ = writeln!(y, "node:");
        let _ = writeln!(
            y,
            "  id: {}",
            q(spec.node_id.as_deref().unwrap_or("tokenmeter"))
        );
        let _ = writeln!(y, "  cluster: {}", q("tokenmeter"));
        if let Some(region) = &spec.region {
            let _ = writeln!(y, "  locality: {{region: {}}}", q(region));
        }
    }
    let _ = writeln!(
        y,
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}",
        spec.admin_port
    );
    if let Some(ms) = spec.stats_flush_ms {
        let _ = writeln!(y, "stats_flush_interval: {}.{:03}s", ms / 1000, ms % 1000);
    }
    y.push_str(&stats_config_yaml(config));
    let tls_host = if spec.upstream_tls {
        format!(
            "\n    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        sni: {}",
            q(&spec.upstream_host)
        )
    } else {
        String::new()
    };
    let host_rewrite = if spec.upstream_tls {
        format!(", host_rewrite_literal: {}", q(&spec.upstream_host))
    } else {
        String::new()
    };
    let cluster_type = if spec.upstream_host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let _ = write!(
        y,
        r#"static_resources:
  listeners:
  - name: tokenmeter
    address: {{socket_address: {{address: {listen_host}, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress{access_log}
          route_config:
            name: llm
            virtual_hosts:
            - name: llm
              domains: ["*"]
              routes:
              - name: llm-default
                match: {{prefix: "/"}}
                route: {{cluster: llm_upstream, timeout: 600s{host_rewrite}}}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: tokenmeter
                failure_policy: FAIL_OPEN
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {filter_config}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: llm_upstream
    type: {cluster_type}
    connect_timeout: 5s
    load_assignment:
      cluster_name: llm_upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: {upstream_host}, port_value: {upstream_port}}}}}{tls_host}{collector}
"#,
        collector = if spec.collectors.is_empty() {
            String::new()
        } else {
            let all_ips = spec
                .collectors
                .iter()
                .all(|(host, _)| host.parse::<std::net::IpAddr>().is_ok());
            let endpoints: String = spec
                .collectors
                .iter()
                .map(|(host, port)| {
                    format!(
                        "\n        - endpoint:\n            address: {{socket_address: {{address: {}, port_value: {port}}}}}",
                        q(host)
                    )
                })
                .collect();
            format!(
                "\n  - name: {COLLECTOR_CLUSTER}\n    type: {}\n    connect_timeout: 2s\n    load_assignment:\n      cluster_name: {COLLECTOR_CLUSTER}\n      endpoints:\n      - lb_endpoints:{endpoints}",
                if all_ips { "STATIC" } else { "STRICT_DNS" },
            )
        },
        access_log = match &spec.access_log {
            Some(path) => format!(
                "\n          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{json_format: {}}}",
                q(path),
                access_log_json_format()
            ),
            None => String::new(),
        },
        listen_host = q(&spec.listen_host),
        listen_port = spec.listen_port,
        filter_config = q(&spec.filter_config),
        wasm = q(&spec.wasm_path),
        upstream_host = q(&spec.upstream_host),
        upstream_port = spec.upstream_port,
    );
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_tag_rule_per_dimension_and_quotes_everything() {
        let text = r#"{"dimensions":[{"name":"API ID"},{"name":"team","value":"{request.header.x-team|none}"}]}"#;
        let config = Config::parse(text.as_bytes()).unwrap();
        let spec = BootstrapSpec {
            filter_config: text.to_string(),
            wasm_path: "/opt/tm/tokenmeter \"x\".wasm".into(),
            listen_host: "127.0.0.1".into(),
            listen_port: 10000,
            admin_port: 9901,
            upstream_host: "127.0.0.1".into(),
            upstream_port: 8000,
            upstream_tls: false,
            node_id: None,
            region: None,
            access_log: Some("/var/log/envoy/tokens.log".into()),
            stats_flush_ms: Some(1500),
            collectors: vec![("127.0.0.1".into(), 8900), ("127.0.0.1".into(), 8901)],
        };
        let y = render(&spec, &config);
        assert!(y.contains(r#"- tag_name: "api_id""#), "{y}");
        assert!(y.contains(r#"regex: "(api_id=\\.=(.*?);\\.;)""#), "{y}");
        assert!(y.contains(r#"- tag_name: "team""#), "{y}");
        assert!(
            y.contains(r#"filename: "/opt/tm/tokenmeter \"x\".wasm""#),
            "{y}"
        );
        assert!(
            y.contains(r#"value: "{\"dimensions\":[{\"name\":\"API ID\"}"#),
            "{y}"
        );
        assert!(y.contains("type: STATIC"), "{y}");
        assert!(y.contains("stats_flush_interval: 1.500s"), "{y}");
        assert!(y.contains(r#"path: "/var/log/envoy/tokens.log""#), "{y}");
        assert!(
            y.contains(r#"log_format: {json_format: {time: "%START_TIME%", method:"#),
            "{y}"
        );
        assert!(
            y.contains(r#"tokenmeter: "%FILTER_STATE(wasm.tokenmeter:PLAIN)%"}}"#),
            "{y}"
        );
        assert!(y.contains("- name: tokenmeter_collector"), "{y}");
        assert!(y.contains("port_value: 8900"), "{y}");
        assert!(y.contains("port_value: 8901"), "{y}");
        for fixed in tokenmeter_core::series::metrics::FIXED_LABELS {
            assert!(
                y.contains(&format!("- tag_name: \"{fixed}\"")),
                "{fixed}: {y}"
            );
        }
    }
}
