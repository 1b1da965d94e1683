//! The encodings' vocabularies, as `build.rs` packs them, unpacked into `tiktoken-rs`
//! tokenizers on first use.
//!
//! Why packed: a Wasm module's data is copied into every VM instance's memory at start, so
//! `tiktoken-rs`'s own base64 tables (5.3 MB) would cost each Envoy worker that much before
//! any estimate; packed they cost 1.5 MB. The patterns and special tokens are those
//! `tiktoken-rs` uses; a test compares every count with its own tokenizers.

use std::io::Read;

use flate2::read::DeflateDecoder;
use rustc_hash::FxHashMap;
use tiktoken_rs::{CoreBPE, Rank};

static O200K_BASE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.vocab"));
static CL100K_BASE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.vocab"));

/// `tiktoken-rs`'s pattern for cl100k_base (it does not export it).
const CL100K_BASE_PAT_STR: &str = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s";

/// The o200k_base tokenizer; `None` only if the embedded data were damaged.
pub(crate) fn o200k_base() -> Option<CoreBPE> {
    use tiktoken_rs::{ENDOFPROMPT, ENDOFTEXT};
    unpack(
        O200K_BASE,
        &[(ENDOFTEXT, 199_999), (ENDOFPROMPT, 200_018)],
        tiktoken_rs::O200K_BASE_PAT_STR,
    )
}

/// The cl100k_base tokenizer; `None` only if the embedded data were damaged.
pub(crate) fn cl100k_base() -> Option<CoreBPE> {
    use tiktoken_rs::{ENDOFPROMPT, ENDOFTEXT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX};
    unpack(
        CL100K_BASE,
        &[
            (ENDOFTEXT, 100_257),
            (FIM_PREFIX, 100_258),
            (FIM_MIDDLE, 100_259),
            (FIM_SUFFIX, 100_260),
            (ENDOFPROMPT, 100_276),
        ],
        CL100K_BASE_PAT_STR,
    )
}

fn unpack(packed: &[u8], specials: &[(&str, Rank)], pattern: &str) -> Option<CoreBPE> {
    let mut raw = Vec::new();
    DeflateDecoder::new(packed).read_to_end(&mut raw).ok()?;
    let mut encoder = FxHashMap::default();
    let mut rest = raw.as_slice();
    let mut rank: Rank = 0;
    while let Some((&len, tail)) = rest.split_first() {
        let token = tail.get(..usize::from(len))?;
        encoder.insert(token.to_vec(), rank);
        rest = tail.get(usize::from(len)..)?;
        rank += 1;
    }
    let specials = specials.iter().map(|&(s, r)| (s.to_string(), r)).collect();
    CoreBPE::new(encoder, specials, pattern).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_vocabularies_are_tiktoken_rs_own() {
        for (ours, theirs) in [
            (o200k_base(), tiktoken_rs::o200k_base_singleton()),
            (cl100k_base(), tiktoken_rs::cl100k_base_singleton()),
        ] {
            let ours = ours.expect("the packed vocabulary unpacks");
            // Every rank, ordinary and special, decodes to the same bytes...
            let mut rank = 0;
            while let Ok(want) = theirs.decode_bytes(&[rank]) {
                assert_eq!(ours.decode_bytes(&[rank]).ok(), Some(want), "rank {rank}");
                rank += 1;
            }
            assert!(ours.decode_bytes(&[rank]).is_err());
            for special in theirs.special_tokens() {
                assert_eq!(
                    ours.encode_with_special_tokens(special),
                    theirs.encode_with_special_tokens(special)
                );
            }
            // ...and text splits into the same tokens.
            for text in [
                "Hello, world! It's 2026; they'll've said 12345678 things.\r\n\n  indented",
                "Ünïcödé, 日本語のテキスト, emoji 🎉 and code: fn main() { println!(\"hi\"); }",
                "   trailing spaces   \n\n\n",
            ] {
                assert_eq!(ours.encode_ordinary(text), theirs.encode_ordinary(text));
            }
        }
    }
}
