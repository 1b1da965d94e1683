//! `tokenmeter serve` running monitors: on start (`--run-monitors-now`) and on a cron
//! schedule, with results at /metrics, stored runs and alerts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::evaluation::*;
use chrono::{SecondsFormat, Utc};
use serde_json::Value;
use tokenmeter_testkit::collector::Collector;
use tokenmeter_testkit::judge::JudgeServer;
use tokenmeter_testkit::webhook::Webhook;

const LIMIT: Duration = Duration::from_secs(60);

/// Records from an hour ago, inside the default window ending now.
fn import_recent(dir: &Path, db: &Path, records: Vec<Value>) {
    let recent =
        (Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let records: Vec<Value> = records
        .into_iter()
        .map(|mut r| {
            r["time"] = recent.clone().into();
            r
        })
        .collect();
    let file = write_records(dir, &records);
    let out = Command::new(BIN)
        .args(["records", "import", "--db"])
        .arg(db)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn runs(db: &Path, monitor: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row(
        "SELECT count(*) FROM monitor_runs WHERE monitor = ?1 AND report IS NOT NULL",
        [monitor],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn runs_monitors_at_start_exposes_metrics_and_alerts() {
    let judge = JudgeServer::start(scoring_judge).unwrap();
    let hook = Webhook::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    // coherence {2:1, 5:3}: pass rate 0.75, average 4.25; fluency {2:3, 5:1}: breached.
    let records: Vec<Value> = (0..4)
        .map(|i| {
            let marks = if i == 0 {
                "want-coherence=2 want-fluency=2"
            } else if i < 3 {
                "want-fluency=2"
            } else {
                ""
            };
            record(&format!("r{i}"), marks, false)
        })
        .collect();
    import_recent(dir.path(), &db, records);
    let schedule = "schedule: \"0 0 1 1 *\"\n"; // far away: only the start run happens
    let bot = write_monitor(
        dir.path(),
        "support-bot",
        &judge.url(),
        "",
        "{coherence: {}, fluency: {}}",
        &format!("alerts: {{webhook: {}}}\n{schedule}", hook.url()),
    );

    let c = Collector::start(
        Path::new(BIN),
        &db,
        &[
            "--monitor",
            bot.to_str().unwrap(),
            "--run-monitors-now",
            "--namespace",
            "acme",
        ],
    )
    .unwrap();
    let metrics = c
        .poll("/metrics", LIMIT, |body| {
            body.contains("acme_quality_scored_records{monitor=\"support-bot\"")
        })
        .unwrap();
    for family in ["average_score", "pass_rate", "violations", "scored_records"] {
        assert!(
            metrics.contains(&format!("# HELP acme_quality_{family} ")),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("# TYPE acme_quality_{family} gauge\n")),
            "{metrics}"
        );
    }
    let sample = |name: &str, metric: &str| -> f64 {
        let prefix = format!("acme_quality_{name}{{monitor=\"support-bot\",metric=\"{metric}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(sample("average_score", "coherence"), 4.25);
    assert_eq!(sample("pass_rate", "coherence"), 0.75);
    assert_eq!(sample("violations", "coherence"), 1.0);
    assert_eq!(sample("scored_records", "coherence"), 4.0);
    assert_eq!(sample("pass_rate", "fluency"), 0.25);
    assert_eq!(sample("breached", "fluency"), 1.0);
    assert_eq!(sample("breached", "coherence"), 0.0);
    assert!(metrics.contains("acme_quality_last_run_failed{monitor=\"support-bot\"} 0\n"));
    assert!(metrics.contains("acme_quality_scheduler_running{monitor=\"support-bot\"} 1\n"));
    assert_eq!(judge.calls(), 8);

    let alerts = hook.wait_for(1, LIMIT).unwrap();
    assert_eq!(alerts[0]["monitor"], "support-bot");
    assert_eq!(alerts[0]["status"], "breached");
    assert_eq!(alerts[0]["breaches"][0]["metric"], "fluency");
    assert_eq!(runs(&db, "support-bot"), 1);

    // Results are stored: a restarted server shows them without running again.
    c.kill().unwrap();
    let c = Collector::start(
        Path::new(BIN),
        &db,
        &["--monitor", bot.to_str().unwrap(), "--namespace", "acme"],
    )
    .unwrap();
    let again = c.poll("/metrics", LIMIT, |_| true).unwrap();
    assert!(
        again.contains(
            "acme_quality_pass_rate{monitor=\"support-bot\",metric=\"coherence\"} 0.75\n"
        ),
        "{again}"
    );
    assert_eq!(judge.calls(), 8);

    // The read API shows the same run, its histograms and the records behind them.
    let api = |q: &str| {
        let reply = tokenmeter_testkit::client::get(&format!("{}/api/v1/{q}", c.url())).unwrap();
        assert_eq!(reply.status, 200, "{q}: {}", reply.text());
        reply.json()
    };
    let quality = api("quality?window=P1D");
    let bot = &quality["monitors"][0];
    assert_eq!(bot["monitor"], "support-bot");
    assert_eq!(
        (&bot["runs"], &bot["breached_runs"], &bot["failed_runs"]),
        (&1.into(), &1.into(), &0.into())
    );
    let metric = |name: &str| {
        bot["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == name)
            .unwrap_or_else(|| panic!("no {name} in {bot}"))
            .clone()
    };
    let coherence = metric("coherence");
    assert_eq!(coherence["violation_rate"], 0.0);
    assert_eq!(coherence["violations"], 1);
    assert_eq!(
        coherence["histogram"],
        serde_json::json!({"1": 0, "2": 1, "3": 0, "4": 0, "5": 3})
    );
    assert_eq!(coherence["points"][0]["average_score"], 4.25);
    assert_eq!(coherence["points"][0]["pass_rate"], 0.75);
    let fluency = metric("fluency");
    assert_eq!(fluency["violation_rate"], 1.0);
    assert_eq!(fluency["points"][0]["breached"], true);
    assert_eq!(
        fluency["histogram"],
        serde_json::json!({"1": 0, "2": 3, "3": 0, "4": 0, "5": 1})
    );
    let monitors = api("monitors");
    let m = &monitors["monitors"][0];
    assert_eq!(
        (&m["name"], &m["status"]),
        (&"support-bot".into(), &"breached".into())
    );
    assert_eq!(m["schedule"], "0 0 1 1 *");
    assert!(
        m["next_run"]
            .as_str()
            .unwrap()
            .ends_with("-01-01T00:00:00Z"),
        "{m}"
    );
    assert_eq!(m["metrics"], serde_json::json!(["coherence", "fluency"]));
    assert_eq!(
        (&m["scheduler"], &m["scheduler_error"]),
        (&"running".into(), &Value::Null)
    );
    let firing = m["alerts_firing"].as_array().unwrap();
    assert_eq!(firing.len(), 1, "{m}");
    assert_eq!(
        (&firing[0]["alertname"], &firing[0]["metric"]),
        (&"TokenmeterQualityBreached".into(), &"fluency".into())
    );
    assert!(firing[0]["summary"]
        .as_str()
        .unwrap()
        .starts_with("fluency: "));
    let ids = |q: &str| -> Vec<String> {
        let mut ids: Vec<String> = api(&format!("records?window=P1D&{q}"))["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["record"]["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids("metric=fluency&verdict=fail"), ["r0", "r1", "r2"]);
    assert_eq!(ids("metric=fluency&verdict=pass"), ["r3"]);
    assert_eq!(ids("metric=coherence&verdict=fail"), ["r0"]);
    assert_eq!(ids("metric=groundedness").len(), 0, "not scored on it");
    let one = api("records/r0");
    let scores = one["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 2, "{one}");
    assert_eq!(
        (&scores[0]["metric"], &scores[0]["score"]),
        (&"coherence".into(), &2.into())
    );
}

#[test]
fn runs_monitors_on_their_cron_schedule_from_the_cache() {
    let judge = JudgeServer::start(scoring_judge).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    import_recent(
        dir.path(),
        &db,
        (0..3)
            .map(|i| record(&format!("r{i}"), "", false))
            .collect(),
    );
    // Six fields: every second.
    let m = write_monitor(
        dir.path(),
        "every-second",
        &judge.url(),
        "",
        "{fluency: {}}",
        "schedule: \"* * * * * *\"\n",
    );
    let c = Collector::start(Path::new(BIN), &db, &["--monitor", m.to_str().unwrap()]).unwrap();
    let metrics = c
        .poll("/metrics", LIMIT, |b| {
            b.contains(
                "llm_quality_scored_records{monitor=\"every-second\",metric=\"fluency\"} 3\n",
            )
        })
        .unwrap();
    assert!(
        metrics
            .contains("llm_quality_average_score{monitor=\"every-second\",metric=\"fluency\"} 5\n"),
        "{metrics}"
    );
    // Later runs of the same window find every answer in the cache.
    let start = std::time::Instant::now();
    while runs(&db, "every-second") < 3 {
        assert!(
            start.elapsed() < LIMIT,
            "fewer than 3 scheduled runs within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(judge.calls(), 3);
}

#[test]
fn a_failing_run_is_reported_and_alerted() {
    let hook = Webhook::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    import_recent(dir.path(), &db, vec![record("r0", "", false)]);
    // Nothing listens on port 9 (discard): every call fails to connect.
    let m = write_monitor(
        dir.path(),
        "unreachable",
        "http://127.0.0.1:9/v1",
        "  max_retries: 0\n",
        "{fluency: {}}",
        &format!(
            "alerts: {{webhook: {}}}\nschedule: \"0 0 1 1 *\"\n",
            hook.url()
        ),
    );
    let c = Collector::start(
        Path::new(BIN),
        &db,
        &["--monitor", m.to_str().unwrap(), "--run-monitors-now"],
    )
    .unwrap();
    let alerts = hook.wait_for(1, LIMIT).unwrap();
    assert_eq!(alerts[0]["status"], "failed");
    assert!(
        alerts[0]["error"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{}",
        alerts[0]
    );
    let metrics = c
        .poll("/metrics", LIMIT, |b| {
            b.contains("llm_quality_last_run_failed{monitor=\"unreachable\"} 1\n")
        })
        .unwrap();
    assert!(!metrics.contains("llm_quality_average_score{"), "{metrics}");
    let api = |q: &str| {
        tokenmeter_testkit::client::get(&format!("{}/api/v1/{q}", c.url()))
            .unwrap()
            .json()
    };
    let quality = api("quality");
    let m = &quality["monitors"][0];
    assert_eq!(
        (&m["runs"], &m["failed_runs"]),
        (&1.into(), &1.into()),
        "{m}"
    );
    assert!(m["failures"][0]["error"]
        .as_str()
        .unwrap()
        .contains("circuit breaker"));
    assert_eq!(m["metrics"], serde_json::json!([]));
    let monitors = api("monitors");
    assert_eq!(monitors["monitors"][0]["status"], "failed");
    let (status, body) =
        tokenmeter_testkit::collector::get(&format!("{}/api/v1/quality?window=soon", c.url()))
            .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("window:"), "{body}");
}
