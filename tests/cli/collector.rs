//! `tokenmeter serve` as a collector: the real binary, a real SQLite file.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tokenmeter_testkit::collector::{get, post, Collector};

const BIN: &str = env!("CARGO_BIN_EXE_tokenmeter");

fn start(db: &Path, extra: &[&str]) -> Collector {
    Collector::start(Path::new(BIN), db, extra).unwrap()
}

fn records_url(c: &Collector) -> String {
    format!("{}/v1/records", c.url())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn export(db: &Path, since: &str) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["records", "export", "--db"])
        .arg(db)
        .args(["--since", since])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(json)
        .collect()
}

#[test]
fn healthz_answers() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&dir.path().join("t.db"), &[]);
    let (status, body) = get(&format!("{}/healthz", c.url())).unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&body)["status"], "ok");
}

#[test]
fn accepts_one_json_record_and_ndjson_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let c = start(&db, &[]);
    let one = r#"{"id":"a","time":"2020-11-26T12:00:00+02:00","model":"gpt-4o","question":"q","answer":"a"}"#;
    let (status, body) = post(&records_url(&c), "application/json", one).unwrap();
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({"stored": 1, "duplicates": 0}))
    );

    let before = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let batch = "{\"id\":\"b\",\"time\":\"2020-11-26T09:00:00Z\"}\n{\"id\":\"c\"}\n";
    let (status, body) = post(&records_url(&c), "application/x-ndjson", batch).unwrap();
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({"stored": 2, "duplicates": 0}))
    );

    // Either shape under either content type.
    let (status, _) = post(
        &records_url(&c),
        "application/json",
        "{\"id\":\"d\"}\n{\"id\":\"e\"}",
    )
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = post(
        &records_url(&c),
        "application/x-ndjson",
        "{\n \"id\": \"f\"\n}",
    )
    .unwrap();
    assert_eq!(status, 200);

    let all = export(&db, "2020-01-01T00:00:00Z");
    let ids: Vec<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    // Ordered by time: b (09:00Z), a (10:00Z normalised), then those received now.
    assert_eq!(&ids[..2], ["b", "a"]);
    assert_eq!(ids.len(), 6);
    assert_eq!(all[1]["time"], "2020-11-26T10:00:00Z");
    assert_eq!(all[1]["question"], "q");
    // Records without a time got the time they were received.
    for r in &all[2..] {
        let t = chrono::DateTime::parse_from_rfc3339(r["time"].as_str().unwrap()).unwrap();
        assert!(
            t >= chrono::DateTime::parse_from_rfc3339(&before).unwrap(),
            "{t} {before}"
        );
    }
}

#[test]
fn storing_an_id_twice_keeps_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let c = start(&db, &[]);
    let first = r#"{"id":"same","time":"2026-11-26T10:00:00Z","answer":"first"}"#;
    let second = r#"{"id":"same","time":"2026-11-26T11:00:00Z","answer":"second"}"#;
    let (_, body) = post(&records_url(&c), "application/json", first).unwrap();
    assert_eq!(json(&body)["stored"], 1);
    let (status, body) = post(
        &records_url(&c),
        "application/x-ndjson",
        format!("{second}\n{first}\n"),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!({"stored": 0, "duplicates": 2})
    );
    let all = export(&db, "2026-01-01T00:00:00Z");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["answer"], "first");
}

#[test]
fn bad_input_is_refused_whole_with_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let c = start(&db, &[]);
    let cases = [
        (
            "{\"id\":\"ok1\"}\n{\"id\":\"ok2\",\"status\":\"fine\"}\n",
            "line 2: status: ",
        ),
        (
            "{\"id\":\"ok1\"}\n{\"question\":\"no id\"}",
            "line 2: missing field `id`",
        ),
        (
            "{\"id\":\"ok1\"}\n{\"id\":\"x\",\"time\":\"last tuesday\"}",
            "line 2: time: \"last tuesday\" is not an RFC 3339 time",
        ),
        (
            "{\"id\":\"ok1\"}\nnot json at all",
            "line 2: is not a JSON record",
        ),
        ("", "body: is empty"),
    ];
    for (body, reason) in cases {
        let (status, answer) = post(&records_url(&c), "application/x-ndjson", body).unwrap();
        assert_eq!(status, 400, "{answer}");
        let error = json(&answer)["error"].as_str().unwrap().to_string();
        assert!(
            error.starts_with(reason),
            "{error:?} should start with {reason:?}"
        );
    }
    // The valid first lines of the refused batches were not stored.
    assert!(export(&db, "P3650D").is_empty());
}

#[test]
fn bodies_over_the_limit_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let c = start(&db, &["--max-body-bytes", "2048"]);
    let big = format!("{{\"id\":\"big\",\"answer\":\"{}\"}}", "x".repeat(4096));
    let (status, body) = post(&records_url(&c), "application/json", big).unwrap();
    assert_eq!(status, 413);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("--max-body-bytes"));
    let small = "{\"id\":\"small\"}";
    assert_eq!(
        post(&records_url(&c), "application/json", small).unwrap().0,
        200
    );
}

#[test]
fn accepted_records_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let c = start(&db, &[]);
    let batch: String = (0..200)
        .map(|i| {
            format!(
                "{{\"id\":\"r{i}\",\"time\":\"2026-11-26T10:{:02}:00Z\"}}\n",
                i % 60
            )
        })
        .collect();
    let (status, body) = post(&records_url(&c), "application/x-ndjson", batch).unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&body)["stored"], 200);
    c.kill().unwrap();

    assert_eq!(export(&db, "2026-11-26T00:00:00Z").len(), 200);
    // And the store is still usable by a new server.
    let c = start(&db, &[]);
    let (_, body) = post(&records_url(&c), "application/json", "{\"id\":\"r0\"}").unwrap();
    assert_eq!(
        json(&body),
        serde_json::json!({"stored": 0, "duplicates": 1})
    );
}

#[test]
fn serve_refuses_a_bad_namespace_and_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--namespace",
            "Bad-NS",
            "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--namespace"));

    let monitor = dir.path().join("m.yaml");
    std::fs::write(&monitor, "name: m\njudge: {url: 'http://127.0.0.1:9/v1', model: j}\nmetrics: {fluency: {}}\nschedule: sometimes\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .arg("--monitor")
        .arg(&monitor)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid monitor definition: schedule:"),
        "{stderr}"
    );
}

#[test]
fn rollup_batches_are_added_once_and_bad_ones_refused() {
    use tokenmeter_core::exchange::settlement::Settlement;
    use tokenmeter_core::series::rollup::Rollups;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let c = start(&db, &[]);
    let url = format!("{}/v1/rollups", c.url());
    let mut r = Rollups::new("vm-1".into(), vec!["team".into()], 10, 10);
    let s = Settlement {
        labels: vec!["blue".into()],
        status: Some(200),
        duration_ms: 120,
        ..Settlement::default()
    };
    r.record(1_767_225_600_000, &s);
    r.record(1_767_225_601_000, &s);
    r.seal();
    let batch = r.next().unwrap().to_json();
    let (status, body) = post(&url, "application/json", &batch).unwrap();
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({"rows": 1, "duplicate": false}))
    );
    // A retry of a delivery whose answer was lost: accepted, added nothing.
    let (status, body) = post(&url, "application/json", &batch).unwrap();
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({"rows": 1, "duplicate": true}))
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    // The same row in every tier, under its bucket: the minute, its hour, its day.
    for (table, bucket) in [
        ("rollups_minute", 1767225600),
        ("rollups_hour", 1767225600),
        ("rollups_day", 1767225600),
    ] {
        let (requests, at, series): (i64, i64, String) = conn
            .query_row(
                &format!("SELECT r.requests_2xx, r.bucket, s.labels FROM {table} r JOIN series s ON s.id = r.series_id"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (requests, at, series.as_str()),
            (2, bucket, r#"{"team":"blue"}"#),
            "{table}"
        );
    }
    // Refused whole, naming the field.
    let bad = batch.replace("\"minute\":1767225600", "\"minute\":1767225601");
    let (status, body) = post(&url, "application/json", &bad).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("rows[0].minute"),
        "{body}"
    );
    let (status, _) = post(&url, "application/json", "not json").unwrap();
    assert_eq!(status, 400);
}

#[test]
fn reads_need_the_token_and_no_token_means_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    // Beyond loopback without a token: refused, naming the flag to change.
    let out = Command::new(BIN)
        .args(["serve", "--db"])
        .arg(&db)
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--listen") && err.contains("--token-file"),
        "{err}"
    );
    // A token too short is refused too.
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--db"])
        .arg(&db)
        .arg("--token-file")
        .arg(&short)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));
    // With a token, on every interface: reads need it, ingestion and health do not.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let c = Collector::start_on(
        Path::new(BIN),
        &db,
        "0.0.0.0:0",
        &["--token-file", token_file.to_str().unwrap()],
    )
    .unwrap();
    let usage = format!("{}/api/v1/usage", c.url());
    let (status, body) = get(&usage).unwrap();
    assert_eq!(status, 401, "{body}");
    let reply = tokenmeter_testkit::client::get_with(
        &usage,
        &[("authorization", "Bearer s3cret-token-0123456789")],
    )
    .unwrap();
    assert_eq!(reply.status, 200);
    let wrong = tokenmeter_testkit::client::get_with(
        &usage,
        &[("authorization", "Bearer s3cret-token-0123456780")],
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    let (status, _) = post(&records_url(&c), "application/json", r#"{"id":"a"}"#).unwrap();
    assert_eq!(status, 200);
    assert_eq!(get(&format!("{}/healthz", c.url())).unwrap().0, 200);
    c.kill().unwrap();

    // An ingestion token: record and rollup posts need it, and the read token is not it.
    let ingest_file = dir.path().join("ingest");
    std::fs::write(&ingest_file, "ingest-token-0123456789\n").unwrap();
    let c = start(
        &db,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--ingest-token-file",
            ingest_file.to_str().unwrap(),
        ],
    );
    let post_with = |path: &str, token: &str| {
        tokenmeter_testkit::client::post(
            &format!("{}{path}", c.url()),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {token}")),
            ],
            br#"{"id":"b"}"#,
        )
        .unwrap()
    };
    let refused = post_with("/v1/records", "s3cret-token-0123456789");
    assert_eq!(refused.status, 401);
    assert!(
        refused.text().contains("collect.token"),
        "{}",
        refused.text()
    );
    assert_eq!(post_with("/v1/rollups", "nope").status, 401);
    assert_eq!(
        post_with("/v1/records", "ingest-token-0123456789").status,
        200
    );
    let read = tokenmeter_testkit::client::get_with(
        &format!("{}/api/v1/records/b", c.url()),
        &[("authorization", "Bearer ingest-token-0123456789")],
    )
    .unwrap();
    assert_eq!(read.status, 401, "the ingestion token does not read");
}

#[test]
fn records_are_browsed_by_window_filter_and_page_and_one_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let c = start(&db, &[]);
    let mut batch = String::new();
    for i in 0..7 {
        let model = if i % 2 == 0 { "gpt-4o" } else { "gpt-4o-mini" };
        batch.push_str(&format!(
            "{{\"id\":\"r{i}\",\"time\":\"2026-12-01T10:0{i}:00Z\",\"model\":\"{model}\",\"question\":\"<script>alert({i})</script>\",\"answer\":\"<img src=x onerror=alert(1)>\"}}\n"
        ));
    }
    let (status, body) = post(&records_url(&c), "application/x-ndjson", &batch).unwrap();
    assert_eq!(status, 200, "{body}");
    let api = |q: &str| {
        let (status, body) = get(&format!("{}/api/v1/records{q}", c.url())).unwrap();
        (status, json(&body))
    };
    let window = "from=2026-12-01T10:00:00Z&to=2026-12-01T11:00:00Z";
    let (status, page) = api(&format!("?{window}&model=gpt-4o&limit=2"));
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (page["total"].as_i64(), page["limit"].as_i64()),
        (Some(4), Some(2))
    );
    let ids: Vec<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["record"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r6", "r4"], "newest first");
    let (_, next) = api(&format!("?{window}&model=gpt-4o&limit=2&offset=2"));
    let ids: Vec<&str> = next["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["record"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r2", "r0"]);
    // One record: its text exactly as stored (the console escapes it), no scores yet.
    let reply = tokenmeter_testkit::client::get(&format!("{}/api/v1/records/r3", c.url())).unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
    let one = json(&String::from_utf8(reply.body).unwrap());
    assert_eq!(one["record"]["question"], "<script>alert(3)</script>");
    assert_eq!(one["scores"], serde_json::json!([]));
    let (status, body) = get(&format!("{}/api/v1/records/nope", c.url())).unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, body) = api("?limit=1000");
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("limit:"),
        "{body}"
    );
}

/// A GET written by hand, with the given `Host`.
fn get_as_host(c: &Collector, path: &str, host: &str) -> tokenmeter_testkit::client::Reply {
    use std::io::{Read, Write};
    let addr = c.url().trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).unwrap();
    tokenmeter_testkit::client::parse_response(&raw).unwrap()
}

#[test]
fn browsers_elsewhere_can_neither_read_nor_post() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&dir.path().join("t.db"), &[]);
    // A page that rebinds its own name to 127.0.0.1 reaches the port under that name.
    let port = c.url().rsplit(':').next().unwrap().to_string();
    let rebound = get_as_host(&c, "/api/v1/usage", &format!("evil.example:{port}"));
    assert_eq!(rebound.status, 403, "{}", rebound.text());
    assert!(rebound.text().contains("--token-file"));
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "[::1]".into(),
    ] {
        assert_eq!(
            get_as_host(&c, "/api/v1/usage", &host).status,
            200,
            "{host}"
        );
    }
    // A cross-site form or text/plain post needs no permission from the browser: refused.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let (status, body) = post(&records_url(&c), content_type, r#"{"id":"x"}"#).unwrap();
        assert_eq!(status, 415, "{content_type}: {body}");
    }
    let (status, _) = post(
        &records_url(&c),
        "application/json; charset=utf-8",
        r#"{"id":"x"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    // A window too long to be a time is a bad parameter, not an overflow.
    let (status, body) = get(&format!("{}/api/v1/usage?window=P999999999D", c.url())).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("window"), "{body}");
}
