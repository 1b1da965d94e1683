//! `stream::editor::StreamEditor`: a stream whose usage was injected, edited back to what
//! the client asked for.
//!
//! - the output is the same for every chunking of the input;
//! - it is never longer than the input, and an input without `usage` (also with JSON's
//!   escapes decoded, as the editor reads keys) passes unchanged;
//! - within a small memory budget, the budget's `used()` never exceeds its `limit()`
//!   between calls and is 0 once the editor is dropped; the output still never grows, and
//!   still passes an input without `usage` unchanged.

use tokenmeter_core::body::budget::{Budget, Lease};
use tokenmeter_core::stream::editor::StreamEditor;

use crate::split::{self, Rng};
use crate::{contains, shown};

fn edit(lease: Lease, chunks: &[&[u8]]) -> Vec<u8> {
    let mut ed = StreamEditor::new(lease);
    let mut out = Vec::new();
    for c in chunks {
        ed.feed(c, &mut out);
    }
    ed.finish(&mut out);
    out
}

/// `bytes` with JSON's escapes decoded, as the editor reads keys: `\uXXXX` of an ASCII
/// character as that character (any other as 0xFF), `\n` and the like as their byte.
fn decoded(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&e) = bytes.get(i) else { break };
        i += 1;
        match e {
            b'u' => {
                let hex = bytes
                    .get(i..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let c = hex.and_then(|h| u32::from_str_radix(h, 16).ok());
                i += 4;
                out.push(
                    c.and_then(|c| u8::try_from(c).ok())
                        .filter(u8::is_ascii)
                        .unwrap_or(0xFF),
                );
            }
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0C),
            other => out.push(other),
        }
    }
    out
}

pub fn stream_editor(data: &[u8]) {
    let whole = edit(Lease::unlimited(), &split::whole(data));
    assert!(
        whole.len() <= data.len(),
        "the edited stream grew\n input: {}\noutput: {}",
        shown(data),
        shown(&whole)
    );
    let mentions_usage = contains(data, b"usage") || contains(&decoded(data), b"usage");
    if !mentions_usage {
        assert!(
            whole == data,
            "a stream without usage was edited\n input: {}\noutput: {}",
            shown(data),
            shown(&whole)
        );
    }
    for (how, chunks) in split::chunkings(data) {
        let got = edit(Lease::unlimited(), &chunks);
        assert!(
            got == whole,
            "fed {how} ({} chunks), the edit differs from the whole input's\n input: {}\n whole: {}\n   got: {}",
            chunks.len(),
            shown(data),
            shown(&whole),
            shown(&got)
        );
    }

    let mut rng = Rng::new(data, 1);
    let budget = Budget::new(rng.below(1024));
    let chunks = split::cuts(data, &mut rng);
    let mut ed = StreamEditor::new(Lease::new(&budget));
    let mut out = Vec::new();
    for c in &chunks {
        ed.feed(c, &mut out);
        assert!(
            budget.used() <= budget.limit(),
            "the editor took {} bytes of a budget of {}\n input: {}",
            budget.used(),
            budget.limit(),
            shown(data)
        );
    }
    ed.finish(&mut out);
    assert!(
        budget.used() <= budget.limit(),
        "the editor took {} bytes of a budget of {} at its end\n input: {}",
        budget.used(),
        budget.limit(),
        shown(data)
    );
    drop(ed);
    assert_eq!(
        budget.used(),
        0,
        "a dropped editor kept part of a budget of {}\n input: {}",
        budget.limit(),
        shown(data)
    );
    assert!(
        out.len() <= data.len(),
        "within a budget of {}, the edited stream grew\n input: {}\noutput: {}",
        budget.limit(),
        shown(data),
        shown(&out)
    );
    if !mentions_usage {
        assert!(
            out == data,
            "within a budget of {}, a stream without usage was edited\n input: {}\noutput: {}",
            budget.limit(),
            shown(data),
            shown(&out)
        );
    }
}
