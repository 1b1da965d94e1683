//! The one-pass chunk scanner ([`super::chunkscan`]) against its reference, serde
//! ([`super::meter::parts_from_serde`]): on usual chunks, on mutated ones and on generated ones,
//! it reads the same parts or leaves the chunk to serde.
use std::borrow::Cow;

use proptest::prelude::*;

use super::chunkscan::*;
use super::meter::parts_from_serde;

const SAMPLES: &[&str] = &[
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":" Hello \"world\"\n caf\u00e9 café 🎉"},"logprobs":{"content":[{"token":"x","logprob":-0.25,"bytes":[120],"top_logprobs":[]}]},"finish_reason":null}]}"#,
    r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":1}}}"#,
    r#"{"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}},{"index":1,"function":{"arguments":"{\"city\":"}}]}}]}"#,
    r#"{"choices":[{"index":1,"delta":{"refusal":"No.","reasoning_content":"think","reasoning":"more","function_call":{"name":"f","arguments":"{}"}}}]}"#,
    r#"{"choices":[{"text":"Once","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#,
    r#"  {"choices":[{"index":0,"delta":{"content":"a"}},{"index":2,"delta":{"content":"b"},"text":null}],"usage":{"total_tokens":-1}}  "#,
    r#"{"choices":null,"usage":{"prompt_tokens":1,"prompt_tokens":2},"x":[1,-2.5e+3,true,false,null,{"a":[]}]}"#,
];

#[test]
fn reads_the_usual_chunks_itself_and_as_serde_does() {
    for s in SAMPLES {
        let fast = read(s.as_bytes());
        assert!(fast.is_some(), "left to serde: {s}");
        assert_eq!(fast, parts_from_serde(s.as_bytes()), "{s}");
    }
    let tools = read(SAMPLES[3].as_bytes()).unwrap();
    assert_eq!(
        tools.texts,
        [
            (call_key(0, 0), Part::ToolName, Cow::Borrowed("get_weather")),
            (call_key(0, 0), Part::ToolArgs, Cow::Borrowed("")),
            (
                call_key(0, 1),
                Part::ToolArgs,
                Cow::Owned("{\"city\":".to_string())
            ),
        ]
    );
    let text = read(SAMPLES[1].as_bytes()).unwrap();
    assert_eq!(text.texts[0].2, " Hello \"world\"\n café café 🎉");
}

#[test]
fn leaves_what_serde_must_judge() {
    for s in [
        r#"{"model":"a","model":"b"}"#,
        r#"{"m\u006fdel":"a"}"#,
        r#"{"choices":[{"index":1.0}]}"#,
        r#"{"choices":[{"index":-1}]}"#,
        r#"{"choices":[{"index":null}]}"#,
        r#"{"choices":{}}"#,
        r#"{"model":5}"#,
        r#"["gpt-4o",[],null]"#,
        r#"{"a":01}"#,
        r#"{"a":[1,]}"#,
        r#"{"a":"x"} x"#,
        "{\"a\":\"tab\there\"}",
        r#"{"a":"\q"}"#,
        "",
    ] {
        assert_eq!(read(s.as_bytes()), None, "{s}");
    }
}

/// Bytes that matter to JSON, to mutate chunks with.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        prop::sample::select(b"{}[]\":,\\ 0123456789-+.eEnulltruefalsex\t\n".to_vec()),
        Just(0x01u8),
        Just(0xc3u8),
        Just(0xffu8),
        any::<u8>(),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, u8),
    Replace(usize, u8),
    Repeat(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
}

/// Values in chunk-like places, of every JSON type and some odd forms.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("0".to_string()),
        Just("7".to_string()),
        Just("-0.5e-3".to_string()),
        Just("18446744073709551616".to_string()),
        Just(r#""""#.to_string()),
        Just(r#""text""#.to_string()),
        Just(r#""esc\"aped\u00e9\n""#.to_string()),
        Just("\"caf\u{e9}\"".to_string()),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        let key = prop::sample::select(vec![
            "model",
            "choices",
            "usage",
            "index",
            "delta",
            "text",
            "content",
            "refusal",
            "reasoning",
            "reasoning_content",
            "tool_calls",
            "function_call",
            "function",
            "name",
            "arguments",
            "prompt_tokens",
            "total_tokens",
            "id",
            "x",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (key, inner, prop::sample::select(vec!["", " ", "\n"])),
                0..5
            )
            .prop_map(|v| {
                let fields: Vec<String> = v
                    .into_iter()
                    .map(|(k, v, w)| format!("{w}\"{k}\":{w}{v}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

fn check(data: &[u8]) -> Result<(), TestCaseError> {
    if let Some(fast) = read(data) {
        prop_assert_eq!(
            Some(fast),
            parts_from_serde(data),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_chunks_read_as_serde_reads_them(
        sample in prop::sample::select(SAMPLES.to_vec()),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut data = sample.as_bytes().to_vec();
        for e in edits {
            let n = data.len().max(1);
            match e {
                Edit::Delete(i) => { if !data.is_empty() { data.remove(i % n); } }
                Edit::Insert(i, b) => data.insert(i % (data.len() + 1), b),
                Edit::Replace(i, b) => { if !data.is_empty() { data[i % n] = b; } }
                Edit::Repeat(i, len) => {
                    let start = i % n;
                    let end = (start + len).min(data.len());
                    let piece = data[start..end].to_vec();
                    data.splice(end..end, piece);
                }
            }
        }
        check(&data)?;
    }

    #[test]
    fn generated_chunks_read_as_serde_reads_them(v in value()) {
        check(v.as_bytes())?;
    }
}
