//! `tokenmeter records import` and `export`.

use std::process::Command;

use assert_cmd::Command as Cmd;
use chrono::{Duration, SecondsFormat, Utc};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tokenmeter");

fn ago(d: Duration) -> String {
    (Utc::now() - d).to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[test]
fn import_then_export_round_trips_within_since() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let file = dir.path().join("in.jsonl");
    let lines = [
        format!(
            r#"{{"id":"old","time":"{}","question":"q0"}}"#,
            ago(Duration::days(10))
        ),
        format!(
            r#"{{"id":"mid","time":"{}","question":"q1","usage":{{"prompt":3,"completion":4,"total":7}}}}"#,
            ago(Duration::days(3))
        ),
        format!(
            r#"{{"id":"new","time":"{}","question":"q2","app":"x"}}"#,
            ago(Duration::hours(1))
        ),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    Cmd::new(BIN)
        .args(["records", "import", "--db"])
        .arg(&db)
        .arg(&file)
        .assert()
        .success()
        .stdout(predicates::str::contains("3 new, 0 duplicates"));

    let out = Command::new(BIN)
        .args(["records", "export", "--since", "P7D", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let got: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = got.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["mid", "new"]);
    let mid: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(got[0], mid);
    assert_eq!(got[1]["app"], "x");

    // --until bounds the end; re-importing stores nothing new.
    let out = Command::new(BIN)
        .args([
            "records", "export", "--since", "P30D", "--until", "P1D", "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    Cmd::new(BIN)
        .args(["records", "import", "--db"])
        .arg(&db)
        .arg(&file)
        .assert()
        .success()
        .stdout(predicates::str::contains("0 new, 3 duplicates"));
}

#[test]
fn import_reads_stdin_and_refuses_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    Cmd::new(BIN)
        .args(["records", "import", "--db"])
        .arg(&db)
        .arg("-")
        .write_stdin("{\"id\":\"a\"}\n{\"id\":\"b\"}\n")
        .assert()
        .success()
        .stdout(predicates::str::contains("2 new"));
    Cmd::new(BIN)
        .args(["records", "import", "--db"])
        .arg(&db)
        .arg("-")
        .write_stdin("{\"id\":\"c\"}\n{\"id\":\"d\",\"duration_ms\":\"slow\"}\n")
        .assert()
        .code(1)
        .stderr(predicates::str::contains("line 2: duration_ms:"));
    Cmd::new(BIN)
        .args(["records", "export", "--since", "banana", "--db"])
        .arg(&db)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("--since: \"banana\""));
}
