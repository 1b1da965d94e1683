//! The `make run` demo: Envoy with tokenmeter in front of the example upstream, the collector
//! and its console, a mix of traffic, the metrics Envoy shows for it, one run of a quality
//! monitor against a demo judge, and the console's address.
//!
//! `demo --envoy PATH --wasm PATH --tokenmeter PATH --config FILE --dir DIR [--keep-running | --exit]`
//!
//! It keeps running for the console when started from a terminal (`--exit` stops it after
//! the summary), and stops after it otherwise (`--keep-running` keeps it).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokenmeter_testkit::client;
use tokenmeter_testkit::demo::{self, Demo};

struct Args {
    envoy: PathBuf,
    wasm: PathBuf,
    tokenmeter: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    keep_running: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        envoy: PathBuf::new(),
        wasm: PathBuf::new(),
        tokenmeter: PathBuf::new(),
        config: PathBuf::new(),
        dir: PathBuf::from("target/demo"),
        keep_running: std::io::stdin().is_terminal(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().map(PathBuf::from).context("missing value");
        match flag.as_str() {
            "--envoy" => a.envoy = val()?,
            "--wasm" => a.wasm = val()?,
            "--tokenmeter" => a.tokenmeter = val()?,
            "--config" => a.config = val()?,
            "--dir" => a.dir = val()?,
            "--keep-running" => a.keep_running = true,
            "--exit" => a.keep_running = false,
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
    let d = Demo::start(&a.dir, &a.envoy, &a.wasm, &a.tokenmeter, &a.config)?;
    let ns = d.namespace.clone();
    println!(
        "example upstream (OpenAI-compatible) on http://{}",
        d.upstream.addr
    );
    println!(
        "collector and console (tokenmeter serve) on {}, store {}",
        d.collector.url(),
        d.db.display()
    );
    println!(
        "envoy with tokenmeter on {} (admin {}), filter configuration {}\n",
        d.envoy.url(""),
        d.envoy.admin,
        d.filter_config.display()
    );

    for (path, headers, body) in &demo::traffic() {
        let r = client::post(&d.envoy.url(path), headers, body.to_string().as_bytes())?;
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
    let r = client::get(&d.envoy.url("/v1/models"))?;
    println!(
        "GET  {:<75} {} (not an LLM call: not counted)",
        "/v1/models", r.status
    );

    // Counters show at once, histograms after Envoy's next stats flush; the store has the
    // rollups after the filter's next send (every second here).
    std::thread::sleep(Duration::from_millis(1200));
    let expo = d.wait_for_store(Duration::from_secs(30))?;
    println!(
        "\n{}/stats/prometheus (tokenmeter metrics; histogram buckets left out):",
        format_args!("http://{}", d.envoy.admin)
    );
    for line in expo.lines_with_prefix(&format!("{ns}_")) {
        if !line.contains("_bucket{") {
            println!("  {line}");
        }
    }

    println!(
        "\nquality monitor {} over the collected records, judged by the DEMO JUDGE (a local server giving fixed scores, not a language model):",
        demo::MONITOR
    );
    for line in d.run_monitor()?.lines() {
        println!("  {line}");
    }

    let usage = client::get(&format!("{}/api/v1/usage?window=P1D", d.collector.url()))?.json();
    let t = &usage["totals"];
    let counted = expo.sum(&format!("{ns}_tokens_total"), &[]);
    if t["total_tokens"].as_f64() != Some(counted) {
        bail!(
            "the store's total tokens {} differ from Envoy's {counted}",
            t["total_tokens"]
        );
    }
    println!(
        "\nthe store holds what Envoy counted: {} requests, {} tokens ({} prompt, {} completion)",
        t["requests"], t["total_tokens"], t["prompt_tokens"], t["completion_tokens"]
    );
    println!("\nconsole: {}/", d.collector.url());
    if a.keep_running {
        println!("\nEverything keeps running: open the console, send traffic to {} (it shows within seconds); Ctrl-C stops it.", d.envoy.url("/v1/chat/completions"));
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Ok(())
}
