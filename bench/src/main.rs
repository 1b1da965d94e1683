//! `make bench`: what tokenmeter costs a gateway, measured side by side in one run.
//!
//! Four gateways with one bootstrap shape (plain Envoy, Envoy with a do-nothing proxy-wasm
//! filter, with a filter that only reads what tokenmeter reads, and with tokenmeter) sit in
//! front of one canned OpenAI upstream (another Envoy) and one that trickles its streams an
//! event per write ([`tokenmeter_testkit::trickle`], run by this binary as a child process).
//! For each kind of traffic each gateway is loaded in turn, and the gateway's own CPU
//! accounting gives the cost per request; rounds alternate the gateways so that drift in
//! the machine's load hits all alike, and the report shows medians and ranges. The gateway
//! under test runs on the first CPU, everything else (load, upstreams, this runner) on the
//! others. Around that: start-up time and memory of each gateway, and tokenizer throughput
//! inside V8 against native code. The results replace the generated section of
//! `BENCHMARKS.md`.

mod bootstraps;
mod envoy;
mod flags;
mod load;
// Process-tree accounting is used by bench-peers only.
#[allow(dead_code)]
mod process;
mod report;
mod stats;
mod tokenizer;
mod traffic;
#[path = "../../testkit/src/trickle.rs"]
mod trickle;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

use bootstraps::{Gateway, GatewaySpec};
use envoy::Envoy;
use report::{Memory, Results, Sample};
use traffic::Kind;

const USAGE: &str = "usage: tokenmeter-bench --envoy PATH --wasm PATH --noop PATH --readsonly PATH --tokcount PATH \
--tokcount-wasm PATH --wasi-runner PATH [--replay-wasm PATH] [--replay-native PATH] [--config FILE] [--out FILE] [--rounds N] [--seconds S] \
[--warmup S] [--connections N] [--kinds json,sse-usage,...] [--starts N] [--command TEXT] [--load-only yes] \
[--trickle-gap-us N] [--pin yes|no]";

struct Args {
    envoy: PathBuf,
    wasm: PathBuf,
    noop: PathBuf,
    readsonly: PathBuf,
    tokcount: PathBuf,
    tokcount_wasm: PathBuf,
    wasi_runner: PathBuf,
    replay_wasm: Option<PathBuf>,
    /// The native replay, for instruction counts under callgrind.
    replay_native: Option<PathBuf>,
    config: PathBuf,
    out: PathBuf,
    rounds: u32,
    seconds: f64,
    warmup: f64,
    connections: u32,
    kinds: Vec<Kind>,
    starts: u32,
    command: String,
    /// Only the throughput phase: for quick comparisons while working on the filter.
    load_only: bool,
    /// The pause before each event of a trickled stream.
    trickle_gap: Duration,
    /// The gateway under test on the first CPU, everything else on the others.
    pin: bool,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            envoy: PathBuf::new(),
            wasm: PathBuf::new(),
            noop: PathBuf::new(),
            readsonly: PathBuf::new(),
            tokcount: PathBuf::new(),
            tokcount_wasm: PathBuf::new(),
            wasi_runner: PathBuf::new(),
            replay_wasm: None,
            replay_native: None,
            config: PathBuf::from("examples/filter-config.json"),
            out: PathBuf::from("BENCHMARKS.md"),
            rounds: 5,
            seconds: 3.0,
            warmup: 1.0,
            connections: 16,
            kinds: Kind::ALL.to_vec(),
            starts: 3,
            command: "make bench".to_string(),
            load_only: false,
            trickle_gap: Duration::from_micros(200),
            pin: true,
        };
        for pair in flags::pairs(USAGE) {
            let (flag, value) = pair?;
            let num = |v: &str| flags::positive(&flag, v);
            match flag.as_str() {
                "--envoy" => a.envoy = value.into(),
                "--wasm" => a.wasm = value.into(),
                "--noop" => a.noop = value.into(),
                "--readsonly" => a.readsonly = value.into(),
                "--tokcount" => a.tokcount = value.into(),
                "--tokcount-wasm" => a.tokcount_wasm = value.into(),
                "--wasi-runner" => a.wasi_runner = value.into(),
                "--replay-wasm" => a.replay_wasm = Some(envoy::absolute(Path::new(&value))?),
                "--replay-native" => a.replay_native = Some(envoy::absolute(Path::new(&value))?),
                "--config" => a.config = value.into(),
                "--out" => a.out = value.into(),
                "--rounds" => a.rounds = num(&value)? as u32,
                "--seconds" => a.seconds = num(&value)?,
                "--warmup" => a.warmup = num(&value)?,
                "--connections" => a.connections = num(&value)? as u32,
                "--starts" => a.starts = num(&value)? as u32,
                "--command" => a.command = value,
                "--load-only" => a.load_only = flags::yes(&value),
                "--pin" => a.pin = flags::yes(&value),
                "--trickle-gap-us" => a.trickle_gap = Duration::from_micros(num(&value)? as u64),
                "--kinds" => {
                    a.kinds = value
                        .split(',')
                        .map(|k| {
                            Kind::parse(k.trim()).with_context(|| format!("unknown kind {k:?}"))
                        })
                        .collect::<Result<_>>()?
                }
                _ => bail!("unknown option {flag}\n{USAGE}"),
            }
        }
        for p in [
            &mut a.envoy,
            &mut a.wasm,
            &mut a.noop,
            &mut a.readsonly,
            &mut a.tokcount,
            &mut a.tokcount_wasm,
            &mut a.wasi_runner,
        ] {
            if p.as_os_str().is_empty() {
                bail!("missing a path\n{USAGE}");
            }
            *p = envoy::absolute(p)?;
        }
        Ok(a)
    }
}

/// The filter configuration under test.
struct FilterConfig {
    text: String,
    namespace: String,
    dimension_names: Vec<String>,
}

impl FilterConfig {
    fn read(path: &Path) -> Result<FilterConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Ok(FilterConfig {
            namespace: json["namespace"].as_str().unwrap_or("llm").to_string(),
            dimension_names: json["dimensions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["name"].as_str().map(str::to_string))
                .collect(),
            text,
        })
    }
}

fn main() {
    // The trickling upstream is this binary again, started by `run` as a child process.
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some(TRICKLE_MODE) {
        let gap = argv.next().and_then(|g| g.parse().ok()).unwrap_or(0);
        serve_trickle(Duration::from_micros(gap));
        return;
    }
    if let Err(e) = run() {
        eprintln!("tokenmeter-bench: {e:#}");
        std::process::exit(1);
    }
}

fn say(text: impl AsRef<str>) {
    eprintln!("bench: {}", text.as_ref());
}

fn run() -> Result<()> {
    let started = Instant::now();
    let args = Args::parse()?;
    let config = FilterConfig::read(&args.config)?;
    let mut results = Results {
        machine: machine(&args.envoy),
        params: report::Params {
            command: args.command.clone(),
            filter_config: args.config.display().to_string(),
            rounds: args.rounds,
            seconds: args.seconds,
            warmup_seconds: args.warmup,
            connections: args.connections,
            trickle_gap_us: 0,
        },
        ..Results::default()
    };
    say(format!(
        "load average {} on {} cores",
        results.machine.load_before, results.machine.cores
    ));
    let work = tempfile::tempdir()?;
    results.pinned = args.pin && pin_runner(&results.machine);
    envoy::set_gateway_cpus(results.pinned.then(|| "0".to_string()));
    results.params.trickle_gap_us = args.trickle_gap.as_micros() as u64;

    if !args.load_only {
        say("tokenizer: native, then wasm in V8");
        results.tokenizer_native = Some(tokenizer::native(&args.tokcount, 7)?);
        results.tokenizer_v8 = Some(tokenizer::in_v8(&args.wasi_runner, &args.tokcount_wasm, 7)?);
        if let Some(replay) = &args.replay_wasm {
            say("tokenmeter's own work per exchange in V8, without a host");
            results.own_work_us = tokenizer::replay_in_v8(&args.wasi_runner, replay, 20_000)?;
        }
        match &args.replay_native {
            Some(replay) if valgrind_available() => {
                say("tokenmeter's own instructions per exchange (callgrind, native replay)");
                for kind in Kind::ALL {
                    let n = tokenizer::replay_instructions(replay, kind.name())?;
                    results.own_instructions.push((kind.name().to_string(), n));
                }
            }
            Some(_) => say("no valgrind: instruction counts left out (apt-get install valgrind)"),
            None => {}
        }
    }

    let upstream =
        Envoy::start_upstream(&args.envoy, &bootstraps::upstream()).context("upstream")?;
    let trickle = Trickle::start(args.trickle_gap).context("trickling upstream")?;
    let wasm = args.wasm.display().to_string();
    let noop = args.noop.display().to_string();
    let readsonly = args.readsonly.display().to_string();
    let spec = GatewaySpec {
        filter_config: &config.text,
        dimension_names: &config.dimension_names,
        tokenmeter_wasm: &wasm,
        noop_wasm: &noop,
        readsonly_wasm: &readsonly,
        upstream_port: upstream.listener.port(),
        trickle_port: Some(trickle.port),
        collector_port: None,
    };
    let scripts = Scripts::write(work.path())?;

    if !args.load_only {
        say(format!("start-up: {} starts of each gateway", args.starts));
        results.ready_ms = startup(&args, &spec)?;

        say(format!(
            "memory: each gateway with {:?} workers",
            report::WORKER_COUNTS
        ));
        for g in Gateway::ALL {
            let (memory, first) = memory(&args, &spec, g, &scripts)?;
            results.memory.push((g, memory));
            if first.is_some() {
                results.first_estimate_ms = first;
            }
        }
    }

    say("throughput: starting the three gateways");
    let gateways: Vec<(Gateway, Envoy)> = Gateway::ALL
        .into_iter()
        .map(|g| {
            Ok((
                g,
                Envoy::start(&args.envoy, &bootstraps::gateway(g, &spec), 1)?,
            ))
        })
        .collect::<Result<_>>()?;
    check(&gateways, &config, args.load_only)?;
    measure(&args, &gateways, &scripts, &mut results)?;
    check_counted(&gateways, &config, &results)?;
    drop(gateways);
    drop(upstream);
    drop(trickle);

    results.machine.load_after = load_average();
    results.duration_s = started.elapsed().as_secs_f64();
    let section = report::render(&results);
    let existing = std::fs::read_to_string(&args.out).ok();
    std::fs::write(&args.out, report::splice(existing.as_deref(), &section))
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{section}");
    say(format!(
        "wrote {} in {:.0} s",
        args.out.display(),
        results.duration_s
    ));
    Ok(())
}

/// One wrk script per kind of traffic.
struct Scripts(Vec<(Kind, PathBuf)>);

impl Scripts {
    fn write(dir: &Path) -> Result<Scripts> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let path = dir.join(format!("{}.lua", kind.name()));
            let script = load::script(traffic::PATH, &kind.headers(), &kind.request_body());
            std::fs::write(&path, script)?;
            out.push((kind, path));
        }
        Ok(Scripts(out))
    }

    fn get(&self, kind: Kind) -> &Path {
        self.0
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p.as_path())
            .unwrap_or(Path::new("/nonexistent"))
    }
}

/// Runs wrk and makes sure every request succeeded.
fn load(
    envoy: &Envoy,
    scripts: &Scripts,
    kind: Kind,
    connections: u32,
    secs: f64,
) -> Result<load::Load> {
    let url = envoy.url("");
    let duration = Duration::from_secs_f64(secs);
    let l = if kind.trickled().is_some() {
        load::closed(
            &envoy.url(traffic::PATH),
            &kind.headers(),
            &kind.request_body(),
            "data: [DONE]\n\n",
            connections,
            duration,
        )
    } else {
        load::run(&url, scripts.get(kind), connections, duration)?
    };
    ensure!(
        l.errors == 0 && l.non_2xx == 0 && l.requests > 0,
        "{} traffic through {url}: {} requests, {} errors, {} non-2xx",
        kind.name(),
        l.requests,
        l.errors,
        l.non_2xx
    );
    Ok(l)
}

/// Sends one request of `kind` and returns the reply's status, body and latency.
fn request(agent: &ureq::Agent, envoy: &Envoy, kind: Kind) -> Result<(u16, String, Duration)> {
    let start = Instant::now();
    let mut req = agent.post(&envoy.url(traffic::PATH));
    for (name, value) in kind.headers() {
        req = req.header(name, value);
    }
    let mut resp = req.send(kind.request_body())?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    Ok((status, body, start.elapsed()))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn startup(args: &Args, spec: &GatewaySpec<'_>) -> Result<Vec<(Gateway, Vec<f64>)>> {
    let mut out: Vec<(Gateway, Vec<f64>)> = Gateway::ALL.iter().map(|g| (*g, vec![])).collect();
    for _ in 0..args.starts {
        for (g, times) in &mut out {
            let e = Envoy::start(&args.envoy, &bootstraps::gateway(*g, spec), 1)?;
            times.push(e.ready_after.as_secs_f64() * 1e3);
        }
    }
    Ok(out)
}

/// Lets a process settle (lazy allocations, freed buffers) before its memory is read.
fn settled_rss(envoy: &Envoy) -> Result<f64> {
    std::thread::sleep(Duration::from_millis(500));
    Ok(process::rss_kb(envoy.pid())? as f64)
}

/// RSS of one gateway idle, after traffic whose usage is reported, and (tokenmeter) after
/// estimates in every worker; for each of [`report::WORKER_COUNTS`], so that what one worker
/// adds is a fitted slope rather than one difference. Also the first estimate's latency.
fn memory(
    args: &Args,
    spec: &GatewaySpec<'_>,
    g: Gateway,
    scripts: &Scripts,
) -> Result<(Memory, Option<(f64, f64)>)> {
    let mut m = Memory::default();
    let mut first_estimate = None;
    for workers in report::WORKER_COUNTS {
        let e = Envoy::start(&args.envoy, &bootstraps::gateway(g, spec), workers)?;
        let idle = settled_rss(&e)?;
        for kind in [Kind::Json, Kind::StreamUsage, Kind::StreamInjected] {
            load(&e, scripts, kind, args.connections, 1.0)?;
        }
        let traffic = settled_rss(&e)?;
        m.idle.push((workers, idle));
        m.traffic.push((workers, traffic));
        if g != Gateway::Tokenmeter {
            continue;
        }
        if workers > 1 {
            // 16 connections spread over the workers: each VM builds its tokenizer.
            load(&e, scripts, Kind::StreamEstimated, args.connections, 1.0)?;
            m.estimated.push((workers, settled_rss(&e)?));
            continue;
        }
        let agent = agent();
        let (status, _, first) = request(&agent, &e, Kind::StreamEstimated)?;
        ensure!(status == 200, "estimated request answered {status}");
        m.first_estimate_1 = Some(settled_rss(&e)?);
        let mut next = Vec::new();
        for _ in 0..21 {
            next.push(request(&agent, &e, Kind::StreamEstimated)?.2.as_secs_f64() * 1e3);
        }
        first_estimate = Some((first.as_secs_f64() * 1e3, stats::median(&next)));
        load(&e, scripts, Kind::StreamEstimated, args.connections, 1.0)?;
        m.estimated.push((workers, settled_rss(&e)?));
    }
    Ok((m, first_estimate))
}

/// Sums the series of one metric family in a Prometheus exposition.
fn family_sum(exposition: &str, family: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Before measuring: every gateway answers every kind, and tokenmeter meters what it should
/// (edits the stream it asked usage for, estimates what was not reported).
///
/// With `--load-only`, the Wasm gateways may run other builds of tokenmeter (to compare
/// builds in one run), so only the tokenmeter gateway is held to editing the stream.
fn check(gateways: &[(Gateway, Envoy)], config: &FilterConfig, load_only: bool) -> Result<()> {
    let agent = agent();
    for (g, e) in gateways {
        for kind in Kind::ALL {
            let (status, body, _) = request(&agent, e, kind)?;
            ensure!(
                status == 200,
                "{} answered {} to {}: {body}",
                g.name(),
                status,
                kind.name()
            );
            if kind == Kind::StreamInjected && (!load_only || *g == Gateway::Tokenmeter) {
                let edited = !body.contains("\"usage\"");
                ensure!(
                    edited == (*g == Gateway::Tokenmeter),
                    "{}: the injected stream was {}edited:\n{body}",
                    g.name(),
                    if edited { "" } else { "not " }
                );
            }
        }
    }
    let tm = tokenmeter(gateways)?;
    let text = tm.admin_get("/stats/prometheus")?;
    let ns = &config.namespace;
    let requests = family_sum(&text, &format!("{ns}_requests_total"));
    let tokens = family_sum(&text, &format!("{ns}_tokens_total"));
    // The estimated kinds add tokens on top of what the others report.
    let reported: f64 = Kind::ALL
        .iter()
        .filter_map(|k| k.reported_total_tokens())
        .map(f64::from)
        .sum();
    ensure!(
        requests == Kind::ALL.len() as f64 && tokens > reported,
        "tokenmeter counted {requests} requests and {tokens} tokens for one request of each kind \
         (expected {} requests, more than {reported} tokens):\n{text}",
        Kind::ALL.len()
    );
    Ok(())
}

fn tokenmeter(gateways: &[(Gateway, Envoy)]) -> Result<&Envoy> {
    gateways
        .iter()
        .find(|(g, _)| *g == Gateway::Tokenmeter)
        .map(|(_, e)| e)
        .context("no tokenmeter gateway")
}

/// After measuring: tokenmeter counted at least every request wrk saw complete.
fn check_counted(gateways: &[(Gateway, Envoy)], config: &FilterConfig, r: &Results) -> Result<()> {
    let tm = tokenmeter(gateways)?;
    let counted = family_sum(
        &tm.admin_get("/stats/prometheus")?,
        &format!("{}_requests_total", config.namespace),
    );
    let completed: u64 = r
        .samples
        .iter()
        .filter(|(_, g, _)| *g == Gateway::Tokenmeter)
        .flat_map(|(_, _, s)| s.iter().map(|s| s.requests))
        .sum();
    ensure!(
        counted >= completed as f64,
        "tokenmeter counted {counted} requests, wrk completed {completed} in the measurements alone"
    );
    Ok(())
}

fn measure(
    args: &Args,
    gateways: &[(Gateway, Envoy)],
    scripts: &Scripts,
    results: &mut Results,
) -> Result<()> {
    for kind in &args.kinds {
        for (_, e) in gateways {
            load(e, scripts, *kind, args.connections, args.warmup)?;
        }
    }
    let mut samples: Vec<(Kind, Gateway, Vec<Sample>)> = Vec::new();
    for kind in &args.kinds {
        for (g, _) in gateways {
            samples.push((*kind, *g, Vec::new()));
        }
        results.rounds.push((*kind, Vec::new()));
    }
    for round in 0..args.rounds as usize {
        for kind in &args.kinds {
            let mut cpu = [f64::NAN; 4];
            // Rotate the order each round, so that no gateway always runs first or last.
            for i in 0..gateways.len() {
                let (g, e) = &gateways[(i + round) % gateways.len()];
                let reads_only = *g == Gateway::ReadsOnly;
                let callbacks_before = if reads_only {
                    Some(callbacks(e)?)
                } else {
                    None
                };
                let before = process::cpu_micros(e.pid())?;
                let l = load(e, scripts, *kind, args.connections, args.seconds)?;
                let used = process::cpu_micros(e.pid())? - before;
                let mut s = Sample {
                    requests: l.requests,
                    rps: l.requests_per_second(),
                    cpu_us_per_request: used as f64 / l.requests as f64,
                    p50_us: l.p50_us,
                    p99_us: l.p99_us,
                    body_callbacks: None,
                };
                if let Some(before) = callbacks_before {
                    // The filter publishes its counts every 100 ms.
                    std::thread::sleep(Duration::from_millis(300));
                    s.body_callbacks = callbacks(e)?.per_response_since(&before);
                }
                say(format!(
                    "round {}/{} {:>21} {:>17}: {:6.0} req/s {:7.1} µs/req p50 {:.2} ms p99 {:.2} ms{}",
                    round + 1,
                    args.rounds,
                    kind.name(),
                    g.name(),
                    s.rps,
                    s.cpu_us_per_request,
                    s.p50_us / 1e3,
                    s.p99_us / 1e3,
                    s.body_callbacks
                        .map(|(q, r)| format!(" body callbacks {q:.1} + {r:.1}"))
                        .unwrap_or_default()
                ));
                if let Some(slot) = Gateway::ALL.iter().position(|x| x == g) {
                    cpu[slot] = s.cpu_us_per_request;
                }
                if let Some((_, _, v)) = samples.iter_mut().find(|(k, x, _)| k == kind && x == g) {
                    v.push(s);
                }
            }
            if let Some((_, v)) = results.rounds.iter_mut().find(|(k, _)| k == kind) {
                v.push(cpu);
            }
        }
    }
    results.samples = samples;
    Ok(())
}

/// The reads-only filter's published counts: finished responses and their body callbacks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Callbacks {
    responses: f64,
    request_bodies: f64,
    response_bodies: f64,
}

impl Callbacks {
    /// Request and response body callbacks per finished response since `before`.
    fn per_response_since(&self, before: &Callbacks) -> Option<(f64, f64)> {
        let n = self.responses - before.responses;
        (n > 0.0).then(|| {
            (
                (self.request_bodies - before.request_bodies) / n,
                (self.response_bodies - before.response_bodies) / n,
            )
        })
    }
}

fn callbacks(e: &Envoy) -> Result<Callbacks> {
    let text = e.admin_get("/stats?filter=readsonly")?;
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("wasmcustom.readsonly.{name}: ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(Callbacks {
        responses: stat("responses"),
        request_bodies: stat("request_body_callbacks"),
        response_bodies: stat("response_body_callbacks"),
    })
}

/// The command-line word that makes this binary the trickling upstream.
const TRICKLE_MODE: &str = "--serve-trickle";

/// Serves trickled streams on a loopback port (printed on stdout) until killed.
fn serve_trickle(gap: Duration) {
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
        std::process::exit(1);
    };
    match listener.local_addr() {
        Ok(addr) => println!("{}", addr.port()),
        Err(_) => std::process::exit(1),
    }
    let replies: trickle::Replies = std::sync::Arc::new(|choice: &str| {
        let kind = Kind::parse(choice).filter(|k| k.trickled().is_some())?;
        Some(trickle::Canned {
            content_type: kind.content_type().to_string(),
            pieces: kind
                .response_pieces()
                .into_iter()
                .map(String::into_bytes)
                .collect(),
        })
    });
    trickle::serve(listener, traffic::REPLY_HEADER, replies, gap);
}

/// The trickling upstream, a child process of this runner (so on the runner's CPUs).
struct Trickle {
    child: std::process::Child,
    port: u16,
}

impl Trickle {
    fn start(gap: Duration) -> Result<Trickle> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg(TRICKLE_MODE)
            .arg(gap.as_micros().to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        match line.trim().parse() {
            Ok(port) => Ok(Trickle { child, port }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the trickling upstream did not say its port: {line:?}")
            }
        }
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Puts this runner (and so wrk, the upstreams and Node, which it starts) on every CPU but
/// the first, which the gateways get. False when there is only one CPU.
fn pin_runner(machine: &report::Machine) -> bool {
    if machine.cores < 2 {
        say("one CPU: gateways and load share it (not pinned)");
        return false;
    }
    let others = format!("1-{}", machine.cores - 1);
    let ok = process::pin_self(&others).is_ok();
    if ok {
        say(format!(
            "gateways on CPU 0; load, upstreams and runner on CPUs {others}"
        ));
    } else {
        say("taskset failed: not pinned");
    }
    ok
}

fn valgrind_available() -> bool {
    std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_default()
}

fn machine(envoy_bin: &Path) -> report::Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    report::Machine {
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .trim()
            .to_string(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: process::parse_status_kb(&meminfo, "MemTotal").unwrap_or(0) as f64
            / (1024.0 * 1024.0),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".to_string()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        load_before: load_average(),
        load_after: String::new(),
        envoy: envoy::version(envoy_bin).unwrap_or_default(),
        // `wrk -v` prints "wrk 4.1.0 [epoll] Copyright ...".
        wrk: command_output("wrk", &["-v"])
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string(),
        node: tokenizer::node_version(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_sums_ignore_other_families_and_comments() {
        let text = "# TYPE llm_requests_total counter\nllm_requests_total{model=\"a\"} 3\nllm_requests_total{model=\"b\"} 4\nllm_requests_total_extra 9\nllm_tokens_total 12\n";
        assert_eq!(family_sum(text, "llm_requests_total"), 7.0);
        assert_eq!(family_sum(text, "llm_tokens_total"), 12.0);
    }
}
