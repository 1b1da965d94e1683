//! The judge prompts: one rubric per metric, and a combined prompt that scores several
//! metrics in one call.
//!
//! A prompt's version is the first 12 hex digits of the SHA-256 of its template text, so
//! any edit to a rubric changes the version stored with every score and invalidates the
//! judge-result cache for it: scores from different rubrics are never mixed silently.

use sha2::{Digest, Sha256};

use super::metric::{Inputs, Metric};

const PREAMBLE: &str = "\
You are a careful reviewer of answers produced by an AI assistant. You rate one quality \
of one answer on a scale of 1 to 5, following the rubric below exactly. Judge only the \
quality named; do not reward or punish anything else. Work step by step: first note the \
evidence in the inputs that matters for this quality, then compare it with the levels, \
then choose the level that fits best.";

const OUTPUT_ONE: &str = "\
Reply with a single JSON object and nothing else:
{\"reason\": \"<your step-by-step reasoning, then one sentence on why this level>\", \"score\": <1-5>}
Write the reason before deciding the score. If the inputs needed for this quality are \
missing or empty, reply {\"reason\": \"<what is missing>\", \"status\": \"skipped\"} instead.";

const GROUNDEDNESS: &str = "\
Quality: GROUNDEDNESS. Is every claim in the answer supported by the context the \
assistant was given? Knowledge from outside the context counts as unsupported, even when \
it is true. An answer that rightly says the context does not contain the information is \
grounded.
5 - Every claim is directly supported by the context; nothing is added or distorted.
4 - All substantive claims are supported; at most a minor wording or detail goes slightly \
beyond the context without changing the meaning.
3 - The main point is supported, but some claims are unsupported or loosely inferred.
2 - Most of the answer is unsupported, or a supported part is distorted so that it misleads.
1 - The answer contradicts the context or is unrelated to it.";

const RELEVANCE: &str = "\
Quality: RELEVANCE. Does the answer address what the question asks, using what the \
context makes available? Judge how well it meets the user's need, not its style or \
whether its facts are correct.
5 - Answers the question fully and directly, covering every part it asks about, with \
nothing off-topic.
4 - Answers the question; a minor part is missed or a little is off-topic.
3 - Answers part of the question, or answers it only indirectly.
2 - Touches the topic but leaves the question essentially unanswered.
1 - Does not address the question at all.";

const COHERENCE: &str = "\
Quality: COHERENCE. Does the answer read as one logically connected whole, in response \
to the question? Judge the order of ideas and how they follow from each other, not \
their truth.
5 - Ideas follow one another logically, with clear transitions, and the answer holds \
together from start to end.
4 - Well organised overall; one transition or step is abrupt.
3 - Understandable, but the order is partly confusing or some sentences do not connect.
2 - Mostly disjointed: ideas jump, repeat or contradict each other.
1 - Incoherent: no discernible line of thought.";

const FLUENCY: &str = "\
Quality: FLUENCY. Is the answer well-formed language: grammar, spelling, word choice and \
sentence flow, in the language it is written in? Do not judge content or correctness.
5 - Flawless, natural and varied language, as a skilled writer would produce.
4 - Natural and clear; at most a few small slips that do not slow the reader.
3 - Clear, but with noticeable errors or awkward phrasing.
2 - Frequent errors that make the text hard to read.
1 - Largely unreadable.";

const INPUTS_ONE: &str = "\
QUESTION:
{question}

CONTEXT:
{context}

ANSWER:
{answer}";

const COMBINED_INTRO: &str = "\
You are a careful reviewer of answers produced by an AI assistant. You rate several \
qualities of one answer, each on a scale of 1 to 5, following each quality's rubric \
below exactly and judging each quality independently of the others. For each quality, \
work step by step: note the evidence that matters for it, compare it with the levels, \
then choose the level that fits best.";

const OUTPUT_COMBINED: &str = "\
Rate only the qualities listed after QUALITIES in the user message. Reply with a single \
JSON object and nothing else, with one entry per listed quality, named in lower case:
{\"<quality>\": {\"reason\": \"<your step-by-step reasoning, then one sentence on why this level>\", \"score\": <1-5>}, ...}
Write each reason before deciding its score. If the inputs needed for a quality are \
missing or empty, give that quality {\"reason\": \"<what is missing>\", \"status\": \"skipped\"}.";

const INPUTS_COMBINED: &str = "\
QUALITIES: {metrics}

QUESTION:
{question}

CONTEXT:
{context}

ANSWER:
{answer}";

/// A chat prompt ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    /// Hash of the template text this prompt was rendered from.
    pub version: String,
    /// JSON schema of the answer, sent as `response_format` where the judge takes it.
    pub schema: serde_json::Value,
}

/// The schema of one verdict: a reason, then a score or a skip.
fn verdict_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "reason": {"type": "string"},
            "score": {"type": ["integer", "null"], "enum": [1, 2, 3, 4, 5, null]},
            "status": {"type": "string", "enum": ["scored", "skipped"]}
        },
        "required": ["reason", "score", "status"],
        "additionalProperties": false
    })
}

fn rubric(metric: Metric) -> &'static str {
    match metric {
        Metric::Groundedness => GROUNDEDNESS,
        Metric::Relevance => RELEVANCE,
        Metric::Coherence => COHERENCE,
        Metric::Fluency => FLUENCY,
    }
}

fn system_one(metric: Metric) -> String {
    format!("{PREAMBLE}\n\n{}\n\n{OUTPUT_ONE}", rubric(metric))
}

fn system_combined() -> String {
    let rubrics: Vec<&str> = Metric::ALL.into_iter().map(rubric).collect();
    format!(
        "{COMBINED_INTRO}\n\n{}\n\n{OUTPUT_COMBINED}",
        rubrics.join("\n\n")
    )
}

fn version_of(system: &str, user_template: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(system.as_bytes());
    hasher.update([0u8]);
    hasher.update(user_template.as_bytes());
    hex(&hasher.finalize()).chars().take(12).collect()
}

/// The version of a metric's own prompt.
pub fn version(metric: Metric) -> String {
    version_of(&system_one(metric), INPUTS_ONE)
}

/// The version of the combined prompt.
pub fn combined_version() -> String {
    version_of(&system_combined(), INPUTS_COMBINED)
}

/// The prompt scoring one metric of one record.
pub fn for_metric(metric: Metric, inputs: &Inputs<'_>) -> Prompt {
    let system = system_one(metric);
    let version = version_of(&system, INPUTS_ONE);
    Prompt {
        user: fill(INPUTS_ONE, &fields(inputs, "")),
        system,
        version,
        schema: verdict_schema(),
    }
}

/// The prompt scoring several metrics of one record in one call.
pub fn combined(metrics: &[Metric], inputs: &Inputs<'_>) -> Prompt {
    let system = system_combined();
    let version = version_of(&system, INPUTS_COMBINED);
    let names: Vec<&str> = metrics.iter().map(|m| m.name()).collect();
    let properties: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|n| (n.to_string(), verdict_schema()))
        .collect();
    Prompt {
        user: fill(INPUTS_COMBINED, &fields(inputs, &names.join(", "))),
        system,
        version,
        schema: serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": names,
            "additionalProperties": false
        }),
    }
}

fn fields<'a>(inputs: &Inputs<'a>, metrics: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("question", inputs.question.unwrap_or("(none)")),
        ("context", inputs.context.unwrap_or("(none)")),
        ("answer", inputs.answer.unwrap_or("(none)")),
        ("metrics", metrics),
    ]
}

/// Replaces `{name}` placeholders of the template in one pass, so that braces inside the
/// record's own text are never taken for placeholders.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(rest.get(..open).unwrap_or_default());
        let after = rest.get(open..).unwrap_or_default();
        let replaced = values.iter().find_map(|(name, value)| {
            let token = format!("{{{name}}}");
            after.starts_with(&token).then_some((value, token.len()))
        });
        match replaced {
            Some((value, len)) => {
                out.push_str(value);
                rest = after.get(len..).unwrap_or_default();
            }
            None => {
                out.push('{');
                rest = after.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

/// The judge-result cache key: everything that determines the judge's answer.
pub fn cache_key(prompt: &Prompt, judge_model: &str, scope: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [
        prompt.version.as_str(),
        judge_model,
        scope,
        prompt.system.as_str(),
        prompt.user.as_str(),
    ] {
        // Length-prefixed so that no two different tuples hash the same bytes.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUTS: Inputs<'static> = Inputs {
        question: Some("What is the refund window?"),
        answer: Some("30 days {answer}"),
        context: Some("Refunds are accepted within 30 days."),
    };

    #[test]
    fn each_metric_has_its_own_versioned_rubric() {
        let versions: Vec<String> = Metric::ALL.into_iter().map(version).collect();
        for (i, v) in versions.iter().enumerate() {
            assert_eq!(v.len(), 12);
            assert!(v.chars().all(|c| c.is_ascii_hexdigit()));
            assert!(!versions.iter().skip(i + 1).any(|w| w == v));
        }
        assert_ne!(combined_version(), versions[0]);
        // Stable across calls: it is a hash of constant text.
        assert_eq!(version(Metric::Fluency), version(Metric::Fluency));
    }

    #[test]
    fn prompt_asks_for_reasoning_then_json_score() {
        let p = for_metric(Metric::Groundedness, &INPUTS);
        assert!(p.system.contains("GROUNDEDNESS"));
        assert!(p.system.contains("step by step"));
        assert!(p.system.contains("\"score\""));
        assert!(p.system.contains("\"status\": \"skipped\""));
        for level in ["5 - ", "4 - ", "3 - ", "2 - ", "1 - "] {
            assert!(p.system.contains(level), "{level}");
        }
        assert_eq!(p.version, version(Metric::Groundedness));
    }

    #[test]
    fn inputs_are_filled_once_without_reinterpreting_braces() {
        let p = for_metric(Metric::Relevance, &INPUTS);
        assert!(p.user.contains("QUESTION:\nWhat is the refund window?"));
        assert!(p
            .user
            .contains("CONTEXT:\nRefunds are accepted within 30 days."));
        // The answer's own "{answer}" text is kept as is.
        assert!(p.user.contains("ANSWER:\n30 days {answer}"));
        let no_context = Inputs {
            context: None,
            ..INPUTS
        };
        assert!(for_metric(Metric::Fluency, &no_context)
            .user
            .contains("CONTEXT:\n(none)"));
        assert_eq!(fill("{a}{b}{", &[("a", "{b}"), ("b", "x")]), "{b}x{");
    }

    #[test]
    fn combined_prompt_lists_the_metrics() {
        let p = combined(&[Metric::Coherence, Metric::Fluency], &INPUTS);
        assert!(p.user.starts_with("QUALITIES: coherence, fluency\n"));
        for m in Metric::ALL {
            assert!(p.system.contains(&m.name().to_uppercase()));
        }
        assert_eq!(p.version, combined_version());
    }

    #[test]
    fn cache_key_depends_on_model_inputs_and_scope() {
        let p = for_metric(Metric::Coherence, &INPUTS);
        let k = cache_key(&p, "gpt-4o", "coherence");
        assert_eq!(k, cache_key(&p, "gpt-4o", "coherence"));
        assert_ne!(k, cache_key(&p, "gpt-4o-mini", "coherence"));
        assert_ne!(k, cache_key(&p, "gpt-4o", "combined"));
        let other = Inputs {
            answer: Some("31 days"),
            ..INPUTS
        };
        assert_ne!(
            k,
            cache_key(
                &for_metric(Metric::Coherence, &other),
                "gpt-4o",
                "coherence"
            )
        );
    }
}
