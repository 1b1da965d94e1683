//! Asking for stream usage on the client's behalf.
//!
//! A streamed chat or completions request reports usage only when it sets
//! `stream_options.include_usage`. When the client did not, [`request_usage`] adds it with
//! a minimal edit of the request text (everything else stays byte for byte);
//! [`crate::stream::editor`] takes back out of the response what the client did not ask for.

use serde::Deserialize;

use crate::body::jsonscan;

#[derive(Deserialize)]
struct StreamFields {
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    stream_options: Option<serde_json::Value>,
}

/// Whether a request body asks for a stream, and whether it already asks for usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRequest {
    pub stream: bool,
    pub include_usage: bool,
}

pub fn read_stream_request(body: &[u8]) -> Option<StreamRequest> {
    let f: StreamFields = serde_json::from_slice(body).ok()?;
    Some(StreamRequest {
        stream: f.stream.and_then(|v| v.as_bool()).unwrap_or(false),
        include_usage: f
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    })
}

/// The request body with `stream_options.include_usage: true`, or `None` when the body is
/// not a streamed request that lacks it.
pub fn request_usage(body: &[u8]) -> Option<Vec<u8>> {
    request_usage_for(body, read_stream_request(body)?)
}

/// [`request_usage`] for a body already read with [`read_stream_request`].
pub fn request_usage_for(body: &[u8], req: StreamRequest) -> Option<Vec<u8>> {
    if !req.stream || req.include_usage {
        return None;
    }
    match jsonscan::top_level_value_span(body, "stream_options") {
        Some((start, end)) => {
            // Keep the client's other stream options.
            let mut options =
                match serde_json::from_slice::<serde_json::Value>(body.get(start..end)?) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => serde_json::Map::new(),
                };
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            let replacement = serde_json::to_vec(&serde_json::Value::Object(options)).ok()?;
            let mut out = Vec::with_capacity(body.len() + 24);
            out.extend_from_slice(body.get(..start)?);
            out.extend_from_slice(&replacement);
            out.extend_from_slice(body.get(end..)?);
            Some(out)
        }
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
