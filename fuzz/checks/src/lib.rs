//! The invariants of the fuzz campaign (`make fuzz`), one check per target: each takes the
//! fuzzer's bytes and panics when tokenmeter-core breaks an invariant.
//!
//! The libFuzzer targets in `fuzz/` are one-liners calling these; the replay test
//! (`tests/replay.rs`) runs every file of the committed corpus (`fuzz/corpus/<target>/`) and
//! of the findings (`fuzz/findings/<target>/`) through them, so `cargo test` replays the
//! campaign's regressions without libFuzzer or a nightly toolchain.
//!
//! Where a target is fed in chunks, the chunkings come from the input itself: the whole
//! input, byte by byte, and a few cuts at positions drawn from a hash of the input (see
//! [`split`]), so a mutation that changes one byte also moves the cuts.
//!
//! A reproducer of a broken invariant goes to `fuzz/findings/<target>/` while it is open (so
//! `cargo test` fails until the core is fixed), then to `fuzz/corpus/<target>/` under a name
//! that says what it was.

// A check's job is to panic on a broken invariant.
#![allow(clippy::panic, clippy::expect_used)]

pub mod decode;
pub mod editor;
pub mod inject;
pub mod meter;
pub mod split;
pub mod usage;

pub use decode::decode;
pub use editor::stream_editor;
pub use inject::request_usage;
pub use meter::{stream_meter, stream_meter_estimate, stream_meter_event_limit};
pub use usage::usage;

/// A check: the fuzzer's bytes in, a panic on a broken invariant.
pub type Check = fn(&[u8]);

/// Every target: its name (the corpus folder and the libFuzzer binary) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("request_usage", request_usage),
    ("stream_editor", stream_editor),
    ("stream_meter", stream_meter),
    ("stream_meter_estimate", stream_meter_estimate),
    ("stream_meter_event_limit", stream_meter_event_limit),
    ("usage", usage),
    ("decode", decode),
];

/// Bytes as an escaped string, cut to a readable length, for panic messages.
pub fn shown(bytes: &[u8]) -> String {
    const MAX: usize = 600;
    // ASCII only, so any cut is a character boundary.
    let s = bytes.escape_ascii().to_string();
    match s.get(..MAX) {
        Some(head) if s.len() > MAX => format!("{head}... ({} bytes)", bytes.len()),
        _ => s,
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
