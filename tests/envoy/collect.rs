//! End to end: the real Envoy with the filter sends sampled inference records to the real
//! `tokenmeter serve`, which stores them in SQLite; clients never notice.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{chat, spec};
use serde_json::{json, Value};
use tokenmeter_cli::bootstrap;
use tokenmeter_core::config::Config;
use tokenmeter_core::records::record::Record;
use tokenmeter_testkit::client;
use tokenmeter_testkit::collector::Collector;
use tokenmeter_testkit::envoy::Envoy;
use tokenmeter_testkit::upstream::Upstream;

const BIN: &str = env!("CARGO_BIN_EXE_tokenmeter");

struct Setup {
    envoy: Envoy,
    upstream: Upstream,
    _collector: Option<Collector>,
    db: std::path::PathBuf,
    /// Where the gateway sends records and rollups.
    collector_addr: String,
    _dir: tempfile::TempDir,
}

/// Envoy with `collect` (merged into `config`) pointed at a fresh collector, or at a port
/// where nothing listens when `collector_up` is false.
fn setup(config: &str, collector_up: bool) -> Setup {
    setup_with(config, collector_up, None)
}

/// As [`setup`], the collector needing `ingest_token` on its posts when one is given.
fn setup_with(config: &str, collector_up: bool, ingest_token: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("records.db");
    let upstream = Upstream::start().unwrap();
    let token_file = dir.path().join("ingest-token");
    let mut extra = Vec::new();
    if let Some(token) = ingest_token {
        std::fs::write(&token_file, token).unwrap();
        extra = vec!["--ingest-token-file", token_file.to_str().unwrap()];
    }
    let (collector, addr) = if collector_up {
        let c = Collector::start(Path::new(BIN), &db, &extra).unwrap();
        let addr = c.url().trim_start_matches("http://").to_string();
        (Some(c), addr)
    } else {
        // A port that was free a moment ago: nothing listens there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        (None, addr)
    };
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut s = spec(config, &upstream);
    s.collectors = vec![(host.to_string(), port.parse().unwrap())];
    let envoy = Envoy::start(
        &bootstrap::render(&s, &Config::parse(config.as_bytes()).unwrap()),
        2,
    )
    .unwrap();
    Setup {
        envoy,
        upstream,
        _collector: collector,
        db,
        collector_addr: addr.clone(),
        _dir: dir,
    }
}

fn export(db: &Path) -> Vec<Record> {
    let out = Command::new(BIN)
        .args(["records", "export", "--db"])
        .arg(db)
        .args(["--since", "P1D"])
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
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_for(db: &Path, n: usize) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records = export(db);
        if records.len() >= n || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_sampled_request_arrives_with_question_answer_and_context() {
    let config = r#"{
      "dimensions": [{"name": "team", "value": "{request.header.x-team|none}"}],
      "collect": {"cluster": "tokenmeter_collector", "sample_rate": 1, "context": "system"}
    }"#;
    let s = setup(config, true);
    let post = |id: &str, path: &str, body: &Value| {
        let r = client::post(
            &s.envoy.url(path),
            &[("x-request-id", id), ("x-team", "blue")],
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{id}");
        r
    };
    // Keys of the families the README lists never leave the gateway.
    let mut rag = chat(
        "gpt-4o",
        "What does plan A cost? Keys: ASIAY34FZKBOKMUTVV7A, github_pat_11ABCDEFG0123456789abc_0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijKLMNOPQR.",
    );
    rag["messages"][0]["content"] =
        json!("Context: plan A costs 5 EUR a month. Support: help@example.com");
    let r1 = post("rec-json", "/v1/chat/completions", &rag);
    let mut streamed = chat("gpt-4o-mini", "Stream me an answer.");
    streamed["stream"] = json!(true);
    let r2 = post("rec-stream", "/v1/chat/completions", &streamed);
    post(
        "rec-responses",
        "/v1/responses",
        &json!({"model": "gpt-4.1", "instructions": "Answer briefly.", "input": "Why meter tokens?", "stream": true}),
    );
    post(
        "rec-completions",
        "/v1/completions",
        &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time"}),
    );
    post(
        "rec-embeddings",
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": "not a question"}),
    );
    let records = wait_for(&s.db, 4);
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("{id} missing: {records:?}"))
    };
    assert_eq!(
        records.len(),
        4,
        "embeddings are not collected: {records:?}"
    );

    let json_rec = by_id("rec-json");
    assert_eq!(
        json_rec.text("question"),
        Some("What does plan A cost? Keys: [API_KEY], [API_KEY].")
    );
    assert_eq!(
        json_rec.text("context"),
        Some("Context: plan A costs 5 EUR a month. Support: [EMAIL]")
    );
    assert_eq!(
        json_rec.text("answer"),
        r1.json()["choices"][0]["message"]["content"].as_str()
    );
    assert_eq!(json_rec.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(json_rec.operation.as_deref(), Some("chat.completions"));
    assert_eq!(json_rec.route.as_deref(), Some("llm-default"));
    assert_eq!(
        json_rec.dimensions.get("team").map(String::as_str),
        Some("blue")
    );
    assert_eq!(json_rec.status, Some(200));
    let usage = json_rec.usage.as_ref().unwrap();
    assert_eq!(
        usage.total,
        r1.json()["usage"]["total_tokens"].as_u64().unwrap()
    );
    assert_eq!(usage.source.as_deref(), Some("reported"));
    assert!(json_rec.time.is_some() && json_rec.duration_ms.is_some());

    // The streamed answer is assembled from its deltas.
    let text: String = String::from_utf8_lossy(&r2.body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let stream_rec = by_id("rec-stream");
    assert_eq!(stream_rec.text("answer"), Some(text.as_str()));
    assert_eq!(stream_rec.text("question"), Some("Stream me an answer."));
    assert!(stream_rec.ttft_ms.is_some());
    assert_eq!(
        stream_rec.usage.as_ref().unwrap().source.as_deref(),
        Some("reported")
    );

    let resp = by_id("rec-responses");
    assert_eq!(resp.text("question"), Some("Why meter tokens?"));
    assert_eq!(resp.text("context"), Some("Answer briefly."));
    assert!(resp
        .text("answer")
        .is_some_and(|a| a.contains("Why meter tokens?")));
    assert_eq!(
        by_id("rec-completions").text("question"),
        Some("Once upon a time")
    );

    let m = s.envoy.prometheus().unwrap();
    assert_eq!(
        m.sum("llm_records_sent_total", &[]),
        4.0,
        "{}",
        m.lines_with_prefix("llm_rec").join("\n")
    );
    assert!(m.find("llm_records_dropped_total", &[]).is_empty());
}

fn sampled_ids(rate_config: &str) -> BTreeSet<String> {
    let s = setup(rate_config, true);
    let url = s.envoy.url("/v1/chat/completions");
    let body = chat("gpt-4o-mini", "sample me").to_string();
    std::thread::scope(|sc| {
        for t in 0..4 {
            let (url, body) = (&url, &body);
            sc.spawn(move || {
                for i in (t..2000).step_by(4) {
                    let id = format!("sample-{i}");
                    let r = client::post(url, &[("x-request-id", &id)], body.as_bytes()).unwrap();
                    assert_eq!(r.status, 200);
                }
            });
        }
    });
    // Records arrive shortly after their responses; wait until the count settles.
    let mut last = usize::MAX;
    let mut records = Vec::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        records = export(&s.db);
        if records.len() == last {
            break;
        }
        last = records.len();
    }
    let m = s.envoy.prometheus().unwrap();
    assert_eq!(m.sum("llm_records_sent_total", &[]), records.len() as f64);
    let _ = &s.upstream;
    records.into_iter().map(|r| r.id).collect()
}

#[test]
fn a_tenth_is_sampled_and_the_same_tenth_on_a_rerun() {
    let config = r#"{"collect": {"cluster": "tokenmeter_collector", "sample_rate": 0.1}}"#;
    let first = sampled_ids(config);
    // Binomial(2000, 0.1): mean 200, standard deviation 13.4; four deviations either side.
    assert!(
        (146..=254).contains(&first.len()),
        "{} sampled",
        first.len()
    );
    let expected: BTreeSet<String> = (0..2000)
        .map(|i| format!("sample-{i}"))
        .filter(|id| tokenmeter_core::records::collect::sampled(id, 0.1))
        .collect();
    assert_eq!(
        first, expected,
        "the decision is the documented hash of the request id"
    );
    let second = sampled_ids(config);
    assert_eq!(first, second, "a rerun samples the same requests");
}

#[test]
fn a_collector_that_is_down_changes_nothing_for_clients() {
    let config =
        r#"{"collect": {"cluster": "tokenmeter_collector", "sample_rate": 1, "timeout_ms": 500}}"#;
    let s = setup(config, false);
    for i in 0..20 {
        let body = chat("gpt-4o", &format!("request {i}")).to_string();
        let via = client::post(&s.envoy.url("/v1/chat/completions"), &[], body.as_bytes()).unwrap();
        let direct = client::post(
            &format!("http://{}/v1/chat/completions", s.upstream.addr),
            &[],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(via.status, 200);
        assert_eq!(via.body, direct.body);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = s.envoy.prometheus().unwrap();
        if m.sum("llm_records_dropped_total", &[]) >= 20.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Envoy answers a callout to an unreachable cluster with its own 503.
    assert_eq!(
        m.sum(
            "llm_records_dropped_total",
            &[("reason", "collector_error")]
        ),
        20.0,
        "{}",
        m.lines_with_prefix("llm_rec").join("\n")
    );
    assert_eq!(m.sum("llm_requests_total", &[]), 20.0);
    assert!(m.find("llm_records_sent_total", &[]).is_empty());
}

/// Sums of the stored rollups for one team: requests by status class (2xx, 4xx), prompt,
/// completion and total tokens, and the duration histogram's count. Each tier and the team's
/// marginals hold the same sums: all are read in one transaction (one snapshot, while the
/// collector may be adding a batch) and must agree.
fn rollup_totals(db: &Path, team: &str) -> [f64; 6] {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = conn.transaction().unwrap();
    let sums = "coalesce(sum(requests_2xx), 0), coalesce(sum(requests_4xx), 0),
        coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
        coalesce(sum(total_tokens), 0), coalesce(sum(duration_ms_count), 0)";
    let read = |sql: String, value: String| -> [f64; 6] {
        tx.query_row(&sql, [value], |r| {
            let f = |i: usize| r.get::<_, i64>(i).map(|v| v as f64);
            Ok([f(0)?, f(1)?, f(2)?, f(3)?, f(4)?, f(5)?])
        })
        .unwrap()
    };
    let series = json!({ "team": team }).to_string();
    let mut all: Vec<(&str, [f64; 6])> = ["rollups_minute", "rollups_hour", "rollups_day"]
        .into_iter()
        .map(|t| {
            let sql = format!(
                "SELECT {sums} FROM {t} r JOIN series s ON s.id = r.series_id WHERE s.labels = ?1"
            );
            (t, read(sql, series.clone()))
        })
        .collect();
    for t in ["marginals_hour", "marginals_day"] {
        let sql = format!("SELECT {sums} FROM {t} WHERE label = 'team' AND value = ?1");
        all.push((t, read(sql, team.to_string())));
    }
    assert!(
        all.iter().all(|(_, t)| *t == all[0].1),
        "the tiers differ for team {team}: {all:?}"
    );
    all[0].1
}

#[test]
fn rollups_in_the_store_equal_the_counters() {
    let config = r#"{
      "dimensions": [{"name": "team", "value": "{request.header.x-team|none}"}],
      "collect": {"cluster": "tokenmeter_collector", "sample_rate": 0, "rollup_interval_ms": 1000,
                  "token": "ingest-token-0123456789"}
    }"#;
    // The collector needs the ingestion token, which the filter sends.
    let s = setup_with(config, true, Some("ingest-token-0123456789"));
    let mut streamed = chat("gpt-4o-mini", "Stream me an answer.");
    streamed["stream"] = json!(true);
    // Two workers, so two VMs each sending their own batches; JSON, injected streams,
    // errors and estimates.
    for i in 0..30 {
        let team = ["red", "blue", "green"][i % 3];
        let (body, extra): (Value, &[(&str, &str)]) = match i % 5 {
            0 => (streamed.clone(), &[]),
            1 => (
                chat("gpt-4o", "Rate limited?"),
                &[("x-upstream-status", "429")],
            ),
            2 => (streamed.clone(), &[("x-upstream-usage", "none")]),
            _ => (chat("gpt-4o", &format!("Question {i}")), &[]),
        };
        let mut headers = vec![("x-team", team)];
        headers.extend_from_slice(extra);
        let r = client::post(
            &s.envoy.url("/v1/chat/completions"),
            &headers,
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert!(r.status == 200 || r.status == 429, "{}", r.status);
    }
    let counters = |m: &tokenmeter_testkit::prom::Exposition, team: &str| -> [f64; 6] {
        let t = [("team", team)];
        [
            m.sum(
                "llm_requests_total",
                &[("team", team), ("status_class", "2xx")],
            ),
            m.sum(
                "llm_requests_total",
                &[("team", team), ("status_class", "4xx")],
            ),
            m.sum("llm_prompt_tokens_total", &t),
            m.sum("llm_completion_tokens_total", &t),
            m.sum("llm_tokens_total", &t),
            m.sum("llm_request_duration_ms_count", &t),
        ]
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (m, stored) = loop {
        let m = s.envoy.prometheus().unwrap();
        let stored: Vec<[f64; 6]> = ["red", "blue", "green"]
            .iter()
            .map(|t| rollup_totals(&s.db, t))
            .collect();
        let want: Vec<[f64; 6]> = ["red", "blue", "green"]
            .iter()
            .map(|t| counters(&m, t))
            .collect();
        if (stored == want
            && m.sum("llm_requests_total", &[]) == 30.0
            && m.sum("llm_rollup_batches_sent_total", &[]) >= 2.0)
            || Instant::now() > deadline
        {
            break (m, stored);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (team, got) in ["red", "blue", "green"].iter().zip(&stored) {
        assert_eq!(
            *got,
            counters(&m, team),
            "{team}: the store's rollups (2xx, 4xx, prompt, completion, total, durations) against Envoy's counters\n{}",
            m.lines_with_prefix("llm_").join("\n")
        );
        assert!(got[2] > 0.0 && got[1] > 0.0, "{team}: {got:?}");
    }
    assert_eq!(stored.iter().map(|t| t[0] + t[1]).sum::<f64>(), 30.0);
    assert!(m.sum("llm_rollup_batches_sent_total", &[]) >= 2.0);
    // The read API gives the same totals, per team and in all.
    let collector = s._collector.as_ref().unwrap();
    let (status, body) = tokenmeter_testkit::collector::get(&format!(
        "{}/api/v1/usage?window=PT1H&step=PT5M&group_by=team",
        collector.url()
    ))
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let usage: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(usage["totals"]["requests"], 30, "{usage}");
    assert_eq!(
        usage["totals"]["total_tokens"].as_f64().unwrap(),
        m.sum("llm_tokens_total", &[])
    );
    for g in usage["groups"].as_array().unwrap() {
        let team = g["group"].as_str().unwrap();
        assert_eq!(
            g["totals"]["prompt_tokens"].as_f64().unwrap(),
            m.sum("llm_prompt_tokens_total", &[("team", team)]),
            "{team}"
        );
        assert_eq!(
            g["totals"]["errors"].as_f64().unwrap(),
            m.sum("llm_errors_total", &[("team", team)]),
            "{team}"
        );
    }
    // Operations: requests, errors by type and the duration histogram, against the counters.
    let (status, body) = tokenmeter_testkit::collector::get(&format!(
        "{}/api/v1/operations?window=PT1H&group_by=team",
        collector.url()
    ))
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let ops: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ops["totals"]["requests"], 30, "{ops}");
    assert_eq!(
        ops["totals"]["errors"]["rate_limited"].as_f64().unwrap(),
        m.sum("llm_errors_total", &[("error_type", "rate_limited")])
    );
    assert_eq!(
        ops["totals"]["duration_ms"]["count"].as_f64().unwrap(),
        m.sum("llm_request_duration_ms_count", &[])
    );
    let rate = ops["totals"]["error_rate"].as_f64().unwrap();
    assert!((rate - 6.0 / 30.0).abs() < 1e-9, "{rate}");
    for g in ops["groups"].as_array().unwrap() {
        let team = g["group"].as_str().unwrap();
        assert_eq!(
            g["totals"]["requests"].as_f64().unwrap(),
            m.sum("llm_requests_total", &[("team", team)]),
            "{team}"
        );
        assert!(g["totals"]["duration_ms"]["p50"].as_f64().is_some(), "{g}");
    }
    // One team's scope: the same as its counters.
    let (status, body) = tokenmeter_testkit::collector::get(&format!(
        "{}/api/v1/usage?window=PT1H&scope=team:blue",
        collector.url()
    ))
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let blue: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        blue["totals"]["total_tokens"].as_f64().unwrap(),
        m.sum("llm_tokens_total", &[("team", "blue")])
    );
    assert_eq!(
        blue["totals"]["requests"].as_f64().unwrap(),
        m.sum("llm_requests_total", &[("team", "blue")])
    );
    let (status, body) =
        tokenmeter_testkit::collector::get(&format!("{}/api/v1/usage?step=PT10S", collector.url()))
            .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("step:"), "{body}");
    assert!(m.find("llm_rollup_requests_dropped_total", &[]).is_empty());
}

#[test]
fn rollups_wait_for_a_collector_that_is_down_and_arrive_once() {
    let config = r#"{
      "dimensions": [{"name": "team", "value": "{request.header.x-team|none}"}],
      "collect": {"cluster": "tokenmeter_collector", "sample_rate": 0, "rollup_interval_ms": 1000,
                  "timeout_ms": 500}
    }"#;
    let s = setup(config, false);
    for i in 0..12 {
        let team = ["red", "blue"][i % 2];
        let body = chat("gpt-4o", &format!("request {i}")).to_string();
        let r = client::post(
            &s.envoy.url("/v1/chat/completions"),
            &[("x-team", team)],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200);
    }
    // Deliveries fail (Envoy answers 503 for the unreachable cluster) and are kept.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s
        .envoy
        .prometheus()
        .unwrap()
        .sum("llm_rollup_batches_failed_total", &[])
        < 3.0
    {
        assert!(Instant::now() < deadline, "no failed delivery counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The collector comes back where the gateway expects it: every request arrives once.
    let _collector = Collector::start_on(Path::new(BIN), &s.db, &s.collector_addr, &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = s.envoy.prometheus().unwrap();
        // Stored, and the answer back at the gateway (its sent counter follows the commit).
        let done = m.sum("llm_rollup_batches_sent_total", &[]) >= 1.0
            && ["red", "blue"].iter().all(|t| {
                let c = rollup_totals(&s.db, t);
                c[0] == m.sum("llm_requests_total", &[("team", t)])
                    && c[2] == m.sum("llm_prompt_tokens_total", &[("team", t)])
            });
        if done || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for team in ["red", "blue"] {
        let c = rollup_totals(&s.db, team);
        assert_eq!(
            (c[0], c[2], c[4]),
            (
                m.sum("llm_requests_total", &[("team", team)]),
                m.sum("llm_prompt_tokens_total", &[("team", team)]),
                m.sum("llm_tokens_total", &[("team", team)]),
            ),
            "{team}: stored rollups against the counters"
        );
        assert_eq!(c[0], 6.0, "{team}");
    }
    assert!(m.sum("llm_rollup_batches_sent_total", &[]) >= 1.0);
    assert!(m.find("llm_rollup_requests_dropped_total", &[]).is_empty());
}
