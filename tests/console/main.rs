//! The console in a real browser after real traffic through Envoy: every tab's numbers read
//! from the page and checked against the read API and Envoy's own counters; the window
//! picker, the scope selector, a record's trace, collected markup shown as text, and the
//! token prompt. Screenshots of every tab are kept (see `Browser::shots`).
// Tests may panic: a failed assertion is how they report.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod browser;

use std::path::Path;
use std::time::Duration;

use browser::Browser;
use serde_json::{json, Value};
use tokenmeter_testkit::collector::Collector;
use tokenmeter_testkit::demo::{self, Demo};
use tokenmeter_testkit::{client, envoy, prom::Exposition};

const BIN: &str = env!("CARGO_BIN_EXE_tokenmeter");

/// A question that would run script if the console ever put record text in as markup.
const XSS: &str =
    "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\"> What is 2+2?";

/// A figure as the page shows it: `1,234`, `9.1%` (as a ratio), `362.5 ms`, `4.38`.
fn number(text: &str) -> f64 {
    let t = text.trim().replace(',', "");
    if let Some(p) = t.strip_suffix('%') {
        return p.parse::<f64>().unwrap_or_else(|_| panic!("{text:?}")) / 100.0;
    }
    t.trim_end_matches(" ms")
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a number"))
}

/// The page's figure equals `want` to the precision it is shown with.
fn shows(text: &str, want: f64, what: &str) {
    let got = number(text);
    let digits = text
        .trim()
        .trim_end_matches(['%', ' ', 'm', 's'])
        .split_once('.')
        .map_or(0, |(_, d)| d.len()) as i32;
    let scale = if text.trim().ends_with('%') {
        100.0
    } else {
        1.0
    };
    let tolerance = 0.5 * 10f64.powi(-digits) / scale + 1e-12;
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: the page shows {text:?}, expected {want}"
    );
}

fn api(d: &Demo, path: &str) -> Value {
    let r = client::get(&format!("{}/api/v1/{path}", d.collector.url())).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

fn sum(m: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    m.sum(&format!("llm_{family}"), labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tab_shows_what_envoy_counted_and_the_monitor_found() {
    let dir = tempfile::tempdir().unwrap();
    let d = Demo::start(
        dir.path(),
        &envoy::envoy_bin(),
        &envoy::wasm_path(),
        Path::new(BIN),
        &envoy::repo_root().join("examples/filter-config.json"),
    )
    .unwrap();
    let mut traffic = demo::traffic();
    traffic.push((
        "/v1/chat/completions",
        vec![("x-team", "red")],
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": XSS}]}),
    ));
    for (path, headers, body) in &traffic {
        client::post(&d.envoy.url(path), headers, body.to_string().as_bytes()).unwrap();
    }
    let m = d.wait_for_store(Duration::from_secs(30)).unwrap();
    d.run_monitor().unwrap();
    let requests = sum(&m, "requests_total", &[]);
    assert_eq!(requests, traffic.len() as f64);

    let b = Browser::start().await;
    let base = format!("{}/", d.collector.url());

    // Overview: the counters of all traffic.
    b.open(&format!("{base}#/overview?window=P1D")).await;
    shows(&b.text("#ov-requests").await, requests, "requests");
    shows(
        &b.text("#ov-total-tokens").await,
        sum(&m, "tokens_total", &[]),
        "total tokens",
    );
    shows(
        &b.text("#ov-prompt-tokens").await,
        sum(&m, "prompt_tokens_total", &[]),
        "prompt tokens",
    );
    shows(
        &b.text("#ov-completion-tokens").await,
        sum(&m, "completion_tokens_total", &[]),
        "completion tokens",
    );
    shows(
        &b.text("#ov-error-rate").await,
        sum(&m, "errors_total", &[]) / requests,
        "error rate",
    );
    let ops = api(&d, "operations?window=P1D");
    shows(
        &b.text("#ov-p95-latency").await,
        ops["totals"]["duration_ms"]["p95"].as_f64().unwrap(),
        "p95 latency",
    );
    let monitors = api(&d, "monitors");
    let status = monitors["monitors"][0]["status"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(b.text("#ov-monitors").await, format!("1 {status}"));
    b.screenshot("overview").await;

    // The window picker: an hour long before the traffic holds none; the last hour all.
    b.select("#window", "custom").await;
    let past = |h: i64| {
        (chrono::Utc::now() - chrono::Duration::hours(h))
            .format("%Y-%m-%dT%H:%M")
            .to_string()
    };
    b.script(&format!(
        "document.getElementById('from').value = '{}'; document.getElementById('to').value = '{}';",
        past(30),
        past(29)
    ))
    .await;
    b.click("#apply").await;
    shows(
        &b.text("#ov-requests").await,
        0.0,
        "requests of a past hour",
    );
    b.select("#window", "PT1H").await;
    shows(
        &b.text("#ov-requests").await,
        requests,
        "requests of the last hour",
    );

    // The scope selector: one model's counters.
    let model = "gpt-4o-mini-2024-07-18";
    b.select("#scope", &format!("model:{model}")).await;
    shows(
        &b.text("#ov-requests").await,
        sum(&m, "requests_total", &[("model", model)]),
        "one model's requests",
    );
    shows(
        &b.text("#ov-total-tokens").await,
        sum(&m, "tokens_total", &[("model", model)]),
        "one model's tokens",
    );
    b.select("#scope", "").await;

    // Token usage: the totals and one row per model.
    b.click("#tabs a[data-tab=usage]").await;
    for (id, family) in [
        ("requests", "requests_total"),
        ("prompt-tokens", "prompt_tokens_total"),
        ("completion-tokens", "completion_tokens_total"),
        ("total-tokens", "tokens_total"),
    ] {
        shows(
            &b.text(&format!("#us-{id}")).await,
            sum(&m, family, &[]),
            id,
        );
    }
    shows(
        &b.text("#us-cached-tokens").await,
        sum(&m, "cached_tokens_total", &[]),
        "cached",
    );
    shows(
        &b.text("#us-reasoning-tokens").await,
        sum(&m, "reasoning_tokens_total", &[]),
        "reasoning",
    );
    let by_model = api(&d, "usage?window=PT1H&group_by=model");
    let groups = by_model["groups"].as_array().unwrap();
    assert_eq!(b.count("#usage-by-model tbody tr").await, groups.len());
    for g in groups {
        let name = g["group"].as_str().unwrap();
        let cells = b
            .text(&format!("#usage-by-model tr[data-model='{name}']"))
            .await;
        let cells: Vec<&str> = cells.split_whitespace().collect();
        for (cell, family) in [
            (1, "requests_total"),
            (2, "prompt_tokens_total"),
            (3, "completion_tokens_total"),
            (4, "tokens_total"),
            (5, "cached_tokens_total"),
            (6, "reasoning_tokens_total"),
        ] {
            shows(
                cells[cell],
                sum(&m, family, &[("model", name)]),
                &format!("{name} {family}"),
            );
        }
    }
    b.screenshot("usage").await;

    // Generation quality: each metric's figures as the API has them.
    b.click("#tabs a[data-tab=quality]").await;
    let quality = api(&d, "quality?window=PT1H");
    let mon = &quality["monitors"][0];
    assert_eq!(mon["monitor"], demo::MONITOR);
    for (card, field) in [
        ("runs", "runs"),
        ("breached", "breached_runs"),
        ("failed", "failed_runs"),
    ] {
        shows(
            &b.text(&format!("#q-{}-{card}", demo::MONITOR)).await,
            mon[field].as_f64().unwrap(),
            field,
        );
    }
    for met in mon["metrics"].as_array().unwrap() {
        let id = |k: &str| {
            format!(
                "#q-{}-{}-{k}",
                demo::MONITOR,
                met["metric"].as_str().unwrap()
            )
        };
        let last = &met["points"][0];
        shows(
            &b.text(&id("average")).await,
            last["average_score"].as_f64().unwrap(),
            "average",
        );
        shows(
            &b.text(&id("pass-rate")).await,
            last["pass_rate"].as_f64().unwrap(),
            "pass rate",
        );
        shows(
            &b.text(&id("violations")).await,
            met["violations"].as_f64().unwrap(),
            "violations",
        );
        assert_eq!(
            b.text(&id("thresholds")).await,
            format!(
                "≥ {} passes; rate ≥ {}, average ≥ {}",
                last["acceptable_score"],
                // As JavaScript writes numbers: 4 and 0.7 (Rust's Display does the same).
                last["pass_rate_threshold"].as_f64().unwrap(),
                last["average_threshold"].as_f64().unwrap()
            )
        );
        let rate = b.text(&id("violation-rate")).await;
        shows(
            rate.split(' ').next().unwrap(),
            met["violation_rate"].as_f64().unwrap(),
            "violation rate",
        );
    }
    let records = api(&d, "records?window=PT1H&limit=500");
    let total = records["total"].as_u64().unwrap();
    assert_eq!(total as f64, sum(&m, "records_sent_total", &[]));
    assert_eq!(b.count("#records tbody tr").await as u64, total.min(20));
    assert!(b
        .text("#records-count")
        .await
        .ends_with(&format!("of {total}")));
    b.screenshot("quality").await;
    // Only the failing records of one metric.
    b.select("#records-metric", "groundedness").await;
    b.select("#records-verdict", "fail").await;
    let failing = api(&d, "records?window=PT1H&metric=groundedness&verdict=fail");
    assert_eq!(
        b.count("#records tbody tr").await as u64,
        failing["total"].as_u64().unwrap()
    );
    b.select("#records-metric", "").await;

    // A row opens its trace; the markup in its question is text and ran nothing.
    let xss = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["record"]["question"] == XSS)
        .expect("the request with markup was collected")
        .clone();
    let id = xss["record"]["id"].as_str().unwrap();
    let row = format!("#records tr[data-id='{id}']");
    assert_eq!(
        b.count(&row).await,
        1,
        "the newest records are on the first page"
    );
    assert!(
        b.text(&row).await.contains("<script>"),
        "shown as text in the table"
    );
    b.click(&row).await;
    assert_eq!(b.text("#trace-id").await, id);
    assert_eq!(b.text("#trace-question").await, XSS);
    let answer = xss["record"]["answer"].as_str().unwrap_or_default();
    assert_eq!(b.text("#trace-answer").await, answer.trim());
    let usage = &xss["record"]["usage"];
    shows(
        &b.text("td[data-fact='Prompt tokens']").await,
        usage["prompt"].as_f64().unwrap(),
        "the record's prompt tokens",
    );
    assert_eq!(
        b.text("td[data-fact='Usage source']").await,
        usage["source"].as_str().unwrap()
    );
    assert_eq!(
        b.count("#trace-scores tbody tr").await,
        xss["scores"].as_array().unwrap().len()
    );
    assert_eq!(
        b.script("return [window.pwned === undefined, document.querySelectorAll('main img, main script').length]")
            .await,
        json!([true, 0]),
        "record text ran as markup"
    );
    b.screenshot("trace").await;

    // Operational: requests, errors by type and latency as the counters and the API have them.
    b.click("#tabs a[data-tab=operations]").await;
    shows(&b.text("#op-requests").await, requests, "requests");
    shows(
        &b.text("#op-errors").await,
        sum(&m, "errors_total", &[]),
        "failed requests",
    );
    let limited = b.text("#errors-by-type tr[data-type=rate_limited]").await;
    shows(
        limited.split_whitespace().nth(1).unwrap(),
        sum(&m, "errors_total", &[("error_type", "rate_limited")]),
        "rate limited",
    );
    let ops = api(&d, "operations?window=PT1H");
    for p in ["p50", "p95", "p99"] {
        shows(
            &b.text(&format!("#op-latency-{p}")).await,
            ops["totals"]["duration_ms"][p].as_f64().unwrap(),
            p,
        );
    }
    for p in ["p50", "p95", "p99"] {
        shows(
            &b.text(&format!("#op-ttft-{p}")).await,
            ops["totals"]["ttft_ms"][p].as_f64().unwrap(),
            p,
        );
    }
    shows(
        &b.text("#op-error-rate").await,
        sum(&m, "errors_total", &[]) / requests,
        "error rate",
    );
    // Envoy shows histograms after its next stats flush (every 500 ms here), so they are
    // read now rather than from the snapshot taken when the counters matched.
    let flushed = d.envoy.prometheus().unwrap();
    assert_eq!(
        ops["totals"]["duration_ms"]["count"].as_f64().unwrap(),
        sum(&flushed, "request_duration_ms_count", &[])
    );
    b.screenshot("operations").await;

    // Monitors: the demo monitor, its last run's outcome and its schedule.
    b.click("#tabs a[data-tab=monitors]").await;
    let line = b
        .text(&format!("#monitors tr[data-monitor='{}']", demo::MONITOR))
        .await;
    assert!(line.contains(&status.replace('_', " ")), "{line}");
    assert!(line.contains("0 * * * *"), "{line}");
    // The alerts firing after the demo monitor's run, as the API lists them.
    let firing = monitors["monitors"][0]["alerts_firing"].as_array().unwrap();
    assert_eq!(b.count("#alerts-firing tbody tr").await, firing.len());
    if firing.is_empty() {
        assert!(b.text("#view").await.contains("No alert is firing."));
    }
    for a in firing {
        let metric = a["metric"].as_str().unwrap_or("–");
        let shown = b.text("#alerts-firing tbody").await;
        assert!(
            shown.contains(a["alertname"].as_str().unwrap()) && shown.contains(metric),
            "{shown}"
        );
    }
    b.screenshot("monitors").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_with_a_token_asks_for_it_before_showing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "console-token-0123456789").unwrap();
    let c = Collector::start(
        Path::new(BIN),
        &dir.path().join("t.db"),
        &["--token-file", token.to_str().unwrap()],
    )
    .unwrap();
    let b = Browser::start().await;
    b.open(&format!("{}/#/overview", c.url())).await;
    assert_eq!(
        b.script("return document.getElementById('login').hidden")
            .await,
        json!(false)
    );
    assert_eq!(
        b.count("#ov-requests").await,
        0,
        "nothing shown without the token"
    );
    let form = |value: &str| {
        format!("document.getElementById('token').value = '{value}'; document.getElementById('login').requestSubmit();")
    };
    b.after(async {
        b.script(&form("wrong-token-0123456789")).await;
    })
    .await;
    assert_eq!(
        b.script("return document.getElementById('login').hidden")
            .await,
        json!(false),
        "a wrong token is asked for again"
    );
    b.after(async {
        b.script(&form("console-token-0123456789")).await;
    })
    .await;
    assert_eq!(
        b.script("return document.getElementById('login').hidden")
            .await,
        json!(true)
    );
    shows(
        &b.text("#ov-requests").await,
        0.0,
        "requests of an empty store",
    );
    b.close().await;
}
