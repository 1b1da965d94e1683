//! `openai::usage::from_response` and `from_edges`: model and usage from a response body,
//! whole or as its two ends.
//!
//! - any usage is bounded: every count at most `MAX_TOKENS` and plausible, or exactly
//!   `Usage::invalid()` (see [`bounded`]);
//! - for a body that is a JSON object without duplicate top-level keys, reading the bytes
//!   (`from_response`) and reading the parsed tree (`from_tree`) agree.

use serde_json::Value;
use tokenmeter_core::body::capture::Captured;
use tokenmeter_core::openai::usage::{
    from_edges, from_response, from_tree, ResponseFacts, Usage, UsageSource, MAX_TOKENS,
};

use crate::inject::top_level_keys;
use crate::shown;
use crate::split::Rng;

/// Panics unless `usage` is one a provider could report (every count at most
/// [`MAX_TOKENS`], each breakdown within what it is part of), or [`Usage::invalid`].
pub fn bounded(usage: &Usage, what: &str, input: &[u8]) {
    let counts = [
        usage.prompt,
        usage.completion,
        usage.total,
        usage.cached.unwrap_or(0),
        usage.reasoning.unwrap_or(0),
        usage.audio_prompt.unwrap_or(0),
        usage.audio_completion.unwrap_or(0),
    ];
    assert!(
        counts.iter().all(|&n| n <= MAX_TOKENS) && usage.is_plausible(),
        "{what}: implausible usage {usage:?}\n input: {}",
        shown(input)
    );
    if usage.source == UsageSource::Invalid {
        assert_eq!(
            *usage,
            Usage::invalid(),
            "{what}: invalid usage with counts\n input: {}",
            shown(input)
        );
    }
}

fn facts_bounded(facts: &ResponseFacts, what: &str, input: &[u8]) {
    if let Some(u) = &facts.usage {
        assert_ne!(
            u.source,
            UsageSource::Estimated,
            "{what}: a response's usage said to be estimated\n input: {}",
            shown(input)
        );
        bounded(u, what, input);
    }
}

pub fn usage(data: &[u8]) {
    let whole = from_response(Captured::Whole(data));
    facts_bounded(&whole, "from_response", data);

    // Any two ends, overlapping or not, as a capture that overflowed keeps them.
    let mut rng = Rng::new(data, 3);
    let head = data.get(..rng.below(data.len() + 1)).unwrap_or_default();
    let tail = data.get(rng.below(data.len() + 1)..).unwrap_or_default();
    facts_bounded(&from_edges(head, tail), "from_edges", data);
    facts_bounded(&from_edges(data, data), "from_edges (whole)", data);

    if let Ok(tree) = serde_json::from_slice::<Value>(data) {
        if let Some(facts) = from_tree(&tree) {
            facts_bounded(&facts, "from_tree", data);
            let unique = top_level_keys(data).values().all(|&n| n == 1);
            if tree.is_object() && unique {
                assert_eq!(
                    facts,
                    whole,
                    "from_tree and from_response disagree\n input: {}",
                    shown(data)
                );
            }
        }
    }
}
