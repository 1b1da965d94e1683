//! Envoy bootstraps: the canned upstream and the three gateways compared.
//!
//! The gateways share one shape (listener, connection manager, routes, router, the upstream
//! clusters, the same `stats_tags`); they differ only in the HTTP filter placed before the
//! router: none, the do-nothing Wasm filter, the reads-only filter, or tokenmeter. The Wasm
//! filters are loaded with the same `vm_config` and the same configuration text, so the
//! only difference between those gateways is what the module does. Values are written as JSON strings,
//! which YAML reads as double-quoted scalars, so no path or configuration breaks a document.

use std::fmt::Write as _;

use crate::traffic::{Reply, REPLY_HEADER, TRICKLE_VALUE, UPSTREAM_HEADER};

#[path = "../../crates/core/src/series/labels.rs"]
#[allow(dead_code)]
mod labels;

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The gateways compared, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gateway {
    Plain,
    Noop,
    /// Reads both header maps and every body chunk as tokenmeter does, nothing else.
    ReadsOnly,
    Tokenmeter,
}

impl Gateway {
    pub const ALL: [Gateway; 4] = [
        Gateway::Plain,
        Gateway::Noop,
        Gateway::ReadsOnly,
        Gateway::Tokenmeter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Gateway::Plain => "plain Envoy",
            Gateway::Noop => "do-nothing filter",
            Gateway::ReadsOnly => "reads-only filter",
            Gateway::Tokenmeter => "tokenmeter",
        }
    }
}

/// The admin interface and listeners take port 0: Envoy picks free ports.
fn admin() -> &'static str {
    "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n"
}

/// An Envoy that answers every request with a canned OpenAI response chosen by the
/// [`REPLY_HEADER`] request header.
pub fn upstream() -> String {
    let mut routes = String::new();
    for reply in Reply::ALL {
        let _ = write!(
            routes,
            r#"
              - match: {{prefix: "/", headers: [{{name: {header}, string_match: {{exact: {value}}}}}]}}
                direct_response: {{status: 200, body: {{inline_string: {body}}}}}
                response_headers_to_add:
                - header: {{key: content-type, value: {content_type}}}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD"#,
            header = q(REPLY_HEADER),
            value = q(reply.header_value()),
            body = q(&reply.body()),
            content_type = q(reply.content_type()),
        );
    }
    format!(
        r#"{admin}static_resources:
  listeners:
  - name: upstream
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: upstream
          route_config:
            name: canned
            max_direct_response_body_size_bytes: 1048576
            virtual_hosts:
            - name: canned
              domains: ["*"]
              routes:{routes}
              - match: {{prefix: "/"}}
                direct_response: {{status: 404, body: {{inline_string: "no canned reply named"}}}}
          http_filters:
          # A real provider reads the whole request before it answers; a direct response
          # would answer on the headers alone, racing the gateway's request body.
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 1048576
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        admin = admin(),
    )
}

/// What a gateway bootstrap needs besides its kind.
#[derive(Debug, Clone)]
pub struct GatewaySpec<'a> {
    /// The filter configuration JSON, given to both Wasm filters.
    pub filter_config: &'a str,
    /// Dimension names of that configuration (for the `stats_tags` rules).
    pub dimension_names: &'a [String],
    pub tokenmeter_wasm: &'a str,
    pub noop_wasm: &'a str,
    /// The reads-only filter (`bench/wasm/readsonly`); empty when not measured.
    pub readsonly_wasm: &'a str,
    pub upstream_port: u16,
    /// The trickling upstream (cluster `trickle_upstream`, routed to by
    /// [`UPSTREAM_HEADER`]).
    pub trickle_port: Option<u16>,
    /// A `tokenmeter serve` for the filter's `collect` block (cluster `tokenmeter_collector`).
    pub collector_port: Option<u16>,
}

/// One gateway's bootstrap.
pub fn gateway(kind: Gateway, spec: &GatewaySpec<'_>) -> String {
    let mut y = String::from(admin());
    y.push_str("stats_config:\n  stats_tags:");
    let tags: Vec<String> = spec
        .dimension_names
        .iter()
        .filter_map(|n| labels::label_name(n))
        .chain(labels::FIXED_LABELS.iter().map(|l| l.to_string()))
        .collect();
    if tags.is_empty() {
        y.push_str(" []");
    }
    y.push('\n');
    for tag in tags {
        let _ = writeln!(
            y,
            "  - tag_name: {}\n    regex: {}",
            q(&tag),
            q(&labels::extraction_regex(&tag))
        );
    }
    let wasm = match kind {
        Gateway::Plain => None,
        Gateway::Noop => Some(("noop", spec.noop_wasm)),
        Gateway::ReadsOnly => Some(("readsonly", spec.readsonly_wasm)),
        Gateway::Tokenmeter => Some(("tokenmeter", spec.tokenmeter_wasm)),
    };
    let filter = match wasm {
        None => String::new(),
        Some((name, path)) => format!(
            r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                failure_policy: FAIL_OPEN
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {config}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {path}}}}}"#,
            name = q(name),
            config = q(spec.filter_config),
            path = q(path),
        ),
    };
    let trickle_route = match spec.trickle_port {
        None => String::new(),
        Some(_) => format!(
            r#"
              - name: llm-trickle
                match: {{prefix: "/", headers: [{{name: {header}, string_match: {{exact: {value}}}}}]}}
                route: {{cluster: trickle_upstream, timeout: 60s}}"#,
            header = q(UPSTREAM_HEADER),
            value = q(TRICKLE_VALUE),
        ),
    };
    let _ = write!(
        y,
        r#"static_resources:
  listeners:
  - name: gateway
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: llm
            virtual_hosts:
            - name: llm
              domains: ["*"]
              routes:{trickle_route}
              - name: llm-default
                match: {{prefix: "/"}}
                route: {{cluster: llm_upstream, timeout: 60s}}
          http_filters:{filter}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: llm_upstream
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: llm_upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
"#,
        port = spec.upstream_port,
    );
    for (name, port) in [
        ("trickle_upstream", spec.trickle_port),
        ("tokenmeter_collector", spec.collector_port),
    ] {
        let Some(port) = port else { continue };
        let _ = write!(
            y,
            r#"  - name: {name}
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
"#
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(names: &[String]) -> GatewaySpec<'_> {
        GatewaySpec {
            filter_config: r#"{"dimensions":[{"name":"API ID"}]}"#,
            dimension_names: names,
            tokenmeter_wasm: "/x/tokenmeter.wasm",
            noop_wasm: "/x/noop.wasm",
            readsonly_wasm: "/x/readsonly.wasm",
            upstream_port: 8000,
            trickle_port: Some(8001),
            collector_port: None,
        }
    }

    #[test]
    fn gateways_differ_only_in_the_filter() {
        let names = vec!["API ID".to_string()];
        let plain = gateway(Gateway::Plain, &spec(&names));
        let noop = gateway(Gateway::Noop, &spec(&names));
        let reads = gateway(Gateway::ReadsOnly, &spec(&names));
        let tm = gateway(Gateway::Tokenmeter, &spec(&names));
        assert!(!plain.contains("envoy.filters.http.wasm"));
        assert!(noop.contains(r#"filename: "/x/noop.wasm""#));
        assert!(reads.contains(r#"filename: "/x/readsonly.wasm""#));
        assert!(tm.contains(r#"filename: "/x/tokenmeter.wasm""#));
        for y in [&plain, &noop, &reads, &tm] {
            assert!(y.contains(r#"- tag_name: "api_id""#), "{y}");
            assert!(y.contains("port_value: 8000"));
            assert!(y.contains("port_value: 8001") && y.contains("cluster: trickle_upstream"));
        }
        let strip = |y: &str| -> String {
            let start = y.find("          - name: envoy.filters.http.wasm");
            let end = y.find("          - name: envoy.filters.http.router");
            match (start, end) {
                (Some(s), Some(e)) => format!("{}{}", &y[..s], &y[e..]),
                _ => y.to_string(),
            }
        };
        assert_eq!(strip(&noop), plain);
        assert_eq!(strip(&reads), plain);
        assert_eq!(strip(&tm), plain);
    }

    #[test]
    fn upstream_has_a_route_per_reply() {
        let y = upstream();
        for reply in Reply::ALL {
            assert!(y.contains(&q(reply.header_value())));
        }
    }
}
