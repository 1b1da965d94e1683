//! The traffic the benchmark sends: requests as clients write them and the canned answers
//! of an OpenAI-style upstream, byte for byte as OpenAI's API shapes them.
//!
//! The upstream cannot read requests (it answers from `direct_response` routes), so each
//! request names the canned answer it wants in the [`REPLY_HEADER`] header.

/// The request header that picks the upstream's canned answer.
pub const REPLY_HEADER: &str = "x-bench-reply";

/// The path every request goes to.
pub const PATH: &str = "/v1/chat/completions";

/// The canned answers the upstream serves, by the value of [`REPLY_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A `chat.completion` JSON object with usage.
    Json,
    /// An event stream as OpenAI sends it when the request set
    /// `stream_options.include_usage`: `"usage":null` on every chunk, then a usage-only chunk.
    StreamWithUsage,
    /// An event stream without usage, as sent when the request did not ask for it.
    StreamWithoutUsage,
}

impl Reply {
    pub const ALL: [Reply; 3] = [
        Reply::Json,
        Reply::StreamWithUsage,
        Reply::StreamWithoutUsage,
    ];

    pub fn header_value(self) -> &'static str {
        match self {
            Reply::Json => "json",
            Reply::StreamWithUsage => "sse-usage",
            Reply::StreamWithoutUsage => "sse-plain",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Reply::Json => "application/json",
            _ => "text/event-stream",
        }
    }

    pub fn body(self) -> String {
        match self {
            Reply::Json => json_completion(),
            Reply::StreamWithUsage => event_stream(ANSWER, true).concat(),
            Reply::StreamWithoutUsage => event_stream(ANSWER, false).concat(),
        }
    }
}

/// The request header that sends a request to the trickling upstream
/// ([`TRICKLE_VALUE`]) instead of the canned one.
pub const UPSTREAM_HEADER: &str = "x-bench-upstream";
pub const TRICKLE_VALUE: &str = "trickle";

/// One row of the report: what the client sends and what the upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A chat completion answered as JSON with usage.
    Json,
    /// A stream whose client asked for usage itself: the filter reads it, edits nothing.
    StreamUsage,
    /// A stream whose client did not ask for usage: tokenmeter adds the request and takes
    /// the usage back out of the response (the editing path).
    StreamInjected,
    /// A stream whose upstream reports no usage although the client asked (as some
    /// OpenAI-compatible servers do): tokenmeter counts the tokens itself.
    StreamEstimated,
    /// Streams with usage (the client asks) of 50, 300 and 2,000 tokens, one event per
    /// write, as a provider sends them: the per-chunk cost.
    Trickle50,
    Trickle300,
    Trickle2000,
    /// A 300-token trickled stream without usage: tokenmeter estimates.
    Trickle300Estimated,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Json,
        Kind::StreamUsage,
        Kind::StreamInjected,
        Kind::StreamEstimated,
        Kind::Trickle50,
        Kind::Trickle300,
        Kind::Trickle2000,
        Kind::Trickle300Estimated,
    ];

    /// Short name, used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::StreamUsage => "sse-usage",
            Kind::StreamInjected => "sse-injected",
            Kind::StreamEstimated => "sse-estimated",
            Kind::Trickle50 => "trickle-50",
            Kind::Trickle300 => "trickle-300",
            Kind::Trickle2000 => "trickle-2000",
            Kind::Trickle300Estimated => "trickle-300-estimated",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What the report calls it.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Json => "JSON with usage",
            Kind::StreamUsage => "SSE with usage (client asks)",
            Kind::StreamInjected => "SSE with usage (tokenmeter asks)",
            Kind::StreamEstimated => "SSE without usage (estimated)",
            Kind::Trickle50 => "trickled SSE with usage, 50 tokens",
            Kind::Trickle300 => "trickled SSE with usage, 300 tokens",
            Kind::Trickle2000 => "trickled SSE with usage, 2,000 tokens",
            Kind::Trickle300Estimated => "trickled SSE without usage (estimated), 300 tokens",
        }
    }

    /// For trickled kinds, the answer's tokens and whether the upstream reports usage.
    pub fn trickled(self) -> Option<(usize, bool)> {
        match self {
            Kind::Trickle50 => Some((50, true)),
            Kind::Trickle300 => Some((300, true)),
            Kind::Trickle2000 => Some((2000, true)),
            Kind::Trickle300Estimated => Some((300, false)),
            _ => None,
        }
    }

    /// The canned upstream's answer; `None` for the trickled kinds.
    pub fn reply(self) -> Option<Reply> {
        match self {
            Kind::Json => Some(Reply::Json),
            Kind::StreamUsage | Kind::StreamInjected => Some(Reply::StreamWithUsage),
            Kind::StreamEstimated => Some(Reply::StreamWithoutUsage),
            _ => None,
        }
    }

    /// The value of [`REPLY_HEADER`] that picks this kind's answer.
    pub fn reply_value(self) -> &'static str {
        self.reply().map_or(self.name(), Reply::header_value)
    }

    /// The headers that pick this kind's upstream and answer.
    pub fn headers(self) -> Vec<(&'static str, &'static str)> {
        let mut h = vec![("content-type", "application/json")];
        if self.reply().is_none() {
            h.push((UPSTREAM_HEADER, TRICKLE_VALUE));
        }
        h.push((REPLY_HEADER, self.reply_value()));
        h
    }

    /// The answer's `content-type`.
    pub fn content_type(self) -> &'static str {
        self.reply()
            .map_or("text/event-stream; charset=utf-8", Reply::content_type)
    }

    /// The answer as the gateway receives it: the canned answer whole, a trickled stream
    /// one event at a time.
    pub fn response_pieces(self) -> Vec<String> {
        match self.reply() {
            Some(reply) => vec![reply.body()],
            None => trickled_events(self.name()).unwrap_or_default(),
        }
    }

    /// The `total_tokens` the upstream reports for this kind (`None`: it reports none).
    pub fn reported_total_tokens(self) -> Option<u32> {
        match (self.reply(), self.trickled()) {
            (Some(Reply::StreamWithoutUsage), _) | (None, Some((_, false))) => None,
            (Some(_), _) => Some(REPORTED_TOTAL_TOKENS),
            (None, Some((tokens, true))) => Some(PROMPT_TOKENS + tokens as u32),
            (None, None) => None,
        }
    }

    /// How many events the answer's stream has (1 for JSON).
    pub fn events(self) -> usize {
        match (self.reply(), self.trickled()) {
            (Some(reply), _) => reply.body().matches("\n\n").count().max(1),
            (None, Some((tokens, usage))) => tokens + 3 + usize::from(usage),
            (None, None) => 1,
        }
    }

    /// The request body the client sends.
    pub fn request_body(self) -> String {
        let stream = match self {
            Kind::Json => "",
            Kind::StreamInjected => r#","stream":true"#,
            _ => r#","stream":true,"stream_options":{"include_usage":true}"#,
        };
        let max_tokens = self.trickled().map_or(256, |(tokens, _)| tokens + 56);
        format!(
            r#"{{"model":"gpt-4o","messages":[{{"role":"system","content":"{SYSTEM}"}},{{"role":"user","content":"{QUESTION}"}}],"temperature":0.2,"max_tokens":{max_tokens}{stream}}}"#
        )
    }
}

/// The trickling upstream's answer for the value of [`REPLY_HEADER`]: the events of a
/// trickled kind's stream.
pub fn trickled_events(choice: &str) -> Option<Vec<String>> {
    let (tokens, usage) = Kind::parse(choice)?.trickled()?;
    let answer: Vec<&str> = ANSWER.iter().copied().cycle().take(tokens).collect();
    Some(event_stream(&answer, usage))
}

const SYSTEM: &str = "You are a concise assistant for platform engineers. Answer in plain prose.";
const QUESTION: &str = "What does an API gateway do with the requests it forwards to an LLM provider, and why would an operator meter tokens there rather than in each application?";

/// The assistant's answer, as the pieces a stream delivers (about one token each).
const ANSWER: &[&str] = &[
    "A",
    " gateway",
    " sits",
    " between",
    " applications",
    " and",
    " the",
    " provider",
    ":",
    " it",
    " authenticates",
    " callers",
    ",",
    " routes",
    " each",
    " request",
    " to",
    " a",
    " backend",
    ",",
    " applies",
    " rate",
    " limits",
    " and",
    " retries",
    ",",
    " and",
    " records",
    " what",
    " passed",
    " through",
    ".",
    " Metering",
    " tokens",
    " there",
    " gives",
    " one",
    " consistent",
    " count",
    " for",
    " every",
    " team",
    " and",
    " model",
    ",",
    " without",
    " changing",
    " a",
    " single",
    " application",
    ".",
];

const PROMPT_TOKENS: u32 = 61;
const COMPLETION_TOKENS: u32 = ANSWER.len() as u32;
/// The `total_tokens` every canned answer with usage reports.
pub const REPORTED_TOTAL_TOKENS: u32 = PROMPT_TOKENS + COMPLETION_TOKENS;

const ID: &str = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT";
const CREATED: u64 = 1_741_570_283;
const MODEL: &str = "gpt-4o-2024-08-06";
const FINGERPRINT: &str = "fp_eb9dce56a8";

fn usage_json(completion_tokens: u32) -> String {
    format!(
        r#"{{"prompt_tokens":{PROMPT_TOKENS},"completion_tokens":{completion_tokens},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#,
        PROMPT_TOKENS + completion_tokens
    )
}

fn json_completion() -> String {
    let content: String = ANSWER.concat();
    format!(
        r#"{{"id":"{ID}","object":"chat.completion","created":{CREATED},"model":"{MODEL}","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{},"service_tier":"default","system_fingerprint":"{FINGERPRINT}"}}"#,
        usage_json(COMPLETION_TOKENS)
    )
}

/// A stream's events, each ending in its blank line: a role chunk, one chunk per piece of
/// `answer`, a finish chunk, with usage a usage-only chunk, and `[DONE]`.
fn event_stream(answer: &[&str], with_usage: bool) -> Vec<String> {
    let usage_null = if with_usage { r#","usage":null"# } else { "" };
    let chunk = |choice: &str| {
        format!(
            "data: {{\"id\":\"{ID}\",\"object\":\"chat.completion.chunk\",\"created\":{CREATED},\"model\":\"{MODEL}\",\"service_tier\":\"default\",\"system_fingerprint\":\"{FINGERPRINT}\",\"choices\":[{choice}]{usage_null}}}\n\n"
        )
    };
    let mut out = vec![chunk(
        r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#,
    )];
    for piece in answer {
        out.push(chunk(&format!(
            r#"{{"index":0,"delta":{{"content":"{piece}"}},"logprobs":null,"finish_reason":null}}"#
        )));
    }
    out.push(chunk(
        r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#,
    ));
    if with_usage {
        out.push(format!(
            "data: {{\"id\":\"{ID}\",\"object\":\"chat.completion.chunk\",\"created\":{CREATED},\"model\":\"{MODEL}\",\"service_tier\":\"default\",\"system_fingerprint\":\"{FINGERPRINT}\",\"choices\":[],\"usage\":{}}}\n\n",
            usage_json(answer.len() as u32)
        ));
    }
    out.push("data: [DONE]\n\n".to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_are_json_and_ask_as_described() {
        for kind in Kind::ALL {
            let body: serde_json::Value = serde_json::from_str(&kind.request_body()).unwrap();
            let stream = body["stream"].as_bool().unwrap_or(false);
            let asks = body["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false);
            match kind {
                Kind::Json => assert!(!stream),
                Kind::StreamInjected => assert!(stream && !asks),
                _ => assert!(stream && asks),
            }
        }
    }

    #[test]
    fn canned_answers_are_well_formed() {
        let json: serde_json::Value = serde_json::from_str(&Reply::Json.body()).unwrap();
        assert_eq!(json["usage"]["completion_tokens"], COMPLETION_TOKENS);
        for (reply, usage_chunks) in [(Reply::StreamWithUsage, 1), (Reply::StreamWithoutUsage, 0)] {
            let body = reply.body();
            let events: Vec<&str> = body
                .split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|e| e.strip_prefix("data: ").unwrap())
                .collect();
            assert_eq!(events.last(), Some(&"[DONE]"));
            let mut with_usage = 0;
            for e in &events[..events.len() - 1] {
                let v: serde_json::Value = serde_json::from_str(e).unwrap();
                with_usage += usize::from(v["usage"].is_object());
            }
            assert_eq!(with_usage, usage_chunks, "{reply:?}");
            assert_eq!(events.len(), ANSWER.len() + 3 + usage_chunks);
        }
    }

    #[test]
    fn trickled_answers_have_their_length_and_usage() {
        for kind in Kind::ALL {
            let Some((tokens, usage)) = kind.trickled() else {
                assert!(trickled_events(kind.name()).is_none());
                assert_eq!(
                    kind.events(),
                    kind.reply().unwrap().body().matches("\n\n").count().max(1)
                );
                continue;
            };
            let events = trickled_events(kind.name()).unwrap();
            assert_eq!(events.len(), kind.events(), "{kind:?}");
            assert!(events
                .iter()
                .all(|e| e.starts_with("data: ") && e.ends_with("\n\n")));
            let usage_chunk = events.iter().find(|e| e.contains(r#""usage":{"#));
            assert_eq!(usage_chunk.is_some(), usage, "{kind:?}");
            if let Some(u) = usage_chunk {
                assert!(
                    u.contains(&format!(r#""completion_tokens":{tokens},"#)),
                    "{u}"
                );
            }
            assert!(kind.headers().contains(&(UPSTREAM_HEADER, TRICKLE_VALUE)));
        }
        assert!(trickled_events("json").is_none());
        assert!(trickled_events("nonsense").is_none());
    }
}
