//! The Grafana dashboard of `deploy/grafana/tokenmeter.json`, generated from the core's
//! metric families (the list the README's metrics reference documents) for a filter
//! configuration, plus the quality gauges `tokenmeter serve` exposes at `/metrics`.
//!
//! Every family the configuration emits has a panel (the generator refuses otherwise), and
//! panel descriptions are the families' own help texts. The tests check the committed JSON
//! against this output and every expression's names against what the filter and serve emit.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tokenmeter_core::config::{Config, Naming};
use tokenmeter_core::series::metrics::{self, Family};

use crate::promql::{self, Catalogue};

/// The gauges of `tokenmeter serve`'s `/metrics` the dashboard shows, without their
/// namespace, with what each panel says of them.
pub const QUALITY: [(&str, &str); 5] = [
    ("quality_pass_rate", "Share of the scored sampled records at or above the acceptable score in each monitor's last window, per metric (groundedness, relevance, coherence, fluency)."),
    ("quality_average_score", "Mean judge score (1 to 5) of the scored sampled records in each monitor's last window, per metric."),
    ("quality_breached", "1 when a metric breached its threshold under its rule in the monitor's last window."),
    ("quality_scored_records", "Records the judge scored in each monitor's last window, per metric."),
    ("quality_last_run_failed", "1 when the monitor's most recent evaluation failed (judge unreachable, breaker open...)."),
];

const RATE: &str = "$__rate_interval";

fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

struct Panel {
    title: String,
    description: String,
    kind: &'static str,
    unit: &'static str,
    width: u64,
    /// (expression, legend)
    targets: Vec<(String, String)>,
    /// Extra `fieldConfig.defaults` members.
    defaults: Value,
}

enum Item {
    Row(&'static str),
    Panel(Panel),
}

fn panel(title: impl Into<String>, description: impl Into<String>, unit: &'static str) -> Panel {
    Panel {
        title: title.into(),
        description: description.into(),
        kind: "timeseries",
        unit,
        width: 12,
        targets: Vec::new(),
        defaults: json!({}),
    }
}

impl Panel {
    fn target(mut self, expr: String, legend: impl Into<String>) -> Panel {
        self.targets.push((expr, legend.into()));
        self
    }
}

struct Names<'a> {
    config: &'a Config,
    catalogue: Catalogue,
    by: Vec<String>,
}

impl Names<'_> {
    fn name(&self, f: &Family) -> String {
        metrics::family_name(self.config, f)
    }

    /// The variables' matchers, for series that carry every variable's label.
    fn select(&self, metric: &str) -> String {
        let carries = self
            .catalogue
            .labels(metric)
            .is_some_and(|ls| self.by.iter().all(|l| ls.contains(l)));
        if !carries || self.by.is_empty() {
            return String::new();
        }
        let m: Vec<String> = self.by.iter().map(|l| format!("{l}=~\"${l}\"")).collect();
        format!("{{{}}}", m.join(", "))
    }

    /// `rate(NAME{variables}[$__rate_interval])`, summed by `by`.
    fn rate(&self, f: &Family, by: &[&str]) -> String {
        self.rate_of(&self.name(f), by)
    }

    fn rate_of(&self, metric: &str, by: &[&str]) -> String {
        let sel = self.select(metric);
        if by.is_empty() {
            return format!("sum(rate({metric}{sel}[{RATE}]))");
        }
        format!("sum by ({}) (rate({metric}{sel}[{RATE}]))", by.join(", "))
    }

    fn p95(&self, f: &Family, label: &str) -> String {
        let bucket = format!("{}_bucket", self.name(f));
        format!(
            "histogram_quantile(0.95, {})",
            self.rate_of(&bucket, &[label, "le"])
        )
    }
}

fn items(n: &Names) -> Vec<Item> {
    use metrics::*;
    let ns = &n.config.namespace;
    let mut out = vec![Item::Row("Tokens")];
    let by: Vec<&str> = n.by.iter().map(String::as_str).collect();
    for label in &by {
        out.push(Item::Panel(
            panel(
                format!("Tokens per second by {label}"),
                format!("{} Per {label}, per second.", TOTAL.help),
                "short",
            )
            .target(n.rate(&TOTAL, &[label]), format!("{{{{{label}}}}}")),
        ));
    }
    for label in &by {
        let metric = n.name(&TOTAL);
        let mut p = panel(
            format!("Tokens in the time range by {label}"),
            format!(
                "{} Per {label}, over the dashboard's time range.",
                TOTAL.help
            ),
            "short",
        )
        .target(
            format!(
                "sum by ({label}) (increase({metric}{}[$__range]))",
                n.select(&metric)
            ),
            format!("{{{{{label}}}}}"),
        );
        p.kind = "bargauge";
        out.push(Item::Panel(p));
    }
    out.push(Item::Panel(
        panel(
            "Prompt and completion tokens per second",
            format!("{} {}", PROMPT.help, COMPLETION.help),
            "short",
        )
        .target(n.rate(&PROMPT, &[]), "prompt")
        .target(n.rate(&COMPLETION, &[]), "completion"),
    ));
    out.push(Item::Panel(
        panel(
            "Token breakdowns per second",
            format!(
                "Parts of the prompt and completion tokens, never to be added to them. {} {} {} {}",
                CACHED.help, REASONING.help, AUDIO_PROMPT.help, AUDIO_COMPLETION.help
            ),
            "short",
        )
        .target(n.rate(&CACHED, &[]), "cached prompt")
        .target(n.rate(&REASONING, &[]), "reasoning")
        .target(n.rate(&AUDIO_PROMPT, &[]), "audio prompt")
        .target(n.rate(&AUDIO_COMPLETION, &[]), "audio completion"),
    ));

    out.push(Item::Row("Requests and errors"));
    out.push(Item::Panel(
        panel(
            "Requests per second by status class",
            REQUESTS.help,
            "reqps",
        )
        .target(n.rate(&REQUESTS, &["status_class"]), "{{status_class}}"),
    ));
    out.push(Item::Panel(
        panel("Errors per second by type", ERRORS.help, "reqps")
            .target(n.rate(&ERRORS, &["error_type"]), "{{error_type}}"),
    ));
    let ratio = |label: Option<&str>| {
        let by: Vec<&str> = label.into_iter().collect();
        // `or 0 * requests`: a value with no error is 0, not a gap.
        format!(
            "({errors} or 0 * {requests}) / {requests}",
            errors = n.rate(&ERRORS, &by),
            requests = n.rate(&REQUESTS, &by)
        )
    };
    out.push(Item::Panel(
        panel(
            "Error ratio",
            format!("Failed requests over metered requests. {}", ERRORS.help),
            "percentunit",
        )
        .target(ratio(None), "errors"),
    ));
    for label in &by {
        out.push(Item::Panel(
            panel(
                format!("Requests per second by {label}"),
                REQUESTS.help,
                "reqps",
            )
            .target(n.rate(&REQUESTS, &[label]), format!("{{{{{label}}}}}")),
        ));
        // Not by model: a failed request carries the model it asked for (its error body
        // names none), an answered one the model the response names, often a dated
        // version, so a ratio by model would set failures apart from their successes.
        if *label == "model" {
            continue;
        }
        out.push(Item::Panel(
            panel(
                format!("Error ratio by {label}"),
                format!(
                    "Failed requests over metered requests, per {label}. {}",
                    ERRORS.help
                ),
                "percentunit",
            )
            .target(ratio(Some(label)), format!("{{{{{label}}}}}")),
        ));
    }

    out.push(Item::Row("Latency"));
    if let Some(label) = by.first() {
        for (f, title) in [
            (&DURATION, "Request duration p95"),
            (&TTFT, "Time to first token p95"),
            (&TPOT, "Time per output token p95"),
        ] {
            let mut p = panel(format!("{title} by {label}"), f.help, "ms")
                .target(n.p95(f, label), format!("{{{{{label}}}}}"));
            p.width = 8;
            out.push(Item::Panel(p));
        }
    }

    out.push(Item::Row("Quality (tokenmeter serve)"));
    for (name, help) in QUALITY {
        let metric = format!("{ns}_{name}");
        let expr = format!("{metric}{{monitor=~\"$monitor\"}}");
        let mut p = match name {
            "quality_last_run_failed" => panel("Monitor runs failing", help, "none")
                .target(format!("max by (monitor) ({expr})"), "{{monitor}}"),
            _ => panel(title_of(name), help, unit_of(name)).target(expr, "{{monitor}} {{metric}}"),
        };
        match name {
            "quality_pass_rate" => p.defaults = json!({"min": 0, "max": 1}),
            "quality_average_score" => p.defaults = json!({"min": 1, "max": 5}),
            "quality_breached" | "quality_last_run_failed" => {
                p.kind = "stat";
                p.width = 6;
                p.defaults = json!({
                    "mappings": [{"type": "value", "options": {
                        "0": {"text": if name == "quality_breached" { "ok" } else { "ran" }, "color": "green"},
                        "1": {"text": if name == "quality_breached" { "breached" } else { "failed" }, "color": "red"}}}],
                    "thresholds": {"mode": "absolute", "steps": [
                        {"color": "green", "value": null}, {"color": "red", "value": 1}]}
                });
            }
            _ => {}
        }
        out.push(Item::Panel(p));
    }

    out.push(Item::Row("Delivery and limits"));
    out.push(Item::Panel(
        panel(
            "Inference records per second",
            format!("{} {}", RECORDS_SENT.help, RECORDS_DROPPED.help),
            "short",
        )
        .target(n.rate(&RECORDS_SENT, &[]), "sent")
        .target(n.rate(&RECORDS_DROPPED, &["reason"]), "dropped: {{reason}}"),
    ));
    out.push(Item::Panel(
        panel(
            "Usage rollups per second",
            format!(
                "{} {} {}",
                ROLLUPS_SENT.help, ROLLUPS_FAILED.help, ROLLUPS_DROPPED.help
            ),
            "short",
        )
        .target(n.rate(&ROLLUPS_SENT, &[]), "batches sent")
        .target(n.rate(&ROLLUPS_FAILED, &[]), "batches failed")
        .target(n.rate(&ROLLUPS_DROPPED, &[]), "requests dropped"),
    ));
    out.push(Item::Panel(
        panel(
            "Label values folded or shortened per second",
            format!("{} {}", OVERFLOW.help, SHORTENED.help),
            "short",
        )
        .target(n.rate(&OVERFLOW, &["dimension"]), "folded: {{dimension}}")
        .target(
            n.rate(&SHORTENED, &["dimension"]),
            "shortened: {{dimension}}",
        ),
    ));
    out.push(Item::Panel(
        panel(
            "Usage not read in full, per second",
            format!(
                "{} {} {}",
                OVER_BUDGET.help, INVALID_USAGE.help, SKIPPED_EVENTS.help
            ),
            "short",
        )
        .target(n.rate(&OVER_BUDGET, &[]), "over the memory budget")
        .target(n.rate(&INVALID_USAGE, &[]), "implausible usage")
        .target(n.rate(&SKIPPED_EVENTS, &[]), "stream events skipped"),
    ));
    out
}

fn title_of(name: &str) -> &'static str {
    match name {
        "quality_pass_rate" => "Pass rate by monitor and metric",
        "quality_average_score" => "Average score by monitor and metric",
        "quality_breached" => "Breached",
        "quality_scored_records" => "Scored records by monitor and metric",
        _ => "Quality",
    }
}

fn unit_of(name: &str) -> &'static str {
    match name {
        "quality_pass_rate" => "percentunit",
        _ => "none",
    }
}

fn query_variable(name: &str, metric: &str) -> Value {
    let q = format!("label_values({metric}, {name})");
    json!({
        "name": name,
        "label": name,
        "type": "query",
        "datasource": datasource(),
        "definition": q,
        "query": {"qryType": 1, "query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "includeAll": true,
        "allValue": ".*",
        "multi": true,
        "current": {},
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "hide": 0,
        "skipUrlSync": false
    })
}

/// The dashboard for `config`, with a variable and per-label panels for each of `by`
/// (labels of the configuration; the first also splits the latency panels).
pub fn dashboard(config: &Config, by: &[&str]) -> Result<Value> {
    if config.naming == Naming::Otel {
        bail!("the dashboard is written for the default metric names; this configuration uses OpenTelemetry names");
    }
    let labels: Vec<&str> = config.label_names().collect();
    for l in by {
        if !labels.contains(l) {
            bail!(
                "{l} is not a label of the configuration (its labels: {})",
                labels.join(", ")
            );
        }
    }
    let names = Names {
        config,
        catalogue: Catalogue::filter(config)?,
        by: by.iter().map(|l| l.to_string()).collect(),
    };
    let items = items(&names);

    // Every family the filter emits has a panel, as the README's reference lists them.
    let mut used = std::collections::BTreeSet::new();
    for item in &items {
        if let Item::Panel(p) = item {
            for (expr, _) in &p.targets {
                used.extend(promql::refs(expr)?.metrics);
            }
        }
    }
    for f in metrics::families(config) {
        let name = names.name(f);
        let shown = match f.kind {
            metrics::Kind::Counter => used.contains(&name),
            metrics::Kind::Histogram => used.contains(&format!("{name}_bucket")),
        };
        if !shown {
            bail!("{name} has no panel: add one to testkit/src/grafana.rs");
        }
    }

    let mut panels = Vec::new();
    let (mut x, mut y, mut id) = (0u64, 0u64, 1u64);
    for item in items {
        match item {
            Item::Row(title) => {
                if x > 0 {
                    x = 0;
                    y += 8;
                }
                panels.push(json!({
                    "type": "row", "title": title, "id": id, "collapsed": false, "panels": [],
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}
                }));
                y += 1;
            }
            Item::Panel(p) => {
                if x + p.width > 24 {
                    x = 0;
                    y += 8;
                }
                let instant = p.kind == "bargauge";
                let targets: Vec<Value> = p
                    .targets
                    .iter()
                    .enumerate()
                    .map(|(i, (expr, legend))| {
                        let ref_id = char::from(b'A' + (i % 26) as u8).to_string();
                        json!({
                            "datasource": datasource(), "editorMode": "code", "expr": expr,
                            "legendFormat": legend, "instant": instant, "range": !instant,
                            "refId": ref_id
                        })
                    })
                    .collect();
                let mut defaults = json!({"unit": p.unit});
                if let (Some(d), Some(extra)) = (defaults.as_object_mut(), p.defaults.as_object()) {
                    d.extend(extra.clone());
                }
                let options = match p.kind {
                    "stat" => json!({
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false},
                        "colorMode": "background", "graphMode": "none", "textMode": "auto"
                    }),
                    "bargauge" => json!({
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false},
                        "orientation": "horizontal", "displayMode": "gradient"
                    }),
                    _ => json!({
                        "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}
                    }),
                };
                panels.push(json!({
                    "type": p.kind, "title": p.title, "description": p.description, "id": id,
                    "datasource": datasource(),
                    "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
                    "fieldConfig": {"defaults": defaults, "overrides": []},
                    "options": options,
                    "targets": targets
                }));
                x += p.width;
            }
        }
        id += 1;
    }

    let mut variables = vec![json!({
        "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
        "current": {}, "hide": 0, "includeAll": false, "multi": false, "options": [],
        "refresh": 1, "regex": "", "skipUrlSync": false
    })];
    let requests = names.name(&metrics::REQUESTS);
    for l in by {
        variables.push(query_variable(l, &requests));
    }
    let ns = &config.namespace;
    variables.push(query_variable(
        "monitor",
        &format!("{ns}_quality_last_run_failed"),
    ));

    Ok(json!({
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": true, "hide": true, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"
        }]},
        "description": "tokenmeter: tokens, requests, errors and latency from the filter (Envoy's /stats/prometheus), quality from tokenmeter serve (/metrics). Generated by testkit/src/bin/grafana-dashboard.rs.",
        "editable": true,
        "graphTooltip": 1,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["tokenmeter", "llm"],
        "templating": {"list": variables},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": "tokenmeter",
        "uid": "tokenmeter",
        "version": 1
    }))
}

/// The dashboard as it is committed: pretty JSON and a final newline.
pub fn render(config: &Config, by: &[&str]) -> Result<String> {
    Ok(serde_json::to_string_pretty(&dashboard(config, by)?)? + "\n")
}

/// A PromQL expression of the dashboard, with the legend that names its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub panel: String,
    pub expr: String,
    pub legend: String,
}

/// Every panel target of a dashboard.
pub fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                panel: p["title"].as_str().unwrap_or_default().to_string(),
                expr: t["expr"].as_str().unwrap_or_default().to_string(),
                legend: t["legendFormat"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    out
}

/// The `label_values(METRIC, LABEL)` of every query variable.
pub fn variables(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["query"]["query"].as_str())
        .filter_map(|q| q.strip_prefix("label_values(")?.strip_suffix(')'))
        .filter_map(|args| {
            let (m, l) = args.split_once(',')?;
            Some((m.trim().to_string(), l.trim().to_string()))
        })
        .collect()
}

/// The `{{label}}` names of a legend.
pub fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}").map(|(l, _)| l.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_a_panel_and_labels_must_exist() {
        let config = Config::parse(
            br#"{"dimensions":[{"name":"model"},{"name":"team","value":"{request.header.x-team|none}"}]}"#,
        )
        .unwrap();
        let d = dashboard(&config, &["model", "team"]).unwrap();
        let q = queries(&d);
        assert!(q.iter().any(|q| q.expr
            == "sum by (team) (rate(llm_tokens_total{model=~\"$model\", team=~\"$team\"}[$__rate_interval]))"));
        // Series without the dimensions are not filtered by them.
        assert!(q.iter().any(
            |q| q.expr == "sum by (reason) (rate(llm_records_dropped_total[$__rate_interval]))"
        ));
        assert_eq!(
            variables(&d)[0],
            ("llm_requests_total".to_string(), "model".to_string())
        );
        assert!(dashboard(&config, &["user"]).is_err());
        assert!(dashboard(&Config::parse(br#"{"metric_names":"otel"}"#).unwrap(), &[]).is_err());
        assert_eq!(
            legend_labels("{{monitor}} {{ metric }}"),
            ["monitor", "metric"]
        );
    }
}
