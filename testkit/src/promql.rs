//! Which metric and label names a PromQL expression uses, and whether tokenmeter emits them.
//!
//! The rules in `deploy/prometheus` and the Grafana dashboard are checked with this: every
//! metric an expression names must be one the filter or `tokenmeter serve` emits (or a
//! recording rule defines), every label matcher a label of its metric, and every grouping
//! label (`by`, `on`, ...) a label of every metric in the expression. The filter's names and
//! labels come from the core itself ([`Catalogue::filter`]): the points a settlement becomes,
//! decoded, so a family added to the core is known here without a list to keep in step.
//!
//! This reads the names, not the meaning: it is a lexer with just enough structure to tell
//! a metric from a function, a keyword or a label. Syntax is the real parser's job (`promtool
//! check rules`, Prometheus itself).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use tokenmeter_core::config::Config;
use tokenmeter_core::exchange::settlement::Settlement;
use tokenmeter_core::openai::usage::{Usage, UsageSource};
use tokenmeter_core::series::metrics::{self, Kind};

/// Labels every scraped series gains from Prometheus itself.
pub const SCRAPE_LABELS: [&str; 2] = ["job", "instance"];

const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "atan2", "inf", "nan"];

/// The names one expression uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refs {
    /// Metric names, as selectors or `__name__` matchers name them.
    pub metrics: Vec<String>,
    /// Label matchers: the metric of their selector (when it names one) and the label.
    pub matchers: Vec<(Option<String>, String)>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right` lists.
    pub grouping: Vec<String>,
    /// Function and aggregation names called.
    pub functions: Vec<String>,
    /// Each aggregation's `by` list (`None` for `without`), in order of appearance.
    aggregations: Vec<Option<Vec<String>>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num,
    /// A `[...]` range or subquery, skipped whole.
    Range,
    Op(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
}

fn lex(expr: &str) -> Result<Vec<Tok>> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied();
    while let Some(c) = at(i) {
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while at(i).is_some_and(|c| c != '\n') {
                    i += 1;
                }
            }
            '"' | '\'' | '`' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match at(i) {
                        None => bail!("unterminated string in {expr:?}"),
                        Some('\\') if quote != '`' => {
                            if let Some(n) = at(i + 1) {
                                s.push(n);
                            }
                            i += 2;
                        }
                        Some(c) if c == quote => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(s));
            }
            '[' => {
                while at(i).is_some_and(|c| c != ']') {
                    i += 1;
                }
                if at(i).is_none() {
                    bail!("unterminated [ in {expr:?}");
                }
                i += 1;
                out.push(Tok::Range);
            }
            c if c.is_ascii_digit() || (c == '.' && at(i + 1).is_some_and(|n| n.is_ascii_digit())) => {
                // Numbers, and durations after `offset` (5m, 1h30m).
                while let Some(n) = at(i) {
                    let exponent_sign = (n == '+' || n == '-')
                        && matches!(at(i.wrapping_sub(1)), Some('e' | 'E'));
                    if n.is_ascii_alphanumeric() || n == '.' || exponent_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push(Tok::Num);
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while at(i).is_some_and(|n| n.is_ascii_alphanumeric() || n == '_' || n == ':') {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            '{' => {
                out.push(Tok::LBrace);
                i += 1;
            }
            '}' => {
                out.push(Tok::RBrace);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '=' | '!' | '<' | '>' => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) {
                    out.push(Tok::Op(two));
                    i += 2;
                } else if c == '!' {
                    bail!("stray ! in {expr:?}");
                } else {
                    out.push(Tok::Op(c.to_string()));
                    i += 1;
                }
            }
            '+' | '-' | '*' | '/' | '%' | '^' | '@' => {
                out.push(Tok::Op(c.to_string()));
                i += 1;
            }
            other => bail!("unexpected {other:?} in {expr:?} (a template variable outside a string or a range?)"),
        }
    }
    Ok(out)
}

/// The metric, label and function names of an expression.
pub fn refs(expr: &str) -> Result<Refs> {
    let toks = lex(expr)?;
    let mut r = Refs::default();
    let mut i = 0;
    let ident = |i: usize| match toks.get(i) {
        Some(Tok::Ident(w)) => Some(w.as_str()),
        _ => None,
    };
    while let Some(tok) = toks.get(i) {
        match tok {
            Tok::Ident(word) => {
                let lower = word.to_ascii_lowercase();
                let next = toks.get(i + 1);
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&lower.as_str())
                {
                    i += 1;
                    if toks.get(i) != Some(&Tok::LParen) {
                        if lower.starts_with("group_") {
                            continue;
                        }
                        bail!("{word} without a label list in {expr:?}");
                    }
                    i += 1;
                    let mut list = Vec::new();
                    loop {
                        match toks.get(i) {
                            Some(Tok::Ident(label)) => list.push(label.clone()),
                            Some(Tok::Comma) => {}
                            Some(Tok::RParen) => break,
                            other => bail!("unexpected {other:?} in the {word} list of {expr:?}"),
                        }
                        i += 1;
                    }
                    i += 1;
                    r.grouping.extend(list.iter().cloned());
                    if lower == "by" || lower == "without" {
                        // A `by` list belongs to the latest aggregation without one.
                        let grouping = (lower == "by").then_some(list);
                        match r.aggregations.iter_mut().rev().find(|a| a.is_none()) {
                            Some(slot) if grouping.is_some() => *slot = grouping,
                            Some(_) => bail!("without() is not supported by this check: {expr:?}"),
                            None => bail!("{word} outside an aggregation in {expr:?}"),
                        }
                    }
                    continue;
                }
                if KEYWORDS.contains(&lower.as_str()) {
                    i += 1;
                    continue;
                }
                if lower == "offset" {
                    // The duration, signed or not.
                    i += 1;
                    if matches!(toks.get(i), Some(Tok::Op(o)) if o == "-") {
                        i += 1;
                    }
                    i += 1;
                    continue;
                }
                let is_aggregation = AGGREGATIONS.contains(&lower.as_str());
                let grouped_next = ident(i + 1).is_some_and(|w| w == "by" || w == "without");
                if next == Some(&Tok::LParen) || (is_aggregation && grouped_next) {
                    r.functions.push(lower.clone());
                    if is_aggregation {
                        r.aggregations.push(None);
                    }
                    i += 1;
                    continue;
                }
                r.metrics.push(word.clone());
                i += 1;
                if toks.get(i) == Some(&Tok::LBrace) {
                    i = matchers(&toks, i + 1, Some(word.clone()), &mut r, expr)?;
                }
            }
            Tok::LBrace => i = matchers(&toks, i + 1, None, &mut r, expr)?,
            _ => i += 1,
        }
    }
    // Aggregations whose list was never given group by nothing.
    Ok(r)
}

/// Reads `label op "value", ...}` from `i`; returns the index after the `}`.
fn matchers(
    toks: &[Tok],
    mut i: usize,
    mut metric: Option<String>,
    r: &mut Refs,
    expr: &str,
) -> Result<usize> {
    let mut labels = Vec::new();
    loop {
        match (toks.get(i), toks.get(i + 1), toks.get(i + 2)) {
            (Some(Tok::RBrace), _, _) => break,
            (Some(Tok::Comma), _, _) => i += 1,
            (Some(Tok::Ident(label)), Some(Tok::Op(op)), Some(Tok::Str(value)))
                if ["=", "!=", "=~", "!~"].contains(&op.as_str()) =>
            {
                if label == "__name__" && op == "=" {
                    r.metrics.push(value.clone());
                    metric = Some(value.clone());
                } else {
                    labels.push(label.clone());
                }
                i += 3;
            }
            other => bail!("unexpected {other:?} in a label matcher of {expr:?}"),
        }
    }
    r.matchers
        .extend(labels.into_iter().map(|l| (metric.clone(), l)));
    Ok(i + 1)
}

/// Metric names and the labels their series carry.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    series: BTreeMap<String, BTreeSet<String>>,
}

impl Catalogue {
    /// What the filter emits under `config`, as Prometheus scrapes it from Envoy: the
    /// points the core makes of a settlement that touches every family, decoded, each with
    /// the scrape's own labels; histograms as their `_bucket` (with `le`), `_sum` and `_count`.
    pub fn filter(config: &Config) -> Result<Catalogue> {
        let mut cat = Catalogue::default();
        let usage = Usage {
            prompt: 10,
            completion: 20,
            total: 30,
            cached: Some(1),
            reasoning: Some(2),
            audio_prompt: Some(3),
            audio_completion: Some(4),
            source: UsageSource::Reported,
        };
        let everything = |values: Vec<String>| Settlement {
            folded: (0..values.len()).collect(),
            labels: values,
            usage: Some(usage),
            status: Some(429),
            streamed: true,
            duration_ms: 900,
            ttft_ms: Some(100),
            oversized_events: 1,
            error_type: Some("rate_limited"),
            over_budget: true,
            ..Settlement::default()
        };
        let dims = config.label_names().count();
        let mut points = metrics::points(config, &everything(vec!["v".into(); dims]));
        // Label values cut to fit a name cap: the smallest cap the configuration accepts,
        // and values as long as they come.
        if dims > 0 {
            let mut capped = config.clone();
            for cap in (64..=65_536).step_by(16) {
                capped.max_metric_name_bytes = Some(cap);
                if metrics::settle_name_cap(&mut capped, None).is_ok() {
                    break;
                }
            }
            let long = vec!["x".repeat(64); dims];
            points.extend(metrics::points(&capped, &everything(long)));
        }
        // Implausible usage is counted instead of tokens.
        let invalid = Usage {
            prompt: 0,
            completion: 0,
            total: 0,
            cached: None,
            reasoning: None,
            audio_prompt: None,
            audio_completion: None,
            source: UsageSource::Invalid,
        };
        points.extend(metrics::points(
            config,
            &Settlement {
                usage: Some(invalid),
                ..everything(vec!["v".into(); dims])
            },
        ));
        points.push(metrics::record_point(config, None));
        points.push(metrics::record_point(config, Some("queue_full")));
        for family in [
            &metrics::ROLLUPS_SENT,
            &metrics::ROLLUPS_FAILED,
            &metrics::ROLLUPS_DROPPED,
        ] {
            points.push(metrics::rollup_point(config, family, 1));
        }
        for p in &points {
            let (name, labels) = decode(&p.name);
            match p.kind {
                Kind::Counter => cat.insert_scraped(name, labels.iter().map(String::as_str)),
                Kind::Histogram => {
                    let with_le = labels.iter().map(String::as_str).chain(["le"]);
                    cat.insert_scraped(&format!("{name}_bucket"), with_le);
                    for suffix in ["_sum", "_count"] {
                        cat.insert_scraped(
                            &format!("{name}{suffix}"),
                            labels.iter().map(String::as_str),
                        );
                    }
                }
            }
        }
        for f in metrics::families(config) {
            let name = metrics::family_name(config, f);
            let known = match f.kind {
                Kind::Counter => cat.series.contains_key(&name),
                Kind::Histogram => cat.series.contains_key(&format!("{name}_bucket")),
            };
            if !known {
                bail!("the core's family {name} made no point here: teach Catalogue::filter to reach it");
            }
        }
        Ok(cat)
    }

    /// Adds a scraped metric: its labels plus the scrape's own.
    pub fn insert_scraped<'a>(&mut self, name: &str, labels: impl IntoIterator<Item = &'a str>) {
        let set = self.series.entry(name.to_string()).or_default();
        set.extend(labels.into_iter().map(str::to_string));
        set.extend(SCRAPE_LABELS.iter().map(|l| l.to_string()));
    }

    /// Adds a recording rule's series with the labels its expression keeps.
    pub fn record(&mut self, name: &str, expr: &str) -> Result<()> {
        let labels = self.output_labels(expr)?;
        self.series.insert(name.to_string(), labels);
        Ok(())
    }

    pub fn labels(&self, metric: &str) -> Option<&BTreeSet<String>> {
        self.series.get(metric)
    }

    pub fn metrics(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }

    /// What is wrong with an expression's names; empty when nothing is.
    pub fn problems(&self, expr: &str) -> Vec<String> {
        let r = match refs(expr) {
            Ok(r) => r,
            Err(e) => return vec![e.to_string()],
        };
        let mut out = Vec::new();
        for m in &r.metrics {
            if !self.series.contains_key(m) {
                out.push(format!("{m} is not a metric tokenmeter emits"));
            }
        }
        for (metric, label) in &r.matchers {
            match metric {
                Some(m) => {
                    if self.labels(m).is_some_and(|ls| !ls.contains(label)) {
                        out.push(format!("{m} has no label {label}"));
                    }
                }
                None => {
                    if !r
                        .metrics
                        .iter()
                        .any(|m| self.labels(m).is_some_and(|ls| ls.contains(label)))
                    {
                        out.push(format!("no metric of the expression has label {label}"));
                    }
                }
            }
        }
        for label in &r.grouping {
            for m in &r.metrics {
                if self.labels(m).is_some_and(|ls| !ls.contains(label)) {
                    out.push(format!("grouping by {label}, which {m} does not have"));
                }
            }
        }
        out.dedup();
        out
    }

    /// The labels an expression's result keeps, approximately: the `by` lists its
    /// aggregations share, else the labels all its metrics share; `le` is gone after
    /// `histogram_quantile`. Enough for the rules and annotations written here.
    pub fn output_labels(&self, expr: &str) -> Result<BTreeSet<String>> {
        let r = refs(expr)?;
        let problems = self.problems(expr);
        if !problems.is_empty() {
            bail!("{expr:?}: {}", problems.join("; "));
        }
        let mut sets: Vec<BTreeSet<String>> = if r.aggregations.is_empty() {
            r.metrics
                .iter()
                .map(|m| self.labels(m).cloned().unwrap_or_default())
                .collect()
        } else {
            r.aggregations
                .iter()
                .map(|a| a.iter().flatten().cloned().collect())
                .collect()
        };
        let mut out = sets
            .pop()
            .ok_or_else(|| anyhow!("{expr:?} names no metric"))?;
        for s in sets {
            out.retain(|l| s.contains(l));
        }
        if r.functions.iter().any(|f| f == "histogram_quantile") {
            out.remove("le");
        }
        Ok(out)
    }
}

/// `name.k=.=v;.;k2=.=v2;.;` to the name and the label names.
fn decode(full: &str) -> (&str, Vec<String>) {
    let Some((name, rest)) = full.split_once('.') else {
        return (full, Vec::new());
    };
    let labels = rest
        .split(";.;")
        .filter_map(|pair| pair.split_once("=.=").map(|(k, _)| k.to_string()))
        .collect();
    (name, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            br#"{"dimensions":[{"name":"model"},{"name":"team","value":"{request.header.x-team|none}"}]}"#,
        )
        .unwrap()
    }

    fn set(labels: &[&str]) -> BTreeSet<String> {
        labels.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn reads_names_out_of_expressions() {
        let r = refs(
            r#"histogram_quantile(0.95, sum by (model, le) (rate(llm_time_to_first_token_ms_bucket{team=~"$team", model!="x"}[$__rate_interval])))"#,
        )
        .unwrap();
        assert_eq!(r.metrics, ["llm_time_to_first_token_ms_bucket"]);
        assert_eq!(r.grouping, ["model", "le"]);
        assert_eq!(r.functions, ["histogram_quantile", "sum", "rate"]);
        let name = |m: &str| Some(m.to_string());
        assert_eq!(
            r.matchers,
            [
                (
                    name("llm_time_to_first_token_ms_bucket"),
                    "team".to_string()
                ),
                (
                    name("llm_time_to_first_token_ms_bucket"),
                    "model".to_string()
                )
            ]
        );
        let r = refs(
            r#"sum(rate(a_total[5m] offset -1h)) by (team) / on (team) group_left b:c:rate5m > bool 1e+6 and {__name__="d", x="y"}"#,
        )
        .unwrap();
        assert_eq!(r.metrics, ["a_total", "b:c:rate5m", "d"]);
        assert_eq!(r.grouping, ["team", "team"]);
        assert_eq!(r.matchers, [(Some("d".to_string()), "x".to_string())]);
        assert!(refs("sum without (a) (b)").is_err());
        assert!(refs("rate(x[$__range)").is_err());
        assert!(refs("x{a=~$model}").is_err());
    }

    #[test]
    fn the_filter_catalogue_is_the_cores() {
        let cat = Catalogue::filter(&config()).unwrap();
        let dims = ["model", "team", "job", "instance"];
        assert_eq!(
            cat.labels("llm_tokens_total").unwrap(),
            &set(&dims),
            "{cat:?}"
        );
        let with = |extra: &str| {
            let mut s = set(&dims);
            s.insert(extra.to_string());
            s
        };
        assert_eq!(
            cat.labels("llm_requests_total").unwrap(),
            &with("status_class")
        );
        assert_eq!(cat.labels("llm_errors_total").unwrap(), &with("error_type"));
        assert_eq!(
            cat.labels("llm_time_to_first_token_ms_bucket").unwrap(),
            &with("le")
        );
        assert_eq!(
            cat.labels("llm_time_to_first_token_ms_count").unwrap(),
            &set(&dims)
        );
        assert_eq!(
            cat.labels("llm_records_dropped_total").unwrap(),
            &set(&["reason", "job", "instance"])
        );
        assert_eq!(
            cat.labels("llm_label_values_shortened_total").unwrap(),
            &set(&["dimension", "job", "instance"])
        );
        assert_eq!(
            cat.labels("llm_rollup_batches_sent_total").unwrap(),
            &set(&["job", "instance"])
        );
        assert!(cat.labels("llm_time_to_first_token_ms").is_none());
        let otel =
            Catalogue::filter(&Config::parse(br#"{"metric_names":"otel"}"#).unwrap()).unwrap();
        assert!(otel.labels("gen_ai_client_token_usage_bucket").is_some());
        assert!(otel.labels("llm_tokens_total").is_none());
    }

    #[test]
    fn unknown_metrics_and_labels_are_problems() {
        let mut cat = Catalogue::filter(&config()).unwrap();
        assert!(cat
            .problems(r#"sum by (model) (rate(llm_tokens_total{team="a"}[5m]))"#)
            .is_empty());
        assert_eq!(
            cat.problems("sum(rate(llm_token_total[5m]))"),
            ["llm_token_total is not a metric tokenmeter emits"]
        );
        assert_eq!(
            cat.problems(r#"llm_tokens_total{user="a"}"#),
            ["llm_tokens_total has no label user"]
        );
        assert_eq!(
            cat.problems("sum by (le) (llm_tokens_total)"),
            ["grouping by le, which llm_tokens_total does not have"]
        );
        assert_eq!(
            cat.problems("sum by (model) (llm_records_dropped_total)"),
            ["grouping by model, which llm_records_dropped_total does not have"]
        );
        cat.record(
            "model:llm_ttft:p95",
            "histogram_quantile(0.95, sum by (model, le) (rate(llm_time_to_first_token_ms_bucket[5m])))",
        )
        .unwrap();
        assert_eq!(cat.labels("model:llm_ttft:p95").unwrap(), &set(&["model"]));
        assert!(cat.problems("model:llm_ttft:p95{team=\"a\"} > 1").len() == 1);
        assert_eq!(
            cat.output_labels("llm_records_dropped_total > 0").unwrap(),
            set(&["reason", "job", "instance"])
        );
        assert!(cat
            .output_labels("sum(llm_tokens_total)")
            .unwrap()
            .is_empty());
    }
}
