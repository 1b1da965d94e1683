//! `stream::inject::request_usage`: adding `stream_options.include_usage` to a streamed
//! request body.
//!
//! Returning `None` is always allowed. When it returns a body:
//! - the input was valid JSON, an object whose `stream` is `true`;
//! - the output is valid JSON, an object with `stream_options.include_usage == true`;
//! - its top-level keys are the input's, with `stream_options` exactly once (no duplicate
//!   key the input did not have; keys are compared decoded, so an escaped spelling of
//!   `stream_options` counts as one);
//! - with `stream_options` removed from both, it equals the input; and when the input's
//!   `stream_options` was an object, the output's is that object with `include_usage: true`
//!   (as serde_json writes and reads it back: numbers may change form).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::shown;

pub fn request_usage(data: &[u8]) {
    let Some(out) = tokenmeter_core::stream::inject::request_usage(data) else {
        return;
    };
    let input = match serde_json::from_slice::<Value>(data) {
        Ok(v) => v,
        // Valid JSON nested deeper than serde_json's limit: nothing to compare against.
        Err(e) if e.to_string().contains("recursion limit") => return,
        Err(e) => panic!(
            "request_usage rewrote a body that is not valid JSON ({e})\n input: {}\noutput: {}",
            shown(data),
            shown(&out)
        ),
    };
    let Value::Object(mut input) = input else {
        panic!(
            "request_usage rewrote a body that is not a JSON object\n input: {}\noutput: {}",
            shown(data),
            shown(&out)
        );
    };
    assert_eq!(
        input.get("stream"),
        Some(&Value::Bool(true)),
        "request_usage rewrote a body whose stream is not true\n input: {}\noutput: {}",
        shown(data),
        shown(&out)
    );
    let output = match serde_json::from_slice::<Value>(&out) {
        Ok(Value::Object(map)) => map,
        Ok(_) => panic!(
            "request_usage's output is not a JSON object\n input: {}\noutput: {}",
            shown(data),
            shown(&out)
        ),
        Err(e) => panic!(
            "request_usage's output is not valid JSON ({e})\n input: {}\noutput: {}",
            shown(data),
            shown(&out)
        ),
    };
    let mut want_keys = top_level_keys(data);
    want_keys.insert("stream_options".to_string(), 1);
    assert_eq!(
        top_level_keys(&out),
        want_keys,
        "request_usage's output has other top-level keys than the input (key: times)\n input: {}\noutput: {}",
        shown(data),
        shown(&out)
    );
    let mut output = output;
    let options = output.remove("stream_options");
    assert_eq!(
        options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool),
        Some(true),
        "request_usage's output lacks stream_options.include_usage: true\n input: {}\noutput: {}",
        shown(data),
        shown(&out)
    );
    if let Some(Value::Object(mut asked)) = input.remove("stream_options") {
        asked.insert("include_usage".to_string(), Value::Bool(true));
        // The options are rewritten through serde_json's value, and its default number
        // parsing does not round-trip every float it writes (`1.76723e+30` reads back one
        // bit off the value it was written from): compare what that rewrite reads back.
        let asked = serde_json::to_vec(&asked)
            .ok()
            .and_then(|text| serde_json::from_slice::<Value>(&text).ok());
        assert_eq!(
            options,
            asked,
            "request_usage dropped or changed the client's other stream options\n input: {}\noutput: {}",
            shown(data),
            shown(&out)
        );
    }
    assert!(
        input == output,
        "request_usage changed more than stream_options\n input: {}\noutput: {}",
        shown(data),
        shown(&out)
    );
}

/// How many times each top-level key of a JSON object occurs, keys decoded; empty when the
/// document is not an object.
pub fn top_level_keys(doc: &[u8]) -> BTreeMap<String, usize> {
    keys_as_written(doc).0
}

/// [`top_level_keys`], and the keys written with escapes.
fn keys_as_written(doc: &[u8]) -> (BTreeMap<String, usize>, Vec<String>) {
    /// A key, and whether it was written with escapes (serde_json lends a key written
    /// without any straight from the input).
    struct Key(String, bool);
    impl<'de> serde::Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key, E> {
                    Ok(Key(s.to_string(), false))
                }
                fn visit_str<E>(self, s: &str) -> Result<Key, E> {
                    Ok(Key(s.to_string(), true))
                }
            }
            d.deserialize_str(V)
        }
    }
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = (BTreeMap<String, usize>, Vec<String>);
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = BTreeMap::new();
            let mut escaped = Vec::new();
            while let Some(Key(key, esc)) = map.next_key::<Key>()? {
                map.next_value::<IgnoredAny>()?;
                if esc {
                    escaped.push(key.clone());
                }
                *keys.entry(key).or_insert(0) += 1;
            }
            Ok((keys, escaped))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(doc);
    de.deserialize_map(Keys).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_decoded() {
        let keys = top_level_keys(br#"{"a":1,"b":{"a":2},"\u0061":3}"#);
        assert_eq!(keys.get("a"), Some(&2));
        assert_eq!(keys.get("b"), Some(&1));
        assert!(top_level_keys(b"[1]").is_empty());
        let (_, escaped) = keys_as_written(br#"{"a":1,"stream\u005foptions":{},"b\n":2}"#);
        assert_eq!(escaped, ["stream_options", "b\n"]);
    }

    #[test]
    fn ordinary_requests_pass() {
        request_usage(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#);
        request_usage(br#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#);
        request_usage(br#"{"stream":true,"stream_options":null}"#);
        request_usage(br#"{"stream":false}"#);
        request_usage(b"not json");
    }
}
