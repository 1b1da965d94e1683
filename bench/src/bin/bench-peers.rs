//! `make bench-peers`: tokenmeter against the peer a user would pick instead.
//!
//! LiteLLM's proxy (one worker) and two Envoys, plain and with tokenmeter, sit in front of
//! the canned OpenAI upstream of `make bench`, and wrk sends them the same traffic: JSON
//! with usage, and streams whose client asks for usage (`stream_options.include_usage`).
//! LiteLLM reaches the upstream as an OpenAI-compatible `api_base`, through one model per
//! canned answer whose `extra_headers` name that answer. The gateway under test runs on
//! CPU 0, wrk, the upstream and this runner on CPU 1. Within each round the gateways take
//! turns in an order that rotates; CPU per request is the `utime + stime` of the gateway's
//! whole process tree over a measurement, divided by the requests wrk completed. The
//! results replace the peers section of `BENCHMARKS.md`.

#[path = "../bootstraps.rs"]
#[allow(dead_code)]
mod bootstraps;
#[path = "../envoy.rs"]
#[allow(dead_code)]
mod envoy;
#[path = "../flags.rs"]
#[allow(dead_code)]
mod flags;
#[path = "../load.rs"]
#[allow(dead_code)]
mod load;
#[path = "../process.rs"]
#[allow(dead_code)]
mod process;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;
#[path = "../traffic.rs"]
#[allow(dead_code)]
mod traffic;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bootstraps::{Gateway, GatewaySpec};
use envoy::Envoy;
use serde_json::{json, Value};
use traffic::{Kind, Reply};

const BEGIN: &str = "<!-- peers: begin (written by `make bench-peers`; replaced on every run) -->";
const END: &str = "<!-- peers: end -->";
const USAGE: &str = "usage: bench-peers --envoy PATH --wasm PATH --litellm PATH [--config FILE] \
[--out FILE] [--rounds N] [--seconds S] [--warmup S] [--connections N] [--command TEXT]";

/// The gateway under test runs here; wrk, the upstream and the runner on [`LOAD_CPU`].
const GATEWAY_CPU: &str = "0";
const LOAD_CPU: &str = "1";

/// The traffic compared: what LiteLLM proxies as it is (streams whose client did not ask
/// for usage, or whose upstream reports none, are tokenmeter's own paths).
const KINDS: [(Kind, Reply); 2] = [
    (Kind::Json, Reply::Json),
    (Kind::StreamUsage, Reply::StreamWithUsage),
];

/// Environment of the LiteLLM process: nothing it would do besides proxying and its own
/// usage accounting. Shown in the report.
const LITELLM_ENV: [(&str, &str); 4] = [
    // Its telemetry: this release sends none without a database or endpoint; the veto keeps
    // it so should a default change.
    ("LITELLM_TELEMETRY_DISABLED", "true"),
    // The model price map shipped in the package, not a fetch at start.
    ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
    // Errors only: also turns uvicorn's access log off (Envoy's gateways log nothing).
    ("LITELLM_LOG", "ERROR"),
    // No `.env` file is read (and none reloaded).
    ("LITELLM_MODE", "PRODUCTION"),
];

/// `general_settings` of LiteLLM's configuration besides its master key: with no database
/// there is nowhere to write spend and error logs, so building them is skipped.
fn general_settings() -> Value {
    json!({"disable_spend_logs": true, "disable_error_logs": true})
}

struct Args {
    envoy: PathBuf,
    wasm: PathBuf,
    litellm: PathBuf,
    config: PathBuf,
    out: PathBuf,
    rounds: u32,
    seconds: f64,
    warmup: f64,
    connections: u32,
    command: String,
}

fn args() -> Result<Args> {
    let mut a = Args {
        envoy: PathBuf::new(),
        wasm: PathBuf::new(),
        litellm: PathBuf::new(),
        config: PathBuf::from("examples/filter-config.json"),
        out: PathBuf::from("BENCHMARKS.md"),
        rounds: 5,
        seconds: 5.0,
        warmup: 2.0,
        connections: 4,
        command: "make bench-peers".to_string(),
    };
    for pair in flags::pairs(USAGE) {
        let (flag, v) = pair?;
        let num = |v: &str| flags::positive(&flag, v);
        match flag.as_str() {
            "--envoy" => a.envoy = v.into(),
            "--wasm" => a.wasm = v.into(),
            "--litellm" => a.litellm = v.into(),
            "--config" => a.config = v.into(),
            "--out" => a.out = v.into(),
            "--rounds" => a.rounds = num(&v)? as u32,
            "--seconds" => a.seconds = num(&v)?,
            "--warmup" => a.warmup = num(&v)?,
            "--connections" => a.connections = num(&v)? as u32,
            "--command" => a.command = v,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    for p in [&mut a.envoy, &mut a.wasm, &mut a.litellm, &mut a.config] {
        ensure!(!p.as_os_str().is_empty(), "missing a path\n{USAGE}");
        *p = envoy::absolute(p)?;
    }
    Ok(a)
}

fn say(text: impl AsRef<str>) {
    eprintln!("bench-peers: {}", text.as_ref());
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-peers: {e:#}");
        std::process::exit(1);
    }
}

// --- LiteLLM -------------------------------------------------------------------------------

/// A fresh key for this run: LiteLLM's proxy refuses to start without one, and every client
/// sends it (as OpenAI clients send theirs), to every gateway alike.
fn master_key() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "sk-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// The model name LiteLLM serves for a canned answer.
fn litellm_model(reply: Reply) -> String {
    format!("gpt-4o-{}", reply.header_value())
}

/// LiteLLM's proxy configuration (JSON, which its YAML loader reads): one model per canned
/// answer, each an OpenAI-compatible `api_base` on the upstream with the header that
/// picks the answer.
fn litellm_config(upstream_port: u16, replies: &[Reply], master_key: &str) -> String {
    let models: Vec<Value> = replies
        .iter()
        .map(|r| {
            json!({
                "model_name": litellm_model(*r),
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "api_base": format!("http://127.0.0.1:{upstream_port}/v1"),
                    "api_key": "bench",
                    "extra_headers": {traffic::REPLY_HEADER: r.header_value()},
                },
            })
        })
        .collect();
    let mut settings = general_settings();
    settings["master_key"] = json!(master_key);
    let config = json!({"model_list": models, "general_settings": settings});
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

/// The request body LiteLLM is sent: the client's, naming LiteLLM's model for `reply`.
fn litellm_body(kind: Kind, reply: Reply) -> Result<String> {
    let body = kind.request_body();
    let from = r#""model":"gpt-4o""#;
    ensure!(body.contains(from), "the request names no gpt-4o: {body}");
    Ok(body.replacen(from, &format!(r#""model":"{}""#, litellm_model(reply)), 1))
}

/// A running LiteLLM proxy; its process tree is killed when dropped. It stays in the
/// runner's process group, so that an interrupt stops it with the runner.
struct LiteLlm {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl LiteLlm {
    fn start(bin: &Path, dir: &Path, upstream_port: u16, master_key: &str) -> Result<LiteLlm> {
        let config = dir.join("litellm.yaml");
        let replies: Vec<Reply> = KINDS.iter().map(|(_, r)| *r).collect();
        std::fs::write(&config, litellm_config(upstream_port, &replies, master_key))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join("litellm.log");
        let out = std::fs::File::create(&log)?;
        let mut c = Command::new("taskset");
        c.args(["-c", GATEWAY_CPU])
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--num_workers", "1"])
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .envs(LITELLM_ENV)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = c.spawn().with_context(|| format!("starting {c:?}"))?;
        let mut l = LiteLlm { child, port, log };
        l.wait_ready()?;
        Ok(l)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        let agent = agent();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("LiteLLM exited ({status}) during start:\n{}", self.log());
            }
            ensure!(
                Instant::now() < deadline,
                "LiteLLM was not ready within 180 s:\n{}",
                self.log()
            );
            let ready = agent
                .get(&format!("{}/health/liveliness", self.url()))
                .call()
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        // Its descendants first, by pid, then the proxy itself.
        let pids: Vec<String> = process::descendants(self.child.id())
            .iter()
            .map(u32::to_string)
            .collect();
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installed versions: LiteLLM, and the Python, uvicorn and uvloop it runs on.
fn litellm_versions(bin: &Path) -> String {
    let python = bin.with_file_name("python");
    let script = "import importlib.metadata as m, sys\n\
        v = lambda p: m.version(p) if p in {d.metadata['Name'].lower() for d in m.distributions()} else 'absent'\n\
        print(f\"LiteLLM {v('litellm')} (Python {sys.version.split()[0]}, uvicorn {v('uvicorn')}, uvloop {v('uvloop')})\")";
    Command::new(python)
        .args(["-c", script])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "LiteLLM (version unknown)".to_string())
}

// --- The gateways --------------------------------------------------------------------------

enum Proc {
    Envoy(Envoy),
    LiteLlm(LiteLlm),
}

struct Peer {
    name: &'static str,
    proc: Proc,
}

impl Peer {
    fn url(&self, path: &str) -> String {
        match &self.proc {
            Proc::Envoy(e) => e.url(path),
            Proc::LiteLlm(l) => format!("{}{path}", l.url()),
        }
    }

    fn pid(&self) -> u32 {
        match &self.proc {
            Proc::Envoy(e) => e.pid(),
            Proc::LiteLlm(l) => l.child.id(),
        }
    }

    fn body(&self, kind: Kind, reply: Reply) -> Result<String> {
        match self.proc {
            Proc::Envoy(_) => Ok(kind.request_body()),
            Proc::LiteLlm(_) => litellm_body(kind, reply),
        }
    }

    fn is_litellm(&self) -> bool {
        matches!(self.proc, Proc::LiteLlm(_))
    }
}

fn gateway_name(g: Gateway) -> &'static str {
    #[allow(unreachable_patterns)]
    match g {
        Gateway::Tokenmeter => "Envoy with tokenmeter",
        Gateway::Plain => "plain Envoy",
        _ => g.name(),
    }
}

/// The filter configuration: its text, metrics namespace and dimension names.
fn filter_config(path: &Path) -> Result<(String, String, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let names = v["dimensions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str().map(str::to_string))
        .collect();
    let ns = v["namespace"].as_str().unwrap_or("llm").to_string();
    Ok((text, ns, names))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// The assistant's text of an answer, after checking that it is complete: a JSON
/// completion with the upstream's usage, or a stream with that usage ending in `[DONE]`.
fn answer_text(stream: bool, body: &str) -> Result<String> {
    let want = traffic::REPORTED_TOTAL_TOKENS;
    if !stream {
        let v: Value = serde_json::from_str(body).context("the answer is not JSON")?;
        ensure!(
            v["usage"]["total_tokens"] == want,
            "the JSON answer's usage is not the upstream's ({want} tokens): {body}"
        );
        return v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .context("the JSON answer has no message");
    }
    let events: Vec<&str> = body
        .split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    ensure!(
        events.last() == Some(&"data: [DONE]"),
        "the stream does not end in [DONE]: {body}"
    );
    let mut text = String::new();
    let mut usages = 0;
    for e in events.iter().take(events.len().saturating_sub(1)) {
        let data = e
            .strip_prefix("data:")
            .with_context(|| format!("an event is not data: {e}"))?;
        let v: Value = serde_json::from_str(data.trim())
            .with_context(|| format!("an event is not JSON: {e}"))?;
        ensure!(v.get("error").is_none(), "the stream carries an error: {e}");
        if v["usage"].is_object() {
            ensure!(
                v["usage"]["total_tokens"] == want,
                "the stream's usage is not the upstream's ({want} tokens): {e}"
            );
            usages += 1;
        }
        for choice in v["choices"].as_array().into_iter().flatten() {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    ensure!(usages >= 1, "the stream has no usage: {body}");
    Ok(text)
}

/// Before measuring: every gateway gives the upstream's answer to every kind, with usage.
fn check(peers: &[Peer], authorization: &str) -> Result<()> {
    let agent = agent();
    for (kind, reply) in KINDS {
        let mut texts = Vec::new();
        for p in peers {
            let mut resp = agent
                .post(&p.url(traffic::PATH))
                .header("content-type", "application/json")
                .header(traffic::REPLY_HEADER, reply.header_value())
                .header("authorization", authorization)
                .send(p.body(kind, reply)?)?;
            let status = resp.status().as_u16();
            let body = resp.body_mut().read_to_string()?;
            ensure!(
                status == 200,
                "{} answered {status} to {}: {body}",
                p.name,
                kind.name()
            );
            let text = answer_text(reply != Reply::Json, &body)
                .with_context(|| format!("{}, {}", p.name, kind.name()))?;
            ensure!(!text.is_empty(), "{}: an empty answer", p.name);
            texts.push((p.name, text));
        }
        for (name, text) in &texts {
            ensure!(
                Some(text) == texts.first().map(|(_, t)| t),
                "{name} changed the answer to {}: {text:?}",
                kind.name()
            );
        }
    }
    Ok(())
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

// --- Load ----------------------------------------------------------------------------------

/// The wrk script: `load::script`'s, plus a check of every answer's body (usage, and for
/// streams the closing `[DONE]`) whose failures are printed as a second JSON line.
fn wrk_script(headers: &[(&str, &str)], body: &str, stream: bool) -> String {
    let mut s = load::script(traffic::PATH, headers, body);
    let tail = if stream { "data: [DONE]" } else { "" };
    s.push_str(&format!(
        r#"
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  local tail = "{tail}"
  local ok = body:find('"total_tokens":', 1, true)
    and (tail == "" or body:find(tail, math.max(1, #body - #tail - 8), true))
  if not ok then bad = bad + 1 end
end
local counted = done
done = function(summary, latency, requests)
  counted(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  io.write(string.format('{{"bad_bodies":%d}}\n', b))
end
"#
    ));
    s
}

/// The second line of [`wrk_script`]'s output.
fn bad_bodies(output: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with("{\"bad_bodies\""))?;
    serde_json::from_str::<Value>(line).ok()?["bad_bodies"].as_u64()
}

/// Runs wrk (one thread) against `url`; every request must have succeeded.
fn wrk(url: &str, script: &Path, connections: u32, secs: f64) -> Result<load::Load> {
    let out = Command::new("wrk")
        .args(["-t", "1", "-c", &connections.to_string()])
        .arg(format!("-d{}s", secs.round().max(1.0)))
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk (make bench-deps installs it)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let l = load::parse(&stdout)?;
    let bad = bad_bodies(&stdout).context("wrk printed no body check")?;
    ensure!(
        l.requests > 0 && l.errors == 0 && l.non_2xx == 0 && bad == 0,
        "through {url}: {} requests, {} errors, {} non-2xx, {bad} incomplete answers",
        l.requests,
        l.errors,
        l.non_2xx
    );
    Ok(l)
}

/// Waits until the process tree is idle again (wrk leaves requests in flight when it
/// stops), so that it does not take CPU 0 from the next measurement.
fn settle(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = process::tree_cpu_micros(pid)?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = process::tree_cpu_micros(pid)?;
        // Under 5 % of a CPU.
        if now - last <= 10_000 {
            break;
        }
        last = now;
    }
    Ok(())
}

struct Sample {
    rps: f64,
    cpu_us: f64,
    requests: u64,
}

fn run() -> Result<()> {
    let started = Instant::now();
    let a = args()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    ensure!(
        cores >= 2,
        "{cores} CPU: the gateway and the load need one each"
    );
    let load_before = load_average();
    process::pin_self(LOAD_CPU)?;
    say(format!(
        "gateways on CPU {GATEWAY_CPU}; wrk, the upstream and this runner on CPU {LOAD_CPU}"
    ));
    let work = tempfile::tempdir()?;
    let (config_text, namespace, names) = filter_config(&a.config)?;

    let upstream = Envoy::start_upstream(&a.envoy, &bootstraps::upstream()).context("upstream")?;
    envoy::set_gateway_cpus(Some(GATEWAY_CPU.to_string()));
    let wasm = a.wasm.display().to_string();
    let spec = GatewaySpec {
        filter_config: &config_text,
        dimension_names: &names,
        tokenmeter_wasm: &wasm,
        noop_wasm: &wasm,
        readsonly_wasm: &wasm,
        upstream_port: upstream.listener.port(),
        trickle_port: None,
        collector_port: None,
    };
    let mut peers = Vec::new();
    for g in [Gateway::Plain, Gateway::Tokenmeter] {
        let e = Envoy::start(&a.envoy, &bootstraps::gateway(g, &spec), 1)
            .with_context(|| gateway_name(g))?;
        peers.push(Peer {
            name: gateway_name(g),
            proc: Proc::Envoy(e),
        });
    }
    say("starting LiteLLM's proxy");
    let t = Instant::now();
    let key = master_key()?;
    let authorization = format!("Bearer {key}");
    let litellm = LiteLlm::start(&a.litellm, work.path(), upstream.listener.port(), &key)?;
    say(format!(
        "LiteLLM ready after {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    peers.push(Peer {
        name: "LiteLLM proxy",
        proc: Proc::LiteLlm(litellm),
    });
    check(&peers, &authorization)?;

    let mut scripts = Vec::new();
    for (kind, reply) in KINDS {
        for (i, p) in peers.iter().enumerate() {
            let path = work.path().join(format!("{}-{i}.lua", kind.name()));
            let headers = [
                ("content-type", "application/json"),
                (traffic::REPLY_HEADER, reply.header_value()),
                ("authorization", authorization.as_str()),
            ];
            std::fs::write(
                &path,
                wrk_script(&headers, &p.body(kind, reply)?, reply != Reply::Json),
            )?;
            scripts.push(((kind, i), path));
        }
    }
    let script = |kind: Kind, i: usize| -> &Path {
        scripts
            .iter()
            .find(|(k, _)| *k == (kind, i))
            .map_or(Path::new("/nonexistent"), |(_, p)| p.as_path())
    };

    for (kind, _) in KINDS {
        for (i, p) in peers.iter().enumerate() {
            wrk(&p.url(""), script(kind, i), a.connections, a.warmup)?;
            settle(p.pid())?;
        }
    }
    // samples[kind][peer]
    let mut samples: Vec<Vec<Vec<Sample>>> = KINDS
        .iter()
        .map(|_| peers.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..a.rounds as usize {
        for (k, (kind, _)) in KINDS.iter().enumerate() {
            for j in 0..peers.len() {
                // Rotate the order each round, so that no gateway always runs first or last.
                let i = (j + round) % peers.len();
                let Some(p) = peers.get(i) else { continue };
                let before = process::tree_cpu_micros(p.pid())?;
                let l = wrk(&p.url(""), script(*kind, i), a.connections, a.seconds)?;
                let used = process::tree_cpu_micros(p.pid())? - before;
                settle(p.pid())?;
                let s = Sample {
                    rps: l.requests_per_second(),
                    cpu_us: used as f64 / l.requests as f64,
                    requests: l.requests,
                };
                say(format!(
                    "round {}/{} {:>9} {:>21}: {:7.0} req/s {:8.1} µs/req",
                    round + 1,
                    a.rounds,
                    kind.name(),
                    p.name,
                    s.rps,
                    s.cpu_us
                ));
                if let Some(v) = samples.get_mut(k).and_then(|v| v.get_mut(i)) {
                    v.push(s);
                }
            }
        }
    }

    // tokenmeter metered every request wrk saw complete.
    if let Some((
        i,
        Peer {
            proc: Proc::Envoy(e),
            ..
        },
    )) = peers
        .iter()
        .enumerate()
        .find(|(_, p)| p.name == gateway_name(Gateway::Tokenmeter))
    {
        let counted = family_sum(
            &e.admin_get("/stats/prometheus")?,
            &format!("{namespace}_requests_total"),
        );
        let completed: u64 = samples
            .iter()
            .filter_map(|v| v.get(i))
            .flatten()
            .map(|s| s.requests)
            .sum();
        ensure!(
            counted >= completed as f64,
            "tokenmeter counted {counted} requests, wrk completed {completed} in the measurements alone"
        );
    }

    let rows: Vec<Row> = KINDS
        .iter()
        .enumerate()
        .flat_map(|(k, (kind, _))| {
            let samples = &samples;
            peers.iter().enumerate().map(move |(i, p)| {
                let v = samples.get(k).and_then(|v| v.get(i));
                let cpu: Vec<f64> = v.into_iter().flatten().map(|s| s.cpu_us).collect();
                let rps: Vec<f64> = v.into_iter().flatten().map(|s| s.rps).collect();
                Row {
                    gateway: p.name,
                    litellm: p.is_litellm(),
                    traffic: kind.title(),
                    rps: stats::median(&rps),
                    cpu: stats::median(&cpu),
                    cpu_range: stats::range(&cpu),
                    busy: stats::median(
                        &v.into_iter()
                            .flatten()
                            .map(|s| s.cpu_us * s.rps / 1e4)
                            .collect::<Vec<_>>(),
                    ),
                    fewest: v
                        .into_iter()
                        .flatten()
                        .map(|s| s.requests)
                        .min()
                        .unwrap_or(0),
                }
            })
        })
        .collect();
    let litellm_versions = litellm_versions(&a.litellm);
    drop(peers);
    drop(upstream);

    let section = report(&Report {
        when: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .trim()
            .to_string(),
        seconds: started.elapsed().as_secs_f64(),
        machine: machine(cores),
        load: (load_before, load_average()),
        envoy: envoy::version(&a.envoy).unwrap_or_default(),
        litellm: litellm_versions,
        wrk: command_output("wrk", &["-v"])
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string(),
        command: a.command.clone(),
        config: a
            .config
            .strip_prefix(std::env::current_dir()?)
            .unwrap_or(&a.config)
            .display()
            .to_string(),
        rounds: a.rounds,
        secs: a.seconds,
        warmup: a.warmup,
        connections: a.connections,
        rows,
    });
    let existing = std::fs::read_to_string(&a.out).unwrap_or_default();
    std::fs::write(&a.out, splice(&existing, &section))
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!("{section}");
    say(format!(
        "wrote {} in {:.0} s",
        a.out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

// --- The report ----------------------------------------------------------------------------

struct Row {
    gateway: &'static str,
    litellm: bool,
    traffic: &'static str,
    rps: f64,
    cpu: f64,
    cpu_range: (f64, f64),
    /// The share of CPU 0 the gateway used (median): near 100 % it is the bottleneck.
    busy: f64,
    /// The fewest requests a measurement completed.
    fewest: u64,
}

struct Report {
    when: String,
    seconds: f64,
    machine: String,
    load: (String, String),
    envoy: String,
    litellm: String,
    wrk: String,
    command: String,
    config: String,
    rounds: u32,
    secs: f64,
    warmup: f64,
    connections: u32,
    rows: Vec<Row>,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_default()
}

fn machine(cores: usize) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".to_string());
    let gib = process::parse_status_kb(&read("/proc/meminfo"), "MemTotal").unwrap_or(0) as f64
        / (1024.0 * 1024.0);
    format!(
        "{cores} cores ({cpu}), {gib:.1} GiB memory, Linux {}",
        read("/proc/sys/kernel/osrelease").trim()
    )
}

fn report(r: &Report) -> String {
    let env: Vec<String> = LITELLM_ENV
        .iter()
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect();
    let settings: Vec<String> = general_settings()
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("`{k}: {v}`"))
        .collect();
    let mut table = String::from(
        "| gateway | traffic | requests/s | CPU µs/request (min–max) | CPU / Envoy with tokenmeter | CPU 0 busy |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    let tokenmeter = gateway_name(Gateway::Tokenmeter);
    for row in &r.rows {
        let base = r
            .rows
            .iter()
            .find(|x| x.traffic == row.traffic && x.gateway == tokenmeter)
            .map_or(f64::NAN, |x| x.cpu);
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} ({:.0}–{:.0}) | {:.2} | {:.0} % |\n",
            row.gateway,
            row.traffic,
            row.rps,
            row.cpu,
            row.cpu_range.0,
            row.cpu_range.1,
            row.cpu / base,
            row.busy
        ));
    }
    let ratio = |traffic: &str| -> f64 {
        let cpu = |litellm: bool, gateway: Option<&str>| {
            r.rows
                .iter()
                .find(|x| {
                    x.traffic == traffic
                        && x.litellm == litellm
                        && gateway.is_none_or(|g| x.gateway == g)
                })
                .map_or(f64::NAN, |x| x.cpu)
        };
        cpu(true, None) / cpu(false, Some(tokenmeter))
    };
    let fewest = r
        .rows
        .iter()
        .filter(|x| x.litellm)
        .map(|x| x.fewest)
        .min()
        .unwrap_or(0);
    let ratios: Vec<String> = KINDS
        .iter()
        .map(|(k, _)| format!("{:.0}× ({})", ratio(k.title()), k.title()))
        .collect();
    format!(
        "{BEGIN}\n\n## Against the peers\n\n\
- **When:** {when} (the run took {secs_run:.0} s); `{command}`\n\
- **Machine:** {machine}\n\
- **Load average** (1, 5, 15 min): {l0} at the start, {l1} at the end\n\
- **Versions:** Envoy {envoy} (V8); {litellm}; wrk {wrk}\n\
- **Gateways:** plain Envoy and Envoy with tokenmeter (`{config}`), the bootstraps of \
`make bench` with one worker each; LiteLLM's proxy with one worker (`--num_workers 1`, \
uvicorn), one model per canned answer, each an OpenAI-compatible `api_base` on the upstream \
whose `extra_headers` name that answer. For LiteLLM: no database, {settings}, and \
{env} (its telemetry off, the price map it ships rather than a fetch, no access log). \
The proxy refuses to start without a master key: one is made for the run, and every client \
sends it as its bearer token, to every gateway alike.\n\
- **Pinning:** the gateway under test on CPU {GATEWAY_CPU}, wrk, the upstream and the \
runner on CPU {LOAD_CPU} (`taskset`).\n\
- **Load:** wrk with one thread and {conns} connections for every gateway, {secs} s per \
measurement after {warmup} s of warm-up per gateway and traffic kind; {rounds} rounds, the \
gateways alternating in a rotating order within each round. Every answer's body is checked \
(usage, and a stream's closing `[DONE]`), and every request must succeed.\n\
- **CPU per request** is the `utime + stime` of the gateway's process tree (`/proc/PID/stat`, \
with its reaped children's) over the measurement, divided by the requests wrk completed.\n\n\
### CPU per request and throughput (medians of {rounds} rounds)\n\n\
{table}\n\
LiteLLM spends {ratios} the CPU per request of Envoy with tokenmeter.\n\n\
*CPU 0 busy* is CPU per request times requests per second. A gateway near 100 % is the \
bottleneck, and its requests/s is what one core of it serves; one below is served as fast \
as wrk and the upstream on CPU {LOAD_CPU} send, and its CPU per request is the figure to \
compare. When wrk stops, up to {conns} requests are in flight, partly served and not \
counted: that adds at most {bound:.1} % to LiteLLM's CPU per request ({conns} of the \
{fewest} requests of its shortest measurement), less to the Envoys'.\n\n{END}\n",
        when = r.when,
        secs_run = r.seconds,
        command = r.command,
        machine = r.machine,
        l0 = r.load.0,
        l1 = r.load.1,
        envoy = r.envoy,
        litellm = r.litellm,
        wrk = r.wrk,
        config = r.config,
        settings = settings.join(", "),
        env = env.join(", "),
        conns = r.connections,
        secs = r.secs,
        warmup = r.warmup,
        rounds = r.rounds,
        ratios = ratios.join(" and "),
        bound = 100.0 * f64::from(r.connections) / fewest.max(1) as f64,
    )
}

/// Replaces the peers section of the report, or appends it.
fn splice(text: &str, section: &str) -> String {
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let after = &text[e + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{section}{after}", &text[..b])
        }
        _ => format!("{}\n\n{section}", text.trim_end_matches('\n')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_litellm_config_routes_each_model_to_its_answer() {
        let v: Value = serde_json::from_str(&litellm_config(
            8123,
            &[Reply::Json, Reply::StreamWithUsage],
            "sk-k",
        ))
        .unwrap();
        let models = v["model_list"].as_array().unwrap();
        assert_eq!(models.len(), 2);
        for (m, reply) in models.iter().zip(["json", "sse-usage"]) {
            assert_eq!(m["model_name"], format!("gpt-4o-{reply}"));
            let p = &m["litellm_params"];
            assert_eq!(p["model"], "openai/gpt-4o");
            assert_eq!(p["api_base"], "http://127.0.0.1:8123/v1");
            assert_eq!(p["extra_headers"]["x-bench-reply"], reply);
        }
        assert_eq!(v["general_settings"]["disable_spend_logs"], true);
        assert_eq!(v["general_settings"]["master_key"], "sk-k");
        let body: Value =
            serde_json::from_str(&litellm_body(Kind::StreamUsage, Reply::StreamWithUsage).unwrap())
                .unwrap();
        assert_eq!(body["model"], "gpt-4o-sse-usage");
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn answers_are_checked_whole() {
        let json = Reply::Json.body();
        let sse = Reply::StreamWithUsage.body();
        let text = answer_text(false, &json).unwrap();
        assert!(text.starts_with("A gateway sits"));
        assert_eq!(answer_text(true, &sse).unwrap(), text);
        let cut = sse.replace("data: [DONE]\n\n", "");
        assert!(answer_text(true, &cut).is_err());
        assert!(answer_text(true, &Reply::StreamWithoutUsage.body()).is_err());
        let error = sse.replacen("data: {", "data: {\"error\":{\"message\":\"x\"},", 1);
        assert!(answer_text(true, &error).is_err());
    }

    #[test]
    fn the_section_is_replaced_between_its_markers() {
        let first = splice("# B\n\ntext\n", &format!("{BEGIN}\none\n{END}\n"));
        assert_eq!(first, format!("# B\n\ntext\n\n{BEGIN}\none\n{END}\n"));
        let second = splice(
            &format!("{first}after\n"),
            &format!("{BEGIN}\ntwo\n{END}\n"),
        );
        assert_eq!(
            second,
            format!("# B\n\ntext\n\n{BEGIN}\ntwo\n{END}\nafter\n")
        );
        let s = wrk_script(&[("x-a", "b")], "{}", true);
        assert!(s.contains("function response") && s.contains("data: [DONE]"));
        assert_eq!(
            bad_bodies("{\"requests\":1}\n{\"bad_bodies\":3}\n"),
            Some(3)
        );
    }
}
