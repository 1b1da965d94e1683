//! Alerts as state changes: told once when they open, once when they resolve, in each
//! webhook shape, and to a real Alertmanager, where they fire and resolve.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::evaluation::*;
use serde_json::Value;
use tokenmeter_testkit::alertmanager::Alertmanager;
use tokenmeter_testkit::judge::JudgeServer;
use tokenmeter_testkit::webhook::Webhook;

const LIMIT: Duration = Duration::from_secs(30);

/// Five records in the window; with `bad`, three of them get fluency 2 (pass rate 0.4).
/// Ids differ between good and bad so that the judge cache does not answer for them.
fn window(dir: &Path, bad: bool) -> std::path::PathBuf {
    let records: Vec<Value> = (0..5)
        .map(|i| {
            let marks = if bad && i < 3 { "want-fluency=2" } else { "" };
            record(
                &format!("{}{i}", if bad { "bad" } else { "good" }),
                marks,
                false,
            )
        })
        .collect();
    write_records(dir, &records)
}

fn eval(monitor: &Path, records: &Path, cache: &Path) -> Output {
    std::process::Command::new(BIN)
        .arg("eval")
        .arg("--monitor")
        .arg(monitor)
        .arg("--records")
        .arg(records)
        .arg("--cache-db")
        .arg(cache)
        .args(["--now", NOW])
        .output()
        .unwrap()
}

/// Waits a moment, then returns what arrived: for checking that nothing more came.
fn settled(hook: &Webhook) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(500));
    hook.received()
}

/// Finding 5: overlapping windows repeated the same alert at every run and nothing said
/// when it was over. Now a breach is told once, a still-breached window is silent, the
/// recovery is told once, in each webhook shape.
#[test]
fn a_breach_is_told_once_and_its_resolution_once() {
    let judge = JudgeServer::start(scoring_judge).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("state.db");
    let shapes = ["tokenmeter", "slack", "teams"];
    let hooks: Vec<Webhook> = shapes.iter().map(|_| Webhook::start().unwrap()).collect();
    let monitors: Vec<_> = shapes
        .iter()
        .zip(&hooks)
        .map(|(shape, hook)| {
            write_monitor(
                dir.path(),
                &format!("bot-{shape}"),
                &judge.url(),
                "",
                "{coherence: {}, fluency: {}}",
                &format!(
                    "alerts: {{webhook: '{}', webhook_format: {shape}}}\n",
                    hook.url()
                ),
            )
        })
        .collect();
    let run_all = |bad: bool, code: i32| {
        let records = window(dir.path(), bad);
        for m in &monitors {
            let out = eval(m, &records, &cache);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };

    run_all(true, 2);
    for hook in &hooks {
        assert_eq!(hook.wait_for(1, LIMIT).unwrap().len(), 1);
    }
    // The same breach in the next overlapping window: nobody is told again.
    run_all(true, 2);
    for hook in &hooks {
        assert_eq!(settled(hook).len(), 1);
    }
    // Recovered: one resolution each.
    run_all(false, 0);
    for hook in &hooks {
        assert_eq!(hook.wait_for(2, LIMIT).unwrap().len(), 2);
    }
    run_all(false, 0);
    for hook in &hooks {
        assert_eq!(
            settled(hook).len(),
            2,
            "a healthy window after a resolution is silent"
        );
    }

    let plain = hooks[0].received();
    assert_eq!(plain[0]["status"], "breached");
    assert_eq!(
        plain[0]["opened"][0]["alertname"],
        "TokenmeterQualityBreached"
    );
    assert_eq!(plain[0]["opened"][0]["labels"]["metric"], "fluency");
    assert_eq!(plain[0]["breaches"][0]["metric"], "fluency");
    assert_eq!(plain[1]["status"], "resolved");
    assert_eq!(plain[1]["resolved"][0]["labels"]["metric"], "fluency");
    assert_eq!(
        plain[1]["resolved"][0]["since"],
        plain[0]["opened"][0]["since"]
    );
    assert_eq!(plain[1]["opened"], serde_json::json!([]));
    assert_eq!(plain[1]["report"]["metrics"]["fluency"]["status"], "ok");

    let slack = hooks[1].received();
    let text = |i: usize| slack[i]["text"].as_str().unwrap().to_string();
    assert!(
        text(0).starts_with("*[tokenmeter] bot-slack: quality threshold breached*\n• FIRING fluency: pass rate 0.4000 &lt; 0.7"),
        "{}",
        text(0)
    );
    assert!(
        text(1).starts_with(
            "*[tokenmeter] bot-slack: resolved*\n• RESOLVED fluency is within its thresholds again"
        ),
        "{}",
        text(1)
    );

    let teams = hooks[2].received();
    let card = &teams[0]["attachments"][0];
    assert_eq!(teams[0]["type"], "message");
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    assert_eq!(
        card["content"]["body"][0]["text"],
        "\\[tokenmeter\\] bot-teams: quality threshold breached",
        "Markdown's brackets are escaped"
    );
    let resolved = &teams[1]["attachments"][0]["content"]["body"][1]["text"];
    assert!(
        resolved.as_str().unwrap().starts_with("RESOLVED fluency"),
        "{resolved}"
    );
}

/// Alerts reach a real Alertmanager with the monitor's labels, and resolve there.
#[test]
fn alerts_fire_and_resolve_at_a_real_alertmanager() {
    let judge = JudgeServer::start(scoring_judge).unwrap();
    let notified = Webhook::start().unwrap();
    let am = Alertmanager::start(&notified.url()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("state.db");
    let monitor = write_monitor(
        dir.path(),
        "support-bot",
        &judge.url(),
        "",
        "{coherence: {}, fluency: {}}",
        &format!(
            "alerts:\n  alertmanager: {{url: '{}', severity: critical, labels: {{team: support}}}}\n",
            am.url()
        ),
    );

    let out = eval(&monitor, &window(dir.path(), true), &cache);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let firing = notified
        .wait_for(1, LIMIT)
        .unwrap_or_else(|e| panic!("{e}: {}", am.log()));
    let n = &firing[0];
    assert_eq!(n["status"], "firing", "{n}");
    assert_eq!(n["alerts"].as_array().unwrap().len(), 1, "{n}");
    let alert = &n["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "TokenmeterQualityBreached");
    assert_eq!(alert["labels"]["monitor"], "support-bot");
    assert_eq!(alert["labels"]["metric"], "fluency");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["team"], "support");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("fluency: pass rate 0.4000 < 0.7"),
        "{alert}"
    );
    // The Alertmanager holds it as active.
    let held = am.alerts().unwrap();
    let held: Vec<&Value> = held.as_array().unwrap().iter().collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["status"]["state"], "active");
    assert_eq!(held[0]["labels"]["metric"], "fluency");

    // Still breached: posted again (keeping it alive), the Alertmanager tells nobody anew.
    assert_eq!(
        eval(&monitor, &window(dir.path(), true), &cache)
            .status
            .code(),
        Some(2)
    );
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(notified.received().len(), 1, "{:?}", notified.received());

    // Recovered: resolved at the Alertmanager, which says so.
    assert_eq!(
        eval(&monitor, &window(dir.path(), false), &cache)
            .status
            .code(),
        Some(0)
    );
    let all = notified
        .wait_for(2, LIMIT)
        .unwrap_or_else(|e| panic!("{e}: {}", am.log()));
    let n = &all[1];
    assert_eq!(n["status"], "resolved", "{n}");
    assert_eq!(n["alerts"][0]["labels"]["metric"], "fluency");
    assert_eq!(n["alerts"][0]["status"], "resolved");
    let active = am.alerts().unwrap();
    assert_eq!(
        active,
        serde_json::json!([]),
        "nothing is active once resolved"
    );
}
