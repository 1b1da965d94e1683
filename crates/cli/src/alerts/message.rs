//! What a notification says, shaped for each destination: tokenmeter's JSON, Slack's and
//! Teams' webhooks, and an e-mail's subject and text.

use serde_json::{json, Value};

use super::condition::{Firing, Transition, BREACHED, FAILED, JUDGE_DRIFT, NO_DATA};
use crate::quality::report::{self, Report};
use crate::runs::time;

/// One run's news for people: the transition, and the run it came from.
pub struct Notice<'a> {
    pub monitor: &'a str,
    pub transition: &'a Transition,
    /// The finished run's report (`None` when the evaluation failed).
    pub report: Option<&'a Report>,
    /// The error of a failed evaluation.
    pub error: Option<&'a str>,
}

impl Notice<'_> {
    /// `failed`, `breached`, `no_data` or `judge_drift` when that alert opened with this
    /// run (in this order), else `resolved`.
    pub fn status(&self) -> &'static str {
        let opened = |name: &str| self.transition.opened.iter().any(|f| f.alertname() == name);
        if opened(FAILED) {
            "failed"
        } else if opened(BREACHED) {
            "breached"
        } else if opened(NO_DATA) {
            "no_data"
        } else if opened(JUDGE_DRIFT) {
            "judge_drift"
        } else {
            "resolved"
        }
    }

    fn headline(&self) -> String {
        let m = self.monitor;
        match self.status() {
            "failed" => format!("{m}: evaluation failed"),
            "breached" => format!("{m}: quality threshold breached"),
            "no_data" => format!("{m}: no data in the window"),
            "judge_drift" => format!("{m}: the judge drifted"),
            _ => format!("{m}: resolved"),
        }
    }

    /// The changes, one line each: `FIRING …`, `RESOLVED …`, then `still firing …`; past
    /// [`MAX_LINES`], one line says how many more (chat services refuse long messages).
    fn lines(&self) -> Vec<String> {
        let mut lines = self.all_lines();
        if lines.len() > MAX_LINES {
            let more = lines.len() - (MAX_LINES - 1);
            lines.truncate(MAX_LINES - 1);
            lines.push(format!(
                "... and {more} more (the report and the alert state have them all)"
            ));
        }
        lines
    }

    fn all_lines(&self) -> Vec<String> {
        let t = self.transition;
        let mut lines: Vec<String> = t
            .opened
            .iter()
            .map(|f| format!("FIRING {}", f.summary))
            .collect();
        lines.extend(
            t.resolved
                .iter()
                .map(|f| format!("RESOLVED {}", resolved_line(f))),
        );
        lines.extend(
            t.still_firing()
                .map(|f| format!("still firing since {}: {}", time(f.since_us), f.summary)),
        );
        lines
    }
}

const MAX_LINES: usize = 20;

fn resolved_line(f: &Firing) -> String {
    let what = match (f.alertname(), f.metric()) {
        (BREACHED, Some(m)) => format!("{m} is within its thresholds again"),
        (FAILED, _) => "the evaluation finished again".to_string(),
        (NO_DATA, _) => "the window has records to judge again".to_string(),
        (JUDGE_DRIFT, _) => "the judge scores the canary as expected again".to_string(),
        (name, _) => name.to_string(),
    };
    format!("{what} (firing since {})", time(f.since_us))
}

fn alert_json(f: &Firing) -> Value {
    json!({
        "alertname": f.alertname(),
        "labels": f.labels,
        "summary": f.summary,
        "since": time(f.since_us),
    })
}

/// tokenmeter's webhook body: the status, what opened, resolved and still fires, and the
/// run's report (with the breached metrics listed) or error.
pub fn tokenmeter(n: &Notice) -> Value {
    let t = n.transition;
    let still: Vec<Value> = t.still_firing().map(alert_json).collect();
    let mut body = serde_json::Map::new();
    body.insert("monitor".into(), json!(n.monitor));
    body.insert("status".into(), json!(n.status()));
    body.insert("opened".into(), t.opened.iter().map(alert_json).collect());
    body.insert(
        "resolved".into(),
        t.resolved.iter().map(alert_json).collect(),
    );
    body.insert("still_firing".into(), Value::Array(still));
    if let Some(r) = n.report {
        body.insert("window".into(), json!(r.window));
        body.insert("breaches".into(), breaches(r));
        body.insert("report".into(), json!(r));
    }
    if let Some(e) = n.error {
        body.insert("error".into(), json!(e));
    }
    Value::Object(body)
}

/// The report's breached metrics with why, the groups' with their labels.
fn breaches(report: &Report) -> Value {
    let overall = std::collections::BTreeMap::new();
    std::iter::once((&overall, &report.metrics))
        .chain(report.groups.iter().map(|g| (&g.labels, &g.metrics)))
        .flat_map(|(group, metrics)| {
            metrics.iter().filter_map(move |(metric, s)| {
                s.breach_reason().map(|reason| {
                    let mut b = json!({
                        "metric": metric.name(),
                        "reason": reason,
                        "average_score": s.average_score,
                        "pass_rate": s.pass_rate,
                        "violations": s.violations,
                        "scored": s.scored,
                    });
                    if let (false, Some(o)) = (group.is_empty(), b.as_object_mut()) {
                        o.insert("group".into(), json!(group));
                    }
                    b
                })
            })
        })
        .collect()
}

/// A Slack incoming webhook's message (plain `text`: Slack escapes nothing else we send).
pub fn slack(n: &Notice) -> Value {
    let mut text = format!("*[tokenmeter] {}*", slack_escape(&n.headline()));
    for line in n.lines() {
        text.push_str("\n• ");
        text.push_str(&slack_escape(&line));
    }
    if let Some(r) = n.report {
        text.push_str(&format!("\nwindow {} .. {}", r.window.from, r.window.to));
    }
    json!({ "text": text })
}

/// Slack reads `&`, `<` and `>` as markup (links, mentions); these are escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Adaptive Card text is Markdown: text from traffic (a model name, a dimension value) must
/// not become a link or formatting, so Markdown's punctuation is escaped.
fn teams_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '[' | ']' | '(' | ')' | '*' | '_' | '~' | '#' | '`' | '<' | '>' | '!' | '|'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A Teams workflow webhook's message: one Adaptive Card with the headline and changes.
pub fn teams(n: &Notice) -> Value {
    let mut body = vec![json!({
        "type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
        "text": format!("\\[tokenmeter\\] {}", teams_escape(&n.headline())),
    })];
    for line in n.lines() {
        body.push(json!({ "type": "TextBlock", "wrap": true, "text": teams_escape(&line) }));
    }
    if let Some(r) = n.report {
        body.push(json!({
            "type": "TextBlock", "wrap": true, "isSubtle": true,
            "text": format!("window {} .. {}", r.window.from, r.window.to),
        }));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    })
}

/// An e-mail's subject and plain-text body.
pub fn email(n: &Notice) -> (String, String) {
    let mut body = n.lines().join("\n");
    body.push('\n');
    if let Some(r) = n.report {
        body.push_str(&format!(
            "\nThe window {} .. {}:\n\n{}",
            r.window.from,
            r.window.to,
            report::render_table(r)
        ));
    }
    if let Some(e) = n.error {
        body.push_str(&format!("\nThe evaluation could not finish:\n\n{e}\n"));
    }
    (format!("[tokenmeter] {}", n.headline()), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::condition::{observe_failure, transition};

    fn failed() -> Transition {
        transition(
            &[],
            observe_failure("bot", "judge <down> & out", 1_764_547_200_000_000),
        )
    }

    #[test]
    fn each_shape_carries_the_change() {
        let t = failed();
        let n = Notice {
            monitor: "bot",
            transition: &t,
            report: None,
            error: Some("judge <down> & out"),
        };
        assert_eq!(n.status(), "failed");
        let body = tokenmeter(&n);
        assert_eq!(body["status"], "failed");
        assert_eq!(body["error"], "judge <down> & out");
        assert_eq!(body["opened"][0]["alertname"], "TokenmeterEvaluationFailed");
        assert_eq!(body["opened"][0]["since"], "2025-12-01T00:00:00Z");
        let text = slack(&n)["text"].as_str().unwrap().to_string();
        assert_eq!(
            text,
            "*[tokenmeter] bot: evaluation failed*\n• FIRING judge &lt;down&gt; &amp; out"
        );
        let card = teams(&n);
        assert_eq!(
            card["attachments"][0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let blocks = card["attachments"][0]["content"]["body"]
            .as_array()
            .unwrap();
        assert_eq!(blocks[1]["text"], "FIRING judge \\<down\\> & out");
        assert_eq!(
            teams_escape("[sign in](https://evil.example) *now*"),
            "\\[sign in\\]\\(https://evil.example\\) \\*now\\*"
        );
        let (subject, text) = email(&n);
        assert_eq!(subject, "[tokenmeter] bot: evaluation failed");
        assert!(
            text.contains("could not finish:\n\njudge <down> & out"),
            "{text}"
        );
    }

    #[test]
    fn a_resolution_says_what_recovered_and_since_when() {
        let before = failed().firing;
        let t = Transition {
            opened: vec![],
            resolved: before,
            firing: vec![],
        };
        let n = Notice {
            monitor: "bot",
            transition: &t,
            report: None,
            error: None,
        };
        assert_eq!(n.status(), "resolved");
        assert_eq!(
            n.lines(),
            ["RESOLVED the evaluation finished again (firing since 2025-12-01T00:00:00Z)"]
        );
        assert_eq!(email(&n).0, "[tokenmeter] bot: resolved");
    }
}
