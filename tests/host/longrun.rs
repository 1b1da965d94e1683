//! Many thousands of exchanges through one VM: the counts stay exact and the guest's
//! memory stops growing once its caches are warm.

use crate::harness::fixtures;
use crate::harness::{run, Call, Ending, Host, Reply, Vm};
use serde_json::json;

const CONFIG: &str = r#"{"dimensions":[{"name":"Operation ID"},{"name":"model"},{"name":"usage_source"},
    {"name":"team","value":"{request.header.x-team}","max_values":100},
    {"name":"User ID","hash":true}]}"#;

struct Traffic {
    chat: Vec<u8>,
    emb: Vec<u8>,
    sse: Vec<u8>,
    err: Vec<u8>,
}

/// Request `i` of a mixed workload: JSON chat, injected streams cut at varying points,
/// embeddings, errors, resets and broken bodies, from 150 teams and 1,000 users.
fn exchange(vm: &mut Vm, t: &Traffic, i: usize) {
    let team = format!("team-{}", i % 150);
    let user = format!("user-{}", i % 1000);
    let chat_req = json!({"model": "gpt-4o", "user": user,
        "messages": [{"role": "user", "content": format!("question {i}")}]})
    .to_string();
    let stream_req = json!({"model": "gpt-4o", "user": user, "stream": true,
        "messages": [{"role": "user", "content": format!("question {i}")}]})
    .to_string();
    let (call, reply) = match i % 6 {
        0 => (
            Call::post("/v1/chat/completions", chat_req.as_bytes()),
            Reply::json(200, &t.chat).cuts(&[i % t.chat.len()]),
        ),
        1 => (
            Call::post("/v1/chat/completions", stream_req.as_bytes()).cuts(&[i % 50 + 1]),
            Reply::sse(&t.sse).cuts(&[i % t.sse.len(), (i * 31) % t.sse.len()]),
        ),
        2 => (
            Call::post(
                "/v1/embeddings",
                br#"{"model":"text-embedding-3-small","input":"x"}"#,
            ),
            Reply::json(200, &t.emb),
        ),
        3 => (
            Call::post("/v1/chat/completions", chat_req.as_bytes()),
            Reply::json(429, &t.err),
        ),
        4 => (
            Call::post("/v1/chat/completions", stream_req.as_bytes()),
            Reply::sse(&t.sse[..i % t.sse.len()]).ending(Ending::Reset),
        ),
        _ => (
            Call::post("/v1/chat/completions", chat_req.as_bytes()),
            Reply::json(200, &t.chat[..t.chat.len() / 3]),
        ),
    };
    let out = run(vm, &call.header("x-team", &team), &reply);
    out.assert_flowed();
}

#[test]
fn memory_stays_bounded_over_many_thousands_of_requests() {
    let t = Traffic {
        chat: fixtures::bytes("chat.json"),
        emb: fixtures::bytes("embeddings.json"),
        sse: fixtures::bytes("chat-stream-usage.sse"),
        err: fixtures::bytes("error-429.json"),
    };
    let host = Host::new();
    let mut vm = host.vm(CONFIG);
    let start = vm.memory_pages();
    const WARM: usize = 2_000;
    const PHASE: usize = 4_000;
    for i in 0..WARM {
        exchange(&mut vm, &t, i);
    }
    let warm = vm.memory_pages();
    for i in WARM..WARM + PHASE {
        exchange(&mut vm, &t, i);
    }
    let middle = vm.memory_pages();
    for i in WARM + PHASE..WARM + 2 * PHASE {
        exchange(&mut vm, &t, i);
    }
    let end = vm.memory_pages();
    let total = WARM + 2 * PHASE;
    println!(
        "guest memory pages (64 KiB): {start} at start, {warm} after {WARM} requests, \
         {middle} after {}, {end} after {total}",
        WARM + PHASE
    );
    // The workload repeats with period 6,000 at most: a second pass that needs more memory
    // than the first means memory kept per request.
    assert_eq!(end, middle, "memory grew over the last {PHASE} requests");
    let m = host.metrics();
    assert_eq!(m.sum("llm_requests_total", &[]), total as i64);
    let every = |k: usize| (0..total).filter(|i| i % 6 == k).count() as i64;
    assert_eq!(
        m.sum("llm_prompt_tokens_total", &[("operation_id", "embeddings")]),
        9 * every(2)
    );
    // Reported usage: the JSON chats, the injected streams (41 tokens each), the
    // embeddings (9), and the resets cut after the usage chunk.
    // A reset stream still counts a usage chunk whose line is whole (the end of the stream
    // ends its last line).
    let sse = std::str::from_utf8(&t.sse).unwrap();
    let usage_chunk = sse.find(r#""choices":[],"usage""#).unwrap();
    let usage_end = usage_chunk + sse[usage_chunk..].find('\n').unwrap();
    let late_resets = (0..total)
        .filter(|i| i % 6 == 4 && i % t.sse.len() >= usage_end)
        .count() as i64;
    assert_eq!(
        m.sum("llm_tokens_total", &[("usage_source", "reported")]),
        41 * (every(0) + every(1) + late_resets) + 9 * every(2)
    );
    assert_eq!(
        m.sum(
            "llm_requests_total",
            &[("operation_id", "chat.completions")]
        ),
        total as i64 - every(2)
    );
    assert_eq!(m.sum("llm_requests_total", &[("team", "other")]), {
        // Teams past the first hundred fold into "other".
        (0..total).filter(|i| i % 150 >= 100).count() as i64
    });
    for (name, n) in vm.define_counts() {
        assert_eq!(n, 1, "{name} defined {n} times");
    }
    assert!(
        vm.refused_metric_ops().is_empty(),
        "{:?}",
        vm.refused_metric_ops()
    );
}
