//! Token counting with the models' own encodings (`tiktoken-rs`).
//!
//! An encoding's tables are built the first time a count needs them, once per VM, from the
//! packed vocabularies of [`crate::tokens::vocab`]: a filter that only sees reported usage never
//! pays for them.
//!
//! Text is counted in segments of at most [`SEGMENT_BYTES`], cut before a space that starts
//! a word where possible. BPE's cost grows with the square of a piece's length, so a long
//! run without spaces (base64, minified code) must not reach it whole; cutting before
//! `" word"` is where the encodings' own pre-tokenizer cuts anyway, so counts stay exact
//! for ordinary text.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

/// Longest text handed to the tokenizer at once.
pub const SEGMENT_BYTES: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

impl Encoding {
    pub fn parse(name: &str) -> Option<Encoding> {
        match name {
            "o200k_base" => Some(Encoding::O200kBase),
            "cl100k_base" => Some(Encoding::Cl100kBase),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    /// The encoding's tokenizer, built on first use (once per VM).
    fn bpe(self) -> Option<&'static CoreBPE> {
        static O200K_BASE: OnceLock<Option<CoreBPE>> = OnceLock::new();
        static CL100K_BASE: OnceLock<Option<CoreBPE>> = OnceLock::new();
        use super::vocab;
        match self {
            Encoding::O200kBase => O200K_BASE.get_or_init(vocab::o200k_base).as_ref(),
            Encoding::Cl100kBase => CL100K_BASE.get_or_init(vocab::cl100k_base).as_ref(),
        }
    }

    /// Tokens in `text`, counted as ordinary text.
    pub fn count(self, text: &str) -> u64 {
        let Some(bpe) = self.bpe() else {
            // Only if the embedded vocabulary were damaged: about four bytes a token.
            return text.len().div_ceil(4) as u64;
        };
        segments(text)
            .map(|s| bpe.encode_ordinary(s).len() as u64)
            .sum()
    }
}

/// Cuts text into pieces of at most [`SEGMENT_BYTES`] (see the module docs): what the
/// tokenizer is handed, one at a time.
pub fn segments(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = safe_cut(rest, SEGMENT_BYTES);
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

/// A cut point at most `max` bytes into `text` (all of it when shorter): before the last
/// space that starts a word, else at the last character boundary.
pub fn safe_cut(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let bytes = text.as_bytes();
    let mut i = max;
    while i > 0 {
        if bytes.get(i) == Some(&b' ')
            && bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphanumeric())
            && bytes.get(i - 1).is_some_and(|b| !b.is_ascii_whitespace())
        {
            return i;
        }
        i -= 1;
    }
    let mut i = max;
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    if i == 0 {
        // Only possible when `max` is smaller than one character.
        text.char_indices().nth(1).map_or(text.len(), |(j, _)| j)
    } else {
        i
    }
}

/// Which encoding counts a model's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodingMap {
    /// Configured `(model prefix, encoding)` pairs; they win over the built-in table.
    pub rules: Vec<(String, Encoding)>,
    /// For models no rule or built-in names.
    pub default: Encoding,
}

/// OpenAI's published encodings by model family.
const BUILTIN: &[(&str, Encoding)] = &[
    ("gpt-4o", Encoding::O200kBase),
    ("chatgpt-4o", Encoding::O200kBase),
    ("gpt-4.1", Encoding::O200kBase),
    ("gpt-4.5", Encoding::O200kBase),
    ("gpt-5", Encoding::O200kBase),
    ("gpt-oss", Encoding::O200kBase),
    ("o1", Encoding::O200kBase),
    ("o3", Encoding::O200kBase),
    ("o4", Encoding::O200kBase),
    ("gpt-4", Encoding::Cl100kBase),
    ("gpt-3.5", Encoding::Cl100kBase),
    ("gpt-35", Encoding::Cl100kBase),
    ("text-embedding-3", Encoding::Cl100kBase),
    ("text-embedding-ada-002", Encoding::Cl100kBase),
];

impl Default for EncodingMap {
    fn default() -> Self {
        EncodingMap {
            rules: Vec::new(),
            default: Encoding::O200kBase,
        }
    }
}

impl EncodingMap {
    /// The encoding for `model`: the longest matching configured prefix, else the longest
    /// built-in one (so `gpt-4o` is not taken for `gpt-4`), else the default.
    pub fn for_model(&self, model: Option<&str>) -> Encoding {
        let Some(model) = model else {
            return self.default;
        };
        // Compared in place, ignoring ASCII case: this runs for every streamed chunk.
        let has_prefix = |p: &str| {
            model
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
        };
        let longest = |table: &mut dyn Iterator<Item = (&str, Encoding)>| {
            table
                .filter(|(p, _)| has_prefix(p))
                .max_by_key(|(p, _)| p.len())
                .map(|(_, e)| e)
        };
        longest(&mut self.rules.iter().map(|(p, e)| (p.as_str(), *e)))
            .or_else(|| longest(&mut BUILTIN.iter().copied()))
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_map_to_their_encodings() {
        let map = EncodingMap::default();
        for m in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "gpt-4.1-nano",
            "gpt-5",
            "o3-mini",
            "o1",
            "GPT-4O",
        ] {
            assert_eq!(map.for_model(Some(m)), Encoding::O200kBase, "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-4-0613",
            "gpt-4-turbo",
            "gpt-3.5-turbo",
            "gpt-35-turbo",
            "text-embedding-3-small",
            "text-embedding-ada-002",
        ] {
            assert_eq!(map.for_model(Some(m)), Encoding::Cl100kBase, "{m}");
        }
        assert_eq!(map.for_model(Some("llama-3-70b")), Encoding::O200kBase);
        assert_eq!(map.for_model(None), Encoding::O200kBase);
        let custom = EncodingMap {
            rules: vec![
                ("llama".into(), Encoding::Cl100kBase),
                ("gpt-4o-legacy".into(), Encoding::Cl100kBase),
            ],
            default: Encoding::Cl100kBase,
        };
        assert_eq!(custom.for_model(Some("llama-3-70b")), Encoding::Cl100kBase);
        assert_eq!(
            custom.for_model(Some("gpt-4o-legacy-1")),
            Encoding::Cl100kBase
        );
        assert_eq!(custom.for_model(Some("gpt-4o")), Encoding::O200kBase);
        assert_eq!(custom.for_model(Some("mistral")), Encoding::Cl100kBase);
    }

    #[test]
    fn known_counts() {
        // Counts from OpenAI's tokenizer for these strings.
        assert_eq!(Encoding::Cl100kBase.count("hello world"), 2);
        assert_eq!(Encoding::O200kBase.count("hello world"), 2);
        assert_eq!(Encoding::Cl100kBase.count(""), 0);
        assert_eq!(Encoding::Cl100kBase.count("tiktoken is great!"), 6);
    }

    #[test]
    fn pinned_counts_across_scripts_code_emoji_and_tool_calls() {
        // Pinned from the encodings' own tables; a change here means estimates changed.
        let cases: [(&str, u64, u64); 6] = [
            ("The quick brown fox jumps over the lazy dog.", 10, 10),
            ("日本語のテキストはどのように数えられますか？", 18, 21),
            ("Привет, как дела? Всё хорошо.", 9, 17),
            ("fn main() { println!(\"{}\", 1 + 2); }", 13, 13),
            ("🎉🚀👩‍💻", 9, 13),
            (r#"get_weather{"city": "Paris", "unit": "celsius"}"#, 15, 15),
        ];
        for (text, o200k, cl100k) in cases {
            assert_eq!(Encoding::O200kBase.count(text), o200k, "{text}");
            assert_eq!(Encoding::Cl100kBase.count(text), cl100k, "{text}");
        }
    }

    #[test]
    fn segmenting_does_not_change_counts_of_ordinary_text() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(400)
            + "Ünïcödé text, 日本語のテキスト, emoji 🎉🎉 and code: fn main() { println!(\"hi\"); }";
        for enc in [Encoding::Cl100kBase, Encoding::O200kBase] {
            let whole = enc.bpe().expect("vocabulary").encode_ordinary(&text).len() as u64;
            assert_eq!(enc.count(&text), whole, "{enc:?}");
        }
    }

    #[test]
    fn long_runs_without_spaces_stay_cheap_and_close() {
        let blob = "QUJDRA".repeat(50_000); // 300 KB of base64-like text
        let n = Encoding::O200kBase.count(&blob);
        assert!(n > 10_000, "{n}");
    }

    #[test]
    fn cuts_fall_on_char_boundaries() {
        let text = "日本語".repeat(2000);
        let mut total = 0;
        for s in segments(&text) {
            assert!(s.len() <= SEGMENT_BYTES);
            total += s.len();
        }
        assert_eq!(total, text.len());
        assert_eq!(safe_cut("abc def", 5), 3);
        assert_eq!(safe_cut("short", 100), 5);
    }
}
