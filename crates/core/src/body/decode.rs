//! Incremental decoding of compressed response bodies, for reading only.
//!
//! The client still receives the compressed bytes; the filter decodes a copy so that usage
//! in a gzip or deflate body is counted exactly. Input is fed in small slices and output
//! handed on at once, so memory stays bounded even for a decompression bomb, and decoding
//! stops (fail open: the rest is not read) after [`MAX_DECODED_BYTES`].

use std::io::Write;

use flate2::{Crc, Decompress, FlushDecompress, Status};

use crate::body::budget::Lease;

/// Compressed bytes decompressed per step. miniz drops the output it still holds when it
/// meets corrupt data, and it holds output only when the output buffer fills: a step of
/// this much input decodes to at most [`STEP_OUT`] bytes, so it never fills [`OUT`] (a
/// larger step would need a larger buffer; this one costs about 1 ms per MB decoded over
/// flate2's own decoders).
const IN_STEP: usize = 64;
/// The output buffer, allocated once per decoder.
const OUT: usize = 96 * 1024;
/// Decoded bytes read per response before decoding gives up.
pub const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;
/// What a decoder takes of the VM's memory budget: flate2's inflate state (43 KiB as
/// measured) and the output buffer, rounded up.
pub const DECODER_BYTES: usize = 144 * 1024;
/// What an encoder takes: flate2's deflate state at the fast level (344 KiB as measured),
/// rounded up.
pub const ENCODER_BYTES: usize = 360 * 1024;
/// A gzip header longer than this (its file name and comment have no length limit) is
/// taken as corrupt.
const MAX_GZIP_HEADER: usize = 4096;

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
    /// Gzip whose header (RFC 1952) is still being read: its bytes so far.
    GzipHeader(Vec<u8>),
    /// Deflate whose first bytes have not told yet whether it has a zlib header.
    Undecided(Vec<u8>),
    /// The deflate data; for gzip, with the checksum of what it decoded.
    Inflate(Box<Decompress>, Option<Crc>),
    /// Gzip's trailer (CRC-32 and length) being read after the deflate data ended.
    GzipTrailer(Crc, Vec<u8>),
    /// The stream ended; anything after it is not read.
    Ended,
    Failed,
}

/// Written on flate2's low-level `Decompress` rather than its `write` decoders: when a write
/// meets corrupt data, those keep what they decoded before it in a buffer of their own, so
/// the part of a corrupt stream handed on would depend on how the input was cut. Here every
/// byte decoded before the error is handed on, wherever the chunks split.
pub struct Decoder {
    inner: Inner,
    out: Vec<u8>,
    decoded: u64,
    /// Holds [`DECODER_BYTES`] for the decoder's life.
    _lease: Lease,
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

/// The length of a complete gzip header at the start of `head`; `Ok(None)` while more bytes
/// are needed, `Err` when it is not one.
fn gzip_header_len(head: &[u8]) -> Result<Option<usize>, ()> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    for (i, want) in [0x1f, 0x8b, 8].into_iter().enumerate() {
        match head.get(i) {
            Some(&b) if b != want => return Err(()),
            None => return Ok(None),
            Some(_) => {}
        }
    }
    let Some(&flags) = head.get(3) else {
        return Ok(None);
    };
    if flags & 0xe0 != 0 {
        return Err(());
    }
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let (Some(&lo), Some(&hi)) = (head.get(at), head.get(at + 1)) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([lo, hi]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match head
                .get(at..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
            {
                Some(nul) => at += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((head.len() >= at).then_some(at))
}

/// What one call of [`inflate`] came to.
enum Inflated {
    /// All input used; more may come.
    More,
    /// The deflate data ended after this many input bytes.
    End(usize),
    /// Corrupt data, or past [`MAX_DECODED_BYTES`].
    Failed,
}

/// The most one step can decode: deflate's densest code gives 258 bytes for 2 bits, and a
/// step may also read up to 8 bytes of bits carried over from the one before.
const STEP_OUT: usize = 1032 * (IN_STEP + 8);

/// Decompresses `input`, handing the output on in pieces of at most [`OUT`] bytes, every
/// byte decoded before an error included.
fn inflate(
    d: &mut Decompress,
    mut crc: Option<&mut Crc>,
    out: &mut Vec<u8>,
    decoded: &mut u64,
    input: &[u8],
    sink: &mut dyn FnMut(&[u8]),
) -> Inflated {
    if out.capacity() < OUT {
        out.reserve_exact(OUT - out.len());
    }
    // Hands on what `out` holds; false past MAX_DECODED_BYTES (exactly its first bytes go).
    let mut flush = |out: &mut Vec<u8>| {
        let room = MAX_DECODED_BYTES.saturating_sub(*decoded);
        let len = out.len() as u64;
        *decoded = decoded.saturating_add(len);
        if len > room {
            out.truncate(usize::try_from(room).unwrap_or(0));
        }
        if !out.is_empty() {
            if let Some(c) = crc.as_deref_mut() {
                c.update(out);
            }
            sink(out);
        }
        out.clear();
        len <= room
    };
    let start = d.total_in();
    let mut rest = input;
    loop {
        if out.capacity() - out.len() < STEP_OUT && !flush(out) {
            return Inflated::Failed;
        }
        let room = out.capacity() - out.len();
        let (before_in, before_out) = (d.total_in(), d.total_out());
        let step = rest.get(..IN_STEP).unwrap_or(rest);
        let status = d.decompress_vec(step, out, FlushDecompress::None);
        let used = usize::try_from(d.total_in() - before_in).unwrap_or(rest.len());
        let made = usize::try_from(d.total_out() - before_out).unwrap_or(room);
        rest = rest.get(used..).unwrap_or_default();
        let done = match status {
            // Corrupt data: what was decoded before it is handed on all the same.
            Err(_) => Some(Inflated::Failed),
            Ok(Status::StreamEnd) => Some(Inflated::End(
                usize::try_from(d.total_in() - start).unwrap_or(input.len()),
            )),
            // The output filled (it cannot, see STEP_OUT): go on, it is handed on first.
            Ok(_) if made >= room => None,
            Ok(_) if rest.is_empty() => Some(Inflated::More),
            // Input left and no progress: nothing more will come of it.
            Ok(_) if used == 0 && made == 0 => Some(Inflated::Failed),
            Ok(_) => None,
        };
        if let Some(done) = done {
            return if flush(out) { done } else { Inflated::Failed };
        }
    }
}

impl Decoder {
    /// A decoder for `coding`, `None` for identity and unsupported codings.
    pub fn new(coding: Coding) -> Option<Decoder> {
        Decoder::within(coding, Lease::unlimited())
    }

    /// A decoder whose memory is leased from `lease`'s budget; `None` also when the budget
    /// has no room for it (the lease records the refusal).
    pub fn within(coding: Coding, mut lease: Lease) -> Option<Decoder> {
        let inner = match coding {
            Coding::Gzip => Inner::GzipHeader(Vec::new()),
            Coding::Deflate => Inner::Undecided(Vec::new()),
            Coding::Identity | Coding::Unsupported => return None,
        };
        if !lease.take(DECODER_BYTES) {
            return None;
        }
        Some(Decoder {
            inner,
            out: Vec::new(),
            decoded: 0,
            _lease: lease,
        })
    }

    /// Whether decoding stopped (corrupt input or the size limit).
    pub fn failed(&self) -> bool {
        matches!(self.inner, Inner::Failed)
    }

    /// Decodes `input`, passing decoded bytes to `sink` as they come.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut dyn FnMut(&[u8])) {
        while !input.is_empty() {
            let (used, next) = match &mut self.inner {
                Inner::GzipHeader(head) => {
                    let before = head.len();
                    let take = input.len().min(MAX_GZIP_HEADER + 1 - before);
                    head.extend_from_slice(input.get(..take).unwrap_or_default());
                    match gzip_header_len(head) {
                        Ok(Some(len)) => (
                            len.saturating_sub(before),
                            Inner::Inflate(Box::new(Decompress::new(false)), Some(Crc::new())),
                        ),
                        Ok(None) if head.len() <= MAX_GZIP_HEADER => return,
                        _ => (take, Inner::Failed),
                    }
                }
                Inner::Undecided(head) => {
                    let take = input.len().min(2 - head.len());
                    head.extend_from_slice(input.get(..take).unwrap_or_default());
                    let [cmf, flg] = head[..] else { return };
                    // RFC 1950: CM = 8 and the header checksum; otherwise raw deflate (some
                    // servers send it so). The two bytes are the zlib header, or data.
                    let zlib = cmf & 0x0f == 8 && (u16::from(cmf) * 256 + u16::from(flg)) % 31 == 0;
                    let mut d = Box::new(Decompress::new(zlib));
                    let next = match inflate(
                        &mut d,
                        None,
                        &mut self.out,
                        &mut self.decoded,
                        &[cmf, flg],
                        sink,
                    ) {
                        Inflated::More => Inner::Inflate(d, None),
                        Inflated::End(_) => Inner::Ended,
                        Inflated::Failed => Inner::Failed,
                    };
                    (take, next)
                }
                Inner::Inflate(d, crc) => {
                    match inflate(
                        d,
                        crc.as_mut(),
                        &mut self.out,
                        &mut self.decoded,
                        input,
                        sink,
                    ) {
                        Inflated::More => return,
                        Inflated::End(used) => (
                            used,
                            match crc.take() {
                                Some(c) => Inner::GzipTrailer(c, Vec::new()),
                                None => Inner::Ended,
                            },
                        ),
                        Inflated::Failed => (input.len(), Inner::Failed),
                    }
                }
                Inner::GzipTrailer(crc, tail) => {
                    let take = input.len().min(8 - tail.len());
                    tail.extend_from_slice(input.get(..take).unwrap_or_default());
                    let word = |i: usize| {
                        tail.get(i..i + 4)
                            .and_then(|w| <[u8; 4]>::try_from(w).ok())
                            .map(u32::from_le_bytes)
                    };
                    match (word(0), word(4)) {
                        (Some(sum), Some(len)) if sum == crc.sum() && len == crc.amount() => {
                            (take, Inner::Ended)
                        }
                        (Some(_), Some(_)) => (take, Inner::Failed),
                        _ => return,
                    }
                }
                // Bytes after the end of the stream are not read.
                Inner::Ended | Inner::Failed => return,
            };
            self.inner = next;
            input = input.get(used..).unwrap_or_default();
        }
    }
}

/// Compresses an edited body again, in the coding the client asked for, flushing at every
/// chunk so the stream stays a stream.
pub struct Encoder {
    inner: EncoderInner,
    /// Holds [`ENCODER_BYTES`] for the encoder's life.
    _lease: Lease,
}

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
        Encoder::within(coding, Lease::unlimited())
    }

    /// An encoder whose memory is leased from `lease`'s budget; `None` also when the budget
    /// has no room for it (the lease records the refusal).
    pub fn within(coding: Coding, mut lease: Lease) -> Option<Encoder> {
        if !matches!(coding, Coding::Gzip | Coding::Deflate) || !lease.take(ENCODER_BYTES) {
            return None;
        }
        let level = flate2::Compression::fast();
        let inner = match coding {
            Coding::Gzip => EncoderInner::Gzip(flate2::write::GzEncoder::new(Vec::new(), level)),
            Coding::Deflate => {
                EncoderInner::Zlib(flate2::write::ZlibEncoder::new(Vec::new(), level))
            }
            Coding::Identity | Coding::Unsupported => return None,
        };
        Some(Encoder {
            inner,
            _lease: lease,
        })
    }

    /// Compresses `data` and returns everything ready to send.
    pub fn encode(&mut self, data: &[u8]) -> Vec<u8> {
        let out = match &mut self.inner {
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
        match self.inner {
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
    fn a_corrupt_stream_gives_the_same_output_for_every_split() {
        let text = b"data: {\"a\":1}\n\n".repeat(300);
        let mut z = gzip(&text);
        // Corrupt the deflate data a third of the way in.
        let at = z.len() / 3;
        z[at] ^= 0x55;
        z[at + 1] ^= 0xaa;
        let whole = decode_in(Coding::Gzip, &z, z.len());
        assert!(whole.1, "the corruption is found");
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(decode_in(Coding::Gzip, &z, step), whole, "step {step}");
        }
        // A raw deflate stream that fails at its third byte.
        let raw = decode_in(Coding::Deflate, b"\x12\x00\xff", 3);
        assert_eq!(decode_in(Coding::Deflate, b"\x12\x00\xff", 1), raw);
    }

    #[test]
    fn gzip_headers_with_every_field_and_the_trailer_checked() {
        let text = b"{\"usage\":{}}".repeat(20);
        let plain = gzip(&text);
        // The same member with FEXTRA, FNAME, FCOMMENT and FHCRC set.
        let mut full = vec![0x1f, 0x8b, 8, 2 | 4 | 8 | 16, 0, 0, 0, 0, 0, 255];
        full.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        full.extend_from_slice(b"name.json\0a comment\0");
        full.extend_from_slice(&[0x12, 0x34]);
        full.extend_from_slice(&plain[10..]);
        for step in [1, 5, full.len()] {
            assert_eq!(decode_in(Coding::Gzip, &full, step), (text.clone(), false));
        }
        // A wrong CRC, bytes that are not gzip, and bytes after a complete member.
        let mut bad_crc = plain.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert_eq!(decode_in(Coding::Gzip, &bad_crc, 4), (text.clone(), true));
        assert_eq!(decode_in(Coding::Gzip, &text, 4), (Vec::new(), true));
        let mut trailing = plain.clone();
        trailing.extend_from_slice(b"garbage");
        assert_eq!(decode_in(Coding::Gzip, &trailing, 3), (text.clone(), false));
    }

    #[test]
    fn decoders_and_encoders_are_leased() {
        use crate::body::budget::{Budget, Lease};
        let budget = Budget::new(DECODER_BYTES + ENCODER_BYTES);
        let d = Decoder::within(Coding::Gzip, Lease::new(&budget)).unwrap();
        let e = Encoder::within(Coding::Gzip, Lease::new(&budget)).unwrap();
        assert_eq!(budget.used(), DECODER_BYTES + ENCODER_BYTES);
        let refused = Lease::new(&budget);
        assert!(Decoder::within(Coding::Deflate, refused.sibling()).is_none());
        assert!(refused.was_refused());
        drop((d, e));
        assert_eq!(budget.used(), 0);
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
