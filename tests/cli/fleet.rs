//! Several `tokenmeter serve` on one PostgreSQL store (a real server, started in a
//! temporary directory): scheduled runs happen once, the judge cache is shared, a killed
//! collector loses no acknowledged record, a database that goes away gives 503 until it
//! returns, credentials stay off the command line, TLS is verified, retention deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::evaluation::*;
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use tokenmeter_testkit::collector::{get, post, post_header, Collector};
use tokenmeter_testkit::judge::JudgeServer;
use tokenmeter_testkit::postgres::Postgres;

const LIMIT: Duration = Duration::from_secs(60);

fn pg_with(name: &str) -> Postgres {
    let pg = Postgres::start().unwrap();
    pg.create_database(name).unwrap();
    pg
}

/// `tokenmeter serve` on `db` (a database of `pg`, or a URL or file) with `pg`'s password.
fn serve(pg: &Postgres, db: &str, extra: &[&str]) -> Collector {
    let url = if db.contains("://") || db.contains('/') {
        db.to_string()
    } else {
        pg.url(db)
    };
    Collector::start_db(
        Path::new(BIN),
        OsStr::new(&url),
        "127.0.0.1:0",
        extra,
        &[("TOKENMETER_DB_PASSWORD", pg.password())],
    )
    .unwrap()
}

/// `tokenmeter ARGS` with the database's password in the environment; its output.
fn run(pg: &Postgres, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("TOKENMETER_DB_PASSWORD", pg.password())
        .output()
        .unwrap()
}

fn count(pg: &Postgres, db: &str, sql: &str) -> i64 {
    pg.psql(db, sql).unwrap().trim().parse().unwrap()
}

fn records_jsonl(ids: impl IntoIterator<Item = String>, time: &str) -> String {
    ids.into_iter()
        .map(|id| {
            format!(
                "{}\n",
                json!({"id": id, "time": time, "model": "gpt-4o-mini",
                       "question": "What does the plan include?", "answer": "Support."})
            )
        })
        .collect()
}

fn recent() -> String {
    (Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[test]
fn three_collectors_run_each_scheduled_run_once_and_share_the_judge_cache() {
    let judge = JudgeServer::start(scoring_judge).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pg = pg_with("fleet");
    let records: Vec<Value> = (0..3)
        .map(|i| {
            let mut r = record(&format!("r{i}"), "", false);
            r["time"] = recent().into();
            r
        })
        .collect();
    let file = write_records(dir.path(), &records);
    let url = pg.url("fleet");
    let out = run(
        &pg,
        &["records", "import", "--db", &url, file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every other second, in each of three collectors.
    let m = write_monitor(
        dir.path(),
        "shared",
        &judge.url(),
        "",
        "{fluency: {}}",
        "schedule: \"*/2 * * * * *\"\n",
    );
    let monitor = ["--monitor", m.to_str().unwrap()];
    // One of them reads its password from a file instead of the environment.
    let password_file = dir.path().join("pgpass");
    std::fs::write(&password_file, format!("{}\n", pg.password())).unwrap();
    let with_file = Collector::start_db(
        Path::new(BIN),
        OsStr::new(&url),
        "127.0.0.1:0",
        &[
            &monitor[..],
            &["--db-password-file", password_file.to_str().unwrap()],
        ]
        .concat(),
        &[],
    )
    .unwrap();
    let collectors = [
        serve(&pg, "fleet", &monitor),
        serve(&pg, "fleet", &monitor),
        with_file,
    ];
    let start = Instant::now();
    while count(&pg, "fleet", "SELECT count(*) FROM monitor_runs") < 4 {
        assert!(
            start.elapsed() < LIMIT,
            "fewer than 4 runs within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every collector tells the same last run: the one some collector made.
    let last_runs = || -> Vec<Value> {
        collectors
            .iter()
            .map(|c| {
                let (status, body) = get(&format!("{}/api/v1/monitors", c.url())).unwrap();
                assert_eq!(status, 200, "{body}");
                let v: Value = serde_json::from_str(&body).unwrap();
                v["monitors"][0]["last_run"].clone()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = last_runs();
        if seen.iter().all(|r| *r == seen[0]) || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        seen.iter().all(|r| *r == seen[0] && !r.is_null()),
        "{seen:?}"
    );
    let elapsed = start.elapsed().as_secs() as i64;
    drop(collectors);
    let runs = count(
        &pg,
        "fleet",
        "SELECT count(*) FROM monitor_runs WHERE monitor = 'shared'",
    );
    let claims = count(
        &pg,
        "fleet",
        "SELECT count(*) FROM monitor_claims WHERE monitor = 'shared'",
    );
    // One run per claimed time (a collector killed mid-run may leave a claim without one),
    // and no more claims than scheduled times passed: three collectors, one run each.
    assert!(
        runs == claims || runs + 1 == claims,
        "{runs} runs, {claims} claims"
    );
    assert!(claims <= elapsed / 2 + 3, "{claims} claims in {elapsed} s");
    // The cache is the store's: later runs, whichever collector made them, ask nothing;
    // nor does `eval` on the same store.
    assert_eq!(judge.calls(), 3);
    let out = run(
        &pg,
        &[
            "eval",
            "--monitor",
            m.to_str().unwrap(),
            "--db",
            &url,
            "--format",
            "json",
            "--no-alerts",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"], 3, "{report}");
    assert_eq!(judge.calls(), 3);
}

/// Posts batches of 50 records from three clients until `stop`; the batches answered 200.
fn post_batches(url: &str, stop: &AtomicBool, acked: &Mutex<BTreeSet<usize>>, next: &Mutex<usize>) {
    while !stop.load(Ordering::SeqCst) {
        let n = {
            let mut n = next.lock().unwrap();
            *n += 1;
            *n
        };
        let body = records_jsonl((0..50).map(|i| format!("b{n}-{i}")), &recent());
        match post(&format!("{url}/v1/records"), "application/x-ndjson", body) {
            Ok((200, _)) => {
                acked.lock().unwrap().insert(n);
            }
            // The collector is gone: nothing more to send to it.
            _ => return,
        }
    }
}

/// Which batches are stored whole, and whether any is stored in part.
fn stored_batches(ids: Vec<String>) -> (BTreeSet<usize>, Vec<(usize, usize)>) {
    let mut per_batch: BTreeMap<usize, usize> = BTreeMap::new();
    for id in ids {
        let n: usize = id
            .trim_start_matches('b')
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        *per_batch.entry(n).or_default() += 1;
    }
    let whole = per_batch
        .iter()
        .filter(|(_, c)| **c == 50)
        .map(|(n, _)| *n)
        .collect();
    let partial = per_batch.into_iter().filter(|(_, c)| *c != 50).collect();
    (whole, partial)
}

/// Every acknowledged batch is stored whole, and no batch in part.
fn assert_stored_whole(acked: &BTreeSet<usize>, ids: Vec<String>) {
    let (whole, partial) = stored_batches(ids);
    assert!(partial.is_empty(), "batches stored in part: {partial:?}");
    assert!(
        acked.is_subset(&whole),
        "acknowledged but missing: {:?}",
        acked.difference(&whole)
    );
}

fn kill_during_batches(collector: Collector) -> BTreeSet<usize> {
    let url = collector.url().to_string();
    let stop = AtomicBool::new(false);
    let acked = Mutex::new(BTreeSet::new());
    let next = Mutex::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| post_batches(&url, &stop, &acked, &next));
        }
        let start = Instant::now();
        while acked.lock().unwrap().len() < 20 {
            assert!(start.elapsed() < LIMIT, "too few batches acknowledged");
            std::thread::sleep(Duration::from_millis(5));
        }
        // SIGKILL with batches in flight: nothing is flushed or closed cleanly.
        collector.kill().unwrap();
        stop.store(true, Ordering::SeqCst);
    });
    acked.into_inner().unwrap()
}

#[test]
fn a_killed_collector_keeps_every_acknowledged_batch_whole() {
    // PostgreSQL.
    let pg = pg_with("kill");
    let acked = kill_during_batches(serve(&pg, "kill", &[]));
    let ids = pg.psql("kill", "SELECT id FROM records").unwrap();
    assert_stored_whole(&acked, ids.lines().map(str::to_string).collect());
    // SQLite.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let acked = kill_during_batches(Collector::start(Path::new(BIN), &db, &[]).unwrap());
    let out = run(
        &pg,
        &[
            "records",
            "export",
            "--since",
            "P1D",
            "--db",
            db.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_stored_whole(&acked, ids);
}

#[test]
fn ingestion_answers_503_while_the_database_is_away_and_recovers_by_itself() {
    let pg = pg_with("away");
    let c = serve(&pg, "away", &[]);
    let records = |tag: &str| records_jsonl([format!("{tag}-1"), format!("{tag}-2")], &recent());
    let post_records = |body: String| {
        let (status, retry, _) = post_header(
            &format!("{}/v1/records", c.url()),
            "application/x-ndjson",
            body,
            "retry-after",
        )
        .unwrap();
        (status, retry)
    };
    assert_eq!(post_records(records("before")).0, 200);
    pg.stop().unwrap();
    let (status, retry) = post_records(records("during"));
    assert_eq!(status, 503, "the database is away");
    assert_eq!(retry.as_deref(), Some("5"));
    let (status, body) = post(
        &format!("{}/v1/rollups", c.url()),
        "application/json",
        r#"{"id":"vm-1","labels":[],"rows":[]}"#,
    )
    .unwrap();
    assert_eq!(status, 503, "{body}");
    let (status, _) = get(&format!("{}/healthz", c.url())).unwrap();
    assert_eq!(status, 503);
    pg.start_again().unwrap();
    // The same collector, not restarted.
    assert_eq!(post_records(records("after")).0, 200);
    let (status, _) = get(&format!("{}/healthz", c.url())).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        pg.psql(
            "away",
            "SELECT string_agg(id, ',' ORDER BY id) FROM records"
        )
        .unwrap(),
        "after-1,after-2,before-1,before-2"
    );
}

#[test]
fn a_password_on_the_command_line_is_refused_and_tls_is_verified() {
    let pg = Postgres::start_tls().unwrap();
    pg.create_database("tls").unwrap();
    let with_password = pg
        .url("tls")
        .replace("tokenmeter@", &format!("tokenmeter:{}@", pg.password()));
    let out = Command::new(BIN)
        .args([
            "records",
            "export",
            "--since",
            "P1D",
            "--db",
            &with_password,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--db-password-file"), "{err}");
    assert!(
        !err.contains(pg.password()),
        "the password is echoed: {err}"
    );
    let export = |db: &str| run(&pg, &["records", "export", "--since", "P1D", "--db", db]);
    // Plain text is refused by this server; verified TLS works.
    assert_eq!(export(&pg.url("tls")).status.code(), Some(1));
    let ca = pg.ca_file().unwrap().to_str().unwrap().to_string();
    let verified = format!("{}?sslmode=verify-full&sslrootcert={ca}", pg.url("tls"));
    let c = serve(&pg, &verified, &[]);
    let (status, body) = post(
        &format!("{}/v1/records", c.url()),
        "application/x-ndjson",
        records_jsonl(["t1".to_string()], &recent()),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(count(&pg, "tls", "SELECT count(*) FROM records"), 1);
    // Without the server's CA, the public roots do not vouch for it.
    let out = export(&format!("{}?sslmode=require", pg.url("tls")));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn serve_deletes_what_is_older_than_its_retention() {
    let pg = pg_with("old");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.jsonl");
    let old = (Utc::now() - chrono::Duration::days(40)).to_rfc3339_opts(SecondsFormat::Secs, true);
    std::fs::write(
        &file,
        records_jsonl(["old".to_string()], &old) + &records_jsonl(["new".to_string()], &recent()),
    )
    .unwrap();
    let sqlite = dir.path().join("t.db");
    let url = pg.url("old");
    for db in [url.as_str(), sqlite.to_str().unwrap()] {
        let out = run(
            &pg,
            &["records", "import", "--db", db, file.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _c = serve(&pg, db, &["--retain-records", "P30D"]);
        let start = Instant::now();
        loop {
            let out = run(&pg, &["records", "export", "--since", "P60D", "--db", db]);
            let text = String::from_utf8(out.stdout).unwrap();
            if text.lines().count() == 1 {
                assert!(text.contains("\"new\""), "{text}");
                break;
            }
            assert!(
                start.elapsed() < LIMIT,
                "{db}: the old record is still there: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // A finer tier that outlives its coarser one is refused.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--db",
            sqlite.to_str().unwrap(),
            "--retain-minutes",
            "P100D",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--retain-hours: must be at least --retain-minutes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_same_deliveries_to_three_collectors_at_once_are_stored_once() {
    let pg = pg_with("dup");
    let collectors: Vec<Collector> = (0..3).map(|_| serve(&pg, "dup", &[])).collect();
    let row = |minute: i64, team: &str| {
        json!({"minute": minute, "values": [team], "requests": [0, 2, 0, 0, 0, 0],
               "errors": [0, 0, 0, 0, 0, 0], "prompt_tokens": 7, "completion_tokens": 3,
               "total_tokens": 10, "cached_tokens": 0, "reasoning_tokens": 0, "estimated": 0,
               "invalid_usage": 0,
               "duration_ms": {"buckets": [0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "sum": 150, "count": 2},
               "ttft_ms": {"buckets": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "sum": 0, "count": 0},
               "tpot_ms": {"buckets": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "sum": 0, "count": 0}})
    };
    // Ten batches, each sent to all three collectors at once, of the last 90 minutes (older
    // minutes are retention's to delete).
    let now = Utc::now().timestamp();
    let base = now - now.rem_euclid(60) - 90 * 60;
    let batches: Vec<String> = (0..10)
        .map(|b| {
            let rows: Vec<Value> = (0..40)
                .map(|i| {
                    row(
                        base + 60 * ((b * 7 + i) % 90),
                        ["red", "blue"][(i % 2) as usize],
                    )
                })
                .collect();
            json!({"id": format!("vm-{b}"), "labels": ["team"], "rows": rows}).to_string()
        })
        .collect();
    let records = records_jsonl((0..100).map(|i| format!("r{i}")), &recent());
    let answers: Vec<(usize, usize, u64)> = std::thread::scope(|s| {
        let workers: Vec<_> = collectors
            .iter()
            .map(|c| {
                let (batches, records) = (&batches, &records);
                s.spawn(move || {
                    let (status, body) = post(
                        &format!("{}/v1/records", c.url()),
                        "application/x-ndjson",
                        records,
                    )
                    .unwrap();
                    assert_eq!(status, 200, "{body}");
                    let stored = serde_json::from_str::<Value>(&body).unwrap()["stored"]
                        .as_u64()
                        .unwrap();
                    let mut added = 0;
                    let mut duplicate = 0;
                    for b in batches {
                        let (status, body) =
                            post(&format!("{}/v1/rollups", c.url()), "application/json", b)
                                .unwrap();
                        assert_eq!(status, 200, "{body}");
                        match serde_json::from_str::<Value>(&body).unwrap()["duplicate"].as_bool() {
                            Some(false) => added += 1,
                            _ => duplicate += 1,
                        }
                    }
                    (added, duplicate, stored)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(
        answers.iter().map(|a| a.0).sum::<usize>(),
        10,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().map(|a| a.1).sum::<usize>(),
        20,
        "{answers:?}"
    );
    assert_eq!(answers.iter().map(|a| a.2).sum::<u64>(), 100, "{answers:?}");
    assert_eq!(count(&pg, "dup", "SELECT count(*) FROM records"), 100);
    for table in ["rollups_minute", "rollups_hour", "rollups_day"] {
        assert_eq!(
            count(
                &pg,
                "dup",
                &format!("SELECT sum(prompt_tokens) FROM {table}")
            ),
            10 * 40 * 7,
            "{table}"
        );
    }
    // The usage API of any collector tells the same.
    let (status, body) = get(&format!(
        "{}/api/v1/usage?window=P1D&step=P1D&group_by=team",
        collectors[2].url()
    ))
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let usage: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(usage["totals"]["prompt_tokens"], 10 * 40 * 7, "{usage}");
}
