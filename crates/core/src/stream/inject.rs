//! Asking for stream usage on the client's behalf, and hiding the answer from the client.
//!
//! A streamed chat or completions request reports usage only when it sets
//! `stream_options.include_usage`. When the client did not, [`request_usage`] adds it with
//! a minimal edit of the request text (everything else stays byte for byte), and
//! [`StreamEditor`] takes back out of the response what the client did not ask for: the
//! usage-only chunk (`"choices":[]` with `usage`) and the `"usage":null` that the provider
//! then adds to every other chunk. The client receives the stream it would have had.

use serde::Deserialize;

use crate::body::jsonscan;

#[derive(Deserialize)]
struct StreamFields {
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    stream_options: Option<serde_json::Value>,
}

/// Whether a request body asks for a stream, and whether it already asks for usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRequest {
    pub stream: bool,
    pub include_usage: bool,
}

pub fn read_stream_request(body: &[u8]) -> Option<StreamRequest> {
    let f: StreamFields = serde_json::from_slice(body).ok()?;
    Some(StreamRequest {
        stream: f.stream.and_then(|v| v.as_bool()).unwrap_or(false),
        include_usage: f
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    })
}

/// The request body with `stream_options.include_usage: true`, or `None` when the body is
/// not a streamed request that lacks it.
pub fn request_usage(body: &[u8]) -> Option<Vec<u8>> {
    request_usage_for(body, read_stream_request(body)?)
}

/// [`request_usage`] for a body already read with [`read_stream_request`].
pub fn request_usage_for(body: &[u8], req: StreamRequest) -> Option<Vec<u8>> {
    if !req.stream || req.include_usage {
        return None;
    }
    match jsonscan::top_level_value_span(body, "stream_options") {
        Some((start, end)) => {
            // Keep the client's other stream options.
            let mut options =
                match serde_json::from_slice::<serde_json::Value>(body.get(start..end)?) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => serde_json::Map::new(),
                };
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            let replacement = serde_json::to_vec(&serde_json::Value::Object(options)).ok()?;
            let mut out = Vec::with_capacity(body.len() + 24);
            out.extend_from_slice(body.get(..start)?);
            out.extend_from_slice(&replacement);
            out.extend_from_slice(body.get(end..)?);
            Some(out)
        }
        None => {
            let open = body.iter().position(|&b| b == b'{')?;
            let mut out = Vec::with_capacity(body.len() + 40);
            out.extend_from_slice(body.get(..=open)?);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(body.get(open + 1..)?);
            Some(out)
        }
    }
}

/// Splits a stream into whole raw events so that some can be dropped or edited.
///
/// Bytes of an event still incomplete at the end of a chunk are held until its blank line
/// arrives (an incomplete event is of no use to a client). Held bytes are bounded: an event
/// longer than the limit ends editing, and the stream passes through untouched from there.
#[derive(Debug)]
pub struct StreamEditor {
    pending: Vec<u8>,
    max_event_bytes: usize,
    /// Editing stopped (an event was too long); everything passes as is.
    pub passthrough: bool,
    /// Scan state: the bytes since the last line end form an empty line so far.
    at_line_start: bool,
    after_cr: bool,
    /// The last event ended at a CR at the very end of a chunk: its LF may come next.
    owe_lf: bool,
    /// Whether the last event judged was kept.
    last_kept: bool,
}

impl StreamEditor {
    pub fn new(max_event_bytes: usize) -> Self {
        StreamEditor {
            pending: Vec::new(),
            max_event_bytes,
            passthrough: false,
            at_line_start: true,
            after_cr: false,
            owe_lf: false,
            last_kept: true,
        }
    }

    /// Feeds a chunk; `decide` sees each complete raw event and returns whether to keep it.
    /// Returns the bytes to send on in place of the chunk.
    pub fn feed(&mut self, chunk: &[u8], decide: &mut dyn FnMut(&[u8]) -> bool) -> Vec<u8> {
        if self.passthrough {
            return chunk.to_vec();
        }
        let mut out = Vec::with_capacity(chunk.len());
        let mut start = 0;
        if self.owe_lf {
            self.owe_lf = false;
            if chunk.first() == Some(&b'\n') {
                // The LF of the CRLF that ended the previous event goes where it went.
                self.after_cr = false;
                if self.last_kept {
                    out.push(b'\n');
                }
                start = 1;
            }
        }
        let mut i = start;
        while let Some(rest) = chunk.get(i..).filter(|r| !r.is_empty()) {
            // Only line ends change more than "inside a line": runs of other bytes are
            // skipped whole.
            let Some(offset) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.after_cr = false;
                self.at_line_start = false;
                break;
            };
            if offset > 0 {
                self.after_cr = false;
                self.at_line_start = false;
            }
            i += offset;
            let Some(&b) = chunk.get(i) else { break };
            let ends_event = match b {
                // The LF of a CRLF: the CR already ended the line.
                b'\n' if self.after_cr => {
                    self.after_cr = false;
                    false
                }
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let blank = self.at_line_start;
                    self.at_line_start = true;
                    blank
                }
                _ => {
                    self.after_cr = false;
                    self.at_line_start = false;
                    false
                }
            };
            if ends_event {
                let mut end = i + 1;
                if b == b'\r' {
                    match chunk.get(i + 1) {
                        Some(b'\n') => {
                            end = i + 2;
                            self.after_cr = false;
                        }
                        None => self.owe_lf = true,
                        Some(_) => {}
                    }
                }
                self.emit(chunk.get(start..end).unwrap_or_default(), &mut out, decide);
                start = end;
            }
            i += 1;
        }
        let rest = chunk.get(start..).unwrap_or_default();
        if self.pending.len() + rest.len() > self.max_event_bytes {
            self.passthrough = true;
            out.append(&mut self.pending);
            out.extend_from_slice(rest);
        } else {
            self.pending.extend_from_slice(rest);
        }
        out
    }

    /// Releases what is held at the end of the stream (an unterminated last event is
    /// still judged).
    pub fn finish(&mut self, decide: &mut dyn FnMut(&[u8]) -> bool) -> Vec<u8> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        if self.passthrough {
            return rest;
        }
        if !rest.is_empty() {
            if rest.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                return rest;
            }
            if decide(&rest) {
                out.extend_from_slice(&strip_usage_null(&rest));
            }
        }
        out
    }

    fn emit(&mut self, tail: &[u8], out: &mut Vec<u8>, decide: &mut dyn FnMut(&[u8]) -> bool) {
        let event: std::borrow::Cow<[u8]> = if self.pending.is_empty() {
            std::borrow::Cow::Borrowed(tail)
        } else {
            let mut e = std::mem::take(&mut self.pending);
            e.extend_from_slice(tail);
            std::borrow::Cow::Owned(e)
        };
        // Blank lines between events (a stray LF) carry nothing to judge.
        if event.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            out.extend_from_slice(&event);
            return;
        }
        self.last_kept = decide(&event);
        if self.last_kept {
            out.extend_from_slice(&strip_usage_null(&event));
        }
    }
}

/// Removes `,"usage":null` as OpenAI writes it into chunks when usage was requested. Inside
/// JSON strings quotes are escaped, so text that mentions it is never touched.
pub fn strip_usage_null(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const NEEDLE: &[u8] = br#","usage":null"#;
    // Leftmost occurrences, not overlapping, found from each comma on.
    let next = |from: usize| {
        let mut at = from;
        while let Some(comma) = event.get(at..).and_then(|r| memchr::memchr(b',', r)) {
            let pos = at + comma;
            if event.get(pos..pos + NEEDLE.len()) == Some(NEEDLE) {
                return Some(pos);
            }
            at = pos + 1;
        }
        None
    };
    let Some(mut found) = next(0) else {
        return std::borrow::Cow::Borrowed(event);
    };
    let mut out = Vec::with_capacity(event.len());
    let mut copied = 0;
    loop {
        out.extend_from_slice(event.get(copied..found).unwrap_or_default());
        copied = found + NEEDLE.len();
        match next(copied) {
            Some(pos) => found = pos,
            None => break,
        }
    }
    out.extend_from_slice(event.get(copied..).unwrap_or_default());
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn adds_include_usage_minimally() {
        let body =
            br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let out = request_usage(body).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
        );
    }

    #[test]
    fn keeps_other_stream_options() {
        let body = br#"{ "stream": true, "stream_options": {"include_obfuscation": false, "include_usage": false}, "model": "x" }"#;
        let out = request_usage(body).unwrap();
        let v = json(&out);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
        assert_eq!(v["model"], "x");
        let body = br#"{"stream": true, "stream_options": null}"#;
        assert_eq!(
            json(&request_usage(body).unwrap())["stream_options"]["include_usage"],
            true
        );
    }

    #[test]
    fn leaves_other_requests_alone() {
        assert_eq!(request_usage(br#"{"stream":false,"model":"x"}"#), None);
        assert_eq!(request_usage(br#"{"model":"x"}"#), None);
        assert_eq!(
            request_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        assert_eq!(request_usage(b"not json"), None);
        assert_eq!(request_usage(br#"[{"stream":true}]"#), None);
    }

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
        "data: [DONE]\n\n"
    );
    const CLIENT_VIEW: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n"
    );

    fn edit(stream: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut ed = StreamEditor::new(1 << 20);
        let mut keep = |e: &[u8]| !String::from_utf8_lossy(e).contains("\"choices\":[],");
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            out.extend(ed.feed(&stream[last..c], &mut keep));
            last = c;
        }
        out.extend(ed.finish(&mut keep));
        out
    }

    #[test]
    fn drops_the_usage_chunk_for_every_split() {
        let s = STREAM.as_bytes();
        for i in 0..=s.len() {
            assert_eq!(
                String::from_utf8(edit(s, &[i])).unwrap(),
                CLIENT_VIEW,
                "cut at {i}"
            );
        }
        for i in (0..s.len()).step_by(7) {
            for j in (i..s.len()).step_by(5) {
                assert_eq!(
                    String::from_utf8(edit(s, &[i, j])).unwrap(),
                    CLIENT_VIEW,
                    "cuts {i},{j}"
                );
            }
        }
    }

    #[test]
    fn crlf_streams() {
        let s = STREAM.replace("\n", "\r\n");
        let want = CLIENT_VIEW.replace("\n", "\r\n");
        for i in 0..=s.len() {
            let got = String::from_utf8(edit(s.as_bytes(), &[i])).unwrap();
            assert_eq!(got, want, "cut at {i}");
        }
    }

    #[test]
    fn an_oversized_event_ends_editing_without_losing_bytes() {
        let big = format!("data: {}\n\n", "x".repeat(200));
        let s = format!("{big}{STREAM}");
        let mut ed = StreamEditor::new(64);
        let mut keep = |_: &[u8]| true;
        let mut out = Vec::new();
        for c in s.as_bytes().chunks(16) {
            out.extend(ed.feed(c, &mut keep));
        }
        out.extend(ed.finish(&mut keep));
        assert!(ed.passthrough);
        assert_eq!(out, s.as_bytes());
    }

    impl StreamEditor {
        /// The byte-at-a-time scan `feed` replaced, kept to check that both agree.
        fn feed_bytewise(
            &mut self,
            chunk: &[u8],
            decide: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Vec<u8> {
            if self.passthrough {
                return chunk.to_vec();
            }
            let mut out = Vec::with_capacity(chunk.len());
            let mut start = 0;
            if self.owe_lf {
                self.owe_lf = false;
                if chunk.first() == Some(&b'\n') {
                    self.after_cr = false;
                    if self.last_kept {
                        out.push(b'\n');
                    }
                    start = 1;
                }
            }
            for (i, &b) in chunk.iter().enumerate().skip(start) {
                let ends_event = match b {
                    b'\n' if self.after_cr => {
                        self.after_cr = false;
                        false
                    }
                    b'\n' | b'\r' => {
                        self.after_cr = b == b'\r';
                        let blank = self.at_line_start;
                        self.at_line_start = true;
                        blank
                    }
                    _ => {
                        self.after_cr = false;
                        self.at_line_start = false;
                        false
                    }
                };
                if ends_event {
                    let mut end = i + 1;
                    if b == b'\r' {
                        match chunk.get(i + 1) {
                            Some(b'\n') => {
                                end = i + 2;
                                self.after_cr = false;
                            }
                            None => self.owe_lf = true,
                            Some(_) => {}
                        }
                    }
                    self.emit(&chunk[start..end], &mut out, decide);
                    start = end;
                }
            }
            let rest = &chunk[start..];
            if self.pending.len() + rest.len() > self.max_event_bytes {
                self.passthrough = true;
                out.append(&mut self.pending);
                out.extend_from_slice(rest);
            } else {
                self.pending.extend_from_slice(rest);
            }
            out
        }
    }

    fn strip_bytewise(event: &[u8]) -> Vec<u8> {
        const NEEDLE: &[u8] = br#","usage":null"#;
        let mut out = Vec::new();
        let mut i = 0;
        while i < event.len() {
            if event.get(i..i + NEEDLE.len()) == Some(NEEDLE) {
                i += NEEDLE.len();
            } else {
                out.push(event[i]);
                i += 1;
            }
        }
        out
    }

    /// Streams made of the pieces that matter to the editor, cut anywhere.
    fn pieces() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"\n"[..]),
            Just(&b"\r"[..]),
            Just(&b"\r\n"[..]),
            Just(&b"data: x"[..]),
            Just(&br#","usage":null"#[..]),
            Just(&br#","usage":nul"#[..]),
            Just(&br#"{"choices":[],"usage":{"total_tokens":3}}"#[..]),
            Just(&b","[..]),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn the_skipping_scan_agrees_with_the_bytewise_one(
            stream in pieces(),
            cuts in prop::collection::vec(0usize..400, 0..6),
            max in prop_oneof![Just(24usize), Just(1usize << 20)],
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let mut fast = StreamEditor::new(max);
            let mut slow = StreamEditor::new(max);
            let mut keep = |e: &[u8]| !e.windows(12).any(|w| w == br#""choices":[]"#);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut last = 0;
            for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
                a.extend(fast.feed(&stream[last..c], &mut keep));
                b.extend(slow.feed_bytewise(&stream[last..c], &mut keep));
                last = c;
            }
            a.extend(fast.finish(&mut keep));
            b.extend(slow.finish(&mut keep));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn stripping_agrees_with_the_bytewise_scan(event in pieces()) {
            prop_assert_eq!(strip_usage_null(&event).into_owned(), strip_bytewise(&event));
        }
    }

    #[test]
    fn strip_usage_null_spares_strings() {
        let e = br#"data: {"choices":[{"delta":{"content":"say ,\"usage\":null"}}],"usage":null}"#;
        assert_eq!(
            &*strip_usage_null(e),
            br#"data: {"choices":[{"delta":{"content":"say ,\"usage\":null"}}]}"#
        );
    }
}
