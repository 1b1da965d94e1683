//! `make bench-store`: what the store takes in and how fast it answers, on SQLite and on
//! PostgreSQL, measured through the HTTP API of real `tokenmeter serve` processes.
//!
//! 1. **Records.** Client threads post batches of JSONL records of about 2 KB each
//!    (`POST /v1/records`) to one collector, then to three collectors sharing one
//!    database (the batches dealt round-robin over them); records per second over a fixed
//!    number of records, a few rounds. At the end the database must hold exactly the
//!    records sent.
//! 2. **Rollups.** The same with rollup batches (`POST /v1/rollups`) as a fleet's gateways
//!    send them: each batch one gateway's 50 series over 10 minutes, every batch id
//!    distinct; rollup rows per second. At the end every tier and marginal must hold the
//!    exact sums sent, and so must the usage API's answer.
//! 3. **The console's 30-day usage query.** A store filled through the same API with 30
//!    days of rollups, then opened by a collector with the default retention (which moves
//!    minutes older than 8 days out, as on any store in use); the usage query in daily
//!    steps grouped by model, ungrouped, and in hourly steps, timed over HTTP, each answer
//!    checked against what was sent.
//!
//! PostgreSQL is testkit's (`testkit/src/postgres.rs`): Debian's server in a cluster of its
//! own, on loopback, fsync and synchronous commits on. The results replace the store
//! section of `BENCHMARKS.md`.
//!
//! The PostgreSQL launcher is compiled in from source, as `bench/src/main.rs` does the
//! trickled upstream, so that the runner does not link testkit. In the test build this
//! crate is empty: the launcher's own tests would otherwise run a second time here.
#![cfg(not(test))]

#[path = "../flags.rs"]
#[allow(dead_code)]
mod flags;
#[path = "../../../testkit/src/postgres.rs"]
#[allow(dead_code)]
mod postgres;
#[path = "../process.rs"]
#[allow(dead_code)]
mod process;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use postgres::Postgres;
use serde_json::{json, Value};

const BEGIN: &str = "<!-- store: begin (written by `make bench-store`; replaced on every run) -->";
const END: &str = "<!-- store: end -->";
const USAGE: &str =
    "usage: bench-store --tokenmeter PATH [--out FILE] [--backends sqlite,postgres] \
[--rounds N] [--clients N] [--records N] [--record-batch N] [--rollup-batches N] \
[--fill-gateways N] [--query-runs N] [--command TEXT]";

/// Series of one gateway in a rollup batch: every model with every team.
const MODELS: [&str; 5] = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "o3-mini",
    "text-embedding-3-small",
];
const TEAMS: usize = 10;
const SERIES_PER_GATEWAY: usize = MODELS.len() * TEAMS;
/// Minutes in one throughput batch: 50 series × 10 minutes = 500 rows.
const BATCH_MINUTES: i64 = 10;
/// Gateways whose batches the throughput rounds take turns with.
const FLEET: usize = 20;
/// Hours of one gateway in one batch of the 30-day fill: 50 series × 10 hours.
const FILL_HOURS: i64 = 10;
/// The JSON size each record is made to.
const RECORD_BYTES: usize = 2048;

struct Args {
    tokenmeter: PathBuf,
    out: PathBuf,
    backends: Vec<Backend>,
    rounds: usize,
    clients: usize,
    records: usize,
    record_batch: usize,
    rollup_batches: usize,
    fill_gateways: usize,
    query_runs: usize,
    command: String,
}

fn args() -> Result<Args> {
    let mut a = Args {
        tokenmeter: PathBuf::new(),
        out: PathBuf::from("BENCHMARKS.md"),
        backends: vec![Backend::Sqlite, Backend::Postgres],
        rounds: 5,
        clients: 4,
        records: 20_000,
        record_batch: 100,
        rollup_batches: 100,
        fill_gateways: 20,
        query_runs: 10,
        command: "make bench-store".to_string(),
    };
    for pair in flags::pairs(USAGE) {
        let (flag, v) = pair?;
        let num = |v: &str| flags::positive(&flag, v).map(|n| n as usize);
        match flag.as_str() {
            "--tokenmeter" => a.tokenmeter = v.into(),
            "--out" => a.out = v.into(),
            "--backends" => {
                a.backends = v
                    .split(',')
                    .map(|b| match b {
                        "sqlite" => Ok(Backend::Sqlite),
                        "postgres" => Ok(Backend::Postgres),
                        _ => bail!("--backends: {b:?} is neither sqlite nor postgres"),
                    })
                    .collect::<Result<_>>()?
            }
            "--rounds" => a.rounds = num(&v)?,
            "--clients" => a.clients = num(&v)?,
            "--records" => a.records = num(&v)?,
            "--record-batch" => a.record_batch = num(&v)?,
            "--rollup-batches" => a.rollup_batches = num(&v)?,
            "--fill-gateways" => a.fill_gateways = num(&v)?,
            "--query-runs" => a.query_runs = num(&v)?,
            "--command" => a.command = v,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    ensure!(
        !a.tokenmeter.as_os_str().is_empty(),
        "missing --tokenmeter\n{USAGE}"
    );
    a.tokenmeter = std::fs::canonicalize(&a.tokenmeter)
        .with_context(|| format!("{} (make build builds it)", a.tokenmeter.display()))?;
    Ok(a)
}

fn say(text: impl AsRef<str>) {
    eprintln!("bench-store: {}", text.as_ref());
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-store: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// One database of a run: a file, or a database of the PostgreSQL cluster.
enum Db<'a> {
    Sqlite(PathBuf),
    Postgres(&'a Postgres, String),
}

impl Db<'_> {
    /// `serve --db`'s value.
    fn arg(&self) -> OsString {
        match self {
            Db::Sqlite(path) => path.clone().into_os_string(),
            Db::Postgres(pg, name) => pg.url(name).into(),
        }
    }

    /// The collector's environment: the password never goes on a command line.
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Db::Sqlite(_) => vec![],
            Db::Postgres(pg, _) => vec![("TOKENMETER_DB_PASSWORD", pg.password().to_string())],
        }
    }

    /// The integers of a query's one row (NULL as 0), read beside the collectors.
    fn ints(&self, sql: &str) -> Result<Vec<i64>> {
        match self {
            Db::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path)?;
                conn.busy_timeout(Duration::from_secs(30))?;
                let mut stmt = conn.prepare(sql)?;
                let width = stmt.column_count();
                let row = stmt.query_row([], |r| {
                    (0..width)
                        .map(|i| r.get::<_, Option<i64>>(i).map(Option::unwrap_or_default))
                        .collect::<rusqlite::Result<Vec<i64>>>()
                })?;
                Ok(row)
            }
            Db::Postgres(pg, name) => pg
                .psql(name, sql)?
                .split('|')
                .map(|v| {
                    if v.is_empty() {
                        Ok(0)
                    } else {
                        v.parse::<i64>()
                            .with_context(|| format!("{sql}: {v:?} is not an integer"))
                    }
                })
                .collect(),
        }
    }

    /// The size of `tables` with their indexes (for SQLite the whole file, as written so far
    /// including what is still in the WAL).
    fn bytes(&self, tables: &[&str]) -> Result<i64> {
        let sql = match self {
            Db::Sqlite(_) => {
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
                    .to_string()
            }
            Db::Postgres(..) => format!(
                "SELECT {}",
                tables
                    .iter()
                    .map(|t| format!("pg_total_relation_size('{t}')"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        };
        Ok(self.ints(&sql)?.first().copied().unwrap_or_default())
    }

    /// PostgreSQL's count of deadlocks and of transactions rolled back in this database.
    fn conflicts(&self) -> Result<Option<(i64, i64)>> {
        match self {
            Db::Sqlite(_) => Ok(None),
            Db::Postgres(..) => {
                let v = self.ints(
                    "SELECT deadlocks, xact_rollback FROM pg_stat_database WHERE datname = current_database()",
                )?;
                Ok(Some((
                    v.first().copied().unwrap_or_default(),
                    v.get(1).copied().unwrap_or_default(),
                )))
            }
        }
    }
}

/// What a collector wrote to stderr: every line counted, the first few shown.
#[derive(Default)]
struct Log {
    lines: u64,
    errors: u64,
    first_errors: Vec<String>,
}

/// A running `tokenmeter serve`; killed by its PID when dropped.
struct Serve {
    child: Child,
    url: String,
    log: Arc<Mutex<Log>>,
}

impl Serve {
    /// `serve --db DB --listen 127.0.0.1:0 EXTRA...`.
    fn start(bin: &Path, db: &Db, extra: &[&str]) -> Result<Serve> {
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--db")
            .arg(db.arg())
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .envs(db.env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let log = Arc::new(Mutex::new(Log::default()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let Ok(mut l) = log.lock() else { return };
                    l.lines += 1;
                    if line.contains("error") {
                        l.errors += 1;
                        if l.first_errors.len() < 5 {
                            eprintln!("tokenmeter serve: {line}");
                            l.first_errors.push(line);
                        }
                    }
                }
            });
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("tokenmeter serve did not start ({status}); it printed {line:?}");
        };
        Ok(Serve {
            url: url.to_string(),
            child,
            log,
        })
    }

    fn cpu_micros(&self) -> u64 {
        process::cpu_micros(self.child.id()).unwrap_or_default()
    }

    /// Lines logged with "error" in them, and the first of them.
    fn errors(&self) -> (u64, Vec<String>) {
        self.log
            .lock()
            .map(|l| (l.errors, l.first_errors.clone()))
            .unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_collectors(bin: &Path, db: &Db, n: usize) -> Result<Vec<Serve>> {
    // One after the other: the first creates the schema.
    (0..n).map(|_| Serve::start(bin, db, &[])).collect()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn get_json(agent: &ureq::Agent, url: &str) -> Result<Value> {
    let mut r = agent.get(url).call()?;
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()?;
    ensure!(status == 200, "GET {url}: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

/// A total of a usage answer.
fn total(answer: &Value, sum: &str) -> Option<i64> {
    answer.get("totals")?.get(sum)?.as_i64()
}

/// The answers to a set of posts, and how long they took.
struct Posted {
    seconds: f64,
    /// Per post, from its first attempt to its answer.
    latencies_ms: Vec<f64>,
    /// Attempts answered 503 (the store unavailable), each tried again after 250 ms.
    retried: u64,
    answers: Vec<Value>,
}

/// Posts every body once, `clients` at a time, body `i` to collector `i % n`.
fn post_all(
    urls: &[String],
    path: &str,
    content_type: &str,
    bodies: &[String],
    clients: usize,
) -> Result<Posted> {
    ensure!(!urls.is_empty(), "no collector");
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    type Done = Vec<(f64, u64, Value)>;
    let results: Vec<Result<Done>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| -> Result<Done> {
                    let agent = agent();
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(body) = bodies.get(i) else {
                            return Ok(done);
                        };
                        let url = urls.get(i % urls.len()).context("no collector")?;
                        let t = Instant::now();
                        let mut retried = 0;
                        let answer = loop {
                            let mut r = agent
                                .post(&format!("{url}{path}"))
                                .header("content-type", content_type)
                                .send(body.as_bytes())
                                .with_context(|| format!("POST {url}{path}"))?;
                            let status = r.status().as_u16();
                            let text = r.body_mut().read_to_string()?;
                            match status {
                                200 => break serde_json::from_str::<Value>(&text)?,
                                503 if retried < 200 => {
                                    retried += 1;
                                    std::thread::sleep(Duration::from_millis(250));
                                }
                                _ => bail!("POST {path}: {status} {text}"),
                            }
                        };
                        done.push((t.elapsed().as_secs_f64() * 1e3, retried, answer));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a client failed"))))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut posted = Posted {
        seconds,
        latencies_ms: vec![],
        retried: 0,
        answers: vec![],
    };
    for r in results {
        for (ms, retried, answer) in r? {
            posted.latencies_ms.push(ms);
            posted.retried += retried;
            posted.answers.push(answer);
        }
    }
    Ok(posted)
}

/// The `q` quantile (0 to 1) of some values, by rank.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64 * q).ceil() as usize).saturating_sub(1);
    v.get(rank).copied().unwrap_or(f64::NAN)
}

fn now_secs() -> Result<i64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64)
}

fn floor(t: i64, size: i64) -> i64 {
    t - t.rem_euclid(size)
}

/// Unix seconds as RFC 3339 in UTC.
fn rfc3339(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Days to the civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A small deterministic generator (splitmix64), so every run sends the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const WORDS: &str = "the invoice customer refund policy order shipping account is was a of \
to and within days after delivery please our support team can help \
with your request billing address update payment method subscription renewal cancel plan \
upgrade tokens model answer context document section according terms returns warranty product";

/// Text of exactly `len` bytes, words and sentences.
fn text(rng: &mut Rng, len: usize) -> String {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        let n = 6 + rng.below(10);
        for i in 0..n {
            let w = words.get(rng.below(words.len())).copied().unwrap_or("the");
            if i > 0 {
                s.push(' ');
            }
            s.push_str(w);
        }
        s.push_str(". ");
    }
    s.truncate(len);
    s
}

/// One record as a gateway samples it, about [`RECORD_BYTES`] of JSON.
fn record(id: &str, time: i64, rng: &mut Rng) -> String {
    let model = MODELS.get(rng.below(4)).copied().unwrap_or("gpt-4o");
    let prompt = 200 + rng.below(1500) as u64;
    let completion = 20 + rng.below(600) as u64;
    let mut r = json!({
        "id": id,
        "time": rfc3339(time),
        "model": model,
        "operation": "chat.completions",
        "route": "/v1/chat/completions",
        "dimensions": {"team": format!("team-{}", rng.below(TEAMS)), "app": "support-desk"},
        "usage": {"prompt": prompt, "completion": completion, "total": prompt + completion,
                  "source": "reported"},
        "status": 200,
        "duration_ms": 400 + rng.below(4000),
        "ttft_ms": 80 + rng.below(600),
        "sample_rate": 0.1,
        "question": "",
        "answer": "",
        "context": "",
    });
    let room = RECORD_BYTES.saturating_sub(r.to_string().len());
    if let Some(fields) = r.as_object_mut() {
        for (column, len) in [
            ("question", room / 4),
            ("context", room * 3 / 10),
            ("answer", room - room / 4 - room * 3 / 10),
        ] {
            fields.insert(column.to_string(), text(rng, len).into());
        }
    }
    r.to_string()
}

/// What a set of rollup rows adds up to.
#[derive(Default)]
struct Sent {
    rows: i64,
    requests: i64,
    prompt_tokens: i64,
    /// `(minute, requests)` of every row.
    minutes: Vec<(i64, i64)>,
}

/// One series' row in one minute: `k` varies the counts. Histograms add up to the count.
fn rollup_row(minute: i64, values: [String; 3], k: i64) -> (Value, i64, i64) {
    let (ok, client, server) = (20 + k, k % 3, k % 2);
    let n = ok + client + server;
    let prompt = n * 900 + 31 * k;
    let completion = n * 300 + 17 * k;
    // 13 latency buckets, 10 of time per output token: a duration of 0.5 to 2.5 s, a first
    // token within 250 ms, 20 to 35 ms per output token.
    let bucket = |len: usize, at: &[(usize, i64)]| -> Vec<i64> {
        (0..len)
            .map(|i| at.iter().filter(|(j, _)| *j == i).map(|(_, v)| v).sum())
            .collect()
    };
    let duration = bucket(13, &[(4, n / 2), (5, n - n / 2)]);
    let ttft = bucket(13, &[(2, n)]);
    let tpot = bucket(10, &[(3, n)]);
    let row = json!({
        "minute": minute,
        "values": values,
        "requests": [0, ok, 0, client, server, 0],
        "errors": [0, 0, 0, client, 0, server],
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": 100 * k,
        "reasoning_tokens": 0,
        "estimated": 0,
        "invalid_usage": 0,
        "duration_ms": {"buckets": duration, "sum": n * 1200, "count": n},
        "ttft_ms": {"buckets": ttft, "sum": n * 180, "count": n},
        "tpot_ms": {"buckets": tpot, "sum": n * 25, "count": n},
    });
    (row, n, prompt)
}

/// A gateway's batch: its 50 series in each of `minutes` (Unix seconds of whole minutes).
fn rollup_batch(id: &str, gateway: usize, minutes: &[i64], sent: &mut Sent) -> String {
    let mut rows = Vec::with_capacity(minutes.len() * SERIES_PER_GATEWAY);
    for &minute in minutes {
        for s in 0..SERIES_PER_GATEWAY {
            let model = MODELS.get(s % MODELS.len()).copied().unwrap_or("gpt-4o");
            let values = [
                format!("gw-{gateway:02}"),
                model.to_string(),
                format!("team-{}", s / MODELS.len()),
            ];
            let k = (minute / 60 + s as i64 + gateway as i64).rem_euclid(7);
            let (row, requests, prompt) = rollup_row(minute, values, k);
            rows.push(row);
            sent.rows += 1;
            sent.requests += requests;
            sent.prompt_tokens += prompt;
            sent.minutes.push((minute, requests));
        }
    }
    json!({"id": id, "labels": ["gateway", "model", "team"], "rows": rows}).to_string()
}

/// One configuration's ingestion figures: a value per round.
#[derive(Default)]
struct Throughput {
    per_second: Vec<f64>,
    latencies_ms: Vec<f64>,
    retried: u64,
    /// CPU of the collectors and of PostgreSQL (its whole process tree) per unit sent, µs.
    collector_cpu_us: Vec<f64>,
    postgres_cpu_us: Vec<f64>,
    /// Lines the collectors logged as errors.
    errors: u64,
    first_errors: Vec<String>,
    /// PostgreSQL's deadlocks and rolled-back transactions in the database.
    conflicts: Option<(i64, i64)>,
    /// The database's size over the records or rows sent.
    stored_bytes: f64,
}

impl Throughput {
    fn add_round(&mut self, p: &Posted, units: f64, cpu: (u64, Option<u64>)) {
        self.per_second.push(units / p.seconds);
        self.latencies_ms.extend(&p.latencies_ms);
        self.retried += p.retried;
        self.collector_cpu_us.push(cpu.0 as f64 / units);
        if let Some(pg) = cpu.1 {
            self.postgres_cpu_us.push(pg as f64 / units);
        }
    }

    fn finish(&mut self, collectors: &[Serve], db: &Db) -> Result<()> {
        for c in collectors {
            let (n, first) = c.errors();
            self.errors += n;
            self.first_errors.extend(first);
        }
        self.conflicts = db.conflicts()?;
        Ok(())
    }
}

/// CPU used so far by the collectors, and by PostgreSQL's processes.
fn cpu_now(collectors: &[Serve], pg: Option<&Postgres>) -> (u64, Option<u64>) {
    let collectors = collectors.iter().map(Serve::cpu_micros).sum();
    let server = pg
        .and_then(postmaster_pid)
        .map(|pid| process::tree_cpu_micros(pid).unwrap_or_default());
    (collectors, server)
}

fn cpu_since(before: (u64, Option<u64>), after: (u64, Option<u64>)) -> (u64, Option<u64>) {
    (
        after.0.saturating_sub(before.0),
        after.1.zip(before.1).map(|(a, b)| a.saturating_sub(b)),
    )
}

fn postmaster_pid(pg: &Postgres) -> Option<u32> {
    std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Records per second into `db` through `n` collectors.
fn records(a: &Args, db: &Db, pg: Option<&Postgres>, n: usize, tag: &str) -> Result<Throughput> {
    let collectors = start_collectors(&a.tokenmeter, db, n)?;
    let urls: Vec<String> = collectors.iter().map(|c| c.url.clone()).collect();
    let mut rng = Rng(0x5eed);
    let mut f = Throughput::default();
    let mut sent = 0i64;
    let mut stored = 0i64;
    let mut bytes = 0usize;
    let now = now_secs()?;
    let batches = a.records.div_ceil(a.record_batch);
    // A round of warm-up (a batch per client, not timed), then the rounds.
    for round in 0..=a.rounds {
        let count = if round == 0 { a.clients } else { batches };
        let bodies: Vec<String> = (0..count)
            .map(|b| {
                (0..a.record_batch)
                    .map(|i| {
                        let seq = (b * a.record_batch + i) as i64;
                        let id = format!("{tag}-r{round}-{seq:06}-{:08x}", rng.next() as u32);
                        let r = record(&id, now - 600 + seq % 600, &mut rng);
                        bytes += r.len() + 1;
                        r
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        let units = (count * a.record_batch) as f64;
        let before = cpu_now(&collectors, pg);
        let p = post_all(
            &urls,
            "/v1/records",
            "application/x-ndjson",
            &bodies,
            a.clients,
        )?;
        let cpu = cpu_since(before, cpu_now(&collectors, pg));
        for answer in &p.answers {
            stored += answer
                .get("stored")
                .and_then(Value::as_i64)
                .context("no stored count")?;
            ensure!(
                answer.get("duplicates").and_then(Value::as_i64) == Some(0),
                "duplicates: {answer}"
            );
        }
        sent += units as i64;
        if round > 0 {
            f.add_round(&p, units, cpu);
            say(format!(
                "{tag}: round {round}: {:.0} records/s ({} batches of {} in {:.1} s, {} retried)",
                units / p.seconds,
                count,
                a.record_batch,
                p.seconds,
                p.retried
            ));
        }
    }
    let held = db
        .ints("SELECT count(*) FROM records")?
        .first()
        .copied()
        .unwrap_or_default();
    ensure!(
        stored == sent && held == sent,
        "{tag}: {sent} records sent, {stored} answered as stored, {held} in the database"
    );
    say(format!(
        "{tag}: the database holds the {held} records sent (avg {} bytes of JSON each)",
        bytes / sent.max(1) as usize
    ));
    f.stored_bytes = db.bytes(&["records"])? as f64 / held.max(1) as f64;
    f.finish(&collectors, db)?;
    Ok(f)
}

/// Rollup rows per second into `db` through `n` collectors; every tier checked after.
fn rollups(a: &Args, db: &Db, pg: Option<&Postgres>, n: usize, tag: &str) -> Result<Throughput> {
    let collectors = start_collectors(&a.tokenmeter, db, n)?;
    let urls: Vec<String> = collectors.iter().map(|c| c.url.clone()).collect();
    let mut f = Throughput::default();
    let mut sent = Sent::default();
    // Recent minutes, well inside the minutes' retention: the fleet's batches take turns
    // by gateway, ten minutes at a time.
    let base = floor(now_secs()? - 2 * 86_400, 3600);
    let mut next_batch = 0usize;
    for round in 0..=a.rounds {
        let count = if round == 0 {
            a.clients
        } else {
            a.rollup_batches
        };
        let before_rows = sent.rows;
        let bodies: Vec<String> = (0..count)
            .map(|_| {
                let j = next_batch;
                next_batch += 1;
                let (gateway, window) = (j % FLEET, (j / FLEET) as i64);
                let first = base + window * BATCH_MINUTES * 60;
                let minutes: Vec<i64> = (0..BATCH_MINUTES).map(|m| first + m * 60).collect();
                rollup_batch(
                    &format!("{tag}-gw{gateway:02}-{j:05}"),
                    gateway,
                    &minutes,
                    &mut sent,
                )
            })
            .collect();
        let units = (sent.rows - before_rows) as f64;
        let before = cpu_now(&collectors, pg);
        let p = post_all(&urls, "/v1/rollups", "application/json", &bodies, a.clients)?;
        let cpu = cpu_since(before, cpu_now(&collectors, pg));
        for answer in &p.answers {
            ensure!(
                answer.get("duplicate") == Some(&Value::Bool(false)),
                "a batch was taken as a duplicate: {answer}"
            );
        }
        if round > 0 {
            f.add_round(&p, units, cpu);
            say(format!(
                "{tag}: round {round}: {:.0} rollup rows/s ({} batches of {} rows in {:.1} s, {} retried)",
                units / p.seconds,
                count,
                BATCH_MINUTES as usize * SERIES_PER_GATEWAY,
                p.seconds,
                p.retried
            ));
        }
    }
    // Every tier and marginal holds exactly what was sent.
    let requests =
        "requests_1xx + requests_2xx + requests_3xx + requests_4xx + requests_5xx + requests_none";
    let got = db.ints(&format!(
        "SELECT (SELECT count(*) FROM rollups_minute),
                (SELECT sum({requests}) FROM rollups_minute), (SELECT sum(prompt_tokens) FROM rollups_minute),
                (SELECT sum({requests}) FROM rollups_hour), (SELECT sum(prompt_tokens) FROM rollups_hour),
                (SELECT sum({requests}) FROM rollups_day), (SELECT sum(prompt_tokens) FROM rollups_day),
                (SELECT sum({requests}) FROM marginals_hour WHERE label = ''),
                (SELECT sum(prompt_tokens) FROM marginals_day WHERE label = ''),
                (SELECT sum(prompt_tokens) FROM marginals_day WHERE label = 'model'),
                (SELECT sum(prompt_tokens) FROM marginals_hour WHERE label = 'gateway')"
    ))?;
    let want = [
        sent.rows,
        sent.requests,
        sent.prompt_tokens,
        sent.requests,
        sent.prompt_tokens,
        sent.requests,
        sent.prompt_tokens,
        sent.requests,
        sent.prompt_tokens,
        sent.prompt_tokens,
        sent.prompt_tokens,
    ];
    ensure!(got == want, "{tag}: the tiers hold {got:?}, sent {want:?}");
    let url = urls.first().context("no collector")?;
    let answer = get_json(
        &agent(),
        &format!(
            "{url}/api/v1/usage?from={}&to={}&step=P1D",
            rfc3339(floor(base, 86_400)),
            rfc3339(now_secs()?)
        ),
    )?;
    ensure!(
        total(&answer, "requests") == Some(sent.requests)
            && total(&answer, "prompt_tokens") == Some(sent.prompt_tokens),
        "{tag}: the usage API answers {}, sent {} requests and {} prompt tokens",
        answer.get("totals").unwrap_or(&Value::Null),
        sent.requests,
        sent.prompt_tokens
    );
    say(format!(
        "{tag}: every tier, the marginals and the usage API hold the {} rows sent ({} requests)",
        sent.rows, sent.requests
    ));
    let tables = [
        "series",
        "rollups_minute",
        "rollups_hour",
        "rollups_day",
        "marginals_hour",
        "marginals_day",
        "rollup_batches",
    ];
    f.stored_bytes = db.bytes(&tables)? as f64 / sent.rows.max(1) as f64;
    f.finish(&collectors, db)?;
    Ok(f)
}

/// The 30-day store and the console's queries on it.
#[derive(Default)]
struct Queries {
    series: usize,
    rows: i64,
    requests: i64,
    fill_seconds: f64,
    fill_rows_per_second: f64,
    retention_seconds: f64,
    /// Per query of [`QUERIES`], the timed runs in ms: every tier kept, then with the
    /// default retention.
    kept: Vec<Vec<f64>>,
    retained: Vec<Vec<f64>>,
}

const QUERIES: [(&str, i64); 3] = [
    ("window=P30D&step=P1D&group_by=model", 86_400),
    ("window=P30D&step=P1D", 86_400),
    ("window=P30D&step=PT1H", 3600),
];

/// Fills `db` with 30 days of rollups through the API, lets the default retention move the
/// old minutes out, then times the console's usage queries.
fn usage_queries(a: &Args, db: &Db, tag: &str) -> Result<Queries> {
    let mut q = Queries {
        series: a.fill_gateways * SERIES_PER_GATEWAY,
        ..Queries::default()
    };
    let now = now_secs()?;
    let last_hour = floor(now, 3600);
    let first_hour = last_hour - (30 * 24 - 1) * 3600;
    // Every row sent, to check the answers with.
    let mut sent = Sent::default();
    let mut bodies = Vec::new();
    for g in 0..a.fill_gateways {
        let mut hour = first_hour;
        while hour <= last_hour {
            // Each gateway's series in one minute of every hour; none in the future.
            let minutes: Vec<i64> = (0..FILL_HOURS)
                .map(|h| hour + h * 3600 + ((g * 7) % 60) as i64 * 60)
                .filter(|m| *m < floor(now, 60))
                .collect();
            if !minutes.is_empty() {
                bodies.push(rollup_batch(
                    &format!("{tag}-fill-gw{g:02}-{hour}"),
                    g,
                    &minutes,
                    &mut sent,
                ));
            }
            hour += FILL_HOURS * 3600;
        }
    }
    q.rows = sent.rows;
    q.requests = sent.requests;
    // First a collector that keeps every tier (no retention pass, so no tier has a
    // horizon): it takes the fill, then answers the queries from the day tier.
    let keep = ["--retain-minutes", "forever", "--retain-hours", "forever"];
    {
        let serve = Serve::start(&a.tokenmeter, db, &keep)?;
        let p = post_all(
            std::slice::from_ref(&serve.url),
            "/v1/rollups",
            "application/json",
            &bodies,
            a.clients,
        )?;
        q.fill_seconds = p.seconds;
        q.fill_rows_per_second = q.rows as f64 / p.seconds;
        say(format!(
            "{tag}: filled 30 days: {} rows of {} series in {:.0} s",
            q.rows, q.series, p.seconds
        ));
        q.kept = time_queries(a, &serve, &sent, &format!("{tag}, every tier kept"))?;
    }
    // Then a collector as one runs on a store in use: its retention pass at start deletes
    // the minutes older than 8 days (from this cutoff or a later one), and the queries read
    // the hours for them.
    let cutoff = floor(now_secs()? - 8 * 86_400, 3600);
    let t = Instant::now();
    let serve = Serve::start(&a.tokenmeter, db, &[])?;
    loop {
        let old = db
            .ints(&format!(
                "SELECT count(*) FROM rollups_minute WHERE bucket < {cutoff}"
            ))?
            .first()
            .copied()
            .unwrap_or_default();
        if old == 0 {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "{tag}: retention left {old} old minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    q.retention_seconds = t.elapsed().as_secs_f64();
    say(format!(
        "{tag}: retention moved the minutes before 8 days out in {:.1} s",
        q.retention_seconds
    ));
    q.retained = time_queries(a, &serve, &sent, &format!("{tag}, default retention"))?;
    Ok(q)
}

/// The timed runs of each of [`QUERIES`] on `serve`, in ms; every answer checked against
/// the rows `sent` in its window.
fn time_queries(a: &Args, serve: &Serve, sent: &Sent, tag: &str) -> Result<Vec<Vec<f64>>> {
    let agent = agent();
    let mut out = Vec::new();
    for (query, step) in QUERIES {
        let mut ms = Vec::new();
        // The first answer warms the caches; the figures are the others.
        for i in 0..=a.query_runs {
            let from = floor(now_secs()? - 30 * 86_400, step);
            let t = Instant::now();
            let answer = get_json(&agent, &format!("{}/api/v1/usage?{query}", serve.url))?;
            let took = t.elapsed().as_secs_f64() * 1e3;
            let got = total(&answer, "requests");
            // The window's start moves with the clock: the rows from either start count.
            let from_after = floor(now_secs()? - 30 * 86_400, step);
            let expected = |from: i64| {
                sent.minutes
                    .iter()
                    .filter(|r| r.0 >= from)
                    .map(|r| r.1)
                    .sum::<i64>()
            };
            ensure!(
                got == Some(expected(from)) || got == Some(expected(from_after)),
                "{tag}: {query}: {got:?} requests, sent {} in the window",
                expected(from)
            );
            if query.contains("group_by=model") {
                let groups = answer
                    .get("groups")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                ensure!(groups == MODELS.len(), "{tag}: {query}: {groups} groups");
            }
            if i > 0 {
                ms.push(took);
            }
        }
        say(format!(
            "{tag}: {query}: median {:.1} ms",
            stats::median(&ms)
        ));
        out.push(ms);
    }
    Ok(out)
}

struct BackendFigures {
    backend: Backend,
    records: Vec<(usize, Throughput)>,
    rollups: Vec<(usize, Throughput)>,
    queries: Queries,
}

/// A fresh database named `name`.
fn fresh<'a>(backend: Backend, dir: &Path, pg: Option<&'a Postgres>, name: &str) -> Result<Db<'a>> {
    match backend {
        Backend::Sqlite => Ok(Db::Sqlite(dir.join(format!("{name}.db")))),
        Backend::Postgres => {
            let pg = pg.context("no PostgreSQL")?;
            pg.create_database(name)?;
            Ok(Db::Postgres(pg, name.to_string()))
        }
    }
}

fn run_backend(
    a: &Args,
    backend: Backend,
    dir: &Path,
    pg: Option<&Postgres>,
) -> Result<BackendFigures> {
    let short = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "pg",
    };
    let mut f = BackendFigures {
        backend,
        records: vec![],
        rollups: vec![],
        queries: Queries::default(),
    };
    // PostgreSQL's CPU is counted on its own runs only.
    let pg_cpu = pg.filter(|_| backend == Backend::Postgres);
    for n in [1, 3] {
        let tag = format!("{short}-records-{n}");
        let db = fresh(backend, dir, pg, &tag.replace('-', "_"))?;
        f.records.push((n, records(a, &db, pg_cpu, n, &tag)?));
    }
    for n in [1, 3] {
        let tag = format!("{short}-rollups-{n}");
        let db = fresh(backend, dir, pg, &tag.replace('-', "_"))?;
        f.rollups.push((n, rollups(a, &db, pg_cpu, n, &tag)?));
    }
    let tag = format!("{short}-usage");
    let db = fresh(backend, dir, pg, &tag.replace('-', "_"))?;
    f.queries = usage_queries(a, &db, &tag)?;
    Ok(f)
}

fn run() -> Result<()> {
    let started = Instant::now();
    let a = args()?;
    let load_before = loadavg();
    let work = tempfile::Builder::new().prefix("bench-store-").tempdir()?;
    // BENCH_KEEP=1 keeps the SQLite stores (their directory is printed) for a closer look.
    let work_path = work.path().to_path_buf();
    if std::env::var_os("BENCH_KEEP").is_some() {
        say(format!("keeping {}", work_path.display()));
        std::mem::forget(work);
    }
    let pg = if a.backends.contains(&Backend::Postgres) {
        let pg = Postgres::start()?;
        // The shared buffers of a default installation, not the test cluster's 16 MB.
        pg.psql("postgres", "ALTER SYSTEM SET shared_buffers = '128MB'")?;
        pg.restart()?;
        Some(pg)
    } else {
        None
    };
    let pg_settings = match &pg {
        Some(pg) => {
            let s = pg.psql(
                "postgres",
                "SELECT current_setting('server_version'), current_setting('fsync'), \
                 current_setting('synchronous_commit'), current_setting('shared_buffers'), \
                 current_setting('wal_sync_method')",
            )?;
            say(format!("PostgreSQL: {s}"));
            Some(s)
        }
        None => None,
    };
    let sqlite_version =
        rusqlite::Connection::open_in_memory()?
            .query_row("SELECT sqlite_version()", [], |r| r.get::<_, String>(0))?;
    let mut figures = Vec::new();
    for &backend in &a.backends {
        figures.push(run_backend(&a, backend, &work_path, pg.as_ref())?);
    }
    drop(pg);
    let section = report(
        &a,
        &figures,
        &RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            load: (load_before, loadavg()),
            pg_settings,
            sqlite_version,
        },
    );
    let existing = std::fs::read_to_string(&a.out).unwrap_or_default();
    std::fs::write(&a.out, splice(&existing, &section))?;
    println!("{section}");
    Ok(())
}

struct RunInfo {
    seconds: f64,
    load: (String, String),
    pg_settings: Option<String>,
    sqlite_version: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
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

/// `median (min–max)`, with `digits` decimals.
fn spread(v: &[f64], digits: usize) -> String {
    let (lo, hi) = stats::range(v);
    format!(
        "{:.digits$} ({lo:.digits$}–{hi:.digits$})",
        stats::median(v)
    )
}

/// One row per store and number of collectors.
fn ingest_table(
    figures: &[BackendFigures],
    of: impl Fn(&BackendFigures) -> &Vec<(usize, Throughput)>,
    rate: &str,
    per: u32,
    per_text: &str,
    unit: &str,
) -> String {
    let cpu = |v: &[f64]| -> String {
        if v.is_empty() {
            "–".to_string()
        } else {
            format!("{:.0} ms", stats::median(v) * f64::from(per) / 1e3)
        }
    };
    let mut t = format!(
        "| store | collectors | {rate} | POST p50 / p99 | CPU per {per_text}: collectors / PostgreSQL | stored bytes per {unit} | 503s retried | errors logged | deadlocks / rollbacks |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for f in figures {
        for (n, r) in of(f) {
            let conflicts = r
                .conflicts
                .map_or("–".to_string(), |(d, r)| format!("{d} / {r}"));
            t.push_str(&format!(
                "| {} | {n} | {} | {:.0} / {:.0} ms | {} / {} | {:.0} | {} | {} | {conflicts} |\n",
                f.backend.name(),
                spread(&r.per_second, 0),
                quantile(&r.latencies_ms, 0.5),
                quantile(&r.latencies_ms, 0.99),
                cpu(&r.collector_cpu_us),
                cpu(&r.postgres_cpu_us),
                r.stored_bytes,
                r.retried,
                r.errors,
            ));
        }
    }
    // The rounds in order: a store's rate may change as it grows.
    let rounds: Vec<String> = figures
        .iter()
        .flat_map(|f| {
            of(f).iter().map(move |(n, r)| {
                let v: Vec<String> = r.per_second.iter().map(|x| format!("{x:.0}")).collect();
                format!("{} × {n}: {}", f.backend.name(), v.join(", "))
            })
        })
        .collect();
    t.push_str(&format!(
        "\n{rate}, round by round: {}.\n",
        rounds.join("; ")
    ));
    t
}

fn report(a: &Args, figures: &[BackendFigures], c: &RunInfo) -> String {
    let when = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let rollup_rows = BATCH_MINUTES as usize * SERIES_PER_GATEWAY;
    let records_table = ingest_table(
        figures,
        |f| &f.records,
        "records/s",
        1000,
        "1,000 records",
        "record",
    );
    let rollups_table = ingest_table(
        figures,
        |f| &f.rollups,
        "rollup rows/s",
        10_000,
        "10,000 rows",
        "row",
    );
    let mut errors = String::new();
    for f in figures {
        for (n, t) in f.records.iter().chain(&f.rollups) {
            if let Some(first) = t.first_errors.first() {
                errors.push_str(&format!(
                    "\n{}, {n} collector(s), first error logged: `{first}`\n",
                    f.backend.name()
                ));
            }
        }
    }
    let mut queries = String::from("| query |");
    let mut rule = String::from("|---|");
    for f in figures {
        for kept in ["every tier kept", "default retention"] {
            queries.push_str(&format!(" {}, {kept} |", f.backend.name()));
            rule.push_str("---:|");
        }
    }
    queries.push('\n');
    queries.push_str(&rule);
    queries.push('\n');
    for (i, (query, _)) in QUERIES.iter().enumerate() {
        queries.push_str(&format!("| `GET /api/v1/usage?{query}` |"));
        for f in figures {
            for runs in [&f.queries.kept, &f.queries.retained] {
                let ms = runs.get(i).map(Vec::as_slice).unwrap_or_default();
                queries.push_str(&format!(" {} ms |", spread(ms, 1)));
            }
        }
        queries.push('\n');
    }
    let mut fill = String::from(
        "| store | rows | requests | filled in | rows/s | default retention's first pass |\n\
|---|---:|---:|---:|---:|---:|\n",
    );
    for f in figures {
        let q = &f.queries;
        fill.push_str(&format!(
            "| {} | {} | {} | {:.0} s | {:.0} | {:.1} s |\n",
            f.backend.name(),
            q.rows,
            q.requests,
            q.fill_seconds,
            q.fill_rows_per_second,
            q.retention_seconds
        ));
    }
    let series = figures.first().map_or(0, |f| f.queries.series);
    let pg = c
        .pg_settings
        .as_deref()
        .map(|s| {
            let v: Vec<&str> = s.split('|').collect();
            let at = |i: usize| v.get(i).copied().unwrap_or("?");
            format!(
                "{}, in testkit's cluster of its own on loopback: `fsync = {}`,\n  \
                 `synchronous_commit = {}`, `shared_buffers = {}`, `wal_sync_method = {}`",
                at(0),
                at(1),
                at(2),
                at(3),
                at(4)
            )
        })
        .unwrap_or_else(|| "not run".to_string());
    format!(
        "{BEGIN}\n\n## Store\n\n\
- **When:** {when} (the run took {secs:.0} s); `{command}`\n\
- **Machine:** {machine}; the collectors, the database and the clients share its cores\n\
- **Load average** (1, 5, 15 min): {l0} at the start, {l1} at the end\n\
- **SQLite** {sqlite} (the binary's own: one file, WAL, `synchronous = FULL`, `busy_timeout`\n  \
30 s), in a temporary directory on the local disk\n\
- **PostgreSQL** {pg}\n\n\
Every commit is on disk before the collector answers: SQLite fsyncs the WAL at each commit,\n\
PostgreSQL its WAL. PostgreSQL runs with the shared buffers of a default installation\n\
(testkit's clusters have 16 MB).\n\n\
**How.** Real `tokenmeter serve` processes (`--listen 127.0.0.1:0`, default flags), each\n\
on a fresh database; three collectors share one database, the batches dealt round-robin\n\
over them. A collector works through one connection to an SQLite file and four to\n\
PostgreSQL, so posts to one collector queue there past that. {clients} client threads post\n\
the batches, each once, a thread\n\
its next as soon as its last is answered; a 503 would be tried again after 250 ms, and\n\
counted.\n\n\
- *Records/s*: {records} records a round, about 2 KB of JSON each (question, answer and\n  \
context text, usage, dimensions), in JSONL batches of {batch} (`POST /v1/records`).\n\
- *Rollup rows/s*: {rbatches} batches a round of {rollup_rows} rows (`POST /v1/rollups`), each\n  \
one gateway's {spg} series (5 models × 10 teams) over 10 minutes, from a fleet of {fleet}\n  \
gateways taking turns: concurrent batches add to the same rows of the hour and day tiers'\n  \
marginals, as a fleet's do.\n\
- Medians of {rounds} rounds after one of warm-up, and their range; the POST latencies are\n  \
over every post of the rounds. CPU is the collectors' `utime + stime` and that of\n  \
PostgreSQL's whole process tree, per 1,000 records or 10,000 rows.\n\
- *Stored bytes*: the database's size at the end (tables and their indexes; for SQLite the\n  \
whole file) over the records or rollup rows sent; a rollup row's share includes the hour\n  \
and day tiers, the marginals and the series.\n\
- After the rounds, the database held exactly the records sent, and every rollup tier, the\n  \
marginals and the usage API the exact sums sent (the run stops otherwise). Deadlocks and\n  \
rollbacks are PostgreSQL's counts for the row's database (`pg_stat_database`).\n\n\
### Records\n\n{records_table}\n\
PostgreSQL compresses a row's text past about 2 KB (TOAST), and these records' text, drawn\n\
from a small vocabulary, compresses better than real prompts would; SQLite stores rows as\n\
they are, in pages of 4 KB, one such record to a page.\n\n\
### Rollups\n\n{rollups_table}{errors}\n\
### The console's 30-day usage query\n\n\
A store filled through `POST /v1/rollups` with 30 days of rollups from {gw} gateways ×\n\
{spg} series ({series} series), each series active in one minute of every hour of the last\n\
720 (one row per series and hour, added to the minute, hour and day tiers and the\n\
marginals), in batches of one gateway's series over 10 hours, through one collector that\n\
keeps every tier (`--retain-minutes forever --retain-hours forever`: its retention pass\n\
leaves the tiers alone and sets no horizon). That collector answers the queries first\n\
(*every tier kept*). Then a collector with the default retention opens the store: its\n\
first pass deletes the minutes older than 8 days and sets the minute tier's horizon there,\n\
as on any store in use, and it answers the same queries (*default retention*).\n\n{fill}\n\
The queries over HTTP, {runs} runs each after one to warm the caches, every answer's total\n\
checked against what was sent in its window:\n\n{queries}\n{END}\n",
        secs = c.seconds,
        command = a.command,
        machine = machine(),
        l0 = c.load.0,
        l1 = c.load.1,
        sqlite = c.sqlite_version,
        clients = a.clients,
        records = a.records,
        batch = a.record_batch,
        rbatches = a.rollup_batches,
        spg = SERIES_PER_GATEWAY,
        fleet = FLEET,
        rounds = a.rounds,
        gw = a.fill_gateways,
        runs = a.query_runs,
    )
}

/// Replaces the store section of the report, or appends it.
fn splice(text: &str, section: &str) -> String {
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let before = text.get(..b).unwrap_or_default();
            let after = text.get(e + END.len()..).unwrap_or_default();
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{before}{section}{after}")
        }
        _ => format!("{}\n\n{section}", text.trim_end_matches('\n')),
    }
}
