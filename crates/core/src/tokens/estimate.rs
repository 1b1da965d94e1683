//! Token estimates for exchanges whose provider reported no usage.
//!
//! Prompts follow OpenAI's published accounting (the "How to count tokens with tiktoken"
//! cookbook): 3 tokens per message, the tokens of its role, content and name (a name adds
//! 1 more), 3 to prime the reply; function/tool definitions by the cookbook's per-function
//! and per-property constants. Completion prompts and embeddings inputs are counted as
//! text (token-id arrays by their length). Images are counted at the low-detail base of 85
//! tokens each, a floor: their real cost depends on a size the gateway does not see.
//!
//! Completions are the streamed text itself, kept per choice and tool call in
//! [`TextTally`]s, which hand text to the tokenizer in segments once it exceeds a bound so
//! memory stays flat however long the stream.

use serde_json::Value;

use crate::openai::api::Operation;
use crate::tokens::tokenizer::{self, Encoding};

/// Text kept per tally before it is counted and dropped.
pub const TALLY_BYTES: usize = 16 * 1024;
/// Tokens charged per image in a prompt (OpenAI's low-detail base).
pub const IMAGE_TOKENS: u64 = 85;

/// Prompt tokens of a request body.
pub fn prompt_tokens(op: Operation, request: &Value, enc: Encoding) -> u64 {
    match op {
        Operation::ChatCompletions => {
            let mut n = messages_tokens(request.get("messages"), enc);
            n += tools_tokens(request.get("tools"), enc);
            n += tools_tokens(request.get("functions"), enc);
            n
        }
        Operation::Completions => input_tokens(request.get("prompt"), enc),
        Operation::Embeddings => input_tokens(request.get("input"), enc),
        Operation::Responses => {
            let mut messages = Vec::new();
            if let Some(i) = request.get("instructions").and_then(Value::as_str) {
                messages.push(serde_json::json!({"role": "developer", "content": i}));
            }
            match request.get("input") {
                Some(Value::String(s)) => {
                    messages.push(serde_json::json!({"role": "user", "content": s}))
                }
                Some(Value::Array(items)) => messages.extend(items.iter().map(response_item)),
                _ => {}
            }
            messages_tokens(Some(&Value::Array(messages)), enc)
                + tools_tokens(request.get("tools"), enc)
        }
    }
}

/// A Responses API input item as a chat-style message.
fn response_item(item: &Value) -> Value {
    match item.get("type").and_then(Value::as_str) {
        Some("function_call") => serde_json::json!({"role": "assistant", "tool_calls": [
            {"function": {"name": item.get("name"), "arguments": item.get("arguments")}}]}),
        Some("function_call_output") => {
            serde_json::json!({"role": "tool", "content": item.get("output")})
        }
        _ => serde_json::json!({
            "role": item.get("role").and_then(Value::as_str).unwrap_or("user"),
            "content": item.get("content").cloned().unwrap_or(Value::Null)
        }),
    }
}

fn messages_tokens(messages: Option<&Value>, enc: Encoding) -> u64 {
    let Some(Value::Array(messages)) = messages else {
        return 0;
    };
    let mut n = 0;
    for m in messages {
        n += 3;
        n += str_tokens(m.get("role"), enc);
        n += content_tokens(m.get("content"), enc);
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            n += enc.count(name) + 1;
        }
        let calls = m
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("function"))
            .chain(m.get("function_call"));
        for f in calls {
            n += str_tokens(f.get("name"), enc) + str_tokens(f.get("arguments"), enc) + 1;
        }
    }
    n + 3
}

fn str_tokens(v: Option<&Value>, enc: Encoding) -> u64 {
    v.and_then(Value::as_str).map_or(0, |s| enc.count(s))
}

fn content_tokens(content: Option<&Value>, enc: Encoding) -> u64 {
    match content {
        Some(Value::String(s)) => enc.count(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("image_url" | "input_image" | "image") => IMAGE_TOKENS,
                _ => str_tokens(p.get("text"), enc),
            })
            .sum(),
        _ => 0,
    }
}

fn input_tokens(input: Option<&Value>, enc: Encoding) -> u64 {
    match input {
        Some(Value::String(s)) => enc.count(s),
        Some(Value::Array(items)) => match items.first() {
            // One prompt given as token ids.
            Some(Value::Number(_)) => items.len() as u64,
            _ => items.iter().map(|i| input_tokens(Some(i), enc)).sum(),
        },
        _ => 0,
    }
}

/// The cookbook's per-function constants: (function start, properties start, per
/// property, enum start, per enum item, end of all functions).
fn tool_constants(enc: Encoding) -> (i64, i64, i64, i64, i64, i64) {
    match enc {
        Encoding::O200kBase => (7, 3, 3, -3, 3, 12),
        Encoding::Cl100kBase => (10, 3, 3, -3, 3, 12),
    }
}

fn tools_tokens(tools: Option<&Value>, enc: Encoding) -> u64 {
    let Some(Value::Array(tools)) = tools else {
        return 0;
    };
    if tools.is_empty() {
        return 0;
    }
    let (func_init, prop_init, prop_key, enum_init, enum_item, func_end) = tool_constants(enc);
    fn s(v: Option<&Value>) -> &str {
        v.and_then(Value::as_str).unwrap_or("")
    }
    let mut n: i64 = 0;
    for tool in tools {
        // Chat tools wrap the function; Responses tools and legacy functions do not.
        let f = tool.get("function").unwrap_or(tool);
        n += func_init;
        let desc = s(f.get("description"));
        let line = format!(
            "{}:{}",
            s(f.get("name")),
            desc.strip_suffix('.').unwrap_or(desc)
        );
        n += enc.count(&line) as i64;
        let props = f
            .get("parameters")
            .and_then(|p| p.get("properties"))
            .and_then(Value::as_object);
        if let Some(props) = props.filter(|p| !p.is_empty()) {
            n += prop_init;
            for (key, p) in props {
                n += prop_key;
                if let Some(items) = p.get("enum").and_then(Value::as_array) {
                    n += enum_init;
                    for item in items {
                        n += enum_item;
                        n += match item {
                            Value::String(s) => enc.count(s),
                            other => enc.count(&other.to_string()),
                        } as i64;
                    }
                }
                let desc = s(p.get("description"));
                let line = format!(
                    "{key}:{}:{}",
                    s(p.get("type")),
                    desc.strip_suffix('.').unwrap_or(desc)
                );
                n += enc.count(&line) as i64;
            }
        }
    }
    n += func_end;
    u64::try_from(n).unwrap_or(0)
}

/// Completion tokens of a JSON response that carried no usage.
pub fn response_text_tokens(op: Operation, response: &Value, enc: Encoding) -> u64 {
    let mut tally = TextTally::default();
    let push = |t: &mut TextTally, v: Option<&Value>| {
        if let Some(s) = v.and_then(Value::as_str) {
            t.push(s, enc);
            t.close(enc);
        }
    };
    let mut n = 0;
    match op {
        Operation::ChatCompletions | Operation::Completions => {
            for c in response
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                push(&mut tally, c.get("text"));
                if let Some(m) = c.get("message") {
                    push(&mut tally, m.get("content"));
                    push(&mut tally, m.get("refusal"));
                    for call in m
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        push(&mut tally, call.get("function").and_then(|f| f.get("name")));
                        push(
                            &mut tally,
                            call.get("function").and_then(|f| f.get("arguments")),
                        );
                    }
                }
            }
        }
        Operation::Responses => {
            for item in response
                .get("output")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                push(&mut tally, item.get("name"));
                push(&mut tally, item.get("arguments"));
                for part in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(&mut tally, part.get("text"));
                    push(&mut tally, part.get("refusal"));
                }
            }
        }
        Operation::Embeddings => n = 0,
    }
    n + tally.tokens()
}

/// Streamed text being counted: kept up to [`TALLY_BYTES`], then counted in segments.
#[derive(Debug, Default)]
pub struct TextTally {
    pending: String,
    counted: u64,
}

impl TextTally {
    pub fn push(&mut self, text: &str, enc: Encoding) {
        self.pending.push_str(text);
        if self.pending.len() > TALLY_BYTES {
            let cut = tokenizer::safe_cut(&self.pending, TALLY_BYTES);
            let cut = if cut == 0 { self.pending.len() } else { cut };
            if let Some(head) = self.pending.get(..cut) {
                self.counted += enc.count(head);
            }
            self.pending.drain(..cut);
        }
    }

    /// Counts what is pending (the end of one text).
    pub fn close(&mut self, enc: Encoding) {
        if !self.pending.is_empty() {
            self.counted += enc.count(&self.pending);
            self.pending.clear();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.counted == 0
    }

    /// Tokens counted so far (after [`TextTally::close`], all of them).
    pub fn tokens(&self) -> u64 {
        self.counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The example conversation of OpenAI's token-counting cookbook. The API reported 129
    /// prompt tokens for it with gpt-3.5-turbo and gpt-4 (cl100k_base), 124 with gpt-4o and
    /// gpt-4o-mini (o200k_base).
    fn cookbook_messages() -> Value {
        json!({"messages": [
            {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
            {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
            {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
            {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
            {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
            {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}
        ]})
    }

    #[test]
    fn chat_prompts_match_the_api_counts_of_the_cookbook() {
        let req = cookbook_messages();
        assert_eq!(
            prompt_tokens(Operation::ChatCompletions, &req, Encoding::Cl100kBase),
            129
        );
        assert_eq!(
            prompt_tokens(Operation::ChatCompletions, &req, Encoding::O200kBase),
            124
        );
    }

    #[test]
    fn simple_prompts() {
        let req = json!({"messages": [{"role": "user", "content": "Hello"}]});
        // 3 + "user" (1) + "Hello" (1) + 3
        assert_eq!(
            prompt_tokens(Operation::ChatCompletions, &req, Encoding::O200kBase),
            8
        );
        let parts = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hello"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        assert_eq!(
            prompt_tokens(Operation::ChatCompletions, &parts, Encoding::O200kBase),
            8 + IMAGE_TOKENS
        );
        let comp = json!({"prompt": "hello world"});
        assert_eq!(
            prompt_tokens(Operation::Completions, &comp, Encoding::Cl100kBase),
            2
        );
        let emb = json!({"input": ["hello world", "hello"]});
        assert_eq!(
            prompt_tokens(Operation::Embeddings, &emb, Encoding::Cl100kBase),
            3
        );
        let ids = json!({"input": [15339, 1917, 0]});
        assert_eq!(
            prompt_tokens(Operation::Embeddings, &ids, Encoding::Cl100kBase),
            3
        );
        let resp = json!({"input": "Hello"});
        assert_eq!(
            prompt_tokens(Operation::Responses, &resp, Encoding::O200kBase),
            8
        );
    }

    #[test]
    fn tools_follow_the_cookbook_constants() {
        let tools = json!({"messages": [], "tools": [{"type": "function", "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location.",
            "parameters": {"type": "object", "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "description": "The unit of temperature to return", "enum": ["celsius", "fahrenheit"]}},
                "required": ["location"]}}}]});
        let enc = Encoding::O200kBase;
        let expected = 3 // priming with no messages
            + 7 + enc.count("get_current_weather:Get the current weather in a given location")
            + 3
            + 3 + enc.count("location:string:The city and state, e.g. San Francisco, CA")
            + 3
            - 3
            + 3
            + enc.count("celsius")
            + 3
            + enc.count("fahrenheit")
            + enc.count("unit:string:The unit of temperature to return")
            + 12;
        assert_eq!(
            prompt_tokens(Operation::ChatCompletions, &tools, enc),
            expected
        );
    }

    #[test]
    fn tallies_count_long_text_exactly_with_bounded_memory() {
        let text = "Streaming answers arrive a few words at a time, like this one. ".repeat(2000);
        let mut t = TextTally::default();
        for piece in text.split_inclusive(' ') {
            t.push(piece, Encoding::O200kBase);
            assert!(t.pending.len() <= TALLY_BYTES + 64);
        }
        t.close(Encoding::O200kBase);
        assert_eq!(t.tokens(), Encoding::O200kBase.count(&text));
    }

    #[test]
    fn json_responses_without_usage() {
        let chat = json!({"choices": [{"message": {"content": "hello world"}}]});
        assert_eq!(
            response_text_tokens(Operation::ChatCompletions, &chat, Encoding::Cl100kBase),
            2
        );
        let resp = json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "hello world"}]}]});
        assert_eq!(
            response_text_tokens(Operation::Responses, &resp, Encoding::Cl100kBase),
            2
        );
    }
}
