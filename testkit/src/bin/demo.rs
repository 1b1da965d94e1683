//! The `make run` demo: Envoy with tokenmeter in front of the example upstream, a mix of
//! traffic, and the metrics Envoy shows for it.
//!
//! `demo --envoy PATH --wasm PATH --tokenmeter PATH --config FILE [--keep-running]`

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use tokenmeter_testkit::{client, envoy::Envoy, upstream::Upstream};

struct Args {
    envoy: PathBuf,
    wasm: PathBuf,
    tokenmeter: PathBuf,
    config: PathBuf,
    keep_running: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        envoy: PathBuf::new(),
        wasm: PathBuf::new(),
        tokenmeter: PathBuf::new(),
        config: PathBuf::new(),
        keep_running: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().map(PathBuf::from).context("missing value");
        match flag.as_str() {
            "--envoy" => a.envoy = val()?,
            "--wasm" => a.wasm = val()?,
            "--tokenmeter" => a.tokenmeter = val()?,
            "--config" => a.config = val()?,
            "--keep-running" => a.keep_running = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    for (name, p) in [
        ("--envoy", &a.envoy),
        ("--wasm", &a.wasm),
        ("--tokenmeter", &a.tokenmeter),
        ("--config", &a.config),
    ] {
        if !p.exists() {
            bail!("{name} {} does not exist", p.display());
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    std::env::set_var("ENVOY_BIN", &a.envoy);
    let upstream = Upstream::start()?;
    println!(
        "example upstream (OpenAI-compatible) on http://{}",
        upstream.addr
    );

    let wasm = std::fs::canonicalize(&a.wasm)?;
    let out = Command::new(&a.tokenmeter)
        .arg("envoy-config")
        .arg("--filter-config")
        .arg(&a.config)
        .arg("--wasm")
        .arg(&wasm)
        .args(["--listen", "0", "--admin", "0"])
        .arg("--upstream")
        .arg(upstream.addr.to_string())
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
    let bootstrap = String::from_utf8(out.stdout)?;
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&a.config)?)?;
    let ns = config["namespace"].as_str().unwrap_or("llm").to_string();

    let envoy = Envoy::start(&bootstrap, 2)?;
    println!(
        "envoy with tokenmeter on {} (admin {})\n",
        envoy.url(""),
        envoy.admin
    );

    let chat = |model: &str, text: &str| {
        json!({"model": model, "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text}]})
    };
    type Call<'a> = (&'a str, Vec<(&'a str, &'a str)>, serde_json::Value);
    let traffic: Vec<Call> = vec![
        (
            "/v1/chat/completions",
            vec![("x-team", "blue")],
            chat("gpt-4o", "How many tokens does this question use?"),
        ),
        (
            "/v1/chat/completions",
            vec![("x-team", "blue")],
            chat("gpt-4o", "Summarise the plot of Hamlet in one line."),
        ),
        (
            "/v1/chat/completions",
            vec![("x-team", "green")],
            chat("gpt-4o-mini", "Write a haiku about gateways."),
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
    ];
    for (path, headers, body) in &traffic {
        let r = client::post(&envoy.url(path), headers, body.to_string().as_bytes())?;
        if r.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"))
        {
            let events = r.text().matches("data: ").count();
            let usage = if r.text().contains("\"usage\"") {
                "with"
            } else {
                "no"
            };
            println!("POST {path:<75} {} a stream of {events} events, {usage} usage chunk (the filter counted the one it asked for)", r.status);
            continue;
        }
        let u = &r.json()["usage"];
        let n = |a: &str, b: &str| u[a].as_u64().or(u[b].as_u64()).unwrap_or(0);
        let shown = if u.is_null() {
            "no usage in the response".to_string()
        } else {
            format!(
                "usage: prompt {} completion {} total {}",
                n("prompt_tokens", "input_tokens"),
                n("completion_tokens", "output_tokens"),
                n("total_tokens", "total_tokens")
            )
        };
        println!("POST {path:<75} {} {shown}", r.status);
    }
    let r = client::get(&envoy.url("/v1/models"))?;
    println!(
        "GET  {:<75} {} (not an LLM call: not counted)",
        "/v1/models", r.status
    );

    // Counters show at once; histograms after Envoy's next stats flush.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let expo = envoy.prometheus()?;
    println!(
        "\n{}/stats/prometheus (tokenmeter metrics; histogram buckets left out):",
        format_args!("http://{}", envoy.admin)
    );
    for line in expo.lines_with_prefix(&format!("{ns}_")) {
        if !line.contains("_bucket{") {
            println!("  {line}");
        }
    }
    if a.keep_running {
        println!("\nEnvoy keeps running: send traffic to {} and read http://{}/stats/prometheus; Ctrl-C stops it.", envoy.url("/v1/chat/completions"), envoy.admin);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    Ok(())
}
