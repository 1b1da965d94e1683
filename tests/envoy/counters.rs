//! End to end through the real Envoy: token counters for every API and path shape,
//! errors, broken bodies, dimensions, label safety and configuration refusal.

use crate::common::{chat, eventually, reported, Gateway};
use serde_json::json;

const CASE_CONFIG: &str = r#"{
  "namespace": "llm",
  "dimensions": [
    {"name": "Operation ID"},
    {"name": "model"},
    {"name": "case", "value": "{request.header.x-case}"}
  ]
}"#;

#[test]
fn every_api_and_path_shape_yields_the_upstream_usage() {
    let gw = Gateway::start(CASE_CONFIG);
    let emb = json!({"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"]});
    let comp = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"});
    let resp = json!({"model": "gpt-4.1", "input": "Write one sentence about tokens."});
    let azure_chat = json!({"messages": [{"role": "user", "content": "Hello Azure"}]});
    let cases: Vec<(&str, &str, serde_json::Value, &str, &str)> = vec![
        (
            "chat-v1",
            "/v1/chat/completions",
            chat("gpt-4o", "How are tokens counted?"),
            "chat.completions",
            "gpt-4o-2024-08-06",
        ),
        (
            "chat-bare",
            "/chat/completions",
            chat("gpt-4o-mini", "No v1 prefix here"),
            "chat.completions",
            "gpt-4o-mini-2024-07-18",
        ),
        (
            "chat-prefixed",
            "/llm/v1/chat/completions",
            chat("gpt-4", "Behind a gateway prefix"),
            "chat.completions",
            "gpt-4-0613",
        ),
        (
            "completions-v1",
            "/v1/completions",
            comp.clone(),
            "completions",
            "gpt-3.5-turbo-instruct",
        ),
        (
            "completions-bare",
            "/completions",
            comp,
            "completions",
            "gpt-3.5-turbo-instruct",
        ),
        (
            "embeddings-v1",
            "/v1/embeddings",
            emb.clone(),
            "embeddings",
            "text-embedding-3-small",
        ),
        (
            "embeddings-bare",
            "/embeddings",
            emb,
            "embeddings",
            "text-embedding-3-small",
        ),
        (
            "responses-v1",
            "/v1/responses",
            resp.clone(),
            "responses",
            "gpt-4.1-2025-04-14",
        ),
        (
            "responses-bare",
            "/responses",
            resp,
            "responses",
            "gpt-4.1-2025-04-14",
        ),
        (
            "azure-chat",
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            azure_chat,
            "chat.completions",
            "gpt-4o-2024-08-06",
        ),
        (
            "azure-embeddings",
            "/openai/deployments/emb-small/embeddings?api-version=2024-10-21",
            json!({"input": "text to embed"}),
            "embeddings",
            "text-embedding-3-small",
        ),
        (
            "azure-completions",
            "/openai/deployments/instruct/completions?api-version=2024-10-21",
            json!({"prompt": "Once"}),
            "completions",
            "gpt-35-turbo-instruct",
        ),
        (
            "azure-v1-responses",
            "/openai/v1/responses?api-version=preview",
            json!({"model": "gpt-4.1", "input": "hi"}),
            "responses",
            "gpt-4.1-2025-04-14",
        ),
    ];
    let mut expected = Vec::new();
    for (case, path, body, op, model) in &cases {
        let r = gw.post(path, &[("x-case", case)], body);
        assert_eq!(r.status, 200, "{case}: {}", r.text());
        let (p, c, t) = reported(&r);
        assert!(p > 0.0 && t >= p, "{case}: upstream reported {p} {c} {t}");
        expected.push((*case, *op, *model, p, c, t));
    }
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[]) >= cases.len() as f64
    });
    for (case, op, model, p, c, t) in expected {
        let labels = [("case", case), ("operation_id", op), ("model", model)];
        assert_eq!(
            m.sum("llm_requests_total", &labels),
            1.0,
            "{case}: requests\n{}",
            m.lines_with_prefix("llm_").join("\n")
        );
        assert_eq!(
            m.sum("llm_prompt_tokens_total", &labels),
            p,
            "{case}: prompt"
        );
        assert_eq!(
            m.sum("llm_completion_tokens_total", &labels),
            c,
            "{case}: completion"
        );
        assert_eq!(m.sum("llm_tokens_total", &labels), t, "{case}: total");
    }
    assert_eq!(
        m.types.get("llm_prompt_tokens_total").map(String::as_str),
        Some("counter")
    );
}

#[test]
fn errors_are_requests_without_tokens() {
    let gw = Gateway::start(CASE_CONFIG);
    for (case, status) in [("e429", "429"), ("e500", "500"), ("e401", "401")] {
        let r = gw.post(
            "/v1/chat/completions",
            &[("x-case", case), ("x-upstream-status", status)],
            &chat("gpt-4o", "hi"),
        );
        assert_eq!(r.status.to_string(), status);
        assert!(r.json()["error"]["message"].is_string());
    }
    // The upstream refuses a body that is not JSON with a 400.
    let r = gw.post_bytes("/v1/chat/completions", &[("x-case", "e400")], b"{not json");
    assert_eq!(r.status, 400);
    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 4.0);
    for (case, model) in [
        ("e429", "gpt-4o"),
        ("e500", "gpt-4o"),
        ("e401", "gpt-4o"),
        ("e400", "unknown"),
    ] {
        assert_eq!(
            m.sum("llm_requests_total", &[("case", case), ("model", model)]),
            1.0,
            "{case}\n{}",
            m.lines_with_prefix("llm_").join("\n")
        );
        for tokens in [
            "llm_prompt_tokens_total",
            "llm_completion_tokens_total",
            "llm_tokens_total",
        ] {
            assert!(
                m.find(tokens, &[("case", case)]).is_empty(),
                "{case} has {tokens}"
            );
        }
    }
}

#[test]
fn broken_bodies_pass_through_byte_for_byte_and_are_counted() {
    let gw = Gateway::start(CASE_CONFIG);
    let body = chat("gpt-4o", "Please answer something long enough to cut.").to_string();
    for kind in ["truncated", "html", "garbage", "empty"] {
        let headers = [("x-case", kind), ("x-upstream-body", kind)];
        let via = gw.post_bytes("/v1/chat/completions", &headers, body.as_bytes());
        let direct = gw.post_direct("/v1/chat/completions", &headers, body.as_bytes());
        assert_eq!(via.status, direct.status, "{kind}");
        assert_eq!(
            via.body, direct.body,
            "{kind}: the client must get the upstream's bytes"
        );
        assert_eq!(
            via.header("content-type"),
            direct.header("content-type"),
            "{kind}"
        );
    }
    // The request itself need not be JSON for the exchange to be counted either.
    let junk: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let via = gw.post_bytes("/v1/embeddings", &[("x-case", "junk-request")], &junk);
    assert_eq!(via.status, 400);
    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 5.0);
    // A truncated body still names its model (read from its head).
    assert_eq!(
        m.sum(
            "llm_requests_total",
            &[("case", "truncated"), ("model", "gpt-4o-2024-08-06")]
        ),
        1.0,
        "{}",
        m.lines_with_prefix("llm_").join("\n")
    );
    for kind in ["html", "garbage", "empty", "junk-request"] {
        assert_eq!(
            m.sum("llm_requests_total", &[("case", kind)]),
            1.0,
            "{kind}\n{}",
            m.lines_with_prefix("llm_").join("\n")
        );
        assert!(
            m.find("llm_tokens_total", &[("case", kind)]).is_empty(),
            "{kind}"
        );
    }
    assert!(
        gw.envoy.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        gw.envoy.log()
    );
}

#[test]
fn large_bodies_are_counted_exactly_from_their_edges() {
    let gw = Gateway::start(CASE_CONFIG);
    // 16 embeddings of 1536 floats: about 600 KB, well past the 256 KiB capture limit.
    let inputs: Vec<String> = (0..16)
        .map(|i| format!("document number {i} with some words"))
        .collect();
    let r = gw.post(
        "/v1/embeddings",
        &[("x-case", "big-emb")],
        &json!({"model": "text-embedding-3-large", "input": inputs}),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body.len() > 300 * 1024,
        "body is only {} bytes",
        r.body.len()
    );
    let (p, _, t) = reported(&r);
    // A request larger than the limit too: a long conversation, model at the end.
    let long = "word ".repeat(80_000);
    let req = format!(r#"{{"messages":[{{"role":"user","content":"{long}"}}],"model":"gpt-4o"}}"#);
    let r2 = gw.post_bytes(
        "/v1/chat/completions",
        &[("x-case", "big-req")],
        req.as_bytes(),
    );
    assert_eq!(r2.status, 200);
    let (p2, c2, t2) = reported(&r2);
    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 2.0);
    let big = [("case", "big-emb"), ("model", "text-embedding-3-large")];
    assert_eq!(m.sum("llm_prompt_tokens_total", &big), p);
    assert_eq!(m.sum("llm_tokens_total", &big), t);
    let req_labels = [("case", "big-req"), ("model", "gpt-4o-2024-08-06")];
    assert_eq!(m.sum("llm_prompt_tokens_total", &req_labels), p2);
    assert_eq!(m.sum("llm_completion_tokens_total", &req_labels), c2);
    assert_eq!(m.sum("llm_tokens_total", &req_labels), t2);
}

#[test]
fn other_requests_pass_uncounted() {
    let gw = Gateway::start(CASE_CONFIG);
    let r = tokenmeter_testkit::client::get(&gw.envoy.url("/v1/chat/completions")).unwrap();
    assert_eq!(r.status, 404);
    let r = gw.post("/v1/models", &[], &json!({}));
    assert_eq!(r.status, 404);
    let r = gw.post("/v1/responses/resp_123/cancel", &[], &json!({}));
    assert_eq!(r.status, 404);
    let r = gw.post(
        "/v1/chat/completions",
        &[("x-case", "marker")],
        &chat("gpt-4o", "x"),
    );
    assert_eq!(r.status, 200);
    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 1.0);
    assert_eq!(
        m.sum("llm_requests_total", &[]),
        1.0,
        "{}",
        m.lines_with_prefix("llm_").join("\n")
    );
}

#[test]
fn dimensions_from_headers_bodies_properties_and_builtins() {
    let config = r#"{
      "namespace": "ai",
      "dimensions": [
        {"name": "API ID"},
        {"name": "Product ID"},
        {"name": "User ID"},
        {"name": "Subscription ID"},
        {"name": "Location"},
        {"name": "Gateway ID"},
        {"name": "Backend ID"},
        {"name": "team", "value": "{request.header.x-team|no-team}"},
        {"name": "project", "value": "{request.body.metadata.project|none}"},
        {"name": "fingerprint", "value": "{response.body.system_fingerprint}"}
      ]
    }"#;
    let gw = Gateway::start(config);
    let mut body = chat("gpt-4o", "dimension test");
    body["user"] = json!("user-42");
    body["metadata"] = json!({"project": "apollo"});
    let r = gw.post(
        "/v1/chat/completions",
        &[
            ("x-team", "Blue Team"),
            ("authorization", "Bearer sk-test-123"),
        ],
        &body,
    );
    assert_eq!(r.status, 200);
    let r = gw.post(
        "/v1/chat/completions",
        &[("api-key", "azure-key-9")],
        &chat("gpt-4o", "defaults"),
    );
    assert_eq!(r.status, 200);
    let m = eventually(&gw.envoy, |m| m.sum("ai_requests_total", &[]) >= 2.0);
    let lines = m.lines_with_prefix("ai_").join("\n");
    let first = [
        ("api_id", "llm-default"),
        ("product_id", "llm"),
        ("user_id", "user-42"),
        (
            "subscription_id",
            &tokenmeter_core::series::dimensions::subscription_id("sk-test-123")[..],
        ),
        ("location", "westeurope"),
        ("gateway_id", "gw-test-1"),
        ("backend_id", "llm_upstream"),
        ("team", "Blue Team"),
        ("project", "apollo"),
        ("fingerprint", "fp_6ec83003ad"),
    ];
    assert_eq!(m.sum("ai_requests_total", &first), 1.0, "{lines}");
    assert!(
        !lines.contains("sk-test-123"),
        "the secret must never appear"
    );
    let second = [
        ("user_id", "unknown"),
        (
            "subscription_id",
            &tokenmeter_core::series::dimensions::subscription_id("azure-key-9")[..],
        ),
        ("team", "no-team"),
        ("project", "none"),
    ];
    assert_eq!(m.sum("ai_requests_total", &second), 1.0, "{lines}");
}

#[test]
fn label_values_cannot_break_or_forge_labels() {
    let gw = Gateway::start(CASE_CONFIG);
    let evil = "x;.;model=.=forged;.;\"quote\\";
    let r = gw.post(
        "/v1/chat/completions",
        &[("x-case", evil)],
        &chat("gpt-4o", "hi"),
    );
    assert_eq!(r.status, 200);
    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 1.0);
    let s = m.find("llm_requests_total", &[]);
    assert_eq!(s.len(), 1, "{:?}", s);
    assert_eq!(s[0].labels["model"], "gpt-4o-2024-08-06");
    assert_eq!(s[0].labels["case"], "x_._model_._forged_.__quote_");
    let names: Vec<&str> = s[0].labels.keys().map(String::as_str).collect();
    assert_eq!(names, ["case", "model", "operation_id", "status_class"]);
}

#[test]
fn bad_configurations_are_refused_at_load_time() {
    let up = tokenmeter_testkit::upstream::Upstream::start().unwrap();
    let cases = [
        (r#"{"namespace": "Bad-NS"}"#, "namespace"),
        (
            r#"{"dimensions": [{"name": "team"}]}"#,
            "dimensions[0].value",
        ),
        (
            r#"{"dimensions": [{"name": "a", "value": "{cookie.x}"}]}"#,
            "dimensions[0].value",
        ),
        (
            r#"{"dimensions": [{"name": "model"}, {"name": "MODEL"}]}"#,
            "dimensions[1].name",
        ),
        (r#"{"colour": "blue"}"#, "colour"),
        (r#"{"namespace": "#, "namespace"),
        (r#"{,}"#, "configuration"),
        (
            r#"{"dimensions": [{"name":"d0","value":"x"},{"name":"d1","value":"x"},{"name":"d2","value":"x"},{"name":"d3","value":"x"},{"name":"d4","value":"x"},{"name":"d5","value":"x"},{"name":"d6","value":"x"},{"name":"d7","value":"x"},{"name":"d8","value":"x"},{"name":"d9","value":"x"},{"name":"d10","value":"x"}]}"#,
            "dimensions",
        ),
    ];
    for (text, field) in cases {
        let spec = crate::common::spec(text, &up);
        // Rendered with the default config's tags: the filter must be what refuses it.
        let yaml =
            tokenmeter_cli::bootstrap::render(&spec, &tokenmeter_core::config::Config::default());
        let (ok, out) = tokenmeter_testkit::envoy::validate(&yaml).unwrap();
        assert!(!ok, "{text} was accepted:\n{out}");
        assert!(
            out.contains(&format!("invalid tokenmeter configuration: {field}")),
            "{text}: Envoy's output does not name {field}:\n{out}"
        );
    }
    // And a real start fails rather than serving traffic unmetered.
    let spec = crate::common::spec(r#"{"namespace": "Bad-NS"}"#, &up);
    let yaml =
        tokenmeter_cli::bootstrap::render(&spec, &tokenmeter_core::config::Config::default());
    let err = match tokenmeter_testkit::envoy::Envoy::start(&yaml, 1) {
        Ok(_) => panic!("envoy started with a bad configuration"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("invalid tokenmeter configuration: namespace"),
        "{err}"
    );
    // The good example passes validation.
    let good =
        std::fs::read_to_string(format!("{}/examples/filter-config.json", crate::ROOT)).unwrap();
    let config = tokenmeter_core::config::Config::parse(good.as_bytes()).unwrap();
    let (ok, out) = tokenmeter_testkit::envoy::validate(&tokenmeter_cli::bootstrap::render(
        &crate::common::spec(&good, &up),
        &config,
    ))
    .unwrap();
    assert!(ok, "{out}");
}
