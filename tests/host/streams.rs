//! Streams through the built filter: recorded OpenAI event streams cut at every byte
//! position, stream usage asked for on the client's behalf and hidden from it again, and
//! the request body held while that decision is made.

use crate::harness::fixtures;
use crate::harness::native::{counters, NativeVm};
use crate::harness::{run, Action, Call, Ending, Headers, Host, Outcome, Reply, Stream, Vm};
use serde_json::json;

const CONFIG: &str =
    r#"{"dimensions":[{"name":"Operation ID"},{"name":"model"},{"name":"usage_source"}]}"#;

/// The request body with `stream_options.include_usage` added the way the filter adds it.
fn injected(body: &str) -> String {
    let (open, rest) = body.split_at(1);
    format!(r#"{open}"stream_options":{{"include_usage":true}},{rest}"#)
}

fn tokens(host: &Host, labels: &[(&str, &str)]) -> (i64, i64, i64) {
    let m = host.metrics();
    (
        m.sum("llm_prompt_tokens_total", labels),
        m.sum("llm_completion_tokens_total", labels),
        m.sum("llm_tokens_total", labels),
    )
}

fn assert_clean_metric_use(vm: &Vm) {
    for (name, n) in vm.define_counts() {
        assert_eq!(n, 1, "{name} defined {n} times");
    }
    assert!(
        vm.refused_metric_ops().is_empty(),
        "{:?}",
        vm.refused_metric_ops()
    );
}

/// One streamed API: the client's request, what the upstream sends once usage is asked
/// for, and what the client would have received without it.
struct StreamCase {
    path: &'static str,
    request: String,
    upstream: Vec<u8>,
    client: Vec<u8>,
    op: &'static str,
    model: &'static str,
    usage: (i64, i64, i64),
}

fn chat_case() -> StreamCase {
    StreamCase {
        path: "/v1/chat/completions",
        request: json!({"model": "gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": "What is a token?"}]})
        .to_string(),
        upstream: fixtures::bytes("chat-stream-usage.sse"),
        client: fixtures::bytes("chat-stream.sse"),
        op: "chat.completions",
        model: "gpt-4o-2024-08-06",
        usage: (24, 17, 41),
    }
}

fn tools_case() -> StreamCase {
    StreamCase {
        path: "/v1/chat/completions",
        request: json!({"model": "gpt-4o-mini", "stream": true,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}]})
        .to_string(),
        upstream: fixtures::bytes("chat-tools-stream-usage.sse"),
        client: fixtures::bytes("chat-tools-stream.sse"),
        op: "chat.completions",
        model: "gpt-4o-mini-2024-07-18",
        usage: (81, 19, 100),
    }
}

fn completions_case() -> StreamCase {
    StreamCase {
        path: "/v1/completions",
        request: json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test",
            "stream": true, "max_tokens": 7})
        .to_string(),
        upstream: fixtures::bytes("completions-stream-usage.sse"),
        client: fixtures::bytes("completions-stream.sse"),
        op: "completions",
        model: "gpt-3.5-turbo-instruct",
        usage: (5, 7, 12),
    }
}

fn crlf(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes()
}

/// Checks one injected exchange: the request held until complete and rewritten, the
/// response edited back to what the client asked for.
fn assert_injected(case: &StreamCase, out: &Outcome, what: &str) {
    out.assert_flowed();
    let up = out
        .upstream_headers
        .as_ref()
        .expect("request headers went on");
    assert_eq!(
        up.get("content-length"),
        None,
        "{what}: the request length changes"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.upstream_body),
        injected(&case.request),
        "{what}: the upstream is asked for usage"
    );
    assert_eq!(
        out.request_actions.first(),
        Some(&Action::Continue),
        "{what}"
    );
    assert_eq!(
        out.request_actions.last(),
        Some(&Action::Continue),
        "{what}"
    );
    assert!(
        out.request_actions[1..out.request_actions.len() - 1]
            .iter()
            .all(|a| *a == Action::Pause),
        "{what}: held until complete: {:?}",
        out.request_actions
    );
    assert!(
        out.response_actions.iter().all(|a| *a == Action::Continue),
        "{what}"
    );
    if out.client_body != case.client {
        panic!(
            "{what}: the client stream differs\n--- got ---\n{}\n--- want ---\n{}",
            String::from_utf8_lossy(&out.client_body),
            String::from_utf8_lossy(&case.client)
        );
    }
}

/// Every byte position of the upstream stream as a cut, on one VM; then every position of
/// the request body. Each exchange must flow, read the same, and count the same.
fn every_split(case: &StreamCase) {
    splits(case, (1..case.upstream.len()).collect());
}

/// Like [`every_split`], with the upstream stream cut at `cuts` only.
fn splits(case: &StreamCase, cuts: Vec<usize>) {
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let mut n = 0;
    for cut in cuts {
        let call = Call::post(case.path, case.request.as_bytes());
        let reply = Reply::sse(&case.upstream).cuts(&[cut]);
        let out = run(&mut vm, &call, &reply);
        assert_injected(case, &out, &format!("response cut at {cut}"));
        n += 1;
    }
    for cut in 1..case.request.len() {
        let call = Call::post(case.path, case.request.as_bytes()).cuts(&[cut]);
        let reply = Reply::sse(&case.upstream).cuts(&[cut * 7 % case.upstream.len()]);
        let out = run(&mut vm, &call, &reply);
        assert_injected(case, &out, &format!("request cut at {cut}"));
        n += 1;
    }
    let labels = [
        ("operation_id", case.op),
        ("model", case.model),
        ("usage_source", "reported"),
    ];
    let (p, c, t) = case.usage;
    assert_eq!(
        tokens(&host, &labels),
        (p * n, c * n, t * n),
        "{}",
        host.metrics().dump()
    );
    assert_eq!(host.metrics().sum("llm_requests_total", &labels), n);
    assert_clean_metric_use(&vm);
}

#[test]
fn chat_stream_usage_is_injected_and_hidden_at_every_split() {
    every_split(&chat_case());
}

#[test]
fn tool_call_stream_usage_is_injected_and_hidden_at_every_split() {
    every_split(&tools_case());
}

#[test]
fn completions_stream_usage_is_injected_and_hidden_at_every_split() {
    every_split(&completions_case());
}

#[test]
fn crlf_streams_are_edited_at_every_third_split() {
    // The same stream with CRLF line ends: every third byte, and every cut between a CR and
    // its LF (the case a CRLF stream adds).
    let mut case = chat_case();
    case.upstream = crlf(&case.upstream);
    case.client = crlf(&case.client);
    let mut cuts: Vec<usize> = (1..case.upstream.len()).step_by(3).collect();
    cuts.extend((1..case.upstream.len()).filter(|&i| case.upstream[i - 1] == b'\r'));
    cuts.sort_unstable();
    cuts.dedup();
    splits(&case, cuts);
}

#[test]
fn streams_in_many_small_chunks_and_one_byte_at_a_time() {
    let case = chat_case();
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    for step in [1, 2, 3, 5, 64, 333] {
        let cuts: Vec<usize> = (step..case.upstream.len()).step_by(step).collect();
        let req_cuts: Vec<usize> = (1..case.request.len()).step_by(step).collect();
        for ending in [Ending::EmptyEnd, Ending::OnLastChunk] {
            let out = run(
                &mut vm,
                &Call::post(case.path, case.request.as_bytes())
                    .cuts(&req_cuts)
                    .ending(ending.clone()),
                &Reply::sse(&case.upstream)
                    .cuts(&cuts)
                    .ending(ending.clone()),
            );
            assert_injected(&case, &out, &format!("step {step}, {ending:?}"));
        }
    }
    assert_eq!(tokens(&host, &[]), (24 * 12, 17 * 12, 41 * 12));
    assert_clean_metric_use(&vm);
}

#[test]
fn responses_stream_is_counted_at_every_split_and_passes_unchanged() {
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let sse = fixtures::bytes("responses-stream.sse");
    let req =
        json!({"model": "gpt-4.1", "input": "How are tokens counted?", "stream": true}).to_string();
    let mut n = 0;
    for cut in 1..sse.len() {
        let out = run(
            &mut vm,
            &Call::post("/v1/responses", req.as_bytes()),
            &Reply::sse(&sse).cuts(&[cut]),
        );
        out.assert_flowed();
        // The Responses API always reports usage: nothing is held or rewritten.
        assert!(out.request_actions.iter().all(|a| *a == Action::Continue));
        assert_eq!(out.upstream_body, req.as_bytes());
        assert_eq!(
            out.upstream_headers.as_ref().unwrap().get("content-length"),
            Some(req.len().to_string().as_str())
        );
        assert_eq!(out.client_body, sse, "cut at {cut}");
        n += 1;
    }
    let labels = [
        ("operation_id", "responses"),
        ("model", "gpt-4.1-2025-04-14"),
        ("usage_source", "reported"),
    ];
    assert_eq!(
        tokens(&host, &labels),
        (37 * n, 6 * n, 43 * n),
        "{}",
        host.metrics().dump()
    );
    assert_clean_metric_use(&vm);
}

#[test]
fn streams_that_already_ask_for_usage_pass_unchanged() {
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let sse = fixtures::bytes("chat-stream-usage.sse");
    let req = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    for cut in [1, 100, 2000, sse.len() - 1] {
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", req.as_bytes()).cuts(&[cut % req.len()]),
            &Reply::sse(&sse)
                .cuts(&[cut])
                .header("content-length", &sse.len().to_string()),
        );
        out.assert_flowed();
        assert_eq!(
            out.upstream_body,
            req.as_bytes(),
            "the body is not rewritten"
        );
        assert_eq!(
            out.client_body, sse,
            "the client gets the usage it asked for"
        );
        assert_eq!(
            out.client_headers.as_ref().unwrap().get("content-length"),
            Some(sse.len().to_string().as_str()),
            "nothing edited, the length stays"
        );
    }
    assert_eq!(
        tokens(&host, &[("usage_source", "reported")]),
        (24 * 4, 17 * 4, 41 * 4)
    );
}

#[test]
fn an_injected_response_loses_its_content_length() {
    let case = chat_case();
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let out = run(
        &mut vm,
        &Call::post(case.path, case.request.as_bytes()),
        &Reply::sse(&case.upstream).header("content-length", &case.upstream.len().to_string()),
    );
    assert_injected(&case, &out, "with a length");
    assert_eq!(
        out.client_headers.as_ref().unwrap().get("content-length"),
        None
    );
}

#[test]
fn non_streamed_chat_requests_are_held_but_not_rewritten() {
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let chat = fixtures::bytes("chat.json");
    for body in [
        json!({"model": "gpt-4o", "messages": []}).to_string(),
        json!({"model": "gpt-4o", "stream": false, "messages": []}).to_string(),
        "{not json".to_string(),
        json!([{"stream": true}]).to_string(),
    ] {
        let out = run(
            &mut vm,
            &Call::post("/v1/chat/completions", body.as_bytes()).cuts(&[3]),
            &Reply::json(200, &chat),
        );
        out.assert_flowed();
        assert_eq!(out.upstream_body, body.as_bytes(), "{body}");
        assert_eq!(out.client_body, chat);
    }
    assert_eq!(host.metrics().sum("llm_requests_total", &[]), 4);
}

#[test]
fn with_injection_off_nothing_is_held_or_rewritten() {
    let case = chat_case();
    let config = r#"{"inject_stream_usage": false, "dimensions":[{"name":"usage_source"}]}"#;
    let host = Host::new();
    let mut vm = host.vm(config);
    let mut native = NativeVm::new(config);
    let call = Call::post(case.path, case.request.as_bytes()).cuts(&[10]);
    let reply = Reply::sse(&case.client).cuts(&[500]);
    let out = run(&mut vm, &call, &reply);
    native.run(&call, &reply);
    out.assert_flowed();
    assert!(out.request_actions.iter().all(|a| *a == Action::Continue));
    assert_eq!(
        out.upstream_headers.as_ref(),
        Some(&call.headers),
        "the length stays"
    );
    assert_eq!(out.upstream_body, case.request.as_bytes());
    assert_eq!(out.client_body, case.client);
    // Without reported usage the tokens are estimated, exactly as the native core does.
    let m = host.metrics();
    assert_eq!(
        m.sum("llm_requests_total", &[("usage_source", "estimated")]),
        1,
        "{}",
        m.dump()
    );
    assert!(m.sum("llm_completion_tokens_total", &[]) > 0);
    assert_eq!(counters(&m), native.metrics);
}

#[test]
fn an_upstream_that_ignores_include_usage_is_estimated() {
    // The upstream was asked for usage but sent none (some compatible servers do).
    let case = chat_case();
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let mut native = NativeVm::new(CONFIG);
    for cut in [1, 77, 1500] {
        let call = Call::post(case.path, case.request.as_bytes());
        let reply = Reply::sse(&case.client).cuts(&[cut]);
        let out = run(&mut vm, &call, &reply);
        native.run(&call, &reply);
        out.assert_flowed();
        assert_eq!(out.client_body, case.client);
    }
    let m = host.metrics();
    assert_eq!(
        m.sum("llm_requests_total", &[("usage_source", "estimated")]),
        3,
        "{}",
        m.dump()
    );
    assert_eq!(counters(&m), native.metrics);
}

#[test]
fn a_request_larger_than_max_body_bytes_is_let_go_unchanged() {
    let config = r#"{"max_body_bytes": 8192}"#;
    let host = Host::new();
    let mut vm = host.vm(config);
    let filler = "word ".repeat(4000);
    let req = json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": filler}]})
    .to_string();
    let cuts: Vec<usize> = (1000..req.len()).step_by(1000).collect();
    let sse = fixtures::bytes("chat-stream.sse");
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", req.as_bytes()).cuts(&cuts),
        &Reply::sse(&sse),
    );
    out.assert_flowed();
    assert_eq!(out.upstream_body, req.as_bytes());
    assert_eq!(out.client_body, sse);
    // Its length says it cannot be held whole: never held at all (holding it could only
    // bring it nearer the host's buffer limit), and it keeps its length.
    assert!(
        out.request_actions.iter().all(|a| *a == Action::Continue),
        "{:?}",
        out.request_actions
    );
    let upstream = out.upstream_headers.as_ref().unwrap();
    assert_eq!(
        upstream.get("content-length"),
        Some(req.len().to_string().as_str())
    );
    assert_eq!(host.metrics().sum("llm_requests_total", &[]), 1);
}

#[test]
fn a_held_request_never_outgrows_the_hosts_buffer_limit() {
    // max_body_bytes may be set above Envoy's per-request buffer limit (1 MiB by default).
    // The filter then keeps answering Pause past that limit and Envoy turns the request
    // into a 413: the filter has failed a request it should only have metered.
    let config = r#"{"max_body_bytes": 4194304}"#;
    let host = Host::new();
    let mut vm = host.vm(config);
    let filler = "word ".repeat(300_000);
    let req = json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": filler}]})
    .to_string();
    let cuts: Vec<usize> = (65536..req.len()).step_by(65536).collect();
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", req.as_bytes()).cuts(&cuts),
        &Reply::sse(&fixtures::bytes("chat-stream-usage.sse")),
    );
    assert_eq!(
        out.local_reply.as_ref().map(|r| r.status),
        None,
        "Envoy answered the request itself"
    );
    out.assert_flowed();
}

#[test]
fn a_gzip_stream_is_edited_compressed_again_and_counted() {
    let case = chat_case();
    let gz = tokenmeter_testkit::upstream::gzip_bytes(&case.upstream);
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    for cut in [1, 10, gz.len() / 2] {
        let out = run(
            &mut vm,
            &Call::post(case.path, case.request.as_bytes()),
            &Reply::sse(&gz)
                .cuts(&[cut])
                .header("content-encoding", "gzip"),
        );
        out.assert_flowed();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&out.client_body[..]),
            &mut plain,
        )
        .unwrap();
        assert_eq!(
            plain, case.client,
            "the client's stream, decompressed, is the one it asked for"
        );
    }
    assert_eq!(
        tokens(&host, &[("usage_source", "reported")]),
        (24 * 3, 17 * 3, 41 * 3)
    );
}

#[test]
fn an_injected_stream_reaches_the_client_as_it_asked_whatever_the_upstreams_coding() {
    // Clients (the OpenAI SDKs among them) send accept-encoding: gzip. The filter asks for
    // usage on the client's behalf, but can only take the usage back out of plain bytes;
    // unless it also asks the upstream for identity, a compressing upstream's usage chunk
    // (`"choices":[]`, which some clients index into) reaches a client that never asked.
    let case = chat_case();
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let mut s = Stream::new(&mut vm);
    let body = case.request.as_bytes();
    let headers = crate::harness::exchange::request_headers("POST", case.path, body.len())
        .with("accept-encoding", "gzip, deflate");
    s.request_headers(headers, false);
    s.request_body(body, true);
    // The upstream compresses when the request allows it.
    let up = s.upstream_headers().unwrap().clone();
    let gzip = up
        .get("accept-encoding")
        .is_some_and(|v| v.contains("gzip"));
    let reply = if gzip {
        Reply::sse(&tokenmeter_testkit::upstream::gzip_bytes(&case.upstream))
            .header("content-encoding", "gzip")
    } else {
        Reply::sse(&case.upstream)
    };
    s.response_headers(reply.headers.clone(), false);
    s.response_body(&reply.body, false);
    s.response_body(&[], true);
    let received = if gzip {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(s.client_body()), &mut out)
            .unwrap();
        out
    } else {
        s.client_body().to_vec()
    };
    let asked = up.get("accept-encoding").map(str::to_string);
    let text = String::from_utf8_lossy(&received);
    assert!(
        !text.contains(r#""choices":[],"usage""#),
        "the client got the usage chunk it did not ask for (the upstream was offered {asked:?})"
    );
    assert!(received == case.client, "the client stream differs");
}

#[test]
fn a_held_request_goes_on_whole_and_rewritten_at_its_end() {
    // Checks the host's buffering against what the filter relies on: while it pauses,
    // each callback's size is everything so far, and the whole body goes on at the end.
    let case = chat_case();
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let mut s = Stream::new(&mut vm);
    let body = case.request.as_bytes();
    let headers = crate::harness::exchange::request_headers("POST", case.path, body.len());
    assert_eq!(s.request_headers(headers, false), Action::Continue);
    assert_eq!(s.upstream_headers().unwrap().get("content-length"), None);
    assert_eq!(s.request_body(&body[..10], false), Action::Pause);
    assert_eq!(s.request_body(&body[10..40], false), Action::Pause);
    assert!(s.upstream_body().is_empty());
    assert_eq!(s.request_body(&body[40..], false), Action::Pause);
    assert_eq!(s.request_body(&[], true), Action::Continue);
    assert_eq!(s.upstream_body(), injected(&case.request).as_bytes());
    s.response_headers(Reply::sse(&case.upstream).headers, false);
    s.response_body(&case.upstream, false);
    s.response_trailers(Headers::new().with("x-done", "1"));
    assert_eq!(s.client_body(), &case.client[..]);
    drop(s);
    assert_eq!(tokens(&host, &[]), case.usage);
}

#[test]
fn an_edited_stream_ending_in_trailers_loses_no_bytes() {
    // A proxy-wasm filter cannot send body bytes from the trailers callback. The editor
    // holds nothing past a line end, so when the stream's last event has no blank line and
    // the response ends with trailers (no end-of-stream body call), every byte still reaches
    // the client.
    let case = chat_case();
    let upstream = case.upstream.strip_suffix(b"\n\n").unwrap().to_vec();
    let client = case.client.strip_suffix(b"\n\n").unwrap().to_vec();
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let trailers = Ending::Trailers(Headers::new().with("x-done", "1"));
    let out = run(
        &mut vm,
        &Call::post(case.path, case.request.as_bytes()),
        &Reply::sse(&upstream).cuts(&[1000]).ending(trailers.clone()),
    );
    out.assert_flowed();
    // With an end-of-stream body call instead, the held bytes are released.
    let ended = run(
        &mut vm,
        &Call::post(case.path, case.request.as_bytes()),
        &Reply::sse(&upstream).cuts(&[1000]),
    );
    assert_eq!(ended.client_body, client, "released at the end of stream");
    assert_eq!(
        String::from_utf8_lossy(&out.client_body[out.client_body.len().saturating_sub(30)..]),
        String::from_utf8_lossy(&client[client.len() - 30..]),
        "the client's stream ends as the upstream's did"
    );
}

#[test]
fn a_held_request_ending_in_trailers_is_still_read() {
    // HTTP/2 clients may end a request with trailers: no body callback carries end of
    // stream. The filter holds chat bodies, and lets go at the trailers without reading
    // what it held, so dimensions from the request body are lost.
    let config = r#"{"dimensions":[{"name":"project","value":"{request.body.metadata.project|none}"},{"name":"User ID"}]}"#;
    let host = Host::new();
    let mut vm = host.vm(config);
    let req = json!({"model": "gpt-4o", "user": "u-1", "metadata": {"project": "apollo"},
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let out = run(
        &mut vm,
        &Call::post("/v1/chat/completions", req.as_bytes())
            .cuts(&[20])
            .ending(Ending::Trailers(Headers::new().with("x-checksum", "abc"))),
        &Reply::json(200, &fixtures::bytes("chat.json")),
    );
    out.assert_flowed();
    assert_eq!(out.upstream_body, req.as_bytes());
    let m = host.metrics();
    assert_eq!(
        m.sum(
            "llm_requests_total",
            &[("project", "apollo"), ("user_id", "u-1")]
        ),
        1,
        "{}",
        m.dump()
    );
}

/// The core is built with one feature set for the filter and natively: what the filter
/// writes (the rewritten request, the access-log summary) is byte for byte what the native
/// driver writes, JSON keys in the order they were written.
#[test]
fn the_filter_and_the_native_driver_write_the_same_bytes() {
    let case = chat_case();
    // The client's own stream options come first, in its order; usage is added after them.
    let request = r#"{"model":"gpt-4o","stream":true,"stream_options":{"zeta":1,"alpha":2},"messages":[{"role":"user","content":"What is a token?"}]}"#;
    let call = Call::post(case.path, request.as_bytes()).cuts(&[9, 60]);
    for reply in [
        Reply::sse(&case.upstream).cuts(&[100, 101, 700]),
        Reply::json(
            429,
            br#"{"error":{"message":"slow down","type":"rate_limit"}}"#,
        ),
    ] {
        let host = Host::new();
        let mut vm = host.vm(CONFIG);
        let mut native = NativeVm::new(CONFIG);
        let out = run(&mut vm, &call, &reply);
        out.assert_flowed();
        native.run(&call, &reply);
        assert_eq!(
            String::from_utf8_lossy(&out.upstream_body),
            String::from_utf8_lossy(&native.upstream_bodies[0])
        );
        assert!(
            String::from_utf8_lossy(&out.upstream_body)
                .contains(r#""stream_options":{"zeta":1,"alpha":2,"include_usage":true}"#),
            "{}",
            String::from_utf8_lossy(&out.upstream_body)
        );
        let summary = out.access_log.expect("the filter sets the summary");
        assert_eq!(
            String::from_utf8_lossy(&summary),
            String::from_utf8_lossy(&native.summaries[0])
        );
        assert!(
            summary.starts_with(br#"{"model":"#),
            "{}",
            String::from_utf8_lossy(&summary)
        );
        assert_eq!(counters(&host.metrics()), native.metrics);
    }
}
