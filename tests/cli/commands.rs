//! The tokenmeter binary's configuration commands, run as a user runs them.

use assert_cmd::Command;

fn tokenmeter() -> Command {
    Command::cargo_bin("tokenmeter").unwrap()
}

fn example() -> String {
    format!("{}/examples/filter-config.json", crate::ROOT)
}

#[test]
fn check_config_accepts_the_example() {
    let out = tokenmeter()
        .args(["check-config", &example()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok"), "{text}");
    assert!(
        text.contains("api_id, operation_id, model, team, env"),
        "{text}"
    );
}

fn ten_dimensions(extra: &str) -> String {
    let dims: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"name": "dimension_{i}", "value": "{{request.header.x-{i}}}"}}"#))
        .collect();
    format!(r#"{{{extra}, "dimensions": [{}]}}"#, dims.join(","))
}

#[test]
fn check_config_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    for (text, field) in [
        (r#"{"namespace": "LLM"}"#, "namespace"),
        (
            r#"{"dimensions": [{"name": "team"}]}"#,
            "dimensions[0].value",
        ),
        (
            r#"{"dimensions": [{"name": "x", "value": "{request.header.x}", "max_values": "many"}]}"#,
            "dimensions[0].max_values",
        ),
        // Names nginx's default 256 bytes cannot hold, however short the values are cut.
        (
            &ten_dimensions(r#""host": {"kind": "nginx"}"#),
            "max_metric_name_bytes",
        ),
        (
            &ten_dimensions(r#""max_metric_name_bytes": 300"#),
            "max_metric_name_bytes",
        ),
    ] {
        let path = dir.path().join("bad.json");
        std::fs::write(&path, text).unwrap();
        let out = tokenmeter()
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("invalid tokenmeter configuration: {field}:")),
            "{text}: {err}"
        );
    }
    let out = tokenmeter()
        .args(["check-config", "/nonexistent/config.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read filter configuration"));
}

#[test]
fn envoy_config_renders_a_bootstrap_envoy_accepts() {
    let wasm = tokenmeter_testkit::envoy::wasm_path();
    let out = tokenmeter()
        .args(["envoy-config", "--filter-config", &example(), "--wasm"])
        .arg(&wasm)
        .args([
            "--listen",
            "0.0.0.0:10000",
            "--admin",
            "9901",
            "--upstream",
            "api.openai.com:443",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    for label in ["api_id", "operation_id", "model", "team", "env"] {
        assert!(
            yaml.contains(&format!("tag_name: \"{label}\"")),
            "{label}:\n{yaml}"
        );
    }
    assert!(
        yaml.contains("UpstreamTlsContext"),
        "port 443 implies TLS:\n{yaml}"
    );
    assert!(yaml.contains("sni: \"api.openai.com\""), "{yaml}");
    assert!(yaml.contains("type: STRICT_DNS"), "{yaml}");
    let (ok, log) = tokenmeter_testkit::envoy::validate(&yaml).unwrap();
    assert!(ok, "envoy refused the rendered bootstrap:\n{log}\n{yaml}");
}

#[test]
fn envoy_config_refuses_bad_arguments() {
    let out = tokenmeter()
        .args([
            "envoy-config",
            "--filter-config",
            &example(),
            "--wasm",
            "x.wasm",
            "--listen",
            "http",
            "--admin",
            "9901",
            "--upstream",
            "h:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokenmeter()
        .args([
            "envoy-config",
            "--filter-config",
            &example(),
            "--wasm",
            "x.wasm",
            "--listen",
            "1",
            "--admin",
            "9901",
            "--upstream",
            "nohostport",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream must be HOST:PORT"));
}

#[test]
fn envoy_config_adds_the_collector() {
    let wasm = tokenmeter_testkit::envoy::wasm_path();
    let out = tokenmeter()
        .args(["envoy-config", "--filter-config", &example(), "--wasm"])
        .arg(&wasm)
        .args([
            "--listen",
            "0",
            "--admin",
            "0",
            "--upstream",
            "127.0.0.1:8000",
            "--collector",
            "127.0.0.1:8787",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("- name: tokenmeter_collector"), "{yaml}");
    assert!(
        yaml.contains(r#"\"collect\":{\"cluster\":\"tokenmeter_collector\"}"#),
        "{yaml}"
    );
    // The rest of the configuration keeps its order.
    assert!(
        yaml.contains(r#"value: "{\"namespace\":\"llm\",\"dimensions\""#),
        "{yaml}"
    );
    let (ok, log) = tokenmeter_testkit::envoy::validate(&yaml).unwrap();
    assert!(ok, "{log}");
}

#[test]
fn envoy_config_completes_a_collect_block_that_names_no_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("filter.json");
    std::fs::write(&config, r#"{"collect": {"sample_rate": 0.5}}"#).unwrap();
    let wasm = tokenmeter_testkit::envoy::wasm_path();
    let run = |extra: &[&str]| {
        tokenmeter()
            .args(["envoy-config", "--filter-config"])
            .arg(&config)
            .arg("--wasm")
            .arg(&wasm)
            .args([
                "--listen",
                "0",
                "--admin",
                "0",
                "--upstream",
                "127.0.0.1:8000",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--collector", "127.0.0.1:8787"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains(r#"\"collect\":{\"sample_rate\":0.5,\"cluster\":\"tokenmeter_collector\"}"#),
        "{yaml}"
    );
    // Without --collector the block still needs its cluster, and the message names it.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster"));
}
