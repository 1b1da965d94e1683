//! Reading a score out of a judge's answer.
//!
//! Judges do not always answer in the format they were asked for, so the parser accepts
//! every shape seen in practice, in this order:
//! 1. a JSON object with `score` (or the metric's name) and `reason`, also inside a
//!    Markdown fence or after some prose; `status: skipped` means not applicable;
//! 2. `<S0>thoughts</S0><S1>explanation</S1><S2>score</S2>` tags;
//! 3. a `score: N` line (`Score = 4`, `**Score:** 4/5`), the last one winning;
//! 4. a bare number.
//!
//! A score must be a whole number from 1 to 5; anything else is unparsed, never guessed.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::metric::Metric;

/// Longest reason or answer excerpt kept per record, in characters.
const MAX_REASON_CHARS: usize = 2_000;

/// What one judge answer says about one metric of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Scored {
        score: u8,
        reason: String,
    },
    /// The judge declined (`status: skipped`): the metric does not apply.
    NotApplicable {
        reason: String,
    },
    /// The judge answered but no valid score could be read; `answer` is an excerpt.
    Unparsed {
        answer: String,
    },
}

/// Parses a judge answer for one metric.
pub fn parse(content: &str, metric: Metric) -> Verdict {
    let unparsed = || Verdict::Unparsed {
        answer: excerpt(content),
    };
    if let Some(object) = find_object(content, |o| has_verdict(o, metric)) {
        return from_object(&object, metric).unwrap_or_else(unparsed);
    }
    if let Some(score) = tag(content, "S2") {
        return match score_from_text(score) {
            Some(score) => Verdict::Scored {
                score,
                reason: excerpt(tag(content, "S1").unwrap_or_default()),
            },
            None => unparsed(),
        };
    }
    if let Some((line_index, score)) = score_line(content) {
        let reason: Vec<&str> = content
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != line_index)
            .map(|(_, l)| l)
            .collect();
        return match score {
            Some(score) => Verdict::Scored {
                score,
                reason: excerpt(reason.join("\n").trim()),
            },
            None => unparsed(),
        };
    }
    match score_from_text(content.trim().trim_end_matches('.')) {
        Some(score) if is_bare_number(content) => Verdict::Scored {
            score,
            reason: String::new(),
        },
        _ => unparsed(),
    }
}

/// Parses a combined answer, one JSON object per metric keyed by the metric's name. A
/// metric missing from the answer, or whose entry is malformed, is unparsed.
pub fn parse_combined(content: &str, metrics: &[Metric]) -> BTreeMap<Metric, Verdict> {
    let object = find_object(content, |o| {
        metrics.iter().any(|m| o.contains_key(m.name()))
    });
    metrics
        .iter()
        .map(|&metric| {
            let verdict = object
                .as_ref()
                .and_then(|o| o.get(metric.name()))
                .and_then(|entry| match entry {
                    Value::Object(inner) => from_object(inner, metric),
                    // `{"coherence": 4}` is a terse but clear answer.
                    other => number_score(other).map(|score| Verdict::Scored {
                        score,
                        reason: String::new(),
                    }),
                })
                .unwrap_or_else(|| Verdict::Unparsed {
                    answer: excerpt(content),
                });
            (metric, verdict)
        })
        .collect()
}

/// The first JSON object in the text that `wanted` accepts; tolerates fences and prose.
fn find_object(
    content: &str,
    wanted: impl Fn(&Map<String, Value>) -> bool,
) -> Option<Map<String, Value>> {
    content
        .char_indices()
        .filter(|(_, c)| *c == '{')
        .filter_map(|(i, _)| content.get(i..))
        .filter_map(|rest| {
            serde_json::Deserializer::from_str(rest)
                .into_iter::<Value>()
                .next()
                .and_then(Result::ok)
        })
        .find_map(|v| match v {
            Value::Object(o) if wanted(&o) => Some(o),
            _ => None,
        })
}

fn score_key(metric: Metric) -> [&'static str; 3] {
    ["score", metric.name(), "rating"]
}

fn has_verdict(object: &Map<String, Value>, metric: Metric) -> bool {
    object.contains_key("status") || score_key(metric).iter().any(|k| object.contains_key(*k))
}

/// A verdict from `{"reason": ..., "score": N}` or `{"status": "skipped", ...}`.
fn from_object(object: &Map<String, Value>, metric: Metric) -> Option<Verdict> {
    let reason = ["reason", "explanation", "reasoning", "thoughts"]
        .iter()
        .find_map(|k| object.get(*k).and_then(Value::as_str))
        .map(excerpt)
        .unwrap_or_default();
    let skipped = object
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|s| s.eq_ignore_ascii_case("skipped"));
    if skipped {
        return Some(Verdict::NotApplicable { reason });
    }
    let score = score_key(metric)
        .iter()
        .find_map(|k| object.get(*k))
        .and_then(number_score)?;
    Some(Verdict::Scored { score, reason })
}

fn number_score(value: &Value) -> Option<u8> {
    match value {
        Value::Number(n) => n.as_f64().and_then(whole_score),
        Value::String(s) => score_from_text(s),
        _ => None,
    }
}

fn whole_score(x: f64) -> Option<u8> {
    if x.fract() == 0.0 && (1.0..=5.0).contains(&x) {
        Some(x as u8)
    } else {
        None
    }
}

/// A score written as text: `4`, `4.0`, `4/5`, ` 4 `.
fn score_from_text(text: &str) -> Option<u8> {
    let text = text.trim();
    let text = text.strip_suffix("/5").unwrap_or(text).trim();
    text.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .and_then(whole_score)
}

fn is_bare_number(content: &str) -> bool {
    let t = content.trim().trim_end_matches('.');
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '/')
}

/// The text between `<NAME>` and `</NAME>`.
fn tag<'a>(content: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = content.find(&open)? + open.len();
    let rest = content.get(start..)?;
    let end = rest.find(&close)?;
    rest.get(..end)
}

/// The last line that states a score: its index, and the score if it is a valid one.
fn score_line(content: &str) -> Option<(usize, Option<u8>)> {
    let lines: Vec<&str> = content.lines().collect();
    lines.iter().enumerate().rev().find_map(|(i, line)| {
        let lower = line.to_ascii_lowercase();
        let at = lower.find("score")?;
        let after = lower.get(at + "score".len()..)?;
        let after = after.trim_start_matches(|c: char| c == '*' || c == '"' || c.is_whitespace());
        let value = after
            .strip_prefix(':')
            .or_else(|| after.strip_prefix('='))
            .or_else(|| after.strip_prefix("is"))?;
        let value = value.trim_start_matches(|c: char| c == '*' || c == '"' || c.is_whitespace());
        let token: String = value
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '/')
            .collect();
        let token = token.trim_end_matches('.');
        if token.is_empty() {
            return None;
        }
        Some((i, score_from_text(token)))
    })
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or(text)),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Metric = Metric::Groundedness;

    fn scored(content: &str) -> (u8, String) {
        match parse(content, M) {
            Verdict::Scored { score, reason } => (score, reason),
            other => panic!("{content:?} gave {other:?}"),
        }
    }

    fn is_unparsed(content: &str) -> bool {
        matches!(parse(content, M), Verdict::Unparsed { .. })
    }

    #[test]
    fn json_object() {
        assert_eq!(
            scored(r#"{"reason": "Every claim is in the context.", "score": 5}"#),
            (5, "Every claim is in the context.".to_string())
        );
        assert_eq!(scored(r#"{"score": "4"}"#).0, 4);
        assert_eq!(
            scored(r#"{"score": 3.0, "explanation": "x"}"#),
            (3, "x".into())
        );
        assert_eq!(scored(r#"{"groundedness": 2, "reason": "r"}"#).0, 2);
    }

    #[test]
    fn json_in_a_fence_or_after_prose() {
        let fenced = "```json\n{\n  \"reason\": \"Mostly supported.\",\n  \"score\": 4\n}\n```";
        assert_eq!(scored(fenced), (4, "Mostly supported.".into()));
        let prose = "Let me think. The answer {cites} the context.\nFinal: {\"reason\": \"ok\", \"score\": 5} done";
        assert_eq!(scored(prose), (5, "ok".into()));
    }

    #[test]
    fn json_skipped_is_not_applicable() {
        assert_eq!(
            parse(
                r#"{"status": "skipped", "reason": "No context was given."}"#,
                M
            ),
            Verdict::NotApplicable {
                reason: "No context was given.".into()
            }
        );
        assert!(matches!(
            parse(r#"{"status": "Skipped"}"#, M),
            Verdict::NotApplicable { .. }
        ));
    }

    #[test]
    fn json_with_bad_score_is_unparsed() {
        assert!(is_unparsed(r#"{"reason": "r", "score": 7}"#));
        assert!(is_unparsed(r#"{"reason": "r", "score": 0}"#));
        assert!(is_unparsed(r#"{"reason": "r", "score": 4.5}"#));
        assert!(is_unparsed(r#"{"reason": "r", "score": "high"}"#));
        assert!(is_unparsed(r#"{"reason": "r", "score": null}"#));
        assert!(is_unparsed(r#"{"reason": "r", "status": "done"}"#));
    }

    #[test]
    fn s_tags() {
        let tagged = "<S0>The answer restates the context.</S0><S1>Fully grounded.</S1><S2>5</S2>";
        assert_eq!(scored(tagged), (5, "Fully grounded.".into()));
        assert_eq!(scored("<S2> 3 </S2>").0, 3);
        assert!(is_unparsed("<S0>x</S0><S1>y</S1><S2>9</S2>"));
        assert!(is_unparsed("<S0>x</S0><S1>y</S1><S2>five</S2>"));
    }

    #[test]
    fn score_lines() {
        assert_eq!(
            scored("The answer is clear and well ordered.\nScore: 4"),
            (4, "The answer is clear and well ordered.".into())
        );
        assert_eq!(scored("reasoning...\n**Score:** 5/5").0, 5);
        assert_eq!(scored("score = 2").0, 2);
        assert_eq!(scored("The score is 3.").0, 3);
        assert_eq!(scored("Score: 2 (draft)\nrevised\nFinal score: 4").0, 4);
        assert!(is_unparsed("Score: 6"));
        assert!(is_unparsed("Score: 0/5"));
    }

    #[test]
    fn bare_number() {
        assert_eq!(scored("4"), (4, String::new()));
        assert_eq!(scored(" 5\n"), (5, String::new()));
        assert_eq!(scored("3."), (3, String::new()));
        assert!(is_unparsed("6"));
        assert!(is_unparsed("0"));
        assert!(is_unparsed("-1"));
    }

    #[test]
    fn nothing_readable_is_unparsed_with_an_excerpt() {
        for answer in ["", "I cannot rate this.", "good", "4 out of 5 stars maybe"] {
            assert!(is_unparsed(answer), "{answer:?}");
        }
        let long = "x".repeat(5_000);
        match parse(&long, M) {
            Verdict::Unparsed { answer } => {
                assert_eq!(answer.chars().count(), MAX_REASON_CHARS + 1)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn combined_answers() {
        let content = "```json\n{\"groundedness\": {\"reason\": \"g\", \"score\": 5}, \"relevance\": {\"reason\": \"r\", \"score\": 9}, \"coherence\": 4, \"fluency\": {\"status\": \"skipped\", \"reason\": \"f\"}}\n```";
        let all = parse_combined(content, &Metric::ALL);
        assert_eq!(
            all[&Metric::Groundedness],
            Verdict::Scored {
                score: 5,
                reason: "g".into()
            }
        );
        assert!(matches!(all[&Metric::Relevance], Verdict::Unparsed { .. }));
        assert!(matches!(
            all[&Metric::Coherence],
            Verdict::Scored { score: 4, .. }
        ));
        assert!(matches!(
            all[&Metric::Fluency],
            Verdict::NotApplicable { .. }
        ));

        let partial = parse_combined(
            r#"{"coherence": {"score": 3, "reason": "c"}}"#,
            &[Metric::Coherence, Metric::Fluency],
        );
        assert!(matches!(
            partial[&Metric::Coherence],
            Verdict::Scored { score: 3, .. }
        ));
        assert!(matches!(
            partial[&Metric::Fluency],
            Verdict::Unparsed { .. }
        ));

        let garbage = parse_combined("no idea", &[Metric::Coherence]);
        assert!(matches!(
            garbage[&Metric::Coherence],
            Verdict::Unparsed { .. }
        ));
    }
}
