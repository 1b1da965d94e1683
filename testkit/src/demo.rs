//! The whole product on one machine, as `make run` shows it and the console's browser tests
//! drive it: the example upstream, Envoy with tokenmeter collecting every record and sending
//! rollups each second, `tokenmeter serve` as the collector and console, and a demo judge
//! (a local server that gives fixed scores: it is not a language model) for one monitor.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::client;
use crate::collector::Collector;
use crate::envoy::Envoy;
use crate::judge::{JudgeServer, Received, Reply};
use crate::prom::Exposition;
use crate::upstream::Upstream;

/// The monitor the demo runs, by name.
pub const MONITOR: &str = "demo-quality";

pub struct Demo {
    pub upstream: Upstream,
    pub judge: JudgeServer,
    pub collector: Collector,
    pub envoy: Envoy,
    /// The collector's database.
    pub db: PathBuf,
    pub monitor: PathBuf,
    /// The filter configuration Envoy runs (the given one with a `collect` block).
    pub filter_config: PathBuf,
    pub namespace: String,
    tokenmeter: PathBuf,
}

/// The demo judge's score for a metric of a request: fixed by the text, so every run and
/// every machine gives the same figures.
pub fn demo_score(user_prompt: &str, metric: &str) -> u8 {
    let h = user_prompt
        .bytes()
        .chain(metric.bytes())
        .fold(2166136261u32, |a, b| {
            (a ^ u32::from(b)).wrapping_mul(16777619)
        });
    [5, 4, 5, 3, 4, 2, 5, 4][(h % 8) as usize]
}

fn metric_of(req: &Received) -> &'static str {
    // The judge prompts name their metric so: "Quality: GROUNDEDNESS."
    let system = req.system();
    ["groundedness", "relevance", "coherence", "fluency"]
        .into_iter()
        .find(|m| system.contains(&format!("Quality: {}.", m.to_uppercase())))
        .unwrap_or("quality")
}

fn judge_reply(req: &Received, _attempt: usize) -> Reply {
    let metric = metric_of(req);
    Reply::json_score(
        demo_score(&req.user(), metric),
        &format!("demo judge: a fixed {metric} score derived from the text, not a model's opinion"),
    )
}

impl Demo {
    /// Starts every part. `dir` holds the database, the monitor and the configuration;
    /// `filter_config` is the gateway's filter configuration to start from.
    pub fn start(
        dir: &Path,
        envoy_bin: &Path,
        wasm: &Path,
        tokenmeter: &Path,
        filter_config: &Path,
    ) -> Result<Demo> {
        std::env::set_var("ENVOY_BIN", envoy_bin);
        std::fs::create_dir_all(dir)?;
        let db = dir.join("tokenmeter.db");
        for stale in ["tokenmeter.db", "tokenmeter.db-wal", "tokenmeter.db-shm"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let upstream = Upstream::start()?;
        let judge = JudgeServer::start(judge_reply)?;
        let monitor = dir.join("demo-monitor.yaml");
        std::fs::write(
            &monitor,
            format!(
                "# The demo's monitor. Its judge is a local demo server that gives fixed scores\n\
                 # (it is not a language model); point judge.url at a real one for real scores.\n\
                 name: {MONITOR}\n\
                 window: {{size: P1D, offset: P0D}}\n\
                 sampling_rate: 1.0\n\
                 judge: {{kind: openai, url: {}, model: demo-judge, max_retries: 0}}\n\
                 metrics: {{groundedness: {{}}, relevance: {{}}, coherence: {{}}, fluency: {{}}}}\n\
                 # The demo's window holds a handful of records; real monitors keep the default 10.\n\
                 verdict: {{min_samples: 3}}\n\
                 schedule: \"0 * * * *\"\n",
                judge.url()
            ),
        )?;
        let collector = Collector::start(
            tokenmeter,
            &db,
            &[
                "--monitor",
                monitor.to_str().context("a path that is not UTF-8")?,
            ],
        )?;

        // The given configuration, collecting every request and sending rollups each second.
        let text = std::fs::read_to_string(filter_config)
            .with_context(|| format!("cannot read {}", filter_config.display()))?;
        let mut config: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", filter_config.display()))?;
        let namespace = config["namespace"].as_str().unwrap_or("llm").to_string();
        if config.get("collect").is_none() {
            config["collect"] = json!({"sample_rate": 1.0, "rollup_interval_ms": 1000});
        }
        let derived = dir.join("filter-config.json");
        std::fs::write(&derived, serde_json::to_string_pretty(&config)?)?;
        let collector_addr = collector.url().trim_start_matches("http://").to_string();
        let out = Command::new(tokenmeter)
            .arg("envoy-config")
            .arg("--filter-config")
            .arg(&derived)
            .arg("--wasm")
            .arg(std::fs::canonicalize(wasm)?)
            .args(["--listen", "0", "--admin", "0"])
            .arg("--upstream")
            .arg(upstream.addr.to_string())
            .args(["--collector", &collector_addr])
            .args(["--node-id", "gateway-demo", "--region", "westeurope"])
            .args(["--stats-flush-interval-ms", "500"])
            .output()
            .context("running tokenmeter envoy-config")?;
        if !out.status.success() {
            bail!(
                "tokenmeter envoy-config failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let envoy = Envoy::start(&String::from_utf8(out.stdout)?, 2)?;
        Ok(Demo {
            upstream,
            judge,
            collector,
            envoy,
            db,
            monitor,
            filter_config: derived,
            namespace,
            tokenmeter: tokenmeter.to_path_buf(),
        })
    }

    /// Waits until the store holds what Envoy counted: every settled request in the
    /// rollups, and every record the filter sent. Returns Envoy's exposition at that time.
    pub fn wait_for_store(&self, limit: Duration) -> Result<Exposition> {
        let deadline = Instant::now() + limit;
        let ns = &self.namespace;
        loop {
            let m = self.envoy.prometheus()?;
            let requests = m.sum(&format!("{ns}_requests_total"), &[]);
            let sent = m.sum(&format!("{ns}_records_sent_total"), &[]);
            let usage =
                client::get(&format!("{}/api/v1/usage?window=P1D", self.collector.url()))?.json();
            let records = client::get(&format!(
                "{}/api/v1/records?window=P1D&limit=1",
                self.collector.url()
            ))?
            .json();
            let stored = usage["totals"]["requests"].as_f64().unwrap_or(-1.0);
            let kept = records["total"].as_f64().unwrap_or(-1.0);
            if requests > 0.0 && stored == requests && kept == sent {
                return Ok(m);
            }
            if Instant::now() > deadline {
                bail!("the store did not catch up with Envoy in {limit:?}: {stored} of {requests} requests in the rollups, {kept} of {sent} records");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs the demo monitor once over the store (`tokenmeter eval`), as its schedule
    /// would; returns the report's table.
    pub fn run_monitor(&self) -> Result<String> {
        let out = Command::new(&self.tokenmeter)
            .args(["eval", "--monitor"])
            .arg(&self.monitor)
            .arg("--db")
            .arg(&self.db)
            .output()
            .context("running tokenmeter eval")?;
        // 2 (breached), 3 (inconclusive) and 4 (no data) are results, not failures.
        if !matches!(out.status.code(), Some(0 | 2..=4)) {
            bail!(
                "tokenmeter eval failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

type Call = (&'static str, Vec<(&'static str, &'static str)>, Value);

/// The demo's traffic: every API shape, Azure's URL, a stream, a rate limit and an answer
/// cut in half.
pub fn traffic() -> Vec<Call> {
    let chat = |model: &str, text: &str| {
        json!({"model": model, "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer from the documentation of the gateway."},
            {"role": "user", "content": text}]})
    };
    // A retrieval-augmented exchange: the documents came back from a tool call, which is
    // the context the filter records by default (the system prompt is not evidence).
    let rag = |model: &str, text: &str, found: &str| {
        let mut b = chat(model, text);
        if let Some(messages) = b["messages"].as_array_mut() {
            messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_docs", "type": "function",
                "function": {"name": "search_docs", "arguments": format!("{{\"query\": {}}}", json!(text))}}]}));
            messages.push(json!({"role": "tool", "tool_call_id": "call_docs", "content": found}));
        }
        b
    };
    vec![
        (
            "/v1/chat/completions",
            vec![("x-team", "blue")],
            rag(
                "gpt-4o",
                "How many tokens does this question use?",
                "tokenmeter counts prompt and completion tokens from the provider's usage, and estimates them with tiktoken when a stream reports none.",
            ),
        ),
        (
            "/v1/chat/completions",
            vec![("x-team", "blue")],
            rag(
                "gpt-4o",
                "Summarise the plot of Hamlet in one line.",
                "Hamlet: a Danish prince avenges his father's murder by his uncle, at the cost of nearly everyone, himself included.",
            ),
        ),
        (
            "/v1/chat/completions",
            vec![("x-team", "green")],
            rag(
                "gpt-4o-mini",
                "Write a haiku about gateways.",
                "A gateway sits between clients and the model providers, routing and metering each request.",
            ),
        ),
        (
            "/chat/completions",
            vec![("x-team", "green")],
            chat("gpt-4o-mini", "Same API without the /v1 prefix."),
        ),
        (
            "/v1/completions",
            vec![("x-team", "blue")],
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time"}),
        ),
        (
            "/v1/embeddings",
            vec![("x-team", "green")],
            json!({"model": "text-embedding-3-small", "input": ["first document", "second document"]}),
        ),
        (
            "/v1/responses",
            vec![("x-team", "blue")],
            json!({"model": "gpt-4.1", "input": "Tell me a fact about Envoy."}),
        ),
        (
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            vec![("x-team", "azure")],
            json!({"messages": [{"role": "user", "content": "Hello from Azure"}]}),
        ),
        ("/v1/chat/completions", vec![("x-team", "green")], {
            let mut b = chat(
                "gpt-4o-mini",
                "Stream it: the gateway asks for usage and hides it again.",
            );
            b["stream"] = json!(true);
            b
        }),
        (
            "/v1/chat/completions",
            vec![("x-team", "blue"), ("x-upstream-status", "429")],
            chat("gpt-4o", "This one is rate limited."),
        ),
        (
            "/v1/chat/completions",
            vec![("x-team", "blue"), ("x-upstream-body", "truncated")],
            chat("gpt-4o", "This answer arrives cut in half."),
        ),
    ]
}
