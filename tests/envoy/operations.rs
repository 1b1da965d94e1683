//! End to end through the real Envoy: status classes and error types, latency histograms,
//! token breakdowns, cardinality caps across workers, per-request usage in access logs and
//! the OpenTelemetry naming.

use std::time::{Duration, Instant};

use crate::common::{chat, eventually, spec, Gateway};
use serde_json::{json, Value};
use tokenmeter_cli::bootstrap;
use tokenmeter_core::config::Config;
use tokenmeter_testkit::client;
use tokenmeter_testkit::envoy::Envoy;
use tokenmeter_testkit::upstream::Upstream;

const CASE: &str = r#"{"dimensions": [{"name": "case", "value": "{request.header.x-case}"}]}"#;

/// A gateway whose route times out after one second, to see timeouts.
fn gateway_with_timeout(config: &str) -> Gateway {
    let upstream = Upstream::start().unwrap();
    let yaml = bootstrap::render(
        &spec(config, &upstream),
        &Config::parse(config.as_bytes()).unwrap(),
    )
    .replace("timeout: 600s", "timeout: 1s");
    Gateway {
        envoy: Envoy::start(&yaml, 2).unwrap(),
        upstream,
    }
}

#[test]
fn status_classes_and_error_types() {
    let gw = gateway_with_timeout(CASE);
    let post = |case: &str, extra: &[(&str, &str)]| {
        let mut h = vec![("x-case", case)];
        h.extend_from_slice(extra);
        client::post(
            &gw.envoy.url("/v1/chat/completions"),
            &h,
            chat("gpt-4o", "hi").to_string().as_bytes(),
        )
    };
    assert_eq!(post("ok", &[]).unwrap().status, 200);
    assert_eq!(
        post("limited", &[("x-upstream-status", "429")])
            .unwrap()
            .status,
        429
    );
    assert_eq!(
        post("bad", &[("x-upstream-status", "400")]).unwrap().status,
        400
    );
    assert_eq!(
        post("broken", &[("x-upstream-status", "500")])
            .unwrap()
            .status,
        500
    );
    assert_eq!(
        post("slow", &[("x-upstream-delay-ms", "2500")])
            .unwrap()
            .status,
        504
    );
    // A stream the upstream resets after its first events.
    let mut body = chat("gpt-4o", "reset me");
    body["stream"] = json!(true);
    let r = client::post(
        &gw.envoy.url("/v1/chat/completions"),
        &[
            ("x-case", "reset"),
            ("x-upstream-abort-after", "3"),
            ("x-upstream-delay-ms", "20"),
        ],
        body.to_string().as_bytes(),
    );
    assert!(r.is_err());
    // A client that hangs up mid-stream.
    client::post_and_hang_up(
        &gw.envoy.url("/v1/chat/completions"),
        &[("x-case", "gone"), ("x-upstream-delay-ms", "150")],
        body.to_string().as_bytes(),
    )
    .unwrap();
    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 7.0);
    let show = m.lines_with_prefix("llm_").join("\n");
    for (case, class, error) in [
        ("ok", "2xx", None),
        ("limited", "4xx", Some("rate_limited")),
        ("bad", "4xx", Some("client_error")),
        ("broken", "5xx", Some("upstream_error")),
        ("slow", "5xx", Some("timeout")),
        ("reset", "2xx", Some("upstream_reset")),
        ("gone", "2xx", Some("client_cancelled")),
    ] {
        assert_eq!(
            m.sum(
                "llm_requests_total",
                &[("case", case), ("status_class", class)]
            ),
            1.0,
            "{case}\n{show}"
        );
        match error {
            Some(e) => assert_eq!(
                m.sum("llm_errors_total", &[("case", case), ("error_type", e)]),
                1.0,
                "{case}\n{show}"
            ),
            None => assert!(
                m.find("llm_errors_total", &[("case", case)]).is_empty(),
                "{case}"
            ),
        }
    }
}

#[test]
fn latency_histograms_and_token_breakdowns() {
    let gw = Gateway::start(CASE);
    let mut body = chat("gpt-4o", "Stream with a known pace, please.");
    body["stream"] = json!(true);
    // 40 ms before every event: the role-only first chunk at ~40 ms, the first text at ~80 ms.
    let r = gw.post(
        "/v1/chat/completions",
        &[("x-case", "paced"), ("x-upstream-delay-ms", "40")],
        &body,
    );
    assert_eq!(r.status, 200);
    let json_reply = gw.post(
        "/v1/chat/completions",
        &[
            ("x-case", "details"),
            ("x-upstream-cached", "5"),
            ("x-upstream-reasoning", "7"),
        ],
        &chat("o3-mini", "Think first."),
    );
    let u = json_reply.json()["usage"].clone();
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_time_per_output_token_ms_count", &[("case", "paced")]) >= 1.0
            && m.sum("llm_request_duration_ms_count", &[("case", "details")]) >= 1.0
    });
    let paced = [("case", "paced")];
    assert_eq!(
        m.types.get("llm_request_duration_ms").map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        m.sum("llm_request_duration_ms_count", &paced),
        1.0,
        "{}",
        m.lines_with_prefix("llm_").join("\n")
    );
    assert_eq!(m.sum("llm_time_to_first_token_ms_count", &paced), 1.0);
    assert_eq!(m.sum("llm_time_per_output_token_ms_count", &paced), 1.0);
    // Envoy's histogram sums are approximate (two significant digits).
    let ttft = m.sum("llm_time_to_first_token_ms_sum", &paced);
    let duration = m.sum("llm_request_duration_ms_sum", &paced);
    assert!(
        ttft >= 80.0 * 0.95,
        "the first content comes after two paced events: {ttft}"
    );
    assert!(duration > ttft, "{duration} vs {ttft}");
    let tpot = m.sum("llm_time_per_output_token_ms_sum", &paced);
    assert!(
        tpot >= 40.0 * 0.9,
        "each further token took a paced event: {tpot}"
    );
    // JSON responses get no time to first token.
    assert_eq!(
        m.sum("llm_time_to_first_token_ms_count", &[("case", "details")]),
        0.0
    );
    let d = [("case", "details")];
    assert_eq!(m.sum("llm_cached_prompt_tokens_total", &d), 5.0);
    assert_eq!(m.sum("llm_reasoning_tokens_total", &d), 7.0);
    assert_eq!(
        m.sum("llm_completion_tokens_total", &d),
        u["completion_tokens"].as_f64().unwrap()
    );
    assert!(
        u["completion_tokens"].as_u64().unwrap() > 7,
        "reasoning is part of completion tokens"
    );
}

#[test]
fn caps_hold_across_workers_against_many_distinct_users() {
    let config = r#"{"dimensions": [
        {"name": "user", "value": "{request.header.x-user}", "max_values": 5},
        {"name": "tier", "value": "{request.header.x-tier}", "allow": ["gold", "silver"]}
    ]}"#;
    let gw = Gateway::start_with(config, 2);
    let url = gw.envoy.url("/v1/embeddings");
    let body =
        json!({"model": "text-embedding-3-small", "input": "x", "dimensions": 4}).to_string();
    const USERS: usize = 10_000;
    std::thread::scope(|s| {
        for t in 0..8 {
            let (url, body) = (&url, &body);
            s.spawn(move || {
                for i in (t..USERS).step_by(8) {
                    let user = format!("user-{i}");
                    let tier = if i % 2 == 0 { "gold" } else { "bronze" };
                    let r =
                        client::post(url, &[("x-user", &user), ("x-tier", tier)], body.as_bytes())
                            .unwrap();
                    assert_eq!(r.status, 200);
                }
            });
        }
    });
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[]) >= USERS as f64
    });
    let series = m.find("llm_requests_total", &[]);
    let users: std::collections::BTreeSet<&str> =
        series.iter().map(|s| s.labels["user"].as_str()).collect();
    assert_eq!(m.sum("llm_requests_total", &[]), USERS as f64);
    assert_eq!(
        users.len(),
        6,
        "five users and other across both workers: {users:?}"
    );
    assert!(users.contains("other"));
    // Every series is one of 6 users x 2 tiers at most.
    assert!(series.len() <= 12, "{}", series.len());
    assert_eq!(
        m.sum("llm_overflow_total", &[("dimension", "user")]),
        (USERS - 5) as f64
    );
    assert_eq!(
        m.sum("llm_overflow_total", &[("dimension", "tier")]),
        (USERS / 2) as f64
    );
    let tiers: std::collections::BTreeSet<&str> =
        series.iter().map(|s| s.labels["tier"].as_str()).collect();
    assert_eq!(tiers, ["gold", "other"].into_iter().collect());
}

#[test]
fn access_logs_carry_each_requests_usage() {
    let upstream = Upstream::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut s = spec(CASE, &upstream);
    s.access_log = Some(log.display().to_string());
    let envoy = Envoy::start(
        &bootstrap::render(&s, &Config::parse(CASE.as_bytes()).unwrap()),
        1,
    )
    .unwrap();
    let r = client::post(
        &envoy.url("/v1/chat/completions"),
        &[("x-request-id", "req-1")],
        chat("gpt-4o", "log me").to_string().as_bytes(),
    )
    .unwrap();
    let u = r.json()["usage"].clone();
    client::post(
        &envoy.url("/v1/chat/completions"),
        &[("x-request-id", "req-2"), ("x-upstream-status", "429")],
        b"{}",
    )
    .unwrap();
    client::get(&envoy.url("/healthz")).unwrap();
    // A header that tries to close its field and forge others stays inside it.
    let forged = r#"x","request_id":"forged-id","status":999,"tokenmeter":{"total":1},"a":""#;
    let r4 = client::post(
        &envoy.url("/v1/chat/completions"),
        &[("x-request-id", "req-4"), ("user-agent", forged)],
        chat("gpt-4o", "forge").to_string().as_bytes(),
    )
    .unwrap();
    // Settled when the log callback runs (a client that hangs up): still in the log line.
    let mut body = chat("gpt-4o", "slow stream");
    body["stream"] = json!(true);
    client::post_and_hang_up(
        &envoy.url("/v1/chat/completions"),
        &[("x-request-id", "req-3"), ("x-upstream-delay-ms", "150")],
        body.to_string().as_bytes(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= 5 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("{id}: {lines:?}"))
            .clone()
    };
    // The summary is a JSON text in a string field.
    let summary = |line: &Value| -> Value {
        let text = line["tokenmeter"]
            .as_str()
            .unwrap_or_else(|| panic!("tokenmeter is not a string: {line}"));
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let first = by_id("req-1");
    let t = &summary(&first);
    assert_eq!(t["prompt"], u["prompt_tokens"]);
    assert_eq!(t["completion"], u["completion_tokens"]);
    assert_eq!(t["total"], u["total_tokens"]);
    assert_eq!(t["source"], "reported");
    assert_eq!(t["model"], "gpt-4o-2024-08-06");
    let second = by_id("req-2");
    assert_eq!(summary(&second)["error"], "rate_limited");
    assert_eq!(second["status"], 429);
    let third = by_id("req-3");
    assert_eq!(summary(&third)["error"], "client_cancelled", "{third}");
    assert_eq!(summary(&third)["source"], "estimated", "{third}");
    let fourth = by_id("req-4");
    assert_eq!(fourth["user_agent"], forged, "{fourth}");
    assert_eq!(fourth["status"], 200, "{fourth}");
    assert_eq!(
        summary(&fourth)["total"],
        r4.json()["usage"]["total_tokens"]
    );
    assert!(
        lines.iter().all(|l| l["request_id"] != "forged-id"),
        "{lines:?}"
    );
    // Requests that are not LLM calls log null.
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/healthz" && summary(l).is_null()),
        "{lines:?}"
    );
}

#[test]
fn otel_naming() {
    let gw = Gateway::start(r#"{"metric_names": "otel"}"#);
    let r = gw.post(
        "/v1/chat/completions",
        &[],
        &chat("gpt-4o", "OpenTelemetry names"),
    );
    let u = r.json()["usage"].clone();
    let r2 = gw.post(
        "/openai/deployments/emb/embeddings?api-version=2024-10-21",
        &[],
        &json!({"input": "embed"}),
    );
    let e = r2.json()["usage"].clone();
    let m = eventually(&gw.envoy, |m| {
        m.sum("gen_ai_client_token_usage_count", &[]) >= 3.0
    });
    let chat_labels = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "gpt-4o"),
        ("gen_ai_response_model", "gpt-4o-2024-08-06"),
    ];
    let with = |t: &'static str| {
        let mut l = chat_labels.to_vec();
        l.push(("gen_ai_token_type", t));
        l
    };
    let show = m.lines_with_prefix("gen_ai").join("\n");
    assert_eq!(
        m.sum("gen_ai_client_token_usage_count", &with("input")),
        1.0,
        "{show}"
    );
    assert_eq!(
        m.sum("gen_ai_client_token_usage_count", &with("output")),
        1.0,
        "{show}"
    );
    let input = m.sum("gen_ai_client_token_usage_sum", &with("input"));
    let want = u["prompt_tokens"].as_f64().unwrap();
    assert!(
        (input - want).abs() <= want * 0.05 + 0.5,
        "{input} vs {want} (approximate sums)"
    );
    let emb = [
        ("gen_ai_operation_name", "embeddings"),
        ("gen_ai_provider_name", "azure.ai.openai"),
        ("gen_ai_request_model", "emb"),
        ("gen_ai_token_type", "input"),
    ];
    assert_eq!(
        m.sum("gen_ai_client_token_usage_count", &emb),
        1.0,
        "{show}"
    );
    assert!(e["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        m.sum("gen_ai_server_request_duration_ms_count", &chat_labels),
        1.0
    );
    assert!(m.find("llm_prompt_tokens_total", &[]).is_empty());
    assert_eq!(m.sum("llm_requests_total", &[("status_class", "2xx")]), 2.0);
}
