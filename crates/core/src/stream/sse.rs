//! An incremental parser for server-sent events (the `text/event-stream` format).
//!
//! Written here rather than taken from a crate because the filter needs three things the
//! SSE crates we looked at do not combine: byte-at-a-time input with no assumption about
//! where chunks split (inside a line, a CRLF, or a UTF-8 character), no allocation per
//! chunk once warmed up, and a hard bound on the memory one event can take.
//!
//! Follows the WHATWG rules that matter for LLM streams: lines end in LF, CRLF or CR;
//! `data:` lines accumulate, joined by `\n`; `event:` names the event; a line starting
//! with `:` is a comment; a blank line dispatches; one space after the colon is dropped.
//! An event whose data, or any one of whose lines (field name and comments included), grows
//! past the limit is dropped whole and counted, never buffered, wherever the chunks split.

use crate::body::budget::Lease;

/// One dispatched event.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` name, empty when none was given.
    pub name: &'a str,
    pub data: &'a [u8],
}

#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// The current line, while it is incomplete.
    line: Vec<u8>,
    data: Vec<u8>,
    name: Vec<u8>,
    /// Whether the current event has any `data:` line.
    has_data: bool,
    /// The current event outgrew the limit: skip it until its blank line.
    oversized: bool,
    /// The previous byte was a CR, so an LF right after it ends nothing new.
    after_cr: bool,
    /// The current line was too long and is being dropped up to its end.
    line_dropped: bool,
    /// Events dropped for size (not those the memory budget had no room for).
    pub skipped: u64,
    lease: Lease,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser::within(max_event_bytes, Lease::unlimited())
    }

    /// A parser whose buffers grow only as far as `lease` allows: an event the VM's memory
    /// budget has no room for is skipped, like one over `max_event_bytes`.
    pub fn within(max_event_bytes: usize, lease: Lease) -> Self {
        SseParser {
            lease,
            max_event_bytes,
            line: Vec::new(),
            data: Vec::new(),
            name: Vec::new(),
            has_data: false,
            oversized: false,
            after_cr: false,
            line_dropped: false,
            skipped: 0,
        }
    }

    /// Feeds bytes; calls `on_event` for every event completed by them.
    pub fn feed(&mut self, mut bytes: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        while !bytes.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if bytes.first() == Some(&b'\n') {
                    bytes = bytes.get(1..).unwrap_or_default();
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', bytes) {
                Some(end) => {
                    let (line, rest) = bytes.split_at(end);
                    self.after_cr = rest.first() == Some(&b'\r');
                    bytes = rest.get(1..).unwrap_or_default();
                    if self.line.is_empty() && !self.line_dropped {
                        self.end_line(line, on_event);
                    } else {
                        self.push_partial(line);
                        if !self.line_dropped {
                            // Reuse the line buffer's allocation for the next partial line.
                            let full = std::mem::take(&mut self.line);
                            self.end_line(&full, on_event);
                            self.line = full;
                            self.line.clear();
                        }
                    }
                    self.line_dropped = false;
                }
                None => {
                    self.push_partial(bytes);
                    bytes = &[];
                }
            }
        }
    }

    /// Ends the stream: an event without its final blank line is still dispatched, as the
    /// last event of an LLM stream sometimes is.
    pub fn finish(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if !self.line.is_empty() && !self.line_dropped {
            let full = std::mem::take(&mut self.line);
            self.end_line(&full, on_event);
        }
        self.end_line(&[], on_event);
    }

    fn push_partial(&mut self, part: &[u8]) {
        if self.line_dropped {
            return;
        }
        let too_long = self.line.len() + part.len() > self.max_event_bytes;
        if too_long || !self.lease.extend(&mut self.line, part) {
            self.start_skipping(too_long);
            self.line.clear();
            self.line_dropped = true;
        }
    }

    /// Skips the current event; `too_long` counts it in `skipped` (an event the memory
    /// budget had no room for is recorded by the lease instead).
    fn start_skipping(&mut self, too_long: bool) {
        if !self.oversized {
            self.oversized = true;
            self.skipped += u64::from(too_long);
        }
        self.data.clear();
        self.lease
            .shrink(&mut self.data, self.max_event_bytes.min(4096));
    }

    fn end_line(&mut self, line: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if self.oversized {
            return;
        }
        if line.len() > self.max_event_bytes {
            // As a line that arrives in pieces is: the limit must not depend on the cuts.
            self.start_skipping(true);
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = line.get(colon + 1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (line.get(..colon).unwrap_or_default(), value)
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                let extra = usize::from(self.has_data) + value.len();
                let too_long = self.data.len() + extra > self.max_event_bytes;
                if too_long || !self.lease.reserve(&mut self.data, extra) {
                    self.start_skipping(too_long);
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name
                    .extend_from_slice(value.get(..value.len().min(256)).unwrap_or_default());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if self.has_data && !self.oversized {
            let name = std::str::from_utf8(&self.name).unwrap_or("");
            on_event(Event {
                name,
                data: &self.data,
            });
        }
        self.data.clear();
        self.name.clear();
        self.has_data = false;
        self.oversized = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]], max: usize) -> (Vec<(String, String)>, u64) {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        let mut on = |e: Event<'_>| {
            out.push((
                e.name.to_string(),
                String::from_utf8_lossy(e.data).into_owned(),
            ))
        };
        for c in chunks {
            p.feed(c, &mut on);
        }
        p.finish(&mut on);
        (out, p.skipped)
    }

    fn parse(text: &str) -> Vec<(String, String)> {
        parse_chunks(&[text.as_bytes()], 1 << 20).0
    }

    #[test]
    fn openai_chat_stream() {
        let s = "data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n";
        assert_eq!(
            parse(s),
            [
                ("".into(), "{\"a\":1}".into()),
                ("".into(), "{\"a\":2}".into()),
                ("".into(), "[DONE]".into())
            ]
        );
    }

    #[test]
    fn named_events_comments_crlf_and_multiline_data() {
        let s = ": keep-alive\r\nevent: response.output_text.delta\r\ndata: {\"delta\":\r\ndata:\"hi\"}\r\n\r\nevent: x\rdata:y\r\r";
        assert_eq!(
            parse(s),
            [
                (
                    "response.output_text.delta".into(),
                    "{\"delta\":\n\"hi\"}".into()
                ),
                ("x".into(), "y".into())
            ]
        );
    }

    #[test]
    fn events_without_data_are_not_dispatched_and_unknown_fields_ignored() {
        assert_eq!(
            parse("event: ping\n\nid: 3\nretry: 10\ndata: ok\n\n"),
            [("".into(), "ok".into())]
        );
    }

    #[test]
    fn a_final_event_without_blank_line_is_dispatched() {
        assert_eq!(
            parse("data: a\n\ndata: b"),
            [("".into(), "a".into()), ("".into(), "b".into())]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let s = "event: e1\r\ndata: caf\u{e9} \u{1F600}\r\n\r\n: c\ndata: x\ndata: y\n\ndata: [DONE]\n\n".as_bytes();
        let whole = parse_chunks(&[s], 1 << 20);
        for i in 0..=s.len() {
            for j in i..=s.len() {
                let got = parse_chunks(&[&s[..i], &s[i..j], &s[j..]], 1 << 20);
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
        assert_eq!(whole.0[0].1, "caf\u{e9} \u{1F600}");
    }

    #[test]
    fn oversized_events_are_skipped_and_counted() {
        let big = "x".repeat(100);
        let s = format!("data: small\n\ndata: {big}\n\ndata: after\n\n");
        for step in [1, 3, 50, 1000] {
            let chunks: Vec<&[u8]> = s.as_bytes().chunks(step).collect();
            let (events, skipped) = parse_chunks(&chunks, 64);
            assert_eq!(
                events,
                [("".into(), "small".into()), ("".into(), "after".into())],
                "step {step}"
            );
            assert_eq!(skipped, 1);
        }
        // Many data lines that add up past the limit are skipped too.
        let s = "data: 0123456789\n".repeat(10) + "\n" + "data: ok\n\n";
        let (events, skipped) = parse_chunks(&[s.as_bytes()], 64);
        assert_eq!(events, [("".into(), "ok".into())]);
        assert_eq!(skipped, 1);
    }

    #[test]
    fn the_limit_does_not_depend_on_where_chunks_split() {
        // A data line whose value fits but whose line does not, and long lines of the
        // other kinds: each drops its event, in one piece or in many.
        let value = "v".repeat(60);
        let long = "c".repeat(70);
        for line in [
            format!("data: {value}"),
            format!(":{long}"),
            format!("event: {long}"),
            format!("id: {long}"),
            long.clone(),
        ] {
            let s = format!("data: a\n\n{line}\ndata: b\n\ndata: c\n\n");
            let whole = parse_chunks(&[s.as_bytes()], 64);
            assert_eq!(
                whole,
                (vec![("".into(), "a".into()), ("".into(), "c".into())], 1),
                "{line}"
            );
            for step in [1, 2, 7, 33] {
                let chunks: Vec<&[u8]> = s.as_bytes().chunks(step).collect();
                assert_eq!(
                    parse_chunks(&chunks, 64),
                    whole,
                    "{line} in steps of {step}"
                );
            }
        }
    }

    #[test]
    fn memory_stays_bounded_on_an_endless_line() {
        let mut p = SseParser::new(1024);
        let chunk = [b'a'; 4096];
        for _ in 0..1000 {
            p.feed(&chunk, &mut |_| panic!("no event expected"));
            assert!(p.line.capacity() <= 8192 && p.data.capacity() <= 8192);
        }
    }
}
