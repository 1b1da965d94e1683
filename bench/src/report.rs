//! The results as Markdown, and their place in `BENCHMARKS.md`.
//!
//! The generated part sits between two marker comments and is replaced whole by each run;
//! anything written around it (analysis, profiles) stays.

use std::fmt::Write as _;

use crate::bootstraps::Gateway;
use crate::stats::{median, range};
use crate::tokenizer::Throughput;
use crate::traffic::Kind;

pub const BEGIN: &str = "<!-- results: begin (written by `make bench`; replaced on every run) -->";
pub const END: &str = "<!-- results: end -->";

/// One measurement of one gateway under one kind of traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub requests: u64,
    pub rps: f64,
    pub cpu_us_per_request: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Reads-only filter: request and response body callbacks per finished response.
    pub body_callbacks: Option<(f64, f64)>,
}

/// The target for tokenmeter's CPU over the reads-only filter, in µs per request: a fixed
/// part and a part per response body callback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub fixed: f64,
    pub per_callback: f64,
}

impl Target {
    pub fn at(&self, callbacks: f64) -> f64 {
        self.fixed + self.per_callback * callbacks
    }
}

/// The targets, per kind, against the reads-only filter in the same run.
pub fn target(kind: Kind) -> Option<Target> {
    let t = |fixed, per_callback| {
        Some(Target {
            fixed,
            per_callback,
        })
    };
    match kind {
        Kind::Json => t(15.0, 0.0),
        Kind::StreamUsage
        | Kind::StreamInjected
        | Kind::Trickle50
        | Kind::Trickle300
        | Kind::Trickle2000 => t(30.0, 1.0),
        Kind::Trickle300Estimated => t(60.0, 0.0),
        // A 51-token answer: the estimate's target is set for the 300-token trickled row.
        Kind::StreamEstimated => None,
    }
}

#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub date: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub load_before: String,
    pub load_after: String,
    pub envoy: String,
    pub wrk: String,
    pub node: String,
}

#[derive(Debug, Clone, Default)]
pub struct Params {
    pub command: String,
    pub filter_config: String,
    pub rounds: u32,
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub connections: u32,
    pub trickle_gap_us: u64,
}

/// The worker counts the memory phase starts each gateway with; what one worker adds is
/// the slope fitted through them.
pub const WORKER_COUNTS: [usize; 3] = [1, 2, 4];

/// VmRSS in kB of one gateway, by worker count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    pub idle: Vec<(usize, f64)>,
    pub traffic: Vec<(usize, f64)>,
    /// tokenmeter only: after the first estimated request, one worker.
    pub first_estimate_1: Option<f64>,
    /// tokenmeter only: after estimates in every worker.
    pub estimated: Vec<(usize, f64)>,
}

/// Least-squares slope of `y` over `x`: what one more worker adds.
pub fn slope(points: &[(usize, f64)]) -> f64 {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 as f64 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    sxy / sxx
}

fn at(points: &[(usize, f64)], workers: usize) -> f64 {
    points
        .iter()
        .find(|p| p.0 == workers)
        .map_or(f64::NAN, |p| p.1)
}

#[derive(Debug, Clone, Default)]
pub struct Results {
    pub machine: Machine,
    pub params: Params,
    /// Whether the gateways ran on a CPU of their own.
    pub pinned: bool,
    /// Samples per (kind, gateway), one per round.
    pub samples: Vec<(Kind, Gateway, Vec<Sample>)>,
    /// Per kind and round, each gateway's CPU per request, in [`Gateway::ALL`] order.
    pub rounds: Vec<(Kind, Vec<[f64; 4]>)>,
    pub memory: Vec<(Gateway, Memory)>,
    /// Milliseconds from process start to ready, per start.
    pub ready_ms: Vec<(Gateway, Vec<f64>)>,
    /// The first estimated request's latency and the median of the next ones, in ms.
    pub first_estimate_ms: Option<(f64, f64)>,
    /// tokenmeter's core alone in V8 (no host), µs per exchange, by kind name.
    pub own_work_us: Vec<(String, f64)>,
    /// The same natively under callgrind: instructions per exchange, by kind name.
    pub own_instructions: Vec<(String, u64)>,
    pub tokenizer_native: Option<Throughput>,
    pub tokenizer_v8: Option<Throughput>,
    pub duration_s: f64,
}

fn slot(g: Gateway) -> usize {
    Gateway::ALL.iter().position(|x| *x == g).unwrap_or(0)
}

impl Results {
    fn samples(&self, kind: Kind, gateway: Gateway) -> &[Sample] {
        self.samples
            .iter()
            .find(|(k, g, _)| *k == kind && *g == gateway)
            .map_or(&[], |(_, _, s)| s.as_slice())
    }

    fn med(&self, kind: Kind, gateway: Gateway, f: impl Fn(&Sample) -> f64) -> f64 {
        median(
            &self
                .samples(kind, gateway)
                .iter()
                .map(f)
                .collect::<Vec<_>>(),
        )
    }

    fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| !self.samples(*k, Gateway::Tokenmeter).is_empty())
            .collect()
    }

    /// Per round, `a`'s CPU per request minus `b`'s.
    fn differences(&self, kind: Kind, a: Gateway, b: Gateway) -> Vec<f64> {
        self.rounds
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, rounds)| rounds.iter().map(|r| r[slot(a)] - r[slot(b)]).collect())
            .unwrap_or_default()
    }

    /// Request and response body callbacks per response, as the reads-only filter saw them.
    fn callbacks(&self, kind: Kind) -> Option<(f64, f64)> {
        let s = self.samples(kind, Gateway::ReadsOnly);
        let req: Vec<f64> = s
            .iter()
            .filter_map(|s| s.body_callbacks.map(|c| c.0))
            .collect();
        let resp: Vec<f64> = s
            .iter()
            .filter_map(|s| s.body_callbacks.map(|c| c.1))
            .collect();
        (!resp.is_empty()).then(|| (median(&req), median(&resp)))
    }
}

/// 1234567 as "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mb(kb: f64) -> String {
    format!("{:.1}", kb / 1024.0)
}

fn signed_mb(kb: f64) -> String {
    format!("{:+.1}", kb / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The generated section, markers included.
pub fn render(r: &Results) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let p = &r.params;
    let _ = writeln!(o, "{BEGIN}\n");
    let _ = writeln!(o, "## Latest run\n");
    let _ = writeln!(
        o,
        "- **When:** {} (the run took {:.0} s)",
        m.date, r.duration_s
    );
    let _ = writeln!(
        o,
        "- **Machine:** {} cores ({}), {:.1} GiB memory, Linux {}",
        m.cores, m.cpu_model, m.memory_gib, m.kernel
    );
    let _ = writeln!(
        o,
        "- **Load average** (1, 5, 15 min): {} at the start, {} at the end",
        m.load_before, m.load_after
    );
    let _ = writeln!(o, "- **Command:** `{}`", p.command);
    let _ = writeln!(
        o,
        "- **Setup:** Envoy {} (V8), one worker per gateway; the canned upstream is another Envoy answering from `direct_response` routes, \
         the trickled streams come from a server that writes each event on its own after a {} µs pause (`testkit/src/trickle.rs`); \
         wrk {} with one thread and {} connections for the canned kinds, {} closed-loop connections that finish their last request for the trickled ones; \
         {} s per measurement after {} s of warm-up per gateway and traffic kind; \
         {} rounds, the gateways alternating in a rotating order within each round; tokenmeter configured with `{}`",
        m.envoy, p.trickle_gap_us, m.wrk, p.connections, p.connections, p.seconds, p.warmup_seconds, p.rounds, p.filter_config
    );
    let _ = writeln!(
        o,
        "- **CPUs:** {}",
        if r.pinned {
            "the gateway under test on CPU 0, the load, the upstreams and the runner on the others (`taskset`)"
        } else {
            "not pinned: gateways, load and upstreams share the CPUs"
        }
    );
    let _ = writeln!(
        o,
        "- **CPU per request** is the Envoy process's `utime + stime` (`/proc/PID/stat`) over the measurement, divided by the requests completed.\n"
    );

    let _ = writeln!(o, "### Cost per request (medians of {} rounds)\n", p.rounds);
    let _ = writeln!(
        o,
        "| traffic | gateway | requests/s | CPU µs/request (min–max) | p50 latency ms | p99 latency ms |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|");
    for kind in r.kinds() {
        for g in Gateway::ALL {
            let cpu: Vec<f64> = r
                .samples(kind, g)
                .iter()
                .map(|s| s.cpu_us_per_request)
                .collect();
            if cpu.is_empty() {
                continue;
            }
            let (lo, hi) = range(&cpu);
            let _ = writeln!(
                o,
                "| {} | {} | {:.0} | {:.1} ({:.0}–{:.0}) | {:.2} | {:.2} |",
                kind.title(),
                g.name(),
                r.med(kind, g, |s| s.rps),
                median(&cpu),
                lo,
                hi,
                r.med(kind, g, |s| s.p50_us) / 1e3,
                r.med(kind, g, |s| s.p99_us) / 1e3,
            );
        }
    }

    render_targets(&mut o, r);
    render_trickled(&mut o, r);

    if !r.own_work_us.is_empty() || !r.own_instructions.is_empty() {
        let _ = writeln!(o, "\n### tokenmeter's own code, without the host\n");
        let _ = writeln!(
            o,
            "The same exchanges replayed through tokenmeter's core (`bench/wasm/replay`, a trickled stream one event per callback) with no host: the filter's own work. \
             Compiled to wasm32-wasip1 and run in V8 (Node {}), timed; and natively under callgrind, counted (the marginal instructions of 400 exchanges over 200: exact whatever the load). \
             The rest of its cost in the gateway is the host calls it makes (headers, bodies, properties, metrics) and Envoy's side of them.\n",
            m.node
        );
        let _ = writeln!(
            o,
            "| traffic | CPU µs per exchange in V8 (median of 3 runs) | µs per event | native instructions per exchange |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|");
        for kind in Kind::ALL {
            let us = r
                .own_work_us
                .iter()
                .find(|(k, _)| k == kind.name())
                .map(|(_, us)| *us);
            let ins = r
                .own_instructions
                .iter()
                .find(|(k, _)| k == kind.name())
                .map(|(_, n)| *n);
            if us.is_none() && ins.is_none() {
                continue;
            }
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                kind.title(),
                us.map_or("–".to_string(), |u| format!("{u:.1}")),
                us.map_or("–".to_string(), |u| format!(
                    "{:.2}",
                    u / kind.events() as f64
                )),
                ins.map_or("–".to_string(), thousands),
            );
        }
    }

    render_memory(&mut o, r);

    if !r.ready_ms.is_empty() {
        let _ = writeln!(o, "\n### Start-up\n");
        let _ = writeln!(
            o,
            "| gateway | process start to ready, ms (median of {} starts) |",
            r.ready_ms.first().map_or(0, |(_, v)| v.len())
        );
        let _ = writeln!(o, "|---|---:|");
        for (g, ms) in &r.ready_ms {
            let _ = writeln!(o, "| {} | {:.0} |", g.name(), median(ms));
        }
    }
    if let Some((first, next)) = r.first_estimate_ms {
        let _ = writeln!(
            o,
            "\nThe first estimated request on a fresh one-worker gateway took {first:.1} ms end to end; the ones after it {next:.2} ms (median). The difference is building the o200k_base tokenizer in that worker's VM, which happens once per VM and only when a response has to be estimated."
        );
    }

    if let (Some(n), Some(v)) = (r.tokenizer_native, r.tokenizer_v8) {
        let _ = writeln!(o, "\n### Tokenizer (tiktoken-rs, o200k_base)\n");
        let _ = writeln!(
            o,
            "| where | tokens/s | first pass tokens/s | building the encoding, ms |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|");
        let _ = writeln!(
            o,
            "| native | {:.0} | {:.0} | {:.0} |",
            n.tokens_per_s, n.first_tokens_per_s, n.init_ms
        );
        let _ = writeln!(
            o,
            "| wasm32-wasip1 in V8 (Node {}) | {:.0} | {:.0} | {:.0} |",
            m.node, v.tokens_per_s, v.first_tokens_per_s, v.init_ms
        );
        let _ = writeln!(
            o,
            "\nA generated corpus of {} KiB ({} tokens), counted in paragraphs; V8 runs at {:.2}× native speed, so each estimated token costs about {:.2} µs inside the filter.",
            n.bytes / 1024,
            n.tokens,
            v.tokens_per_s / n.tokens_per_s,
            1e6 / v.tokens_per_s
        );
    }
    let _ = writeln!(o, "\n{END}");
    o
}

/// Median and range of a list, as "m (lo to hi)".
fn spread(v: &[f64]) -> String {
    let (lo, hi) = range(v);
    format!("{:.1} ({:.0} to {:.0})", median(v), lo, hi)
}

/// "met" only when the whole range of rounds meets the target.
fn verdict_over(v: &[f64], target: f64) -> String {
    let (_, hi) = range(v);
    if hi <= target {
        "met".to_string()
    } else if median(v) <= target {
        "**median met, range not**".to_string()
    } else {
        "**missed**".to_string()
    }
}

fn render_targets(o: &mut String, r: &Results) {
    let _ = writeln!(o, "\n### tokenmeter against the targets\n");
    let _ = writeln!(
        o,
        "Each difference is taken within a round (the gateways of a round ran within seconds of each other): the median over the rounds, and their range. \
         *tokenmeter − reads-only* is the filter's own cost; *reads-only − do-nothing* is what reading the headers and bodies through the ABI costs; \
         *do-nothing − plain* is the ABI's fixed cost. A target is met only when the whole range meets it.\n"
    );
    let _ = writeln!(
        o,
        "| traffic | tokenmeter − reads-only, CPU µs/request | target | reads-only − do-nothing | do-nothing − plain | body callbacks per response (request + response) |"
    );
    let _ = writeln!(o, "|---|---:|---|---:|---:|---:|");
    for kind in r.kinds() {
        let own = r.differences(kind, Gateway::Tokenmeter, Gateway::ReadsOnly);
        let callbacks = r.callbacks(kind);
        let target = match target(kind) {
            Some(t) => {
                let limit = t.at(callbacks.map_or(0.0, |c| c.1));
                let text = if t.per_callback > 0.0 {
                    format!(
                        "≤ {:.0} + {:.0} × callbacks = {limit:.0}",
                        t.fixed, t.per_callback
                    )
                } else {
                    format!("≤ {limit:.0}")
                };
                format!("{text}: {}", verdict_over(&own, limit))
            }
            None => "none".to_string(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            kind.title(),
            spread(&own),
            target,
            spread(&r.differences(kind, Gateway::ReadsOnly, Gateway::Noop)),
            spread(&r.differences(kind, Gateway::Noop, Gateway::Plain)),
            callbacks.map_or("–".to_string(), |(q, a)| format!("{q:.1} + {a:.1}")),
        );
    }
}

fn render_trickled(o: &mut String, r: &Results) {
    let kinds: Vec<Kind> = r
        .kinds()
        .into_iter()
        .filter(|k| k.trickled().is_some())
        .collect();
    if kinds.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n### Trickled streams, per chunk\n");
    let _ = writeln!(
        o,
        "CPU per response body callback (the chunks the host actually delivered, counted by the reads-only filter), medians:\n"
    );
    let _ = write!(o, "| traffic | events | body callbacks |");
    for g in Gateway::ALL {
        let _ = write!(o, " {} µs/callback |", g.name());
    }
    let _ = writeln!(o, " tokenmeter − reads-only, µs/callback |");
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut fit = Vec::new();
    for kind in kinds {
        let callbacks = r.callbacks(kind).map_or(f64::NAN, |c| c.1);
        let _ = write!(
            o,
            "| {} | {} | {:.1} |",
            kind.title(),
            kind.events(),
            callbacks
        );
        for g in Gateway::ALL {
            let _ = write!(
                o,
                " {:.2} |",
                r.med(kind, g, |s| s.cpu_us_per_request) / callbacks
            );
        }
        let own = median(&r.differences(kind, Gateway::Tokenmeter, Gateway::ReadsOnly));
        let _ = writeln!(o, " {:.2} |", own / callbacks);
        if matches!(kind.trickled(), Some((_, true))) && callbacks.is_finite() {
            fit.push((callbacks, own));
        }
    }
    if fit.len() >= 2 {
        let n = fit.len() as f64;
        let mx = fit.iter().map(|p| p.0).sum::<f64>() / n;
        let my = fit.iter().map(|p| p.1).sum::<f64>() / n;
        let b = fit.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>()
            / fit.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
        let _ = writeln!(
            o,
            "\nFitted over the trickled streams with usage, tokenmeter's own cost is {:.1} µs per request plus {:.2} µs per body callback (target: ≤ 30 plus ≤ 1).",
            my - b * mx,
            b
        );
    }
}

fn render_memory(o: &mut String, r: &Results) {
    if r.memory.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n### Memory (VmRSS, MB, after traffic)\n");
    let _ = write!(o, "| gateway |");
    for w in WORKER_COUNTS {
        let _ = write!(o, " {w} worker{} |", if w == 1 { "" } else { "s" });
    }
    let _ = writeln!(o, " per worker (fitted slope) |");
    let _ = writeln!(o, "|---|{}---:|", "---:|".repeat(WORKER_COUNTS.len()));
    for (g, m) in &r.memory {
        let _ = write!(o, "| {} |", g.name());
        for w in WORKER_COUNTS {
            let _ = write!(o, " {} |", mb(at(&m.traffic, w)));
        }
        let _ = writeln!(o, " {} |", mb(slope(&m.traffic)));
    }
    let find = |g| r.memory.iter().find(|(x, _)| *x == g).map(|(_, m)| m);
    if let (Some(plain), Some(noop), Some(tm)) = (
        find(Gateway::Plain),
        find(Gateway::Noop),
        find(Gateway::Tokenmeter),
    ) {
        let own = slope(&tm.traffic) - slope(&plain.traffic);
        let _ = writeln!(
            o,
            "\nPer worker, before any estimate, tokenmeter adds {} MB to plain Envoy (target ≤ 4 MB: {}) and {} MB to the do-nothing filter. With one worker the whole process is {} MB larger than plain Envoy: the main thread's VM and the worker's, and the module itself.",
            signed_mb(own),
            verdict(own <= 4.0 * 1024.0),
            signed_mb(slope(&tm.traffic) - slope(&noop.traffic)),
            signed_mb(at(&tm.traffic, 1) - at(&plain.traffic, 1)),
        );
        if tm.estimated.len() >= 2 {
            let after = slope(&tm.estimated) - slope(&plain.traffic);
            let _ = writeln!(
                o,
                "\nAfter every worker has estimated (each VM built its tokenizer), a worker adds {} MB to plain Envoy (target ≤ 10 MB: {}).",
                signed_mb(after),
                verdict(after <= 10.0 * 1024.0),
            );
        }
        if let Some(first) = tm.first_estimate_1 {
            let _ = writeln!(
                o,
                "\nThe first estimate grows a one-worker gateway by {} MB; it is paid once per VM that estimates, and only then.",
                signed_mb(first - at(&tm.traffic, 1)),
            );
        }
    }
}

/// `BENCHMARKS.md` with its generated section replaced by `section` (or appended).
pub fn splice(existing: Option<&str>, section: &str) -> String {
    let Some(text) = existing else {
        return format!(
            "# Benchmarks\n\nWhat tokenmeter costs a gateway, measured by `make bench`.\n\n{section}"
        );
    };
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let after = &text[e + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{section}{after}", &text[..b])
        }
        _ => format!(
            "{}\n{section}",
            text.trim_end_matches('\n').to_string() + "\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splicing_keeps_what_surrounds_the_section() {
        let first = splice(None, &format!("{BEGIN}\nold\n{END}\n"));
        assert!(first.starts_with("# Benchmarks"));
        let doc = format!("# B\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## Analysis\nkept\n");
        let new = splice(Some(&doc), &format!("{BEGIN}\nnew\n{END}\n"));
        assert_eq!(
            new,
            format!("# B\n\nintro\n\n{BEGIN}\nnew\n{END}\n\n## Analysis\nkept\n")
        );
        let appended = splice(Some("# B\n"), &format!("{BEGIN}\nx\n{END}\n"));
        assert_eq!(appended, format!("# B\n\n{BEGIN}\nx\n{END}\n"));
    }

    #[test]
    fn renders_every_kind_measured() {
        let sample = Sample {
            requests: 1000,
            rps: 3000.0,
            cpu_us_per_request: 300.0,
            p50_us: 4000.0,
            p99_us: 9000.0,
            body_callbacks: None,
        };
        let mut r = Results::default();
        for g in Gateway::ALL {
            r.samples.push((Kind::Json, g, vec![sample; 3]));
        }
        r.rounds.push((
            Kind::Json,
            vec![
                [100.0, 150.0, 180.0, 190.0],
                [100.0, 150.0, 180.0, 194.0],
                [100.0, 150.0, 180.0, 192.0],
            ],
        ));
        let text = render(&r);
        assert!(
            text.contains("| JSON with usage | 12.0 (10 to 14) | ≤ 15: met | 30.0 (30 to 30) | 50.0 (50 to 50) |"),
            "{text}"
        );
        assert!(!text.contains("SSE"));
        assert!(text.starts_with(BEGIN) && text.trim_end().ends_with(END));
        // One round over the target: the median alone does not meet it.
        r.rounds[0].1[1][3] = 200.0;
        assert!(render(&r).contains("≤ 15: **median met, range not**"));
    }

    #[test]
    fn trickled_rows_are_per_callback_with_a_fit() {
        let mut r = Results::default();
        for (kind, callbacks, own) in [
            (Kind::Trickle50, 55.0, 80.0),
            (Kind::Trickle300, 305.0, 330.0),
        ] {
            for g in Gateway::ALL {
                let s = Sample {
                    requests: 10,
                    rps: 10.0,
                    cpu_us_per_request: 1000.0,
                    p50_us: 1.0,
                    p99_us: 1.0,
                    body_callbacks: (g == Gateway::ReadsOnly).then_some((1.0, callbacks)),
                };
                r.samples.push((kind, g, vec![s]));
            }
            r.rounds
                .push((kind, vec![[500.0, 600.0, 700.0, 700.0 + own]]));
        }
        let text = render(&r);
        // 80 = a + 55 b, 330 = a + 305 b: b = 1, a = 25.
        assert!(
            text.contains("25.0 µs per request plus 1.00 µs per body callback"),
            "{text}"
        );
        assert!(text.contains("≤ 30 + 1 × callbacks = 85: met"), "{text}");
        assert!(text.contains("| 1.0 + 305.0 |"), "{text}");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_229_749), "1,229,749");
    }

    #[test]
    fn per_worker_memory_is_a_fitted_slope() {
        assert!((slope(&[(1, 10.0), (2, 12.0), (4, 16.0)]) - 2.0).abs() < 1e-9);
        assert!((slope(&[(1, 10.0), (2, 13.0), (4, 16.0)]) - 1.929).abs() < 1e-3);
    }
}
