//! Reading usage and text from streamed responses, event by event.
//!
//! One reader per API shape: chat completion chunks (`choices[].delta`), completion chunks
//! (`choices[].text`), and Responses API events (`response.*.delta`, and usage on the
//! terminal `response.completed`, `response.incomplete` and `response.failed`). A usage
//! object may arrive in any chunk (after `finish_reason`, with `choices: []`, or on every
//! chunk as some servers send it, cumulative); the last one wins.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem;

use serde::Deserialize;

use crate::body::budget::Lease;
use crate::openai::api::Operation;
use crate::openai::usage::{lenient, RawUsage, Usage};
use crate::stream::chunkscan::{self, ChunkParts, Part};
use crate::stream::sse::{Event, SseParser};
use crate::tokens::estimate::TextTally;
use crate::tokens::tokenizer::Encoding;

/// Most separate texts (choices × content/tool calls) tallied apart; beyond, they share one.
const MAX_TALLIES: usize = 16;

/// What one event was, for callers that edit or time the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventInfo {
    /// The event carried content, a refusal or a tool call (the first one marks the time to
    /// first token).
    pub content: bool,
    /// `[DONE]`, or a terminal Responses event.
    pub terminal: bool,
}

#[derive(Debug)]
pub struct StreamMeter {
    op: Operation,
    parser: SseParser,
    pub model: Option<String>,
    pub usage: Option<Usage>,
    /// `[DONE]` or a terminal event was seen.
    pub done: bool,
    /// Events whose data was not JSON of the expected shape.
    pub unreadable: u64,
    /// An event carried content already.
    pub saw_content: bool,
    tallies: Vec<(u64, TextTally)>,
    /// The assembled answer, when the exchange is sampled for a record.
    answer: Option<Answer>,
    /// Events whose texts are not read yet, because usage is expected.
    deferred: Option<Deferred>,
    /// What the kept events may take of the VM's memory budget.
    lease: Lease,
}

/// Reading a chunk's texts is most of a stream's cost, and when the stream was asked for
/// its usage they are needed only if that usage never comes (a cut stream, a server that
/// ignores the option). So after the first content (its time is measured) and the model
/// are known, events without a usage value are kept as they are, up to a bound, and read
/// only if the texts turn out to be needed. The counts are the same either way: kept events
/// are read in their order before any later one.
#[derive(Debug)]
struct Deferred {
    /// Bytes of event data kept at most; past it, the kept events are read and the stream
    /// is read event by event from then on.
    cap: usize,
    /// Event data, one after another.
    data: Vec<u8>,
    /// Where each event's data ends in `data`.
    ends: Vec<usize>,
    /// The stream marks usage in its chunks (see [`StreamMeter::defer`]).
    armed: bool,
}

/// The answer's text as it streams: content of the first choice, and tool calls as
/// `name(arguments)`, bounded.
#[derive(Debug, Default)]
struct Answer {
    cap: usize,
    len: usize,
    truncated: bool,
    /// Parts by key in arrival order; tool-call parts are closed with `)` at the end.
    parts: Vec<(u64, bool, String)>,
}

impl Answer {
    fn push(&mut self, key: u64, tool: bool, text: &str) {
        if self.len + text.len() > self.cap {
            self.truncated = true;
            return;
        }
        self.len += text.len();
        if let Some((_, _, s)) = self.parts.iter_mut().find(|(k, _, _)| *k == key) {
            s.push_str(text);
        } else if self.parts.len() < MAX_TALLIES {
            self.parts.push((key, tool, text.to_string()));
        } else {
            self.truncated = true;
        }
    }

    fn text(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(_, tool, s)| if *tool { format!("{s})") } else { s.clone() })
            .collect();
        parts.join("\n")
    }
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    /// Completions.
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    /// Visible reasoning some servers stream (vLLM, DeepSeek); providers bill it as output.
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(default, borrow)]
    function_call: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(default)]
    index: u64,
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<Cow<'a, str>>,
    #[serde(default)]
    output_index: u64,
    #[serde(default)]
    response: Option<ResponseObject>,
    #[serde(default, borrow)]
    item: Option<Item<'a>>,
}

#[derive(Deserialize)]
struct ResponseObject {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

impl StreamMeter {
    pub fn new(op: Operation, max_event_bytes: usize) -> Self {
        StreamMeter::within(op, max_event_bytes, Lease::unlimited())
    }

    /// A meter whose buffers grow only as far as `lease` allows (see
    /// [`crate::body::budget`]): an event with no room is skipped, and kept events are read
    /// at once when there is no room to keep them.
    pub fn within(op: Operation, max_event_bytes: usize, lease: Lease) -> Self {
        StreamMeter {
            op,
            parser: SseParser::within(max_event_bytes, lease.sibling()),
            lease,
            model: None,
            usage: None,
            done: false,
            unreadable: 0,
            saw_content: false,
            tallies: Vec::new(),
            answer: None,
            deferred: None,
        }
    }

    /// The stream was asked for usage: texts may be read only when needed (keeping at most
    /// `cap` bytes of events meanwhile). Not for Responses API streams, nor with an answer
    /// being assembled.
    pub fn expect_usage(&mut self, cap: usize) {
        if self.op != Operation::Responses && self.answer.is_none() {
            self.deferred = Some(Deferred {
                cap,
                data: Vec::new(),
                ends: Vec::new(),
                armed: false,
            });
        }
    }

    /// Reads the events kept so far, and every later one as it comes.
    fn read_deferred(&mut self, enc: Encoding) {
        self.read_kept(enc);
        let Some(mut d) = self.deferred.take() else {
            return;
        };
        self.lease.free(&mut d.data);
        self.lease
            .give(d.ends.capacity() * std::mem::size_of::<usize>());
    }

    /// Reads the events kept so far, in their order, and goes on keeping later ones.
    fn read_kept(&mut self, enc: Encoding) {
        let Some(mut d) = self.deferred.take() else {
            return;
        };
        let mut start = 0;
        for &end in &d.ends {
            if let Some(data) = d.data.get(start..end) {
                self.chunk(data, enc);
            }
            start = end;
        }
        d.data.clear();
        d.ends.clear();
        self.deferred = Some(d);
    }

    /// Keeps an event for later when that changes nothing now; false when it must be read.
    fn defer(&mut self, data: &[u8], enc: Encoding) -> bool {
        if !self.saw_content || self.model.is_none() {
            return false;
        }
        let Some(d) = self.deferred.as_mut() else {
            return false;
        };
        if !d.armed {
            // Only a stream that names usage in its chunks (OpenAI sends `"usage":null` in
            // every one once asked) is put off; where chunks never mention it, usage may
            // well not come, and putting off would only add a copy.
            if !names_usage(data) {
                self.deferred = None;
                return false;
            }
            d.armed = true;
        }
        if may_carry_usage(data) {
            return false;
        }
        // The event ends count against the cap and the budget too: tiny events would
        // otherwise make them the larger part.
        let end_bytes = std::mem::size_of::<usize>();
        let ends_room = d.ends.len() < d.ends.capacity() || {
            let more = d.ends.capacity().max(16);
            let ok = self.lease.take(more * end_bytes);
            if ok && d.ends.try_reserve_exact(more).is_err() {
                self.lease.give(more * end_bytes);
                false
            } else {
                ok
            }
        };
        if d.data.len() + d.ends.capacity() * end_bytes + data.len() > d.cap
            || !ends_room
            || !self.lease.extend(&mut d.data, data)
        {
            self.read_deferred(enc);
            return false;
        }
        d.ends.push(d.data.len());
        true
    }

    /// Also assembles the answer's text (at most `cap` bytes) for a record.
    pub fn collect_answer(&mut self, cap: usize) {
        self.answer = Some(Answer {
            cap,
            ..Answer::default()
        });
    }

    /// The answer assembled so far, and whether it was cut.
    pub fn answer(&self) -> Option<(String, bool)> {
        self.answer
            .as_ref()
            .filter(|a| !a.parts.is_empty())
            .map(|a| (a.text(), a.truncated))
    }

    fn answer_text(&mut self, key: u64, tool: bool, text: &str) {
        if let Some(a) = self.answer.as_mut() {
            if !text.is_empty() {
                a.push(key, tool, text);
            }
        }
    }

    /// Feeds stream bytes; `enc` counts text that outgrows its tally. Returns what the
    /// events completed by these bytes carried, merged.
    pub fn feed(&mut self, bytes: &[u8], enc: Encoding) -> EventInfo {
        let mut parser = std::mem::replace(&mut self.parser, SseParser::new(0));
        let mut info = EventInfo::default();
        parser.feed(bytes, &mut |e| info = merge(info, self.event(e, enc)));
        self.parser = parser;
        info
    }

    /// Ends the stream (an event missing its final blank line still counts).
    pub fn finish(&mut self, enc: Encoding) {
        let mut parser = std::mem::replace(&mut self.parser, SseParser::new(0));
        parser.finish(&mut |e| {
            self.event(e, enc);
        });
        self.parser = parser;
    }

    /// Events dropped for exceeding the event size limit.
    pub fn oversized(&self) -> u64 {
        self.parser.skipped
    }

    /// Completion tokens of the text seen, for when no usage arrived.
    pub fn estimated_completion(&mut self, enc: Encoding) -> u64 {
        self.read_deferred(enc);
        self.tallies
            .iter_mut()
            .map(|(_, t)| {
                t.close(enc);
                t.tokens()
            })
            .sum()
    }

    fn add_text(&mut self, key: u64, text: &str, enc: Encoding) -> bool {
        if text.is_empty() {
            return false;
        }
        let known = self.tallies.iter().any(|(k, _)| *k == key);
        if !known && self.tallies.len() < MAX_TALLIES {
            self.tallies.push((key, TextTally::default()));
        }
        // Past the limit, new texts share the last tally.
        let pos = self
            .tallies
            .iter()
            .position(|(k, _)| *k == key)
            .unwrap_or(self.tallies.len().saturating_sub(1));
        if let Some((_, t)) = self.tallies.get_mut(pos) {
            t.push(text, enc);
        }
        true
    }

    fn event(&mut self, e: Event<'_>, enc: Encoding) -> EventInfo {
        if e.data == b"[DONE]" {
            self.done = true;
            return EventInfo {
                terminal: true,
                ..EventInfo::default()
            };
        }
        let info = if self.op == Operation::Responses {
            self.responses_event(e.data, enc)
        } else if self.defer(e.data, enc) {
            EventInfo::default()
        } else {
            self.chunk(e.data, enc)
        };
        self.saw_content |= info.content;
        info
    }

    fn chunk(&mut self, data: &[u8], enc: Encoding) -> EventInfo {
        // The scanner reads the usual chunk in one pass; what it leaves, serde reads.
        let Some(parts) = chunkscan::read(data).or_else(|| parts_from_serde(data)) else {
            self.unreadable += 1;
            return EventInfo::default();
        };
        if parts.usage.is_none() {
            // An event that may carry usage but brings none (`{}`, unreadable counts): the
            // texts may be needed after all, and are tallied in stream order. One that
            // brings usage leaves the kept texts unneeded (usage, once read, stays).
            self.read_kept(enc);
        }
        let mut info = EventInfo::default();
        if self.model.is_none() {
            self.model = parts.model.map(Cow::into_owned).filter(|m| !m.is_empty());
        }
        for (key, part, text) in &parts.texts {
            info.content |= self.add_text(*key, text, enc);
            // Records take the first choice's answer: its text, and tool calls as name(args).
            if *key < chunkscan::text_key(1) {
                match part {
                    Part::Text => self.answer_text(0, false, text),
                    Part::ToolName => self.answer_text(*key, true, &format!("{text}(")),
                    Part::ToolArgs => self.answer_text(*key, true, text),
                    Part::Reasoning => {}
                }
            }
        }
        if let Some(u) = parts.usage {
            self.usage = Some(u);
        }
        info
    }

    fn responses_event(&mut self, data: &[u8], enc: Encoding) -> EventInfo {
        let Ok(ev) = serde_json::from_slice::<ResponsesEvent<'_>>(data) else {
            self.unreadable += 1;
            return EventInfo::default();
        };
        let mut info = EventInfo::default();
        let kind = ev.kind.as_deref().unwrap_or("");
        let key = ev.output_index.min(0xffff);
        match kind {
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_text.delta"
            | "response.reasoning_summary_text.delta" => {
                if let Some(d) = &ev.delta {
                    info.content = self.add_text(key, d, enc);
                    let tool = kind == "response.function_call_arguments.delta";
                    if tool || !kind.starts_with("response.reasoning") {
                        self.answer_text(key, tool, d);
                    }
                }
            }
            "response.output_item.added" => {
                if let Some(item) = &ev.item {
                    if item.kind.as_deref() == Some("function_call") {
                        if let Some(name) = &item.name {
                            info.content = self.add_text(key, name, enc);
                            self.answer_text(key, true, &format!("{name}("));
                        }
                    }
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" | "error" => {
                self.done = true;
                info.terminal = true;
            }
            _ => {}
        }
        if let Some(r) = ev.response {
            if let Some(m) = r.model.filter(|m| !m.is_empty()) {
                self.model = Some(m);
            }
            if let Some(u) = r.usage.and_then(RawUsage::into_usage) {
                self.usage = Some(u);
            }
        }
        info
    }
}

/// A chat/completions chunk read with serde: what [`chunkscan`] leaves, and its reference.
pub(crate) fn parts_from_serde(data: &[u8]) -> Option<ChunkParts<'_>> {
    let chunk = serde_json::from_slice::<Chunk<'_>>(data).ok()?;
    let choices = chunk.choices.unwrap_or_default();
    let mut texts = Vec::new();
    for c in choices {
        let base = chunkscan::text_key(c.index);
        texts.extend(c.text.map(|t| (base, Part::Text, t)));
        let Some(d) = c.delta else { continue };
        let fields = [d.content, d.refusal, d.reasoning_content, d.reasoning];
        for (i, t) in fields.into_iter().enumerate() {
            texts.extend(t.map(|t| (base, chunkscan::delta_part(i), t)));
        }
        for call in d.tool_calls.into_iter().flatten() {
            let key = chunkscan::call_key(c.index, call.index);
            if let Some(f) = call.function {
                for (i, t) in [f.name, f.arguments].into_iter().enumerate() {
                    texts.extend(t.map(|t| (key, chunkscan::call_part(i), t)));
                }
            }
        }
        if let Some(f) = d.function_call {
            let key = chunkscan::call_key(c.index, 0);
            for (i, t) in [f.name, f.arguments].into_iter().enumerate() {
                texts.extend(t.map(|t| (key, chunkscan::call_part(i), t)));
            }
        }
    }
    Some(ChunkParts {
        model: chunk.model,
        texts,
        usage: chunk.usage.and_then(RawUsage::into_usage),
    })
}

/// Searchers for the needles looked for in every chunk, built once: building one takes
/// longer than searching a chunk.
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
static ESCAPE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\\u00"));

/// Whether `data` holds the string `"usage"` anywhere.
pub(crate) fn names_usage(data: &[u8]) -> bool {
    USAGE_KEY.find(data).is_some()
}

/// Whether a chunk may hold a usage value: a `"usage"` key whose value is not `null`, or
/// an escaped ASCII letter (a key could be spelled with escapes; text never needs them).
/// A false "may" only costs reading the chunk now.
fn may_carry_usage(data: &[u8]) -> bool {
    use crate::body::jsonscan::skip_ws;
    for at in USAGE_KEY.find_iter(data) {
        let colon = skip_ws(data, at + 7);
        if data.get(colon) != Some(&b':') {
            // A string value "usage", not a key.
            continue;
        }
        let value = data.get(skip_ws(data, colon + 1)..).unwrap_or_default();
        if !value.starts_with(b"null") {
            return true;
        }
    }
    ESCAPE
        .find_iter(data)
        .any(|at| matches!(data.get(at + 4), Some(b'4'..=b'7')))
}

fn merge(a: EventInfo, b: EventInfo) -> EventInfo {
    EventInfo {
        content: a.content || b.content,
        terminal: a.terminal || b.terminal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
        "data: [DONE]\n\n"
    );

    fn meter(op: Operation, s: &str, step: usize) -> StreamMeter {
        let mut m = StreamMeter::new(op, 1 << 20);
        for c in s.as_bytes().chunks(step) {
            m.feed(c, Encoding::O200kBase);
        }
        m.finish(Encoding::O200kBase);
        m
    }

    #[test]
    fn chat_stream_with_usage_chunk() {
        for step in [1, 5, 64, 4096] {
            let mut m = meter(Operation::ChatCompletions, CHAT, step);
            assert!(m.done);
            assert_eq!(m.model.as_deref(), Some("gpt-4o-2024-08-06"));
            let u = m.usage.unwrap();
            assert_eq!((u.prompt, u.completion, u.total), (9, 2, 11));
            assert_eq!(m.estimated_completion(Encoding::O200kBase), 2);
        }
    }

    #[test]
    fn event_info_marks_content_and_done() {
        let mut m = StreamMeter::new(Operation::ChatCompletions, 1 << 20);
        let infos: Vec<EventInfo> = CHAT
            .split_inclusive("\n\n")
            .map(|e| m.feed(e.as_bytes(), Encoding::O200kBase))
            .collect();
        assert!(!infos[0].content, "an empty first delta is not content");
        assert!(infos[1].content);
        assert!(infos[5].terminal);
    }

    #[test]
    fn tool_calls_and_refusals_are_text() {
        let s = concat!(
            "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\" \\\"Paris\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":1,\"delta\":{\"refusal\":\"I can't help with that.\"}}]}\n\n",
            "data: [DONE]\n\n"
        );
        let mut m = meter(Operation::ChatCompletions, s, 7);
        let enc = Encoding::O200kBase;
        let expected =
            enc.count("get_weather{\"city\": \"Paris\"}") + enc.count("I can't help with that.");
        assert_eq!(m.estimated_completion(enc), expected);
        assert!(m.usage.is_none());
    }

    #[test]
    fn answers_are_assembled_for_records() {
        let mut m = StreamMeter::new(Operation::ChatCompletions, 1 << 20);
        m.collect_answer(1000);
        for c in CHAT.as_bytes().chunks(3) {
            m.feed(c, Encoding::O200kBase);
        }
        assert_eq!(m.answer(), Some(("Hello world".to_string(), false)));
        let tool = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":1}\"}}]}}]}\n\n",
        );
        let mut m = StreamMeter::new(Operation::ChatCompletions, 1 << 20);
        m.collect_answer(1000);
        m.feed(tool.as_bytes(), Encoding::O200kBase);
        assert_eq!(m.answer().unwrap().0, "get_weather({\"city\":1})");
        let mut small = StreamMeter::new(Operation::ChatCompletions, 1 << 20);
        small.collect_answer(6);
        small.feed(CHAT.as_bytes(), Encoding::O200kBase);
        assert_eq!(small.answer(), Some(("Hello".to_string(), true)));
    }

    #[test]
    fn completions_stream() {
        let s = "data: {\"choices\":[{\"text\":\"Once\",\"index\":0}],\"model\":\"gpt-3.5-turbo-instruct\"}\n\ndata: {\"choices\":[{\"text\":\" upon\",\"index\":0}]}\n\ndata: [DONE]\n\n";
        let mut m = meter(Operation::Completions, s, 3);
        assert_eq!(m.model.as_deref(), Some("gpt-3.5-turbo-instruct"));
        assert_eq!(m.estimated_completion(Encoding::Cl100kBase), 2);
    }

    #[test]
    fn responses_stream_usage_on_terminal_events() {
        for terminal in [
            "response.completed",
            "response.incomplete",
            "response.failed",
        ] {
            let s = format!(
                "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"model\":\"gpt-4.1-2025-04-14\",\"usage\":null}}}}\n\n\
                 event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"output_index\":0,\"delta\":\"Hi\"}}\n\n\
                 event: {terminal}\ndata: {{\"type\":\"{terminal}\",\"response\":{{\"model\":\"gpt-4.1-2025-04-14\",\"usage\":{{\"input_tokens\":5,\"output_tokens\":1,\"total_tokens\":6}}}}}}\n\n"
            );
            let m = meter(Operation::Responses, &s, 11);
            assert!(m.done, "{terminal}");
            assert_eq!(m.usage.unwrap().total, 6, "{terminal}");
            assert_eq!(m.model.as_deref(), Some("gpt-4.1-2025-04-14"));
        }
    }

    #[test]
    fn usage_on_every_chunk_keeps_the_last() {
        let s = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\n";
        let m = meter(Operation::ChatCompletions, s, 9);
        assert_eq!(m.usage.unwrap().completion, 2);
        assert!(!m.done);
    }

    #[test]
    fn garbage_events_are_counted_and_skipped() {
        let s = "data: not json\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n";
        let mut m = meter(Operation::ChatCompletions, s, 4);
        assert_eq!(m.unreadable, 1);
        assert_eq!(m.estimated_completion(Encoding::O200kBase), 1);
    }

    /// A long answer: content chunks with `"usage":null`, optionally the usage chunk.
    fn long_chat(events: usize, with_usage: bool) -> String {
        let mut s = String::new();
        for i in 0..events {
            let text = match i % 4 {
                0 => " token\\n".to_string(),
                1 => format!(" w{i}"),
                2 => " caf\\u00e9".to_string(),
                _ => " \\\"quoted\\\"".to_string(),
            };
            s.push_str(&format!(
                "data: {{\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            ));
        }
        if with_usage {
            s.push_str("data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":77,\"total_tokens\":86}}\n\n");
        }
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn read(s: &str, step: usize, expect_usage: Option<usize>) -> (StreamMeter, Vec<EventInfo>) {
        let mut m = StreamMeter::new(Operation::ChatCompletions, 1 << 20);
        if let Some(cap) = expect_usage {
            m.expect_usage(cap);
        }
        let infos = s
            .as_bytes()
            .chunks(step)
            .map(|c| m.feed(c, Encoding::O200kBase))
            .collect();
        m.finish(Encoding::O200kBase);
        (m, infos)
    }

    #[test]
    fn texts_put_off_while_usage_is_expected_count_the_same() {
        for with_usage in [true, false] {
            let stream = long_chat(300, with_usage);
            let (mut plain, plain_infos) = read(&stream, stream.len(), None);
            let want = plain.estimated_completion(Encoding::O200kBase);
            assert!(want > 300, "{want}");
            for cap in [0, 100, 4096, 1 << 20] {
                for step in [1, 7, 64, 1000, stream.len()] {
                    let (mut m, infos) = read(&stream, step, Some(cap));
                    assert_eq!(m.usage, plain.usage, "cap {cap} step {step}");
                    assert_eq!(m.model, plain.model);
                    assert!(m.saw_content && m.done);
                    let merged = infos.into_iter().fold(EventInfo::default(), merge);
                    let plain_merged = plain_infos
                        .iter()
                        .copied()
                        .fold(EventInfo::default(), merge);
                    assert_eq!(merged, plain_merged, "cap {cap} step {step}");
                    let kept = m.deferred.as_ref().map_or(0, |d| d.data.len());
                    assert!(kept <= cap, "kept {kept} of at most {cap}");
                    assert_eq!(
                        m.estimated_completion(Encoding::O200kBase),
                        want,
                        "cap {cap} step {step} usage {with_usage}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_event_that_brings_no_usage_after_all_keeps_the_texts_in_order() {
        // The last chunk names usage but its object is empty: the estimate is needed, and
        // must read the texts in stream order (`sT.`, not `s.T`).
        let s = concat!(
            "data:{\"choices\":[{\"text\":\"s\"}],\"model\":\"t\"}\n\n",
            "data:{\"choices\":[{\"text\":\"T\"}],\"usage\":null}\n\n",
            "data:{\"choices\":[{\"text\":\".\"}],\"usage\":{}}\n\n",
        );
        let (mut plain, _) = read(s, s.len(), None);
        let (mut kept, _) = read(s, s.len(), Some(1 << 20));
        assert_eq!(kept.usage, None);
        assert_eq!(
            kept.estimated_completion(Encoding::O200kBase),
            plain.estimated_completion(Encoding::O200kBase)
        );
    }

    #[test]
    fn expected_usage_leaves_texts_unread_until_needed() {
        let stream = long_chat(50, true);
        let (m, infos) = read(&stream, stream.len(), Some(1 << 20));
        assert_eq!(m.usage.map(|u| u.completion), Some(77));
        // The first content was read (it times the first token), the rest was kept.
        assert_eq!(m.tallies.len(), 1);
        assert_eq!(m.deferred.as_ref().map(|d| d.ends.len()), Some(49));
        assert!(infos.iter().any(|i| i.terminal));
    }

    #[test]
    fn streams_that_never_name_usage_are_read_as_they_come() {
        let stream = long_chat(20, false).replace(",\"usage\":null", "");
        let (mut m, _) = read(&stream, 5, Some(1 << 20));
        assert!(m.deferred.is_none());
        let (mut plain, _) = read(&stream, 5, None);
        assert_eq!(
            m.estimated_completion(Encoding::O200kBase),
            plain.estimated_completion(Encoding::O200kBase)
        );
    }

    #[test]
    fn usage_values_are_never_put_off() {
        for (chunk, may) in [
            (r#"{"choices":[],"usage":null}"#, false),
            (r#"{"choices":[],"usage" : null }"#, false),
            (
                r#"{"choices":[{"delta":{"content":"usage"}}],"usage":null}"#,
                false,
            ),
            (
                r#"{"choices":[{"delta":{"content":"\"usage\": 1"}}]}"#,
                false,
            ),
            (r#"{"choices":[],"usage":{"prompt_tokens":1}}"#, true),
            (r#"{"choices":[],"usage" :{"prompt_tokens":1}}"#, true),
            (r#"{"choices":[],"\u0075sage":{"prompt_tokens":1}}"#, true),
            (r#"{"choices":[{"delta":{"content":"caf\u00e9"}}]}"#, false),
            (r#"{"choices":[],"usage":"#, true),
        ] {
            assert_eq!(may_carry_usage(chunk.as_bytes()), may, "{chunk}");
        }
    }
}
