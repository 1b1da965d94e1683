//! Reading chat and completions stream chunks in one pass, without building them.
//!
//! Every event of a stream is a chunk, and a stream has one per token, so reading chunks is
//! the filter's hottest path. serde's derived readers identify every key, allocate every
//! string and skip unknown fields through generic machinery; in a Wasm VM that cost many
//! times what the metering needs. This scanner walks the bytes once, borrows the texts, and
//! validates what it skips the way serde_json does.
//!
//! It reads only the plain shape providers send. Anything else (an escaped key, a repeated
//! field, a value of an unexpected type, deep nesting, a malformed document) makes it answer
//! `None`, and the caller reads the chunk with serde, which then decides exactly as before:
//! whenever this returns parts, they are the ones serde would have produced (a property test
//! holds it to that).

use std::borrow::Cow;

use serde::de::IgnoredAny;

use crate::openai::usage::{RawUsage, Usage};

/// Nesting beyond which the scanner leaves a chunk to serde.
const MAX_DEPTH: usize = 32;

/// What metering reads from one chunk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkParts<'a> {
    pub model: Option<Cow<'a, str>>,
    /// Texts in the order they are tallied, each with its tally key (the choice index in the
    /// high bits, 0 for text, 1 + n for tool call n) and what part of the answer it is.
    pub texts: Vec<(u64, Part, Cow<'a, str>)>,
    pub usage: Option<Usage>,
}

/// What a streamed text is: all are counted; records keep the answer's text and tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Content, completion text or a refusal.
    Text,
    /// Visible reasoning (`reasoning_content`, `reasoning`).
    Reasoning,
    ToolName,
    ToolArgs,
}

/// Tags a delta's texts (content, refusal, reasoning_content, reasoning, in that order).
pub fn delta_part(field: usize) -> Part {
    if field < 2 {
        Part::Text
    } else {
        Part::Reasoning
    }
}

/// Tags a function's texts (name, arguments).
pub fn call_part(field: usize) -> Part {
    if field == 0 {
        Part::ToolName
    } else {
        Part::ToolArgs
    }
}

/// Tally key of a choice's text.
pub fn text_key(choice: u64) -> u64 {
    choice.saturating_mul(1 << 16)
}

/// Tally key of a choice's tool call (or legacy function call, `call` 0).
pub fn call_key(choice: u64, call: u64) -> u64 {
    text_key(choice) + 1 + call.min(0xfffe)
}

/// Reads a chat/completions chunk, or `None` when serde must decide.
pub fn read(data: &[u8]) -> Option<ChunkParts<'_>> {
    let mut s = Scan { b: data, i: 0 };
    let mut parts = ChunkParts::default();
    let (mut model, mut choices, mut usage) = (false, false, false);
    s.object(0, |s, key| {
        match key {
            b"model" => {
                once(&mut model)?;
                parts.model = s.opt_str()?;
            }
            b"choices" => {
                once(&mut choices)?;
                if !s.null() {
                    s.array(1, |s| s.choice(&mut parts.texts))?;
                }
            }
            b"usage" => {
                once(&mut usage)?;
                parts.usage = s.usage()?;
            }
            _ => s.skip(1)?,
        }
        Some(())
    })?;
    s.ws();
    (s.i == data.len()).then_some(parts)
}

/// A key as serde reads it: it must be UTF-8. Keys are short and nearly always ASCII, which
/// is checked without the general validator's per-call cost.
fn key_bytes(bytes: &[u8]) -> Option<&[u8]> {
    (bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()).then_some(bytes)
}

/// A field serde's derived reader accepts once; a repeat is its error, so serde decides.
fn once(seen: &mut bool) -> Option<()> {
    if *seen {
        return None;
    }
    *seen = true;
    Some(())
}

/// The texts of one choice, field by field, kept until the choice ends so that they are
/// tallied in serde's order whatever the order of the keys.
#[derive(Default)]
struct ChoiceTexts<'a> {
    index: u64,
    text: Option<Cow<'a, str>>,
    delta: [Option<Cow<'a, str>>; 4],
    calls: Vec<(u64, [Option<Cow<'a, str>>; 2])>,
    function: Option<[Option<Cow<'a, str>>; 2]>,
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// The next significant byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Consumes `null` if it comes next.
    fn null(&mut self) -> bool {
        if self.peek() == Some(b'n') && self.b.get(self.i..self.i + 4) == Some(b"null") {
            self.i += 4;
            return true;
        }
        false
    }

    /// An object whose keys are read as serde reads struct fields (valid UTF-8, no escapes
    /// here); `field` consumes each value.
    fn object(
        &mut self,
        depth: usize,
        mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let (start, end, escaped) = self.string()?;
            if escaped {
                return None;
            }
            let key = key_bytes(self.b.get(start..end)?)?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string starting at the current byte (its opening quote): the span of its contents
    /// and whether it has escapes. Raw control characters are serde's error.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        // Strings in chunks are short: a plain loop beats a search routine's set-up.
        let start = self.i + 1;
        let mut j = start;
        let mut escaped = false;
        loop {
            match *self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some((start, j, escaped));
                }
                // The escaped character cannot end the string; serde checks the escape.
                b'\\' => {
                    escaped = true;
                    j += 2;
                }
                0..=0x1f => return None,
                _ => j += 1,
            }
        }
    }

    /// `null` or a string, read as serde reads `Option<Cow<str>>`.
    fn opt_str(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.null() {
            return Some(None);
        }
        if self.peek()? != b'"' {
            return None;
        }
        let open = self.i;
        let (start, end, escaped) = self.string()?;
        if escaped {
            let text: String = serde_json::from_slice(self.b.get(open..self.i)?).ok()?;
            return Some(Some(Cow::Owned(text)));
        }
        let text = std::str::from_utf8(self.b.get(start..end)?).ok()?;
        Some(Some(Cow::Borrowed(text)))
    }

    /// A plain non-negative integer, as serde reads `u64` (anything else is left to serde).
    fn index(&mut self) -> Option<u64> {
        self.peek()?;
        let digits = self
            .b
            .get(self.i..)?
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let text = self.b.get(self.i..self.i + digits)?;
        if digits == 0 || (digits > 1 && text.first() == Some(&b'0')) {
            return None;
        }
        if matches!(self.b.get(self.i + digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in text {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.i += digits;
        Some(n)
    }

    /// Any value, validated as serde_json validates what it ignores.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    if self.peek()? != b'"' {
                        return None;
                    }
                    self.skip_string()?;
                    self.eat(b':')?;
                    self.skip(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => self.array(depth, |s| s.skip(depth + 1)),
            b'"' => self.skip_string(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn skip_string(&mut self) -> Option<()> {
        let open = self.i;
        let (_, _, escaped) = self.string()?;
        if escaped {
            // Escapes are rare outside texts; serde judges them.
            serde_json::from_slice::<IgnoredAny>(self.b.get(open..self.i)?).ok()?;
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        (self.b.get(self.i..self.i + word.len())? == word).then(|| self.i += word.len())
    }

    /// JSON's number grammar, which serde_json enforces on ignored numbers too.
    fn number(&mut self) -> Option<()> {
        let digits = |s: &mut Self| {
            let n =
                s.b.get(s.i..)
                    .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count());
            s.i += n;
            n
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i)? {
            b'0' => {
                self.i += 1;
                if self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }

    /// `usage`, read as the lenient reader does: through a JSON value, `null` and shapes that
    /// are not a usage object being no usage.
    fn usage(&mut self) -> Option<Option<Usage>> {
        self.peek()?;
        let start = self.i;
        self.skip(1)?;
        let raw = self.b.get(start..self.i)?;
        if raw == b"null" {
            return Some(None);
        }
        let value: serde_json::Value = serde_json::from_slice(raw).ok()?;
        Some(
            serde_json::from_value::<RawUsage>(value)
                .ok()
                .and_then(RawUsage::into_usage),
        )
    }

    fn choice(&mut self, texts: &mut Vec<(u64, Part, Cow<'a, str>)>) -> Option<()> {
        let mut c = ChoiceTexts::default();
        let (mut index, mut delta, mut text) = (false, false, false);
        self.object(2, |s, key| {
            match key {
                b"index" => {
                    once(&mut index)?;
                    c.index = s.index()?;
                }
                b"text" => {
                    once(&mut text)?;
                    c.text = s.opt_str()?;
                }
                b"delta" => {
                    once(&mut delta)?;
                    if !s.null() {
                        s.delta(&mut c)?;
                    }
                }
                _ => s.skip(3)?,
            }
            Some(())
        })?;
        let base = text_key(c.index);
        texts.extend(c.text.map(|t| (base, Part::Text, t)));
        texts.extend(
            c.delta
                .into_iter()
                .enumerate()
                .filter_map(|(i, t)| Some((base, delta_part(i), t?))),
        );
        for (call, function) in c.calls {
            let key = call_key(c.index, call);
            texts.extend(
                function
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, t)| Some((key, call_part(i), t?))),
            );
        }
        if let Some(function) = c.function {
            let key = call_key(c.index, 0);
            texts.extend(
                function
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, t)| Some((key, call_part(i), t?))),
            );
        }
        Some(())
    }

    fn delta(&mut self, c: &mut ChoiceTexts<'a>) -> Option<()> {
        let mut seen = [false; 6];
        self.object(3, |s, key| {
            let slot = match key {
                b"content" => 0,
                b"refusal" => 1,
                b"reasoning_content" => 2,
                b"reasoning" => 3,
                b"tool_calls" => 4,
                b"function_call" => 5,
                _ => return s.skip(4),
            };
            once(seen.get_mut(slot)?)?;
            match slot {
                4 => {
                    if !s.null() {
                        s.array(4, |s| {
                            let call = s.tool_call()?;
                            c.calls.push(call);
                            Some(())
                        })?;
                    }
                }
                5 => {
                    if !s.null() {
                        c.function = Some(s.function(4)?);
                    }
                }
                _ => *c.delta.get_mut(slot)? = s.opt_str()?,
            }
            Some(())
        })
    }

    fn tool_call(&mut self) -> Option<(u64, [Option<Cow<'a, str>>; 2])> {
        let (mut index, mut function) = (None, None);
        self.object(5, |s, key| {
            match key {
                b"index" => {
                    if index.is_some() {
                        return None;
                    }
                    index = Some(s.index()?);
                }
                b"function" => {
                    if function.is_some() {
                        return None;
                    }
                    function = Some(if s.null() {
                        [None, None]
                    } else {
                        s.function(6)?
                    });
                }
                _ => s.skip(6)?,
            }
            Some(())
        })?;
        Some((index.unwrap_or(0), function.unwrap_or_default()))
    }

    fn function(&mut self, depth: usize) -> Option<[Option<Cow<'a, str>>; 2]> {
        let mut out: [Option<Cow<'a, str>>; 2] = [None, None];
        let mut seen = [false; 2];
        self.object(depth, |s, key| {
            let slot = match key {
                b"name" => 0,
                b"arguments" => 1,
                _ => return s.skip(depth + 1),
            };
            once(seen.get_mut(slot)?)?;
            *out.get_mut(slot)? = s.opt_str()?;
            Some(())
        })?;
        Some(out)
    }
}
