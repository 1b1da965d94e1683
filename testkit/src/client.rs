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
    get_with(url, &[])
}

/// GETs `url` with the given headers.
pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call()?;
    reply(&mut resp)
}

/// A response's headers as (name, value) pairs.
fn header_pairs(resp: &ureq::http::Response<ureq::Body>) -> Vec<(String, String)> {
    resp.headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn reply(resp: &mut ureq::http::Response<ureq::Body>) -> Result<Reply> {
    let status = resp.status().as_u16();
    let headers = header_pairs(resp);
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

/// The arrival of a response body, piece by piece: when each read returned (since the
/// request was sent) and the body's length then.
pub type Arrivals = Vec<(std::time::Duration, usize)>;

/// POSTs `body` and reads the response as it arrives, noting when each piece came.
pub fn post_timed(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<(Reply, Arrivals)> {
    let mut req = agent().post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let start = std::time::Instant::now();
    let mut resp = req.send(body)?;
    let status = resp.status().as_u16();
    let headers = header_pairs(&resp);
    let mut out = Vec::new();
    let mut arrivals = Vec::new();
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(buf.get(..n).unwrap_or_default());
        arrivals.push((start.elapsed(), out.len()));
    }
    Ok((
        Reply {
            status,
            headers,
            body: out,
        },
        arrivals,
    ))
}

fn request_head(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// POSTs `body` over a plain socket, the request line, headers and body in one write (as
/// fast as the connection takes it), with `connection: close`, and reads the answer to the
/// end. A content-type of JSON and the content-length are added. When the server answers
/// and closes before it has read the whole body, that answer is returned.
pub fn post_raw(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply> {
    use std::io::Write as _;
    let len = body.len().to_string();
    let mut all = vec![
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
        ("connection", "close"),
    ];
    all.extend_from_slice(headers);
    let mut bytes = request_head(addr, path, &all).into_bytes();
    bytes.extend_from_slice(body);
    let mut sock = std::net::TcpStream::connect(addr)?;
    let written = sock.write_all(&bytes);
    let mut raw = Vec::new();
    let read = sock.read_to_end(&mut raw);
    if raw.is_empty() {
        written?;
        read?;
        anyhow::bail!("no answer");
    }
    parse_response(&raw)
}

/// A raw HTTP/1.1 response: status, headers and body (content-length, chunked or to the end).
pub fn parse_response(raw: &[u8]) -> Result<Reply> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("incomplete response head"))?;
    let head = String::from_utf8_lossy(raw.get(..end).unwrap_or_default()).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = raw.get(end + 4..).unwrap_or_default();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest
                .get(at..)
                .and_then(|r| r.windows(2).position(|w| w == b"\r\n"))
                .ok_or_else(|| anyhow::anyhow!("truncated chunk size"))?;
            let size_text =
                String::from_utf8_lossy(rest.get(at..at + line_end).unwrap_or_default())
                    .into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
            at += line_end + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(
                rest.get(at..at + size)
                    .ok_or_else(|| anyhow::anyhow!("truncated chunk"))?,
            );
            at += size + 2;
        }
        out
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.get(..n)
            .ok_or_else(|| anyhow::anyhow!("body shorter than its content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Opens a connection, sends the headers of a POST that announces `content_length` body
/// bytes and the first `sent` of them, and returns the open socket: an upload that stalls.
/// A content-type of JSON and the content-length are added.
pub fn stalled_upload(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    content_length: usize,
    sent: &[u8],
) -> Result<std::net::TcpStream> {
    use std::io::Write as _;
    let len = content_length.to_string();
    let mut all = vec![
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    all.extend_from_slice(headers);
    let mut sock = std::net::TcpStream::connect(addr)?;
    sock.write_all(request_head(addr, path, &all).as_bytes())?;
    sock.write_all(sent)?;
    Ok(sock)
}
