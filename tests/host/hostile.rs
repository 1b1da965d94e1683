//! Hostile and odd traffic through the built filter: each test here is one way a client or
//! an upstream tried to break a promise the README makes (bounded counters, fail-open,
//! streams that stay streams, memory that stays bounded).

use std::io::Write as _;

use crate::harness::exchange::request_headers;
use crate::harness::fixtures;
use crate::harness::native::{counters, NativeVm};
use crate::harness::{run, Call, Ending, Host, Manners, Reply, Stream};
use serde_json::json;

const CONFIG: &str = r#"{"dimensions":[{"name":"model"},{"name":"usage_source"}]}"#;

fn chat_request(stream: bool) -> Vec<u8> {
    json!({"model": "gpt-4o", "stream": stream,
        "messages": [{"role": "user", "content": "Count these tokens."}]})
    .to_string()
    .into_bytes()
}

fn token_sum(host: &Host) -> i64 {
    let m = host.metrics();
    [
        "llm_prompt_tokens_total",
        "llm_completion_tokens_total",
        "llm_tokens_total",
        "llm_cached_prompt_tokens_total",
        "llm_reasoning_tokens_total",
        "llm_audio_prompt_tokens_total",
        "llm_audio_completion_tokens_total",
    ]
    .iter()
    .map(|f| m.sum(f, &[]))
    .sum()
}

/// Finding 6: absurd usage values are not added; the request is still counted, as
/// `usage_source="invalid"`, and `llm_invalid_usage_total` says how often.
#[test]
fn implausible_reported_usage_is_not_added_to_the_counters() {
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let usages = [
        json!({"prompt_tokens": u64::MAX, "completion_tokens": 1, "total_tokens": 2}),
        json!({"prompt_tokens": i64::MAX, "completion_tokens": i64::MAX}),
        json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 11}}),
        json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
            "completion_tokens_details": {"reasoning_tokens": 3}}),
    ];
    for usage in &usages {
        let body = json!({"model": "gpt-4o-2024-08-06", "choices": [], "usage": usage});
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", &chat_request(false)),
            &Reply::json(200, body.to_string().as_bytes()),
        );
        out.assert_flowed();
        let summary: serde_json::Value =
            serde_json::from_slice(out.access_log.as_deref().unwrap()).unwrap();
        assert_eq!(summary["source"], "invalid", "{usage}");
        assert_eq!(summary["total"], 0, "{usage}");
    }
    // The same in a stream's usage chunk.
    let sse = format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        json!({"model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
        json!({"model": "gpt-4o-2024-08-06", "choices": [],
            "usage": {"prompt_tokens": u64::MAX, "completion_tokens": u64::MAX, "total_tokens": 1}}),
    );
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", &chat_request(true)),
        &Reply::sse(sse.as_bytes()),
    );
    out.assert_flowed();
    let m = host.metrics();
    assert_eq!(token_sum(&host), 0, "{}", m.dump());
    let n = usages.len() as i64 + 1;
    assert_eq!(m.sum("llm_invalid_usage_total", &[]), n, "{}", m.dump());
    assert_eq!(
        m.sum("llm_requests_total", &[("usage_source", "invalid")]),
        n
    );
    // A plausible answer after all that is counted normally.
    let body = json!({"model": "gpt-4o-2024-08-06", "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}});
    run(
        &mut vm,
        &Call::post("/v1/chat/completions", &chat_request(false)),
        &Reply::json(200, body.to_string().as_bytes()),
    )
    .assert_flowed();
    assert_eq!(host.metrics().sum("llm_tokens_total", &[]), 10);
}

/// Finding 3: an injected stream whose body claims gzip but is not, or turns corrupt,
/// reaches the client as the upstream sent it from the failing chunk on.
#[test]
fn a_compressed_stream_that_does_not_decode_passes_as_the_upstream_sent_it() {
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let plain = fixtures::bytes("chat-stream-usage.sse");
    // Not gzip at all, whole or in pieces.
    for cuts in [vec![], vec![10, 200, 900]] {
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", &chat_request(true)),
            &Reply::sse(&plain)
                .header("content-encoding", "gzip")
                .cuts(&cuts),
        );
        out.assert_flowed();
        assert!(
            out.upstream_json()["stream_options"]["include_usage"] == true,
            "usage was injected"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.client_body),
            String::from_utf8_lossy(&plain),
            "cuts {cuts:?}"
        );
    }
    // Valid gzip that turns to garbage: the edited part ends cleanly, then the upstream's
    // bytes follow unchanged from the chunk that failed. (A sync flush leaves the deflate
    // stream at a block boundary; 0xFF there is a reserved block type, which no decoder
    // accepts.)
    let half = {
        let text = String::from_utf8_lossy(&plain);
        let mid = text[..text.len() / 2].rfind("\n\n").unwrap() + 2;
        plain[..mid].to_vec()
    };
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&half).unwrap();
    z.flush().unwrap();
    let mut corrupt = z.get_ref().clone();
    let cut = corrupt.len();
    corrupt.extend([0xFF; 8]);
    corrupt.extend((0..4000u32).map(|i| (i * 7 + 3) as u8));
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", &chat_request(true)),
        &Reply::sse(&corrupt)
            .header("content-encoding", "gzip")
            .cuts(&[cut]),
    );
    out.assert_flowed();
    assert!(
        out.client_body.ends_with(&corrupt[cut..]),
        "the upstream's bytes pass from the failing chunk on"
    );
    // The part before is a complete gzip stream of the edited (usage-free) stream's start.
    let mut d = flate2::write::GzDecoder::new(Vec::new());
    d.write_all(&out.client_body[..out.client_body.len() - (corrupt.len() - cut)])
        .unwrap();
    let head = d.finish().unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(!head.contains("\"usage\""), "{head}");
    assert!(host.metrics().sum("llm_requests_total", &[]) >= 3);
}

/// The stream the client asked for: `plain` without any usage, in `eol` framing.
fn framed(stream: &str, eol: &str) -> String {
    stream.replace("\n", eol)
}

/// Findings 4 and 5: whatever the framing and the way usage comes, an injected stream
/// reaches the client as it asked for it, and each line as soon as it is complete.
#[test]
fn injected_streams_are_edited_line_by_line_in_every_framing_and_usage_form() {
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let chunk = |content: &str, usage: &str, sp: bool| {
        let (c, k) = if sp { (": ", ", ") } else { (":", ",") };
        let mut line = format!(
            "data: {{\"id\"{c}\"c1\"{k}\"model\"{c}\"gpt-4o-2024-08-06\"{k}\"choices\"{c}[{{\"index\"{c}0{k}\"delta\"{c}{{\"content\"{c}{}}}}}]",
            serde_json::to_string(content).unwrap()
        );
        if !usage.is_empty() {
            line += &format!("{k}\"usage\"{c}{usage}");
        }
        line + "}\n\n"
    };
    let counts = r#"{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}"#;
    for eol in ["\n", "\r\n", "\r"] {
        for sp in [false, true] {
            let (c, k) = if sp { (": ", ", ") } else { (":", ",") };
            let want = framed(
                &(chunk("Hel", "", sp)
                    + &chunk("lo", "", sp)
                    + &chunk("!", "", sp)
                    + "data: [DONE]\n\n"),
                eol,
            );
            let usage_chunk = format!(
                "data: {{\"id\"{c}\"c1\"{k}\"model\"{c}\"gpt-4o-2024-08-06\"{k}\"choices\"{c}[]{k}\"usage\"{c}{counts}}}\n\n"
            );
            let forms = [
                // A separate usage-only chunk, `null` on the others.
                chunk("Hel", "null", sp)
                    + &chunk("lo", "null", sp)
                    + &chunk("!", "null", sp)
                    + &usage_chunk,
                // Usage on the last content chunk.
                chunk("Hel", "", sp) + &chunk("lo", "", sp) + &chunk("!", counts, sp),
                // Usage on every chunk.
                chunk("Hel", counts, sp) + &chunk("lo", counts, sp) + &chunk("!", counts, sp),
            ];
            for (i, form) in forms.iter().enumerate() {
                let sent = framed(&(form.clone() + "data: [DONE]\n\n"), eol);
                let out = run(
                    &mut vm,
                    &Call::post("/v1/chat/completions", &chat_request(true)),
                    &Reply::sse(sent.as_bytes()).cuts(&[7, 40, 41, 150, 151, 300]),
                );
                out.assert_flowed();
                assert_eq!(
                    String::from_utf8_lossy(&out.client_body),
                    want,
                    "form {i}, {eol:?}, spaces {sp}"
                );
            }
        }
    }
    // Labelled `application/json` but an event stream: edited all the same.
    let sent = chunk("Hi", "null", false)
        + &chunk("", "", false)
            .replace(
                "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}}]",
                "\"choices\":[]",
            )
            .replace("}\n\n", &format!(",\"usage\":{counts}}}\n\n"))
        + "data: [DONE]\n\n";
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", &chat_request(true)),
        &Reply::sse(sent.as_bytes()).header("content-type", "application/json"),
    );
    out.assert_flowed();
    assert_eq!(
        String::from_utf8_lossy(&out.client_body),
        chunk("Hi", "", false) + "data: [DONE]\n\n"
    );
    // Counted once each, with the reported usage.
    let m = host.metrics();
    assert_eq!(m.sum("llm_requests_total", &[]), 19, "{}", m.dump());

    // Never held back: each complete line is out when its callback returns.
    let mut s = Stream::new(&mut vm);
    let req = chat_request(true);
    s.request_headers(
        request_headers("POST", "/v1/chat/completions", req.len()),
        false,
    );
    s.request_body(&req, true);
    s.response_headers(Reply::sse(b"").headers.clone(), false);
    for eol in ["\n", "\r\n"] {
        let line = framed(&chunk("word", "null", false), eol);
        let before = s.client_body().len();
        s.response_body(line.as_bytes(), false);
        let sent = &s.client_body()[before..];
        assert_eq!(
            String::from_utf8_lossy(sent),
            framed(&chunk("word", "", false), eol),
            "{eol:?}"
        );
    }
    s.response_body(b"", true);
    s.finish();
}

/// Finding 1: thousands of slow clients, each with a large body in flight, cannot exhaust
/// the VM: it stays within its budget, no request fails, and once they are gone the filter
/// meters normally.
#[test]
fn thousands_of_slow_clients_cannot_exhaust_the_vm() {
    let host = Host::new();
    let mut vm = host.vm(r#"{"max_body_bytes": 983040}"#);
    let body = {
        let filler = "x".repeat(950_000);
        json!({"model": "gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": filler}]})
        .to_string()
        .into_bytes()
    };
    let pages_before = vm.memory_pages();
    for _ in 0..2_500 {
        let headers = request_headers("POST", "/v1/chat/completions", body.len());
        // Most of the body, then the client stalls.
        vm.start_stalled_request(headers, &body[..900_000]);
    }
    // The VM's memory stays near its budget (64 MiB) plus its own tables, not 2.4 GB.
    let grown = (vm.memory_pages() - pages_before) * 65536;
    assert!(grown < 200 << 20, "the VM grew {} MiB", grown >> 20);
    vm.end_open_streams();
    // Metering goes on as before.
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", &chat_request(true)),
        &Reply::sse(&fixtures::bytes("chat-stream-usage.sse")),
    );
    out.assert_flowed();
    assert!(out.upstream_json()["stream_options"]["include_usage"] == true);
    let m = host.metrics();
    assert!(m.sum("llm_over_budget_total", &[]) > 0, "{}", m.dump());
    assert!(m.sum("llm_tokens_total", &[]) > 0, "{}", m.dump());
}

/// Finding 10: the request rewrite reads keys as JSON does and never changes what a request
/// means: an escaped `stream_options` is not given a twin, and options a provider refuses go
/// as the client sent them.
#[test]
fn the_request_rewrite_never_changes_what_a_request_means() {
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let sse = fixtures::bytes("chat-stream.sse");
    for body in [
        r#"{"model":"gpt-4o","stream":true,"stream_\u006fptions":{"include_obfuscation":false},"messages":[]}"#,
        r#"{"model":"gpt-4o","stream":true,"stream_options":"x","messages":[]}"#,
        r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":"false"},"messages":[]}"#,
        r#"{"model":"gpt-4o","stream":true,"stream_options":null,"stream_options":{},"messages":[]}"#,
    ] {
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", body.as_bytes()),
            &Reply::sse(&sse),
        );
        out.assert_flowed();
        assert_eq!(
            String::from_utf8_lossy(&out.upstream_body),
            body,
            "sent as the client sent it"
        );
        assert_eq!(out.client_body, sse);
    }
    // A valid one is still rewritten, with one key.
    let body = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false},"messages":[]}"#;
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", body.as_bytes()),
        &Reply::sse(&fixtures::bytes("chat-stream-usage.sse")),
    );
    let text = String::from_utf8_lossy(&out.upstream_body).to_string();
    assert_eq!(text.matches("stream_options").count(), 1, "{text}");
    assert!(out.upstream_json()["stream_options"]["include_usage"] == true);
    assert_eq!(out.client_body, sse);
    assert_eq!(host.metrics().sum("llm_requests_total", &[]), 5);
}

/// Finding 11: per-dimension caps multiply; the series of a metric are bounded as a whole
/// (`max_series`), the widest dimension folding into `other` past it.
#[test]
fn series_are_bounded_per_metric_however_many_dimensions_clients_control() {
    let host = Host::new();
    let mut vm = host.vm(r#"{"max_series": 300, "dimensions":[
          {"name":"user","value":"{request.header.x-user}"},
          {"name":"team","value":"{request.header.x-team}"}]}"#);
    let reply = json!({"model": "gpt-4o-2024-08-06", "choices": [],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
    .to_string();
    for u in 0..30 {
        for t in 0..30 {
            run(
                &mut vm,
                &Call::post("/v1/chat/completions", &chat_request(false))
                    .header("x-user", &format!("user-{u}"))
                    .header("x-team", &format!("team-{t}")),
                &Reply::json(200, reply.as_bytes()),
            )
            .assert_flowed();
        }
    }
    let m = host.metrics();
    let series = m.find("llm_requests_total", &[]).len();
    // 300 combinations, 75 more with the widest dimension folded (`team`: 30 values against
    // 10 users by then) and `user` kept, then both folded.
    assert!(series <= 300 + 75 + 1, "{series} series");
    assert!(!m
        .find(
            "llm_requests_total",
            &[("user", "user-12"), ("team", "other")]
        )
        .is_empty());
    assert!(series >= 300, "{series} series");
    assert_eq!(
        m.sum("llm_requests_total", &[]),
        900,
        "every request counted"
    );
    assert_eq!(m.sum("llm_tokens_total", &[]), 2700);
    assert!(m.sum("llm_overflow_total", &[("dimension", "team")]) > 0);
}

/// A run of about a million spaces overflows the backtracking stack of the encodings'
/// pre-tokenizer (`\s+(?!\S)` takes one entry per character; for cl100k_base only when a
/// word follows), and `tiktoken-rs` unwraps that error: a trap, had the text reached it
/// whole. The core hands the tokenizer segments of at most 2048 bytes, so such a prompt and
/// such an answer are estimated like any other text, in both encodings, and the VM lives on.
#[test]
fn a_million_spaces_to_estimate_do_not_trap_the_vm() {
    let config = r#"{"max_body_bytes": 2097152, "max_vm_bytes": 16777216,
        "dimensions":[{"name":"model"},{"name":"usage_source"}]}"#;
    let spaces = " ".repeat(1_000_000);
    for model in ["gpt-4o", "gpt-4-turbo"] {
        let host = Host::new();
        let mut vm = host.vm(config);
        let mut native = NativeVm::new(config);
        let request = json!({"model": model, "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": format!("{spaces}word")}]})
        .to_string();
        // The answer: the same run, 2,000 spaces an event, then a word; no usage comes.
        let chunk = |content: &str| {
            let c = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"content": content}}]});
            format!("data: {c}\n\n")
        };
        let mut sse = chunk("Spaces:");
        for _ in 0..500 {
            sse.push_str(&chunk(&spaces[..2000]));
        }
        sse.push_str(&chunk("word"));
        sse.push_str("data: [DONE]\n\n");
        let cuts: Vec<usize> = (65_536..request.len()).step_by(65_536).collect();
        let call = Call::post("/v1/chat/completions", request.as_bytes()).cuts(&cuts);
        let cuts: Vec<usize> = (16_384..sse.len()).step_by(16_384).collect();
        let reply = Reply::sse(sse.as_bytes()).cuts(&cuts);
        let out = run(&mut vm, &call, &reply);
        native.run(&call, &reply);
        out.assert_flowed();
        assert_eq!(out.client_body, sse.as_bytes(), "{model}");
        let m = host.metrics();
        assert_eq!(
            m.sum("llm_requests_total", &[("usage_source", "estimated")]),
            1,
            "{model}: {}",
            m.dump()
        );
        // The run of spaces is many tokens in either encoding, none lost.
        assert!(m.sum("llm_prompt_tokens_total", &[]) > 400, "{}", m.dump());
        assert!(
            m.sum("llm_completion_tokens_total", &[]) > 400,
            "{}",
            m.dump()
        );
        assert_eq!(counters(&m), native.metrics, "{model}");
    }
}

/// A host whose `proxy_set_buffer_bytes` keeps only as many new bytes as it replaces
/// (ngx_wasm_module): the rewritten request and the edited stream still arrive whole, the
/// same as on Envoy, because longer replacements are written in two steps.
#[test]
fn rewrites_arrive_whole_on_a_host_that_truncates_buffer_replaces() {
    let line = |content: &str, usage: &str| {
        let c = json!({"id": "c1", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "delta": {"content": content}}]})
        .to_string();
        if usage.is_empty() {
            format!("data: {c}\n\n")
        } else {
            format!("data: {},\"usage\":{usage}}}\n\n", &c[..c.len() - 1])
        }
    };
    let counts = r#"{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}"#;
    let sent = line("Hel", "null")
        + &line("lo", "null")
        + &format!("data: {{\"id\":\"c1\",\"choices\":[],\"usage\":{counts}}}\n\n")
        + "data: [DONE]\n\n";
    let want = line("Hel", "") + &line("lo", "") + "data: [DONE]\n\n";
    let request = chat_request(true);
    let mut upstream = Vec::new();
    for manners in [Manners::Envoy, Manners::Ngx] {
        let host = Host::with_manners(manners);
        let mut vm = host.vm(CONFIG);
        // Cut inside lines, so that held bytes come out with a later, shorter chunk.
        for cuts in [&[][..], &[5, 30, 90, 91, 150, 200][..]] {
            let out = run(
                &mut vm,
                &Call::post("/v1/chat/completions", &request).cuts(&cuts[..cuts.len().min(2)]),
                &Reply::sse(sent.as_bytes()).cuts(cuts),
            );
            out.assert_flowed();
            let asked: serde_json::Value = serde_json::from_slice(&out.upstream_body)
                .unwrap_or_else(|e| {
                    panic!(
                        "{manners:?}: the upstream got {:?}: {e}",
                        String::from_utf8_lossy(&out.upstream_body)
                    )
                });
            assert_eq!(
                asked["stream_options"]["include_usage"], true,
                "{manners:?}"
            );
            assert_eq!(
                String::from_utf8_lossy(&out.client_body),
                want,
                "{manners:?}, cuts {cuts:?}"
            );
            upstream.push(out.upstream_body);
        }
        let m = host.metrics();
        assert_eq!(
            m.sum("llm_requests_total", &[("usage_source", "reported")]),
            2,
            "{}",
            m.dump()
        );
        assert_eq!(m.sum("llm_tokens_total", &[]), 24, "{}", m.dump());
    }
    assert!(
        upstream.windows(2).all(|w| w[0] == w[1]),
        "the same request upstream on both hosts"
    );
}

/// ngx_wasm_module without an `shm_kv` zone, with its default 256-byte metric names and
/// none of Envoy's `xds.*` or `response.code_details`: every call the filter makes there is
/// one the host answers (a trap would panic the test), the counts are exact, the labels
/// come from nginx's own properties and the access-log summary lands in `$tokenmeter`.
#[test]
fn an_nginx_host_without_shared_data_or_xds_meters_without_a_trap() {
    let config = r#"{"dimensions": [{"name": "API ID"}, {"name": "Backend ID"},
        {"name": "model"}, {"name": "team", "value": "{request.header.x-team|none}"}]}"#;
    let host = Host::ngx(false, 256);
    let mut vm = host.vm(config);
    vm.set_property(&["xds", "route_name"], b"never-read-on-nginx");
    vm.set_property(&["ngx", "proxy_host"], b"api.openai.test:443");
    let start = vm.log_text();
    assert!(start.contains("tokenmeter: host nginx"), "{start}");
    assert!(start.contains("metric names at most 242 bytes"), "{start}");
    let chat = fixtures::bytes("chat.json");
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", &chat_request(false)).header("x-team", "blue"),
        &Reply::json(200, &chat),
    );
    out.assert_flowed();
    let sse = fixtures::bytes("chat-stream-usage.sse");
    let asks = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}"#;
    let out2 = run(
        &mut vm,
        &Call::post("/v1/chat/completions", asks).header("x-team", "blue"),
        &Reply::sse(&sse).cuts(&[7, 300, 301, 1000]),
    );
    out2.assert_flowed();
    assert_eq!(out2.client_body, sse, "the stream passes byte for byte");
    let m = host.metrics();
    let labels = [
        ("api_id", "unknown"),
        ("backend_id", "api.openai.test:443"),
        ("team", "blue"),
    ];
    assert_eq!(m.sum("llm_requests_total", &labels), 2, "{}", m.dump());
    assert_eq!(m.sum("llm_tokens_total", &labels), 41 + 41, "{}", m.dump());
    assert!(!m.dump().contains("never-read"), "{}", m.dump());
    let envoys: Vec<&String> = vm
        .asked_properties()
        .iter()
        .filter(|p| p.starts_with("xds.") || *p == "response.code_details" || *p == "plugin_name")
        .collect();
    assert!(envoys.is_empty(), "asked nginx for {envoys:?}");
    for out in [&out, &out2] {
        let summary: serde_json::Value =
            serde_json::from_slice(out.access_log.as_deref().expect("$tokenmeter is set")).unwrap();
        assert_eq!(summary["total"], 41, "{summary}");
    }
    assert!(
        vm.refused_properties().is_empty(),
        "the filter set a property nginx refuses: {:?}",
        vm.refused_properties()
    );
}

/// Where `response.code_details` is missing, a reset is not an upstream error and a client
/// that hangs up is not a success: the error type comes from the status nginx logs and
/// whether the upstream answered at all (`$upstream_header_time`).
#[test]
fn errors_on_a_host_without_code_details_are_inferred_from_status_and_timing() {
    let sse = fixtures::bytes("chat-stream-usage.sse");
    let chat = fixtures::bytes("chat.json");
    let error = |status: &str| {
        Reply::json(
            status.parse().unwrap(),
            br#"{"error":{"message":"bad gateway","type":"server_error"}}"#,
        )
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Reply, &str, &[u8], &str)> = vec![
        // The user stopped the stream: nginx keeps logging the 200 it had begun with.
        ("hung-up-midway", Reply::sse(&sse[..900]).ending(Ending::Reset), "200", b"0.004", "client_cancelled"),
        ("hung-up-before", Reply::json(200, &chat).ending(Ending::Reset), "499", b"-", "client_cancelled"),
        // nginx's own 502 and 504: the upstream never sent a header.
        ("reset", error("502"), "502", b"-", "upstream_reset"),
        ("timed-out", error("504"), "504", b"", "timeout"),
        // The upstream's own 502 stays an upstream error.
        ("upstream-502", error("502"), "502", b"0.020", "upstream_error"),
    ];
    for (name, reply, code, header_time, want) in cases {
        let host = Host::ngx(false, 256);
        let mut vm = host.vm("{}");
        vm.set_property(&["response", "code"], code.as_bytes());
        vm.set_property(&["ngx", "upstream_header_time"], header_time);
        // Present in the model's store, never asked for on nginx.
        vm.set_property(&["response", "code_details"], b"via_upstream");
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", &chat_request(true)),
            &reply,
        );
        out.assert_flowed();
        let m = host.metrics();
        assert_eq!(
            m.sum("llm_errors_total", &[("error_type", want)]),
            1,
            "{name}\n{}",
            m.dump()
        );
        assert_eq!(m.sum("llm_errors_total", &[]), 1, "{name}\n{}", m.dump());
    }
}

/// ngx_wasm_module traps a metric name longer than its limit (256 bytes with the
/// `pw:NAME:` prefix). Long values are cut to a start and a hash so every name fits, two
/// values never merge, and each cut is counted; a configuration whose names cannot fit
/// at all is refused at load, naming the field to change.
#[test]
fn metric_names_fit_the_hosts_limit_without_merging_series() {
    let config = r#"{"dimensions": [{"name": "model"},
        {"name": "team", "value": "{request.header.x-team}"},
        {"name": "project", "value": "{request.header.x-project}"},
        {"name": "who", "value": "{request.header.x-who}"}]}"#;
    let host = Host::ngx(false, 256);
    let mut vm = host.vm(config);
    let chat = fixtures::bytes("chat.json");
    // Two teams that differ only past what a cut keeps.
    let team = |tail: &str| format!("{}{tail}", "t".repeat(59));
    for tail in ["alpha", "omega"] {
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", &chat_request(false))
                .header("x-team", &team(tail))
                .header("x-project", &"p".repeat(64))
                .header("x-who", &"w".repeat(64)),
            &Reply::json(200, &chat),
        );
        out.assert_flowed();
    }
    let m = host.metrics();
    let names: Vec<String> = vm.define_counts().into_keys().collect();
    for name in &names {
        assert!(
            "pw:tokenmeter:".len() + name.len() <= 256,
            "{} bytes: {name}",
            name.len()
        );
    }
    let totals: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("llm_tokens_total."))
        .collect();
    assert_eq!(totals.len(), 2, "two long values, two series: {totals:?}");
    assert_eq!(m.sum("llm_tokens_total", &[]), 82, "{}", m.dump());
    assert!(
        m.sum("llm_label_values_shortened_total", &[]) >= 2,
        "{}",
        m.dump()
    );

    let ten: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"name": "dimension_{i}", "value": "{{request.header.x-{i}}}"}}"#))
        .collect();
    let ten = format!(r#"{{"dimensions": [{}]}}"#, ten.join(","));
    let (refused, _, configured) = host.try_vm(&ten);
    assert!(!configured, "ten dimensions cannot fit 242 bytes");
    let log = refused.log_text();
    assert!(log.contains("max_metric_name_bytes"), "{log}");
    // Told the host's raised limit, the same configuration loads and meters.
    let host = Host::ngx(false, 1024);
    let raised = ten.replacen('{', r#"{"max_metric_name_bytes": 1000, "#, 1);
    let mut vm = host.vm(&raised);
    run(
        &mut vm,
        &Call::post("/v1/chat/completions", &chat_request(false)),
        &Reply::json(200, &chat),
    )
    .assert_flowed();
    assert_eq!(host.metrics().sum("llm_tokens_total", &[]), 41);
}
