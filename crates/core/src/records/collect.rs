//! Sampled inference records: which requests are collected, what is taken from them, and
//! the record sent to the collector.
//!
//! The sampling decision is a hash of the request id, so it is the same in every worker VM
//! and on every rerun. Text is taken per the column mapping, redacted with regexes before it
//! leaves the gateway, and cut so that a record never exceeds `max_record_bytes`.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::collect::{CollectConfig, ContextSource};
use crate::openai::api::Operation;
use crate::records::record::{Record, RecordUsage};

/// Whether the request with this id is in the sample: its [`draw`] falls below the rate.
pub fn sampled(request_id: &str, rate: f64) -> bool {
    rate >= 1.0 || draw(request_id) < rate
}

/// The request's draw in [0, 1): the first 8 bytes of SHA-256 of the id, as a fraction of
/// 2^64. A monitor with seed 0 draws with it too, so its rate is a share of all traffic
/// that nests inside the gateway's sample instead of multiplying with it.
pub fn draw(request_id: &str) -> f64 {
    let digest = Sha256::digest(request_id.as_bytes());
    let mut head = [0u8; 8];
    for (d, s) in head.iter_mut().zip(digest.iter()) {
        *d = *s;
    }
    u64::from_be_bytes(head) as f64 / 18_446_744_073_709_551_616.0
}

/// Text of a message `content`: a string, or the text parts of a list of parts.
fn content_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

fn role(m: &Value) -> &str {
    m.get("role").and_then(Value::as_str).unwrap_or("")
}

/// The question: the last user message, the completions prompt, or the Responses input.
pub fn question(op: Operation, request: &Value) -> Option<String> {
    match op {
        Operation::ChatCompletions => request
            .get("messages")?
            .as_array()?
            .iter()
            .rev()
            .find(|m| role(m) == "user")
            .and_then(|m| content_text(m.get("content"))),
        Operation::Completions => match request.get("prompt")? {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => {
                let t: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                (!t.is_empty()).then(|| t.join("\n"))
            }
            _ => None,
        },
        Operation::Responses => match request.get("input")? {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => items
                .iter()
                .rev()
                .find(|m| role(m) == "user")
                .and_then(|m| content_text(m.get("content"))),
            _ => None,
        },
        Operation::Embeddings => None,
    }
}

/// The context column from the request.
pub fn context(
    source: &ContextSource,
    request: &Value,
    header: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let join = |parts: Vec<String>| (!parts.is_empty()).then(|| parts.join("\n\n"));
    match source {
        ContextSource::None => None,
        ContextSource::RequestHeader(name) => header(name),
        ContextSource::RequestBody(path) => {
            let mut v = request;
            for p in path {
                v = match v {
                    Value::Object(m) => m.get(p)?,
                    Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        }
        ContextSource::System => {
            let mut parts = Vec::new();
            if let Some(i) = request.get("instructions").and_then(Value::as_str) {
                parts.push(i.to_string());
            }
            let messages = request
                .get("messages")
                .or_else(|| request.get("input"))
                .and_then(Value::as_array);
            for m in messages.into_iter().flatten() {
                if matches!(role(m), "system" | "developer") {
                    parts.extend(content_text(m.get("content")));
                }
            }
            join(parts)
        }
        ContextSource::ToolResults => {
            let mut parts = Vec::new();
            let messages = request
                .get("messages")
                .or_else(|| request.get("input"))
                .and_then(Value::as_array);
            for m in messages.into_iter().flatten() {
                if matches!(role(m), "tool" | "function") {
                    parts.extend(content_text(m.get("content")));
                }
                if m.get("type").and_then(Value::as_str) == Some("function_call_output") {
                    parts.extend(m.get("output").and_then(Value::as_str).map(str::to_string));
                }
            }
            join(parts)
        }
    }
}

/// The answer in a JSON response: message text, refusals, and tool calls as `name(arguments)`.
pub fn answer_from_response(op: Operation, response: &Value) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let call = |name: Option<&Value>, args: Option<&Value>| {
        format!(
            "{}({})",
            name.and_then(Value::as_str).unwrap_or(""),
            args.and_then(Value::as_str).unwrap_or("")
        )
    };
    match op {
        Operation::ChatCompletions | Operation::Completions => {
            let choice = response.get("choices")?.as_array()?.first()?;
            parts.extend(
                choice
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            );
            if let Some(m) = choice.get("message") {
                parts.extend(m.get("content").and_then(Value::as_str).map(str::to_string));
                parts.extend(m.get("refusal").and_then(Value::as_str).map(str::to_string));
                for c in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let f = c.get("function");
                    parts.push(call(
                        f.and_then(|f| f.get("name")),
                        f.and_then(|f| f.get("arguments")),
                    ));
                }
            }
        }
        Operation::Responses => {
            for item in response.get("output")?.as_array()? {
                if item.get("type").and_then(Value::as_str) == Some("function_call") {
                    parts.push(call(item.get("name"), item.get("arguments")));
                }
                for c in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    parts.extend(c.get("text").and_then(Value::as_str).map(str::to_string));
                    parts.extend(c.get("refusal").and_then(Value::as_str).map(str::to_string));
                }
            }
        }
        Operation::Embeddings => {}
    }
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// Applies the redaction patterns.
pub fn redact(config: &CollectConfig, text: &str) -> String {
    let mut out = std::borrow::Cow::Borrowed(text);
    for (re, replacement) in &config.redact {
        if re.is_match(&out) {
            out = std::borrow::Cow::Owned(re.replace_all(&out, replacement.as_str()).into_owned());
        }
    }
    out.into_owned()
}

/// What an exchange contributes to a record.
#[derive(Debug, Default)]
pub struct Texts {
    pub question: Option<String>,
    pub answer: Option<String>,
    pub context: Option<String>,
}

/// Builds the record as JSON text: texts redacted, columns named, and cut to fit
/// `max_record_bytes` (longest text first), with `truncated` set when anything was cut.
pub fn record_json(config: &CollectConfig, mut record: Record, texts: Texts) -> String {
    let mut columns: Vec<(String, String)> = [
        (config.question.clone(), texts.question),
        (config.context_column.clone(), texts.context),
        (config.answer.clone(), texts.answer),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.filter(|t| !t.is_empty()).map(|t| (k, redact(config, &t))))
    .collect();
    let render = |record: &Record, columns: &[(String, String)]| {
        let mut r = record.clone();
        for (k, v) in columns {
            r.extra.insert(k.clone(), Value::String(v.clone()));
        }
        serde_json::to_string(&r).unwrap_or_default()
    };
    let mut text = render(&record, &columns);
    // Each pass cuts the longest column by what is over (plus room for the marker).
    for _ in 0..8 {
        if text.len() <= config.max_record_bytes {
            return text;
        }
        record.truncated = true;
        let excess = text.len() - config.max_record_bytes + 16;
        let Some((_, longest)) = columns.iter_mut().max_by_key(|(_, v)| v.len()) else {
            break;
        };
        let keep = longest.len().saturating_sub(excess);
        let mut cut = keep;
        while cut > 0 && !longest.is_char_boundary(cut) {
            cut -= 1;
        }
        longest.truncate(cut);
        longest.push('…');
        text = render(&record, &columns);
    }
    if text.len() > config.max_record_bytes {
        // Only the fixed fields are left: send them without texts.
        record.truncated = true;
        text = render(&record, &[]);
    }
    text
}

/// The usage part of a record.
pub fn record_usage(usage: Option<&crate::openai::usage::Usage>) -> Option<RecordUsage> {
    usage.map(|u| RecordUsage {
        prompt: u.prompt,
        completion: u.completion,
        total: u.total,
        source: Some(u.source.as_str().to_string()),
    })
}

/// Dimension values by label, for the record.
pub fn record_dimensions<'a>(
    labels: impl Iterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, String> {
    labels
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::collect::RawCollect;
    use serde_json::json;

    fn config(extra: &str) -> CollectConfig {
        let raw: RawCollect =
            serde_json::from_str(&format!(r#"{{"cluster": "c"{extra}}}"#)).unwrap();
        raw.validate().unwrap()
    }

    #[test]
    fn sampling_is_deterministic_and_near_the_rate() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("req-{i}")).collect();
        let n = ids.iter().filter(|id| sampled(id, 0.1)).count();
        assert!((1800..2200).contains(&n), "{n}");
        let again = ids.iter().filter(|id| sampled(id, 0.1)).count();
        assert_eq!(n, again);
        assert!(ids.iter().all(|id| sampled(id, 1.0)));
        assert!(!ids.iter().any(|id| sampled(id, 0.0)));
        // Lower rates sample a subset of higher ones.
        assert!(ids
            .iter()
            .filter(|id| sampled(id, 0.05))
            .all(|id| sampled(id, 0.1)));
    }

    #[test]
    fn questions_contexts_and_answers() {
        let chat = json!({"messages": [
            {"role": "system", "content": "Docs: plan A costs 5 EUR."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "tool", "content": "weather: sunny"},
            {"role": "user", "content": [{"type": "text", "text": "What does"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "plan A cost?"}]}
        ], "metadata": {"context": "from metadata", "n": {"a": 1}}});
        assert_eq!(
            question(Operation::ChatCompletions, &chat).as_deref(),
            Some("What does\nplan A cost?")
        );
        let none = |_: &str| None;
        assert_eq!(
            context(&ContextSource::System, &chat, &none).as_deref(),
            Some("Docs: plan A costs 5 EUR.")
        );
        assert_eq!(
            context(&ContextSource::ToolResults, &chat, &none).as_deref(),
            Some("weather: sunny")
        );
        let path = ContextSource::RequestBody(vec!["metadata".into(), "context".into()]);
        assert_eq!(
            context(&path, &chat, &none).as_deref(),
            Some("from metadata")
        );
        let obj = ContextSource::RequestBody(vec!["metadata".into(), "n".into()]);
        assert_eq!(context(&obj, &chat, &none).as_deref(), Some(r#"{"a":1}"#));
        let hdr = ContextSource::RequestHeader("x-context".into());
        assert_eq!(
            context(&hdr, &chat, &|h| (h == "x-context")
                .then(|| "hdr".to_string()))
            .as_deref(),
            Some("hdr")
        );
        let resp = json!({"instructions": "Be brief.", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]});
        assert_eq!(question(Operation::Responses, &resp).as_deref(), Some("Hi"));
        assert_eq!(
            context(&ContextSource::System, &resp, &none).as_deref(),
            Some("Be brief.")
        );
        assert_eq!(
            question(Operation::Completions, &json!({"prompt": "Once"})).as_deref(),
            Some("Once")
        );
        let tool = json!({"choices": [{"message": {"content": null, "tool_calls": [{"function": {"name": "f", "arguments": "{\"x\":1}"}}]}}]});
        assert_eq!(
            answer_from_response(Operation::ChatCompletions, &tool).as_deref(),
            Some("f({\"x\":1})")
        );
        let out = json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "Hello"}]}]});
        assert_eq!(
            answer_from_response(Operation::Responses, &out).as_deref(),
            Some("Hello")
        );
    }

    #[test]
    fn default_redaction_hides_emails_and_keys() {
        let c = config("");
        let text = "Mail jane.doe@example.co.uk or use sk-proj-abcdefghijklmnop1234 and Bearer abcdefghijklmnopqrstu.vwx and AKIAABCDEFGHIJKLMNOP.";
        let r = redact(&c, text);
        assert_eq!(
            r, "Mail [EMAIL] or use [API_KEY] and [API_KEY] and [API_KEY].",
            "{r}"
        );
        let none = config(r#", "redact": []"#);
        assert_eq!(redact(&none, text), text);
        let custom = config(r#", "redact": ["\\d{3}-\\d{4}"]"#);
        assert_eq!(redact(&custom, "call 555-1234"), "call [REDACTED]");
    }

    /// One real-shaped sample of every key family the README lists (made-up values of the
    /// published formats), each inside ordinary text.
    #[test]
    fn every_listed_key_family_is_redacted() {
        let c = config("");
        let samples = [
            ("OpenAI project key", "sk-proj-Xq3vR9sT2uW5yZ8aB1cD4eF7gH0iJ3kL6mN9oP2qR5sT8uV1wX4yZ7aB0cD3eF6gH9iJ2kL5mN8oP1qR4sT7uV0wX3yZ6a"),
            ("OpenAI legacy key", "sk-4fQ9xZ2mN7pR1sT6uV3wY8aB5cD0eF2gH7iJ4kL9mN1o"),
            ("OpenAI service account key", "sk-svcacct-Ab3Cd5Ef7Gh9Ij1Kl3Mn5Op7Qr9St1Uv3Wx5Yz7"),
            ("Anthropic key", "sk-ant-api03-Zx8Yw6Vu4Ts2Rq0Po8Nm6Lk4Ji2Hg0Fe8Dc6Ba4Zx2Yw0Vu8Ts6Rq4Po2Nm0Lk8Ji6Hg4Fe2Dc0Ba8-Qw3ErTyAA"),
            ("Stripe secret key", "sk_live_51HqLyjWDarjtT1zdp7dcXqZ3bF9g2k5m"),
            ("AWS access key id", "AKIAIOSFODNN7EXAMPLE"),
            ("AWS temporary key id", "ASIAY34FZKBOKMUTVV7A"),
            ("AWS role id", "AROAJQABLZS4A3QDU576"),
            ("GitHub classic token", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
            ("GitHub OAuth token", "gho_16C7e42F292c6912E7710c838347Ae178B4a"),
            ("GitHub fine-grained token", "github_pat_11ABCDEFG0123456789abc_0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijKLMNOPQR"),
            ("Slack bot token", "xoxb-2534197231-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
            ("Google API key", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe"),
            ("JSON Web Token", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
            ("bearer credential", "Bearer 0123456789abcdefABCDEF.ghij"),
        ];
        for (family, key) in samples {
            let text = format!("key: {key}, thanks");
            let r = redact(&c, &text);
            assert_eq!(r, "key: [API_KEY], thanks", "{family}: {r}");
        }
        // Ordinary words and ids are left alone.
        let plain = "ASIA is a continent; skip-navigation; the github_page_title; eyJ alone";
        assert_eq!(redact(&c, plain), plain);
    }

    #[test]
    fn records_fit_the_limit_and_say_so() {
        let c = config(r#", "max_record_bytes": 2048, "columns": {"answer": "response"}"#);
        let rec = Record {
            id: "r1".into(),
            ..Record::default()
        };
        let texts = Texts {
            question: Some("short question".into()),
            answer: Some("é".repeat(5000)),
            context: Some("ctx".into()),
        };
        let json = record_json(&c, rec, texts);
        assert!(json.len() <= 2048, "{}", json.len());
        let r: Record = serde_json::from_str(&json).unwrap();
        assert!(r.truncated);
        assert_eq!(r.text("question"), Some("short question"));
        assert!(r.text("response").unwrap().ends_with('…'));
        let small = record_json(
            &c,
            Record {
                id: "r2".into(),
                ..Record::default()
            },
            Texts {
                question: Some("q".into()),
                ..Texts::default()
            },
        );
        assert!(!serde_json::from_str::<Record>(&small).unwrap().truncated);
    }
}
