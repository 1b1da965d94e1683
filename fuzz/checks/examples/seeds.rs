//! Writes the fuzz campaign's seed inputs, one folder per target, into the folder given as
//! argument (`make fuzz-seeds` writes them into `fuzz/corpus/`): the recorded wire data of
//! `tests/data/`, compressed three ways for the decoder, and a few request bodies for
//! usage injection.

#![allow(clippy::expect_used)]

use std::io::Write;
use std::path::Path;

const DATA: &[(&str, &[u8])] = &[
    ("chat.json", include_bytes!("../../../tests/data/chat.json")),
    (
        "azure-chat.json",
        include_bytes!("../../../tests/data/azure-chat.json"),
    ),
    (
        "embeddings.json",
        include_bytes!("../../../tests/data/embeddings.json"),
    ),
    (
        "completions.json",
        include_bytes!("../../../tests/data/completions.json"),
    ),
    (
        "responses.json",
        include_bytes!("../../../tests/data/responses.json"),
    ),
    (
        "error-429.json",
        include_bytes!("../../../tests/data/error-429.json"),
    ),
];

const STREAMS: &[(&str, &[u8])] = &[
    (
        "chat-stream-usage.sse",
        include_bytes!("../../../tests/data/chat-stream-usage.sse"),
    ),
    (
        "chat-stream.sse",
        include_bytes!("../../../tests/data/chat-stream.sse"),
    ),
    (
        "chat-tools-stream-usage.sse",
        include_bytes!("../../../tests/data/chat-tools-stream-usage.sse"),
    ),
    (
        "chat-tools-stream.sse",
        include_bytes!("../../../tests/data/chat-tools-stream.sse"),
    ),
    (
        "completions-stream-usage.sse",
        include_bytes!("../../../tests/data/completions-stream-usage.sse"),
    ),
    (
        "completions-stream.sse",
        include_bytes!("../../../tests/data/completions-stream.sse"),
    ),
    (
        "responses-stream.sse",
        include_bytes!("../../../tests/data/responses-stream.sse"),
    ),
];

/// Streams in the forms the editor must handle: usage on the last content chunk, spaces,
/// usage first, CR and CRLF framing, a usage-only chunk without choices.
const EDITS: &[(&str, &str)] = &[
    (
        "usage-last-chunk.sse",
        "data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\ndata: [DONE]\n\n",
    ),
    (
        "usage-spaces.sse",
        "data: {\"id\": \"c1\", \"choices\": [{\"delta\": {\"content\": \"x\"}}], \"usage\": null}\r\n\r\ndata: {\"choices\": [ ], \"usage\": {\"total_tokens\": 2}}\r\n\r\n",
    ),
    (
        "usage-first.sse",
        "data: { \"usage\" : null , \"choices\": [{\"delta\": {}}] }\r\rdata: {\"id\":\"c1\",\"usage\":{\"total_tokens\":2}}\r\r",
    ),
    (
        "usage-nested.sse",
        "event: x\ndata: {\"choices\":[{\"delta\":{\"content\":\"say ,\\\"usage\\\":null\",\"usage\":null}}]}\n: comment\ndata: {\"choices\":[],\"prompt_filter_results\":[{\"prompt_index\":0}]}\n\n",
    ),
];

/// Request bodies: streamed or not, with and without stream options.
const REQUESTS: &[(&str, &str)] = &[
    (
        "chat-stream.json",
        r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Say hi"}]}"#,
    ),
    (
        "chat-stream-options.json",
        r#"{ "model": "gpt-4o", "stream": true, "stream_options": {"include_obfuscation": false, "include_usage": false}, "messages": [] }"#,
    ),
    (
        "chat-stream-null-options.json",
        r#"{"stream":true,"stream_options":null,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#,
    ),
    (
        "chat-stream-usage-asked.json",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#,
    ),
    (
        "chat-no-stream.json",
        r#"{"model":"gpt-4o","stream":false,"messages":[{"role":"user","content":"Hi"}]}"#,
    ),
    (
        "completions-stream.json",
        "{\n  \"model\": \"gpt-3.5-turbo-instruct\",\n  \"prompt\": [\"Say\", \"this\"],\n  \"max_tokens\": 7,\n  \"stream\": true\n}\n",
    ),
    (
        "responses-stream.json",
        r#"{"model":"gpt-4.1","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}],"stream":true}"#,
    ),
    (
        "escaped-keys.json",
        r#"{"str\u0065am":true,"model":"m\u00e9","x":{"stream_options":1}}"#,
    ),
];

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).expect("a writable corpus folder");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a writable seed");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("compressed in memory");
    e.finish().expect("compressed in memory")
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("compressed in memory");
    e.finish().expect("compressed in memory")
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("compressed in memory");
    e.finish().expect("compressed in memory")
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: seeds DIR (the corpus folder, with one folder per target)");
    let dir = Path::new(&dir);
    for (name, body) in DATA {
        write(dir, "usage", name, body);
        for target in ["request_usage", "request_usage_lenient"] {
            write(dir, target, name, body);
        }
    }
    for (name, body) in REQUESTS {
        for target in ["request_usage", "request_usage_lenient"] {
            write(dir, target, name, body.as_bytes());
        }
    }
    for (name, stream) in STREAMS {
        for target in [
            "stream_editor",
            "stream_editor_lenient",
            "stream_meter",
            "stream_meter_estimate",
            "stream_meter_event_limit",
        ] {
            write(dir, target, name, stream);
        }
    }
    for (name, stream) in EDITS {
        write(dir, "stream_editor", name, stream.as_bytes());
        write(dir, "stream_editor_lenient", name, stream.as_bytes());
        write(dir, "stream_meter", name, stream.as_bytes());
    }
    for target in ["decode", "decode_lenient"] {
        for (name, body) in DATA.iter().chain(STREAMS).take(8) {
            write(dir, target, &format!("{name}.gz"), &gzip(body));
            write(dir, target, &format!("{name}.zlib"), &zlib(body));
            write(dir, target, &format!("{name}.deflate"), &raw_deflate(body));
        }
        if let Some((_, stream)) = STREAMS.first() {
            write(dir, target, "plain.sse", stream);
        }
    }
}
