//! `make bench-console`: what the console and its rollups cost, measured on this machine.
//!
//! 1. **Rollups in the filter.** tokenmeter's own code per JSON exchange in V8 without a
//!    host (`bench/wasm/replay` under Node), with and without rollups kept: the exact cost
//!    of keeping them, which the gateway's CPU cannot resolve. Then two tokenmeter gateways with the same `collect` block (no
//!    records sampled) in front of the canned upstream, one sending usage rollups every
//!    second to a real `tokenmeter serve`, the other with rollups off
//!    (`rollup_interval_ms: 0`); wrk loads them in turn with JSON traffic, alternating the
//!    order each round, and the Envoy process's CPU per request is compared.
//! 2. **The store's biggest query.** A store holding 30 days of rollups from 50 gateways
//!    with 200 series each (10,000 series, each active every hour), filled directly in
//!    the store's tiers at schema version 3 and migrated by the binary (which fills the
//!    marginals); `tokenmeter serve` on it answers the console's 30-day usage
//!    query (daily steps, grouped by model) and its operations query, timed over HTTP.
//! 3. **The console's first render** of Overview for those 30 days in Debian's Chromium
//!    (through chromedriver's WebDriver API), from navigation to the drawn view.
//!
//! The results replace the console section of `BENCHMARKS.md`.

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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bootstraps::{Gateway, GatewaySpec};
use envoy::Envoy;
use serde_json::{json, Value};
use traffic::Kind;

const BEGIN: &str =
    "<!-- console: begin (written by `make bench-console`; replaced on every run) -->";
const END: &str = "<!-- console: end -->";
const USAGE: &str = "usage: bench-console --envoy PATH --wasm PATH --tokenmeter PATH --replay-wasm PATH \
--wasi-runner PATH --replay-native PATH [--config FILE] \
[--out FILE] [--rounds N] [--seconds S] [--gateways N] [--series N] [--days N] [--chromedriver PATH]";

struct Args {
    envoy: PathBuf,
    wasm: PathBuf,
    tokenmeter: PathBuf,
    config: PathBuf,
    out: PathBuf,
    rounds: u32,
    seconds: f64,
    gateways: u32,
    series: u32,
    days: u32,
    chromedriver: PathBuf,
    replay_wasm: PathBuf,
    replay_native: PathBuf,
    wasi_runner: PathBuf,
}

fn args() -> Result<Args> {
    let mut a = Args {
        envoy: PathBuf::new(),
        wasm: PathBuf::new(),
        tokenmeter: PathBuf::new(),
        config: PathBuf::from("examples/filter-config.json"),
        out: PathBuf::from("BENCHMARKS.md"),
        rounds: 7,
        seconds: 3.0,
        gateways: 50,
        series: 200,
        days: 30,
        chromedriver: PathBuf::from("/usr/bin/chromedriver"),
        replay_wasm: PathBuf::new(),
        replay_native: PathBuf::new(),
        wasi_runner: PathBuf::new(),
    };
    for pair in flags::pairs(USAGE) {
        let (flag, v) = pair?;
        let num = |v: &str| flags::positive(&flag, v);
        match flag.as_str() {
            "--envoy" => a.envoy = v.into(),
            "--wasm" => a.wasm = v.into(),
            "--tokenmeter" => a.tokenmeter = v.into(),
            "--config" => a.config = v.into(),
            "--out" => a.out = v.into(),
            "--rounds" => a.rounds = num(&v)? as u32,
            "--seconds" => a.seconds = num(&v)?,
            "--gateways" => a.gateways = num(&v)? as u32,
            "--series" => a.series = num(&v)? as u32,
            "--days" => a.days = num(&v)? as u32,
            "--chromedriver" => a.chromedriver = v.into(),
            "--replay-wasm" => a.replay_wasm = v.into(),
            "--replay-native" => a.replay_native = v.into(),
            "--wasi-runner" => a.wasi_runner = v.into(),
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    for p in [
        &mut a.envoy,
        &mut a.wasm,
        &mut a.tokenmeter,
        &mut a.replay_wasm,
        &mut a.replay_native,
        &mut a.wasi_runner,
    ] {
        ensure!(!p.as_os_str().is_empty(), "missing a path\n{USAGE}");
        *p = envoy::absolute(p)?;
    }
    Ok(a)
}

fn say(text: impl AsRef<str>) {
    eprintln!("bench-console: {}", text.as_ref());
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-console: {e:#}");
        std::process::exit(1);
    }
}

/// A running `tokenmeter serve`; killed when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(bin: &Path, db: &Path) -> Result<Serve> {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting tokenmeter serve")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("tokenmeter serve printed {line:?}"))?
            .to_string();
        Ok(Serve { child, url })
    }

    fn port(&self) -> Result<u16> {
        Ok(self.url.rsplit(':').next().unwrap_or_default().parse()?)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn get_json(url: &str) -> Result<(u16, Value)> {
    let mut r = agent().get(url).call()?;
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string()?;
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    ))
}

struct Figures {
    /// Instructions per exchange natively (callgrind), with and without rollups.
    instructions: (f64, f64),
    replay_on: Vec<f64>,
    replay_off: Vec<f64>,
    cpu_on: Vec<f64>,
    cpu_off: Vec<f64>,
    batches_sent: f64,
    fill: (u64, f64, u64),
    usage_ms: Vec<f64>,
    operations_ms: Vec<f64>,
    usage_rows: u64,
    render_ms: Vec<f64>,
}

fn run() -> Result<()> {
    let started = Instant::now();
    let a = args()?;
    let work = tempfile::tempdir()?;
    // BENCH_KEEP=1 keeps the filled store (its path is printed) for a closer look.
    let work_path = work.path().to_path_buf();
    if std::env::var_os("BENCH_KEEP").is_some() {
        say(format!("keeping {}", work_path.display()));
        std::mem::forget(work);
    }
    let mut f = Figures {
        instructions: (0.0, 0.0),
        replay_on: vec![],
        replay_off: vec![],
        cpu_on: vec![],
        cpu_off: vec![],
        batches_sent: 0.0,
        fill: (0, 0.0, 0),
        usage_ms: vec![],
        operations_ms: vec![],
        usage_rows: 0,
        render_ms: vec![],
    };
    replay(&a, &mut f)?;
    rollups_cpu(&a, &work_path, &mut f)?;
    let db = work_path.join("fleet.db");
    f.fill = fill_store(&a, &db)?;
    let serve = Serve::start(&a.tokenmeter, &db)?;
    let query = "window=P30D&step=P1D&group_by=model";
    for (endpoint, into) in [("usage", 0), ("operations", 1)] {
        for i in 0..6 {
            let t = Instant::now();
            let (status, body) = get_json(&format!("{}/api/v1/{endpoint}?{query}", serve.url))?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            ensure!(status == 200, "{endpoint}: {status} {body}");
            if endpoint == "usage" {
                f.usage_rows = body["totals"]["requests"].as_u64().unwrap_or(0);
            }
            // The first answer warms SQLite's page cache; the figures are the others.
            if i > 0 {
                [&mut f.usage_ms, &mut f.operations_ms][into].push(ms);
            }
        }
    }
    say(format!(
        "usage query: {:?} ms; operations: {:?} ms",
        f.usage_ms, f.operations_ms
    ));
    f.render_ms = first_render(&a, &serve.url)?;
    drop(serve);
    let section = report(&a, &f, started.elapsed().as_secs_f64());
    let existing = std::fs::read_to_string(&a.out).unwrap_or_default();
    std::fs::write(&a.out, splice(&existing, &section))?;
    println!("{section}");
    Ok(())
}

/// Instructions of `exchanges` JSON exchanges (and the tenth more of warm-up) natively under
/// callgrind: the same count on every run, however loaded the machine is.
fn instructions(a: &Args, exchanges: u32, rollups: bool) -> Result<f64> {
    let mut c = Command::new("valgrind");
    c.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(&a.replay_native)
        .args(["json", &exchanges.to_string()]);
    if rollups {
        c.arg("rollups");
    }
    let out = c
        .output()
        .with_context(|| format!("running {c:?} (valgrind installed?)"))?;
    ensure!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let collected = err
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .with_context(|| format!("callgrind printed no count: {err}"))?;
    Ok(collected)
}

/// tokenmeter's own code per JSON exchange in V8, with and without rollups, alternating;
/// and natively in instructions, where the difference is exact.
fn replay(a: &Args, f: &mut Figures) -> Result<()> {
    // Two lengths: the difference is the cost of 2,000 exchanges (2,200 with warm-up less
    // 220), the fixed start-up cancelled out.
    let per_exchange = |rollups: bool| -> Result<f64> {
        Ok((instructions(a, 2000, rollups)? - instructions(a, 200, rollups)?) / 1980.0)
    };
    f.instructions = (per_exchange(true)?, per_exchange(false)?);
    say(format!(
        "instructions per JSON exchange natively: {:.0} with rollups, {:.0} without",
        f.instructions.0, f.instructions.1
    ));
    for round in 0..a.rounds as usize {
        for i in 0..2 {
            let rollups = (i + round) % 2 == 0;
            let mut c = Command::new("node");
            c.arg("--no-warnings")
                .arg(&a.wasi_runner)
                .arg(&a.replay_wasm)
                .args(["json", "20000"]);
            if rollups {
                c.arg("rollups");
            }
            let out = c.output().with_context(|| format!("running {c:?}"))?;
            ensure!(
                out.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout)?;
            let us = v["us_per_exchange"]
                .as_f64()
                .context("no us_per_exchange")?;
            if rollups {
                &mut f.replay_on
            } else {
                &mut f.replay_off
            }
            .push(us);
        }
    }
    say(format!(
        "own code per JSON exchange in V8: rollups {:?} µs, without {:?} µs",
        f.replay_on, f.replay_off
    ));
    Ok(())
}

/// CPU per JSON request of two tokenmeter gateways, rollups on and off.
fn rollups_cpu(a: &Args, dir: &Path, f: &mut Figures) -> Result<()> {
    let collector = Serve::start(&a.tokenmeter, &dir.join("rollups.db"))?;
    let base: Value = serde_json::from_str(&std::fs::read_to_string(&a.config)?)?;
    let with = |interval: u32| -> String {
        let mut c = base.clone();
        c["collect"] = json!({"cluster": "tokenmeter_collector", "sample_rate": 0,
                              "rollup_interval_ms": interval});
        c.to_string()
    };
    let names: Vec<String> = base["dimensions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str().map(str::to_string))
        .collect();
    let upstream = Envoy::start(&a.envoy, &bootstraps::upstream(), 1)?;
    let wasm = a.wasm.display().to_string();
    let (on_cfg, off_cfg) = (with(1000), with(0));
    let spec = |cfg: &str| -> Result<String> {
        Ok(bootstraps::gateway(
            Gateway::Tokenmeter,
            &GatewaySpec {
                filter_config: cfg,
                dimension_names: &names,
                tokenmeter_wasm: &wasm,
                noop_wasm: &wasm,
                readsonly_wasm: &wasm,
                upstream_port: upstream.listener.port(),
                trickle_port: None,
                collector_port: Some(collector.port()?),
            },
        ))
    };
    let on = Envoy::start(&a.envoy, &spec(&on_cfg)?, 1)?;
    let off = Envoy::start(&a.envoy, &spec(&off_cfg)?, 1)?;
    let script = dir.join("json.lua");
    std::fs::write(
        &script,
        load::script(
            traffic::PATH,
            &Kind::Json.headers(),
            &Kind::Json.request_body(),
        ),
    )?;
    let gateways = [(&on, true), (&off, false)];
    for (e, _) in gateways {
        load::run(&e.url(""), &script, 16, Duration::from_secs(1))?;
    }
    for round in 0..a.rounds as usize {
        for i in 0..2 {
            let (e, rollups) = gateways[(i + round) % 2];
            let before = process::cpu_micros(e.pid())?;
            let l = load::run(&e.url(""), &script, 16, Duration::from_secs_f64(a.seconds))?;
            let used = process::cpu_micros(e.pid())? - before;
            ensure!(
                l.errors == 0 && l.non_2xx == 0 && l.requests > 0,
                "wrk: {l:?}"
            );
            let us = used as f64 / l.requests as f64;
            say(format!(
                "round {}: rollups {}: {:.1} µs/request",
                round + 1,
                if rollups { "on " } else { "off" },
                us
            ));
            if rollups {
                &mut f.cpu_on
            } else {
                &mut f.cpu_off
            }
            .push(us);
        }
    }
    // Rollups must have reached the collector, and none from the gateway without them.
    std::thread::sleep(Duration::from_millis(1500));
    let sent = |e: &Envoy| -> Result<f64> {
        let text = e.admin_get("/stats/prometheus")?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("llm_rollup_batches_sent_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    };
    f.batches_sent = sent(&on)?;
    ensure!(f.batches_sent > 0.0, "the gateway with rollups sent none");
    ensure!(sent(&off)? == 0.0, "the gateway without rollups sent some");
    let (_, usage) = get_json(&format!("{}/api/v1/usage?window=PT1H", collector.url))?;
    say(format!(
        "the collector holds {} requests from the rollups",
        usage["totals"]["requests"]
    ));
    Ok(())
}

/// Fills a store with `days` of rollups (every series active every hour, one row per hour
/// in each tier's bucket), as the collector would have stored them. Returns the rows
/// written, the seconds it took and the file's size.
fn fill_store(a: &Args, db: &Path) -> Result<(u64, f64, u64)> {
    // The binary creates the schema.
    drop(Serve::start(&a.tokenmeter, db)?);
    let t = Instant::now();
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    // A large page cache keeps the day tier's rows, updated every hour, in memory.
    conn.pragma_update(None, "cache_size", -1_000_000)?;
    let cols: Vec<String> = {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('rollups_day')")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|c| c != "bucket" && c != "series_id")
            .collect()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let last_hour = now - now.rem_euclid(3600);
    let first_hour = last_hour - i64::from(a.days) * 86_400;
    let models = [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "o3-mini",
        "text-embedding-3-small",
    ];
    let tx = conn.transaction()?;
    let mut rows = 0u64;
    {
        let mut series = tx.prepare("INSERT INTO series (labels) VALUES (?1)")?;
        let insert = |table: &str| -> String {
            format!(
                "INSERT INTO {table} (bucket, series_id, {}) VALUES (?1, ?2, {})
                 ON CONFLICT (bucket, series_id) DO UPDATE SET {}",
                cols.join(", "),
                (0..cols.len())
                    .map(|i| format!("?{}", i + 3))
                    .collect::<Vec<_>>()
                    .join(", "),
                cols.iter()
                    .map(|c| format!("{c} = {c} + excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut tiers = [
            (tx.prepare(&insert("rollups_minute"))?, 60),
            (tx.prepare(&insert("rollups_hour"))?, 3600),
            (tx.prepare(&insert("rollups_day"))?, 86_400),
        ];
        let mut ids = Vec::new();
        for g in 0..a.gateways {
            for s in 0..a.series {
                let labels = json!({"gateway": format!("gw-{g:02}"),
                    "model": models[(s as usize) % models.len()],
                    "team": format!("team-{}", s / models.len() as u32)})
                .to_string();
                series.execute([&labels])?;
                ids.push((tx.last_insert_rowid(), i64::from(s)));
            }
        }
        // Hour by hour, series by series: every tier is written in its key order.
        let mut hour = first_hour;
        while hour <= last_hour {
            for &(id, s) in &ids {
                let k = (hour / 3600 + s) % 7;
                let values: Vec<i64> =
                    cols.iter()
                        .map(|c| match c.as_str() {
                            "requests_2xx" => 20 + k,
                            "requests_4xx" | "errors_rate_limited" => k % 2,
                            "prompt_tokens" => 900 + 31 * k,
                            "completion_tokens" => 400 + 17 * k,
                            "total_tokens" => 1300 + 48 * k,
                            "cached_tokens" => 100,
                            "duration_ms_b5" | "duration_ms_count" | "ttft_ms_b2"
                            | "ttft_ms_count" => 20 + k + k % 2,
                            "duration_ms_sum" => 250 * (20 + k + k % 2),
                            "ttft_ms_sum" => 40 * (20 + k + k % 2),
                            _ => 0,
                        })
                        .collect();
                for (stmt, size) in &mut tiers {
                    let bucket = hour - hour.rem_euclid(*size);
                    let args: Vec<i64> = [bucket, id]
                        .into_iter()
                        .chain(values.iter().copied())
                        .collect();
                    stmt.execute(rusqlite::params_from_iter(args))?;
                }
                rows += 1;
            }
            hour += 3600;
        }
    }
    // The marginals are left to the binary: at schema version 3 it fills them from the
    // tiers when it opens the store, with its own migration.
    tx.execute_batch(
        "DROP TABLE marginals_day; DROP TABLE marginals_hour; PRAGMA user_version = 3;",
    )?;
    tx.commit()?;
    drop(conn);
    let t_migrate = Instant::now();
    drop(Serve::start(&a.tokenmeter, db)?);
    say(format!(
        "the binary migrated the store (marginals) in {:.0} s",
        t_migrate.elapsed().as_secs_f64()
    ));
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(db)?.len();
    say(format!(
        "filled the store: {rows} hourly rows of {} series in {secs:.0} s, {} MB",
        a.gateways * a.series,
        size / 1_000_000
    ));
    Ok((rows, secs, size))
}

/// Milliseconds from navigation to the drawn Overview of the last 30 days, five loads.
fn first_render(a: &Args, console: &str) -> Result<Vec<f64>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut driver = Command::new(&a.chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (make browser installs it)",
                a.chromedriver.display()
            )
        })?;
    let wd = format!("http://127.0.0.1:{port}");
    let result = (|| -> Result<Vec<f64>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while get_json(&format!("{wd}/status")).is_err() {
            ensure!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir()?;
        let post = |path: &str, body: Value| -> Result<Value> {
            let mut r = agent()
                .post(&format!("{wd}{path}"))
                .header("content-type", "application/json")
                .send(body.to_string())?;
            let v: Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
            Ok(v["value"].clone())
        };
        let session = post(
            "/session",
            json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000", format!("--user-data-dir={}", profile.path().display())]}}}}),
        )?;
        let id = session["sessionId"]
            .as_str()
            .context("no WebDriver session")?
            .to_string();
        let mut out = Vec::new();
        for i in 0..6 {
            post(&format!("/session/{id}/url"), json!({"url": "about:blank"}))?;
            post(
                &format!("/session/{id}/url"),
                json!({"url": format!("{console}/#/overview?window=P30D")}),
            )?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let drawn = loop {
                let v = post(
                    &format!("/session/{id}/execute/sync"),
                    json!({"script": "const v = document.getElementById('view'); return v && v.dataset.loading === 'false' ? [Number(v.dataset.drawnMs), document.getElementById('ov-requests') ? document.getElementById('ov-requests').textContent : null, document.getElementById('error').hidden] : null", "args": []}),
                )?;
                if !v.is_null() {
                    break v;
                }
                ensure!(
                    Instant::now() < deadline,
                    "the console did not draw Overview"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            ensure!(
                drawn[2] == true && drawn[1].is_string(),
                "Overview showed an error: {drawn}"
            );
            if i > 0 {
                out.push(drawn[0].as_f64().unwrap_or(f64::NAN));
            }
        }
        let _ = agent().delete(&format!("{wd}/session/{id}")).call();
        Ok(out)
    })();
    let _ = driver.kill();
    let _ = driver.wait();
    let out = result?;
    say(format!("first render of Overview: {out:?} ms"));
    Ok(out)
}

fn report(a: &Args, f: &Figures, seconds: f64) -> String {
    let med = |v: &[f64]| stats::median(v);
    let rdiffs: Vec<f64> = f
        .replay_on
        .iter()
        .zip(&f.replay_off)
        .map(|(a, b)| a - b)
        .collect();
    let (rdlo, rdhi) = stats::range(&rdiffs);
    let diffs: Vec<f64> = f
        .cpu_on
        .iter()
        .zip(&f.cpu_off)
        .map(|(a, b)| a - b)
        .collect();
    let (dlo, dhi) = stats::range(&diffs);
    let (on_lo, on_hi) = stats::range(&f.cpu_on);
    let (off_lo, off_hi) = stats::range(&f.cpu_off);
    let (u_lo, u_hi) = stats::range(&f.usage_ms);
    let (o_lo, o_hi) = stats::range(&f.operations_ms);
    let (r_lo, r_hi) = stats::range(&f.render_ms);
    let when = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{BEGIN}\n\n## Console and rollups\n\n\
- **When:** {when} (the run took {seconds:.0} s); `make bench-console`\n\n\
### Rollups in the filter (JSON with usage, medians of {rounds} rounds)\n\n\
tokenmeter's own code per exchange natively under callgrind (`bench/wasm/replay`, exact\n\
and repeatable): {:.0} instructions with rollups kept, {:.0} without, so keeping them costs\n\
{:.0} instructions ({:+.1} %) per exchange.\n\n\
tokenmeter's own code per exchange inside V8, without a host (`bench/wasm/replay`, 20,000\n\
exchanges a run, runs alternating): {:.2} µs with rollups kept, {:.2} µs without; the\n\
difference per round {:+.2} µs (median; {rdlo:+.2} to {rdhi:+.2} µs).\n\n\
Through Envoy, the gateway process's CPU per request:\n\n\
| gateway | CPU per request | range |\n|---|---|---|\n\
| tokenmeter, rollups every second | {:.1} µs | {on_lo:.1}–{on_hi:.1} µs |\n\
| tokenmeter, rollups off (`rollup_interval_ms: 0`) | {:.1} µs | {off_lo:.1}–{off_hi:.1} µs |\n\
| difference, per round | {:+.1} µs (median) | {dlo:+.1} to {dhi:+.1} µs |\n\n\
Both gateways run the same build with the same `collect` block (no record sampled) and\n\
one worker, loaded in turn by wrk (16 connections, {secs} s each, the order alternating);\n\
the one with rollups sent {batches:.0} batches to a real `tokenmeter serve` meanwhile.\n\n\
### The console's biggest query\n\n\
A store with {days} days of rollups from {gw} gateways × {series} series ({total} series,\n\
each active every hour: {rows} hourly rows written to the minute, hour and day tiers,\n\
then migrated by the binary, which fills the marginals; {mb} MB, written and migrated in\n\
{fill:.0} s). `tokenmeter serve` on it, over HTTP:\n\n\
| query | median | range (5 runs after one to warm the cache) |\n|---|---|---|\n\
| `GET /api/v1/usage?window=P30D&step=P1D&group_by=model` | {:.1} ms | {u_lo:.1}–{u_hi:.1} ms |\n\
| `GET /api/v1/operations?window=P30D&step=P1D&group_by=model` | {:.1} ms | {o_lo:.1}–{o_hi:.1} ms |\n\
| Console Overview, last 30 days: navigation to drawn view (Chromium) | {:.0} ms | {r_lo:.0}–{r_hi:.0} ms |\n\n\
The usage answer counted {req} requests. Overview makes three reads (usage, operations,\n\
monitors) and draws its chart.\n\n{END}\n",
        f.instructions.0,
        f.instructions.1,
        f.instructions.0 - f.instructions.1,
        100.0 * (f.instructions.0 - f.instructions.1) / f.instructions.1,
        med(&f.replay_on),
        med(&f.replay_off),
        med(&rdiffs),
        med(&f.cpu_on),
        med(&f.cpu_off),
        med(&diffs),
        med(&f.usage_ms),
        med(&f.operations_ms),
        med(&f.render_ms),
        rounds = a.rounds,
        secs = a.seconds,
        batches = f.batches_sent,
        days = a.days,
        gw = a.gateways,
        series = a.series,
        total = a.gateways * a.series,
        rows = f.fill.0,
        fill = f.fill.1,
        mb = f.fill.2 / 1_000_000,
        req = f.usage_rows,
    )
}

/// Replaces the console section of the report, or appends it.
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
