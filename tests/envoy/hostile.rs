//! End to end through the real Envoy: hostile and odd traffic. Thousands of slow uploads
//! against one worker, bodies of many megabytes written as fast as the socket takes them,
//! label names and values that gateways would mangle, injected streams in every framing,
//! spacing and usage placement, compressed streams that stop decoding, and implausible usage.

use std::io::Read as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{chat, eventually, spec, Gateway};
use serde_json::{json, Value};
use tokenmeter_cli::bootstrap;
use tokenmeter_core::config::Config;
use tokenmeter_testkit::client::{self, Reply};
use tokenmeter_testkit::envoy::{self, Envoy};
use tokenmeter_testkit::prom::Exposition;
use tokenmeter_testkit::upstream::Upstream;

const CONFIG: &str = r#"{
  "dimensions": [
    {"name": "usage_source"},
    {"name": "case", "value": "{request.header.x-case}"}
  ]
}"#;

const CHAT: &str = "/v1/chat/completions";

fn stream_body(text: &str) -> Value {
    let mut b = chat("gpt-4o", text);
    b["stream"] = json!(true);
    b
}

fn with_usage(body: &Value) -> Value {
    let mut b = body.clone();
    b["stream_options"] = json!({"include_usage": true});
    b
}

/// The `data:` payloads of an event stream in any framing (LF, CR, CRLF), `[DONE]` left out.
fn payloads(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .filter(|d| d != "[DONE]")
        .collect()
}

/// The last non-null usage of a stream: (prompt, completion, total).
fn stream_usage(body: &[u8]) -> Option<(f64, f64, f64)> {
    let u = payloads(body)
        .iter()
        .rev()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|e| e.get("usage").cloned().filter(|u| !u.is_null()))?;
    let n = |k: &str| u[k].as_f64().unwrap_or(f64::NAN);
    Some((
        n("prompt_tokens"),
        n("completion_tokens"),
        n("total_tokens"),
    ))
}

/// The counters (histograms left out), for failure messages.
fn show(m: &Exposition) -> String {
    m.lines_with_prefix("llm_")
        .into_iter()
        .filter(|l| !l.contains("_bucket") && !l.contains("_ms_"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines of Envoy's log that tell of a failing Wasm VM.
fn wasm_failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("failed")
                || l.contains("unreachable")
                || l.contains("memory allocation")
                || l.contains("panicked")
                || l.contains("runtimeerror")
        })
        .collect()
}

/// Starts Envoy on the rendered bootstrap after `edit`.
fn gateway_edited(config: &str, concurrency: usize, edit: impl Fn(String) -> String) -> Gateway {
    let upstream = Upstream::start().unwrap();
    let yaml = bootstrap::render(
        &spec(config, &upstream),
        &Config::parse(config.as_bytes()).unwrap(),
    );
    Gateway {
        envoy: Envoy::start(&edit(yaml), concurrency).unwrap(),
        upstream,
    }
}

// ---------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------

const SLOW_CLIENTS: usize = 2000;
/// Each slow request announces a body the filter would hold (at most `max_body_bytes`,
/// 983040, and 960 KiB), sends all but its last kilobytes and stalls.
const SLOW_LENGTH: usize = 960_000;
const SLOW_SENT: usize = 950_000;
/// The default `max_vm_bytes`.
const VM_BYTES: usize = 64 * 1024 * 1024;

/// A streamed chat request body of exactly `len` bytes (its prompt padded with words).
fn padded_stream_body(len: usize) -> Vec<u8> {
    let base = stream_body("").to_string();
    let pad = len - base.len();
    let text = "pad ".repeat(pad / 4 + 1);
    let mut b = stream_body(&text[..pad]).to_string().into_bytes();
    b.truncate(len);
    assert_eq!(b.len(), len);
    b
}

/// What normal requests may meet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Metered exactly, the stream with its usage injected.
    Exact,
    /// While the VM's memory budget is spent: each request metered exactly (the stream
    /// injected or estimated), or counted in `llm_over_budget_total` (the documented
    /// degraded mode: copies then keep "the body's edges or nothing"; see
    /// `a_budget_spent_by_stalled_uploads_still_meters_small_requests`).
    ExactOrOverBudget,
}

/// A streamed request (labelled `{case}-stream`) and a JSON one (`{case}-json`), each
/// answered with exactly the upstream's bytes and counted once, and metered as `expect`
/// says. Returns which of the two were metered exactly.
fn check_normal_requests(gw: &Gateway, case: &str, expect: Expect) -> (bool, bool) {
    let (stream_case, json_case) = (format!("{case}-stream"), format!("{case}-json"));
    let body = stream_body("Still metered while others stall?");
    let via = gw.post(CHAT, &[("x-case", &stream_case)], &body);
    assert_eq!(via.status, 200, "{case}: {}", via.text());
    let sent = gw.upstream.last_received().unwrap().json();
    let injected = sent["stream_options"] == json!({"include_usage": true});
    let direct = gw.post_direct(CHAT, &[], body.to_string().as_bytes());
    assert_eq!(
        via.body, direct.body,
        "{case}: the stream the client asked for"
    );
    if !injected {
        assert_eq!(sent, body, "{case}: not injected, so passed on unchanged");
    }
    let asked = gw.post_direct(CHAT, &[], with_usage(&body).to_string().as_bytes());
    let (p, c, t) = stream_usage(&asked.body).unwrap();
    let plain_body = chat("gpt-4o", "A plain request.");
    let plain = gw.post(CHAT, &[("x-case", &json_case)], &plain_body);
    assert_eq!(plain.status, 200, "{case}");
    assert_eq!(
        plain.body,
        gw.post_direct(CHAT, &[], plain_body.to_string().as_bytes())
            .body,
        "{case}: the JSON answer"
    );
    let (jp, jc, jt) = crate::common::reported(&plain);
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[("case", &stream_case)]) >= 1.0
            && m.sum("llm_requests_total", &[("case", &json_case)]) >= 1.0
    });
    for c in [&stream_case, &json_case] {
        assert_eq!(
            m.sum("llm_requests_total", &[("case", c)]),
            1.0,
            "{c}: counted once\n{}",
            show(&m)
        );
    }
    let counts = |case: &str, source: &str| {
        let l = [("case", case), ("usage_source", source)];
        (
            m.sum("llm_prompt_tokens_total", &l),
            m.sum("llm_completion_tokens_total", &l),
            m.sum("llm_tokens_total", &l),
        )
    };
    let json_exact = counts(&json_case, "reported") == (jp, jc, jt);
    let stream_exact = if injected {
        counts(&stream_case, "reported") == (p, c, t)
    } else {
        // Estimated: the completion exact, the prompt by OpenAI's accounting.
        let (ep, ec, et) = counts(&stream_case, "estimated");
        ec == c && (ep - p).abs() <= 3.0 && et == ep + ec
    };
    let over = |case: &str| m.sum("llm_over_budget_total", &[("case", case)]) == 1.0;
    match expect {
        Expect::Exact => {
            assert!(injected, "{case}: usage injected: {sent}");
            assert!(
                stream_exact && json_exact,
                "{case}: metered exactly (stream {stream_exact}, JSON {json_exact}): the \
                 upstream reported {:?} and {:?}\n{}",
                (p, c, t),
                (jp, jc, jt),
                show(&m)
            );
            for c in [&stream_case, &json_case] {
                assert_eq!(
                    m.sum("llm_over_budget_total", &[("case", c)]),
                    0.0,
                    "{c}\n{}",
                    show(&m)
                );
            }
        }
        Expect::ExactOrOverBudget => {
            assert!(
                (stream_exact || over(&stream_case)) && (json_exact || over(&json_case)),
                "{case}: neither metered exactly nor counted over budget: the upstream \
                 reported {:?} and {:?}\n{}",
                (p, c, t),
                (jp, jc, jt),
                show(&m)
            );
        }
    }
    (stream_exact, json_exact)
}

/// Opens `n` stalled uploads (the headers of a streamed chat request of `SLOW_LENGTH`
/// bytes and its first `SLOW_SENT` bytes) on a few threads.
fn open_slow_clients(gw: &Gateway, n: usize) -> Vec<TcpStream> {
    let body = padded_stream_body(SLOW_LENGTH);
    let sent = &body[..SLOW_SENT];
    let addr = gw.envoy.listener;
    let threads = 8;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                s.spawn(move || {
                    (i..n)
                        .step_by(threads)
                        .map(|_| {
                            client::stalled_upload(
                                addr,
                                CHAT,
                                &[("x-case", "slow"), ("x-upstream-discard-body", "1")],
                                SLOW_LENGTH,
                                sent,
                            )
                            .expect("a slow client connects and sends")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// The sum of an Envoy stat (over its tagged forms).
fn stat(gw: &Gateway, name: &str) -> f64 {
    let text = gw
        .envoy
        .admin_get(&format!("/stats?filter=^{name}$"))
        .unwrap();
    text.lines()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to a minute) until Envoy has read at least `bytes` from its downstream
/// connections; returns what it read.
fn wait_read(gw: &Gateway, bytes: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = stat(gw, "http.ingress.downstream_cx_rx_bytes_total");
        if read >= bytes as f64 || Instant::now() > deadline {
            return read;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn thousands_of_slow_uploads_leave_metering_intact() {
    let config = r#"{
      "max_body_bytes": 983040,
      "dimensions": [
        {"name": "usage_source"},
        {"name": "case", "value": "{request.header.x-case}"}
      ]
    }"#;
    // Envoy's default circuit breakers allow 1024 upstream connections and 1024 pending
    // requests: raised, so the uploads that pass on to the upstream do not queue the others.
    let gw = gateway_edited(config, 1, |y| {
        y.replace(
            "  - name: llm_upstream\n    type: STATIC\n",
            "  - name: llm_upstream\n    type: STATIC\n    circuit_breakers: {thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}]}\n",
        )
    });
    assert!(
        wasm_failures(&gw.envoy.log()).is_empty(),
        "{}",
        gw.envoy.log()
    );
    let started = Instant::now();
    let clients = open_slow_clients(&gw, SLOW_CLIENTS);
    assert_eq!(clients.len(), SLOW_CLIENTS);
    // Wait until the single worker has read every request's headers and what followed.
    let read = wait_read(&gw, SLOW_CLIENTS * SLOW_SENT);
    let active = stat(&gw, "http.ingress.downstream_rq_active");
    eprintln!(
        "slow clients: {active} requests active, {read} bytes read after {:?}",
        started.elapsed()
    );
    let stats = gw
        .envoy
        .admin_get(
            "/stats?filter=(upstream_rq_active|downstream_rq_active|memory_allocated|over_budget)",
        )
        .unwrap();
    eprintln!("{stats}");
    // While they stall: answered and metered, and the VM did not fail.
    let during = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_normal_requests(&gw, "during", Expect::ExactOrOverBudget)
    }));
    eprintln!("slow clients: during the stall (stream, JSON) metered exactly: {during:?}");
    let log = gw.envoy.log();
    assert!(
        wasm_failures(&log).is_empty(),
        "the Wasm VM failed (normal requests metered: {}):\n{}",
        during.is_ok(),
        wasm_failures(&log).join("\n")
    );
    assert!(during.is_ok(), "requests during the stall");
    assert!(
        read >= (SLOW_CLIENTS * SLOW_SENT) as f64,
        "Envoy read every slow client's bytes: {read}"
    );
    assert_eq!(
        active, SLOW_CLIENTS as f64,
        "every slow client is a request in flight"
    );
    drop(clients);
    // Every slow client settles (it went away), and the budget is given back.
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[("case", "slow")]) >= SLOW_CLIENTS as f64
    });
    assert_eq!(
        m.sum("llm_requests_total", &[("case", "slow")]),
        SLOW_CLIENTS as f64,
        "{}",
        show(&m)
    );
    // A held body costs the budget its length: at most VM_BYTES / SLOW_LENGTH of them fit,
    // every other slow request was kept from being held.
    let over = m.sum("llm_over_budget_total", &[("case", "slow")]);
    let held_at_most = VM_BYTES / SLOW_LENGTH;
    eprintln!("slow clients: {over} over the budget");
    assert!(
        over >= (SLOW_CLIENTS - held_at_most) as f64 && over <= SLOW_CLIENTS as f64,
        "the budget held all but at most {held_at_most} off: {over} over budget\n{}",
        show(&m)
    );
    check_normal_requests(&gw, "after", Expect::Exact);
    let log = gw.envoy.log();
    assert!(
        wasm_failures(&log).is_empty(),
        "the Wasm VM failed:\n{}",
        wasm_failures(&log).join("\n")
    );
    eprintln!("slow clients: done after {:?}", started.elapsed());
}

/// The smallest budget, its request share spent by two uploads that stall: the answers of
/// small requests beside them are still read, so reported usage is counted exactly and a
/// stream's completion is estimated exactly; only the prompt of an estimated request, whose
/// body found no room, falls back to the body's size, and that request is counted over
/// budget. (Before request bodies had a share of their own, the JSON answer was counted
/// without tokens and every event of both streams was skipped.)
#[test]
fn a_budget_spent_by_stalled_uploads_still_meters_small_requests() {
    let config = r#"{
      "max_body_bytes": 524288,
      "max_vm_bytes": 1048576,
      "dimensions": [
        {"name": "usage_source"},
        {"name": "case", "value": "{request.header.x-case}"}
      ]
    }"#;
    let gw = Gateway::start_with(config, 1);
    let len = 524_288;
    let body = padded_stream_body(len);
    let _stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            client::stalled_upload(
                gw.envoy.listener,
                CHAT,
                &[("x-case", "stalled"), ("x-upstream-discard-body", "1")],
                len,
                &body[..len - 1000],
            )
            .unwrap()
        })
        .collect();
    let read = wait_read(&gw, 2 * (len - 1000));
    assert!(read >= (2 * (len - 1000)) as f64, "{read}");
    // A JSON request (its answer carries usage, 600 bytes to read), a stream that asks for
    // its usage and one that does not (then estimated: nothing can be held for injection).
    let json_body = chat("gpt-4o", "Small.");
    let asked = with_usage(&stream_body("Small."));
    let plain_stream = stream_body("Small.");
    let mut expected = Vec::new();
    for (case, body) in [
        ("small-json", &json_body),
        ("small-stream-asked", &asked),
        ("small-stream", &plain_stream),
    ] {
        let r = gw.post(CHAT, &[("x-case", case)], body);
        assert_eq!(r.status, 200, "{case}");
        let direct = gw.post_direct(CHAT, &[], body.to_string().as_bytes());
        assert_eq!(r.body, direct.body, "{case}: the client's bytes");
        let counts = if case == "small-json" {
            crate::common::reported(&r)
        } else {
            let usage = gw.post_direct(CHAT, &[], with_usage(body).to_string().as_bytes());
            stream_usage(&usage.body).unwrap()
        };
        let source = if case == "small-stream" {
            "estimated"
        } else {
            "reported"
        };
        expected.push((case, source, counts));
    }
    let m = eventually(&gw.envoy, |m| m.sum("llm_requests_total", &[]) >= 3.0);
    let mut failures = Vec::new();
    for (case, source, (p, c, t)) in expected {
        let l = [("case", case), ("usage_source", source)];
        let got = (
            m.sum("llm_requests_total", &l),
            m.sum("llm_prompt_tokens_total", &l),
            m.sum("llm_completion_tokens_total", &l),
            m.sum("llm_tokens_total", &l),
        );
        // Reported usage exact. An estimate: the completion exact (the answer was read); the
        // prompt by OpenAI's accounting (within 3) when the request body had room, and from
        // the body's size when it had none, which the over-budget counter then shows.
        let over = m.sum("llm_over_budget_total", &l);
        let ok = got.0 == 1.0
            && got.2 == c
            && if source == "estimated" {
                ((got.1 - p).abs() <= 3.0 || (over == 1.0 && got.1 > 0.0)) && got.3 == got.1 + got.2
            } else {
                got.1 == p && got.3 == t
            };
        if !ok {
            failures.push(format!(
                "{case}: counted (requests, prompt, completion, total) {got:?} as {source}, \
                 the upstream reported {:?}",
                (p, c, t)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "requests beside the stalled uploads:\n{}\n{}",
        failures.join("\n"),
        show(&m)
    );
    // No event was too large: none is counted as skipped for its size.
    assert_eq!(m.sum("llm_skipped_events_total", &[]), 0.0, "{}", show(&m));
}

// ---------------------------------------------------------------------------------------
// Large requests
// ---------------------------------------------------------------------------------------

/// A chat request of `size` bytes: a question and an inline image (base64 data).
fn image_request(size: usize, stream: bool) -> Vec<u8> {
    let shell = |data: &str| {
        json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{data}")}}
        ]}]})
        .to_string()
    };
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let n = size - shell("").len();
    let data: String = (0..n)
        .map(|i| alphabet[(i * 7 + i / 64) % 64] as char)
        .collect();
    let body = shell(&data).into_bytes();
    assert_eq!(body.len(), size);
    body
}

#[test]
fn large_requests_written_at_once_are_never_refused() {
    let gw = Gateway::start(CONFIG);
    const MIB: usize = 1024 * 1024;
    let sizes = [
        (MIB * 3 / 2, 10),
        (4 * MIB, 10),
        (8 * MIB, 10),
        (20 * MIB, 3),
    ];
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut expected = Vec::new();
    let mut reported_total = 0.0;
    for (size, tries) in sizes {
        for stream in [false, true] {
            let case = format!("{}k-{}", size / 1024, if stream { "sse" } else { "json" });
            let body = image_request(size, stream);
            for attempt in 0..tries {
                let r = client::post_raw(gw.envoy.listener, CHAT, &[("x-case", &case)], &body);
                let received = gw.upstream.take_received();
                let r = match r {
                    Ok(r) if r.status == 200 => r,
                    Ok(r) => {
                        failures.push(format!("{case} #{attempt}: status {}", r.status));
                        continue;
                    }
                    Err(e) => {
                        failures.push(format!("{case} #{attempt}: {e:#}"));
                        continue;
                    }
                };
                match received.as_slice() {
                    [one] if one.body == body => {}
                    [one] => failures.push(format!(
                        "{case} #{attempt}: the upstream received {} bytes, not the {} sent",
                        one.body.len(),
                        body.len()
                    )),
                    other => failures.push(format!(
                        "{case} #{attempt}: the upstream received {} requests",
                        other.len()
                    )),
                }
                if stream {
                    // Too large to hold: passed on unchanged, so nothing was injected and the
                    // client gets the stream it asked for, whole.
                    let text = r.text();
                    if !text.ends_with("data: [DONE]\n\n") || text.contains("\"usage\"") {
                        failures.push(format!("{case} #{attempt}: the stream {text:?}"));
                    }
                } else {
                    reported_total += crate::common::reported(&r).2;
                }
            }
            expected.push((case, tries));
        }
    }
    eprintln!("large requests: sent in {:?}", started.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let total: usize = expected.iter().map(|(_, n)| n).sum();
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[]) >= total as f64
    });
    for (case, tries) in expected {
        assert_eq!(
            m.sum("llm_requests_total", &[("case", &case)]),
            tries as f64,
            "{case}\n{}",
            show(&m)
        );
        assert!(
            m.sum("llm_tokens_total", &[("case", &case)]) > 0.0,
            "{case}\n{}",
            show(&m)
        );
    }
    // The JSON answers' usage, exactly; the streams without usage are estimated.
    assert_eq!(
        m.sum("llm_tokens_total", &[("usage_source", "reported")]),
        reported_total,
        "{}",
        show(&m)
    );
}

// ---------------------------------------------------------------------------------------
// Injected streams
// ---------------------------------------------------------------------------------------

/// One exchange whose usage the filter injects: the client's bytes, what the upstream sends
/// a client that did not ask for usage, and the usage the upstream reports when asked.
struct Injected {
    via: Reply,
    direct: Reply,
    asked: Reply,
    sent: Value,
}

fn injected(gw: &Gateway, headers: &[(&str, &str)], body: &Value) -> Injected {
    let via = gw.post(CHAT, headers, body);
    let sent = gw.upstream.last_received().unwrap().json();
    let direct = gw.post_direct(CHAT, headers, body.to_string().as_bytes());
    let asked = gw.post_direct(CHAT, headers, with_usage(body).to_string().as_bytes());
    Injected {
        via,
        direct,
        asked,
        sent,
    }
}

#[test]
fn injected_streams_are_edited_back_in_every_framing_spacing_and_placement() {
    let gw = Gateway::start(CONFIG);
    let body = stream_body("Edit this stream back to what I asked for.");
    let mut failures = Vec::new();
    let mut cases = Vec::new();
    let mut check = |case: String, headers: &[(&str, &str)]| {
        let x = injected(&gw, headers, &body);
        assert_eq!(x.via.status, 200, "{case}");
        assert_eq!(
            x.sent["stream_options"],
            json!({"include_usage": true}),
            "{case}: usage injected"
        );
        // The knobs do what they say: the stream asked for usage has it, the other none.
        assert!(x.asked.text().contains("\"usage\""), "{case}");
        assert!(!x.direct.text().contains("usage"), "{case}");
        if x.via.body != x.direct.body {
            let cut = |t: String| t.chars().take(4000).collect::<String>();
            failures.push(format!(
                "{case}: the client got\n{:?}\ninstead of\n{:?}",
                cut(x.via.text()),
                cut(x.direct.text())
            ));
        }
        cases.push((case, stream_usage(&x.asked.body).unwrap(), x));
    };
    for eol in ["lf", "cr", "crlf"] {
        for placement in ["separate", "last", "every"] {
            for spaces in ["0", "1", "2"] {
                for first in ["0", "1"] {
                    let case = format!("{eol}-{placement}-{spaces}-{first}");
                    let headers = [
                        ("x-case", case.as_str()),
                        ("x-upstream-eol", eol),
                        ("x-upstream-usage-placement", placement),
                        ("x-upstream-json-spaces", spaces),
                        ("x-upstream-usage-first", first),
                    ];
                    check(case.clone(), &headers);
                }
            }
        }
    }
    // An event larger than `max_event_bytes` (1 MiB by default): one content chunk of
    // 1.2 MB, in each placement (with `every`, the counts sit on that chunk too).
    for (eol, placement, spaces, first) in [
        ("lf", "separate", "0", "0"),
        ("crlf", "last", "1", "0"),
        ("cr", "every", "2", "1"),
        ("lf", "every", "0", "0"),
    ] {
        let case = format!("big-{eol}-{placement}-{spaces}-{first}");
        let headers = [
            ("x-case", case.as_str()),
            ("x-upstream-eol", eol),
            ("x-upstream-usage-placement", placement),
            ("x-upstream-json-spaces", spaces),
            ("x-upstream-usage-first", first),
            ("x-upstream-big-piece", "1200000"),
        ];
        check(case.clone(), &headers);
    }
    // The event stream labelled `application/json` (no content-length), in CRLF framing.
    for eol in ["lf", "crlf"] {
        let case = format!("mislabelled-{eol}");
        let headers = [
            ("x-case", case.as_str()),
            ("x-upstream-eol", eol),
            ("x-upstream-content-type", "application/json"),
        ];
        check(case.clone(), &headers);
    }
    for (case, _, x) in &cases {
        if case.starts_with("mislabelled") {
            assert_eq!(
                x.via.header("content-type"),
                Some("application/json"),
                "{case}"
            );
            assert_eq!(x.via.header("content-length"), None, "{case}");
        }
        if case.starts_with("big") {
            let longest = payloads(&x.via.body).iter().map(String::len).max();
            assert!(longest > Some(1 << 20), "{case}: an event over 1 MiB");
        }
    }
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[]) >= cases.len() as f64
    });
    for (case, (p, c, t), _) in &cases {
        let l = [("case", case.as_str()), ("usage_source", "reported")];
        let got = (
            m.sum("llm_requests_total", &[("case", case.as_str())]),
            m.sum("llm_requests_total", &l),
            m.sum("llm_prompt_tokens_total", &l),
            m.sum("llm_completion_tokens_total", &l),
            m.sum("llm_tokens_total", &l),
        );
        if got != (1.0, 1.0, *p, *c, *t) {
            failures.push(format!(
                "{case}: counted (requests, reported, prompt, completion, total) {got:?}, reported {:?}",
                (1.0, 1.0, p, c, t)
            ));
        }
    }
    assert_eq!(
        m.sum("llm_requests_total", &[]),
        cases.len() as f64,
        "{}",
        show(&m)
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Where the first event of a stream ends (after its blank line), in any framing.
fn first_event_end(raw: &[u8]) -> Option<usize> {
    [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .iter()
        .filter_map(|sep| {
            raw.windows(sep.len())
                .position(|w| w == *sep)
                .map(|i| i + sep.len())
        })
        .min()
}

/// What a prefix of a gzip stream decodes to (a stream flushed chunk by chunk decodes as
/// far as it has come).
fn gunzip_prefix(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut d = flate2::read::GzDecoder::new(raw);
    let mut buf = [0u8; 8192];
    while let Ok(n) = d.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// The upstream waits this long before each event.
const EVENT_DELAY_MS: u64 = 300;

/// One timed stream through the gateway: its failures, if its content differs from the
/// stream the client asked for or its first event came only near the end.
fn timed_case(gw: &Gateway, body: &Value, knobs: &[(&str, &str)]) -> Vec<String> {
    let case = format!(
        "timed-{}",
        knobs.iter().map(|(_, v)| *v).collect::<Vec<_>>().join("-")
    );
    let gzip = knobs.iter().any(|(k, _)| *k == "x-upstream-gzip");
    let mut headers = vec![
        ("x-case", case.as_str()),
        (
            "x-upstream-reply",
            "One two three four five six seven eight.",
        ),
    ];
    headers.extend_from_slice(knobs);
    let direct = gw.post_direct(CHAT, &headers, body.to_string().as_bytes());
    let delay_text = EVENT_DELAY_MS.to_string();
    headers.push(("x-upstream-delay-ms", delay_text.as_str()));
    let (via, arrivals) =
        client::post_timed(&gw.envoy.url(CHAT), &headers, body.to_string().as_bytes()).unwrap();
    let sent = gw
        .upstream
        .received()
        .into_iter()
        .rev()
        .find(|r| r.header("x-case") == Some(case.as_str()))
        .unwrap()
        .json();
    assert_eq!(via.status, 200, "{case}");
    assert_eq!(
        sent["stream_options"],
        json!({"include_usage": true}),
        "{case}: injected"
    );
    let decode = |raw: &[u8]| {
        if gzip {
            gunzip_prefix(raw)
        } else {
            raw.to_vec()
        }
    };
    let mut failures = Vec::new();
    let (got, want) = (decode(&via.body), decode(&direct.body));
    if got != want || want.is_empty() {
        failures.push(format!(
            "{case}: the client's stream differs from the one it asked for:\n{:?}\n{:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        ));
        return failures;
    }
    let events = String::from_utf8_lossy(&want)
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .matches("\n\n")
        .count() as u64;
    // When the client had the whole first event: the first read whose bytes (decoded)
    // contain it.
    let first = arrivals.iter().find(|(_, len)| {
        let seen = decode(&via.body[..*len]);
        first_event_end(&seen).is_some()
    });
    let first = first.map_or(Duration::MAX, |a| a.0);
    let last = arrivals.last().map_or(Duration::ZERO, |a| a.0);
    // The upstream sends event i after (i + 1) delays, so a stream passed on as it comes
    // has its first event (events - 1) delays before its last. Half of that, and at least
    // 500 ms, is the margin asked for.
    let spread = Duration::from_millis(((events - 1) * EVENT_DELAY_MS / 2).max(500));
    eprintln!(
        "{case}: {events} events, the first complete at {first:?}, the last byte at {last:?}"
    );
    if first.saturating_add(spread) > last {
        failures.push(format!(
            "{case}: the first of {events} events arrived at {first:?}, the last at {last:?} ({} reads)",
            arrivals.len()
        ));
    }
    failures
}

#[test]
fn injected_streams_are_not_held_back() {
    let gw = Gateway::start(CONFIG);
    let body = stream_body("Stream it to me, one word at a time.");
    let mut cases: Vec<Vec<(&str, &str)>> = Vec::new();
    for eol in ["lf", "cr", "crlf"] {
        for placement in ["separate", "last", "every"] {
            cases.push(vec![
                ("x-upstream-eol", eol),
                ("x-upstream-usage-placement", placement),
            ]);
        }
    }
    cases.push(vec![("x-upstream-json-spaces", "2")]);
    cases.push(vec![("x-upstream-content-type", "application/json")]);
    // Compressed: decoded, edited and compressed again, flushed chunk by chunk.
    cases.push(vec![("x-upstream-gzip", "1"), ("accept-encoding", "gzip")]);
    let failures: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .map(|knobs| {
                let (gw, body) = (&gw, &body);
                s.spawn(move || timed_case(gw, body, knobs))
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[]) >= cases.len() as f64
    });
    assert_eq!(
        m.sum("llm_requests_total", &[("usage_source", "reported")]),
        cases.len() as f64,
        "{}",
        show(&m)
    );
}

#[test]
fn compressed_streams_that_stop_decoding_reach_the_client_as_sent() {
    let gw = Gateway::start(CONFIG);
    let body = stream_body("Compressed, they say.");
    let gzip = ("accept-encoding", "gzip");
    // Claims gzip, is not: the client gets exactly what the upstream sent (with the usage
    // it was asked for: the filter could not edit it). Also in CRLF framing, and when the
    // client asked for usage itself.
    for (case, eol) in [("fake-gzip", "lf"), ("fake-gzip-crlf", "crlf")] {
        let headers = [
            ("x-case", case),
            ("x-upstream-body", "fake-gzip"),
            ("x-upstream-eol", eol),
            gzip,
        ];
        let x = injected(&gw, &headers, &body);
        assert_eq!(x.sent["stream_options"], json!({"include_usage": true}));
        assert_eq!(x.via.header("content-encoding"), Some("gzip"), "{case}");
        assert!(x.asked.text().contains("\"usage\""), "{case}");
        assert!(
            x.via.body == x.asked.body,
            "{case}: the upstream's bytes, unchanged: got\n{:?}\nsent\n{:?}",
            x.via.text(),
            x.asked.text()
        );
    }
    let headers = [
        ("x-case", "fake-gzip-asked"),
        ("x-upstream-body", "fake-gzip"),
        gzip,
    ];
    let via = gw.post(CHAT, &headers, &with_usage(&body));
    let direct = gw.post_direct(CHAT, &headers, with_usage(&body).to_string().as_bytes());
    assert_eq!(via.body, direct.body, "fake-gzip-asked");
    // Corrupt from the first chunk on: nothing was edited, every byte passes as sent.
    let headers = [
        ("x-case", "corrupt-gzip-0"),
        ("x-upstream-gzip-corrupt-after", "0"),
        gzip,
    ];
    let x = injected(&gw, &headers, &body);
    assert_eq!(x.sent["stream_options"], json!({"include_usage": true}));
    assert!(x.asked.body.starts_with(b"\x07data: "), "the knob corrupts");
    assert!(
        x.via.body == x.asked.body,
        "corrupt-gzip-0: the upstream's bytes, unchanged: got\n{:?}\nsent\n{:?}",
        x.via.text(),
        x.asked.text()
    );
    // Valid gzip for four events, then corrupt: what was edited ends as a complete gzip
    // stream, and from the failing chunk on the upstream's bytes follow unchanged.
    let headers = [
        ("x-case", "corrupt-gzip"),
        ("x-upstream-gzip-corrupt-after", "4"),
        ("x-upstream-delay-ms", "30"),
        gzip,
    ];
    let x = injected(&gw, &headers, &body);
    assert_eq!(x.sent["stream_options"], json!({"include_usage": true}));
    let sent = &x.asked.body;
    let bad = sent
        .windows(7)
        .position(|w| w == b"\x07data: ")
        .expect("the corrupt block");
    let tail = &sent[bad..];
    let got = &x.via.body;
    assert!(
        got.ends_with(tail),
        "the client's bytes end with the upstream's from the corrupt chunk on:\n{:?}",
        String::from_utf8_lossy(got)
    );
    let head = &got[..got.len() - tail.len()];
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(head)
        .read_to_string(&mut decoded)
        .expect("what was edited is a complete gzip stream");
    // The same stream, uncompressed and without usage: its first four events.
    let plain = gw
        .post_direct(CHAT, &[], body.to_string().as_bytes())
        .text();
    let four: String = plain.split_inclusive("\n\n").take(4).collect();
    assert_eq!(decoded, four, "edited: the first four events as asked for");
    let cases = [
        "fake-gzip",
        "fake-gzip-crlf",
        "fake-gzip-asked",
        "corrupt-gzip-0",
        "corrupt-gzip",
    ];
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[]) >= cases.len() as f64
    });
    for case in cases {
        assert_eq!(
            m.sum("llm_requests_total", &[("case", case)]),
            1.0,
            "{case}\n{}",
            show(&m)
        );
        // The usage was in bytes that could not be read: counted without tokens.
        assert_eq!(
            m.sum(
                "llm_requests_total",
                &[("case", case), ("usage_source", "none")]
            ),
            1.0,
            "{case}\n{}",
            show(&m)
        );
        assert_eq!(
            m.sum("llm_tokens_total", &[("case", case)]),
            0.0,
            "{case}\n{}",
            show(&m)
        );
    }
    let log = gw.envoy.log();
    assert!(wasm_failures(&log).is_empty(), "{log}");
}

// ---------------------------------------------------------------------------------------
// Implausible usage
// ---------------------------------------------------------------------------------------

#[test]
fn implausible_usage_adds_no_tokens() {
    let gw = Gateway::start(CONFIG);
    const I64_MAX: &str = "9223372036854775807";
    // (case, upstream knobs): every one reports usage no provider could.
    let invalid: [(&str, &[(&str, &str)]); 5] = [
        (
            "u64-max-prompt",
            &[("x-upstream-prompt-tokens", "18446744073709551615")],
        ),
        (
            "i64-max-twice",
            &[
                ("x-upstream-prompt-tokens", I64_MAX),
                ("x-upstream-completion-tokens", I64_MAX),
            ],
        ),
        (
            "cached-over-prompt",
            &[
                ("x-upstream-prompt-tokens", "10"),
                ("x-upstream-cached", "50"),
            ],
        ),
        (
            "reasoning-over-completion",
            &[
                ("x-upstream-completion-tokens", "5"),
                ("x-upstream-reasoning", "50"),
            ],
        ),
        (
            "over-1e8-in-all",
            &[
                ("x-upstream-prompt-tokens", "99999991"),
                ("x-upstream-completion-tokens", "10"),
            ],
        ),
    ];
    let mut counted = Vec::new();
    for (name, knobs) in invalid {
        // As a JSON answer, as a stream whose usage was injected, as one that asked for it.
        for kind in ["json", "injected", "asked"] {
            let case = format!("{name}-{kind}");
            let mut headers = vec![("x-case", case.as_str())];
            headers.extend_from_slice(knobs);
            let r = match kind {
                "json" => gw.post(CHAT, &headers, &chat("gpt-4o", "absurd")),
                "injected" => gw.post(CHAT, &headers, &stream_body("absurd")),
                _ => gw.post(CHAT, &headers, &with_usage(&stream_body("absurd"))),
            };
            assert_eq!(r.status, 200, "{case}");
            // The client gets the upstream's usage as it was, or none it did not ask for.
            let first_knob = knobs[0].1;
            match kind {
                "json" => assert_eq!(
                    r.json()["usage"]["prompt_tokens_details"]["cached_tokens"],
                    json!(if name == "cached-over-prompt" { 50 } else { 0 }),
                    "{case}"
                ),
                "injected" => assert!(!r.text().contains("usage"), "{case}: {}", r.text()),
                _ => assert!(
                    r.text().contains("\"prompt_tokens\"") && r.text().contains(first_knob),
                    "{case}: {}",
                    r.text()
                ),
            }
            counted.push(case);
        }
    }
    // Beside them, plausible ones: at the limit (10^8 in all) and ordinary.
    let at_limit = [
        ("x-case", "at-limit"),
        ("x-upstream-prompt-tokens", "99999990"),
        ("x-upstream-completion-tokens", "10"),
    ];
    let limit = gw.post(CHAT, &at_limit, &chat("gpt-4o", "plausible"));
    assert_eq!(limit.json()["usage"]["total_tokens"], json!(100_000_000));
    let ok = gw.post(CHAT, &[("x-case", "fine")], &chat("gpt-4o", "plausible"));
    let (_, _, t) = crate::common::reported(&ok);
    let total = counted.len() + 2;
    let m = eventually(&gw.envoy, |m| {
        m.sum("llm_requests_total", &[]) >= total as f64
    });
    let mut failures = Vec::new();
    for case in &counted {
        let case = case.as_str();
        let got = (
            m.sum("llm_requests_total", &[("case", case)]),
            m.sum(
                "llm_requests_total",
                &[("case", case), ("usage_source", "invalid")],
            ),
            m.sum("llm_invalid_usage_total", &[("case", case)]),
        );
        if got != (1.0, 1.0, 1.0) {
            failures.push(format!(
                "{case}: (requests, of them invalid, llm_invalid_usage_total) {got:?}"
            ));
        }
        for family in [
            "llm_prompt_tokens_total",
            "llm_completion_tokens_total",
            "llm_tokens_total",
            "llm_cached_prompt_tokens_total",
            "llm_reasoning_tokens_total",
            "llm_audio_prompt_tokens_total",
            "llm_audio_completion_tokens_total",
        ] {
            let n = m.sum(family, &[("case", case)]);
            if n != 0.0 {
                failures.push(format!("{case}: {family} {n}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), show(&m));
    let reported = |case| [("case", case), ("usage_source", "reported")];
    assert_eq!(
        m.sum("llm_tokens_total", &reported("at-limit")),
        100_000_000.0,
        "{}",
        show(&m)
    );
    assert_eq!(m.sum("llm_tokens_total", &reported("fine")), t);
    assert_eq!(
        m.sum("llm_tokens_total", &[]),
        100_000_000.0 + t,
        "{}",
        show(&m)
    );
    assert_eq!(m.sum("llm_invalid_usage_total", &[]), counted.len() as f64);
}

// ---------------------------------------------------------------------------------------
// Label names and values
// ---------------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_tokenmeter");

/// Runs the tokenmeter binary: whether it succeeded, its stdout and its stderr.
fn tokenmeter(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn label_names_that_end_with_another_are_refused_at_load() {
    let up = Upstream::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // (configuration, the field named, what the message must mention, whether Envoy loads
    // it too). Each is refused by `check-config` and `envoy-config`; one of each kind also
    // by Envoy loading the filter (each load compiles the filter: a few seconds).
    let cases: &[(&str, &str, &[&str], bool)] = &[
        (
            r#"{"dimensions": [{"name": "end_user", "value": "{request.header.x-end-user}"}, {"name": "user", "value": "{request.header.x-user}"}]}"#,
            "dimensions[1].name",
            &["\"user\"", "\"end_user\""],
            true,
        ),
        (
            r#"{"dimensions": [{"name": "user", "value": "{request.header.x-user}"}, {"name": "End User", "value": "{request.header.x-end-user}"}]}"#,
            "dimensions[1].name",
            &["\"user\"", "\"end_user\""],
            false,
        ),
        (
            r#"{"dimensions": [{"name": "x_status_class", "value": "{request.header.x-class}"}]}"#,
            "dimensions[0].name",
            &["\"x_status_class\"", "\"status_class\""],
            true,
        ),
        (
            r#"{"dimensions": [{"name": "team", "value": "blue"}, {"name": "Error Type", "value": "x"}]}"#,
            "dimensions[1].name",
            &["\"error_type\""],
            false,
        ),
        (
            r#"{"dimensions": [{"name": "model"}, {"name": "request_model"}]}"#,
            "dimensions[1].name",
            &["\"model\"", "\"request_model\""],
            true,
        ),
        (
            r#"{"dimensions": [{"name": "User ID"}, {"name": "id", "value": "x"}]}"#,
            "dimensions[1].name",
            &["\"id\"", "\"user_id\""],
            false,
        ),
        (
            r#"{"dimensions": [{"name": "s", "value": "x"}]}"#,
            "dimensions[0].name",
            &["\"s\"", "\"status_class\""],
            false,
        ),
        (
            r#"{"dimensions": [{"name": "Token Type", "value": "x"}]}"#,
            "dimensions[0].name",
            &["\"token_type\""],
            false,
        ),
        (
            r#"{"dimensions": [{"name": "drop reason", "value": "x"}]}"#,
            "dimensions[0].name",
            &["\"drop_reason\"", "\"reason\""],
            false,
        ),
        (
            r#"{"dimensions": [{"name": "team", "value": "a"}, {"name": "region", "value": "b"}, {"name": "Sub Region", "value": "c"}]}"#,
            "dimensions[2].name",
            &["\"region\"", "\"sub_region\""],
            false,
        ),
        (
            r#"{"metric_names": "otel", "dimensions": [{"name": "model"}]}"#,
            "dimensions[0].name",
            &["\"model\"", "OpenTelemetry"],
            true,
        ),
        (
            r#"{"metric_names": "otel", "dimensions": [{"name": "team", "value": "x"}, {"name": "name", "value": "x"}]}"#,
            "dimensions[1].name",
            &["\"name\"", "OpenTelemetry"],
            true,
        ),
        (
            r#"{"metric_names": "otel", "dimensions": [{"name": "response_model"}]}"#,
            "dimensions[0].name",
            &["\"response_model\"", "\"gen_ai_response_model\""],
            false,
        ),
    ];
    let upstream = up.addr.to_string();
    let wasm = envoy::wasm_path().display().to_string();
    let failures: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, (text, field, mentions, in_envoy))| {
                let path = dir.path().join(format!("refused-{i}.json"));
                std::fs::write(&path, text).unwrap();
                let (up, upstream, wasm) = (&up, &upstream, &wasm);
                s.spawn(move || {
                    let mut failures = Vec::new();
                    let expected = format!("invalid tokenmeter configuration: {field}: ");
                    let path = path.display().to_string();
                    let names = |out: &str| {
                        out.contains(&expected) && mentions.iter().all(|m| out.contains(m))
                    };
                    let (ok, _, err) = tokenmeter(&["check-config", &path]);
                    if ok || !names(&err) {
                        failures.push(format!("check-config {text}: accepted {ok}:\n{err}"));
                    }
                    let (ok, _, err) = tokenmeter(&[
                        "envoy-config",
                        "--filter-config",
                        &path,
                        "--wasm",
                        wasm,
                        "--listen",
                        "127.0.0.1:0",
                        "--admin",
                        "0",
                        "--upstream",
                        upstream,
                    ]);
                    if ok || !names(&err) {
                        failures.push(format!("envoy-config {text}: rendered {ok}:\n{err}"));
                    }
                    // Envoy loading the filter with it (rendered with the default
                    // configuration's tags: the filter must be what refuses it).
                    if *in_envoy {
                        let yaml = bootstrap::render(&spec(text, up), &Config::default());
                        let (ok, out) = envoy::validate(&yaml).unwrap();
                        if ok || !out.contains(expected.trim_end()) {
                            failures.push(format!("Envoy {text}: accepted {ok}:\n{out}"));
                        }
                    }
                    failures
                })
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One sample of a Prometheus text exposition, read strictly.
#[derive(Debug)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Reads one sample line by the Prometheus text format: a metric name
/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, optional `{name="value",...}` with label names
/// `[a-zA-Z_][a-zA-Z0-9_]*` and values escaped only as `\\`, `\"`, `\n`, a space, a value and
/// an optional timestamp.
fn parse_series(line: &str) -> Result<Series, String> {
    let b = line.as_bytes();
    let ident = |at: usize, colon: bool| {
        let mut i = at;
        while let Some(&c) = b.get(i) {
            let ok = c.is_ascii_alphabetic()
                || c == b'_'
                || (colon && c == b':')
                || (i > at && c.is_ascii_digit());
            if !ok {
                break;
            }
            i += 1;
        }
        i
    };
    let end = ident(0, true);
    if end == 0 {
        return Err("no metric name".into());
    }
    let name = line[..end].to_string();
    let mut i = end;
    let mut labels: Vec<(String, String)> = Vec::new();
    if b.get(i) == Some(&b'{') {
        i += 1;
        loop {
            if b.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            let start = i;
            i = ident(start, false);
            if i == start {
                return Err(format!("no label name at {start}"));
            }
            let label = line[start..i].to_string();
            if b.get(i) != Some(&b'=') || b.get(i + 1) != Some(&b'"') {
                return Err(format!("label {label} without =\""));
            }
            i += 2;
            let mut value = String::new();
            loop {
                match b.get(i) {
                    None => return Err(format!("label {label}: unterminated value")),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        match b.get(i + 1) {
                            Some(b'\\') => value.push('\\'),
                            Some(b'"') => value.push('"'),
                            Some(b'n') => value.push('\n'),
                            _ => return Err(format!("label {label}: bad escape")),
                        }
                        i += 2;
                        continue;
                    }
                    Some(_) => {
                        let ch = line[i..].chars().next().unwrap();
                        value.push(ch);
                        i += ch.len_utf8();
                        continue;
                    }
                }
            }
            i += 1;
            if labels.iter().any(|(l, _)| *l == label) {
                return Err(format!("label {label} twice"));
            }
            labels.push((label, value));
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err(format!("junk after label value at {i}")),
            }
        }
    }
    if b.get(i) != Some(&b' ') {
        return Err("no space before the value".into());
    }
    let mut rest = line[i + 1..].split(' ');
    let value = match rest.next() {
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some("NaN") => f64::NAN,
        Some(v) => v.parse().map_err(|e| format!("value {v:?}: {e}"))?,
        None => return Err("no value".into()),
    };
    if let Some(ts) = rest.next() {
        ts.parse::<i64>()
            .map_err(|e| format!("timestamp {ts:?}: {e}"))?;
    }
    if rest.next().is_some() {
        return Err("junk after the value".into());
    }
    Ok(Series {
        name,
        labels,
        value,
    })
}

/// Label values sent and what they must come out as: trailing dots become `_`
/// (Envoy would drop them), characters outside the kept set become `_`, values are cut to 64
/// characters, an empty one is `unknown`; all other values as sent.
const LABEL_VALUES: &[(&str, &str)] = &[
    (".", "_"),
    ("..", "__"),
    ("a.", "a_"),
    ("a", "a"),
    (".a", ".a"),
    ("a..b", "a..b"),
    ("a b", "a b"),
    ("a:b/c@d+e-f_g", "a:b/c@d+e-f_g"),
    ("x;.;y=.=z", "x_._y_._z"),
    ("alice", "alice"),
    (
        "0123456789012345678901234567890123456789012345678901234567890123456789",
        "0123456789012345678901234567890123456789012345678901234567890123",
    ),
    ("", "unknown"),
];

/// More label values, which only a JSON body can carry (HTTP trims header values and
/// ASCII-only clients refuse others). Spaces are kept where they are; a value of spaces
/// only counts as missing (`unknown`, as the empty one).
const BODY_LABEL_VALUES: &[(&str, &str)] = &[
    ("a ", "a "),
    (" a", " a"),
    ("a. ", "a. "),
    (". .", ". _"),
    ("x\ty", "x_y"),
    ("éa", "_a"),
    ("a\u{0}b\nc", "a_b_c"),
    ("\"q\"", "_q_"),
];

/// The labels OpenTelemetry naming puts before the dimensions.
const OTEL_LABELS: [&str; 4] = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
];

/// An accepted configuration, the traffic sent through it and what its series must carry.
struct LabelCase {
    name: &'static str,
    config: &'static str,
    namespace: &'static str,
    otel: bool,
    /// The labels of the configured dimensions, in order, as `check-config` lists them.
    dims: &'static [&'static str],
    /// The label that carries `LABEL_VALUES`: from the `x-user` header, or with
    /// `values_in_body` from the request body's `user` (then also `BODY_LABEL_VALUES`).
    user: &'static str,
    values_in_body: bool,
    /// Every value each other dimension may take.
    values: &'static [(&'static str, &'static [&'static str])],
}

const LABEL_CASES: &[LabelCase] = &[
    LabelCase {
        name: "tokenmeter names",
        config: r#"{"dimensions": [
            {"name": "user", "value": "{request.header.x-user}"},
            {"name": "team", "value": "{request.header.x-team|none}"},
            {"name": "model"},
            {"name": "usage_source"},
            {"name": "Operation ID"},
            {"name": "a", "value": "{request.header.x-a|a.}"}
        ]}"#,
        namespace: "llm",
        otel: false,
        dims: &["user", "team", "model", "usage_source", "operation_id", "a"],
        user: "user",
        values_in_body: false,
        values: &[
            ("team", &["blue", "none"]),
            ("model", &["gpt-4o-2024-08-06", "gpt-4o"]),
            ("usage_source", &["reported", "none"]),
            ("operation_id", &["chat.completions"]),
            ("a", &["a_"]),
        ],
    },
    LabelCase {
        name: "OpenTelemetry names",
        config: r#"{"metric_names": "otel", "dimensions": [
            {"name": "user", "value": "{request.header.x-user}"},
            {"name": "team", "value": "{request.header.x-team|none}"}
        ]}"#,
        namespace: "llm",
        otel: true,
        dims: &["user", "team"],
        user: "user",
        values_in_body: false,
        values: &[("team", &["blue", "none"])],
    },
    LabelCase {
        name: "a longer name alone, a shorter one that ends no other",
        config: r#"{"namespace": "gw", "dimensions": [
            {"name": "End User", "value": "{request.header.x-user}"},
            {"name": "status", "value": "v1."},
            {"name": "title", "value": "{request.body.metadata.title|none}"}
        ]}"#,
        namespace: "gw",
        otel: false,
        dims: &["end_user", "status", "title"],
        user: "end_user",
        values_in_body: false,
        values: &[("status", &["v1_"]), ("title", &["Dr_"])],
    },
    LabelCase {
        name: "values from the body",
        config: r#"{"namespace": "body", "dimensions": [
            {"name": "User ID"},
            {"name": "team", "value": "{request.header.x-team|none}"}
        ]}"#,
        namespace: "body",
        otel: false,
        dims: &["user_id", "team"],
        user: "user_id",
        values_in_body: true,
        values: &[("team", &["blue", "none"])],
    },
];

/// A family's series: the family, its extra label (if any) and whether it carries the
/// dimensions; histograms as `_bucket` (with `le`), `_sum` and `_count`.
fn expected_families(c: &LabelCase) -> Vec<(String, Option<&'static str>, bool)> {
    let ns = c.namespace;
    let mut counters: Vec<(&str, Option<&'static str>)> = vec![
        ("requests_total", Some("status_class")),
        ("errors_total", Some("error_type")),
        ("cached_prompt_tokens_total", None),
        ("reasoning_tokens_total", None),
        ("audio_prompt_tokens_total", None),
        ("audio_completion_tokens_total", None),
        ("skipped_events_total", None),
        ("over_budget_total", None),
        ("invalid_usage_total", None),
    ];
    let mut histograms: Vec<(String, Option<&'static str>)> = Vec::new();
    if c.otel {
        histograms.push((
            "gen_ai_client_token_usage".into(),
            Some("gen_ai_token_type"),
        ));
        for h in [
            "gen_ai_server_request_duration_ms",
            "gen_ai_server_time_to_first_token_ms",
            "gen_ai_server_time_per_output_token_ms",
        ] {
            histograms.push((h.into(), None));
        }
    } else {
        counters.extend([
            ("prompt_tokens_total", None),
            ("completion_tokens_total", None),
            ("tokens_total", None),
        ]);
        for h in [
            "request_duration_ms",
            "time_to_first_token_ms",
            "time_per_output_token_ms",
        ] {
            histograms.push((format!("{ns}_{h}"), None));
        }
    }
    let mut out: Vec<(String, Option<&'static str>, bool)> = counters
        .into_iter()
        .map(|(n, l)| (format!("{ns}_{n}"), l, true))
        .collect();
    for (h, l) in histograms {
        for suffix in ["_bucket", "_sum", "_count"] {
            out.push((format!("{h}{suffix}"), l, true));
        }
    }
    out.push((format!("{ns}_overflow_total"), Some("dimension"), false));
    out.push((format!("{ns}_records_sent_total"), None, false));
    out.push((format!("{ns}_records_dropped_total"), Some("reason"), false));
    out
}

/// Sends the case's traffic through Envoy started on the bootstrap the CLI renders, and
/// checks every series of `/stats/prometheus`. Returns what is wrong.
fn check_label_case(c: &LabelCase, dir: &std::path::Path) -> Vec<String> {
    let mut failures = Vec::new();
    let up = Upstream::start().unwrap();
    let path = dir.join(format!(
        "{}.json",
        c.namespace.to_owned() + &c.otel.to_string()
    ));
    std::fs::write(&path, c.config).unwrap();
    let path = path.display().to_string();
    let (ok, out, err) = tokenmeter(&["check-config", &path]);
    assert!(ok, "{}: check-config refused it: {err}", c.name);
    let mut listed: Vec<&str> = Vec::new();
    if c.otel {
        listed.extend(OTEL_LABELS);
    }
    listed.extend(c.dims);
    assert!(
        out.contains(&format!("labels [{}]", listed.join(", "))),
        "{}: {out}",
        c.name
    );
    let wasm = envoy::wasm_path().display().to_string();
    let upstream = up.addr.to_string();
    let (ok, yaml, err) = tokenmeter(&[
        "envoy-config",
        "--filter-config",
        &path,
        "--wasm",
        &wasm,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "0",
        "--upstream",
        &upstream,
        "--stats-flush-interval-ms",
        "200",
    ]);
    assert!(ok, "{}: envoy-config: {err}", c.name);
    let gw = Gateway {
        envoy: Envoy::start(&yaml, 1).unwrap(),
        upstream: up,
    };
    // Per value: a JSON answer, an injected stream (both with a team) and a 429 (without).
    let mut body = chat("gpt-4o", "Label me.");
    body["metadata"] = json!({"title": "Dr."});
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let json_total =
        crate::common::reported(&gw.post_direct(CHAT, &[], body.to_string().as_bytes())).2;
    let stream_total = stream_usage(
        &gw.post_direct(CHAT, &[], with_usage(&stream).to_string().as_bytes())
            .body,
    )
    .unwrap()
    .2;
    let mut label_values: Vec<(&str, &str)> = LABEL_VALUES.to_vec();
    if c.values_in_body {
        label_values.extend_from_slice(BODY_LABEL_VALUES);
    }
    for (sent, _) in &label_values {
        let (mut body, mut stream) = (body.clone(), stream.clone());
        let mut headers = vec![];
        if c.values_in_body {
            body["user"] = json!(sent);
            stream["user"] = json!(sent);
        } else {
            headers.push(("x-user", *sent));
        }
        let with_team = [headers.as_slice(), &[("x-team", "blue")]].concat();
        assert_eq!(gw.post(CHAT, &with_team, &body).status, 200);
        let r = gw.post(CHAT, &with_team, &stream);
        assert_eq!(r.status, 200);
        assert!(
            !r.text().contains("usage"),
            "{}: injected and removed",
            c.name
        );
        headers.push(("x-upstream-status", "429"));
        let r = gw.post(CHAT, &headers, &body);
        assert_eq!(r.status, 429);
    }
    let n = label_values.len() as f64;
    let requests = format!("{}_requests_total", c.namespace);
    let duration = if c.otel {
        "gen_ai_server_request_duration_ms_count".to_string()
    } else {
        format!("{}_request_duration_ms_count", c.namespace)
    };
    // Settled, and the histograms flushed.
    eventually(&gw.envoy, |m| {
        m.sum(&requests, &[]) >= 3.0 * n && m.sum(&duration, &[]) >= 3.0 * n
    });
    let text = gw.envoy.admin_get("/stats/prometheus").unwrap();
    let families = expected_families(c);
    let wants: std::collections::BTreeSet<&str> = label_values.iter().map(|(_, w)| *w).collect();
    assert_eq!(
        wants.len(),
        label_values.len(),
        "the intended values are distinct"
    );
    let otel_values: &[(&str, &[&str])] = &[
        ("gen_ai_operation_name", &["chat"]),
        ("gen_ai_provider_name", &["openai"]),
        ("gen_ai_request_model", &["gpt-4o"]),
        ("gen_ai_response_model", &["gpt-4o-2024-08-06", "unknown"]),
        ("gen_ai_token_type", &["input", "output"]),
    ];
    let fixed_values: &[(&str, &[&str])] = &[
        ("status_class", &["2xx", "4xx"]),
        ("error_type", &["rate_limited"]),
    ];
    let mut series = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let s = match parse_series(line) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: does not parse ({e}): {line}", c.name));
                continue;
            }
        };
        let ours = s.name.contains(&format!("{}_", c.namespace)) || s.name.contains("gen_ai");
        if !ours {
            continue;
        }
        let Some((_, extra, with_dims)) = families.iter().find(|(f, _, _)| *f == s.name) else {
            failures.push(format!("{}: unexpected metric name: {line}", c.name));
            continue;
        };
        let mut want_labels: Vec<&str> = Vec::new();
        if *with_dims {
            if c.otel {
                want_labels.extend(OTEL_LABELS);
            }
            want_labels.extend(c.dims);
        }
        want_labels.extend(*extra);
        if s.name.ends_with("_bucket") {
            want_labels.push("le");
        }
        want_labels.sort_unstable();
        let mut got_labels: Vec<&str> = s.labels.iter().map(|(l, _)| l.as_str()).collect();
        got_labels.sort_unstable();
        if got_labels != want_labels {
            failures.push(format!(
                "{}: labels {got_labels:?}, not {want_labels:?}: {line}",
                c.name
            ));
            continue;
        }
        for (label, value) in &s.labels {
            let allowed = |table: &[(&str, &[&str])]| {
                table
                    .iter()
                    .find(|(l, _)| l == label)
                    .map(|(_, v)| v.contains(&value.as_str()))
            };
            let ok = if label == "le" {
                value == "+Inf" || value.parse::<f64>().is_ok()
            } else if label == c.user {
                wants.contains(value.as_str())
            } else {
                allowed(c.values)
                    .or_else(|| allowed(otel_values))
                    .or_else(|| allowed(fixed_values))
                    .unwrap_or(false)
            };
            if value.is_empty() || !ok {
                failures.push(format!("{}: {label}={value:?} unexpected: {line}", c.name));
            }
        }
        series.push(s);
    }
    // Each value its own series, with all its requests.
    let sum = |name: &str, pairs: &[(&str, &str)]| -> f64 {
        series
            .iter()
            .filter(|s| {
                s.name == name
                    && pairs
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(l, x)| l == k && x == v))
            })
            .map(|s| s.value)
            .sum()
    };
    let errors = format!("{}_errors_total", c.namespace);
    let tokens = format!("{}_tokens_total", c.namespace);
    for want in &wants {
        let u = (c.user, *want);
        let got = (
            sum(&requests, &[u, ("status_class", "2xx")]),
            sum(&requests, &[u, ("status_class", "4xx")]),
            sum(&errors, &[u, ("error_type", "rate_limited")]),
        );
        if got != (2.0, 1.0, 1.0) {
            failures.push(format!(
                "{}: {}={want:?}: (2xx, 4xx, rate_limited) {got:?}",
                c.name, c.user
            ));
        }
        let tokens_got = if c.otel {
            (
                sum(
                    "gen_ai_client_token_usage_count",
                    &[u, ("gen_ai_token_type", "input")],
                ),
                sum(
                    "gen_ai_client_token_usage_count",
                    &[u, ("gen_ai_token_type", "output")],
                ),
            )
        } else {
            (sum(&tokens, &[u]), 0.0)
        };
        let tokens_want = if c.otel {
            (2.0, 2.0)
        } else {
            (json_total + stream_total, 0.0)
        };
        if tokens_got != tokens_want {
            failures.push(format!(
                "{}: {}={want:?}: tokens {tokens_got:?}, not {tokens_want:?}",
                c.name, c.user
            ));
        }
    }
    if sum(&requests, &[]) != 3.0 * n {
        failures.push(format!(
            "{}: {} requests counted in labelled series, not {}",
            c.name,
            sum(&requests, &[]),
            3.0 * n
        ));
    }
    if !failures.is_empty() {
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!("{}_", c.namespace)) && !l.contains("_bucket"))
            .collect();
        failures.push(format!("{}: the exposition:\n{}", c.name, ours.join("\n")));
    }
    failures
}

#[test]
fn label_names_and_values_reach_prometheus_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let failures: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = LABEL_CASES
            .iter()
            .map(|c| {
                let dir = dir.path();
                s.spawn(move || check_label_case(c, dir))
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
