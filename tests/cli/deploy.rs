//! `deploy/`: the Prometheus rules under Debian's promtool (syntax, their unit tests, every
//! alert tested firing and not firing, a wrong expectation failing), and the PromQL of the
//! rules, of their tests' series and of the Grafana dashboard naming only the metrics and
//! labels the filter (the core's families, for examples/filter-config.json) and a real
//! `tokenmeter serve` emit. The committed dashboard is the generator's output.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::evaluation::{record, write_monitor, write_records, BIN};
use chrono::{SecondsFormat, Utc};
use serde_yaml_ng::Value as Yaml;
use tokenmeter_core::config::Config;
use tokenmeter_testkit::collector::Collector;
use tokenmeter_testkit::grafana;
use tokenmeter_testkit::judge::{JudgeServer, Reply};
use tokenmeter_testkit::prom::Exposition;
use tokenmeter_testkit::prometheus::promtool_bin;
use tokenmeter_testkit::promql::{self, Catalogue};

fn deploy(path: &str) -> PathBuf {
    Path::new(crate::ROOT).join("deploy").join(path)
}

const RULES: [&str; 2] = ["recording.rules.yml", "alerts.rules.yml"];

/// The rule unit tests: every `*.test.yaml` of deploy/prometheus.
fn test_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy("prometheus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    files
}

/// Runs promtool in `dir`; whether it succeeded, and what it printed.
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn yaml(path: &Path) -> Yaml {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn seq(v: &Yaml) -> Vec<Yaml> {
    v.as_sequence().cloned().unwrap_or_default()
}

fn text<'a>(v: &'a Yaml, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Yaml::as_str)
}

/// Every rule of the rule files, in order.
fn rules() -> Vec<Yaml> {
    RULES
        .iter()
        .flat_map(|f| seq(&yaml(&deploy("prometheus").join(f))["groups"]))
        .flat_map(|g| seq(&g["rules"]))
        .collect()
}

fn filter_config() -> Config {
    let text = std::fs::read(Path::new(crate::ROOT).join("examples/filter-config.json")).unwrap();
    Config::parse(&text).unwrap()
}

/// What the filter emits for examples/filter-config.json, and what a real `tokenmeter
/// serve` shows at /metrics after a monitor's run: each sample's labels, and the families
/// it declares without samples (no labels known for those).
fn emitted() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        let mut cat = Catalogue::filter(&filter_config()).unwrap();
        let judge = JudgeServer::start(|_, _| Reply::json_score(5, "fine")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let recent =
            (Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
        let records: Vec<_> = (0..3)
            .map(|i| {
                let mut r = record(&format!("r{i}"), "", true);
                r["time"] = recent.clone().into();
                r
            })
            .collect();
        let file = write_records(dir.path(), &records);
        let out = Command::new(BIN)
            .args(["records", "import", "--db"])
            .arg(&db)
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let monitor = write_monitor(
            dir.path(),
            "support-bot",
            &judge.url(),
            "",
            "{coherence: {}, groundedness: {}}",
            "schedule: \"0 0 1 1 *\"\n",
        );
        let serve = Collector::start(
            Path::new(BIN),
            &db,
            &["--monitor", monitor.to_str().unwrap(), "--run-monitors-now"],
        )
        .unwrap();
        let text = serve
            .poll("/metrics", Duration::from_secs(60), |body| {
                body.contains("llm_quality_scored_records{monitor=\"support-bot\"")
            })
            .unwrap();
        let exposition = Exposition::parse(&text).unwrap();
        for s in &exposition.samples {
            cat.insert_scraped(&s.name, s.labels.keys().map(String::as_str));
        }
        for family in exposition.types.keys() {
            if cat.labels(family).is_none() {
                cat.insert_scraped(family, []);
            }
        }
        cat
    })
}

/// The catalogue with the recording rules' series added.
fn with_records() -> Catalogue {
    let mut cat = emitted().clone();
    for r in rules() {
        if let (Some(name), Some(expr)) = (text(&r, "record"), text(&r, "expr")) {
            cat.record(name, expr)
                .unwrap_or_else(|e| panic!("record {name}: {e}"));
        }
    }
    cat
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy("prometheus");
    let (ok, out) = promtool(&dir, &["check", "rules", RULES[0], RULES[1]]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    // The example scrape configuration, with the rule files it loads.
    let (ok, out) = promtool(&dir, &["check", "config", "prometheus.yml"]);
    assert!(ok, "{out}");
    let files = test_files();
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let (ok, out) = promtool(&dir, &args);
    assert!(ok, "{out}");
    assert_eq!(out.matches("SUCCESS").count(), files.len(), "{out}");
}

#[test]
fn every_rule_is_tested_and_every_alert_both_fires_and_does_not() {
    let rules = rules();
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| text(r, "alert")).collect();
    let records: BTreeSet<&str> = rules.iter().filter_map(|r| text(r, "record")).collect();
    assert_eq!((alerts.len(), records.len()), (7, 11));
    let mut tested_alerts = BTreeSet::new();
    let mut tested_records = BTreeSet::new();
    for file in test_files() {
        let doc = yaml(&deploy("prometheus").join(&file));
        for test in seq(&doc["tests"]) {
            // Firing and not firing on the same input series, so "not firing" is not
            // merely "no data".
            let mut fires = BTreeSet::new();
            let mut quiet = BTreeSet::new();
            for t in seq(&test["alert_rule_test"]) {
                let name = text(&t, "alertname").unwrap().to_string();
                assert!(
                    alerts.contains(name.as_str()),
                    "{file}: {name} is no alert of the rules (promtool passes such a test)"
                );
                if seq(&t["exp_alerts"]).is_empty() {
                    quiet.insert(name);
                } else {
                    fires.insert(name);
                }
            }
            tested_alerts.extend(fires.intersection(&quiet).cloned());
            for t in seq(&test["promql_expr_test"]) {
                let expr = text(&t, "expr").unwrap();
                tested_records.extend(promql::refs(expr).unwrap().metrics);
            }
        }
    }
    for a in &alerts {
        assert!(
            tested_alerts.contains(*a),
            "{a}: no test of the rules sees it both firing and not firing on the same series"
        );
    }
    for r in &records {
        assert!(
            tested_records.contains(*r),
            "{r}: no promql_expr_test reads it"
        );
    }
}

#[test]
fn a_wrong_expectation_fails_promtool() {
    let dir = tempfile::tempdir().unwrap();
    for f in RULES.iter().chain(["alerts.test.yaml"].iter()) {
        std::fs::copy(deploy("prometheus").join(f), dir.path().join(f)).unwrap();
    }
    let (ok, out) = promtool(dir.path(), &["test", "rules", "alerts.test.yaml"]);
    assert!(ok, "{out}");
    // One annotation off by a little, and an alert expected where it has not fired yet.
    let test = std::fs::read_to_string(dir.path().join("alerts.test.yaml")).unwrap();
    for (from, to, alert) in [
        ("burns 7.2M tokens", "burns 7.3M tokens", "LLMModelTokenBurnHigh"),
        (
            "      - eval_time: 18m\n        alertname: LLMUpstreamErrorRateHigh\n        exp_alerts: []\n",
            "      - eval_time: 18m\n        alertname: LLMUpstreamErrorRateHigh\n        exp_alerts:\n          - exp_labels: {severity: critical, api_id: llm-default}\n",
            "LLMUpstreamErrorRateHigh",
        ),
    ] {
        assert!(test.contains(from), "{from}");
        std::fs::write(
            dir.path().join("alerts.test.yaml"),
            test.replacen(from, to, 1),
        )
        .unwrap();
        let (ok, out) = promtool(dir.path(), &["test", "rules", "alerts.test.yaml"]);
        assert!(!ok, "promtool accepted a wrong expectation for {alert}: {out}");
        assert!(out.contains("FAILED") && out.contains(alert), "{out}");
    }
}

/// `{{ $labels.NAME }}` names of a template.
fn template_labels(template: &str) -> Vec<String> {
    template
        .split("$labels.")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn the_rules_and_their_tests_name_only_what_tokenmeter_emits() {
    let cat = with_records();
    for r in rules() {
        let expr = text(&r, "expr").unwrap();
        let problems = cat.problems(expr);
        assert!(problems.is_empty(), "{expr}: {problems:?}");
        let Some(alert) = text(&r, "alert") else {
            continue;
        };
        let mut labels = cat.output_labels(expr).unwrap();
        for (k, _) in r["labels"].as_mapping().into_iter().flatten() {
            labels.insert(k.as_str().unwrap().to_string());
        }
        for (_, template) in r["annotations"].as_mapping().into_iter().flatten() {
            for l in template_labels(template.as_str().unwrap()) {
                assert!(
                    labels.contains(&l),
                    "{alert}: its annotations name $labels.{l}, which it does not have ({labels:?})"
                );
            }
        }
    }
    // The tests' series are shaped like real ones, and expect only labels alerts have.
    for file in test_files() {
        let doc = yaml(&deploy("prometheus").join(&file));
        for test in seq(&doc["tests"]) {
            for s in seq(&test["input_series"]) {
                let series = text(&s, "series").unwrap();
                let problems = cat.problems(series);
                assert!(problems.is_empty(), "{file}: {series}: {problems:?}");
            }
            for t in seq(&test["alert_rule_test"]) {
                let alert = text(&t, "alertname").unwrap();
                let rule = rules()
                    .into_iter()
                    .find(|r| text(r, "alert") == Some(alert))
                    .unwrap();
                let mut labels = cat.output_labels(text(&rule, "expr").unwrap()).unwrap();
                labels.insert("severity".into());
                for a in seq(&t["exp_alerts"]) {
                    for (k, _) in a["exp_labels"].as_mapping().into_iter().flatten() {
                        let k = k.as_str().unwrap();
                        assert!(labels.contains(k), "{file}: {alert} has no label {k}");
                    }
                }
            }
        }
    }
    // And the check sees a wrong name.
    assert!(!cat
        .problems("sum by (team) (rate(llm_records_dropped_total[5m]))")
        .is_empty());
    assert!(!cat.problems("llm_quality_pass_rate{team=\"a\"}").is_empty());
    assert!(!cat.problems("llm_quality_passrate").is_empty());
}

#[test]
fn the_committed_dashboard_is_the_generators_output() {
    let generated = grafana::render(&filter_config(), &["model", "team"]).unwrap();
    let committed = std::fs::read_to_string(deploy("grafana/tokenmeter.json")).unwrap();
    assert!(
        generated == committed,
        "deploy/grafana/tokenmeter.json is not the generator's output: run `make dashboard`"
    );
}

#[test]
fn the_dashboard_names_only_what_tokenmeter_emits() {
    let cat = emitted();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/tokenmeter.json")).unwrap())
            .unwrap();
    let queries = grafana::queries(&dashboard);
    assert!(queries.len() >= 30, "{}", queries.len());
    let mut metrics = BTreeSet::new();
    for q in &queries {
        let problems = cat.problems(&q.expr);
        assert!(problems.is_empty(), "{}: {}: {problems:?}", q.panel, q.expr);
        let labels = cat.output_labels(&q.expr).unwrap();
        for l in grafana::legend_labels(&q.legend) {
            assert!(
                labels.contains(&l),
                "{}: the legend names {l}, which {} does not keep",
                q.panel,
                q.expr
            );
        }
        metrics.extend(promql::refs(&q.expr).unwrap().metrics);
    }
    // Every quality gauge the dashboard shows is one serve declares.
    for (name, _) in grafana::QUALITY {
        assert!(metrics.contains(&format!("llm_{name}")), "{name}");
    }
    let variables = grafana::variables(&dashboard);
    assert_eq!(variables.len(), 3, "{variables:?}");
    for (metric, label) in variables {
        assert!(
            cat.labels(&metric).is_some_and(|ls| ls.contains(&label)),
            "variable {label}: {metric} has no such label"
        );
    }
}

#[test]
fn the_dashboards_queries_parse() {
    // Each query as a recording rule, Grafana's variables replaced as Grafana would.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/tokenmeter.json")).unwrap())
            .unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in grafana::queries(&dashboard).iter().enumerate() {
        let expr = q
            .expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "6h")
            .replace("$model", ".*")
            .replace("$team", ".*")
            .replace("$monitor", ".*");
        assert!(!expr.contains('$'), "{expr}");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.rules.yml"), rules).unwrap();
    let (ok, out) = promtool(dir.path(), &["check", "rules", "dashboard.rules.yml"]);
    assert!(ok, "{out}");
}
