//! Packs the tokenizer vocabularies for embedding (see `src/vocab.rs`).
//!
//! `tiktoken-rs` embeds each vocabulary as base64 text with a rank per line, 5.3 MB for
//! the two encodings tokenmeter uses. In a Wasm module that text is a data segment, and
//! every VM instance (Envoy runs one per worker) copies it into its memory at start, used
//! or not. Packed here as the tokens' bytes in rank order, each after its length, and
//! deflated, the two take 1.5 MB. The vocabularies come from `tiktoken-rs` itself, so they
//! follow its version.

// A build script that cannot pack the vocabularies fails the build, never a request.
#![allow(clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;

use flate2::write::DeflateEncoder;
use flate2::Compression;
use tiktoken_rs::CoreBPE;

fn pack(name: &str, bpe: &CoreBPE, out: &std::path::Path) {
    let mut raw = Vec::new();
    // Ordinary tokens have ranks 0..n; the first rank without one ends the vocabulary
    // (special tokens sit above it and are added by rank when the encoding is built).
    let mut rank = 0;
    while let Ok(bytes) = bpe.decode_bytes(&[rank]) {
        let len = u8::try_from(bytes.len()).expect("tokens are at most 255 bytes");
        raw.push(len);
        raw.extend_from_slice(&bytes);
        rank += 1;
    }
    assert!(rank > 1000, "{name}: only {rank} tokens");
    let mut enc = DeflateEncoder::new(Vec::new(), Compression::best());
    enc.write_all(&raw).expect("deflate into memory");
    let packed = enc.finish().expect("deflate into memory");
    std::fs::write(out.join(format!("{name}.vocab")), packed).expect("write to OUT_DIR");
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    pack(
        "o200k_base",
        &tiktoken_rs::o200k_base().expect("tiktoken-rs builds o200k_base"),
        &out,
    );
    pack(
        "cl100k_base",
        &tiktoken_rs::cl100k_base().expect("tiktoken-rs builds cl100k_base"),
        &out,
    );
}
