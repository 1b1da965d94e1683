//! Counts the tokens of a fixed corpus with `tiktoken-rs` (o200k_base, the encoding of the
//! gpt-4o family) and prints one JSON line: how long the encoding took to build and how
//! many tokens a second it counts.
//!
//! The same source is compiled natively and for wasm32-wasip1, so running both compares a
//! wasm engine with native code on identical work. The corpus is generated, not read from a
//! file, so the wasm build needs no file system.

use std::time::Instant;

/// Words an LLM answer is made of, common and less common, so that BPE meets both whole-word
/// tokens and words it has to split.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "an",
    "which",
    "you",
    "can",
    "request",
    "response",
    "gateway",
    "token",
    "model",
    "latency",
    "throughput",
    "configuration",
    "function",
    "returns",
    "value",
    "example",
    "however",
    "because",
    "therefore",
    "each",
    "server",
    "client",
    "stream",
    "event",
    "message",
    "assistant",
    "user",
    "system",
    "performance",
    "measurement",
    "Kubernetes",
    "Envoy",
    "proxy",
    "filter",
    "metrics",
    "counter",
    "histogram",
    "label",
    "dimension",
    "cardinality",
    "estimate",
    "usage",
    "prompt",
    "completion",
    "encoding",
    "tokenizer",
    "characters",
    "Unicode",
    "naïve",
    "café",
    "résumé",
    "straightforward",
    "implementation",
    "approximately",
    "significant",
    "unfortunately",
    "nevertheless",
    "authentication",
    "authorization",
    "deployment",
    "infrastructure",
    "observability",
    "serialization",
    "deserialization",
    "JSON",
    "HTTP",
    "API",
    "SDK",
    "p99",
    "v1.2.3",
    "x86_64",
    "wasm32",
    "memory",
    "allocation",
    "buffer",
    "quickly",
    "slowly",
    "carefully",
    "really",
    "simply",
    "will",
    "would",
    "should",
    "could",
    "might",
    "must",
    "have",
    "has",
    "had",
    "do",
    "does",
    "did",
    "not",
    "no",
    "yes",
];

/// A deterministic generator (xorshift64*), so every run counts the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Paragraphs of prose with numbers, punctuation and the odd code span, about `bytes` long.
fn corpus(bytes: usize) -> Vec<String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut paragraphs = Vec::new();
    let mut total = 0;
    while total < bytes {
        let mut p = String::new();
        let sentences = 2 + rng.below(5);
        for _ in 0..sentences {
            let words = 6 + rng.below(14);
            for w in 0..words {
                let mut word = WORDS[rng.below(WORDS.len())].to_string();
                if w == 0 {
                    let mut c = word.chars();
                    if let Some(first) = c.next() {
                        word = first.to_uppercase().chain(c).collect();
                    }
                } else {
                    p.push(' ');
                }
                match rng.below(20) {
                    0 => p.push_str(&format!("{}", rng.below(100_000))),
                    1 => p.push_str(&format!("`{word}()`")),
                    2 => p.push_str(&format!("{word},")),
                    _ => p.push_str(&word),
                }
            }
            p.push_str([".", "!", "?", ":"][rng.below(4)]);
            p.push(' ');
        }
        p.push('\n');
        total += p.len();
        paragraphs.push(p);
    }
    paragraphs
}

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let paragraphs = corpus(256 * 1024);
    let bytes: usize = paragraphs.iter().map(String::len).sum();

    let start = Instant::now();
    let bpe = match tiktoken_rs::o200k_base() {
        Ok(bpe) => bpe,
        Err(e) => {
            eprintln!("tokcount: building o200k_base: {e}");
            std::process::exit(1);
        }
    };
    let init_ms = start.elapsed().as_secs_f64() * 1e3;

    let mut rates = Vec::with_capacity(iterations);
    let mut tokens = 0;
    for _ in 0..iterations {
        let start = Instant::now();
        tokens = paragraphs
            .iter()
            .map(|p| bpe.encode_ordinary(p).len())
            .sum::<usize>();
        rates.push(tokens as f64 / start.elapsed().as_secs_f64());
    }
    // The first pass includes the engine's tiering up; the median is the steady state.
    let first = rates.first().copied().unwrap_or(0.0);
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{{\"init_ms\":{init_ms:.1},\"bytes\":{bytes},\"tokens\":{tokens},\"iterations\":{iterations},\"first_tokens_per_s\":{first:.0},\"tokens_per_s\":{median:.0}}}"
    );
}
