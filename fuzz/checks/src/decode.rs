//! `body::decode::Decoder`: gzip and deflate response bodies decoded as they pass.
//!
//! For both codings:
//! - the input as compressed bytes: the decoded output is at most `MAX_DECODED_BYTES`,
//!   and the output and whether decoding failed are the same for every chunking (for a
//!   corrupt stream too: every byte decoded before the error is handed on);
//! - the input as plain text, compressed by the core's `Encoder` in chunks (in one of the
//!   codings, drawn from the input): it decodes back to itself, without failing, for any
//!   chunking, and a cut-off copy decodes to a prefix.

use tokenmeter_core::body::decode::{Coding, Decoder, Encoder, MAX_DECODED_BYTES};

use crate::shown;
use crate::split::{self, Rng};

fn name(coding: Coding) -> &'static str {
    match coding {
        Coding::Gzip => "gzip",
        _ => "deflate",
    }
}

fn run(coding: Coding, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut d = Decoder::new(coding).expect("a decoder for gzip and deflate");
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c, &mut |b| out.extend_from_slice(b));
    }
    (out, d.failed())
}

pub fn decode(data: &[u8]) {
    let mut rng = Rng::new(data, 5);
    // The round trip in one coding per input (drawn from it): an encoder costs most of a run.
    let round_trip = if rng.below(2) == 0 {
        Coding::Gzip
    } else {
        Coding::Deflate
    };
    for coding in [Coding::Gzip, Coding::Deflate] {
        let whole = run(coding, &split::whole(data));
        assert!(
            whole.0.len() as u64 <= MAX_DECODED_BYTES,
            "{}: decoded {} bytes\n input: {}",
            name(coding),
            whole.0.len(),
            shown(data)
        );
        for (how, chunks) in split::chunkings(data) {
            let got = run(coding, &chunks);
            assert!(
                got == whole,
                "{}: fed {how} ({} chunks), the decoded output differs from the whole input's\n input: {}\n whole: failed {}, {}\n   got: failed {}, {}",
                name(coding),
                chunks.len(),
                shown(data),
                whole.1,
                shown(&whole.0),
                got.1,
                shown(&got.0)
            );
        }

        if coding != round_trip {
            continue;
        }
        // The input as text, compressed chunk by chunk as the filter re-encodes an edit.
        let mut enc = Encoder::new(coding).expect("an encoder for gzip and deflate");
        let mut z = Vec::new();
        for piece in split::cuts(data, &mut rng) {
            z.extend_from_slice(&enc.encode(piece));
        }
        z.extend_from_slice(&enc.finish());
        let chunks = split::cuts(&z, &mut rng);
        let (back, failed) = run(coding, &chunks);
        assert!(
            back == data && !failed,
            "{}: compressed and decoded in {} chunks, the text did not come back (failed {failed})\n input: {}\n   got: {}",
            name(coding),
            chunks.len(),
            shown(data),
            shown(&back)
        );
        let cut = rng.below(z.len() + 1);
        let (prefix, _) = run(coding, &[z.get(..cut).unwrap_or_default()]);
        assert!(
            data.starts_with(&prefix),
            "{}: the first {cut} of {} compressed bytes decoded to more than a prefix of the text\n input: {}\n   got: {}",
            name(coding),
            z.len(),
            shown(data),
            shown(&prefix)
        );
    }
}
