//! End to end through the real Envoy: two tokenmeter filters in one HTTP filter chain (an
//! API whose gateway policy meters tokens twice), each with its own namespace, dimensions
//! and VM. Both count every exchange exactly, each with its own labels; a stream's usage is
//! asked for once, whichever instance asks for it, both count it as reported, and the client
//! sees no usage it did not ask for.
//!
//! Envoy runs decoder filters in chain order and encoder filters in reverse: the first
//! instance sees the request first and the response last, so when only the second asks for
//! usage it hides it before the first sees it, and hands it over in filter state
//! (`exchange::handoff`). Every configuration of injection is run (the first instance
//! injects, the second, both), each in its own Envoy; every check of one configuration runs
//! before the test fails, so a failure lists all that went wrong.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenmeter_cli::bootstrap;
use tokenmeter_core::config::Config;
use tokenmeter_testkit::client::{self, Reply};
use tokenmeter_testkit::envoy::{self, Envoy};
use tokenmeter_testkit::prom::Exposition;
use tokenmeter_testkit::upstream::Upstream;

use crate::common::{chat, eventually, reported, Gateway};

/// One filter in the chain: its namespace, the dimension only it has, and where its
/// access-log summary goes.
struct Instance {
    namespace: &'static str,
    vm_id: &'static str,
    /// The dimension the other instance does not have, as configured.
    own_dimension: &'static str,
    /// Its label, and its value in every request (`None`: the request's operation).
    own_label: &'static str,
    own_value: Option<&'static str>,
    summary_property: &'static str,
}

/// The value of the second instance's `team` dimension in every request.
const TEAM: &str = "red";

const FIRST: Instance = Instance {
    namespace: "llm",
    vm_id: "tokenmeter-llm",
    own_dimension: r#"{"name": "Operation ID"}"#,
    own_label: "operation_id",
    own_value: None,
    summary_property: "tokenmeter",
};

const SECOND: Instance = Instance {
    namespace: "team",
    vm_id: "tokenmeter-team",
    own_dimension: r#"{"name": "team", "value": "{request.header.x-team|none}"}"#,
    own_label: "team",
    own_value: Some(TEAM),
    summary_property: "tokenmeter_team",
};

impl Instance {
    fn config(&self, inject: bool) -> String {
        let own: Value = serde_json::from_str(self.own_dimension).unwrap();
        json!({
            "namespace": self.namespace,
            "inject_stream_usage": inject,
            "dimensions": [
                own,
                {"name": "model"},
                {"name": "usage_source"},
                {"name": "case", "value": "{request.header.x-case}"}
            ],
            "host": {"summary_property": self.summary_property}
        })
        .to_string()
    }

    /// The label pair every series of this instance carries besides the shared ones.
    fn own_pair(&self, operation: &'static str) -> (&'static str, &'static str) {
        (self.own_label, self.own_value.unwrap_or(operation))
    }

    fn metric(&self, family: &str) -> String {
        format!("{}_{family}", self.namespace)
    }
}

/// `s` as a JSON string, which YAML reads as a double-quoted scalar.
fn q(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// An Envoy bootstrap with one tokenmeter filter per `(instance, configuration)`, in order,
/// before the router; the stats tag rules of every configuration; and an access log that
/// carries each instance's summary beside the request's `x-case`.
fn chain_bootstrap(upstream: &Upstream, filters: &[(&Instance, String)], log: &Path) -> String {
    let mut tags: Vec<(String, String)> = Vec::new();
    for (_, text) in filters {
        let config = Config::parse(text.as_bytes()).expect("test config must be valid");
        for tag in bootstrap::stats_tags(&config) {
            if !tags.iter().any(|(name, _)| *name == tag.0) {
                tags.push(tag);
            }
        }
    }
    let tags: String = tags
        .iter()
        .map(|(name, regex)| format!("  - tag_name: {}\n    regex: {}\n", q(name), q(regex)))
        .collect();
    let wasm = envoy::wasm_path().display().to_string();
    let http_filters: String = filters
        .iter()
        .map(|(instance, config)| {
            format!(
                r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                failure_policy: FAIL_OPEN
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {config}
                vm_config:
                  vm_id: {vm_id}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
"#,
                name = q(instance.vm_id),
                vm_id = q(instance.vm_id),
                config = q(config),
                wasm = q(&wasm),
            )
        })
        .collect();
    let summaries: String = filters
        .iter()
        .map(|(instance, _)| {
            format!(
                ", {}: {}",
                instance.namespace,
                q(&format!(
                    "%FILTER_STATE(wasm.{}:PLAIN)%",
                    instance.summary_property
                ))
            )
        })
        .collect();
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
stats_flush_interval: 0.200s
stats_config:
  stats_tags:
{tags}static_resources:
  listeners:
  - name: tokenmeter
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{json_format: {{case: "%REQ(X-CASE)%"{summaries}}}}}
          route_config:
            name: llm
            virtual_hosts:
            - name: llm
              domains: ["*"]
              routes:
              - name: llm-default
                match: {{prefix: "/"}}
                route: {{cluster: llm_upstream, timeout: 600s}}
          http_filters:
{http_filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: llm_upstream
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: llm_upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: {host}, port_value: {port}}}}}
"#,
        log = q(&log.display().to_string()),
        host = q(&upstream.addr.ip().to_string()),
        port = upstream.addr.port(),
    )
}

/// Everything that went wrong in one configuration, reported together at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        self.check(got == want, || {
            format!("{what}: got {got:?}, want {want:?}")
        });
    }
}

/// The data payloads of an SSE body, as JSON (`[DONE]` left out; a payload that is not
/// JSON becomes a string, so it shows in a failure).
fn events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_string())))
        .collect()
}

/// The last non-null `usage` in a stream, as (prompt, completion, total), and the model the
/// stream reports.
fn stream_usage(body: &[u8]) -> Option<((f64, f64, f64), String)> {
    let ev = events(body);
    let usage = ev.iter().rev().find_map(|e| {
        let u = e.get("usage")?;
        (!u.is_null()).then(|| u.clone())
    })?;
    let model = ev.iter().find_map(|e| e["model"].as_str())?.to_string();
    let n = |k: &str| usage[k].as_f64().unwrap_or(-1.0);
    Some((
        (
            n("prompt_tokens"),
            n("completion_tokens"),
            n("total_tokens"),
        ),
        model,
    ))
}

/// One exchange sent through the chain, and what the upstream reports it used.
struct Exchange {
    case: &'static str,
    operation: &'static str,
    /// Exactly what the upstream reports for this exchange, and the model it answers as.
    usage: (f64, f64, f64),
    model: String,
}

fn headers(case: &'static str) -> [(&'static str, &'static str); 2] {
    [("x-case", case), ("x-team", TEAM)]
}

/// Sends `body` through the chain; the upstream must receive it once. Returns the client's
/// reply and the body the upstream received.
fn send(
    gw: &Gateway,
    f: &mut Failures,
    case: &'static str,
    path: &'static str,
    body: &Value,
) -> (Reply, Option<Vec<u8>>) {
    let before = gw.upstream.received().len();
    let via = gw.post(path, &headers(case), body);
    f.eq(&format!("{case}: status"), via.status, 200);
    let received = gw.upstream.received();
    f.eq(
        &format!("{case}: requests the upstream received"),
        received.len() - before,
        1,
    );
    (via, received.last().map(|r| r.body.clone()))
}

/// Checks that the upstream received the client's body byte for byte.
fn untouched(f: &mut Failures, case: &str, body: &Value, sent: Option<&[u8]>) {
    f.check(sent == Some(body.to_string().as_bytes()), || {
        format!(
            "{case}: the upstream must receive the client's body byte for byte\n  client:   {body}\n  upstream: {}",
            String::from_utf8_lossy(sent.unwrap_or_default())
        )
    });
}

/// A JSON chat or completions exchange: passed untouched, counted exactly by both.
fn json_exchange(
    gw: &Gateway,
    f: &mut Failures,
    case: &'static str,
    path: &'static str,
    operation: &'static str,
    body: Value,
) -> Exchange {
    let (via, sent) = send(gw, f, case, path, &body);
    untouched(f, case, &body, sent.as_deref());
    let model = via.json()["model"].as_str().unwrap_or_default().to_string();
    Exchange {
        case,
        operation,
        usage: reported(&via),
        model,
    }
}

/// A stream whose client did not ask for usage: asked for once on its behalf, and the
/// client gets exactly the stream the upstream sends a client that did not ask.
fn unasked_stream(
    gw: &Gateway,
    f: &mut Failures,
    case: &'static str,
    path: &'static str,
    operation: &'static str,
    body: Value,
) -> Exchange {
    let (via, sent) = send(gw, f, case, path, &body);
    let sent = sent.unwrap_or_default();
    let raw = String::from_utf8_lossy(&sent).into_owned();
    match serde_json::from_slice::<Value>(&sent) {
        Err(e) => f.0.push(format!(
            "{case}: the upstream received a body that is not JSON ({e}):\n  {raw}"
        )),
        Ok(mut got) => {
            f.check(got["stream_options"] == json!({"include_usage": true}), || {
                format!("{case}: the upstream must be asked for usage once, with stream_options {{\"include_usage\": true}}:\n  {raw}")
            });
            if let Some(o) = got.as_object_mut() {
                o.remove("stream_options");
            }
            f.check(got == body, || {
                format!("{case}: besides stream_options, the upstream must receive the client's body\n  client:   {body}\n  upstream: {raw}")
            });
        }
    }
    for key in ["stream_options", "include_usage"] {
        f.check(raw.matches(key).count() == 1, || {
            format!(
                "{case}: `{key}` must appear once in what the upstream received ({} times):\n  {raw}",
                raw.matches(key).count()
            )
        });
    }
    let direct = gw.post_direct(path, &headers(case), body.to_string().as_bytes());
    f.check(via.text() == direct.text(), || {
        format!(
            "{case}: the client must get the stream the upstream sends a client that did not ask for usage\n--- through the chain:\n{}--- asked directly:\n{}",
            via.text(),
            direct.text()
        )
    });
    f.check(!via.text().contains("\"usage\""), || {
        format!(
            "{case}: the client did not ask for usage and must see no usage member:\n{}",
            via.text()
        )
    });
    // What the upstream reports when asked for usage: the exact counts to expect.
    let mut asked = body.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let direct = gw.post_direct(path, &headers(case), asked.to_string().as_bytes());
    let (usage, model) = stream_usage(&direct.body).expect("the upstream reports usage when asked");
    Exchange {
        case,
        operation,
        usage,
        model,
    }
}

/// A stream whose client asked for usage: untouched, and the client keeps its usage chunk.
fn asked_stream(
    gw: &Gateway,
    f: &mut Failures,
    case: &'static str,
    path: &'static str,
    operation: &'static str,
    body: Value,
) -> Exchange {
    let (via, sent) = send(gw, f, case, path, &body);
    untouched(f, case, &body, sent.as_deref());
    let direct = gw.post_direct(path, &headers(case), body.to_string().as_bytes());
    f.check(via.text() == direct.text(), || {
        format!(
            "{case}: the client must get the stream it asked for, usage included\n--- through the chain:\n{}--- asked directly:\n{}",
            via.text(),
            direct.text()
        )
    });
    let last = events(&via.body).last().cloned().unwrap_or(Value::Null);
    f.check(
        last["choices"].as_array().is_some_and(Vec::is_empty) && last["usage"].is_object(),
        || format!("{case}: the client keeps its usage chunk, last: {last}"),
    );
    let (usage, model) = stream_usage(&direct.body).expect("the upstream reports usage when asked");
    Exchange {
        case,
        operation,
        usage,
        model,
    }
}

/// The families every exchange is counted in: requests, then prompt, completion and total
/// tokens.
const FAMILIES: [&str; 4] = [
    "requests_total",
    "prompt_tokens_total",
    "completion_tokens_total",
    "tokens_total",
];

/// Both instances counted `x` once, as reported, with exactly the upstream's usage, each
/// with its own labels and without the other's.
fn counted(m: &Exposition, f: &mut Failures, x: &Exchange) {
    let case = x.case;
    let all = [("case", case)];
    for (instance, other) in [(&FIRST, &SECOND), (&SECOND, &FIRST)] {
        let ns = instance.namespace;
        let own = instance.own_pair(x.operation);
        let reported = [
            ("case", case),
            ("usage_source", "reported"),
            ("model", x.model.as_str()),
            own,
        ];
        let (p, c, t) = x.usage;
        let sums = |labels: &[(&str, &str)]| -> Vec<f64> {
            FAMILIES
                .iter()
                // `+ 0.0`: an empty sum is -0.0, shown as such in a failure.
                .map(|family| m.sum(&instance.metric(family), labels) + 0.0)
                .collect()
        };
        let any = sums(&all);
        let got = sums(&reported);
        f.check(any[0] == 1.0 && got == [1.0, p, c, t], || {
            let lines: Vec<String> = m
                .lines_with_prefix(&format!("{ns}_"))
                .into_iter()
                .filter(|l| {
                    l.contains(&format!("case=\"{case}\""))
                        && FAMILIES
                            .iter()
                            .any(|fam| l.starts_with(&format!("{ns}_{fam}{{")))
                })
                .collect();
            format!(
                "{case}: {ns} must count 1 request of {p}/{c}/{t} tokens (prompt/completion/total) \
                 with usage_source=\"reported\", {}=\"{}\", model=\"{}\"; \
                 it counted {} request(s) in all, {got:?} so labelled:\n    {}",
                own.0,
                own.1,
                x.model,
                any[0],
                lines.join("\n    ")
            )
        });
        let foreign = m
            .find(&instance.metric("requests_total"), &all)
            .iter()
            .filter(|s| s.labels.contains_key(other.own_label))
            .count();
        f.eq(
            &format!(
                "{case}: {ns} series carrying the other instance's label {}",
                other.own_label
            ),
            foreign,
            0,
        );
    }
}

/// Each instance's access-log summary of `x`: reported, with the upstream's counts.
fn logged(lines: &[Value], f: &mut Failures, x: &Exchange) {
    let case = x.case;
    let Some(line) = lines.iter().find(|l| l["case"] == case) else {
        f.0.push(format!("{case}: no access log line in {lines:?}"));
        return;
    };
    for instance in [&FIRST, &SECOND] {
        let ns = instance.namespace;
        let summary: Value = line[ns]
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
        let (p, c, t) = x.usage;
        f.check(
            summary["source"] == "reported"
                && summary["prompt"].as_f64() == Some(p)
                && summary["completion"].as_f64() == Some(c)
                && summary["total"].as_f64() == Some(t),
            || {
                format!(
                    "{case}: {ns}'s access-log summary must be reported {p}/{c}/{t}: {}",
                    line[ns]
                )
            },
        );
    }
}

fn stream(model: &str, text: &str) -> Value {
    let mut b = chat(model, text);
    b["stream"] = json!(true);
    b
}

/// Two instances, the first injecting when `first_injects`, the second when
/// `second_injects`: every kind of exchange counted exactly by both.
fn two_instances(first_injects: bool, second_injects: bool) {
    let upstream = Upstream::start().expect("upstream");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = chain_bootstrap(
        &upstream,
        &[
            (&FIRST, FIRST.config(first_injects)),
            (&SECOND, SECOND.config(second_injects)),
        ],
        &log,
    );
    let envoy = Envoy::start(&yaml, 2).expect("envoy starts with two tokenmeter filters");
    let gw = Gateway { envoy, upstream };
    let mut f = Failures::default();
    let chat_path = "/v1/chat/completions";
    let completions_path = "/v1/completions";
    let mut asked = stream("gpt-4o", "A stream that asks for its usage.");
    asked["stream_options"] = json!({"include_usage": true});
    let exchanges = [
        json_exchange(
            &gw,
            &mut f,
            "json-chat",
            chat_path,
            "chat.completions",
            chat("gpt-4o", "Count me twice, once per instance."),
        ),
        json_exchange(
            &gw,
            &mut f,
            "json-completions",
            completions_path,
            "completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Two meters, one request"}),
        ),
        unasked_stream(
            &gw,
            &mut f,
            "stream-chat",
            chat_path,
            "chat.completions",
            stream("gpt-4o-mini", "Stream without asking for usage."),
        ),
        unasked_stream(
            &gw,
            &mut f,
            "stream-completions",
            completions_path,
            "completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time", "stream": true}),
        ),
        asked_stream(
            &gw,
            &mut f,
            "stream-asked",
            chat_path,
            "chat.completions",
            asked,
        ),
    ];
    let m = eventually(&gw.envoy, |m| {
        exchanges.iter().all(|x| {
            [&FIRST, &SECOND]
                .iter()
                .all(|i| m.sum(&i.metric("requests_total"), &[("case", x.case)]) >= 1.0)
        })
    });
    for x in &exchanges {
        counted(&m, &mut f, x);
    }
    for instance in [&FIRST, &SECOND] {
        f.eq(
            &format!("{}_requests_total over all series", instance.namespace),
            m.sum(&instance.metric("requests_total"), &[]),
            exchanges.len() as f64,
        );
    }
    // Envoy writes access logs in the background: wait for every exchange's line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let lines: Vec<Value> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= exchanges.len() || Instant::now() > deadline {
            break lines;
        }
        // Reopening makes Envoy write what it holds now rather than at its next flush
        // (every 10 s by default).
        let _ = client::post(&format!("http://{}/reopen_logs", gw.envoy.admin), &[], b"");
        std::thread::sleep(Duration::from_millis(50));
    };
    for x in &exchanges {
        logged(&lines, &mut f, x);
    }
    assert!(
        f.0.is_empty(),
        "two instances, the first {} and the second {} stream usage: {} failed checks\n\n{}",
        if first_injects {
            "injecting"
        } else {
            "not injecting"
        },
        if second_injects {
            "injecting"
        } else {
            "not injecting"
        },
        f.0.len(),
        f.0.join("\n\n")
    );
}

#[test]
fn two_instances_count_alike_when_the_first_injects() {
    two_instances(true, false);
}

#[test]
fn two_instances_count_alike_when_the_second_injects() {
    two_instances(false, true);
}

#[test]
fn two_instances_count_alike_when_both_inject() {
    two_instances(true, true);
}
