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
}

/// The targets the issue sets, per kind: tokenmeter's CPU over the do-nothing filter
/// (µs/request) and its throughput relative to the do-nothing filter.
pub fn targets(kind: Kind) -> Option<(f64, f64)> {
    match kind {
        Kind::Json => Some((15.0, 0.95)),
        Kind::StreamUsage => Some((15.0, 0.93)),
        Kind::StreamEstimated => Some((40.0, 0.85)),
        Kind::StreamInjected => None,
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
}

/// Workers of the larger gateway the memory phase starts, to see what one worker adds.
pub const MANY_WORKERS: usize = 3;

/// VmRSS in kB of one gateway, with one worker and with [`MANY_WORKERS`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    pub idle_1: f64,
    pub traffic_1: f64,
    pub idle_many: f64,
    pub traffic_many: f64,
    /// tokenmeter only, one worker: after the first estimated request, and after many.
    pub first_estimate_1: Option<f64>,
    pub estimates_1: Option<f64>,
}

impl Memory {
    /// What one more worker costs, after traffic.
    pub fn per_worker(&self) -> f64 {
        (self.traffic_many - self.traffic_1) / (MANY_WORKERS - 1) as f64
    }
}

#[derive(Debug, Clone, Default)]
pub struct Results {
    pub machine: Machine,
    pub params: Params,
    /// Samples per (kind, gateway), one per round.
    pub samples: Vec<(Kind, Gateway, Vec<Sample>)>,
    /// Per round, tokenmeter's CPU per request minus the do-nothing filter's, per kind.
    pub own_cost: Vec<(Kind, Vec<f64>)>,
    pub memory: Vec<(Gateway, Memory)>,
    /// Milliseconds from process start to ready, per start.
    pub ready_ms: Vec<(Gateway, Vec<f64>)>,
    /// The first estimated request's latency and the median of the next ones, in ms.
    pub first_estimate_ms: Option<(f64, f64)>,
    /// tokenmeter's core alone in V8 (no host), µs per exchange, by kind name.
    pub own_work_us: Vec<(String, f64)>,
    pub tokenizer_native: Option<Throughput>,
    pub tokenizer_v8: Option<Throughput>,
    pub duration_s: f64,
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
        "- **Setup:** Envoy {} (V8), one worker per gateway; the upstream is another Envoy answering from `direct_response` routes; \
         wrk {} with one thread and {} connections, {} s per measurement after {} s of warm-up per gateway and traffic kind; \
         {} rounds, the gateways alternating in a rotating order within each round; tokenmeter configured with `{}`",
        m.envoy, m.wrk, p.connections, p.seconds, p.warmup_seconds, p.rounds, p.filter_config
    );
    let _ = writeln!(
        o,
        "- **CPU per request** is the Envoy process's `utime + stime` (`/proc/PID/stat`) over the measurement, divided by the requests wrk completed.\n"
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

    let _ = writeln!(o, "\n### tokenmeter against the targets\n");
    let _ = writeln!(
        o,
        "| traffic | tokenmeter − do-nothing, CPU µs/request | target | CPU tokenmeter / plain | CPU tokenmeter / do-nothing | requests/s tokenmeter / do-nothing | target |"
    );
    let _ = writeln!(o, "|---|---:|---|---:|---:|---:|---|");
    for kind in r.kinds() {
        let own = r
            .own_cost
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(f64::NAN, |(_, v)| median(v));
        let cpu = |g| r.med(kind, g, |s| s.cpu_us_per_request);
        let rps = |g| r.med(kind, g, |s| s.rps);
        let rps_ratio = rps(Gateway::Tokenmeter) / rps(Gateway::Noop);
        let (cost_target, rps_target) = match targets(kind) {
            Some((c, t)) => (
                format!("≤ {c:.0}: {}", verdict(own <= c)),
                format!("≥ {t:.2}: {}", verdict(rps_ratio >= t)),
            ),
            None => ("none".to_string(), "none".to_string()),
        };
        let _ = writeln!(
            o,
            "| {} | {:.1} | {} | {:.3} | {:.3} | {:.3} | {} |",
            kind.title(),
            own,
            cost_target,
            cpu(Gateway::Tokenmeter) / cpu(Gateway::Plain),
            cpu(Gateway::Tokenmeter) / cpu(Gateway::Noop),
            rps_ratio,
            rps_target,
        );
    }
    let _ = writeln!(
        o,
        "\nThe difference is the median of the per-round differences (the gateways of a round ran within seconds of each other); the ratios are of the medians above."
    );
    if !r.own_work_us.is_empty() {
        let _ = writeln!(
            o,
            "\n### tokenmeter's own code, without the host
"
        );
        let _ = writeln!(
            o,
            "The same exchanges replayed through tokenmeter's core compiled to wasm32-wasip1 and run in V8 (Node {}), with no host: the filter's own work. The rest of its cost in the gateway is the host calls it makes (headers, bodies, properties, metrics) and Envoy's side of them.\n",
            m.node
        );
        let _ = writeln!(
            o,
            "| traffic | CPU µs per exchange in V8 (median of 3 runs) |"
        );
        let _ = writeln!(o, "|---|---:|");
        for kind in Kind::ALL {
            if let Some((_, us)) = r.own_work_us.iter().find(|(k, _)| k == kind.name()) {
                let _ = writeln!(o, "| {} | {:.1} |", kind.title(), us);
            }
        }
    }

    render_memory(&mut o, r);

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

fn render_memory(o: &mut String, r: &Results) {
    if r.memory.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n### Memory (VmRSS, MB)\n");
    let _ = writeln!(
        o,
        "| gateway | 1 worker, idle | 1 worker, after traffic | {n} workers, idle | {n} workers, after traffic | per worker (after traffic) |",
        n = MANY_WORKERS
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for (g, m) in &r.memory {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            g.name(),
            mb(m.idle_1),
            mb(m.traffic_1),
            mb(m.idle_many),
            mb(m.traffic_many),
            mb(m.per_worker()),
        );
    }
    let find = |g| r.memory.iter().find(|(x, _)| *x == g).map(|(_, m)| *m);
    if let (Some(plain), Some(noop), Some(tm)) = (
        find(Gateway::Plain),
        find(Gateway::Noop),
        find(Gateway::Tokenmeter),
    ) {
        let own = tm.per_worker() - plain.per_worker();
        let _ = writeln!(
            o,
            "\nPer worker ({n} workers against 1), before any estimate, tokenmeter adds {} MB to plain Envoy (target ≤ 4 MB: {}) and {} MB to the do-nothing filter. With one worker the whole process is {} MB larger than plain Envoy: the main thread's VM and the worker's, and the module itself.",
            signed_mb(own),
            verdict(own <= 4.0 * 1024.0),
            signed_mb(tm.per_worker() - noop.per_worker()),
            signed_mb(tm.traffic_1 - plain.traffic_1),
            n = MANY_WORKERS,
        );
        if let (Some(first), Some(many)) = (tm.first_estimate_1, tm.estimates_1) {
            let _ = writeln!(
                o,
                "\nThe tokenizer's cost: the first estimate grows a one-worker gateway by {} MB ({} MB after many estimates). It is paid once per VM that estimates, and only then.",
                signed_mb(first - tm.traffic_1),
                signed_mb(many - tm.traffic_1),
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
        };
        let mut r = Results::default();
        for g in Gateway::ALL {
            r.samples.push((Kind::Json, g, vec![sample; 3]));
        }
        r.own_cost.push((Kind::Json, vec![10.0, 12.0, 11.0]));
        let text = render(&r);
        assert!(
            text.contains("| JSON with usage | 11.0 | ≤ 15: met |"),
            "{text}"
        );
        assert!(!text.contains("SSE"));
        assert!(text.starts_with(BEGIN) && text.trim_end().ends_with(END));
    }
}
