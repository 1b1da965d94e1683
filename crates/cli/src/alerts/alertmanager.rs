//! Alerts as a Prometheus Alertmanager takes them: `POST {url}/api/v2/alerts` with every
//! alert firing after a run (again at each run, as Prometheus does, with `endsAt` ahead so
//! that an alert no longer posted expires by itself) and the ones that resolved (`endsAt`
//! now). The Alertmanager groups, routes, silences and de-duplicates them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::condition::{Firing, Transition};
use crate::quality::monitor::AlertmanagerAlerts;
use crate::runs::time;

/// The alerts to post, or `None` when nothing fires or resolved.
pub fn payload(
    am: &AlertmanagerAlerts,
    t: &Transition,
    now_us: i64,
    expire_after_s: i64,
    window: Option<(&str, &str)>,
) -> Option<Value> {
    if t.firing.is_empty() && t.resolved.is_empty() {
        return None;
    }
    let ends_firing = now_us.saturating_add(expire_after_s.saturating_mul(1_000_000));
    let alert = |f: &Firing, ends_us: i64| {
        let mut labels: BTreeMap<&str, &str> = am
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        labels.extend(f.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        labels.insert("severity", &am.severity);
        let mut annotations = serde_json::Map::new();
        annotations.insert("summary".into(), json!(f.summary));
        if let Some((from, to)) = window {
            annotations.insert(
                "description".into(),
                json!(format!("window {from} .. {to}")),
            );
        }
        json!({
            "labels": labels,
            "annotations": annotations,
            "startsAt": time(f.since_us),
            "endsAt": time(ends_us),
        })
    };
    let alerts: Vec<Value> = t
        .firing
        .iter()
        .map(|f| alert(f, ends_firing))
        .chain(t.resolved.iter().map(|f| alert(f, now_us)))
        .collect();
    Some(Value::Array(alerts))
}

/// Where the alerts are posted.
pub fn endpoint(am: &AlertmanagerAlerts) -> String {
    format!("{}/api/v2/alerts", am.url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::condition::{observe_failure, transition};

    #[test]
    fn firing_alerts_end_ahead_and_resolved_ones_now() {
        let am = AlertmanagerAlerts {
            url: "http://am:9093".into(),
            severity: "critical".into(),
            labels: [("team".to_string(), "support".to_string())].into(),
            expire_after: None,
        };
        let now = 1_764_547_200_000_000; // 2025-12-01T00:00:00Z
        let open = transition(&[], observe_failure("bot", "judge down", now));
        let body = payload(&am, &open, now, 3_600, None).unwrap();
        assert_eq!(
            body,
            json!([{
                "labels": {"alertname": "TokenmeterEvaluationFailed", "monitor": "bot",
                           "severity": "critical", "team": "support"},
                "annotations": {"summary": "judge down"},
                "startsAt": "2025-12-01T00:00:00Z",
                "endsAt": "2025-12-01T01:00:00Z",
            }])
        );
        let resolved = Transition {
            opened: vec![],
            resolved: open.firing,
            firing: vec![],
        };
        let later = now + 60_000_000;
        let body = payload(&am, &resolved, later, 3_600, Some(("a", "b"))).unwrap();
        assert_eq!(body[0]["endsAt"], "2025-12-01T00:01:00Z");
        assert_eq!(body[0]["startsAt"], "2025-12-01T00:00:00Z");
        assert_eq!(body[0]["annotations"]["description"], "window a .. b");
        assert_eq!(payload(&am, &Transition::default(), now, 3_600, None), None);
        assert_eq!(endpoint(&am), "http://am:9093/api/v2/alerts");
    }
}
