//! The other gateways' configuration commands, run as a user runs them: `nginx-config`
//! read back the way nginx reads its configuration, `istio-config` and
//! `envoy-gateway-config` validated against the resources' schemas (tests/data/crds).
//! What they make Envoy do is run in the real Envoy by tests/envoy/gateways.rs.

use assert_cmd::Command;
use serde_json::Value;
use tokenmeter_core::config::Config;

fn tokenmeter() -> Command {
    Command::cargo_bin("tokenmeter").unwrap()
}

fn example() -> String {
    format!("{}/examples/filter-config.json", crate::ROOT)
}

/// Runs the binary; stdout on success, stderr on failure (exit 1).
fn run(args: &[&str]) -> Result<String, String> {
    let out = tokenmeter().args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ok(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn refused(args: &[&str], says: &str) {
    let err = run(args).expect_err(&format!("{args:?} was accepted"));
    assert!(err.contains(says), "{args:?}: expected {says:?} in\n{err}");
}

fn file_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("filter.json");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

// --- nginx.conf, read as nginx reads it -------------------------------------------------

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

/// nginx's tokenizer (`ngx_conf_read_token`): words split by whitespace, `;`, `{`, `}`;
/// `#` comments to the line's end; single- or double-quoted strings in which `\"`, `\'` and
/// `\\` stand for themselves and `\n`, `\t`, `\r` for control characters.
fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            ';' | '{' | '}' => {
                chars.next();
                out.push(match c {
                    ';' => Token::Semicolon,
                    '{' => Token::Open,
                    _ => Token::Close,
                });
            }
            '"' | '\'' => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => panic!("unterminated {c}-quoted string"),
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\'' | '\\')) => word.push(e),
                            Some('n') => word.push('\n'),
                            Some('t') => word.push('\t'),
                            Some('r') => word.push('\r'),
                            Some(e) => {
                                word.push('\\');
                                word.push(e);
                            }
                            None => panic!("unterminated escape"),
                        },
                        Some(ch) => word.push(ch),
                    }
                }
                // nginx wants a separator after a closing quote.
                let next = chars.peek().copied();
                assert!(
                    next.is_none_or(|n| n.is_whitespace() || n == ';' || n == '{'),
                    "unexpected {next:?} after a quoted string"
                );
                out.push(Token::Word(word));
            }
            _ => {
                let mut word = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || matches!(ch, ';' | '{' | '}') {
                        break;
                    }
                    word.push(ch);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
        }
    }
    out
}

#[derive(Debug)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Option<Vec<Directive>>,
}

/// Directives up to the matching `}` (or the end, at the top); panics on unbalanced braces
/// or a directive that ends with neither `;` nor a block.
fn directives(
    toks: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
    top: bool,
) -> Vec<Directive> {
    let mut out = Vec::new();
    loop {
        let name = match toks.next() {
            None if top => return out,
            None => panic!("unbalanced braces: a block is not closed"),
            Some(Token::Close) if !top => return out,
            Some(Token::Word(w)) => w,
            Some(t) => panic!("a directive cannot start with {t:?}"),
        };
        let mut args = Vec::new();
        loop {
            match toks.next() {
                Some(Token::Word(w)) => args.push(w),
                Some(Token::Semicolon) => {
                    out.push(Directive {
                        name,
                        args,
                        block: None,
                    });
                    break;
                }
                Some(Token::Open) => {
                    let block = Some(directives(toks, false));
                    out.push(Directive { name, args, block });
                    break;
                }
                t => panic!("{name}: ends with {t:?}, not ';' or a block"),
            }
        }
    }
}

/// The directives nginx and ngx_wasm_module know, by context, with how many arguments each
/// takes and whether it opens a block.
fn known(context: &str, name: &str) -> Option<(std::ops::RangeInclusive<usize>, bool)> {
    let d = match (context, name) {
        ("main", "load_module" | "worker_processes") => (1..=1, false),
        ("main", "events" | "wasm" | "http") => (0..=0, true),
        ("wasm", "module") => (2..=3, false),
        ("wasm", "shm_kv") => (2..=3, false),
        ("wasm", "metrics") => (0..=0, true),
        ("metrics", "max_metric_name_length" | "slab_size") => (1..=1, false),
        ("http", "log_format") => (2..=3, false),
        ("http", "server") => (0..=0, true),
        ("server", "listen") => (1..=4, false),
        ("server" | "location", "access_log") => (1..=2, false),
        ("server", "location") => (1..=2, true),
        ("location", "set" | "proxy_set_header") => (2..=2, false),
        ("location", "proxy_wasm") => (1..=2, false),
        (
            "location",
            "proxy_buffering"
            | "client_body_buffer_size"
            | "proxy_http_version"
            | "proxy_read_timeout"
            | "proxy_pass"
            | "proxy_ssl_server_name"
            | "proxy_ssl_name",
        ) => (1..=1, false),
        _ => return None,
    };
    Some(d)
}

fn check_known(context: &str, list: &[Directive]) {
    for d in list {
        let Some((args, block)) = known(context, &d.name) else {
            panic!("{:?} is not a directive of {context}", d.name);
        };
        assert!(args.contains(&d.args.len()), "{}: {:?}", d.name, d.args);
        assert_eq!(d.block.is_some(), block, "{}", d.name);
        if let Some(inner) = &d.block {
            check_known(&d.name, inner);
        }
    }
}

fn parse_nginx(conf: &str) -> Vec<Directive> {
    let top = directives(&mut tokens(conf).into_iter().peekable(), true);
    check_known("main", &top);
    top
}

fn find<'a>(list: &'a [Directive], path: &[&str]) -> Vec<&'a Directive> {
    let Some((first, rest)) = path.split_first() else {
        return Vec::new();
    };
    let here = list.iter().filter(|d| d.name == *first);
    if rest.is_empty() {
        return here.collect();
    }
    here.flat_map(|d| find(d.block.as_deref().unwrap_or(&[]), rest))
        .collect()
}

fn one<'a>(list: &'a [Directive], path: &[&str]) -> &'a Directive {
    let found = find(list, path);
    assert_eq!(found.len(), 1, "{path:?}");
    found[0]
}

/// nginx's sizes: bytes, or with k/m.
fn size(text: &str) -> usize {
    let (n, unit) = match text.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1024),
        None => match text.strip_suffix(['m', 'M']) {
            Some(n) => (n, 1024 * 1024),
            None => (text, 1),
        },
    };
    n.parse::<usize>().unwrap() * unit
}

#[test]
fn nginx_config_is_a_configuration_nginx_reads_with_the_filters_json_intact() {
    let dir = tempfile::tempdir().unwrap();
    // Quotes and backslashes in the JSON, and a path with a quote: all must survive nginx's
    // unescaping, and nothing may end the directive early.
    let user = r#"{"namespace": "llm", "max_body_bytes": 300000,
      "dimensions": [{"name": "model"}, {"name": "note", "value": "{request.header.x-note|it's \"quoted\" \\ ; # not a comment}"}]}"#;
    let config_path = file_config(&dir, user);
    let conf = ok(&[
        "nginx-config",
        "--filter-config",
        &config_path,
        "--wasm",
        "/opt/wasm/it's here.wasm",
        "--listen",
        "8080",
        "--upstream",
        "127.0.0.1:8000",
        "--name",
        "meter",
        "--max-metric-name-length",
        "512",
        "--access-log",
        "/var/log/nginx/tokens.log",
    ]);
    let top = parse_nginx(&conf);
    assert_eq!(
        one(&top, &["wasm", "module"]).args,
        ["meter", "/opt/wasm/it's here.wasm"]
    );
    assert_eq!(one(&top, &["wasm", "shm_kv"]).args, ["*", "1m"]);
    assert_eq!(
        one(&top, &["wasm", "metrics", "max_metric_name_length"]).args,
        ["512"]
    );
    let location = ["http", "server", "location"];
    let at = |name: &str| {
        let mut path = location.to_vec();
        path.push(name);
        one(&top, &path).args.clone()
    };
    assert_eq!(at("set"), ["$tokenmeter", ""]);
    assert_eq!(at("proxy_buffering"), ["off"]);
    assert_eq!(at("proxy_pass"), ["http://127.0.0.1:8000"]);
    assert_eq!(
        one(&top, &["http", "server", "listen"]).args,
        ["127.0.0.1:8080"]
    );
    let wasm = at("proxy_wasm");
    assert_eq!(wasm[0], "meter");
    // The filter gets the user's configuration plus what nginx needs, and it loads.
    let json: Value = serde_json::from_str(&wasm[1]).unwrap();
    let mut expected: Value = serde_json::from_str(user).unwrap();
    expected["host"] = serde_json::json!({"kind": "nginx", "shared_data": true, "summary_property": "ngx.tokenmeter"});
    expected["max_metric_name_bytes"] = serde_json::json!(512 - "pw:meter:".len());
    assert_eq!(json, expected);
    let config = Config::parse(wasm[1].as_bytes()).unwrap();
    assert_eq!(config.max_metric_name_bytes, Some(503));
    assert!(config.host.shared_data());
    assert_eq!(config.host.summary_property(), Some("ngx.tokenmeter"));
    // Bodies the filter reads are never spilled to a file.
    let buffer = size(&at("client_body_buffer_size")[0]);
    assert!(
        buffer >= config.max_body_bytes,
        "{buffer} < {}",
        config.max_body_bytes
    );
    // The access log writes the summary variable the filter sets.
    let format = one(&top, &["http", "log_format"]);
    assert_eq!(format.args[0], "tokenmeter");
    assert_eq!(format.args[1], "escape=json");
    let line: Value = serde_json::from_str(&format.args[2]).unwrap();
    assert_eq!(line["tokenmeter"], "$tokenmeter");
    assert_eq!(
        one(&top, &["http", "server", "access_log"]).args,
        ["/var/log/nginx/tokens.log", "tokenmeter"]
    );
}

#[test]
fn nginx_config_speaks_tls_to_port_443_and_keeps_what_the_user_set() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = file_config(
        &dir,
        r#"{"host": {"shared_data": false, "summary_property": "ngx.usage"}, "max_metric_name_bytes": 100}"#,
    );
    let meta = dir.path().join("tokenmeter.meta.json");
    let conf = ok(&[
        "nginx-config",
        "--filter-config",
        &config_path,
        "--wasm",
        "/etc/nginx/tokenmeter.wasm",
        "--listen",
        "[::]:8443",
        "--upstream",
        "api.openai.com:443",
        "--kong-meta",
        meta.to_str().unwrap(),
    ]);
    // Kong's metadata names a pattern for every label.
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    let labels: Vec<&str> = meta["metrics"]["label_patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, tokenmeter_core::series::labels::FIXED_LABELS);
    let top = parse_nginx(&conf);
    let location = |name: &str| {
        find(&top, &["http", "server", "location", name])
            .iter()
            .map(|d| d.args.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(location("proxy_pass"), [["https://api.openai.com:443"]]);
    assert_eq!(location("proxy_ssl_name"), [["api.openai.com"]]);
    assert_eq!(location("proxy_set_header"), [["Host", "api.openai.com"]]);
    assert_eq!(location("set"), [["$usage", ""]]);
    assert_eq!(one(&top, &["http", "server", "listen"]).args, ["[::]:8443"]);
    assert!(find(&top, &["http", "log_format"]).is_empty());
    let json: Value = serde_json::from_str(&location("proxy_wasm")[0][1]).unwrap();
    assert_eq!(json["host"]["shared_data"], false);
    assert_eq!(json["host"]["kind"], "nginx");
    assert_eq!(json["max_metric_name_bytes"], 100);
}

#[test]
fn nginx_config_refuses_what_nginx_could_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let base = |config: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "nginx-config",
            "--filter-config",
            config,
            "--wasm",
            "/w.wasm",
            "--listen",
            "8080",
            "--upstream",
            "127.0.0.1:8000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let check = |args: Vec<String>, says: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, says);
    };
    let envoy = file_config(&dir, r#"{"host": {"kind": "envoy"}}"#);
    check(base(&envoy, &[]), "host.kind");
    let example = example();
    check(base(&example, &["--name", "pw:x"]), "--name");
    check(
        base(&example, &["--max-metric-name-length", "64"]),
        "raise --max-metric-name-length",
    );
    let long_cap = file_config(&dir, r#"{"max_metric_name_bytes": 1000}"#);
    check(base(&long_cap, &[]), "lower max_metric_name_bytes to 242");
    let bad = file_config(&dir, r#"{"namespace": "LLM"}"#);
    check(
        base(&bad, &[]),
        "invalid tokenmeter configuration: namespace:",
    );
    let mut no_port = base(&example, &[]);
    let at = no_port.iter().position(|a| a == "127.0.0.1:8000").unwrap();
    no_port[at] = "nohostport".into();
    check(no_port, "--upstream must be HOST:PORT");
}

// --- Istio and Envoy Gateway, against the resources' schemas -----------------------------

/// The YAML documents of a rendered stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

fn schema(file: &str) -> jsonschema::Validator {
    let path = format!("{}/tests/data/crds/{file}", crate::ROOT);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn assert_valid(validator: &jsonschema::Validator, doc: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}\n{doc:#}", errors.join("\n"));
}

fn assert_invalid(validator: &jsonschema::Validator, doc: &Value, what: &str) {
    assert!(!validator.is_valid(doc), "the schema accepted {what}");
}

fn example_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(example()).unwrap()).unwrap()
}

fn labels_of(config: &Value) -> Vec<String> {
    let config = Config::parse(config.to_string().as_bytes()).unwrap();
    tokenmeter_cli::bootstrap::label_names(&config)
}

#[test]
fn istio_config_renders_a_valid_wasm_plugin_and_mesh_config() {
    let plugin_schema = schema("wasmplugin.extensions.istio.io.v1alpha1.json");
    let mesh_schema = schema("istiooperator.meshconfig.json");
    let yaml = ok(&[
        "istio-config",
        "--filter-config",
        &example(),
        "--image",
        "ghcr.io/example/tokenmeter:0.1.0",
    ]);
    let docs = documents(&yaml);
    assert_eq!(docs.len(), 2, "{yaml}");
    let (plugin, mesh) = (&docs[0], &docs[1]);
    assert_valid(&plugin_schema, plugin);
    assert_valid(&mesh_schema, mesh);
    let spec = &plugin["spec"];
    assert_eq!(spec["url"], "oci://ghcr.io/example/tokenmeter:0.1.0");
    assert_eq!(spec["phase"], "STATS");
    assert_eq!(spec["failStrategy"], "FAIL_OPEN");
    assert_eq!(spec["selector"]["matchLabels"]["istio"], "ingressgateway");
    assert_eq!(plugin["metadata"]["namespace"], "istio-system");
    // The filter gets the configuration as it was written, and it loads.
    assert_eq!(spec["pluginConfig"], example_json());
    Config::parse(spec["pluginConfig"].to_string().as_bytes()).unwrap();
    let proxy = &mesh["spec"]["meshConfig"]["defaultConfig"];
    assert_eq!(
        proxy["extraStatTags"],
        serde_json::json!(labels_of(&example_json()))
    );
    assert_eq!(
        proxy["proxyStatsMatcher"]["inclusionPrefixes"],
        serde_json::json!(["wasmcustom."])
    );

    // The schema check can fail: a wrong enum, a misspelt field, a missing url.
    let mut bad = plugin.clone();
    bad["spec"]["failStrategy"] = "FAIL_OPENED".into();
    assert_invalid(&plugin_schema, &bad, "failStrategy FAIL_OPENED");
    let mut bad = plugin.clone();
    bad["spec"]["pluginconfig"] = serde_json::json!({});
    assert_invalid(&plugin_schema, &bad, "a misspelt pluginConfig");
    let mut bad = plugin.clone();
    bad["spec"].as_object_mut().unwrap().remove("url");
    assert_invalid(&plugin_schema, &bad, "no url");
    let mut bad = mesh.clone();
    bad["spec"]["meshConfig"]["defaultConfig"]["proxyStatsMatcher"]["inclusionPrefix"] =
        serde_json::json!(["x"]);
    assert_invalid(&mesh_schema, &bad, "a misspelt inclusionPrefixes");
}

#[test]
fn istio_config_takes_a_url_its_digest_and_selectors() {
    let sha = "0123456789abcdef".repeat(4);
    let yaml = ok(&[
        "istio-config",
        "--filter-config",
        &example(),
        "--url",
        "https://example.com/tokenmeter.wasm",
        "--sha256",
        &sha,
        "--name",
        "llm-meter",
        "--namespace",
        "gateways",
        "--selector",
        "app=llm-gateway",
        "--selector",
        "tier=edge",
    ]);
    let docs = documents(&yaml);
    assert_valid(
        &schema("wasmplugin.extensions.istio.io.v1alpha1.json"),
        &docs[0],
    );
    let spec = &docs[0]["spec"];
    assert_eq!(spec["url"], "https://example.com/tokenmeter.wasm");
    assert_eq!(spec["sha256"], sha.as_str());
    assert_eq!(
        spec["selector"]["matchLabels"],
        serde_json::json!({"app": "llm-gateway", "tier": "edge"})
    );
    assert_eq!(docs[0]["metadata"]["name"], "llm-meter");
    assert_eq!(docs[0]["metadata"]["namespace"], "gateways");

    let e = example();
    refused(
        &[
            "istio-config",
            "--filter-config",
            &e,
            "--image",
            "https://x/t.wasm",
        ],
        "--image must be an OCI reference",
    );
    refused(
        &[
            "istio-config",
            "--filter-config",
            &e,
            "--url",
            "ftp://x/t.wasm",
        ],
        "--url must start with",
    );
    refused(
        &[
            "istio-config",
            "--filter-config",
            &e,
            "--image",
            "r/t:1",
            "--selector",
            "nolabel",
        ],
        "--selector must be KEY=VALUE",
    );
    refused(&["istio-config", "--filter-config", &e], "--image");
}

#[test]
fn envoy_gateway_config_renders_a_valid_policy_and_envoy_proxy() {
    let policy_schema = schema("envoyextensionpolicy.gateway.envoyproxy.io.v1alpha1.json");
    let proxy_schema = schema("envoyproxy.gateway.envoyproxy.io.v1alpha1.json");
    let yaml = ok(&[
        "envoy-gateway-config",
        "--filter-config",
        &example(),
        "--image",
        "oci://ghcr.io/example/tokenmeter:0.1.0",
        "--gateway",
        "eg",
        "--route",
        "llm",
    ]);
    let docs = documents(&yaml);
    assert_eq!(docs.len(), 2, "{yaml}");
    let (policy, proxy) = (&docs[0], &docs[1]);
    assert_valid(&policy_schema, policy);
    assert_valid(&proxy_schema, proxy);
    assert_eq!(
        policy["spec"]["targetRefs"],
        serde_json::json!([
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"},
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "llm"}
        ])
    );
    let wasm = &policy["spec"]["wasm"][0];
    assert_eq!(wasm["failOpen"], true);
    assert_eq!(
        wasm["code"],
        serde_json::json!({"type": "Image", "image": {"url": "ghcr.io/example/tokenmeter:0.1.0"}})
    );
    assert_eq!(wasm["config"], example_json());
    // The bootstrap's rules are envoy-config's, for every label.
    assert_eq!(proxy["spec"]["bootstrap"]["type"], "Merge");
    let merged: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(proxy["spec"]["bootstrap"]["value"].as_str().unwrap()).unwrap();
    let merged = serde_json::to_value(merged).unwrap();
    let config = Config::parse(example_json().to_string().as_bytes()).unwrap();
    let expected: Vec<Value> = tokenmeter_cli::bootstrap::stats_tags(&config)
        .into_iter()
        .map(|(tag_name, regex)| serde_json::json!({"tag_name": tag_name, "regex": regex}))
        .collect();
    assert_eq!(merged["stats_config"]["stats_tags"], Value::Array(expected));
    assert_eq!(
        merged.as_object().unwrap().len(),
        1,
        "only stats_config is merged"
    );

    let mut bad = policy.clone();
    bad["spec"]["wasm"][0]["code"]["type"] = "HTTP".into();
    assert_invalid(&policy_schema, &bad, "type HTTP with an image");
    let mut bad = policy.clone();
    bad["spec"]["wasm"][0]["failopen"] = true.into();
    assert_invalid(&policy_schema, &bad, "a misspelt failOpen");
    let mut bad = proxy.clone();
    bad["spec"]["bootstrap"]["type"] = "Merged".into();
    assert_invalid(&proxy_schema, &bad, "bootstrap type Merged");
}

#[test]
fn envoy_gateway_config_takes_a_url_and_needs_a_target() {
    let sha = "ab".repeat(32);
    let yaml = ok(&[
        "envoy-gateway-config",
        "--filter-config",
        &example(),
        "--url",
        "https://example.com/tokenmeter.wasm",
        "--sha256",
        &sha,
        "--route",
        "chat",
        "--namespace",
        "llm",
    ]);
    let docs = documents(&yaml);
    assert_valid(
        &schema("envoyextensionpolicy.gateway.envoyproxy.io.v1alpha1.json"),
        &docs[0],
    );
    assert_eq!(
        docs[0]["spec"]["wasm"][0]["code"],
        serde_json::json!({"type": "HTTP", "http": {"url": "https://example.com/tokenmeter.wasm", "sha256": sha}})
    );
    assert_eq!(docs[1]["metadata"]["namespace"], "llm");
    assert_eq!(docs[1]["metadata"]["name"], "tokenmeter-proxy");

    let e = example();
    refused(
        &[
            "envoy-gateway-config",
            "--filter-config",
            &e,
            "--image",
            "r/t:1",
        ],
        "--gateway",
    );
    refused(
        &[
            "envoy-gateway-config",
            "--filter-config",
            &e,
            "--url",
            "file:///t.wasm",
            "--gateway",
            "eg",
        ],
        "--url must start with https:// or http://",
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = file_config(&dir, r#"{"dimensions": [{"name": "team"}]}"#);
    refused(
        &[
            "envoy-gateway-config",
            "--filter-config",
            &bad,
            "--image",
            "r/t:1",
            "--gateway",
            "eg",
        ],
        "dimensions[0].value",
    );
}

#[test]
fn the_gateways_guide_shows_the_kong_metadata_nginx_config_writes() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("tokenmeter.meta.json");
    ok(&[
        "nginx-config",
        "--filter-config",
        &example(),
        "--wasm",
        "/etc/nginx/tokenmeter.wasm",
        "--listen",
        "8080",
        "--upstream",
        "api.openai.com:443",
        "--kong-meta",
        meta.to_str().unwrap(),
    ]);
    let meta = std::fs::read_to_string(meta).unwrap();
    let guide = std::fs::read_to_string(format!("{}/docs/gateways.md", crate::ROOT)).unwrap();
    assert!(
        guide.contains(&format!("```json\n{meta}```")),
        "docs/gateways.md shows other label patterns than nginx-config writes for examples/filter-config.json:\n{meta}"
    );
}
