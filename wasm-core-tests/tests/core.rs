//! The core's parsing, usage extraction and token counting, on recorded wire data.
//!
//! `cargo test` runs these natively; `make test-wasm` compiles the very same file to
//! `wasm32-wasip1` (the filter's target) and runs the test binary under Node's V8, the engine
//! Envoy embeds, through Node's WASI (`testkit/run-wasi.mjs`). Both builds check the same
//! expected values, so a passing pair means identical results in both.

use tokenmeter_core::body::budget::{Budget, Lease};
use tokenmeter_core::body::capture::{Capture, Captured};
use tokenmeter_core::body::jsonscan::{field_in_head, field_in_tail};
use tokenmeter_core::config::Config;
use tokenmeter_core::exchange::{Exchange, Properties, Settlement};
use tokenmeter_core::openai::api::{classify, Operation};
use tokenmeter_core::openai::usage::{from_response, Usage, UsageSource};
use tokenmeter_core::series::cardinality::{Cardinality, LocalRegistry};
use tokenmeter_core::stream::editor::StreamEditor;
use tokenmeter_core::stream::inject::request_usage;
use tokenmeter_core::stream::meter::StreamMeter;
use tokenmeter_core::stream::sse::SseParser;
use tokenmeter_core::tokens::tokenizer::Encoding;

const CHAT: &[u8] = include_bytes!("../../tests/data/chat.json");
const AZURE_CHAT: &[u8] = include_bytes!("../../tests/data/azure-chat.json");
const EMBEDDINGS: &[u8] = include_bytes!("../../tests/data/embeddings.json");
const COMPLETIONS: &[u8] = include_bytes!("../../tests/data/completions.json");
const RESPONSES: &[u8] = include_bytes!("../../tests/data/responses.json");
const ERROR: &[u8] = include_bytes!("../../tests/data/error-429.json");
const CHAT_SSE_USAGE: &[u8] = include_bytes!("../../tests/data/chat-stream-usage.sse");
const CHAT_SSE: &[u8] = include_bytes!("../../tests/data/chat-stream.sse");
const TOOLS_SSE_USAGE: &[u8] = include_bytes!("../../tests/data/chat-tools-stream-usage.sse");
const TOOLS_SSE: &[u8] = include_bytes!("../../tests/data/chat-tools-stream.sse");
const COMPLETIONS_SSE_USAGE: &[u8] =
    include_bytes!("../../tests/data/completions-stream-usage.sse");
const COMPLETIONS_SSE: &[u8] = include_bytes!("../../tests/data/completions-stream.sse");
const RESPONSES_SSE: &[u8] = include_bytes!("../../tests/data/responses-stream.sse");

/// prompt, completion and total tokens.
type Tokens = (u64, u64, u64);

fn triple(u: &Usage) -> Tokens {
    (u.prompt, u.completion, u.total)
}

#[test]
fn usage_and_model_from_every_json_response() {
    let cases: [(&[u8], &str, Tokens); 5] = [
        (CHAT, "gpt-4o-2024-08-06", (24, 17, 41)),
        (AZURE_CHAT, "gpt-4o-2024-11-20", (19, 10, 29)),
        (EMBEDDINGS, "text-embedding-3-small", (9, 0, 9)),
        (COMPLETIONS, "gpt-3.5-turbo-instruct", (5, 7, 12)),
        (RESPONSES, "gpt-4.1-2025-04-14", (37, 6, 43)),
    ];
    for (body, model, want) in cases {
        let f = from_response(Captured::Whole(body));
        assert_eq!(f.model.as_deref(), Some(model));
        let u = f.usage.expect("usage");
        assert_eq!(triple(&u), want, "{model}");
        assert_eq!(u.source, UsageSource::Reported);
        assert!(!f.error);
    }
    let chat = from_response(Captured::Whole(CHAT)).usage.unwrap();
    assert_eq!((chat.cached, chat.reasoning), (Some(0), Some(0)));
    let e = from_response(Captured::Whole(ERROR));
    assert!(e.error);
    assert_eq!(e.usage, None);
}

#[test]
fn usage_from_the_edges_of_a_body_too_large_to_keep() {
    // Sixteen 1536-dimension embeddings: far past the 256 KiB capture limit.
    let vector: Vec<String> = (0..1536)
        .map(|i| format!("{:.9}", (i as f64).sin() / 7.0))
        .collect();
    let data: Vec<String> = (0..16)
        .map(|i| {
            format!(
                r#"{{"object":"embedding","index":{i},"embedding":[{}]}}"#,
                vector.join(",")
            )
        })
        .collect();
    let body = format!(
        r#"{{"object":"list","data":[{}],"model":"text-embedding-3-large","usage":{{"prompt_tokens":123,"total_tokens":123}}}}"#,
        data.join(",")
    );
    for chunk in [1000, 4096, 65536] {
        let mut c = Capture::new(256 * 1024);
        for part in body.as_bytes().chunks(chunk) {
            c.push(part);
        }
        assert!(matches!(c.captured(), Captured::Edges { .. }));
        assert_eq!(c.total(), body.len() as u64);
        let f = from_response(c.captured());
        assert_eq!(f.model.as_deref(), Some("text-embedding-3-large"));
        assert_eq!(triple(&f.usage.unwrap()), (123, 0, 123));
    }
    let head =
        br#"{"id":"x","model":"gpt-4o","choices":[{"message":{"content":"\"model\":\"no\""}}"#;
    assert_eq!(
        field_in_head::<String>(head, "model").as_deref(),
        Some("gpt-4o")
    );
    let tail = br#"tent":"\"usage\":{}"}}],"usage":{"prompt_tokens":3,"total_tokens":3}}"#;
    assert_eq!(
        field_in_tail::<serde_json::Value>(tail, "usage").map(|u| u["prompt_tokens"].clone()),
        Some(serde_json::json!(3))
    );
}

/// Where to cut a stream: at every byte of short streams, every third byte of longer ones
/// (the test host's suite cuts every stream at every byte through the filter itself).
fn cuts(stream: &[u8]) -> impl Iterator<Item = usize> {
    let step = if stream.len() < 2500 { 1 } else { 3 };
    (0..=stream.len()).step_by(step)
}

/// Feeds a stream cut at `cuts` and returns the meter after the end.
fn meter(op: Operation, stream: &[u8], cuts: &[usize]) -> StreamMeter {
    let enc = Encoding::O200kBase;
    let mut m = StreamMeter::new(op, 1 << 20);
    let mut last = 0;
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        m.feed(&stream[last..c], enc);
        last = c;
    }
    m.finish(enc);
    m
}

#[test]
fn stream_usage_at_every_split_of_every_recorded_stream() {
    let cases: [(Operation, &[u8], &str, Tokens); 4] = [
        (
            Operation::ChatCompletions,
            CHAT_SSE_USAGE,
            "gpt-4o-2024-08-06",
            (24, 17, 41),
        ),
        (
            Operation::ChatCompletions,
            TOOLS_SSE_USAGE,
            "gpt-4o-mini-2024-07-18",
            (81, 19, 100),
        ),
        (
            Operation::Completions,
            COMPLETIONS_SSE_USAGE,
            "gpt-3.5-turbo-instruct",
            (5, 7, 12),
        ),
        (
            Operation::Responses,
            RESPONSES_SSE,
            "gpt-4.1-2025-04-14",
            (37, 6, 43),
        ),
    ];
    for (op, stream, model, want) in cases {
        for cut in cuts(stream) {
            let m = meter(op, stream, &[cut]);
            assert_eq!(m.model.as_deref(), Some(model), "{model} cut at {cut}");
            assert_eq!(
                m.usage.as_ref().map(triple),
                Some(want),
                "{model} cut at {cut}"
            );
            assert!(m.done, "{model} cut at {cut}");
            assert_eq!(m.unreadable, 0);
        }
    }
}

#[test]
fn stream_text_is_counted_when_no_usage_arrives() {
    let cases: [(Operation, &[u8], u64); 3] = [
        (Operation::ChatCompletions, CHAT_SSE, 17),
        (Operation::ChatCompletions, TOOLS_SSE, 14),
        (Operation::Completions, COMPLETIONS_SSE, 6),
    ];
    for (op, stream, want) in cases {
        for cuts in [
            vec![],
            vec![1, 700, 701],
            (1..stream.len()).step_by(13).collect(),
        ] {
            let mut m = meter(op, stream, &cuts);
            assert_eq!(m.usage, None);
            assert_eq!(m.estimated_completion(Encoding::O200kBase), want, "{op:?}");
        }
    }
}

#[test]
fn sse_events_are_the_same_however_the_bytes_arrive() {
    let whole = events(RESPONSES_SSE, &[]);
    assert_eq!(whole.len(), 14);
    assert_eq!(whole[0].0, "response.created");
    assert_eq!(whole[13].0, "response.completed");
    for cut in 0..RESPONSES_SSE.len() {
        assert_eq!(events(RESPONSES_SSE, &[cut]), whole, "cut at {cut}");
    }
    let crlf = String::from_utf8(CHAT_SSE_USAGE.to_vec())
        .unwrap()
        .replace('\n', "\r\n");
    let want = events(CHAT_SSE_USAGE, &[]);
    assert_eq!(want.len(), 21);
    for cut in (0..crlf.len()).step_by(3) {
        assert_eq!(events(crlf.as_bytes(), &[cut]), want, "CRLF cut at {cut}");
    }
}

fn events(stream: &[u8], cuts: &[usize]) -> Vec<(String, String)> {
    let mut p = SseParser::new(1 << 20);
    let mut out = Vec::new();
    let mut last = 0;
    let mut push = |e: tokenmeter_core::stream::sse::Event<'_>| {
        out.push((
            e.name.to_string(),
            String::from_utf8_lossy(e.data).into_owned(),
        ))
    };
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        p.feed(&stream[last..c], &mut push);
        last = c;
    }
    p.finish(&mut push);
    out
}

#[test]
fn token_counts_match_the_encodings() {
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(200);
    let spaceless = "aGVsbG8gd29ybGQ".repeat(400);
    let cases: [(&str, u64, u64); 8] = [
        ("hello world", 2, 2),
        (
            "Tokens are pieces of text: a word, part of a word, or punctuation.",
            17,
            17,
        ),
        ("Grüße aus Köln! 🌍 東京は晴れ", 12, 17),
        ("fn main() {\n    println!(\"{}\", 1 + 2);\n}\n", 14, 14),
        ("   \n\n\t  ", 2, 2),
        ("", 0, 0),
        (&long, 2001, 2001),
        (&spaceless, 3602, 4001),
    ];
    for (text, o200k, cl100k) in cases {
        let got = (
            Encoding::O200kBase.count(text),
            Encoding::Cl100kBase.count(text),
        );
        assert_eq!(got, (o200k, cl100k), "{:?}", text.get(..40.min(text.len())));
        #[cfg(not(target_arch = "wasm32"))]
        if text.len() <= tokenmeter_core::tokens::tokenizer::SEGMENT_BYTES {
            // Natively, the expected values are the reference tokenizer's own.
            let reference = (
                tiktoken_rs::o200k_base_singleton()
                    .encode_ordinary(text)
                    .len() as u64,
                tiktoken_rs::cl100k_base_singleton()
                    .encode_ordinary(text)
                    .len() as u64,
            );
            assert_eq!(got, reference, "{text:?}");
        }
    }
}

#[test]
fn prompt_estimates_follow_openais_accounting() {
    let chat = serde_json::json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "How are tokens counted?"}]});
    let emb = serde_json::json!({"input": ["alpha beta", "gamma"]});
    let resp = serde_json::json!({"instructions": "Be brief.", "input": "Write one sentence about tokens."});
    let enc = Encoding::O200kBase;
    use tokenmeter_core::tokens::estimate::prompt_tokens;
    assert_eq!(prompt_tokens(Operation::ChatCompletions, &chat, enc), 20);
    assert_eq!(prompt_tokens(Operation::Embeddings, &emb, enc), 3);
    assert_eq!(prompt_tokens(Operation::Responses, &resp, enc), 20);
    assert_eq!(
        prompt_tokens(
            Operation::Completions,
            &serde_json::json!({"prompt": "Say this is a test"}),
            Encoding::Cl100kBase
        ),
        5
    );
}

#[test]
fn stream_usage_is_asked_for_and_hidden_at_every_split() {
    let req = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    assert_eq!(
        request_usage(req).as_deref(),
        Some(&br#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#[..])
    );
    for (upstream, client) in [
        (CHAT_SSE_USAGE, CHAT_SSE),
        (TOOLS_SSE_USAGE, TOOLS_SSE),
        (COMPLETIONS_SSE_USAGE, COMPLETIONS_SSE),
    ] {
        for cut in cuts(upstream) {
            let mut ed = StreamEditor::new(Lease::unlimited());
            let mut out = Vec::new();
            ed.feed(&upstream[..cut], &mut out);
            ed.feed(&upstream[cut..], &mut out);
            ed.finish(&mut out);
            assert_eq!(out, client, "cut at {cut}");
        }
    }
}

#[test]
fn requests_are_classified_by_path() {
    let cases = [
        (
            "/v1/chat/completions",
            Some((Operation::ChatCompletions, None)),
        ),
        (
            "/llm/v1/completions?x=1",
            Some((Operation::Completions, None)),
        ),
        ("/embeddings/", Some((Operation::Embeddings, None))),
        (
            "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21",
            Some((Operation::ChatCompletions, Some("prod-4o"))),
        ),
        ("/openai/v1/responses", Some((Operation::Responses, None))),
        ("/v1/responses/resp_1/cancel", None),
        ("/v1/models", None),
    ];
    for (path, want) in cases {
        let got = classify("POST", path).map(|e| (e.operation, e.deployment));
        assert_eq!(got, want.map(|(o, d)| (o, d.map(str::to_string))), "{path}");
    }
    assert_eq!(classify("GET", "/v1/chat/completions"), None);
}

#[test]
fn configurations_are_validated_alike() {
    for (text, field) in [
        (r#"{"namespace":"Bad"}"#, "namespace"),
        (r#"{"dimensions":[{"name":"team"}]}"#, "dimensions[0].value"),
        (r#"{"max_body_bytes":1}"#, "max_body_bytes"),
        ("[]", "configuration"),
    ] {
        assert_eq!(
            Config::parse(text.as_bytes()).unwrap_err().field,
            field,
            "{text}"
        );
    }
    let c = Config::parse(br#"{"dimensions":[{"name":"model"},{"name":"API ID"}]}"#).unwrap();
    assert_eq!(c.label_names().collect::<Vec<_>>(), ["model", "api_id"]);
}

struct Route;

impl Properties for Route {
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        (path == ["xds", "route_name"]).then(|| b"chat-route".to_vec())
    }
}

fn settle(
    config: &Config,
    path: &str,
    request: &[u8],
    content_type: &str,
    response: &[u8],
    cut: usize,
) -> Settlement {
    let mut card = Cardinality::new(config, Box::new(LocalRegistry::default()));
    let headers = |name: &str| (name == "x-team").then(|| "blue".to_string());
    let mut ex = Exchange::start(
        config,
        &Budget::unlimited(),
        "POST",
        path,
        headers,
        &Route,
        0,
    )
    .unwrap();
    ex.on_request_body(request);
    let ct = content_type.to_string();
    ex.on_response_headers(config, Some(200), move |n: &str| {
        (n == "content-type").then(|| ct.clone())
    });
    ex.on_response_body(config, &response[..cut], 1);
    ex.on_response_body(config, &response[cut..], 2);
    ex.on_response_end();
    ex.settle(config, &Route, &mut card, 3).unwrap()
}

#[test]
fn whole_exchanges_settle_alike() {
    let config = Config::parse(
        br#"{"dimensions":[{"name":"API ID"},{"name":"model"},{"name":"usage_source"},
        {"name":"team","value":"{request.header.x-team}"}]}"#,
    )
    .unwrap();
    let req = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"What is a token?"}]}"#;
    let s = settle(
        &config,
        "/v1/chat/completions",
        req,
        "application/json",
        CHAT,
        100,
    );
    assert_eq!(
        s.labels,
        ["chat-route", "gpt-4o-2024-08-06", "reported", "blue"]
    );
    assert_eq!(triple(&s.usage.unwrap()), (24, 17, 41));
    let s = settle(
        &config,
        "/v1/chat/completions",
        req,
        "text/event-stream",
        CHAT_SSE,
        1000,
    );
    assert_eq!(
        s.labels,
        ["chat-route", "gpt-4o-2024-08-06", "estimated", "blue"]
    );
    assert_eq!(triple(&s.usage.unwrap()), (12, 17, 29));
    assert!(s.streamed);
    let points = tokenmeter_core::series::metrics::points(&config, &s);
    assert_eq!(
        points[0].name,
        "llm_requests_total.api_id=.=chat-route;.;model=.=gpt-4o-2024-08-06;.;usage_source=.=estimated;.;team=.=blue;.;status_class=.=2xx;.;"
    );
    // Requests and the three token counters, then the latency histograms.
    assert_eq!(
        points.iter().take(4).map(|p| p.value).collect::<Vec<_>>(),
        [1, 12, 17, 29]
    );
    assert!(points[4..]
        .iter()
        .all(|p| p.kind == tokenmeter_core::series::metrics::Kind::Histogram));
}

#[test]
fn gzip_bodies_are_decoded_alike() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(CHAT_SSE_USAGE).unwrap();
    let gz = enc.finish().unwrap();
    for cut in [1, 10, gz.len() / 2, gz.len() - 1] {
        let mut d = tokenmeter_core::body::decode::Decoder::new(
            tokenmeter_core::body::decode::Coding::Gzip,
        )
        .unwrap();
        let mut out = Vec::new();
        d.feed(&gz[..cut], &mut |b| out.extend_from_slice(b));
        d.feed(&gz[cut..], &mut |b| out.extend_from_slice(b));
        assert_eq!(out, CHAT_SSE_USAGE, "cut at {cut}");
        assert!(!d.failed());
    }
}
