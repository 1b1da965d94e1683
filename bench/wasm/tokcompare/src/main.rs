//! Compares two implementations of OpenAI's encodings (o200k_base, cl100k_base):
//! `tiktoken-rs`, which the core counts with, and `bpe-openai` (linear-time BPE).
//!
//! Every result is one JSON line: the encoding, the implementation, the input, how the text
//! was handed over (`seg2048`: in the core's segments of at most 2048 bytes, cut before a
//! space that starts a word; `whole`: as one text), the time to build the encoding, tokens a
//! second (median of the passes), the token count and whether it equals `tiktoken-rs`'s.
//!
//! ```text
//! tokcompare [all] [--passes N] [--corpus-bytes N] [--timeout S] [--child CMD]
//!     ordinary text (a generated corpus, also compared chunk by chunk) and long repeats
//! tokcompare one ENC IMPL INPUT MODE [BYTES] [PASSES]
//!     one measurement in a process of its own: build time and memory of one encoding alone
//! tokcompare crash [--timeout S] [--child CMD] [--max-bytes N]
//!     tiktoken-rs on whole long repeats: doubling lengths until one panics or times out,
//!     then the exact shortest length that fails
//! tokcompare isolated [--timeout S] [--child CMD]
//!     `one` for every encoding and implementation, each in its own process
//! ```
//!
//! Whole long repeats can make `tiktoken-rs` panic, and a panic aborts (the release profile's
//! `panic = "abort"`), so those run in child processes with a time limit: natively this very
//! program, or `--child CMD` (for instance a Wasm engine running this program's Wasm build).
//! The Wasm build cannot start processes: there `all` skips them and says so.
//!
//! The features `tiktoken` and `bpe` build each implementation alone (module sizes); the
//! comparisons need both.

use std::time::Instant;

// The core's own segments, so that segmented counts are exactly the core's.
use tokenmeter_core::tokens::tokenizer::segments;

#[cfg(not(any(feature = "tiktoken", feature = "bpe")))]
compile_error!("tokcompare needs the feature `tiktoken`, `bpe` or both");

// ---------------------------------------------------------------------------------------
// The two implementations.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Enc {
    O200k,
    Cl100k,
}

impl Enc {
    const ALL: [Enc; 2] = [Enc::O200k, Enc::Cl100k];

    fn name(self) -> &'static str {
        match self {
            Enc::O200k => "o200k_base",
            Enc::Cl100k => "cl100k_base",
        }
    }

    fn parse(s: &str) -> Option<Enc> {
        Enc::ALL.into_iter().find(|e| e.name() == s)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Imp {
    #[cfg(feature = "tiktoken")]
    Tiktoken,
    #[cfg(feature = "bpe")]
    Bpe,
    /// bpe-openai's tokenizer built at run time from the vocabulary (taken from tiktoken-rs)
    /// instead of deserialized from the tables the crate embeds.
    #[cfg(all(feature = "tiktoken", feature = "bpe"))]
    BpeRuntime,
}

impl Imp {
    const ALL: &'static [Imp] = &[
        #[cfg(feature = "tiktoken")]
        Imp::Tiktoken,
        #[cfg(feature = "bpe")]
        Imp::Bpe,
        #[cfg(all(feature = "tiktoken", feature = "bpe"))]
        Imp::BpeRuntime,
    ];

    fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "tiktoken")]
            Imp::Tiktoken => "tiktoken-rs",
            #[cfg(feature = "bpe")]
            Imp::Bpe => "bpe-openai",
            #[cfg(all(feature = "tiktoken", feature = "bpe"))]
            Imp::BpeRuntime => "bpe-openai-runtime",
        }
    }

    fn parse(s: &str) -> Option<Imp> {
        Imp::ALL.iter().copied().find(|i| i.name() == s)
    }
}

enum Tok {
    #[cfg(feature = "tiktoken")]
    Tiktoken(tiktoken_rs::CoreBPE),
    #[cfg(feature = "bpe")]
    Bpe(&'static bpe_openai::Tokenizer),
}

impl Tok {
    /// Builds the encoding; returns it and the milliseconds it took.
    fn build(enc: Enc, imp: Imp) -> Result<(Tok, f64), String> {
        let start = Instant::now();
        let tok = match imp {
            #[cfg(feature = "tiktoken")]
            Imp::Tiktoken => Tok::Tiktoken(
                match enc {
                    Enc::O200k => tiktoken_rs::o200k_base(),
                    Enc::Cl100k => tiktoken_rs::cl100k_base(),
                }
                .map_err(|e| e.to_string())?,
            ),
            #[cfg(feature = "bpe")]
            Imp::Bpe => Tok::Bpe(match enc {
                // The first call builds the encoding (a `LazyLock`).
                Enc::O200k => bpe_openai::o200k_base(),
                Enc::Cl100k => bpe_openai::cl100k_base(),
            }),
            #[cfg(all(feature = "tiktoken", feature = "bpe"))]
            Imp::BpeRuntime => {
                let tik = match enc {
                    Enc::O200k => tiktoken_rs::o200k_base(),
                    Enc::Cl100k => tiktoken_rs::cl100k_base(),
                }
                .map_err(|e| e.to_string())?;
                // The ordinary tokens by rank (they are numbered without gaps).
                let mut tokens = Vec::new();
                while let Ok(t) = tik.decode_bytes(&[tokens.len() as u32]) {
                    tokens.push(t);
                }
                drop(tik);
                // Only what bpe-openai does at run time is timed.
                let start = Instant::now();
                let bpe = bpe_openai::byte_pair_encoding::BytePairEncoding::from_dictionary(
                    tokens,
                    Some(17_846_336_922_010_275_747),
                );
                let tok = bpe_openai::Tokenizer::new_lookahead(bpe, &bpe_patterns(enc), false)
                    .map_err(|e| e.to_string())?;
                let ms = start.elapsed().as_secs_f64() * 1e3;
                return Ok((Tok::Bpe(Box::leak(Box::new(tok))), ms));
            }
        };
        Ok((tok, start.elapsed().as_secs_f64() * 1e3))
    }

    /// Tokens in `text`, as ordinary text (no special tokens).
    fn count(&self, text: &str) -> usize {
        match self {
            // What the core does: the length of the encoding.
            #[cfg(feature = "tiktoken")]
            Tok::Tiktoken(bpe) => bpe.encode_ordinary(text).len(),
            #[cfg(feature = "bpe")]
            Tok::Bpe(tok) => tok.count(text),
        }
    }

    #[cfg(all(feature = "tiktoken", feature = "bpe"))]
    fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Tok::Tiktoken(bpe) => bpe.encode_ordinary(text),
            Tok::Bpe(tok) => tok.encode(text),
        }
    }

    fn count_as(&self, text: &str, mode: Mode) -> usize {
        match mode {
            Mode::Seg => segments(text).map(|s| self.count(s)).sum(),
            Mode::Whole => self.count(text),
        }
    }
}

/// bpe-openai's pre-tokenizer patterns (its `lib.rs`): tiktoken's, with the look-ahead
/// `\s+(?!\S)` rewritten as a pattern whose last character is dropped.
#[cfg(all(feature = "tiktoken", feature = "bpe"))]
fn bpe_patterns(enc: Enc) -> [(&'static str, bool); 3] {
    let pat1 = match enc {
        Enc::Cl100k => "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+$",
        Enc::O200k => concat!(
            "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            "|\\p{N}{1,3}",
            "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*",
            "|\\s*[\\r\\n]+",
            "|\\s+$",
        ),
    };
    [(pat1, false), ("\\s+\\s", true), ("\\s+", false)]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Seg,
    Whole,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Seg => "seg2048",
            Mode::Whole => "whole",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        [Mode::Seg, Mode::Whole].into_iter().find(|m| m.name() == s)
    }
}

// ---------------------------------------------------------------------------------------
// Inputs.

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

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

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
    "cardinality",
    "estimate",
    "usage",
    "prompt",
    "completion",
    "encoding",
    "tokenizer",
    "Unicode",
    "naïve",
    "café",
    "résumé",
    "straightforward",
    "implementation",
    "approximately",
    "unfortunately",
    "nevertheless",
    "authentication",
    "deployment",
    "infrastructure",
    "observability",
    "serialization",
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
    "don't",
    "they'll",
    "we've",
    "I'M",
    "it's",
    "you'RE",
    "she'd",
    "McDonald",
    "iPhone",
    "HTTPServer",
    "camelCase",
    "snake_case",
    "e.g.",
    "i.e.",
    "etc.",
    "Straße",
    "Ærøskøbing",
    "façade",
    "coöperate",
    "Zürich",
    "señor",
];

const FOREIGN: &[&str] = &[
    "日本語のテキストはどのように数えられますか",
    "东京是日本的首都，人口超过一千万。",
    "대한민국의 수도는 서울입니다",
    "Привет, как дела? Всё хорошо.",
    "Η γρήγορη καφέ αλεπού",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Tiếng Việt có dấu",
    "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ",
];

const EMOJI: &[&str] = &[
    "🎉",
    "🚀",
    "👩‍💻",
    "👍🏽",
    "🇫🇷",
    "❤️",
    "🤖",
    "✅",
    "😂😂😂",
    "🧑‍🤝‍🧑",
    "1️⃣",
];

const CODE: &[&str] = &[
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{:?}\", x);\n}\n",
    "def parse(line):\n\tkey, _, value = line.partition('=')\n\treturn key.strip(), value.strip()\n",
    "{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stream\": true}\n",
    "SELECT id, COUNT(*) AS n FROM requests WHERE latency_ms > 250 GROUP BY id ORDER BY n DESC;\n",
    "if (a && !b || c >= 0x1F) { return arr[i++] ?? null; } // TODO\r\n",
    "<div class=\"row\"><span id='x'>&nbsp;&amp;</span></div>\n",
    "    /* indented */\n        nested();\n\n\n",
    "$ curl -sS https://example.com/v1/chat?x=1&y=2 | jq '.choices[0]'\n",
];

/// Several MB of mixed text: prose, contractions, numbers, punctuation, code, other
/// scripts, emoji, and whitespace of every kind.
fn corpus(bytes: usize) -> String {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut text = String::with_capacity(bytes + 4096);
    while text.len() < bytes {
        match rng.below(10) {
            0 => text.push_str(rng.pick(CODE)),
            1 => {
                for _ in 0..1 + rng.below(3) {
                    text.push_str(rng.pick(FOREIGN));
                    text.push_str(rng.pick(&[" ", "", "、", "。", "\n"]));
                }
            }
            _ => {
                for s in 0..2 + rng.below(5) {
                    for w in 0..4 + rng.below(16) {
                        if w > 0 || s > 0 {
                            text.push(' ');
                        }
                        match rng.below(30) {
                            0 => text.push_str(&rng.below(1_000_000_000).to_string()),
                            1 => {
                                text.push_str(&format!("{}.{:02}", rng.below(1000), rng.below(100)))
                            }
                            2 => text.push_str(rng.pick(EMOJI)),
                            3 => text.push_str(&format!("`{}()`", rng.pick(WORDS))),
                            4 => text.push_str(&format!("({},", rng.pick(WORDS))),
                            5 => text.push_str(&format!("\"{}\"", rng.pick(WORDS))),
                            6 => text.push_str(
                                rng.pick(&["--", "...", "—", "->", "!!", "?!", "%", "#"]),
                            ),
                            7 => text.push_str(&rng.pick(WORDS).to_uppercase()),
                            _ => text.push_str(rng.pick(WORDS)),
                        }
                    }
                    text.push_str(rng.pick(&[".", "!", "?", ":", ";", "."]));
                }
            }
        }
        text.push_str(rng.pick(&["\n", "\n\n", " \n", "\r\n", "\n\t", "\n   ", "  ", " "]));
    }
    text
}

/// Chunks of 1 to 4 KB, cut at any character boundary (not only between words).
fn chunks(text: &str) -> Vec<&str> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = (1024 + rng.below(3073)).min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out
}

/// Long repeats: (name, repeated unit or `None` for pseudo-random base64, default units).
const REPEATS: &[(&str, Option<&str>, usize)] = &[
    ("a_x1M", Some("a"), 1_000_000),
    ("space_x1M", Some(" "), 1_000_000),
    ("digit_x1M", Some("7"), 1_000_000),
    ("newline_x1M", Some("\n"), 1_000_000),
    ("a_space_x500k", Some("a "), 500_000),
    ("base64_1M", None, 1_000_000),
    ("emoji_x1M", Some("🎉"), 1_000_000),
    ("space_nl_tab_x333k", Some(" \n\t"), 333_334),
    ("dot_x1M", Some("."), 1_000_000),
    ("cjk_x333k", Some("日"), 333_334),
    ("spaces_then_word", Some(" "), 1_000_000),
];

/// An input by name, about `bytes` long when given (whole units).
fn input(name: &str, bytes: Option<usize>, corpus_bytes: usize) -> Option<String> {
    if name == "corpus" {
        return Some(corpus(bytes.unwrap_or(corpus_bytes)));
    }
    let &(_, unit, units) = REPEATS.iter().find(|r| r.0 == name)?;
    let unit_len = unit.map_or(1, str::len);
    let units = bytes.map_or(units, |b| b.div_ceil(unit_len).max(1));
    let mut text = match unit {
        Some(u) => u.repeat(units),
        None => {
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut rng = Rng(0x0123_4567_89ab_cdef);
            (0..units).map(|_| B64[rng.below(64)] as char).collect()
        }
    };
    if name == "spaces_then_word" {
        // A long run of spaces before a word: `\s+(?!\S)` has to give back one space.
        text.push_str("word");
    }
    Some(text)
}

// ---------------------------------------------------------------------------------------
// Measurement and output.

/// Memory after building: Wasm linear memory, or the process's peak resident set.
fn memory() -> String {
    #[cfg(target_arch = "wasm32")]
    {
        let pages = core::arch::wasm32::memory_size(0);
        format!(
            "\"wasm_pages\":{pages},\"mem_mib\":{:.1}",
            pages as f64 * 65536.0 / 1048576.0
        )
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let kb = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        format!("\"peak_rss_mib\":{:.1}", kb as f64 / 1024.0)
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A text's beginning, for a line about it.
#[cfg_attr(not(all(feature = "tiktoken", feature = "bpe")), allow(dead_code))]
fn excerpt(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

struct Rates {
    tokens: usize,
    first: f64,
    median: f64,
    median_ms: f64,
}

/// Counts `text` `passes` times; the first pass includes a Wasm engine's tiering up, the
/// median is the steady state.
fn passes(tok: &Tok, text: &str, mode: Mode, passes: usize) -> Rates {
    let mut times = Vec::with_capacity(passes);
    let mut tokens = 0;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        tokens = tok.count_as(text, mode);
        times.push(start.elapsed().as_secs_f64());
    }
    let first = times[0];
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Rates {
        tokens,
        first: tokens as f64 / first,
        median: tokens as f64 / median,
        median_ms: median * 1e3,
    }
}

fn line(enc: Enc, imp: &str, input: &str, mode: &str, bytes: usize, rest: &str) {
    println!(
        "{{\"encoding\":\"{}\",\"impl\":\"{imp}\",\"input\":\"{input}\",\"mode\":\"{mode}\",\"bytes\":{bytes},{rest}}}",
        enc.name()
    );
}

fn rates_json(r: &Rates) -> String {
    format!(
        "\"tokens\":{},\"tokens_per_s\":{:.0},\"first_tokens_per_s\":{:.0},\"median_ms\":{:.2}",
        r.tokens, r.median, r.first, r.median_ms
    )
}

fn eq_json(name: &str, got: usize, want: Option<usize>) -> String {
    match want {
        Some(w) => format!(",\"{name}\":{}", got == w),
        None => format!(",\"{name}\":null"),
    }
}

// ---------------------------------------------------------------------------------------
// Child processes, for what may panic (natively only).

struct Opts {
    passes: usize,
    corpus_bytes: usize,
    timeout_s: f64,
    child: Vec<String>,
    max_bytes: usize,
}

#[cfg_attr(target_family = "wasm", allow(dead_code))]
enum ChildResult {
    /// The child's JSON line.
    Ok(String),
    /// It exited abnormally: the end of what it wrote to stderr.
    Failed(String),
    Timeout,
}

#[cfg(not(target_family = "wasm"))]
/// Runs `one ARGS` in a child process, within the time limit.
fn run_child(opts: &Opts, args: &[String]) -> (ChildResult, f64) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let (program, pre): (String, &[String]) = match opts.child.split_first() {
        Some((p, rest)) => (p.clone(), rest),
        None => (
            std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "tokcompare".into()),
            &[],
        ),
    };
    let start = Instant::now();
    let mut child = match Command::new(&program)
        .args(pre)
        .arg("one")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (ChildResult::Failed(format!("spawning {program}: {e}")), 0.0),
    };
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed().as_secs_f64() > opts.timeout_s => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => return (ChildResult::Failed(format!("waiting: {e}")), 0.0),
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let result = match status {
        None => ChildResult::Timeout,
        Some(s) => match out.lines().rev().find(|l| l.starts_with('{')) {
            Some(l) if s.success() => ChildResult::Ok(l.to_string()),
            _ => {
                // The panic message, else the last lines.
                let msg = err
                    .lines()
                    .skip_while(|l| !l.contains("panicked"))
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                let msg = if msg.is_empty() {
                    err.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
                } else {
                    msg
                };
                ChildResult::Failed(format!("{s}: {msg}"))
            }
        },
    };
    (result, elapsed)
}

#[cfg(target_family = "wasm")]
fn run_child(_: &Opts, _: &[String]) -> (ChildResult, f64) {
    (
        ChildResult::Failed("skipped: a Wasm program cannot start processes".into()),
        0.0,
    )
}

/// A number from a child's JSON line.
fn field(json: &str, key: &str) -> Option<String> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

fn status_json(r: &ChildResult, timeout_s: f64) -> String {
    match r {
        ChildResult::Ok(_) => "\"status\":\"ok\"".into(),
        ChildResult::Failed(m) if m.starts_with("skipped") => {
            format!("\"status\":\"skipped\",\"error\":{}", json_str(m))
        }
        ChildResult::Failed(m) => format!("\"status\":\"panic\",\"error\":{}", json_str(m)),
        ChildResult::Timeout => format!("\"status\":\"timeout\",\"timeout_s\":{timeout_s}"),
    }
}

// ---------------------------------------------------------------------------------------
// The commands.

/// One measurement: build one encoding, count one input `passes` times.
fn one(args: &[String], opts: &Opts) -> Result<(), String> {
    let usage = "one ENC IMPL INPUT MODE [BYTES] [PASSES]";
    let enc = args.first().and_then(|a| Enc::parse(a)).ok_or(usage)?;
    let imp = args.get(1).and_then(|a| Imp::parse(a)).ok_or(usage)?;
    let name = args.get(2).ok_or(usage)?;
    let mode = args.get(3).and_then(|a| Mode::parse(a)).ok_or(usage)?;
    let bytes = args.get(4).and_then(|a| a.parse().ok());
    let n = args
        .get(5)
        .and_then(|a| a.parse().ok())
        .unwrap_or(opts.passes);
    let text = input(name, bytes, opts.corpus_bytes).ok_or("unknown input")?;
    let (tok, build_ms) = Tok::build(enc, imp)?;
    // The first count, then memory: what the encoding holds once it has been used.
    let start = Instant::now();
    let tokens = tok.count_as(&text, mode);
    let first_ms = start.elapsed().as_secs_f64() * 1e3;
    let mem = memory();
    let r = passes(&tok, &text, mode, n.saturating_sub(1).max(1));
    assert_eq!(r.tokens, tokens);
    line(
        enc,
        imp.name(),
        name,
        mode.name(),
        text.len(),
        &format!(
            "\"build_ms\":{build_ms:.1},\"first_count_ms\":{first_ms:.2},{},{mem}",
            rates_json(&r)
        ),
    );
    Ok(())
}

/// tiktoken-rs on whole long repeats: the shortest length that panics or times out.
#[cfg(feature = "tiktoken")]
fn crash(opts: &Opts) {
    for enc in Enc::ALL {
        for &(name, unit, units) in REPEATS {
            let unit_len = unit.map_or(1, str::len);
            let full = (units * unit_len).min(opts.max_bytes);
            let probe = |bytes: usize| {
                let args: Vec<String> = [enc.name(), "tiktoken-rs", name, "whole"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([bytes.to_string(), "1".into()])
                    .collect();
                run_child(opts, &args)
            };
            let report = |bytes: usize, r: &ChildResult, secs: f64| {
                let extra = match r {
                    ChildResult::Ok(l) => format!(
                        ",\"count_ms\":{},\"tokens\":{}",
                        field(l, "first_count_ms").unwrap_or_default(),
                        field(l, "tokens").unwrap_or_default()
                    ),
                    _ => String::new(),
                };
                line(
                    enc,
                    "tiktoken-rs",
                    name,
                    "whole",
                    bytes,
                    &format!(
                        "\"probe\":true,\"child_s\":{secs:.2},{}{extra}",
                        status_json(r, opts.timeout_s)
                    ),
                );
            };
            // Doubling lengths up to the full input.
            let mut ok = 0;
            let mut failed = None;
            let mut bytes = 1024usize.min(full);
            loop {
                let (r, secs) = probe(bytes);
                report(bytes, &r, secs);
                if matches!(r, ChildResult::Ok(_)) {
                    ok = bytes;
                } else {
                    failed = Some((bytes, matches!(r, ChildResult::Timeout)));
                    break;
                }
                if bytes >= full {
                    break;
                }
                bytes = (bytes * 2).min(full);
            }
            // The exact shortest failing length (in whole units), for panics.
            if let Some((mut hi, false)) = failed {
                let mut lo = ok;
                while hi - lo > unit_len {
                    let mid = (lo + (hi - lo) / 2) / unit_len * unit_len;
                    let mid = mid.max(lo + unit_len);
                    let (r, _) = probe(mid);
                    if matches!(r, ChildResult::Ok(_)) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                let (r, secs) = probe(hi);
                line(
                    enc,
                    "tiktoken-rs",
                    name,
                    "whole",
                    hi,
                    &format!(
                        "\"shortest_failing\":true,\"longest_ok_bytes\":{lo},\"units\":{},\"child_s\":{secs:.2},{}",
                        hi / unit_len,
                        status_json(&r, opts.timeout_s)
                    ),
                );
            }
        }
    }
}

/// `one` for every encoding and implementation, each in a process of its own (build time
/// and memory of one encoding alone).
fn isolated(opts: &Opts) {
    for enc in Enc::ALL {
        for &imp in Imp::ALL {
            let args: Vec<String> = [enc.name(), imp.name(), "corpus", "seg2048"]
                .iter()
                .map(|s| s.to_string())
                .chain(["262144".into(), opts.passes.to_string()])
                .collect();
            let (r, secs) = run_child(opts, &args);
            match r {
                ChildResult::Ok(l) => println!("{l}"),
                r => line(
                    enc,
                    imp.name(),
                    "corpus",
                    "seg2048",
                    262_144,
                    &format!("\"child_s\":{secs:.2},{}", status_json(&r, opts.timeout_s)),
                ),
            }
        }
    }
}

/// Ordinary text and long repeats, both implementations, both encodings.
fn all(opts: &Opts) -> Result<(), String> {
    let text = corpus(opts.corpus_bytes);
    let parts = chunks(&text);
    for enc in Enc::ALL {
        let mut toks = Vec::new();
        for &imp in Imp::ALL {
            let (tok, build_ms) = Tok::build(enc, imp)?;
            tok.count("warm up");
            line(
                enc,
                imp.name(),
                "-",
                "build",
                0,
                &format!("\"build_ms\":{build_ms:.1},{}", memory()),
            );
            toks.push((imp, tok));
        }
        // Ordinary text: the oracle is tiktoken-rs in segments, as the core counts.
        #[allow(unused_mut)]
        let mut oracle: [Option<usize>; 2] = [None, None];
        for (imp, tok) in &toks {
            for mode in [Mode::Seg, Mode::Whole] {
                let r = passes(tok, &text, mode, opts.passes);
                #[cfg(feature = "tiktoken")]
                if *imp == Imp::Tiktoken {
                    oracle[mode as usize] = Some(r.tokens);
                }
                let eq = eq_json("equal_tiktoken_seg2048", r.tokens, oracle[0])
                    + &eq_json("equal_tiktoken_whole", r.tokens, oracle[1]);
                line(
                    enc,
                    imp.name(),
                    "corpus",
                    mode.name(),
                    text.len(),
                    &format!(
                        "{}{eq},\"passes\":{},{}",
                        rates_json(&r),
                        opts.passes,
                        memory()
                    ),
                );
            }
        }
        // Chunk by chunk: counts and tokens of each whole chunk.
        #[cfg(all(feature = "tiktoken", feature = "bpe"))]
        {
            let (mut counts_differ, mut tokens_differ, mut seg_differ) = (0, 0, 0);
            let mut example = String::new();
            let (tik, bpe) = (&toks[0].1, &toks[1].1);
            for part in &parts {
                let t = tik.encode(part);
                let b = bpe.encode(part);
                if t.len() != b.len() {
                    counts_differ += 1;
                }
                if t != b {
                    tokens_differ += 1;
                    if example.is_empty() {
                        example = excerpt(part, 120);
                    }
                }
                if tik.count_as(part, Mode::Seg) != bpe.count_as(part, Mode::Seg) {
                    seg_differ += 1;
                }
            }
            line(
                enc,
                "bpe-openai",
                "corpus_chunks",
                "whole",
                text.len(),
                &format!(
                    "\"chunks\":{},\"min_chunk\":1024,\"max_chunk\":4096,\"chunks_count_differ\":{counts_differ},\"chunks_tokens_differ\":{tokens_differ},\"chunks_seg2048_count_differ\":{seg_differ},\"first_differing\":{}",
                    parts.len(),
                    json_str(&example)
                ),
            );
        }
        // Long repeats.
        let n = opts.passes.min(3);
        for &(name, _, _) in REPEATS {
            let text = input(name, None, 0).ok_or("input")?;
            #[allow(unused_mut)]
            let mut want: [Option<usize>; 2] = [None, None];
            for (imp, tok) in &toks {
                // The same algorithm and vocabulary as `bpe-openai`: ordinary text will do.
                #[cfg(all(feature = "tiktoken", feature = "bpe"))]
                if *imp == Imp::BpeRuntime {
                    continue;
                }
                for mode in [Mode::Seg, Mode::Whole] {
                    #[cfg(feature = "tiktoken")]
                    if *imp == Imp::Tiktoken && mode == Mode::Whole {
                        // May panic or take very long: in a child with a time limit.
                        let args: Vec<String> = [enc.name(), "tiktoken-rs", name, "whole"]
                            .iter()
                            .map(|s| s.to_string())
                            .chain([text.len().to_string(), n.to_string()])
                            .collect();
                        let (r, secs) = run_child(opts, &args);
                        let rest = match &r {
                            ChildResult::Ok(l) => {
                                let tokens = field(l, "tokens").and_then(|t| t.parse().ok());
                                want[1] = tokens;
                                format!(
                                    "\"tokens\":{},\"tokens_per_s\":{},\"median_ms\":{}{}",
                                    tokens.unwrap_or(0),
                                    field(l, "tokens_per_s").unwrap_or_default(),
                                    field(l, "median_ms").unwrap_or_default(),
                                    eq_json("equal_tiktoken_seg2048", tokens.unwrap_or(0), want[0])
                                )
                            }
                            _ => "\"tokens\":null".into(),
                        };
                        line(
                            enc,
                            imp.name(),
                            name,
                            mode.name(),
                            text.len(),
                            &format!(
                                "{rest},\"child\":true,\"child_s\":{secs:.2},{}",
                                status_json(&r, opts.timeout_s)
                            ),
                        );
                        continue;
                    }
                    let r = passes(tok, &text, mode, n);
                    #[cfg(feature = "tiktoken")]
                    if *imp == Imp::Tiktoken {
                        want[0] = Some(r.tokens);
                    }
                    let eq = eq_json("equal_tiktoken_seg2048", r.tokens, want[0])
                        + &eq_json("equal_tiktoken_whole", r.tokens, want[1]);
                    line(
                        enc,
                        imp.name(),
                        name,
                        mode.name(),
                        text.len(),
                        &format!("{}{eq},\"passes\":{n},\"status\":\"ok\"", rates_json(&r)),
                    );
                }
            }
        }
    }
    let _ = &parts;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Opts {
        passes: 5,
        corpus_bytes: 4 << 20,
        timeout_s: 60.0,
        child: Vec::new(),
        max_bytes: usize::MAX,
    };
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let num = |it: &mut std::vec::IntoIter<String>| -> f64 {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("tokcompare: {a} needs a number");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--passes" => opts.passes = num(&mut it) as usize,
            "--corpus-bytes" => opts.corpus_bytes = num(&mut it) as usize,
            "--timeout" => opts.timeout_s = num(&mut it),
            "--max-bytes" => opts.max_bytes = num(&mut it) as usize,
            "--child" => {
                opts.child = it
                    .next()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            }
            _ => rest.push(a),
        }
    }
    let result = match rest.first().map(String::as_str) {
        None | Some("all") => all(&opts),
        Some("one") => one(&rest[1..], &opts),
        #[cfg(feature = "tiktoken")]
        Some("crash") => {
            crash(&opts);
            Ok(())
        }
        Some("isolated") => {
            isolated(&opts);
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other}")),
    };
    if let Err(e) = result {
        eprintln!("tokcompare: {e}");
        std::process::exit(1);
    }
}
