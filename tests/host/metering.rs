//! The built filter in the test host: which requests are metered, the counters and labels
//! they produce, configuration refusal, fail-open on broken bodies, and settlement exactly
//! once on every way an exchange can end.

use crate::harness::fixtures;
use crate::harness::native::{counters, NativeVm};
use crate::harness::{
    run, Action, Call, Ending, Headers, Host, LogLevel, Manners, Reply, Stream, Vm,
};
use serde_json::json;

const CASE_CONFIG: &str = r#"{"dimensions":[{"name":"Operation ID"},{"name":"model"},
    {"name":"case","value":"{request.header.x-case}"}]}"#;

fn chat_request(model: &str) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": "How are tokens counted?"}]})
        .to_string()
        .into_bytes()
}

/// prompt, completion and total tokens.
type Tokens = (i64, i64, i64);

/// prompt, completion and total tokens for series with `labels`.
fn tokens(host: &Host, labels: &[(&str, &str)]) -> Tokens {
    let m = host.metrics();
    (
        m.sum("llm_prompt_tokens_total", labels),
        m.sum("llm_completion_tokens_total", labels),
        m.sum("llm_tokens_total", labels),
    )
}

fn requests(host: &Host, labels: &[(&str, &str)]) -> i64 {
    host.metrics().sum("llm_requests_total", labels)
}

/// Every metric name defined once in the VM, and no operation refused.
fn assert_clean_metric_use(vm: &Vm) {
    for (name, n) in vm.define_counts() {
        assert_eq!(n, 1, "{name} defined {n} times");
    }
    assert!(
        vm.refused_metric_ops().is_empty(),
        "the host refused: {:?}",
        vm.refused_metric_ops()
    );
}

/// case, path, request, response, operation, model, tokens.
type PathCase<'a> = (
    &'a str,
    &'a str,
    &'a [u8],
    &'a [u8],
    &'a str,
    &'a str,
    Tokens,
);

#[test]
fn every_api_and_path_shape_is_metered_with_the_reported_usage() {
    let host = Host::new();
    let mut vm = host.vm(CASE_CONFIG);
    let chat = fixtures::bytes("chat.json");
    let comp = fixtures::bytes("completions.json");
    let emb = fixtures::bytes("embeddings.json");
    let resp = fixtures::bytes("responses.json");
    let azure = fixtures::bytes("azure-chat.json");
    let emb_req = br#"{"model":"text-embedding-3-small","input":["alpha beta","gamma"]}"#;
    let comp_req = br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test"}"#;
    let resp_req = br#"{"model":"gpt-4.1","input":"Write one sentence about tokens."}"#;
    let azure_req = br#"{"messages":[{"role":"user","content":"Hello Azure"}]}"#;
    let chat_req = chat_request("gpt-4o");
    #[rustfmt::skip]
    let cases: &[PathCase] = &[
        ("chat-v1", "/v1/chat/completions", &chat_req, &chat, "chat.completions", "gpt-4o-2024-08-06", (24, 17, 41)),
        ("chat-bare", "/chat/completions", &chat_req, &chat, "chat.completions", "gpt-4o-2024-08-06", (24, 17, 41)),
        ("chat-prefixed", "/llm/v1/chat/completions?x=1", &chat_req, &chat, "chat.completions", "gpt-4o-2024-08-06", (24, 17, 41)),
        ("chat-slash", "/v1/chat/completions/", &chat_req, &chat, "chat.completions", "gpt-4o-2024-08-06", (24, 17, 41)),
        ("completions-v1", "/v1/completions", comp_req, &comp, "completions", "gpt-3.5-turbo-instruct", (5, 7, 12)),
        ("completions-bare", "/completions", comp_req, &comp, "completions", "gpt-3.5-turbo-instruct", (5, 7, 12)),
        ("embeddings-v1", "/v1/embeddings", emb_req, &emb, "embeddings", "text-embedding-3-small", (9, 0, 9)),
        ("embeddings-bare", "/embeddings", emb_req, &emb, "embeddings", "text-embedding-3-small", (9, 0, 9)),
        ("responses-v1", "/v1/responses", resp_req, &resp, "responses", "gpt-4.1-2025-04-14", (37, 6, 43)),
        ("responses-bare", "/responses", resp_req, &resp, "responses", "gpt-4.1-2025-04-14", (37, 6, 43)),
        ("azure-chat", "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21", azure_req, &azure, "chat.completions", "gpt-4o-2024-11-20", (19, 10, 29)),
        ("azure-embeddings", "/openai/deployments/emb-small/embeddings?api-version=2024-10-21", br#"{"input":"text"}"#, &emb, "embeddings", "text-embedding-3-small", (9, 0, 9)),
        ("azure-v1-responses", "/openai/v1/responses?api-version=preview", resp_req, &resp, "responses", "gpt-4.1-2025-04-14", (37, 6, 43)),
    ];
    for (case, path, req, body, op, model, want) in cases {
        let out = run(
            &mut vm,
            &Call::post(path, req).header("x-case", case),
            &Reply::json(200, body),
        );
        out.assert_flowed();
        assert_eq!(
            out.upstream_body, *req,
            "{case}: the request passes unchanged"
        );
        assert_eq!(
            out.client_body, *body,
            "{case}: the response passes unchanged"
        );
        let labels = [("case", *case), ("operation_id", *op), ("model", *model)];
        assert_eq!(
            requests(&host, &labels),
            1,
            "{case}\n{}",
            host.metrics().dump()
        );
        assert_eq!(tokens(&host, &labels), *want, "{case}");
    }
    assert_eq!(requests(&host, &[]), cases.len() as i64);
    // Zero counts are never sent (embeddings have no completion tokens).
    assert!(host
        .metrics()
        .find(
            "llm_completion_tokens_total",
            &[("operation_id", "embeddings")]
        )
        .is_empty());
    assert_clean_metric_use(&vm);
}

#[test]
fn other_requests_pass_untouched_and_uncounted() {
    let host = Host::new();
    let mut vm = host.vm(CASE_CONFIG);
    let chat = fixtures::bytes("chat.json");
    for (method, path) in [
        ("GET", "/v1/chat/completions"),
        ("POST", "/v1/models"),
        ("POST", "/v1/responses/resp_123/cancel"),
        ("POST", "/v1/chat/completions/chatcmpl-1/messages"),
        ("POST", "/healthz?path=/v1/embeddings"),
        ("PUT", "/v1/embeddings"),
    ] {
        let req = json!({"model": "gpt-4o", "stream": true}).to_string();
        let call = Call::post(path, req.as_bytes()).method(method);
        let out = run(&mut vm, &call, &Reply::json(200, &chat));
        out.assert_flowed();
        assert!(
            out.request_actions.iter().all(|a| *a == Action::Continue),
            "{method} {path}"
        );
        assert_eq!(
            out.upstream_headers.as_ref(),
            Some(&call.headers),
            "{method} {path}"
        );
        assert_eq!(out.upstream_body, req.as_bytes());
        assert_eq!(out.client_body, chat);
    }
    assert!(
        host.metrics().0.stats.is_empty(),
        "{}",
        host.metrics().dump()
    );
    assert!(vm.defines().is_empty());
}

#[test]
fn dimensions_come_from_headers_bodies_properties_and_builtins() {
    let config = r#"{"namespace": "ai", "dimensions": [
        {"name": "API ID"}, {"name": "Product ID"}, {"name": "User ID"},
        {"name": "Subscription ID"}, {"name": "Location"}, {"name": "Gateway ID"},
        {"name": "Backend ID"},
        {"name": "team", "value": "{request.header.x-team|no-team}"},
        {"name": "project", "value": "{request.body.metadata.project|none}"},
        {"name": "fingerprint", "value": "{response.body.system_fingerprint}"}]}"#;
    let ngx = Manners::from_env() == Manners::Ngx;
    // Ten dimensions need more than ngx_wasm_module's default 256-byte names: there the
    // limit is raised, and the filter told (`max_metric_name_bytes`).
    let (host, config) = if ngx {
        (
            Host::ngx(false, 1024),
            config.replacen('{', r#"{"max_metric_name_bytes": 1010, "#, 1),
        )
    } else {
        (Host::new(), config.to_string())
    };
    let config = config.as_str();
    let mut vm = host.vm(config);
    vm.set_property(&["xds", "route_name"], b"llm-default");
    vm.set_property(&["xds", "virtual_host_name"], b"llm");
    vm.set_property(&["xds", "node", "locality", "region"], b"westeurope");
    vm.set_property(&["xds", "node", "id"], b"gw-test-1");
    vm.set_property(&["xds", "cluster_name"], b"llm_upstream");
    // nginx's own counterparts (its server_name, hostname and proxy_pass host).
    vm.set_property(&["ngx", "server_name"], b"llm.example");
    vm.set_property(&["ngx", "hostname"], b"gw-ngx-1");
    vm.set_property(&["ngx", "proxy_host"], b"api.openai.test:443");
    let chat = fixtures::bytes("chat.json");
    let body = json!({"model": "gpt-4o", "user": "user-42", "metadata": {"project": "apollo"},
        "messages": [{"role": "user", "content": "dimension test"}]});
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", body.to_string().as_bytes())
            .header("x-team", "Blue Team")
            .header("authorization", "Bearer sk-test-123"),
        &Reply::json(200, &chat),
    );
    out.assert_flowed();
    let sub = tokenmeter_core::series::dimensions::subscription_id("sk-test-123");
    // No xds.* on nginx: no route or locality there.
    let (api, product, location, gateway, backend) = if ngx {
        (
            "unknown",
            "llm.example",
            "unknown",
            "gw-ngx-1",
            "api.openai.test:443",
        )
    } else {
        (
            "llm-default",
            "llm",
            "westeurope",
            "gw-test-1",
            "llm_upstream",
        )
    };
    let first = [
        ("api_id", api),
        ("product_id", product),
        ("user_id", "user-42"),
        ("subscription_id", sub.as_str()),
        ("location", location),
        ("gateway_id", gateway),
        ("backend_id", backend),
        ("team", "Blue Team"),
        ("project", "apollo"),
        ("fingerprint", "fp_07871e2ad8"),
        ("status_class", "2xx"),
    ];
    let m = host.metrics();
    let s = m.find("ai_requests_total", &[]);
    assert_eq!(s.len(), 1, "{}", m.dump());
    assert_eq!(
        s[0].labels,
        first
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
        "labels in configuration order"
    );
    assert!(
        !m.dump().contains("sk-test-123"),
        "the secret must never appear"
    );

    // Defaults, and a credential from Azure's api-key header; properties now absent.
    let mut vm2 = host.vm(config);
    let out = run(
        &mut vm2,
        &Call::post("/v1/chat/completions", &chat_request("gpt-4o"))
            .header("api-key", "azure-key-9"),
        &Reply::json(200, &chat),
    );
    out.assert_flowed();
    let sub2 = tokenmeter_core::series::dimensions::subscription_id("azure-key-9");
    let second = [
        ("api_id", "unknown"),
        ("user_id", "unknown"),
        ("subscription_id", sub2.as_str()),
        ("backend_id", "unknown"),
        ("team", "no-team"),
        ("project", "none"),
    ];
    assert_eq!(
        requests_ns(&host, "ai", &second),
        1,
        "{}",
        host.metrics().dump()
    );
}

fn requests_ns(host: &Host, ns: &str, labels: &[(&str, &str)]) -> i64 {
    host.metrics().sum(&format!("{ns}_requests_total"), labels)
}

#[test]
fn property_and_response_header_dimensions() {
    let config = r#"{"dimensions": [
        {"name": "port", "value": "{property.source.port}"},
        {"name": "rid", "value": "{property.request.id|none}"},
        {"name": "meta", "value": "{property.metadata.filter_metadata.team}"},
        {"name": "region", "value": "{response.header.x-region|none}"}]}"#;
    let host = Host::new();
    let mut vm = host.vm(config);
    let chat = fixtures::bytes("chat.json");
    let mut s = Stream::new(&mut vm);
    // Numbers come from Envoy as 8 little-endian bytes.
    s.set_property(&["source", "port"], &54_321i64.to_le_bytes());
    s.set_property(&["request", "id"], b"9b7c-4a");
    s.set_property(&["metadata", "filter_metadata", "team"], b"red");
    let req = chat_request("gpt-4o");
    s.request_headers(
        crate::harness::exchange::request_headers("POST", "/v1/chat/completions", req.len()),
        false,
    );
    s.request_body(&req, true);
    s.response_headers(
        Reply::json(200, &chat)
            .header("X-Region", "eu-west")
            .headers,
        false,
    );
    s.response_body(&chat, true);
    drop(s);
    let labels = [
        ("port", "54321"),
        ("rid", "9b7c-4a"),
        ("meta", "red"),
        ("region", "eu-west"),
    ];
    assert_eq!(requests(&host, &labels), 1, "{}", host.metrics().dump());
    assert_eq!(tokens(&host, &labels), (24, 17, 41));
}

#[test]
fn label_values_are_sanitised_and_cannot_forge_labels() {
    let host = Host::new();
    let mut vm = host.vm(CASE_CONFIG);
    let chat = fixtures::bytes("chat.json");
    let evil = "x;.;model=.=forged;.;\"quote\\";
    let long = "a".repeat(100);
    for case in [evil, long.as_str(), "ünï cödé"] {
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", &chat_request("gpt-4o")).header("x-case", case),
            &Reply::json(200, &chat),
        );
        out.assert_flowed();
    }
    let names: Vec<String> = host
        .metrics()
        .find("llm_requests_total", &[])
        .into_iter()
        .map(|s| s.name)
        .collect();
    // Cut to 64 characters; under ngx_wasm_module's 242 bytes, to its share of them.
    let long_value = match host.manners() {
        Manners::Envoy => "a".repeat(64),
        Manners::Ngx => tokenmeter_core::series::labels::shorten_value(&"a".repeat(64), 51),
    };
    assert_eq!(
        names,
        [
            "llm_requests_total.operation_id=.=chat.completions;.;model=.=gpt-4o-2024-08-06;.;case=.=_n_ c_d_;.;status_class=.=2xx;.;".to_string(),
            format!("llm_requests_total.operation_id=.=chat.completions;.;model=.=gpt-4o-2024-08-06;.;case=.={long_value};.;status_class=.=2xx;.;"),
            "llm_requests_total.operation_id=.=chat.completions;.;model=.=gpt-4o-2024-08-06;.;case=.=x_._model_._forged_.__quote_;.;status_class=.=2xx;.;".to_string(),
        ]
    );
}

#[test]
fn the_default_configuration_counts_without_labels() {
    for config in ["", "{}", "  \n"] {
        let host = Host::new();
        let mut vm = host.vm(config);
        let out = run(
            &mut vm,
            &Call::post("/v1/embeddings", br#"{"input":"x"}"#),
            &Reply::json(200, &fixtures::bytes("embeddings.json")),
        );
        out.assert_flowed();
        let m = host.metrics();
        assert_eq!(
            m.value("llm_requests_total.status_class=.=2xx;.;"),
            Some(1),
            "{config:?}"
        );
        assert_eq!(m.value("llm_prompt_tokens_total"), Some(9));
        assert_eq!(m.value("llm_tokens_total"), Some(9));
        // Requests, prompt and total tokens, and the duration histogram.
        assert_eq!(m.0.stats.len(), 4, "{}", m.dump());
    }
}

#[test]
fn bad_configurations_are_refused_at_configure_time() {
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
        ("namespace=llm", "configuration"),
        (r#"{"max_body_bytes": 10}"#, "max_body_bytes"),
        (r#"{"inject_stream_usage": "yes"}"#, "inject_stream_usage"),
    ];
    let host = Host::new();
    for (text, field) in cases {
        let (vm, started, configured) = host.try_vm(text);
        assert!(started);
        assert!(!configured, "{text} was accepted");
        let critical: Vec<_> = vm
            .logs()
            .iter()
            .filter(|l| l.level == LogLevel::Critical)
            .collect();
        assert_eq!(critical.len(), 1, "{text}: {}", vm.log_text());
        assert!(
            critical[0]
                .message
                .starts_with(&format!("invalid tokenmeter configuration: {field}: ")),
            "{text}: {}",
            critical[0].message
        );
        assert_eq!(critical[0].context, vm.root, "logged by the root context");
    }
    // The example configuration is accepted.
    let good =
        std::fs::read_to_string(format!("{}/examples/filter-config.json", crate::ROOT)).unwrap();
    let (_, _, configured) = host.try_vm(&good);
    assert!(configured);
}

#[test]
fn a_vm_whose_configuration_failed_still_lets_traffic_through() {
    let host = Host::new();
    let (mut vm, _, configured) = host.try_vm(r#"{"namespace": "Bad-NS"}"#);
    assert!(!configured);
    let req = chat_request("gpt-4o");
    let chat = fixtures::bytes("chat.json");
    let call = Call::post("/v1/chat/completions", &req);
    let out = run(&mut vm, &call, &Reply::json(200, &chat));
    out.assert_flowed();
    assert_eq!(out.upstream_headers.as_ref(), Some(&call.headers));
    assert_eq!(out.upstream_body, req);
    assert_eq!(out.client_body, chat);
    assert!(host.metrics().0.stats.is_empty());
}

#[test]
fn errors_are_requests_without_tokens() {
    let host = Host::new();
    let mut vm = host.vm(CASE_CONFIG);
    let err = fixtures::bytes("error-429.json");
    for (case, status) in [("e429", 429), ("e500", 500), ("e401", 401), ("e200", 200)] {
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", &chat_request("gpt-4o")).header("x-case", case),
            &Reply::json(status, &err),
        );
        out.assert_flowed();
        assert_eq!(out.client_body, err);
        let labels = [("case", case), ("model", "gpt-4o")];
        assert_eq!(
            requests(&host, &labels),
            1,
            "{case}\n{}",
            host.metrics().dump()
        );
        assert_eq!(tokens(&host, &[("case", case)]), (0, 0, 0), "{case}");
    }
    assert_clean_metric_use(&vm);
}

#[test]
fn broken_bodies_pass_byte_for_byte_and_are_still_counted() {
    let host = Host::new();
    let mut vm = host.vm(CASE_CONFIG);
    let chat = fixtures::bytes("chat.json");
    let truncated = &chat[..chat.len() / 2];
    let cases: &[(&str, &[u8])] = &[
        ("truncated", truncated),
        ("html", b"<html><body>502 Bad Gateway</body></html>"),
        ("garbage", &[0xff, 0xfe, b'{', 0, 1, 2, b'"', b'}']),
        ("empty", b""),
        ("deep", &[b'['; 100_000]),
        (
            "usage-wrong-type",
            br#"{"model":"gpt-4o","usage":{"prompt_tokens":"many"}}"#,
        ),
    ];
    for (case, body) in cases {
        for cuts in [vec![], vec![1, 3, 200]] {
            let req = chat_request("gpt-4o");
            let out = run(
                &mut vm,
                &Call::post("/v1/chat/completions", &req).header("x-case", case),
                &Reply::json(200, body).cuts(&cuts),
            );
            out.assert_flowed();
            assert_eq!(out.upstream_body, req, "{case}");
            assert_eq!(
                out.client_body, *body,
                "{case}: the client gets the upstream's bytes"
            );
            assert_eq!(
                out.client_headers
                    .as_ref()
                    .and_then(|h| h.get("content-length")),
                Some(body.len().to_string().as_str()),
                "{case}: the length stays"
            );
        }
    }
    // A request that is not JSON (or not text) is counted too.
    let junk: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let out = run(
        &mut vm,
        &Call::post("/v1/embeddings", &junk)
            .header("x-case", "junk-request")
            .cuts(&[5, 40_000]),
        &Reply::json(400, &fixtures::bytes("error-429.json")),
    );
    out.assert_flowed();
    assert_eq!(out.upstream_body, junk);
    let m = host.metrics();
    // A truncated body still names its model, read from its head.
    assert_eq!(
        m.sum(
            "llm_requests_total",
            &[("case", "truncated"), ("model", "gpt-4o-2024-08-06")]
        ),
        2,
        "{}",
        m.dump()
    );
    for (case, _) in &cases[1..] {
        assert_eq!(
            m.sum("llm_requests_total", &[("case", case)]),
            2,
            "{case}\n{}",
            m.dump()
        );
    }
    assert_eq!(m.sum("llm_requests_total", &[("case", "junk-request")]), 1);
    assert!(
        vm.logs().iter().all(|l| l.level < LogLevel::Error),
        "{}",
        vm.log_text()
    );
    assert_clean_metric_use(&vm);
}

#[test]
fn non_utf8_header_values_do_not_break_anything() {
    let host = Host::new();
    let mut vm = host.vm(CASE_CONFIG);
    let chat = fixtures::bytes("chat.json");
    let mut call = Call::post("/v1/chat/completions", &chat_request("gpt-4o"));
    call.headers.add("x-case", &[0xff, b'a', 0xfe]);
    let out = run(&mut vm, &call, &Reply::json(200, &chat));
    out.assert_flowed();
    assert_eq!(
        requests(&host, &[("case", "_a_")]),
        1,
        "{}",
        host.metrics().dump()
    );
}

/// The ways Envoy can end an exchange; each must settle it exactly once, with the counts
/// the core computes natively for the same callbacks.
#[test]
fn settlement_happens_exactly_once_on_every_ending() {
    let chat = fixtures::bytes("chat.json");
    let sse = fixtures::bytes("chat-stream-usage.sse");
    let trailers = Headers::new().with("grpc-status", "0");
    let req = chat_request("gpt-4o");
    let stream_req = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say something about tokens."}]}"#;
    let post = |body: &[u8]| Call::post("/v1/chat/completions", body);
    let reported = Some((24, 17, 41));
    #[rustfmt::skip]
    let shapes: Vec<(&str, Call, Reply, Option<Tokens>)> = vec![
        ("json-empty-end", post(&req), Reply::json(200, &chat), reported),
        ("json-eos-on-last", post(&req), Reply::json(200, &chat).ending(Ending::OnLastChunk), reported),
        ("json-chunks", post(&req), Reply::json(200, &chat).cuts(&[10, 100, 500]), reported),
        ("json-trailers", post(&req), Reply::json(200, &chat).ending(Ending::Trailers(trailers.clone())), reported),
        ("sse-empty-end", post(stream_req), Reply::sse(&sse).cuts(&[700, 3000]), reported),
        ("sse-eos-on-last", post(stream_req), Reply::sse(&sse).cuts(&[700]).ending(Ending::OnLastChunk), reported),
        ("sse-trailers", post(stream_req), Reply::sse(&sse).cuts(&[700]).ending(Ending::Trailers(trailers.clone())), reported),
        // Cut off before its usage: the completion so far is estimated.
        ("sse-reset-midway", post(stream_req), Reply::sse(&sse[..3000]).ending(Ending::Reset), None),
        ("json-reset-midway", post(&req), Reply::json(200, &chat[..400]).ending(Ending::Reset), Some((0, 0, 0))),
        ("headers-only-response", post(&req), Reply::json(204, b""), Some((0, 0, 0))),
        ("request-reset", post(&req).cuts(&[20]).ending(Ending::Reset), Reply::json(200, &chat), Some((0, 0, 0))),
        ("request-eos-on-headers", Call::post("/v1/chat/completions", b""), Reply::json(200, &chat), reported),
        ("request-empty-end", post(&req).cuts(&[3]).ending(Ending::EmptyEnd), Reply::json(200, &chat), reported),
    ];
    for (name, call, reply, want) in shapes {
        let host = Host::new();
        let mut vm = host.vm(CASE_CONFIG);
        let out = run(&mut vm, &call, &reply);
        out.assert_flowed();
        assert_eq!(requests(&host, &[]), 1, "{name}\n{}", host.metrics().dump());
        if let Some(want) = want {
            assert_eq!(
                tokens(&host, &[]),
                want,
                "{name}\n{}",
                host.metrics().dump()
            );
        }
        let mut native = NativeVm::new(CASE_CONFIG);
        native.run(&call, &reply);
        assert_eq!(counters(&host.metrics()), native.metrics, "{name}");
        assert_clean_metric_use(&vm);
    }
}

#[test]
fn a_local_reply_is_counted_once_through_on_log() {
    // Envoy answers a request itself (here: the router found no route) with the response
    // callbacks and then on_log; the exchange is counted as a request without tokens.
    let host = Host::new();
    let mut vm = host.vm(CASE_CONFIG);
    let mut s = Stream::new(&mut vm);
    let req = chat_request("gpt-4o");
    s.request_headers(
        crate::harness::exchange::request_headers("POST", "/v1/chat/completions", req.len()),
        false,
    );
    s.request_body(&req, true);
    s.envoy_local_reply(404, "route not found");
    assert_eq!(s.client_body(), b"route not found");
    drop(s);
    assert_eq!(
        requests(&host, &[("model", "gpt-4o")]),
        1,
        "{}",
        host.metrics().dump()
    );
    assert_eq!(tokens(&host, &[]), (0, 0, 0));
}

#[test]
fn callbacks_after_settlement_change_nothing() {
    // Trailers settle; a late on_log and a second VM's traffic must not double count.
    let host = Host::new();
    let mut vm = host.vm(CASE_CONFIG);
    let chat = fixtures::bytes("chat.json");
    let req = chat_request("gpt-4o");
    let mut s = Stream::new(&mut vm);
    s.request_headers(
        crate::harness::exchange::request_headers("POST", "/v1/chat/completions", req.len()),
        false,
    );
    s.request_body(&req, true);
    s.response_headers(Reply::json(200, &chat).headers, false);
    s.response_body(&chat, false);
    s.response_trailers(Headers::new().with("x-trailer", "1"));
    assert_eq!(requests(&host, &[]), 1, "settled at the trailers");
    // A body call after the trailers (hosts should not, but must not count twice).
    s.response_body(b"", true);
    s.finish();
    drop(s);
    assert_eq!(requests(&host, &[]), 1);
    assert_eq!(tokens(&host, &[]), (24, 17, 41));
}

#[test]
fn metric_ids_are_defined_once_per_series_and_vm_and_vms_share_the_stats() {
    let host = Host::new();
    let mut workers = [host.vm(CASE_CONFIG), host.vm(CASE_CONFIG)];
    let chat = fixtures::bytes("chat.json");
    for i in 0..40 {
        let vm = &mut workers[i % 2];
        let case = ["a", "b", "c"][i % 3];
        let out = run(
            vm,
            &Call::post("/v1/chat/completions", &chat_request("gpt-4o")).header("x-case", case),
            &Reply::json(200, &chat),
        );
        out.assert_flowed();
    }
    for vm in &workers {
        assert_clean_metric_use(vm);
        // 3 cases × 5 families (requests, prompt, completion, total, duration), in each VM.
        assert_eq!(vm.define_counts().len(), 15);
    }
    let m = host.metrics();
    assert_eq!(m.sum("llm_requests_total", &[]), 40);
    assert_eq!(m.sum("llm_requests_total", &[("case", "a")]), 14);
    assert_eq!(m.sum("llm_prompt_tokens_total", &[]), 40 * 24);
    assert_eq!(m.0.stats.len(), 15, "{}", m.dump());
}

#[test]
fn cardinality_caps_fold_new_values_into_other() {
    let config = r#"{"dimensions":[{"name":"team","value":"{request.header.x-team}","max_values":2},
        {"name":"tier","value":"{request.header.x-tier}","allow":["gold"]},
        {"name":"who","value":"{request.header.x-who}","hash":true}]}"#;
    let host = Host::new();
    let mut vm = host.vm(config);
    let chat = fixtures::bytes("chat.json");
    for (team, tier) in [
        ("a", "gold"),
        ("b", "silver"),
        ("c", "gold"),
        ("a", "bronze"),
    ] {
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", &chat_request("gpt-4o"))
                .header("x-team", team)
                .header("x-tier", tier)
                .header("x-who", "alice@example.com"),
            &Reply::json(200, &chat),
        );
        out.assert_flowed();
    }
    let m = host.metrics();
    let who = tokenmeter_core::series::dimensions::subscription_id("alice@example.com");
    assert_eq!(
        m.sum("llm_requests_total", &[("team", "a"), ("tier", "gold")]),
        1,
        "{}",
        m.dump()
    );
    assert_eq!(
        m.sum("llm_requests_total", &[("team", "a"), ("tier", "other")]),
        1
    );
    assert_eq!(
        m.sum("llm_requests_total", &[("team", "b"), ("tier", "other")]),
        1
    );
    assert_eq!(
        m.sum("llm_requests_total", &[("team", "other"), ("tier", "gold")]),
        1
    );
    assert_eq!(m.sum("llm_requests_total", &[("who", who.as_str())]), 4);
    assert!(!m.dump().contains("alice"));
}

/// Teams a, b on worker 0, then c, d, a on worker 1, then e on worker 0.
fn teams_across_two_workers(workers: &mut [Vm; 2]) {
    let chat = fixtures::bytes("chat.json");
    for (w, team) in [(0, "a"), (0, "b"), (1, "c"), (1, "d"), (1, "a"), (0, "e")] {
        let out = run(
            &mut workers[w],
            &Call::post("/v1/chat/completions", &chat_request("gpt-4o")).header("x-team", team),
            &Reply::json(200, &chat),
        );
        out.assert_flowed();
    }
}

#[test]
fn caps_hold_across_vms_through_shared_data() {
    let config =
        r#"{"dimensions":[{"name":"team","value":"{request.header.x-team}","max_values":2}]}"#;
    // ngx_wasm_module shares data when told it has an shm_kv zone.
    let (host, config) = match Manners::from_env() {
        Manners::Envoy => (Host::new(), config.to_string()),
        Manners::Ngx => (
            Host::ngx(true, 256),
            config.replacen('{', r#"{"host": {"shared_data": true}, "#, 1),
        ),
    };
    let config = config.as_str();
    let mut workers = [host.vm(config), host.vm(config)];
    // Worker 0 admits a and b; worker 1 then sees c, d (folded) and a (admitted already).
    teams_across_two_workers(&mut workers);
    let m = host.metrics();
    assert_eq!(
        m.sum("llm_requests_total", &[("team", "a")]),
        2,
        "{}",
        m.dump()
    );
    assert_eq!(m.sum("llm_requests_total", &[("team", "b")]), 1);
    assert_eq!(m.sum("llm_requests_total", &[("team", "other")]), 3);
    assert_eq!(m.sum("llm_overflow_total", &[("dimension", "team")]), 3);
    assert!(!m.dump().contains("team=.=c;"));
}

/// Without a zone for shared data (ngx_wasm_module without `shm_kv`) the filter makes no
/// shared-data call, which would trap there: each worker keeps its own cap.
#[test]
fn caps_hold_per_worker_on_a_host_without_shared_data() {
    let config =
        r#"{"dimensions":[{"name":"team","value":"{request.header.x-team}","max_values":2}]}"#;
    let host = Host::ngx(false, 256);
    let mut workers = [host.vm(config), host.vm(config)];
    teams_across_two_workers(&mut workers);
    for w in &workers {
        assert!(
            w.log_text().contains("cardinality caps per VM"),
            "the start line says where caps hold\n{}",
            w.log_text()
        );
    }
    let m = host.metrics();
    let count = |team: &str| m.sum("llm_requests_total", &[("team", team)]);
    // Worker 0 admits a and b, worker 1 c and d; a and e are past their worker's cap.
    assert_eq!(
        [
            count("a"),
            count("b"),
            count("c"),
            count("d"),
            count("other")
        ],
        [1, 1, 1, 1, 2],
        "{}",
        m.dump()
    );
}
