//! A plain HTTP client for tests: every status is an answer, bodies are raw bytes
//! (no automatic decompression), so tests can compare exactly what a client receives.

use std::io::Read as _;

use anyhow::Result;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs `body` to `url` with the given headers.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Reply> {
    let mut req = agent().post(url);
    let mut has_type = false;
    for (k, v) in headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        req = req.header(*k, *v);
    }
    if !has_type {
        req = req.header("content-type", "application/json");
    }
    let mut resp = req.send(body)?;
    reply(&mut resp)
}

/// GETs `url`.
pub fn get(url: &str) -> Result<Reply> {
    let mut resp = agent().get(url).call()?;
    reply(&mut resp)
}

fn reply(resp: &mut ureq::http::Response<ureq::Body>) -> Result<Reply> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    resp.body_mut()
        .with_config()
        .limit(u64::MAX)
        .reader()
        .read_to_end(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// POSTs `body`, reads the first bytes of the response, then hangs up (a client that goes
/// away mid-stream). Returns how many bytes it read.
pub fn post_and_hang_up(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<usize> {
    let mut req = agent().post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body)?;
    let mut first = [0u8; 64];
    let n = resp.body_mut().as_reader().read(&mut first)?;
    Ok(n)
}
