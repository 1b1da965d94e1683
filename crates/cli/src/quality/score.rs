//! Reading a score out of a judge's answer.
//!
//! Judges do not always answer in the format they were asked for, and reasoning models
//! think aloud before they answer. The parser therefore:
//! 1. drops `<think>…</think>` (and `<thinking>`) blocks: a draft score in them is not
//!    the verdict; an answer cut off inside one has no verdict;
//! 2. collects every statement of a verdict in the rest, with its position: JSON objects
//!    (`score`, `rating` or the metric's name, also nested as `{"groundedness": {"score":
//!    4}}`, also with trailing commas; `status: skipped` means not applicable), `<S2>`
//!    tags, labelled lines that *start* with the label (`Score: 4`, `**Score (1-5):** 4/5`,
//!    `Groundedness: 4`, `Rating = 4`, `The final score is 4.`), and a line holding only
//!    a score (`4`, `**4**`) at the start or the end of the answer;
//! 3. takes the last one. A statement that is not one whole score from 1 to 5 (`3-4`,
//!    `4.5`, `7`, `"high"`) is ambiguous: when it is the last, the answer is unparsed,
//!    never guessed.
//!
//! Prose that merely mentions a score ("a score: 2 would mean…") is not a statement,
//! because a label counts only at the start of a line. The cases are pinned by the corpus
//! in `tests/data/judge-outputs.yaml`.
//!
//! Written by hand: no crate reads free-form model output this way, and the rules above
//! are the product's documented contract.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::metric::Metric;

/// Longest reason or answer excerpt kept per record, in characters.
const MAX_REASON_CHARS: usize = 2_000;
/// Only this much of an answer is searched (its end, where verdicts are): bounds the
/// work a runaway judge answer can cause.
const MAX_SCANNED_BYTES: usize = 64 * 1024;
/// Unbalanced-looking objects given a lenient second parse, per answer.
const MAX_LENIENT_ATTEMPTS: usize = 32;

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

impl Verdict {
    pub fn is_unparsed(&self) -> bool {
        matches!(self, Verdict::Unparsed { .. })
    }
}

/// Parses a judge answer for one metric.
pub fn parse(content: &str, metric: Metric) -> Verdict {
    let text = visible(content);
    let objects = json_objects(text);
    let mut found = Vec::new();
    collect(text, &objects, metric, true, &mut found);
    decide(found, content)
}

/// Parses a combined answer that rates several metrics, each keyed by its name. A metric
/// is read on its own, so a slip in one entry (or a broken outer object) loses only it.
pub fn parse_combined(content: &str, metrics: &[Metric]) -> BTreeMap<Metric, Verdict> {
    let text = visible(content);
    let objects = json_objects(text);
    metrics
        .iter()
        .map(|&metric| {
            let mut found = Vec::new();
            collect(text, &objects, metric, false, &mut found);
            (metric, decide(found, content))
        })
        .collect()
}

/// A statement of a verdict found in the answer.
#[derive(Debug)]
enum Statement {
    Score(u8, String),
    Skipped(String),
    /// A verdict-shaped statement that is not one valid score.
    Ambiguous,
}

fn decide(mut found: Vec<(usize, Statement)>, content: &str) -> Verdict {
    found.sort_by_key(|(at, _)| *at);
    match found.pop() {
        Some((_, Statement::Score(score, reason))) => Verdict::Scored { score, reason },
        Some((_, Statement::Skipped(reason))) => Verdict::NotApplicable { reason },
        Some((_, Statement::Ambiguous)) | None => Verdict::Unparsed {
            answer: excerpt(content),
        },
    }
}

/// The answer without reasoning blocks, and at most its last `MAX_SCANNED_BYTES`.
fn visible(content: &str) -> &str {
    let lower = content.to_ascii_lowercase();
    let mut text = content;
    let mut lower_text = lower.as_str();
    for close in ["</think>", "</thinking>"] {
        if let Some(at) = lower_text.rfind(close) {
            let start = at + close.len();
            text = text.get(start..).unwrap_or_default();
            lower_text = lower_text.get(start..).unwrap_or_default();
        }
    }
    // An opening tag left without its end: the answer stopped while thinking.
    for open in ["<think>", "<thinking>"] {
        if let Some(at) = lower_text.find(open) {
            text = text.get(..at).unwrap_or_default();
            lower_text = lower_text.get(..at).unwrap_or_default();
        }
    }
    let mut start = text.len().saturating_sub(MAX_SCANNED_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default()
}

/// A JSON object in the answer and the byte range it spans.
struct Found {
    start: usize,
    end: usize,
    object: Map<String, Value>,
}

/// Every outermost JSON object in the text, strict first, then with trailing commas
/// forgiven.
fn json_objects(text: &str) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let mut lenient_left = MAX_LENIENT_ATTEMPTS;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes.get(i) != Some(&b'{') {
            i += 1;
            continue;
        }
        let rest = text.get(i..).unwrap_or_default();
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        if let Some(Ok(Value::Object(object))) = stream.next() {
            let end = i + stream.byte_offset();
            out.push(Found {
                start: i,
                end,
                object,
            });
            i = end;
            continue;
        }
        if lenient_left > 0 && looks_like_object(rest) {
            lenient_left -= 1;
            if let Some((object, len)) = lenient_object(rest) {
                out.push(Found {
                    start: i,
                    end: i + len,
                    object,
                });
                i += len;
                continue;
            }
        }
        i += 1;
    }
    out
}

fn looks_like_object(rest: &str) -> bool {
    rest.get(1..)
        .map(str::trim_start)
        .is_some_and(|r| r.starts_with('"'))
}

/// The object starting at `{`, parsed after removing commas before `}` or `]`; its length.
fn lenient_object(rest: &str) -> Option<(Map<String, Value>, usize)> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut cleaned = String::with_capacity(rest.len().min(4096));
    let mut pending_comma = String::new();
    for (at, c) in rest.char_indices() {
        if in_string {
            cleaned.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if !pending_comma.is_empty() {
            if c.is_whitespace() {
                pending_comma.push(c);
                continue;
            }
            if !matches!(c, '}' | ']') {
                cleaned.push_str(&pending_comma);
            }
            pending_comma.clear();
        }
        match c {
            '"' => {
                in_string = true;
                cleaned.push(c);
            }
            ',' => pending_comma.push(c),
            '{' | '[' => {
                depth += 1;
                cleaned.push(c);
            }
            '}' | ']' => {
                depth = depth.checked_sub(1)?;
                cleaned.push(c);
                if depth == 0 {
                    return match serde_json::from_str(&cleaned) {
                        Ok(Value::Object(o)) => Some((o, at + c.len_utf8())),
                        _ => None,
                    };
                }
            }
            _ => cleaned.push(c),
        }
    }
    None
}

/// Adds every statement about `metric` in the text. `generic` admits statements that
/// name no metric (`score`, a bare number): true when the answer is about one metric.
fn collect(
    text: &str,
    objects: &[Found],
    metric: Metric,
    generic: bool,
    found: &mut Vec<(usize, Statement)>,
) {
    for f in objects {
        if let Some(s) = from_object(&f.object, metric, generic) {
            found.push((f.start, s));
        }
    }
    let inside = |at: usize| objects.iter().any(|f| f.start <= at && at < f.end);
    if !generic {
        key_values(text, metric, &inside, found);
    }
    if generic {
        s2_tags(text, metric, &inside, found);
    }
    labelled_lines(text, metric, generic, &inside, found);
}

/// The reason in a verdict object.
fn object_reason(object: &Map<String, Value>) -> String {
    [
        "reason",
        "explanation",
        "reasoning",
        "thoughts",
        "rationale",
    ]
    .iter()
    .find_map(|k| object.get(*k).and_then(Value::as_str))
    .map(excerpt)
    .unwrap_or_default()
}

/// A statement from `{"reason": ..., "score": N}`, `{"status": "skipped"}`, or the
/// metric's entry (`{"groundedness": {"score": 4}}`, `{"groundedness": 4}`).
fn from_object(object: &Map<String, Value>, metric: Metric, generic: bool) -> Option<Statement> {
    if let Some(entry) = object.get(metric.name()) {
        return match entry {
            Value::Object(inner) => from_object(inner, metric, true),
            other => Some(value_statement(other, object_reason(object))),
        };
    }
    if !generic {
        return None;
    }
    let reason = object_reason(object);
    let status = object.get("status").and_then(Value::as_str);
    if status.is_some_and(|s| s.eq_ignore_ascii_case("skipped")) {
        return Some(Statement::Skipped(reason));
    }
    let key = [
        "score".to_string(),
        format!("{}_score", metric.name()),
        "rating".to_string(),
    ];
    if let Some(value) = key.iter().find_map(|k| object.get(k.as_str())) {
        return Some(value_statement(value, reason));
    }
    // A verdict-shaped object without a usable score (`{"status": "done"}`).
    status.map(|_| Statement::Ambiguous)
}

fn value_statement(value: &Value, reason: String) -> Statement {
    let score = match value {
        Value::Number(n) => n.as_f64().and_then(whole_score),
        Value::String(s) => token_score(s.trim()),
        _ => None,
    };
    match score {
        Some(s) => Statement::Score(s, reason),
        None => Statement::Ambiguous,
    }
}

fn whole_score(x: f64) -> Option<u8> {
    if x.fract() == 0.0 && (1.0..=5.0).contains(&x) {
        Some(x as u8)
    } else {
        None
    }
}

/// A score token and what follows it: `4`, `4.0`, `4/5`, `4 / 5`, `4 out of 5`, `**4**`.
/// `None` for anything else, including ranges (`3-4`, `3 to 4`, `4 or 5`).
fn token_score(text: &str) -> Option<u8> {
    let (score, rest) = leading_score(text)?;
    let rest = rest.trim_start_matches(['*', '"', '\'', '`']);
    let ends = rest.is_empty()
        || rest.starts_with(['.', ',', ';', ')', '\n', '\r'])
        || rest.starts_with(char::is_whitespace);
    if !ends {
        return None;
    }
    let next = rest
        .trim_start_matches(|c: char| c.is_whitespace() || c == ',')
        .to_ascii_lowercase();
    let range = ["to ", "or ", "and "]
        .iter()
        .any(|w| next.starts_with(w) && next[w.len()..].starts_with(|c: char| c.is_ascii_digit()));
    (!range).then_some(score)
}

/// The number at the start (after decoration) with `/5` or `out of 5` consumed; the rest.
fn leading_score(text: &str) -> Option<(u8, &str)> {
    let t = text.trim_start_matches(['*', '"', '`', ' ']);
    let len = t
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*c == '.' && *i > 0)))
        .map_or(t.len(), |(i, _)| i);
    let (number, mut rest) = t.split_at(len);
    // A trailing dot ends the sentence ("3."), it is not a decimal point.
    let number = number.strip_suffix('.').unwrap_or(number);
    if len > 0 && t.get(..len).is_some_and(|n| n.ends_with('.')) {
        rest = t.get(len - 1..).unwrap_or_default();
    }
    let score = number.parse::<f64>().ok().and_then(whole_score)?;
    let after = rest.trim_start_matches(['*', ' ']);
    for scale in ["/5", "/ 5", "out of 5"] {
        if let Some(r) = after.strip_prefix(scale) {
            if !r.starts_with(|c: char| c.is_ascii_digit()) {
                return Some((score, r));
            }
        }
    }
    // `4/10` or `4-5`: another scale or a range.
    if let Some(r) = after.strip_prefix(['/', '-', '–']) {
        if r.trim_start().starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
    }
    Some((score, rest))
}

/// Whether the text starts with something that looks like a number (so a statement was
/// made, even if not a valid one).
fn starts_numeric(text: &str) -> bool {
    text.trim_start_matches(['*', '"', '`', ' ', '-'])
        .starts_with(|c: char| c.is_ascii_digit())
}

/// `"groundedness": VALUE` pairs outside any parsed object (a broken combined answer).
fn key_values(
    text: &str,
    metric: Metric,
    inside: &dyn Fn(usize) -> bool,
    found: &mut Vec<(usize, Statement)>,
) {
    let key = format!("\"{}\"", metric.name());
    let mut from = 0;
    while let Some(at) = text
        .get(from..)
        .and_then(|t| t.find(&key))
        .map(|a| a + from)
    {
        from = at + key.len();
        if inside(at) {
            continue;
        }
        let Some(value) = text.get(from..).map(str::trim_start) else {
            continue;
        };
        let Some(value) = value.strip_prefix(':') else {
            continue;
        };
        let value = value.trim_start();
        let parsed = if value.starts_with('{') {
            let mut s = serde_json::Deserializer::from_str(value).into_iter::<Value>();
            match s.next() {
                Some(Ok(v)) => Some(v),
                _ => lenient_object(value).map(|(o, _)| Value::Object(o)),
            }
        } else {
            serde_json::Deserializer::from_str(value)
                .into_iter::<Value>()
                .next()
                .and_then(Result::ok)
        };
        let statement = match parsed {
            Some(Value::Object(o)) => from_object(&o, metric, true),
            Some(v) => Some(value_statement(&v, String::new())),
            None => Some(Statement::Ambiguous),
        };
        if let Some(s) = statement {
            found.push((at, s));
        }
    }
}

/// `<S2>score</S2>` with the reason in `<S1>`.
fn s2_tags(
    text: &str,
    metric: Metric,
    inside: &dyn Fn(usize) -> bool,
    found: &mut Vec<(usize, Statement)>,
) {
    let mut from = 0;
    while let Some(start) = text
        .get(from..)
        .and_then(|t| t.find("<S2>"))
        .map(|a| a + from)
    {
        let body_start = start + "<S2>".len();
        let Some(len) = text.get(body_start..).and_then(|t| t.find("</S2>")) else {
            break;
        };
        from = body_start + len;
        if inside(start) {
            continue;
        }
        let body = text.get(body_start..body_start + len).unwrap_or_default();
        let reason = text
            .get(..start)
            .and_then(|before| {
                let open = before.rfind("<S1>")?;
                let rest = before.get(open + 4..)?;
                Some(rest.get(..rest.find("</S1>")?)?.to_string())
            })
            .map(|r| excerpt(&r))
            .unwrap_or_default();
        let body = body.trim();
        let inner = strip_label(body, metric, true).unwrap_or(body);
        found.push((
            start,
            match token_score(inner.trim()) {
                Some(s) => Statement::Score(s, reason),
                None => Statement::Ambiguous,
            },
        ));
    }
}

/// What follows a label at the start of a line: `score`, `rating`, `final score`,
/// `the score is`, `groundedness`, `groundedness score`, then an optional `(1-5)`, then
/// `:`, `=` or `is`. `None` when the line does not start with a label.
fn strip_label(line: &str, metric: Metric, generic: bool) -> Option<&str> {
    let t = line.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '#' | '*' | '-' | '>' | '_' | '|' | '"' | '`')
    });
    let lower = t.to_ascii_lowercase();
    let mut at = 0;
    let skip_word = |at: &mut usize, word: &str| -> bool {
        let rest = lower.get(*at..).unwrap_or_default();
        if rest.starts_with(word)
            && rest
                .get(word.len()..)
                .is_some_and(|r| !r.starts_with(|c: char| c.is_ascii_alphanumeric()))
        {
            *at += word.len();
            *at += lower
                .get(*at..)
                .map_or(0, |r| r.len() - r.trim_start_matches([' ', '*', '_']).len());
            true
        } else {
            false
        }
    };
    let mut named = false;
    if generic {
        for lead in ["the", "my", "final", "overall"] {
            skip_word(&mut at, lead);
        }
    }
    if skip_word(&mut at, metric.name()) {
        named = true;
    }
    let labelled = skip_word(&mut at, "score") || skip_word(&mut at, "rating");
    if !(named || (generic && labelled)) {
        return None;
    }
    let mut rest = t.get(at..)?.trim_start_matches([' ', '*', '_']);
    if rest.starts_with(['(', '[']) {
        let close = rest.find([')', ']'])?;
        rest = rest.get(close + 1..)?.trim_start_matches([' ', '*', '_']);
    }
    let rest = if let Some(r) = rest.strip_prefix([':', '=']) {
        r
    } else if rest.to_ascii_lowercase().starts_with("is ") {
        rest.get(3..)?
    } else {
        return None;
    };
    Some(rest.trim_start_matches([' ', '*', '_', '\t']))
}

/// Labelled lines, and a line holding only a score at the start or end of the answer.
fn labelled_lines(
    text: &str,
    metric: Metric,
    generic: bool,
    inside: &dyn Fn(usize) -> bool,
    found: &mut Vec<(usize, Statement)>,
) {
    let lines: Vec<(usize, &str)> = text
        .split_inclusive('\n')
        .scan(0usize, |pos, line| {
            let at = *pos;
            *pos += line.len();
            Some((at, line.trim_end_matches(['\n', '\r'])))
        })
        .collect();
    let nonempty: Vec<usize> = (0..lines.len())
        .filter(|&i| lines.get(i).is_some_and(|(_, l)| !l.trim().is_empty()))
        .collect();
    let reason_without = |skip: &[usize]| -> String {
        let kept: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .map(|(_, (_, l))| *l)
            .collect();
        excerpt(kept.join("\n").trim())
    };
    for (n, &i) in nonempty.iter().enumerate() {
        let Some(&(at, line)) = lines.get(i) else {
            continue;
        };
        if inside(at) || line.contains("<S2>") {
            continue;
        }
        if let Some(value) = strip_label(line, metric, generic) {
            let value = value.trim();
            if value.is_empty() {
                // A heading (`## Score`) with the score on the next line.
                let next = nonempty
                    .get(n + 1)
                    .and_then(|&j| lines.get(j).map(|l| (j, l)));
                if let Some((j, (_, next))) = next {
                    if let Some(s) = token_score(next.trim()) {
                        found.push((at, Statement::Score(s, reason_without(&[i, j]))));
                    }
                }
                continue;
            }
            let statement = match token_score(value) {
                Some(s) => Statement::Score(s, reason_without(&[i])),
                None if starts_numeric(value) => Statement::Ambiguous,
                None => continue,
            };
            found.push((at, statement));
            continue;
        }
        let edge = n == 0 || n + 1 == nonempty.len();
        if generic && edge {
            let t = line.trim();
            if is_lone_score(t) {
                if let Some(s) = token_score(t) {
                    found.push((at, Statement::Score(s, reason_without(&[i]))));
                }
            } else if is_lone_number(t) {
                found.push((at, Statement::Ambiguous));
            }
        }
    }
}

/// A line that is only a score: `4`, `4.`, `4/5`, `**4**`, `**4/5**`.
fn is_lone_score(line: &str) -> bool {
    let core = line
        .trim_matches(|c: char| c == '*' || c == '`' || c.is_whitespace())
        .trim_end_matches('.');
    let core = core
        .strip_suffix("/5")
        .or_else(|| core.strip_suffix("/ 5"))
        .unwrap_or(core)
        .trim();
    !core.is_empty() && core.chars().all(|c| c.is_ascii_digit())
}

/// A line that is only a number of some other shape (`6`, `4.5`, `-1`, `3-4`).
fn is_lone_number(line: &str) -> bool {
    let core = line
        .trim_matches(|c: char| c == '*' || c == '`' || c.is_whitespace())
        .trim_end_matches('.');
    !core.is_empty()
        && core.chars().any(|c| c.is_ascii_digit())
        && core
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '/' | '-' | '–' | ' '))
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

    /// One case of the corpus of judge answers.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        name: String,
        #[serde(default)]
        metric: Option<Metric>,
        /// Metrics of a combined answer; absent for a per-metric answer.
        #[serde(default)]
        combined: Option<Vec<Metric>>,
        content: String,
        /// A score, `skipped` or `unparsed`; for a combined answer, one per metric.
        expect: serde_yaml_ng::Value,
        #[serde(default)]
        reason: Option<String>,
    }

    fn expected(v: &serde_yaml_ng::Value) -> String {
        match v {
            serde_yaml_ng::Value::Number(n) => format!("score {n}"),
            serde_yaml_ng::Value::String(s) => s.clone(),
            other => panic!("bad expectation {other:?}"),
        }
    }

    fn reading(v: &Verdict) -> String {
        match v {
            Verdict::Scored { score, .. } => format!("score {score}"),
            Verdict::NotApplicable { .. } => "skipped".into(),
            Verdict::Unparsed { .. } => "unparsed".into(),
        }
    }

    #[test]
    fn corpus_of_judge_answers() {
        let cases: Vec<Case> =
            serde_yaml_ng::from_str(include_str!("../../../../tests/data/judge-outputs.yaml"))
                .unwrap();
        assert!(cases.len() >= 60, "{} cases", cases.len());
        let mut failures = Vec::new();
        for case in &cases {
            match &case.combined {
                None => {
                    let metric = case.metric.unwrap_or(M);
                    let v = parse(&case.content, metric);
                    let (got, want) = (reading(&v), expected(&case.expect));
                    if got != want {
                        failures.push(format!("{}: read {got}, expected {want}", case.name));
                    }
                    if let (Some(reason), Verdict::Scored { reason: r, .. }) = (&case.reason, &v) {
                        if !r.contains(reason.as_str()) {
                            failures.push(format!("{}: reason {r:?}", case.name));
                        }
                    }
                }
                Some(metrics) => {
                    let all = parse_combined(&case.content, metrics);
                    let serde_yaml_ng::Value::Mapping(want) = &case.expect else {
                        panic!("{}: a combined case expects a map", case.name)
                    };
                    for m in metrics {
                        let w = want
                            .get(m.name())
                            .map(expected)
                            .unwrap_or_else(|| panic!("{}: no expectation for {m:?}", case.name));
                        let got = all.get(m).map(reading).unwrap_or_default();
                        if got != w {
                            failures.push(format!(
                                "{} [{}]: read {got}, expected {w}",
                                case.name,
                                m.name()
                            ));
                        }
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn long_answers_are_cut_and_bounded() {
        let long = "x".repeat(5_000);
        match parse(&long, M) {
            Verdict::Unparsed { answer } => {
                assert_eq!(answer.chars().count(), MAX_REASON_CHARS + 1)
            }
            other => panic!("{other:?}"),
        }
        // Many unbalanced braces: the scan stays linear enough to be instant.
        let braces = "{\"a\": ".repeat(20_000) + "\nScore: 4";
        let started = std::time::Instant::now();
        assert!(matches!(
            parse(&braces, M),
            Verdict::Scored { score: 4, .. }
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn reasons_come_with_the_score() {
        assert_eq!(
            parse(r#"{"reason": "All in the context.", "score": 5}"#, M),
            Verdict::Scored {
                score: 5,
                reason: "All in the context.".into()
            }
        );
        assert_eq!(
            parse("<S0>t</S0><S1>Fully grounded.</S1><S2>5</S2>", M),
            Verdict::Scored {
                score: 5,
                reason: "Fully grounded.".into()
            }
        );
        assert_eq!(
            parse("Clear and ordered.\nScore: 4", M),
            Verdict::Scored {
                score: 4,
                reason: "Clear and ordered.".into()
            }
        );
    }
}
