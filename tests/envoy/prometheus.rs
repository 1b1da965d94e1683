//! End to end with a real Prometheus (Debian's): it scrapes the real Envoy running the
//! filter (admin `/stats/prometheus`) and the real `tokenmeter serve` (`/metrics`, fed by the
//! gateway's records and judging them every second), on deploy/prometheus/prometheus.yml
//! with its rules, and answers through its HTTP API what the upstream reported, exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::common::{chat, eventually, reported, spec};
use serde_json::{json, Value};
use serde_yaml_ng::Value as Yaml;
use tokenmeter_cli::bootstrap;
use tokenmeter_core::config::Config;
use tokenmeter_testkit::client;
use tokenmeter_testkit::collector::Collector;
use tokenmeter_testkit::envoy::Envoy;
use tokenmeter_testkit::grafana;
use tokenmeter_testkit::judge::{JudgeServer, Reply};
use tokenmeter_testkit::prometheus::{Prometheus, Sample};
use tokenmeter_testkit::promql::{Catalogue, SCRAPE_LABELS};
use tokenmeter_testkit::upstream::Upstream;

const BIN: &str = env!("CARGO_BIN_EXE_tokenmeter");
const LIMIT: Duration = Duration::from_secs(15);

fn root(path: &str) -> std::path::PathBuf {
    Path::new(crate::ROOT).join(path)
}

/// deploy/prometheus/prometheus.yml with this test's targets, every second, its rule files
/// by absolute path.
fn prometheus_config(envoy_admin: &str, serve: &str) -> String {
    let text = std::fs::read_to_string(root("deploy/prometheus/prometheus.yml")).unwrap();
    let mut config: Yaml = serde_yaml_ng::from_str(&text).unwrap();
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let rules: Vec<Yaml> = config["rule_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| {
            let path = root("deploy/prometheus").join(f.as_str().unwrap());
            assert!(path.exists(), "{}", path.display());
            Yaml::from(path.display().to_string())
        })
        .collect();
    assert_eq!(rules.len(), 2);
    config["rule_files"] = Yaml::Sequence(rules);
    for job in config["scrape_configs"].as_sequence_mut().unwrap() {
        let target = match job["job_name"].as_str().unwrap() {
            "envoy" => envoy_admin,
            "tokenmeter" => serve,
            other => panic!("a job {other} the test does not know"),
        };
        job["static_configs"] =
            serde_yaml_ng::from_str(&format!("[{{targets: [\"{target}\"]}}]")).unwrap();
    }
    serde_yaml_ng::to_string(&config).unwrap()
}

/// A vector as label values (of `keys`, joined by `/`) to values.
fn by(samples: &[Sample], keys: &[&str]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .map(|s| {
            let k: Vec<&str> = keys
                .iter()
                .map(|k| s.labels.get(*k).map_or("", String::as_str))
                .collect();
            (k.join("/"), s.value)
        })
        .collect()
}

/// The model the upstream names and the total tokens it reports for a streamed request,
/// asked for directly: the same text gives the same counts (its tokenizer is deterministic).
fn streamed_usage(upstream: &Upstream, body: &Value) -> (String, f64) {
    let mut b = body.clone();
    b["stream_options"] = json!({"include_usage": true});
    let r = client::post(
        &format!("http://{}/v1/chat/completions", upstream.addr),
        &[],
        b.to_string().as_bytes(),
    )
    .unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&r.body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let total = events
        .iter()
        .find_map(|e| e["usage"]["total_tokens"].as_f64())
        .expect("the upstream reports stream usage");
    (events[0]["model"].as_str().unwrap().to_string(), total)
}

#[test]
fn prometheus_scrapes_exact_tokens_per_model_and_serves_quality() {
    // tokenmeter serve, judging every record it receives once a second.
    let judge = JudgeServer::start(|_, _| Reply::json_score(5, "fine")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let monitor = dir.path().join("monitor.yaml");
    std::fs::write(
        &monitor,
        format!(
            "name: e2e-quality\nsampling_rate: 1.0\njudge:\n  url: {}\n  model: judge-model\nmetrics: {{coherence: {{}}}}\nverdict: {{min_samples: 1, min_coverage: 0}}\nschedule: \"* * * * * *\"\n",
            judge.url()
        ),
    )
    .unwrap();
    let serve = Collector::start(
        Path::new(BIN),
        &dir.path().join("records.db"),
        &["--monitor", monitor.to_str().unwrap()],
    )
    .unwrap();
    let serve_addr = serve.url().trim_start_matches("http://").to_string();

    // Envoy with the example configuration (model and team among its labels), every request
    // sampled to serve.
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(root("examples/filter-config.json")).unwrap())
            .unwrap();
    config["collect"] = json!({"cluster": bootstrap::COLLECTOR_CLUSTER, "sample_rate": 1});
    let config = config.to_string();
    let upstream = Upstream::start().unwrap();
    let mut s = spec(&config, &upstream);
    let (host, port) = serve_addr.rsplit_once(':').unwrap();
    s.collectors = vec![(host.to_string(), port.parse().unwrap())];
    let envoy = Envoy::start(
        &bootstrap::render(&s, &Config::parse(config.as_bytes()).unwrap()),
        2,
    )
    .unwrap();

    let prometheus =
        Prometheus::start(&prometheus_config(&envoy.admin.to_string(), &serve_addr)).unwrap();
    let pid = prometheus.pid();

    // Known traffic: two JSON answers and a rate-limited request for gpt-4o, a stream
    // (usage injected by the filter) for gpt-4o-mini.
    let post = |team: &str, extra: &[(&str, &str)], body: &Value| {
        let mut headers = vec![("x-team", team)];
        headers.extend_from_slice(extra);
        client::post(
            &envoy.url("/v1/chat/completions"),
            &headers,
            body.to_string().as_bytes(),
        )
        .unwrap()
    };
    let a = post("blue", &[], &chat("gpt-4o", "What does plan A cost?"));
    let b = post(
        "red",
        &[],
        &chat("gpt-4o", "Summarise the pricing page in two lines."),
    );
    let limited = post(
        "red",
        &[("x-upstream-status", "429")],
        &chat("gpt-4o", "Again?"),
    );
    let mut stream = chat("gpt-4o-mini", "Stream a short answer about token metering.");
    stream["stream"] = json!(true);
    let c = post("blue", &[], &stream);
    assert_eq!(
        (a.status, b.status, limited.status, c.status),
        (200, 200, 429, 200)
    );
    // `model` is the model the response names (a dated version of the one asked for).
    let big = a.json()["model"].as_str().unwrap().to_string();
    assert_eq!(b.json()["model"], big.as_str());
    let (mini, mini_tokens) = streamed_usage(&upstream, &stream);
    assert!(
        big.starts_with("gpt-4o-") && mini.starts_with("gpt-4o-mini-"),
        "{big} {mini}"
    );
    let expected_tokens = BTreeMap::from([
        (big.clone(), reported(&a).2 + reported(&b).2),
        (mini.clone(), mini_tokens),
    ]);
    assert!(
        expected_tokens.values().all(|t| *t > 0.0),
        "{expected_tokens:?}"
    );

    // Envoy has settled all four (histograms at its next stats flush) before Prometheus is
    // asked.
    let m = eventually(&envoy, |m| {
        m.sum("llm_requests_total", &[]) >= 4.0
            && m.sum("llm_time_to_first_token_ms_count", &[]) >= 1.0
    });
    assert_eq!(m.sum("llm_requests_total", &[]), 4.0);
    // The names and labels the checks of the rules and the dashboard take from the core
    // (tests/cli/deploy.rs) are the ones Envoy shows.
    let catalogue = Catalogue::filter(&Config::parse(config.as_bytes()).unwrap()).unwrap();
    let ours: Vec<_> = m
        .samples
        .iter()
        .filter(|s| s.name.starts_with("llm_"))
        .collect();
    assert!(ours.len() >= 30, "{ours:?}");
    for s in ours {
        let labels: BTreeSet<String> = s
            .labels
            .keys()
            .cloned()
            .chain(SCRAPE_LABELS.map(String::from))
            .collect();
        assert_eq!(catalogue.labels(&s.name), Some(&labels), "{}", s.name);
    }

    let tokens = prometheus
        .eventually("sum by (model) (llm_tokens_total)", LIMIT, |s| {
            by(s, &["model"]) == expected_tokens
        })
        .unwrap();
    assert_eq!(
        by(&tokens, &["model"]),
        expected_tokens,
        "{}",
        prometheus.log()
    );
    let requests = prometheus
        .vector("sum by (model, team, status_class) (llm_requests_total)")
        .unwrap();
    assert_eq!(
        by(&requests, &["model", "team", "status_class"]),
        BTreeMap::from([
            (format!("{big}/blue/2xx"), 1.0),
            (format!("{big}/red/2xx"), 1.0),
            // An error body names no model: the request's stands.
            ("gpt-4o/red/4xx".to_string(), 1.0),
            (format!("{mini}/blue/2xx"), 1.0),
        ])
    );
    let errors = prometheus
        .vector("sum by (model, error_type) (llm_errors_total)")
        .unwrap();
    assert_eq!(
        by(&errors, &["model", "error_type"]),
        BTreeMap::from([("gpt-4o/rate_limited".to_string(), 1.0)])
    );
    let ttft = prometheus
        .vector("sum by (model) (llm_time_to_first_token_ms_count)")
        .unwrap();
    assert_eq!(by(&ttft, &["model"]), BTreeMap::from([(mini.clone(), 1.0)]));

    // serve's side: the three answered requests reached it as records and were judged.
    let scored = prometheus
        .eventually(
            "llm_quality_scored_records{monitor=\"e2e-quality\", metric=\"coherence\"}",
            LIMIT,
            |s| s.len() == 1 && s[0].value == 3.0,
        )
        .unwrap();
    assert_eq!(scored.len(), 1, "{scored:?}");
    assert_eq!(scored[0].value, 3.0, "{scored:?}");
    assert_eq!(scored[0].labels["job"], "tokenmeter");
    assert_eq!(scored[0].labels["instance"], serve_addr);
    let pass = prometheus
        .vector("llm_quality_pass_rate{monitor=\"e2e-quality\"}")
        .unwrap();
    assert_eq!(
        by(&pass, &["metric"]),
        BTreeMap::from([("coherence".to_string(), 1.0)])
    );
    let up = prometheus.vector("up").unwrap();
    assert_eq!(
        by(&up, &["job"]),
        BTreeMap::from([("envoy".to_string(), 1.0), ("tokenmeter".to_string(), 1.0)])
    );

    // The rules of deploy/prometheus run on this data without error, the recording rules
    // keep the labels they name, and nothing alerts on healthy traffic.
    let per_model = prometheus
        .eventually("model:llm_tokens:rate5m", LIMIT, |s| s.len() == 2)
        .unwrap();
    assert_eq!(
        per_model
            .iter()
            .map(|s| s.labels.keys().cloned().collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        vec![vec!["__name__".to_string(), "model".to_string()]; 2],
        "{per_model:?}"
    );
    let team = prometheus.vector("team:llm_tokens:rate5m").unwrap();
    assert_eq!(
        by(&team, &["team"]).keys().collect::<Vec<_>>(),
        ["blue", "red"]
    );
    let groups = prometheus.api("/api/v1/rules").unwrap();
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 18, "{groups}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    let alerts = prometheus.api("/api/v1/alerts").unwrap();
    assert_eq!(alerts["alerts"], json!([]), "{alerts}");

    // Every query of the Grafana dashboard evaluates on this Prometheus (no matching
    // errors), and the token panels show both models.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root("deploy/grafana/tokenmeter.json")).unwrap(),
    )
    .unwrap();
    for q in grafana::queries(&dashboard) {
        let expr = q
            .expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$model", ".*")
            .replace("$team", ".*")
            .replace("$monitor", ".*");
        let samples = prometheus
            .vector(&expr)
            .unwrap_or_else(|e| panic!("{}: {e}", q.panel));
        if q.panel.starts_with("Tokens per second by model") {
            let models: Vec<String> = by(&samples, &["model"]).into_keys().collect();
            assert_eq!(models, [big.clone(), mini.clone()], "{}", q.expr);
        }
    }

    // Stopped by its PID.
    drop(prometheus);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "Prometheus {pid} still runs"
    );
}
