//! Finding top-level fields in a JSON body of which only the two ends were kept.
//!
//! serde_json needs a whole document; a body larger than the capture limit is kept only as
//! its first and last few KiB (see [`crate::body::capture`]). From the head, a small tokenizer
//! follows nesting exactly, so only top-level keys match. In the tail the nesting depth is
//! unknown, so a key matches where it stands in key position (after `{` or `,`, before `:`);
//! the last such occurrence wins, which is where OpenAI-style bodies put `usage` and, in
//! embeddings, `model`. Inside a JSON string every quote is escaped, so text that merely
//! mentions a key never matches.

use serde::de::DeserializeOwned;

/// Reads the value of top-level `key` from the start of a document.
pub fn field_in_head<T: DeserializeOwned>(head: &[u8], key: &str) -> Option<T> {
    let at = top_level_value_offset(head, key.as_bytes())?;
    first_value(head.get(at..)?)
}

/// The byte range of the value of top-level `key` in a whole document.
pub fn top_level_value_span(doc: &[u8], key: &str) -> Option<(usize, usize)> {
    let start = skip_ws(doc, top_level_value_offset(doc, key.as_bytes())?);
    let mut values = serde_json::Deserializer::from_slice(doc.get(start..)?)
        .into_iter::<serde::de::IgnoredAny>();
    values.next()?.ok()?;
    Some((start, start + values.byte_offset()))
}

/// Reads the value of the last `key` in key position within the end of a document.
pub fn field_in_tail<T: DeserializeOwned>(tail: &[u8], key: &str) -> Option<T> {
    let key = key.as_bytes();
    let mut end = tail.len();
    while let Some(quote) = rfind_quoted(tail.get(..end)?, key) {
        end = quote;
        let before = tail
            .get(..quote)?
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace());
        if !matches!(before, Some(b'{') | Some(b',')) {
            continue;
        }
        let after_key = quote + key.len() + 2;
        let colon = skip_ws(tail, after_key);
        if tail.get(colon) != Some(&b':') {
            continue;
        }
        if let Some(v) = tail.get(colon + 1..).and_then(first_value) {
            return Some(v);
        }
    }
    None
}

/// Parses the first JSON value in `bytes`, ignoring what follows it.
fn first_value<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<T>()
        .next()?
        .ok()
}

/// The offset of the first byte at or after `at` that is not whitespace.
pub(crate) fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// Offset of the last `"key"` in `hay`, pointing at its opening quote.
fn rfind_quoted(hay: &[u8], key: &[u8]) -> Option<usize> {
    let n = key.len() + 2;
    if hay.len() < n {
        return None;
    }
    (0..=hay.len() - n).rev().find(|&i| {
        hay.get(i) == Some(&b'"')
            && hay.get(i + 1..i + 1 + key.len()) == Some(key)
            && hay.get(i + 1 + key.len()) == Some(&b'"')
    })
}

/// Offset just after the `:` of top-level `key` in a document's head, following nesting.
fn top_level_value_offset(doc: &[u8], key: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0usize;
    // At depth 1, whether the next string is an object key.
    let mut expect_key = false;
    while let Some(&b) = doc.get(i) {
        match b {
            b'{' | b'[' => {
                depth += 1;
                expect_key = b == b'{' && depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            b'"' => {
                let end = string_end(doc, i)?;
                if depth == 1 && expect_key {
                    expect_key = false;
                    let name = doc.get(i + 1..end)?;
                    let colon = skip_ws(doc, end + 1);
                    if name == key && doc.get(colon) == Some(&b':') {
                        return Some(colon + 1);
                    }
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Offset of the quote closing the string opened at `open`.
fn string_end(doc: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        match doc.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn head_finds_only_top_level_keys() {
        let doc = br#"{"messages":[{"role":"user","model":"inner","content":"\"model\": \"fake\""}],"model" : "gpt-4o","user":"u1""#;
        assert_eq!(
            field_in_head::<String>(doc, "model").as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(field_in_head::<String>(doc, "user").as_deref(), Some("u1"));
        assert_eq!(field_in_head::<String>(doc, "role"), None);
    }

    #[test]
    fn head_tolerates_a_truncated_document() {
        let doc = br#"{"model":"gpt-4o","input":["aaaa"#;
        assert_eq!(
            field_in_head::<String>(doc, "model").as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(field_in_head::<String>(doc, "user"), None);
        assert_eq!(field_in_head::<String>(br#"{"model":"gpt-"#, "model"), None);
    }

    #[test]
    fn tail_finds_the_last_key_in_key_position() {
        let tail = br#"0.1,0.2]}],"text":"{\"usage\": {\"prompt_tokens\": 99}}","model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let usage: Value = field_in_tail(tail, "usage").unwrap();
        assert_eq!(usage["prompt_tokens"], 8);
        assert_eq!(
            field_in_tail::<String>(tail, "model").as_deref(),
            Some("text-embedding-3-small")
        );
    }

    #[test]
    fn value_spans() {
        let doc = br#"{"a": {"x": [1, "}"]} , "b":null}"#;
        let (s, e) = top_level_value_span(doc, "a").unwrap();
        assert_eq!(&doc[s..e], br#"{"x": [1, "}"]}"#);
        let (s, e) = top_level_value_span(doc, "b").unwrap();
        assert_eq!(&doc[s..e], b"null");
        assert_eq!(top_level_value_span(doc, "x"), None);
    }

    #[test]
    fn tail_ignores_keys_quoted_inside_strings() {
        let tail = br#"ore text \"usage\": {\"prompt_tokens\": 5} and ", "usage" ,"x":1}"#;
        assert_eq!(field_in_tail::<Value>(tail, "usage"), None);
    }
}
