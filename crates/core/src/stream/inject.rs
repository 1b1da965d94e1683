//! Asking for stream usage on the client's behalf.
//!
//! A streamed chat or completions request reports usage only when it sets
//! `stream_options.include_usage`. When the client did not, [`request_usage`] adds it with
//! a minimal edit of the request text (everything else stays byte for byte);
//! [`crate::stream::editor`] takes back out of the response what the client did not ask for.

use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

use crate::body::jsonscan;

/// The two fields the rewrite needs, read from a body that must be a JSON object a strict
/// parser accepts: every other value is read through [`Checked`], and a key named twice is
/// refused.
struct StreamFields {
    stream: Option<serde_json::Value>,
    stream_options: Option<serde_json::Value>,
}

impl<'de> Deserialize<'de> for StreamFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = StreamFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StreamFields, A::Error> {
                let mut fields = StreamFields {
                    stream: None,
                    stream_options: None,
                };
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Stream => &mut fields.stream,
                        Key::Options => &mut fields.stream_options,
                        Key::Other => {
                            map.next_value::<Checked>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(A::Error::custom("a key named twice"));
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(fields)
            }
        }
        // Only a map: serde would otherwise read an array as the fields in order.
        d.deserialize_map(Fields)
    }
}

/// A top-level key, decoded (an escaped spelling of `stream` is `stream`).
enum Key {
    Stream,
    Options,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "stream" => Key::Stream,
                    "stream_options" => Key::Options,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A JSON value read and dropped. Unlike `serde::de::IgnoredAny`, whose skip checks
/// neither that strings are UTF-8 nor that `\u` escapes pair up, every string is decoded
/// (borrowed from the input when it has no escape, so without allocating): a body a
/// strict parser would refuse is never edited.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// Whether a request body asks for a stream, and whether it already asks for usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRequest {
    pub stream: bool,
    pub include_usage: bool,
    /// `stream_options` is absent, `null`, or an object whose `include_usage`, if given, is
    /// a boolean: what a provider accepts. Anything else is left for the provider to refuse.
    options_valid: bool,
    /// `stream_options` is given (possibly `null`).
    has_options: bool,
}

/// Reads `stream` and `stream_options` as JSON does (escaped keys decoded); `None` when the
/// body is not a JSON object a strict parser accepts (invalid UTF-8, a lone surrogate
/// escape, trailing bytes) or names either key twice.
pub fn read_stream_request(body: &[u8]) -> Option<StreamRequest> {
    let f: StreamFields = serde_json::from_slice(body).ok()?;
    let options = f.stream_options.as_ref();
    let include_usage = options.and_then(|o| o.get("include_usage"));
    let options_valid = match options {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Object(_)) => include_usage.is_none_or(|u| u.is_boolean()),
        Some(_) => false,
    };
    Some(StreamRequest {
        stream: f.stream.and_then(|v| v.as_bool()).unwrap_or(false),
        include_usage: include_usage
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        options_valid,
        has_options: options.is_some(),
    })
}

/// The request body with `stream_options.include_usage: true`, or `None` when the body is
/// not a streamed request that lacks it, or when its `stream_options` is not one a provider
/// would accept (the request then goes as the client sent it, to be refused as it would be).
pub fn request_usage(body: &[u8]) -> Option<Vec<u8>> {
    request_usage_for(body, read_stream_request(body)?)
}

/// [`request_usage`] for a body already read with [`read_stream_request`].
pub fn request_usage_for(body: &[u8], req: StreamRequest) -> Option<Vec<u8>> {
    if !req.stream || req.include_usage || !req.options_valid {
        return None;
    }
    match jsonscan::top_level_value_span(body, "stream_options") {
        Some((start, end)) => {
            // Keep the client's other stream options.
            let mut options =
                match serde_json::from_slice::<serde_json::Value>(body.get(start..end)?) {
                    Ok(serde_json::Value::Object(map)) => map,
                    Ok(serde_json::Value::Null) => serde_json::Map::new(),
                    _ => return None,
                };
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            let replacement = serde_json::to_vec(&serde_json::Value::Object(options)).ok()?;
            let mut out = Vec::with_capacity(body.len() + 24);
            out.extend_from_slice(body.get(..start)?);
            out.extend_from_slice(&replacement);
            out.extend_from_slice(body.get(end..)?);
            Some(out)
        }
        // The key is there, but not as the scan spells it (written with escapes): adding
        // another would give the request two.
        None if req.has_options => None,
        None => {
            let open = body.iter().position(|&b| b == b'{')?;
            let mut out = Vec::with_capacity(body.len() + 40);
            out.extend_from_slice(body.get(..=open)?);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(body.get(open + 1..)?);
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn leaves_bodies_a_strict_parser_refuses() {
        // A raw 0xFF inside a string, a lone surrogate escape, an array, a key twice.
        for body in [
            &b"{\"stream\":true,\"x\":\"\xff\"}"[..],
            br#"{"stream":true,"x":"\ud800"}"#,
            br#"{"stream":true,"x":{"\udc00":1}}"#,
            br#"[true,{}]"#,
            br#"[true,"{"]"#,
            br#"{"stream":true,"stream":true}"#,
            br#"{"stream":true} x"#,
        ] {
            assert_eq!(request_usage(body), None, "{}", body.escape_ascii());
        }
        // A surrogate pair is one character, and escaped keys are read decoded.
        assert!(request_usage(br#"{"stream":true,"x":"\ud83d\ude00"}"#).is_some());
        assert!(request_usage(br#"{"str\u0065am":true}"#).is_some());
    }

    #[test]
    fn adds_include_usage_minimally() {
        let body =
            br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let out = request_usage(body).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
        );
    }

    #[test]
    fn keeps_other_stream_options() {
        let body = br#"{ "stream": true, "stream_options": {"include_obfuscation": false, "include_usage": false}, "model": "x" }"#;
        let out = request_usage(body).unwrap();
        let v = json(&out);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
        assert_eq!(v["model"], "x");
        let body = br#"{"stream": true, "stream_options": null}"#;
        assert_eq!(
            json(&request_usage(body).unwrap())["stream_options"]["include_usage"],
            true
        );
    }

    #[test]
    fn never_changes_what_a_request_means() {
        // An escaped key is the same key: never a second one.
        let escaped =
            br#"{"stream":true,"stream_\u006fptions":{"include_obfuscation":false},"model":"x"}"#;
        assert_eq!(request_usage(escaped), None);
        let escaped_usage = br#"{"stream":true,"stream_options":{"include_\u0075sage":true}}"#;
        assert_eq!(request_usage(escaped_usage), None, "already asks for usage");
        // Keys given twice: JSON parsers disagree on which wins, so nothing is touched.
        let twice = br#"{"stream":true,"stream_options":null,"stream_options":{"x":1}}"#;
        assert_eq!(request_usage(twice), None);
        // Options a provider refuses stay as sent, to be refused as they would be.
        for invalid in [
            r#"{"stream":true,"stream_options":"x"}"#,
            r#"{"stream":true,"stream_options":[]}"#,
            r#"{"stream":true,"stream_options":{"include_usage":"false"}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":0}}"#,
        ] {
            assert_eq!(request_usage(invalid.as_bytes()), None, "{invalid}");
        }
        // Whatever is rewritten has one stream_options and means the same otherwise.
        for ok in [
            r#"{"stream":true,"model":"x"}"#,
            r#"{"str\u0065am":true,"model":"x"}"#,
            r#"{"stream":true,"stream_options":null}"#,
            r#"{"stream":true,"stream_options":{"include_usage":false,"include_obfuscation":true}}"#,
            r#"{"stream":true,"stream_options":{}}"#,
        ] {
            let out = request_usage(ok.as_bytes()).unwrap_or_else(|| panic!("{ok}"));
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.matches("stream_options").count(), 1, "{text}");
            let mut got: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut want: serde_json::Value = serde_json::from_str(ok).unwrap();
            assert_eq!(got["stream_options"]["include_usage"], true);
            let got_opts = got
                .as_object_mut()
                .unwrap()
                .remove("stream_options")
                .unwrap();
            let want_opts = want.as_object_mut().unwrap().remove("stream_options");
            assert_eq!(got, want, "{ok}");
            if let Some(serde_json::Value::Object(w)) = want_opts {
                for (k, v) in w.iter().filter(|(k, _)| *k != "include_usage") {
                    assert_eq!(&got_opts[k], v, "{ok}");
                }
            }
        }
    }

    #[test]
    fn leaves_other_requests_alone() {
        assert_eq!(request_usage(br#"{"stream":false,"model":"x"}"#), None);
        assert_eq!(request_usage(br#"{"model":"x"}"#), None);
        assert_eq!(
            request_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        assert_eq!(request_usage(b"not json"), None);
        assert_eq!(request_usage(br#"[{"stream":true}]"#), None);
    }
}
