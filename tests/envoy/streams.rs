//! End to end through the real Envoy: streamed responses counted exactly (reported or
//! injected usage), estimated when the provider reports none, compressed bodies, and
//! streams that end badly.

use std::io::Read as _;
use std::time::Duration;

use crate::common::{chat, eventually, Gateway};
use serde_json::{json, Value};

const CONFIG: &str = r#"{
  "dimensions": [
    {"name": "Operation ID"},
    {"name": "model"},
    {"name": "usage_source"},
    {"name": "case", "value": "{request.header.x-case}"}
  ],
  "stream_usage_rules": [{"path_prefix": "/legacy/", "inject": false}]
}"#;

fn stream_body(model: &str, text: &str) -> Value {
    let mut b = chat(model, text);
    b["stream"] = json!(true);
    b
}

/// The data payloads of an SSE body, as JSON (`[DONE]` left out).
fn events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("event is JSON"))
        .collect()
}

/// The usage the upstream reports for this exchange, asked for directly.
fn upstream_usage(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (f64, f64, f64) {
    let mut b = body.clone();
    b["stream_options"] = json!({"include_usage": true});
    let r = gw.post_direct(path, headers, b.to_string().as_bytes());
    let usage = events(&r.body)
        .into_iter()
        .rev()
        .find_map(|e| {
            let u = e
                .get("usage")
                .or_else(|| e.get("response").and_then(|r| r.get("usage")))?
                .clone();
            (!u.is_null()).then_some(u)
        })
        .expect("upstream reports usage");
    let n = |a: &str, b: &str| usage[a].as_u64().or(usage[b].as_u64()).unwrap() as f64;
    (
        n("prompt_tokens", "input_tokens"),
        n("completion_tokens", "output_tokens"),
        n("total_tokens", "total_tokens"),
    )
}

fn labels<'a>(case: &'a str, source: &'a str) -> [(&'a str, &'a str); 2] {
    [("case", case), ("usage_source", source)]
}

#[test]
fn client_requested_usage_is_kept_and_counted() {
    let gw = Gateway::start(CONFIG);
    let mut body = stream_body("gpt-4o", "Tell me about streams.");
    body["stream_options"] = json!({"include_usage": true});
    let r = gw.post("/v1/chat/completions", &[("x-case", "asked")], &body);
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    let usage = ev.last().unwrap()["usage"].clone();
    assert!(
        ev.last().unwrap()["choices"].as_array().unwrap().is_empty(),
        "the client keeps its usage chunk"
    );
    // What the upstream received is what the client sent.
    let sent = gw.upstream.received().last().unwrap().json();
    assert_eq!(sent, body);
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[("case", "asked")]) >= 1.0
    });
    let l = labels("asked", "reported");
    assert_eq!(
        m.sum("llm_requests_total", &l),
        1.0,
        "{}",
        m.lines_with_prefix("llm_").join("\n")
    );
    assert_eq!(
        m.sum("llm_prompt_tokens_total", &l),
        usage["prompt_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        m.sum("llm_completion_tokens_total", &l),
        usage["completion_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        m.sum("llm_tokens_total", &l),
        usage["total_tokens"].as_f64().unwrap()
    );
}

#[test]
fn injected_usage_is_counted_and_the_client_sees_the_stream_it_asked_for() {
    let gw = Gateway::start(CONFIG);
    for (case, path, body) in [
        (
            "inj-chat",
            "/v1/chat/completions",
            stream_body("gpt-4o-mini", "Explain usage injection briefly."),
        ),
        (
            "inj-tool",
            "/v1/chat/completions",
            stream_body("gpt-4o", "Call the tool."),
        ),
        (
            "inj-completions",
            "/v1/completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time", "stream": true}),
        ),
    ] {
        let mut headers = vec![("x-case", case)];
        if case == "inj-tool" {
            headers.push(("x-upstream-tool", "lookup"));
        }
        let via = gw.post(path, &headers, &body);
        assert_eq!(via.status, 200, "{case}");
        // The upstream was asked for usage, with the rest of the body untouched.
        let sent = gw.upstream.received().last().unwrap().json();
        assert_eq!(
            sent["stream_options"],
            json!({"include_usage": true}),
            "{case}"
        );
        let mut without = sent.clone();
        without.as_object_mut().unwrap().remove("stream_options");
        assert_eq!(without, body, "{case}");
        // The client gets exactly the bytes the upstream sends a client that did not ask.
        let direct = gw.post_direct(path, &headers, body.to_string().as_bytes());
        assert_eq!(
            via.text(),
            direct.text(),
            "{case}: stream differs from the one the client asked for"
        );
        assert!(!via.text().contains("\"usage\""), "{case}");
        assert_eq!(via.header("content-type"), direct.header("content-type"));
        let (p, c, t) = upstream_usage(&gw, path, &headers, &body);
        let m = eventually(&gw.envoy, |m| {
            m.sum("llm_requests_total", &[("case", case)]) >= 1.0
        });
        let l = labels(case, "reported");
        assert_eq!(
            m.sum("llm_requests_total", &l),
            1.0,
            "{case}\n{}",
            m.lines_with_prefix("llm_").join("\n")
        );
        assert_eq!(m.sum("llm_prompt_tokens_total", &l), p, "{case}");
        assert_eq!(m.sum("llm_completion_tokens_total", &l), c, "{case}");
        assert_eq!(m.sum("llm_tokens_total", &l), t, "{case}");
    }
}

#[test]
fn without_injection_streams_are_estimated_and_labelled() {
    let gw = Gateway::start(CONFIG);
    let cases = [
        ("est-english", "gpt-4o", "Please write a friendly paragraph about the history of bicycles in Europe."),
        ("est-cl100k", "gpt-4", "Short question for an older model."),
        ("est-cjk", "gpt-4o", "日本語のテキストはどのように数えられますか？ 中文也一样。"),
        ("est-code", "gpt-4o", "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{v:?}\"); }"),
        ("est-emoji", "gpt-4o-mini", "Emoji test 🎉🚀👩‍💻 with mixed text."),
    ];
    for (case, model, text) in cases {
        let body = stream_body(model, text);
        // The reply repeats the question, so the completion has the same script as the prompt.
        let headers = [("x-case", case), ("x-upstream-reply", text)];
        let r = gw.post("/legacy/v1/chat/completions", &headers, &body);
        assert_eq!(r.status, 200);
        assert_eq!(
            gw.upstream.received().last().unwrap().json(),
            body,
            "{case}: nothing injected"
        );
        let (p, c, _) = upstream_usage(&gw, "/legacy/v1/chat/completions", &headers, &body);
        let m = eventually(&gw.envoy, |m| {
            m.sum("llm_requests_total", &[("case", case)]) >= 1.0
        });
        let l = labels(case, "estimated");
        assert_eq!(
            m.sum("llm_requests_total", &l),
            1.0,
            "{case}\n{}",
            m.lines_with_prefix("llm_").join("\n")
        );
        assert_eq!(
            m.sum("llm_completion_tokens_total", &l),
            c,
            "{case}: completion estimate"
        );
        let prompt = m.sum("llm_prompt_tokens_total", &l);
        assert!(
            (prompt - p).abs() <= 3.0,
            "{case}: prompt estimate {prompt} vs reported {p}"
        );
        assert_eq!(m.sum("llm_tokens_total", &l), prompt + c, "{case}");
    }
    // A tool call streamed without usage: name and arguments are the completion.
    let body = stream_body("gpt-4o", "Use the tool please.");
    let headers = [("x-case", "est-tool"), ("x-upstream-tool", "get_weather")];
    gw.post("/legacy/v1/chat/completions", &headers, &body);
    let (_, c, _) = upstream_usage(&gw, "/legacy/v1/chat/completions", &headers, &body);
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[("case", "est-tool")]) >= 1.0
    });
    assert_eq!(
        m.sum(
            "llm_completion_tokens_total",
            &labels("est-tool", "estimated")
        ),
        c
    );
}

#[test]
fn responses_api_streams_are_exact() {
    let gw = Gateway::start(CONFIG);
    let body =
        json!({"model": "gpt-4.1", "input": "Stream a sentence about gateways.", "stream": true});
    let r = gw.post("/v1/responses", &[("x-case", "resp")], &body);
    assert_eq!(r.status, 200);
    let completed = events(&r.body)
        .into_iter()
        .find(|e| e["type"] == "response.completed")
        .unwrap();
    let u = &completed["response"]["usage"];
    assert_eq!(
        gw.upstream.received().last().unwrap().json(),
        body,
        "Responses requests are not rewritten"
    );
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[("case", "resp")]) >= 1.0
    });
    let l = [
        ("case", "resp"),
        ("usage_source", "reported"),
        ("operation_id", "responses"),
        ("model", "gpt-4.1-2025-04-14"),
    ];
    assert_eq!(
        m.sum("llm_prompt_tokens_total", &l),
        u["input_tokens"].as_f64().unwrap(),
        "{}",
        m.lines_with_prefix("llm_").join("\n")
    );
    assert_eq!(
        m.sum("llm_completion_tokens_total", &l),
        u["output_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        m.sum("llm_tokens_total", &l),
        u["total_tokens"].as_f64().unwrap()
    );
}

#[test]
fn usage_on_every_chunk_counts_once() {
    let gw = Gateway::start(CONFIG);
    let body = stream_body("gpt-4o", "vLLM style usage");
    let headers = [
        ("x-case", "every"),
        ("x-upstream-usage-in-every-chunk", "1"),
    ];
    let r = gw.post("/legacy/v1/chat/completions", &headers, &body);
    let last = events(&r.body).into_iter().last().unwrap();
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[("case", "every")]) >= 1.0
    });
    let l = labels("every", "reported");
    assert_eq!(
        m.sum("llm_tokens_total", &l),
        last["usage"]["total_tokens"].as_f64().unwrap()
    );
}

#[test]
fn gzip_responses_are_counted_exactly_and_reach_the_client_unchanged() {
    let gw = Gateway::start(CONFIG);
    let body = chat("gpt-4o", "Compressed JSON please.");
    let headers = [
        ("x-case", "gzip-json"),
        ("x-upstream-gzip", "1"),
        ("accept-encoding", "gzip"),
    ];
    let via = gw.post("/v1/chat/completions", &headers, &body);
    let direct = gw.post_direct(
        "/v1/chat/completions",
        &headers,
        body.to_string().as_bytes(),
    );
    assert_eq!(via.header("content-encoding"), Some("gzip"));
    assert_eq!(
        via.body, direct.body,
        "compressed bytes pass through untouched"
    );
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&via.body[..])
        .read_to_end(&mut plain)
        .unwrap();
    let usage = serde_json::from_slice::<Value>(&plain).unwrap()["usage"].clone();
    // A compressed stream the client asked usage for.
    let mut sbody = stream_body("gpt-4o", "Compressed stream please.");
    sbody["stream_options"] = json!({"include_usage": true});
    let sheaders = [
        ("x-case", "gzip-sse"),
        ("x-upstream-gzip", "1"),
        ("accept-encoding", "gzip"),
    ];
    let sv = gw.post("/v1/chat/completions", &sheaders, &sbody);
    let mut splain = Vec::new();
    flate2::read::GzDecoder::new(&sv.body[..])
        .read_to_end(&mut splain)
        .unwrap();
    let susage = events(&splain).last().unwrap()["usage"].clone();
    // A compressed stream whose usage the filter asked for: edited, compressed again.
    let ibody = stream_body("gpt-4o", "Compressed and injected.");
    let iheaders = [
        ("x-case", "gzip-injected"),
        ("x-upstream-gzip", "1"),
        ("accept-encoding", "gzip"),
    ];
    let iv = gw.post("/v1/chat/completions", &iheaders, &ibody);
    assert_eq!(iv.header("content-encoding"), Some("gzip"));
    let direct = gw.post_direct(
        "/v1/chat/completions",
        &iheaders,
        ibody.to_string().as_bytes(),
    );
    let gunzip = |b: &[u8]| {
        let mut out = String::new();
        flate2::read::GzDecoder::new(b)
            .read_to_string(&mut out)
            .unwrap();
        out
    };
    assert_eq!(
        gunzip(&iv.body),
        gunzip(&direct.body),
        "the client's stream, decompressed, is the one it asked for"
    );
    let (_, _, it) = upstream_usage(&gw, "/v1/chat/completions", &[], &ibody);
    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 3.0);
    assert_eq!(
        m.sum("llm_tokens_total", &labels("gzip-injected", "reported")),
        it
    );
    let l = labels("gzip-json", "reported");
    assert_eq!(
        m.sum("llm_prompt_tokens_total", &l),
        usage["prompt_tokens"].as_f64().unwrap(),
        "{}",
        m.lines_with_prefix("llm_").join("\n")
    );
    assert_eq!(
        m.sum("llm_tokens_total", &l),
        usage["total_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        m.sum("llm_tokens_total", &labels("gzip-sse", "reported")),
        susage["total_tokens"].as_f64().unwrap()
    );
}

#[test]
fn aborted_streams_are_counted_once_with_what_was_seen() {
    let gw = Gateway::start(CONFIG);
    // The upstream resets the connection after 6 events.
    let body = stream_body("gpt-4o", "This stream will be cut off by the upstream.");
    // The client sees the reset as a broken response.
    let r = tokenmeter_testkit::client::post(
        &gw.envoy.url("/v1/chat/completions"),
        &[
            ("x-case", "upstream-abort"),
            ("x-upstream-abort-after", "6"),
            ("x-upstream-delay-ms", "20"),
        ],
        body.to_string().as_bytes(),
    );
    assert!(r.is_err(), "{r:?}");
    // The client goes away after the first bytes of a slow stream.
    let req = stream_body(
        "gpt-4o",
        "This client will hang up early on a slow stream of many words.",
    );
    let n = tokenmeter_testkit::client::post_and_hang_up(
        &gw.envoy.url("/v1/chat/completions"),
        &[("x-case", "client-abort"), ("x-upstream-delay-ms", "100")],
        req.to_string().as_bytes(),
    )
    .unwrap();
    assert!(n > 0);
    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 2.0);
    for case in ["upstream-abort", "client-abort"] {
        let l = labels(case, "estimated");
        assert_eq!(
            m.sum("llm_requests_total", &[("case", case)]),
            1.0,
            "{case}\n{}",
            m.lines_with_prefix("llm_").join("\n")
        );
        assert_eq!(
            m.sum("llm_requests_total", &l),
            1.0,
            "{case}: counted with an estimate"
        );
        assert!(m.sum("llm_prompt_tokens_total", &l) > 0.0, "{case}");
    }
    assert!(
        m.sum(
            "llm_completion_tokens_total",
            &labels("upstream-abort", "estimated")
        ) > 0.0
    );
    // Settled once: no second series or double count appears later.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.metrics().sum("llm_requests_total", &[]), 2.0);
}

#[test]
fn a_request_too_large_to_hold_passes_unchanged() {
    let gw = Gateway::start(CONFIG);
    let long = "lorem ipsum ".repeat(30_000); // ~360 KB, past the 256 KiB limit
    let body = stream_body("gpt-4o", &long);
    let r = gw.post("/v1/chat/completions", &[("x-case", "huge")], &body);
    assert_eq!(r.status, 200);
    let got = gw.upstream.received().last().unwrap().json();
    assert_eq!(got, body, "not held, not rewritten");
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[("case", "huge")]) >= 1.0
    });
    let l = labels("huge", "estimated");
    assert_eq!(
        m.sum("llm_requests_total", &l),
        1.0,
        "{}",
        m.lines_with_prefix("llm_").join("\n")
    );
    // Past the limit the request is not kept whole: its prompt is estimated at four bytes a
    // token, as documented.
    let size = body.to_string().len() as f64;
    assert_eq!(m.sum("llm_prompt_tokens_total", &l), (size / 4.0).ceil());
}
