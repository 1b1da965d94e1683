//! Incremental decoding of compressed response bodies, for reading only.
//!
//! The client still receives the compressed bytes; the filter decodes a copy so that usage
//! in a gzip or deflate body is counted exactly. Input is fed in small slices and output
//! handed on at once, so memory stays bounded even for a decompression bomb, and decoding
//! stops (fail open: the rest is not read) after [`MAX_DECODED_BYTES`].

use std::io::Write;

use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

/// Input bytes decoded per step; deflate expands at most ~1032:1, so one step yields at most
/// about 1 MiB.
const STEP: usize = 1024;
/// Decoded bytes read per response before decoding gives up.
pub const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;

/// A content coding the filter can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    /// Anything else (`br`, `zstd`, several codings): not readable.
    Unsupported,
}

impl Coding {
    pub fn from_header(value: Option<&str>) -> Coding {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Coding::Identity;
        };
        match v.to_ascii_lowercase().as_str() {
            "identity" => Coding::Identity,
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            _ => Coding::Unsupported,
        }
    }
}

enum Inner {
    Gzip(GzDecoder<Vec<u8>>),
    Zlib(ZlibDecoder<Vec<u8>>),
    Raw(DeflateDecoder<Vec<u8>>),
    /// Deflate whose first bytes have not told yet whether it has a zlib header.
    Undecided(Vec<u8>),
    Failed,
}

pub struct Decoder {
    inner: Inner,
    decoded: u64,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Decoder({} bytes decoded, failed: {})",
            self.decoded,
            self.failed()
        )
    }
}

impl Decoder {
    /// A decoder for `coding`, `None` for identity and unsupported codings.
    pub fn new(coding: Coding) -> Option<Decoder> {
        let inner = match coding {
            Coding::Gzip => Inner::Gzip(GzDecoder::new(Vec::new())),
            Coding::Deflate => Inner::Undecided(Vec::new()),
            Coding::Identity | Coding::Unsupported => return None,
        };
        Some(Decoder { inner, decoded: 0 })
    }

    /// Whether decoding stopped (corrupt input or the size limit).
    pub fn failed(&self) -> bool {
        matches!(self.inner, Inner::Failed)
    }

    /// Decodes `input`, passing decoded bytes to `sink` as they come.
    pub fn feed(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8])) {
        if let Inner::Undecided(head) = &mut self.inner {
            head.extend_from_slice(input);
            if head.len() < 2 {
                return;
            }
            let head = std::mem::take(head);
            // RFC 1950: CM = 8 and the header checksum; otherwise raw deflate (some servers).
            let zlib = matches!(head.as_slice(), [cmf, flg, ..] if cmf & 0x0f == 8 && (u16::from(*cmf) * 256 + u16::from(*flg)) % 31 == 0);
            self.inner = if zlib {
                Inner::Zlib(ZlibDecoder::new(Vec::new()))
            } else {
                Inner::Raw(DeflateDecoder::new(Vec::new()))
            };
            self.feed(&head, sink);
            return;
        }
        for step in input.chunks(STEP) {
            let ok = match &mut self.inner {
                Inner::Gzip(d) => d.write_all(step).and_then(|_| d.flush()).is_ok(),
                Inner::Zlib(d) => d.write_all(step).and_then(|_| d.flush()).is_ok(),
                Inner::Raw(d) => d.write_all(step).and_then(|_| d.flush()).is_ok(),
                Inner::Undecided(_) | Inner::Failed => return,
            };
            let out = match &mut self.inner {
                Inner::Gzip(d) => d.get_mut(),
                Inner::Zlib(d) => d.get_mut(),
                Inner::Raw(d) => d.get_mut(),
                Inner::Undecided(_) | Inner::Failed => return,
            };
            self.decoded = self.decoded.saturating_add(out.len() as u64);
            if !out.is_empty() && self.decoded <= MAX_DECODED_BYTES {
                sink(out);
            }
            out.clear();
            if !ok || self.decoded > MAX_DECODED_BYTES {
                self.inner = Inner::Failed;
                return;
            }
        }
    }
}

/// Compresses an edited body again, in the coding the client asked for, flushing at every
/// chunk so the stream stays a stream.
pub struct Encoder(EncoderInner);

enum EncoderInner {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zlib(flate2::write::ZlibEncoder<Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoder")
    }
}

impl Encoder {
    /// An encoder for `coding`, `None` for identity and unsupported codings.
    pub fn new(coding: Coding) -> Option<Encoder> {
        let level = flate2::Compression::fast();
        Some(Encoder(match coding {
            Coding::Gzip => EncoderInner::Gzip(flate2::write::GzEncoder::new(Vec::new(), level)),
            Coding::Deflate => {
                EncoderInner::Zlib(flate2::write::ZlibEncoder::new(Vec::new(), level))
            }
            Coding::Identity | Coding::Unsupported => return None,
        }))
    }

    /// Compresses `data` and returns everything ready to send.
    pub fn encode(&mut self, data: &[u8]) -> Vec<u8> {
        let out = match &mut self.0 {
            EncoderInner::Gzip(e) => e
                .write_all(data)
                .and_then(|_| e.flush())
                .map(|_| e.get_mut()),
            EncoderInner::Zlib(e) => e
                .write_all(data)
                .and_then(|_| e.flush())
                .map(|_| e.get_mut()),
        };
        out.map(std::mem::take).unwrap_or_default()
    }

    /// Ends the compressed stream (its trailer).
    pub fn finish(self) -> Vec<u8> {
        match self.0 {
            EncoderInner::Gzip(e) => e.finish(),
            EncoderInner::Zlib(e) => e.finish(),
        }
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode_in(coding: Coding, data: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut d = Decoder::new(coding).unwrap();
        let mut out = Vec::new();
        for c in data.chunks(step) {
            d.feed(c, &mut |b| out.extend_from_slice(b));
        }
        (out, d.failed())
    }

    #[test]
    fn gzip_any_split() {
        let text = br#"{"model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#.repeat(50);
        let z = gzip(&text);
        for step in [1, 2, 13, 1000, z.len()] {
            let (out, failed) = decode_in(Coding::Gzip, &z, step);
            assert_eq!(out, text, "step {step}");
            assert!(!failed);
        }
    }

    #[test]
    fn deflate_with_and_without_zlib_header() {
        let text = b"data: {\"a\":1}\n\n".repeat(100);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        let zlib = z.finish().unwrap();
        let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        r.write_all(&text).unwrap();
        let raw = r.finish().unwrap();
        for step in [1, 7, 4096] {
            assert_eq!(decode_in(Coding::Deflate, &zlib, step).0, text);
            assert_eq!(decode_in(Coding::Deflate, &raw, step).0, text);
        }
    }

    #[test]
    fn corrupt_input_stops_decoding_quietly() {
        let (out, failed) = decode_in(
            Coding::Gzip,
            b"\x1f\x8b\x08\x00garbage that is not deflate at all",
            5,
        );
        assert!(failed);
        assert!(out.len() < 100);
    }

    #[test]
    fn codings_from_headers() {
        assert_eq!(Coding::from_header(None), Coding::Identity);
        assert_eq!(Coding::from_header(Some("GZIP")), Coding::Gzip);
        assert_eq!(Coding::from_header(Some("deflate")), Coding::Deflate);
        assert_eq!(Coding::from_header(Some("br")), Coding::Unsupported);
        assert_eq!(Coding::from_header(Some("gzip, br")), Coding::Unsupported);
        assert!(Decoder::new(Coding::Unsupported).is_none());
    }

    #[test]
    fn re_encoding_round_trips_chunk_by_chunk() {
        for coding in [Coding::Gzip, Coding::Deflate] {
            let mut e = Encoder::new(coding).unwrap();
            let mut d = Decoder::new(coding).unwrap();
            let mut decoded = Vec::new();
            for piece in ["data: {\"a\":1}\n\n", "data: [DONE]\n\n"] {
                let z = e.encode(piece.as_bytes());
                assert!(!z.is_empty(), "each chunk is flushed");
                d.feed(&z, &mut |b| decoded.extend_from_slice(b));
            }
            d.feed(&e.finish(), &mut |b| decoded.extend_from_slice(b));
            assert_eq!(decoded, b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
            assert!(!d.failed());
        }
    }

    #[test]
    fn a_bomb_is_decoded_in_bounded_pieces() {
        let z = gzip(&vec![b'a'; 8 * 1024 * 1024]);
        let mut d = Decoder::new(Coding::Gzip).unwrap();
        let mut biggest = 0;
        let mut total = 0;
        d.feed(&z, &mut |b| {
            biggest = biggest.max(b.len());
            total += b.len();
        });
        assert_eq!(total, 8 * 1024 * 1024);
        assert!(biggest <= 2 * 1024 * 1024, "{biggest}");
    }
}
