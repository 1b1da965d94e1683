//! Editing a stream whose usage was injected back to what the client asked for, without
//! holding the stream back.
//!
//! Without `stream_options.include_usage` a provider sends no usage at all; with it, it adds
//! a `usage` member to chunks (`null` on most, the counts on a usage-only chunk with
//! `"choices":[]`, or the counts on the last content chunk, or on every chunk) and may send a
//! usage-only chunk. The editor removes exactly that: every top-level `usage` member of a
//! `data:` line's JSON object (with its comma and the whitespace around it, however it is
//! written), and every data line whose chunk then has no choices, with the blank line that
//! ended its event. Everything else passes byte for byte.
//!
//! The edit is decided line by line, as the bytes pass: a line is held only while it may
//! still be dropped whole (until its `choices` turn out not to be empty), and a member only
//! while it may be `usage`. Both are short in every provider's streams; past [`HOLD_LIMIT`]
//! (or when the VM's memory budget refuses) the line passes as it is, and the next line is
//! edited again. Lines end at LF, CR or CRLF, split anywhere across chunks.
//!
//! Written by hand: this needs a JSON tokenizer that follows top-level members across chunk
//! boundaries and reports byte positions, which serde_json's streaming API does not give.

use crate::body::budget::Lease;

/// The most bytes held back at once (one line that may be dropped, or one member that may
/// be removed).
pub const HOLD_LIMIT: usize = 64 * 1024;

const DATA: &[u8] = b"data:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line, with this many bytes of `data:` matched.
    Field(u8),
    /// After `data:`, reading the JSON value.
    Data,
    /// Anything else, up to the line end: passes.
    Other,
}

/// The top-level member whose value is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    None,
    Other,
    /// `choices`, before its first byte.
    Choices,
    /// `choices` is an array; no element seen yet.
    ChoicesOpen,
    /// `usage`, before its first byte.
    Usage,
    /// `usage`, after its first byte.
    UsageValue,
}

#[derive(Debug, Clone, Copy)]
struct Scan {
    started: bool,
    depth: u32,
    in_str: bool,
    esc: bool,
    /// Inside the top-level object where a key may start.
    expect_key: bool,
    in_key: bool,
    /// Hex digits of a key's `\uXXXX` escape still to come, and the value so far.
    hex_left: u8,
    hex_value: u32,
    /// The key, escapes decoded (a character outside ASCII as 0xFF: it matches no key of
    /// interest).
    key: [u8; 8],
    /// Bytes of the key; more than `key` holds means a key of no interest.
    key_len: usize,
    /// After a top-level key's closing quote, before its colon.
    after_key: bool,
    member: Member,
    choices_nonempty: bool,
    usage_present: bool,
    /// A removed `usage` was the object's first member: its comma goes too, up to the next key.
    strip_to_next_key: bool,
}

impl Default for Scan {
    fn default() -> Scan {
        Scan {
            started: false,
            depth: 0,
            in_str: false,
            esc: false,
            expect_key: false,
            in_key: false,
            hex_left: 0,
            hex_value: 0,
            key: [0; 8],
            key_len: 0,
            after_key: false,
            member: Member::None,
            choices_nonempty: false,
            usage_present: false,
            strip_to_next_key: false,
        }
    }
}

impl Scan {
    fn key(&self) -> Option<&[u8]> {
        self.key.get(..self.key_len)
    }

    fn push_key(&mut self, b: u8) {
        if let Some(slot) = self.key.get_mut(self.key_len) {
            *slot = b;
        }
        // Longer than any key of interest: never matches.
        self.key_len = (self.key_len + 1).min(self.key.len() + 1);
    }

    /// One byte of a key's string. Escapes are decoded as JSON does, so `"u\u0073age"` is
    /// `usage` and `"u\/sage"` is not.
    fn key_byte(&mut self, b: u8) {
        if self.hex_left > 0 {
            let digit = (b as char).to_digit(16).unwrap_or(0x10);
            self.hex_value = self.hex_value.saturating_mul(16).saturating_add(digit);
            self.hex_left -= 1;
            if self.hex_left == 0 {
                let c = u8::try_from(self.hex_value).ok().filter(u8::is_ascii);
                self.push_key(c.unwrap_or(0xFF));
            }
        } else if self.esc {
            self.esc = false;
            match b {
                b'u' => {
                    self.hex_left = 4;
                    self.hex_value = 0;
                }
                b'b' => self.push_key(0x08),
                b'f' => self.push_key(0x0C),
                b'n' => self.push_key(b'\n'),
                b'r' => self.push_key(b'\r'),
                b't' => self.push_key(b'\t'),
                other => self.push_key(other),
            }
        } else {
            self.push_key(b);
        }
    }
}

#[derive(Debug)]
pub struct StreamEditor {
    held: Vec<u8>,
    lease: Lease,
    line: Line,
    scan: Scan,
    /// The whole current line is held: it may be a usage-only chunk, dropped whole.
    hold_line: bool,
    /// Offset in `held` where a top-level member that may be `usage` starts (its comma).
    member_at: Option<usize>,
    /// The last line ended with CR: an LF next belongs to it.
    after_cr: bool,
    /// ... and that line was dropped, so its LF goes too.
    drop_lf: bool,
    /// In the current event: a data line was dropped, and whether any line was sent.
    event_dropped: bool,
    event_sent: bool,
    /// Lines that passed unedited because they were too long to hold or the budget refused.
    pub given_up: u64,
}

impl StreamEditor {
    pub fn new(lease: Lease) -> Self {
        StreamEditor {
            held: Vec::new(),
            lease,
            line: Line::Field(0),
            scan: Scan::default(),
            hold_line: false,
            member_at: None,
            after_cr: false,
            drop_lf: false,
            event_dropped: false,
            event_sent: false,
            given_up: 0,
        }
    }

    fn holding(&self) -> bool {
        self.hold_line || self.member_at.is_some()
    }

    /// Sends `bytes` where they go now: held, or out.
    fn sink(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if !self.holding() {
            out.extend_from_slice(bytes);
            return;
        }
        if self.held.len() + bytes.len() > HOLD_LIMIT || !self.lease.extend(&mut self.held, bytes) {
            // Too long to hold, or no memory for it: this line passes as it is.
            self.give_up(out);
            out.extend_from_slice(bytes);
        }
    }

    fn give_up(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.lease.shrink(&mut self.held, 0);
        self.hold_line = false;
        self.member_at = None;
        self.line = Line::Other;
        self.given_up += 1;
    }

    /// Stops holding the line (it cannot be dropped): what is held before an open member
    /// goes out.
    fn release_line(&mut self, out: &mut Vec<u8>) {
        self.hold_line = false;
        match self.member_at {
            Some(at) => {
                out.extend_from_slice(self.held.get(..at).unwrap_or_default());
                self.held.drain(..at.min(self.held.len()));
                self.member_at = Some(0);
            }
            None => out.append(&mut self.held),
        }
    }

    /// The member that started at `member_at` is not `usage`: it goes where the line goes.
    fn release_member(&mut self, out: &mut Vec<u8>) {
        self.member_at = None;
        if !self.hold_line {
            out.append(&mut self.held);
        }
    }

    /// Feeds a chunk; appends to `out` the bytes to send on in its place.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        // `chunk[run..i]` is not yet sent anywhere; it goes where the state says when the
        // state changes.
        let mut run = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    if self.drop_lf {
                        self.sink(chunk.get(run..i).unwrap_or_default(), out);
                        run = i + 1;
                    }
                    continue;
                }
            }
            if b == b'\n' || b == b'\r' {
                self.line_end(chunk, i, &mut run, out);
                continue;
            }
            match self.line {
                Line::Field(n) => {
                    if n == 0 {
                        // A new line: held from its first byte until it shows what it is.
                        self.sink(chunk.get(run..i).unwrap_or_default(), out);
                        run = i;
                        self.hold_line = true;
                    }
                    if DATA.get(n as usize) == Some(&b) {
                        self.line = if n as usize + 1 == DATA.len() {
                            Line::Data
                        } else {
                            Line::Field(n + 1)
                        };
                    } else {
                        self.line = Line::Other;
                        self.sink(chunk.get(run..=i).unwrap_or_default(), out);
                        run = i + 1;
                        self.release_line(out);
                    }
                }
                Line::Data => self.json_byte(chunk, i, &mut run, out),
                Line::Other => {}
            }
        }
        self.sink(chunk.get(run..).unwrap_or_default(), out);
    }

    /// The end of the stream: what is still held (an unterminated last line) goes out.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.lease.free(&mut self.held);
        self.hold_line = false;
        self.member_at = None;
    }

    fn line_end(&mut self, chunk: &[u8], i: usize, run: &mut usize, out: &mut Vec<u8>) {
        let cr = chunk.get(i) == Some(&b'\r');
        let blank = self.line == Line::Field(0);
        if blank {
            self.sink(chunk.get(*run..i).unwrap_or_default(), out);
            if self.event_dropped && !self.event_sent {
                // The blank line of an event whose only data was dropped.
                *run = i + 1;
                self.drop_lf = true;
            } else {
                *run = i;
                self.drop_lf = false;
            }
            self.event_dropped = false;
            self.event_sent = false;
        } else {
            // The terminator goes with its line.
            self.sink(chunk.get(*run..=i).unwrap_or_default(), out);
            *run = i + 1;
            let s = self.scan;
            let complete = self.line == Line::Data && s.started && s.depth == 0;
            if self.hold_line && complete && s.usage_present && !s.choices_nonempty {
                self.held.clear();
                self.event_dropped = true;
                self.drop_lf = true;
            } else {
                out.append(&mut self.held);
                self.event_sent = true;
                self.drop_lf = false;
            }
            self.lease.shrink(&mut self.held, 4096);
        }
        self.after_cr = cr;
        self.line = Line::Field(0);
        self.scan = Scan::default();
        self.hold_line = false;
        self.member_at = None;
    }

    /// One byte of a data line's value.
    fn json_byte(&mut self, chunk: &[u8], i: usize, run: &mut usize, out: &mut Vec<u8>) {
        let Some(&b) = chunk.get(i) else { return };
        let ws = matches!(b, b' ' | b'\t');
        if !self.scan.started {
            if ws {
                return;
            }
            if b == b'{' {
                self.scan.started = true;
                self.scan.depth = 1;
                self.scan.expect_key = true;
            } else {
                // `[DONE]` or anything that is not an object: nothing to edit.
                self.line = Line::Other;
                self.sink(chunk.get(*run..=i).unwrap_or_default(), out);
                *run = i + 1;
                self.release_line(out);
            }
            return;
        }
        let s = &mut self.scan;
        if s.in_str {
            if s.in_key && (s.esc || s.hex_left > 0) {
                // Inside an escape (no quote or backslash in valid ones).
                s.key_byte(b);
            } else if s.esc {
                s.esc = false;
            } else if b == b'\\' {
                s.esc = true;
            } else if b == b'"' {
                s.in_str = false;
                if s.in_key {
                    s.in_key = false;
                    s.after_key = true;
                    if self.member_at.is_some() && s.key() != Some(b"usage") {
                        self.sink(chunk.get(*run..=i).unwrap_or_default(), out);
                        *run = i + 1;
                        self.release_member(out);
                    }
                }
            } else if s.in_key {
                s.key_byte(b);
            }
            return;
        }
        if ws {
            return;
        }
        let depth = s.depth;
        // The first byte of a member's value, and of the choices array's first element.
        match s.member {
            Member::Choices if depth == 1 => {
                s.member = if b == b'[' {
                    Member::ChoicesOpen
                } else {
                    Member::Other
                };
            }
            Member::Usage if depth == 1 => {
                s.usage_present = b != b'n';
                s.member = Member::UsageValue;
            }
            Member::ChoicesOpen if depth == 2 && b == b']' => s.member = Member::Other,
            Member::ChoicesOpen if depth == 2 => self.choices_nonempty(chunk, i, run, out),
            _ => {}
        }
        match b {
            b'"' if depth == 1 && self.scan.expect_key => {
                let s = &mut self.scan;
                s.expect_key = false;
                s.in_str = true;
                s.in_key = true;
                s.key_len = 0;
                s.hex_left = 0;
                if s.strip_to_next_key {
                    // Drop the removed first member's comma and spaces: this key is first now.
                    s.strip_to_next_key = false;
                    self.sink(chunk.get(*run..i).unwrap_or_default(), out);
                    *run = i;
                    if let Some(at) = self.member_at {
                        self.held.truncate(at);
                    }
                } else if self.member_at.is_none() {
                    // The object's first member starts at its key.
                    self.sink(chunk.get(*run..i).unwrap_or_default(), out);
                    *run = i;
                    self.member_at = Some(self.held.len());
                }
            }
            b'"' => self.scan.in_str = true,
            b':' if depth == 1 && self.scan.after_key => {
                let s = &mut self.scan;
                s.after_key = false;
                s.member = match s.key() {
                    Some(b"choices") => Member::Choices,
                    Some(b"usage") => Member::Usage,
                    _ => Member::Other,
                };
            }
            b',' if depth == 1 => {
                let ended = std::mem::replace(&mut self.scan.member, Member::None);
                self.scan.expect_key = true;
                self.sink(chunk.get(*run..i).unwrap_or_default(), out);
                *run = i;
                if ended == Member::UsageValue {
                    if let Some(at) = self.member_at {
                        if self.held.get(at) == Some(&b'"') {
                            // `{"usage":…, "next"…`: the comma goes too, up to the next key.
                            self.scan.strip_to_next_key = true;
                            return;
                        }
                        self.held.truncate(at);
                    }
                }
                // The next member starts at this comma.
                self.member_at = Some(self.held.len());
            }
            b'}' if depth == 1 => {
                let ended = std::mem::replace(&mut self.scan.member, Member::None);
                self.scan.depth = 0;
                self.scan.expect_key = false;
                self.sink(chunk.get(*run..i).unwrap_or_default(), out);
                *run = i;
                if ended == Member::UsageValue || self.scan.strip_to_next_key {
                    if let Some(at) = self.member_at {
                        self.held.truncate(at);
                    }
                    self.scan.strip_to_next_key = false;
                }
                if self.member_at.is_some() {
                    self.release_member(out);
                }
            }
            b'{' | b'[' => self.scan.depth = depth.saturating_add(1),
            b'}' | b']' => self.scan.depth = depth.saturating_sub(1),
            _ => {}
        }
    }

    /// The chunk has choices: it is never dropped, so the line stops being held.
    fn choices_nonempty(&mut self, chunk: &[u8], i: usize, run: &mut usize, out: &mut Vec<u8>) {
        self.scan.member = Member::Other;
        self.scan.choices_nonempty = true;
        if self.hold_line {
            self.sink(chunk.get(*run..i).unwrap_or_default(), out);
            *run = i;
            self.release_line(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn edit(stream: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut ed = StreamEditor::new(Lease::unlimited());
        let mut out = Vec::new();
        let mut last = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
        cuts.sort_unstable();
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            ed.feed(&stream[last..c], &mut out);
            last = c;
        }
        ed.finish(&mut out);
        out
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
    fn every_framing() {
        for eol in ["\r\n", "\r", "\n"] {
            let s = STREAM.replace('\n', eol);
            let want = CLIENT_VIEW.replace('\n', eol);
            for i in 0..=s.len() {
                let got = String::from_utf8(edit(s.as_bytes(), &[i])).unwrap();
                assert_eq!(got, want, "{eol:?} cut at {i}");
            }
        }
    }

    #[test]
    fn nothing_is_held_past_a_line() {
        // Each line's bytes are out by the time its line end has passed.
        let s = STREAM.as_bytes();
        let mut ed = StreamEditor::new(Lease::unlimited());
        let mut out = Vec::new();
        ed.feed(&s[..STREAM.find("\n\n").unwrap() + 1], &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            CLIENT_VIEW.split("\n\n").next().unwrap().to_string() + "\n"
        );
        // A content line cut in its content is sent up to the cut.
        let mut ed = StreamEditor::new(Lease::unlimited());
        let mut out = Vec::new();
        ed.feed(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello wor",
            &mut out,
        );
        assert_eq!(
            out,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello wor"
        );
    }

    #[test]
    fn usage_in_every_form_is_removed() {
        let cases = [
            // On the last content chunk, as some servers send it.
            (
                r#"data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
                r#"data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
            ),
            // With spaces, as Python's json.dumps writes it.
            (
                r#"data: {"id": "c1", "choices": [{"delta": {"content": "x"}}], "usage": null}"#,
                r#"data: {"id": "c1", "choices": [{"delta": {"content": "x"}}]}"#,
            ),
            // First, with spaces.
            (
                r#"data: { "usage" : null , "choices": [{"delta": {}}] }"#,
                r#"data: { "choices": [{"delta": {}}] }"#,
            ),
            // Tabs are JSON whitespace too, anywhere around the member.
            (
                "data: {\"choices\":[{\"delta\":{}}]\t,\t\"usage\"\t:\tnull\t}",
                "data: {\"choices\":[{\"delta\":{}}]\t}",
            ),
            (
                "data: {\t\"usage\":\tnull,\t\"choices\":[]\t,\"id\":\"c1\"}",
                "data: {\t\"choices\":[]\t,\"id\":\"c1\"}",
            ),
            // In the middle.
            (
                r#"data: {"a":1,"usage":{"total_tokens":2},"choices":[{"delta":{}}]}"#,
                r#"data: {"a":1,"choices":[{"delta":{}}]}"#,
            ),
            // Strings that mention it are not touched; nested usage is not the chunk's.
            (
                r#"data: {"choices":[{"delta":{"content":"say ,\"usage\":null","usage":null}}]}"#,
                r#"data: {"choices":[{"delta":{"content":"say ,\"usage\":null","usage":null}}]}"#,
            ),
            // Azure's content-filter chunk has no choices and no usage: kept.
            (
                r#"data: {"choices":[],"prompt_filter_results":[{"prompt_index":0}]}"#,
                r#"data: {"choices":[],"prompt_filter_results":[{"prompt_index":0}]}"#,
            ),
            // A usage-only chunk with spaces, and one without choices at all.
            (
                r#"data: {"choices": [ ], "usage": {"total_tokens": 2}}"#,
                "",
            ),
            (r#"data: {"id":"c1","usage":{"total_tokens":2}}"#, ""),
            // Keys are read with their escapes decoded, as JSON does.
            (
                r#"data: {"choices":[{"delta":{}}],"u\u0073age":null}"#,
                r#"data: {"choices":[{"delta":{}}]}"#,
            ),
            (
                r#"data: {"ch\u006fices":[],"usage":{"total_tokens":2}}"#,
                "",
            ),
            (
                r#"data: {"choices":[{"delta":{}}],"u\/sage":1,"u\"sage":2,"usag\u00e9":3}"#,
                r#"data: {"choices":[{"delta":{}}],"u\/sage":1,"u\"sage":2,"usag\u00e9":3}"#,
            ),
            (
                r#"data: {"choices":[],"u\"sage":{"total_tokens":2}}"#,
                r#"data: {"choices":[],"u\"sage":{"total_tokens":2}}"#,
            ),
        ];
        for (line, want) in cases {
            let s = format!("{line}\n\n");
            let want = if want.is_empty() {
                String::new()
            } else {
                format!("{want}\n\n")
            };
            for i in 0..=s.len() {
                assert_eq!(
                    String::from_utf8(edit(s.as_bytes(), &[i])).unwrap(),
                    want,
                    "{line} cut at {i}"
                );
            }
        }
    }

    #[test]
    fn a_line_too_long_to_hold_passes_and_editing_goes_on() {
        let big = format!(
            "data: {{\"choices\":[],\"x\":\"{}\",\"usage\":null}}\n\n",
            "x".repeat(HOLD_LIMIT + 10)
        );
        let s = format!("{big}{STREAM}");
        let got = edit(s.as_bytes(), &[100, HOLD_LIMIT / 2, HOLD_LIMIT + 50]);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            format!("{big}{CLIENT_VIEW}")
        );
    }

    #[test]
    fn a_refused_budget_passes_lines_unedited_but_whole() {
        let budget = crate::body::budget::Budget::new(16);
        let mut ed = StreamEditor::new(Lease::new(&budget));
        let mut out = Vec::new();
        ed.feed(STREAM.as_bytes(), &mut out);
        ed.finish(&mut out);
        assert_eq!(out, STREAM.as_bytes());
        assert!(ed.given_up > 0);
        drop(ed);
        assert_eq!(budget.used(), 0);
    }

    /// One chunk of a generated stream: content, and how the provider reports usage.
    #[derive(Debug, Clone)]
    struct Shape {
        contents: Vec<String>,
        /// 0: a usage-only chunk; 1: usage on the last content chunk; 2: usage on every chunk.
        form: u8,
        spaces: bool,
        eol: &'static str,
        done: bool,
        id_first: bool,
    }

    fn shapes() -> impl Strategy<Value = Shape> {
        (
            prop::collection::vec("[a-z ,:\"\\\\{}\\[\\]é]{0,12}", 1..6),
            0u8..3,
            any::<bool>(),
            prop_oneof![Just("\n"), Just("\r"), Just("\r\n")],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(contents, form, spaces, eol, done, id_first)| Shape {
                contents,
                form,
                spaces,
                eol,
                done,
                id_first,
            })
    }

    /// The stream a provider sends, with usage (as asked for by injection) or without.
    fn render(shape: &Shape, with_usage: bool) -> String {
        let (colon, comma) = if shape.spaces {
            (": ", ", ")
        } else {
            (":", ",")
        };
        let usage = format!("{{\"prompt_tokens\"{colon}5{comma}\"completion_tokens\"{colon}2}}");
        let n = shape.contents.len();
        let mut s = String::new();
        for (i, text) in shape.contents.iter().enumerate() {
            let content = serde_json::to_string(text).unwrap();
            let choices = format!("[{{\"delta\"{colon}{{\"content\"{colon}{content}}}}}]");
            let mut members = vec![format!("\"choices\"{colon}{choices}")];
            if shape.id_first {
                members.insert(0, format!("\"id\"{colon}\"c1\""));
            }
            if with_usage {
                let value = match shape.form {
                    1 if i + 1 == n => usage.clone(),
                    2 => usage.clone(),
                    _ => "null".to_string(),
                };
                members.push(format!("\"usage\"{colon}{value}"));
            }
            s += &format!(
                "data: {{{}}}{eol}{eol}",
                members.join(comma),
                eol = shape.eol
            );
        }
        if with_usage && shape.form == 0 {
            s += &format!(
                "data: {{\"choices\"{colon}[]{comma}\"usage\"{colon}{usage}}}{eol}{eol}",
                eol = shape.eol
            );
        }
        if shape.done {
            s += &format!("data: [DONE]{eol}{eol}", eol = shape.eol);
        }
        s
    }

    proptest! {
        /// Whatever the usage form, whitespace, framing and splits: the client receives the
        /// stream it would have had without injection.
        #[test]
        fn the_client_gets_the_stream_it_asked_for(
            shape in shapes(),
            cuts in prop::collection::vec(0usize..600, 0..6),
        ) {
            let sent = render(&shape, true);
            let want = render(&shape, false);
            let got = edit(sent.as_bytes(), &cuts);
            prop_assert_eq!(String::from_utf8_lossy(&got), want);
        }

        /// Arbitrary bytes: nothing panics, and what is neither a usage member nor a dropped
        /// usage-only line passes, so output is never longer than input.
        #[test]
        fn arbitrary_bytes_never_grow(
            stream in prop::collection::vec(any::<u8>(), 0..400),
            cuts in prop::collection::vec(0usize..400, 0..6),
        ) {
            let got = edit(&stream, &cuts);
            prop_assert!(got.len() <= stream.len());
        }
    }
}
