//! The ready-made Envoy configurations in `envoy/` stay current and are accepted by Envoy.

use std::path::Path;

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(crate::ROOT).join(path)).unwrap()
}

#[test]
fn envoy_yaml_is_what_envoy_config_renders_for_the_example() {
    let out = assert_cmd::Command::cargo_bin("tokenmeter")
        .unwrap()
        .args([
            "envoy-config",
            "--filter-config",
            "examples/filter-config.json",
            "--wasm",
            "/etc/envoy/tokenmeter.wasm",
            "--listen",
            "0.0.0.0:10000",
            "--admin",
            "9901",
            "--upstream",
            "api.openai.com:443",
        ])
        .current_dir(crate::ROOT)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        repo("envoy/envoy.yaml"),
        "envoy/envoy.yaml is stale: regenerate it with the command in this test"
    );
    // With the real filter path, Envoy accepts it.
    let wasm = tokenmeter_testkit::envoy::wasm_path();
    let yaml =
        repo("envoy/envoy.yaml").replace("/etc/envoy/tokenmeter.wasm", &wasm.display().to_string());
    let (ok, log) = tokenmeter_testkit::envoy::validate(&yaml).unwrap();
    assert!(ok, "{log}");
}

#[test]
fn snippet_pieces_load_in_a_listener() {
    let snippet = repo("envoy/snippet.yaml");
    let (filters, stats) = snippet.split_once("\nstats_config:").unwrap();
    let filters: String = filters
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("http_filters:"))
        .map(|l| format!("          {l}\n"))
        .collect();
    let wasm = tokenmeter_testkit::envoy::wasm_path();
    let yaml = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
stats_config:{stats}
static_resources:
  listeners:
  - name: existing
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: existing
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: up}}}}]}}
          http_filters:
{filters}  clusters:
  - name: up
    type: STATIC
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}}}]}}]
"#
    )
    .replace("/etc/envoy/tokenmeter.wasm", &wasm.display().to_string());
    let (ok, log) = tokenmeter_testkit::envoy::validate(&yaml).unwrap();
    assert!(ok, "{log}\n{yaml}");
}

#[test]
fn access_log_yaml_uses_the_rendered_format() {
    let yaml = repo("envoy/access-log.yaml");
    let line = format!(
        "json_format: {}",
        tokenmeter_cli::bootstrap::access_log_json_format()
    );
    assert!(
        yaml.contains(&line),
        "envoy/access-log.yaml differs from bootstrap::ACCESS_LOG_FIELDS: {line}"
    );
}

#[test]
fn readme_lists_every_metric_and_label() {
    let readme = repo("README.md");
    for naming in ["{}", r#"{"metric_names":"otel"}"#] {
        let config = tokenmeter_core::config::Config::parse(naming.as_bytes()).unwrap();
        for f in tokenmeter_core::series::metrics::families(&config) {
            let name = tokenmeter_core::series::metrics::family_name(&config, f);
            assert!(
                readme.contains(&format!("`{name}`")),
                "README does not document {name}"
            );
        }
    }
    for label in tokenmeter_core::series::metrics::FIXED_LABELS {
        assert!(
            readme.contains(&format!("`{label}`")),
            "README does not document {label}"
        );
    }
}
