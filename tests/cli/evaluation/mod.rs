//! Shared helpers of the evaluator tests: records and monitor files, and a judge script
//! that answers what each record asks for.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokenmeter_testkit::judge::{Received, Reply};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokenmeter");
pub const NOW: &str = "2026-11-26T10:15:00Z";
/// Inside the default P7D window ending at NOW.
pub const IN_WINDOW: &str = "2026-11-25T08:00:00Z";

pub const METRICS: [&str; 4] = ["groundedness", "relevance", "coherence", "fluency"];

/// A record whose answer carries `marks` (e.g. `want-coherence=3`) for the judge script.
pub fn record(id: &str, marks: &str, context: bool) -> Value {
    let mut r = json!({
        "id": id,
        "time": IN_WINDOW,
        "model": "gpt-4o-mini",
        "question": format!("What does plan {id} include?"),
        "answer": format!("Plan {id} includes support. {marks}"),
    });
    if context {
        r["context"] = json!(format!("Plan {id} includes support and updates."));
    }
    r
}

pub fn write_records(dir: &Path, records: &[Value]) -> PathBuf {
    let path = dir.join("records.jsonl");
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// A monitor at sampling rate 1 by default; `judge_extra` and `extra` are YAML lines.
/// Unless `extra` sets its own `verdict:`, any number of scored records gives a verdict
/// (`min_samples: 1, min_coverage: 0`), so small windows test the aggregation itself.
pub fn write_monitor(
    dir: &Path,
    name: &str,
    judge_url: &str,
    judge_extra: &str,
    metrics: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let verdict = if extra.contains("verdict:") {
        ""
    } else {
        "verdict: {min_samples: 1, min_coverage: 0}\n"
    };
    let text = format!(
        "name: {name}\nsampling_rate: 1.0\njudge:\n  url: {judge_url}\n  model: judge-model\n  initial_backoff_seconds: 0.05\n{judge_extra}metrics: {metrics}\n{verdict}{extra}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The metric a per-metric prompt asks about.
pub fn metric_of(req: &Received) -> Option<&'static str> {
    let system = req.system();
    METRICS.into_iter().find(|m| {
        system.contains(&format!("Quality: {}.", m.to_uppercase())) && !system.contains("several")
    })
}

/// The score a record asks for on a metric: `want-METRIC=N`, else `want=N`, else 5.
pub fn wanted(user: &str, metric: &str) -> u8 {
    for key in [format!("want-{metric}="), "want=".to_string()] {
        if let Some(at) = user.find(&key) {
            if let Some(d) = user[at + key.len()..]
                .chars()
                .next()
                .and_then(|c| c.to_digit(10))
            {
                return d as u8;
            }
        }
    }
    5
}

/// Answers per-metric prompts with `{"reason", "score"}` and combined prompts with one
/// entry per listed metric.
pub fn scoring_judge(req: &Received, _attempt: usize) -> Reply {
    let user = req.user();
    if let Some(list) = user.strip_prefix("QUALITIES: ") {
        let names = list.lines().next().unwrap_or_default();
        let mut answer = serde_json::Map::new();
        for m in names.split(", ") {
            answer.insert(
                m.to_string(),
                json!({"reason": format!("{m} looks fine"), "score": wanted(&user, m)}),
            );
        }
        return Reply::Content(format!("```json\n{}\n```", Value::Object(answer)));
    }
    let metric = metric_of(req).unwrap_or("unknown");
    Reply::json_score(wanted(&user, metric), &format!("{metric}: judged"))
}

pub fn report(stdout: &[u8]) -> Value {
    serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(stdout)))
}

pub fn metric<'a>(report: &'a Value, name: &str) -> &'a Value {
    &report["metrics"][name]
}
