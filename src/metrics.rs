//! The metrics a settlement produces: names, kinds and values.
//!
//! The filter glue only defines and bumps what this module lists, so every metric name and
//! label rule lives here and is tested natively.

use crate::config::Config;
use crate::exchange::Settlement;
use crate::labels;

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

/// Labels some metrics carry besides the dimensions (the host needs a rule for each).
pub const FIXED_LABELS: &[&str] = &[];

/// The metric families tokenmeter emits, by base name (without namespace).
pub const REQUESTS: &str = "requests_total";
pub const PROMPT_TOKENS: &str = "prompt_tokens_total";
pub const COMPLETION_TOKENS: &str = "completion_tokens_total";
pub const TOTAL_TOKENS: &str = "tokens_total";

/// Builds the encoded label part (`.label=.=value;.;...`) shared by a settlement's series.
pub fn label_suffix(config: &Config, settlement: &Settlement) -> String {
    let mut out = String::with_capacity(16 * settlement.labels.len());
    labels::encode_labels(
        &mut out,
        config
            .label_names()
            .zip(settlement.labels.iter().map(String::as_str)),
    );
    out
}

/// The points to record for a settled exchange. Zero increments are left out: hosts refuse
/// them (Envoy answers `BadArgument`).
pub fn points(config: &Config, settlement: &Settlement) -> Vec<Point> {
    let suffix = label_suffix(config, settlement);
    let ns = &config.namespace;
    let counter = |base: &str, value: u64| {
        // Built by hand: `format!` costs several times as much, on every request.
        let mut name = String::with_capacity(ns.len() + 1 + base.len() + suffix.len());
        name.push_str(ns);
        name.push('_');
        name.push_str(base);
        name.push_str(&suffix);
        Point {
            name,
            kind: Kind::Counter,
            value,
        }
    };
    let mut out = vec![counter(REQUESTS, 1)];
    if let Some(u) = settlement.usage {
        for (base, value) in [
            (PROMPT_TOKENS, u.prompt),
            (COMPLETION_TOKENS, u.completion),
            (TOTAL_TOKENS, u.total),
        ] {
            if value > 0 {
                out.push(counter(base, value));
            }
        }
    }
    out
}

/// Every metric family name under a namespace, for documentation and config rendering.
pub fn family_names(config: &Config) -> Vec<String> {
    [REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS, TOTAL_TOKENS]
        .iter()
        .map(|b| format!("{}_{b}", config.namespace))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{Usage, UsageSource};

    #[test]
    fn points_for_a_settlement() {
        let config = Config::parse(
            br#"{"namespace":"ai","dimensions":[{"name":"model"},{"name":"team","value":"{request.header.x-team}"}]}"#,
        )
        .unwrap();
        let s = Settlement {
            labels: vec!["gpt-4o".into(), "blue".into()],
            folded: vec![],
            usage: Some(Usage {
                prompt: 10,
                completion: 0,
                total: 10,
                cached: None,
                reasoning: None,
                audio_prompt: None,
                audio_completion: None,
                source: UsageSource::Reported,
            }),
            status: Some(200),
            ..Settlement::default()
        };
        let names: Vec<_> = points(&config, &s)
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "ai_requests_total.model=.=gpt-4o;.;team=.=blue;.;".to_string(),
                    1
                ),
                (
                    "ai_prompt_tokens_total.model=.=gpt-4o;.;team=.=blue;.;".to_string(),
                    10
                ),
                (
                    "ai_tokens_total.model=.=gpt-4o;.;team=.=blue;.;".to_string(),
                    10
                ),
            ]
        );
    }

    #[test]
    fn no_labels_means_plain_names() {
        let config = Config::default();
        let s = Settlement {
            status: Some(500),
            ..Settlement::default()
        };
        assert_eq!(points(&config, &s)[0].name, "llm_requests_total");
    }
}
