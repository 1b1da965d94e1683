//! The metrics a settlement produces: names, kinds and values.
//!
//! The filter glue only defines and bumps what this module lists, so every metric name and
//! label rule lives here and is tested natively. Each series carries the configured
//! dimensions, then the fixed labels of its family (`status_class`, `error_type`,
//! `gen_ai_token_type`); `overflow_total` carries only `dimension`.

use crate::config::{Config, ConfigError, Naming};
use crate::exchange::settlement::Settlement;
use crate::openai::usage::UsageSource;
use crate::series::labels;
use crate::series::rollup::{ERROR_TYPES, STATUS_CLASSES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Counter,
    Histogram,
}

/// One value to add to one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The full proxy-wasm metric name, labels encoded.
    pub name: String,
    pub kind: Kind,
    pub value: u64,
}

pub use crate::series::labels::FIXED_LABELS;

/// A metric family: its name (without namespace where it has one), kind and meaning.
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    /// Whether the name is prefixed with the namespace.
    pub namespaced: bool,
    pub fixed_label: Option<&'static str>,
    pub help: &'static str,
}

const fn family(
    name: &'static str,
    kind: Kind,
    namespaced: bool,
    fixed_label: Option<&'static str>,
    help: &'static str,
) -> Family {
    Family {
        name,
        kind,
        namespaced,
        fixed_label,
        help,
    }
}

use Kind::{Counter, Histogram};

pub const REQUESTS: Family = family(
    "requests_total",
    Counter,
    true,
    Some("status_class"),
    "Metered requests, by status class (2xx, 4xx, 5xx, none).",
);
pub const ERRORS: Family = family("errors_total", Counter, true, Some("error_type"), "Failed requests: rate_limited, client_error, upstream_error, upstream_reset, timeout, client_cancelled.");
pub const PROMPT: Family = family(
    "prompt_tokens_total",
    Counter,
    true,
    None,
    "Prompt (input) tokens.",
);
pub const COMPLETION: Family = family(
    "completion_tokens_total",
    Counter,
    true,
    None,
    "Completion (output) tokens.",
);
pub const TOTAL: Family = family(
    "tokens_total",
    Counter,
    true,
    None,
    "Total tokens: the provider's total_tokens, else prompt + completion.",
);
pub const CACHED: Family = family(
    "cached_prompt_tokens_total",
    Counter,
    true,
    None,
    "Prompt tokens served from the provider's cache (part of prompt tokens).",
);
pub const REASONING: Family = family(
    "reasoning_tokens_total",
    Counter,
    true,
    None,
    "Completion tokens spent on reasoning (part of completion tokens).",
);
pub const AUDIO_PROMPT: Family = family(
    "audio_prompt_tokens_total",
    Counter,
    true,
    None,
    "Prompt tokens that were audio (part of prompt tokens).",
);
pub const AUDIO_COMPLETION: Family = family(
    "audio_completion_tokens_total",
    Counter,
    true,
    None,
    "Completion tokens that were audio (part of completion tokens).",
);
pub const DURATION: Family = family(
    "request_duration_ms",
    Histogram,
    true,
    None,
    "Request start to end of response, milliseconds.",
);
pub const TTFT: Family = family(
    "time_to_first_token_ms",
    Histogram,
    true,
    None,
    "Streams: request start to the first chunk with content or a tool call, milliseconds.",
);
pub const TPOT: Family = family("time_per_output_token_ms", Histogram, true, None, "Streams with more than one output token: (duration - TTFT) / (output tokens - 1), milliseconds.");
pub const OVERFLOW: Family = family(
    "overflow_total",
    Counter,
    true,
    Some("dimension"),
    "Label values folded into \"other\" by a dimension's cap or allow list.",
);
pub const INVALID_USAGE: Family = family(
    "invalid_usage_total",
    Counter,
    true,
    None,
    "Responses whose reported usage was implausible (a count over 10^8, a breakdown larger than its total); their tokens are not added.",
);
pub const OVER_BUDGET: Family = family(
    "over_budget_total",
    Counter,
    true,
    None,
    "Requests the VM's memory budget (max_vm_bytes) kept from being held or copied whole: passed unchanged, not injected, counted from what was kept.",
);
pub const RECORDS_SENT: Family = family(
    "records_sent_total",
    Counter,
    true,
    None,
    "Inference records the collector accepted.",
);
pub const RECORDS_DROPPED: Family = family(
    "records_dropped_total",
    Counter,
    true,
    Some("reason"),
    "Inference records not delivered: queue_full, dispatch_failed, callout_failed, collector_error.",
);
pub const ROLLUPS_SENT: Family = family(
    "rollup_batches_sent_total",
    Counter,
    true,
    None,
    "Usage rollup batches the collector accepted.",
);
pub const ROLLUPS_FAILED: Family = family(
    "rollup_batches_failed_total",
    Counter,
    true,
    None,
    "Usage rollup deliveries that failed; the batch is sent again with the same id.",
);
pub const ROLLUPS_DROPPED: Family = family(
    "rollup_requests_dropped_total",
    Counter,
    true,
    None,
    "Settled requests left out of the usage rollups: no row was free, or their batch waited past max_rollup_batches.",
);
pub const SHORTENED: Family = family(
    "label_values_shortened_total",
    Counter,
    true,
    Some("dimension"),
    "Label values cut to a start and a hash so the metric name fits max_metric_name_bytes (the host's limit); each still names its own series.",
);
pub const SKIPPED_EVENTS: Family = family(
    "skipped_events_total",
    Counter,
    true,
    None,
    "Stream events larger than max_event_bytes, skipped unread.",
);
pub const OTEL_TOKENS: Family = family(
    "gen_ai_client_token_usage",
    Histogram,
    false,
    Some("gen_ai_token_type"),
    "Tokens per request by gen_ai_token_type (input, output).",
);
pub const OTEL_DURATION: Family = family(
    "gen_ai_server_request_duration_ms",
    Histogram,
    false,
    None,
    "Request duration, milliseconds.",
);
pub const OTEL_TTFT: Family = family(
    "gen_ai_server_time_to_first_token_ms",
    Histogram,
    false,
    None,
    "Time to first token, milliseconds.",
);
pub const OTEL_TPOT: Family = family(
    "gen_ai_server_time_per_output_token_ms",
    Histogram,
    false,
    None,
    "Time per output token after the first, milliseconds.",
);

/// The families a configuration emits, for documentation and checks.
pub fn families(config: &Config) -> Vec<&'static Family> {
    let named: &[&'static Family] = match config.naming {
        Naming::Tokenmeter => &[&PROMPT, &COMPLETION, &TOTAL, &DURATION, &TTFT, &TPOT],
        Naming::Otel => &[&OTEL_TOKENS, &OTEL_DURATION, &OTEL_TTFT, &OTEL_TPOT],
    };
    let common: &[&'static Family] = &[
        &REQUESTS,
        &ERRORS,
        &CACHED,
        &REASONING,
        &AUDIO_PROMPT,
        &AUDIO_COMPLETION,
        &OVERFLOW,
        &SHORTENED,
        &SKIPPED_EVENTS,
        &INVALID_USAGE,
        &OVER_BUDGET,
        &RECORDS_SENT,
        &RECORDS_DROPPED,
        &ROLLUPS_SENT,
        &ROLLUPS_FAILED,
        &ROLLUPS_DROPPED,
    ];
    common.iter().chain(named).copied().collect()
}

/// Whether the family's series carry the configured dimensions.
fn dimensional(f: &Family) -> bool {
    ![
        OVERFLOW.name,
        SHORTENED.name,
        RECORDS_SENT.name,
        RECORDS_DROPPED.name,
        ROLLUPS_SENT.name,
        ROLLUPS_FAILED.name,
        ROLLUPS_DROPPED.name,
    ]
    .contains(&f.name)
}

/// The longest value a family's own label takes.
fn longest_fixed_value(config: &Config, label: &str) -> usize {
    let longest = |values: &[&str]| values.iter().map(|v| v.len()).max().unwrap_or(0);
    match label {
        "status_class" => longest(&STATUS_CLASSES),
        "error_type" => longest(&ERROR_TYPES),
        "gen_ai_token_type" => "output".len(),
        "reason" => "dispatch_failed".len(),
        "dimension" => config.label_names().map(str::len).max().unwrap_or(0),
        _ => labels::MAX_VALUE_CHARS,
    }
}

/// Bytes a family's name takes besides the dimensions: its name and its own label.
fn overhead(config: &Config, f: &Family) -> usize {
    let fixed = f.fixed_label.map_or(0, |l| {
        1 + l.len() + "=.=;.;".len() + longest_fixed_value(config, l)
    });
    family_name(config, f).len() + fixed
}

/// Settles the metric-name cap: the configured `max_metric_name_bytes`, else the host's
/// limit (`host_limit`). The bytes left for the dimensions, after the longest family name
/// and its own label, are split evenly into a longest value per dimension
/// (`Config::label_value_bytes`): a value over it is shortened whatever the other labels
/// of its request are, so one value always has one spelling. A configuration that leaves
/// less than [`labels::SHORTENED_MIN_BYTES`] per value is refused.
pub fn settle_name_cap(config: &mut Config, host_limit: Option<usize>) -> Result<(), ConfigError> {
    let from_host = config.max_metric_name_bytes.is_none() && host_limit.is_some();
    config.max_metric_name_bytes = config.max_metric_name_bytes.or(host_limit);
    config.label_value_bytes = None;
    let Some(cap) = config.max_metric_name_bytes else {
        return Ok(());
    };
    let whose = if from_host {
        format!("the host's limit of {cap} bytes (ngx_wasm_module: max_metric_name_length, less its pw:NAME: prefix)")
    } else {
        format!("{cap} bytes")
    };
    let refuse = |needed: usize| {
        ConfigError {
        field: "max_metric_name_bytes".to_string(),
        message: format!(
            "{whose} cannot hold this configuration's metric names: with every label value shortened to {} bytes the longest still takes {needed}; raise the limit (and the host's), or use fewer dimensions or shorter dimension names",
            labels::SHORTENED_MIN_BYTES
        ),
    }
    };
    let families = families(config);
    // Names without the dimensions (overflow, records, rollups) must fit as they are.
    if let Some(n) = families
        .iter()
        .filter(|f| !dimensional(f))
        .map(|f| overhead(config, f))
        .find(|&n| n > cap)
    {
        return Err(refuse(n));
    }
    let count = config.dimensions.len();
    if count == 0 {
        return Ok(());
    }
    let longest = families
        .iter()
        .filter(|f| dimensional(f))
        .map(|f| overhead(config, f))
        .max()
        .unwrap_or(0);
    let names = config
        .label_names()
        .map(|l| l.len() + "=.=;.;".len())
        .sum::<usize>()
        + 1;
    let per = cap.saturating_sub(longest + names) / count;
    if per < labels::SHORTENED_MIN_BYTES {
        return Err(refuse(
            longest + names + count * labels::SHORTENED_MIN_BYTES,
        ));
    }
    config.label_value_bytes = Some(per);
    Ok(())
}

/// The full name of a family under a configuration.
pub fn family_name(config: &Config, f: &Family) -> String {
    if f.namespaced {
        format!("{}_{}", config.namespace, f.name)
    } else {
        f.name.to_string()
    }
}

/// The point counting one record's delivery: sent, or dropped for `reason`.
pub fn record_point(config: &Config, dropped: Option<&str>) -> Point {
    let family = if dropped.is_some() {
        &RECORDS_DROPPED
    } else {
        &RECORDS_SENT
    };
    let mut name = family_name(config, family);
    if let Some(reason) = dropped {
        labels::encode_labels(&mut name, [("reason", reason)]);
    }
    Point {
        name,
        kind: Counter,
        value: 1,
    }
}

/// A point of one of the rollup families (counted by the glue, outside any request).
pub fn rollup_point(config: &Config, family: &Family, value: u64) -> Point {
    Point {
        name: family_name(config, family),
        kind: Counter,
        value,
    }
}

/// `2xx`, `4xx`, ... from a status; `none` when there was no response.
pub fn status_class(status: Option<u16>) -> String {
    match status {
        Some(s) if (100..600).contains(&s) => format!("{}xx", s / 100),
        _ => "none".to_string(),
    }
}

/// Builds the points of a settled exchange. Zero increments are left out: hosts refuse
/// them (Envoy answers `BadArgument`).
pub fn points(config: &Config, s: &Settlement) -> Vec<Point> {
    let mut shortened_values = None;
    let mut shortened = Vec::new();
    if let Some(per) = config.label_value_bytes {
        if s.labels.iter().any(|v| v.len() > per) {
            let mut values = s.labels.clone();
            for (i, v) in values.iter_mut().enumerate() {
                if v.len() > per {
                    *v = labels::shorten_value(v, per);
                    shortened.push(i);
                }
            }
            shortened_values = Some(values);
        }
    }
    let values = shortened_values.as_ref().unwrap_or(&s.labels);
    let mut dims = String::with_capacity(24 * values.len());
    labels::encode_labels(
        &mut dims,
        config.label_names().zip(values.iter().map(String::as_str)),
    );
    let name = |f: &Family, fixed: Option<&str>| {
        let mut n = family_name(config, f);
        n.push_str(&dims);
        if let (Some(label), Some(value)) = (f.fixed_label, fixed) {
            if dims.is_empty() {
                n.push('.');
            }
            n.push_str(label);
            n.push_str("=.=");
            n.push_str(value);
            n.push_str(";.;");
        }
        n
    };
    let mut out = Vec::with_capacity(12);
    let mut add = |f: &Family, fixed: Option<&str>, value: u64| {
        if value > 0 || f.kind == Histogram {
            out.push(Point {
                name: name(f, fixed),
                kind: f.kind,
                value,
            });
        }
    };
    add(&REQUESTS, Some(&status_class(s.status)), 1);
    if let Some(error) = s.error_type {
        add(&ERRORS, Some(error), 1);
    }
    let otel = config.naming == Naming::Otel;
    if let Some(u) = s.usage.filter(|u| u.source == UsageSource::Invalid) {
        debug_assert_eq!(u.total, 0);
        add(&INVALID_USAGE, None, 1);
    } else if let Some(u) = s.usage {
        if otel {
            add(&OTEL_TOKENS, Some("input"), u.prompt);
            if u.completion > 0 {
                add(&OTEL_TOKENS, Some("output"), u.completion);
            }
        } else {
            add(&PROMPT, None, u.prompt);
            add(&COMPLETION, None, u.completion);
            add(&TOTAL, None, u.total);
        }
        add(&CACHED, None, u.cached.unwrap_or(0));
        add(&REASONING, None, u.reasoning.unwrap_or(0));
        add(&AUDIO_PROMPT, None, u.audio_prompt.unwrap_or(0));
        add(&AUDIO_COMPLETION, None, u.audio_completion.unwrap_or(0));
    }
    let (duration, ttft, tpot) = if otel {
        (&OTEL_DURATION, &OTEL_TTFT, &OTEL_TPOT)
    } else {
        (&DURATION, &TTFT, &TPOT)
    };
    add(duration, None, s.duration_ms);
    if let Some(first) = s.ttft_ms {
        add(ttft, None, first);
        let output = s.usage.map_or(0, |u| u.completion);
        if output > 1 {
            let per = (s.duration_ms.saturating_sub(first) as f64 / (output - 1) as f64).round();
            add(tpot, None, per as u64);
        }
    }
    add(&SKIPPED_EVENTS, None, s.oversized_events);
    add(&OVER_BUDGET, None, u64::from(s.over_budget));
    let own = s
        .folded
        .iter()
        .map(|&i| (&OVERFLOW, i))
        .chain(shortened.iter().map(|&i| (&SHORTENED, i)));
    for (family, i) in own {
        if let Some(label) = config.dimensions.get(i).map(|d| d.dimension.label.as_str()) {
            let mut n = family_name(config, family);
            labels::encode_labels(&mut n, [("dimension", label)]);
            out.push(Point {
                name: n,
                kind: Counter,
                value: 1,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::usage::{Usage, UsageSource};

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt,
            completion,
            total: prompt + completion,
            cached: Some(3),
            reasoning: Some(0),
            audio_prompt: None,
            audio_completion: None,
            source: UsageSource::Reported,
        }
    }

    fn names(config: &Config, s: &Settlement) -> Vec<(String, u64)> {
        points(config, s)
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect()
    }

    #[test]
    fn points_for_a_streamed_settlement() {
        let config = Config::parse(
            br#"{"namespace":"ai","dimensions":[{"name":"model"},{"name":"team","value":"{request.header.x-team}"}]}"#,
        )
        .unwrap();
        let s = Settlement {
            labels: vec!["gpt-4o".into(), "blue".into()],
            usage: Some(usage(10, 21)),
            status: Some(200),
            duration_ms: 900,
            ttft_ms: Some(100),
            streamed: true,
            ..Settlement::default()
        };
        let l = ".model=.=gpt-4o;.;team=.=blue;.;";
        assert_eq!(
            names(&config, &s),
            [
                (format!("ai_requests_total{l}status_class=.=2xx;.;"), 1),
                (format!("ai_prompt_tokens_total{l}"), 10),
                (format!("ai_completion_tokens_total{l}"), 21),
                (format!("ai_tokens_total{l}"), 31),
                (format!("ai_cached_prompt_tokens_total{l}"), 3),
                (format!("ai_request_duration_ms{l}"), 900),
                (format!("ai_time_to_first_token_ms{l}"), 100),
                (format!("ai_time_per_output_token_ms{l}"), 40),
            ]
        );
    }

    fn ten_long_dimensions() -> Config {
        let dims: Vec<String> = (0..10)
            .map(|i| {
                format!(r#"{{"name":"dimension_number_{i}","value":"{{request.header.x-d{i}}}"}}"#)
            })
            .collect();
        Config::parse(format!(r#"{{"dimensions":[{}]}}"#, dims.join(",")).as_bytes()).unwrap()
    }

    #[test]
    fn names_over_the_cap_shorten_their_longest_values_and_never_merge() {
        let mut config = ten_long_dimensions();
        settle_name_cap(&mut config, Some(512)).unwrap();
        let settle = |last: &str| Settlement {
            labels: (0..9)
                .map(|i| format!("value-{i}-").repeat(6))
                .chain([last.to_string()])
                .collect(),
            usage: Some(usage(5, 7)),
            status: Some(500),
            error_type: Some("client_cancelled"),
            duration_ms: 3,
            ..Settlement::default()
        };
        let a = names(&config, &settle(&"z".repeat(60)));
        let b = names(&config, &settle(&("z".repeat(59) + "y")));
        for (name, _) in a.iter().chain(&b) {
            assert!(name.len() <= 512, "{} bytes: {name}", name.len());
        }
        let tokens = |n: &[(String, u64)]| {
            n.iter()
                .find(|(name, _)| name.starts_with("llm_tokens_total."))
                .cloned()
                .unwrap()
        };
        assert_ne!(
            tokens(&a).0,
            tokens(&b).0,
            "two long values became one series"
        );
        assert_eq!(tokens(&a).1, 12);
        let shortened: Vec<_> = a
            .iter()
            .filter(|(n, _)| n.starts_with("llm_label_values_shortened_total."))
            .collect();
        assert!(!shortened.is_empty(), "{a:?}");
        // A value has one spelling, whatever the other labels of its request are.
        let mut lone = settle(&"z".repeat(60));
        for v in lone.labels.iter_mut().take(9) {
            *v = "a".to_string();
        }
        let spelling = |n: &[(String, u64)]| {
            let name = tokens(n).0;
            name[name.find("dimension_number_9=.=").unwrap()..].to_string()
        };
        assert_eq!(spelling(&names(&config, &lone)), spelling(&a));
        // Short values are left alone.
        let small = Settlement {
            labels: vec!["a".to_string(); 10],
            duration_ms: 1,
            ..Settlement::default()
        };
        assert!(names(&config, &small)
            .iter()
            .all(|(n, _)| !n.contains('~') && !n.contains("shortened")));
    }

    #[test]
    fn a_cap_too_small_for_the_names_is_refused_at_load() {
        let mut config = ten_long_dimensions();
        let e = settle_name_cap(&mut config, Some(242)).unwrap_err();
        assert_eq!(e.field, "max_metric_name_bytes");
        assert!(e.message.contains("host's limit of 242"), "{}", e.message);
        let mut config = Config::parse(
            br#"{"max_metric_name_bytes": 100, "dimensions":[{"name":"model"},{"name":"team","value":"{request.header.x-team}"}]}"#,
        )
        .unwrap();
        // A configured cap wins over the host's.
        settle_name_cap(&mut config, Some(90_000)).unwrap();
        assert_eq!(config.max_metric_name_bytes, Some(100));
        let e = Config::parse(br#"{"max_metric_name_bytes": 10}"#).unwrap_err();
        assert_eq!(e.field, "max_metric_name_bytes");
        let mut plain = Config::default();
        settle_name_cap(&mut plain, None).unwrap();
        assert_eq!(plain.max_metric_name_bytes, None);
    }

    #[test]
    fn errors_overflow_and_no_labels() {
        let config =
            Config::parse(br#"{"dimensions":[{"name":"user","value":"{request.header.x-user}"}]}"#)
                .unwrap();
        let s = Settlement {
            labels: vec!["other".into()],
            folded: vec![0],
            status: Some(429),
            error_type: Some("rate_limited"),
            duration_ms: 12,
            ..Settlement::default()
        };
        assert_eq!(
            names(&config, &s),
            [
                (
                    "llm_requests_total.user=.=other;.;status_class=.=4xx;.;".to_string(),
                    1
                ),
                (
                    "llm_errors_total.user=.=other;.;error_type=.=rate_limited;.;".to_string(),
                    1
                ),
                ("llm_request_duration_ms.user=.=other;.;".to_string(), 12),
                ("llm_overflow_total.dimension=.=user;.;".to_string(), 1),
            ]
        );
        let plain = Config::default();
        let s = Settlement {
            status: None,
            ..Settlement::default()
        };
        assert_eq!(
            points(&plain, &s)[0].name,
            "llm_requests_total.status_class=.=none;.;"
        );
    }

    #[test]
    fn otel_names() {
        let config = Config::parse(br#"{"metric_names":"otel"}"#).unwrap();
        let s = Settlement {
            labels: vec![
                "chat".into(),
                "openai".into(),
                "gpt-4o".into(),
                "gpt-4o-2024-08-06".into(),
            ],
            usage: Some(usage(10, 2)),
            status: Some(200),
            duration_ms: 50,
            ttft_ms: Some(20),
            ..Settlement::default()
        };
        let l = ".gen_ai_operation_name=.=chat;.;gen_ai_provider_name=.=openai;.;gen_ai_request_model=.=gpt-4o;.;gen_ai_response_model=.=gpt-4o-2024-08-06;.;";
        let got = names(&config, &s);
        assert!(
            got.contains(&(
                format!("gen_ai_client_token_usage{l}gen_ai_token_type=.=input;.;"),
                10
            )),
            "{got:?}"
        );
        assert!(got.contains(&(
            format!("gen_ai_client_token_usage{l}gen_ai_token_type=.=output;.;"),
            2
        )));
        assert!(got.contains(&(format!("gen_ai_server_request_duration_ms{l}"), 50)));
        assert!(got.contains(&(format!("gen_ai_server_time_to_first_token_ms{l}"), 20)));
        assert!(got.contains(&(format!("gen_ai_server_time_per_output_token_ms{l}"), 30)));
        assert!(got.contains(&(format!("llm_requests_total{l}status_class=.=2xx;.;"), 1)));
        assert!(!got
            .iter()
            .any(|(n, _)| n.starts_with("llm_prompt_tokens_total")));
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(Some(200)), "2xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "none");
        assert_eq!(status_class(Some(0)), "none");
    }
}
