//! What `istio-config` and `envoy-gateway-config` render, run in the real Envoy: the filter
//! configuration they embed, and the label rules as each control plane turns them into
//! Envoy's bootstrap, checked through `/stats/prometheus` with exact token counts.
//!
//! There is no cluster here, so the control planes' part is modelled, each from what it is
//! documented to do with these fields:
//! - Istio writes a `stats_tags` rule `(TAG=\.=(.*?);\.;)` for each `extraStatTags` entry,
//!   turns Envoy's default tags off (`use_all_default_tags: false`), and keeps only stats
//!   that match its inclusion list: `reporter=`, the `proxyStatsMatcher` prefixes,
//!   `component` and `istio`.
//! - Envoy Gateway merges `spec.bootstrap.value` (`type: Merge`) into its own bootstrap,
//!   which has no `stats_config` of its own when no metric matches are set; lists append.

use serde_json::{json, Value};
use serde_yaml_ng::Value as Yaml;
use tokenmeter_cli::bootstrap;
use tokenmeter_cli::envoy_gateway::{self, Code, EnvoyGatewaySpec};
use tokenmeter_cli::istio::{self, IstioSpec};
use tokenmeter_core::config::Config;
use tokenmeter_testkit::envoy::Envoy;
use tokenmeter_testkit::prom::Exposition;
use tokenmeter_testkit::upstream::Upstream;

use crate::common::{chat, eventually, reported, spec, Gateway};

const CONFIG: &str = r#"{
  "namespace": "llm",
  "dimensions": [
    {"name": "Operation ID"},
    {"name": "model"},
    {"name": "team", "value": "{request.header.x-team|none}"}
  ]
}"#;

fn documents(yaml: &str) -> Vec<Yaml> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The filter configuration a control plane passes on: the rendered object as JSON.
fn as_filter_config(v: &Yaml) -> String {
    serde_json::to_value(v).unwrap().to_string()
}

fn config() -> (Value, Config) {
    (
        serde_json::from_str(CONFIG).unwrap(),
        Config::parse(CONFIG.as_bytes()).unwrap(),
    )
}

/// The bootstrap `envoy-config` renders for `filter_config` in front of `upstream`, with
/// its `stats_config` replaced by `stats_config` (none when `None`), then `merge` merged in.
fn bootstrap_with(
    filter_config: &str,
    upstream: &Upstream,
    stats_config: Option<Yaml>,
    merge: Option<Yaml>,
) -> String {
    let config = Config::parse(filter_config.as_bytes()).expect("rendered config is valid");
    let yaml = bootstrap::render(&spec(filter_config, upstream), &config);
    let mut doc: Yaml = serde_yaml_ng::from_str(&yaml).unwrap();
    let map = doc.as_mapping_mut().unwrap();
    map.remove("stats_config");
    if let Some(stats) = stats_config {
        map.insert("stats_config".into(), stats);
    }
    if let Some(m) = merge {
        merge_into(&mut doc, m);
    }
    serde_yaml_ng::to_string(&doc).unwrap()
}

/// Protobuf's merge, as Envoy Gateway applies a `Merge` bootstrap: messages merge field by
/// field, lists append, scalars are replaced.
fn merge_into(into: &mut Yaml, from: Yaml) {
    match (into, from) {
        (Yaml::Mapping(a), Yaml::Mapping(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge_into(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Yaml::Sequence(a), Yaml::Sequence(b)) => a.extend(b),
        (slot, v) => *slot = v,
    }
}

fn start(yaml: &str, upstream: Upstream) -> Gateway {
    let envoy = Envoy::start(yaml, 2).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Gateway { envoy, upstream }
}

/// A JSON exchange, a stream whose usage the filter asks for, and a rate-limited one, then
/// the labelled counters checked against what the upstream reported.
fn meter_and_check(gw: &Gateway) {
    let team = [("x-team", "blue")];
    let r = gw.post(
        "/v1/chat/completions",
        &team,
        &chat("gpt-4o", "Count me exactly."),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (p1, c1, _) = reported(&r);

    let mut stream = chat("gpt-4o", "Stream me, exactly too.");
    stream["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &team, &stream);
    assert_eq!(r.status, 200);
    // The same exchange asked of the upstream with usage: what the filter must count.
    let mut asked = stream.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let direct = gw.post_direct("/v1/chat/completions", &team, asked.to_string().as_bytes());
    let usage = String::from_utf8_lossy(&direct.body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|e| e.get("usage").filter(|u| !u.is_null()).cloned())
        .next_back()
        .expect("the upstream reports stream usage");
    let p2 = usage["prompt_tokens"].as_f64().unwrap();
    let c2 = usage["completion_tokens"].as_f64().unwrap();

    let r = gw.post(
        "/v1/chat/completions",
        &[("x-team", "red"), ("x-upstream-status", "429")],
        &chat("gpt-4o", "Too many."),
    );
    assert_eq!(r.status, 429);

    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 3.0);
    let blue = [
        ("team", "blue"),
        ("operation_id", "chat.completions"),
        ("model", "gpt-4o-2024-08-06"),
    ];
    let all = |m: &Exposition| m.lines_with_prefix("llm_").join("\n");
    assert_eq!(
        m.sum(
            "llm_requests_total",
            &[&blue[..], &[("status_class", "2xx")]].concat()
        ),
        2.0,
        "{}",
        all(&m)
    );
    assert_eq!(
        m.sum("llm_prompt_tokens_total", &blue),
        p1 + p2,
        "{}",
        all(&m)
    );
    assert_eq!(
        m.sum("llm_completion_tokens_total", &blue),
        c1 + c2,
        "{}",
        all(&m)
    );
    assert_eq!(
        m.sum(
            "llm_errors_total",
            &[("team", "red"), ("error_type", "rate_limited")]
        ),
        1.0,
        "{}",
        all(&m)
    );
    assert_eq!(
        m.sum(
            "llm_requests_total",
            &[("team", "red"), ("status_class", "4xx")]
        ),
        1.0
    );
    // No series kept its labels in the name: every rule matched.
    for s in &m.samples {
        assert!(!s.name.contains("=.="), "unlabelled series {}", s.name);
    }
}

/// Istio's part: the bootstrap's `stats_config` from the mesh configuration.
fn istio_stats_config(tags: &[String], prefixes: &[String]) -> Yaml {
    let rules: Vec<Value> = tags
        .iter()
        .map(|t| json!({"tag_name": t, "regex": format!(r"({t}=\.=(.*?);\.;)")}))
        .collect();
    let mut patterns = vec![json!({"prefix": "reporter="})];
    patterns.extend(prefixes.iter().map(|p| json!({"prefix": p})));
    patterns.push(json!({"prefix": "component"}));
    patterns.push(json!({"prefix": "istio"}));
    serde_json::from_value(json!({
        "use_all_default_tags": false,
        "stats_tags": rules,
        "stats_matcher": {"inclusion_list": {"patterns": patterns}},
    }))
    .unwrap()
}

#[test]
fn istio_config_labels_the_filters_metrics_in_envoy() {
    let (value, config) = config();
    let spec = IstioSpec {
        name: "tokenmeter".into(),
        namespace: "istio-system".into(),
        selector: vec![("istio".into(), "ingressgateway".into())],
        url: "oci://registry.example/tokenmeter:1".into(),
        sha256: None,
    };
    let docs = documents(&istio::render(&spec, &value, &config));
    let filter_config = as_filter_config(&docs[0]["spec"]["pluginConfig"]);
    let proxy = &docs[1]["spec"]["meshConfig"]["defaultConfig"];
    let tags = strings(&proxy["extraStatTags"]);
    let prefixes = strings(&proxy["proxyStatsMatcher"]["inclusionPrefixes"]);

    let upstream = Upstream::start().unwrap();
    let yaml = bootstrap_with(
        &filter_config,
        &upstream,
        Some(istio_stats_config(&tags, &prefixes)),
        None,
    );
    meter_and_check(&start(&yaml, upstream));

    // Without the inclusion prefix Istio's matcher drops the filter's stats: the prefix is
    // what makes them reach Prometheus.
    let upstream = Upstream::start().unwrap();
    let yaml = bootstrap_with(
        &filter_config,
        &upstream,
        Some(istio_stats_config(&tags, &[])),
        None,
    );
    let gw = start(&yaml, upstream);
    let r = gw.post("/v1/chat/completions", &[], &chat("gpt-4o", "Unseen."));
    assert_eq!(r.status, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let m = gw.metrics();
    assert!(
        m.lines_with_prefix("llm_").is_empty(),
        "stats outside the inclusion list were kept:\n{}",
        m.lines_with_prefix("llm_").join("\n")
    );
}

#[test]
fn envoy_gateway_config_labels_the_filters_metrics_in_envoy() {
    let (value, config) = config();
    let spec = EnvoyGatewaySpec {
        name: "tokenmeter".into(),
        namespace: "default".into(),
        gateways: vec!["eg".into()],
        routes: Vec::new(),
        code: Code::Image("registry.example/tokenmeter:1".into()),
        sha256: None,
    };
    let docs = documents(&envoy_gateway::render(&spec, &value, &config));
    let filter_config = as_filter_config(&docs[0]["spec"]["wasm"][0]["config"]);
    let bootstrap = &docs[1]["spec"]["bootstrap"];
    assert_eq!(bootstrap["type"].as_str(), Some("Merge"));
    let merge: Yaml = serde_yaml_ng::from_str(bootstrap["value"].as_str().unwrap()).unwrap();

    let upstream = Upstream::start().unwrap();
    let yaml = bootstrap_with(&filter_config, &upstream, None, Some(merge));
    meter_and_check(&start(&yaml, upstream));
}
