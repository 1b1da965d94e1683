//! An upstream that streams as a model does: each server-sent event in its own write.
//!
//! The benchmark's canned upstream (Envoy's `direct_response`) hands a whole stream to the
//! socket at once, so a gateway sees a 16 KiB stream in one or two reads. A provider sends
//! one event per generated token, so a gateway's filter is called once per event, and that
//! per-chunk cost is what dominates in production. This server replays canned answers that
//! way: HTTP/1.1 with chunked framing, one chunk per event, each written and flushed on its
//! own (`TCP_NODELAY`) with a pause between events.
//!
//! Hand-written on `std` rather than on an async server: the pause must be finer than a
//! tokio timer's millisecond, and the writes must not be coalesced by a framework's buffer.
//! One thread per connection (the benchmark opens a few dozen at most).
//!
//! Answers are chosen by the value of a request header; the request body is read in full
//! (by `content-length` or chunked framing) before answering, as a provider does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// One canned answer.
#[derive(Debug, Clone)]
pub struct Canned {
    pub content_type: String,
    /// The events (or one JSON body), each sent in its own write.
    pub pieces: Vec<Vec<u8>>,
}

/// Picks the answer for the value of the choosing header (`None`: 404).
pub type Replies = Arc<dyn Fn(&str) -> Option<Canned> + Send + Sync>;

/// Serves `listener` until the process ends: the value of request header `header` picks
/// the answer, and `gap` separates its pieces.
pub fn serve(listener: TcpListener, header: &'static str, replies: Replies, gap: Duration) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let replies = replies.clone();
        std::thread::spawn(move || {
            let _ = connection(stream, header, &replies, gap);
        });
    }
}

/// One keep-alive connection: requests in turn until the peer closes it.
fn connection(
    stream: TcpStream,
    header: &str,
    replies: &Replies,
    gap: Duration,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(request) = read_request(&mut reader, header)? else {
            return Ok(());
        };
        match request.choice.as_deref().and_then(|c| replies(c)) {
            None => writer.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 15\r\n\r\nno such answer\n",
            )?,
            Some(Canned {
                content_type,
                pieces,
            }) if pieces.len() == 1 => {
                let body = pieces.concat();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
                    content_type,
                    body.len()
                );
                let mut out = head.into_bytes();
                out.extend_from_slice(&body);
                writer.write_all(&out)?;
            }
            Some(canned) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ntransfer-encoding: chunked\r\n\r\n",
                    canned.content_type
                );
                writer.write_all(head.as_bytes())?;
                let mut chunk = Vec::new();
                for piece in &canned.pieces {
                    std::thread::sleep(gap);
                    chunk.clear();
                    chunk.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    chunk.extend_from_slice(piece);
                    chunk.extend_from_slice(b"\r\n");
                    writer.write_all(&chunk)?;
                }
                writer.write_all(b"0\r\n\r\n")?;
            }
        }
        writer.flush()?;
    }
}

struct Request {
    choice: Option<String>,
}

/// Reads one request (head and whole body); `None` when the peer closed the connection.
fn read_request(reader: &mut impl BufRead, header: &str) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut length = 0usize;
    let mut chunked = false;
    let mut choice = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| bad("content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case(header) {
            choice = Some(value.to_string());
        }
    }
    if chunked {
        read_chunked(reader)?;
    } else {
        std::io::copy(&mut reader.take(length as u64), &mut std::io::sink())?;
    }
    Ok(Some(Request { choice }))
}

/// Reads and drops a chunked body and its trailers.
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("chunk size"))?;
        if size == 0 {
            break;
        }
        std::io::copy(&mut reader.take(size as u64 + 2), &mut std::io::sink())?;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            return Ok(());
        }
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(gap: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let replies: Replies = Arc::new(|choice: &str| match choice {
            "stream" => Some(Canned {
                content_type: "text/event-stream".into(),
                pieces: vec![b"data: 1\n\n".to_vec(), b"data: [DONE]\n\n".to_vec()],
            }),
            "json" => Some(Canned {
                content_type: "application/json".into(),
                pieces: vec![b"{}".to_vec()],
            }),
            _ => None,
        });
        std::thread::spawn(move || serve(listener, "x-pick", replies, gap));
        addr
    }

    /// Writes `request`, reads until `until` has arrived, and returns what came.
    fn exchange(s: &mut TcpStream, request: &str, until: &str) -> String {
        s.write_all(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(until) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn events_go_out_as_chunks_on_a_kept_alive_connection() {
        let addr = start(Duration::from_millis(20));
        let mut s = TcpStream::connect(addr).unwrap();
        // A chunked request body (as Envoy forwards a body whose length it removed).
        let out = exchange(
            &mut s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-pick: stream\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "0\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("transfer-encoding: chunked"));
        assert!(
            out.ends_with("\r\n\r\n9\r\ndata: 1\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"),
            "{out:?}"
        );
        let out = exchange(
            &mut s,
            "POST / HTTP/1.1\r\nx-pick: json\r\ncontent-length: 2\r\n\r\n{}",
            "\r\n\r\n{}",
        );
        assert!(out.contains("content-length: 2\r\n"), "{out}");
        let out = exchange(
            &mut s,
            "POST / HTTP/1.1\r\nx-pick: other\r\ncontent-length: 0\r\n\r\n",
            "no such answer\n",
        );
        assert!(out.starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn each_event_is_its_own_write() {
        // With a pause longer than the reader's turnaround, every read holds one chunk.
        let addr = start(Duration::from_millis(30));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nx-pick: stream\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        let mut reads = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            reads.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if reads.concat().ends_with("0\r\n\r\n") {
                break;
            }
        }
        let events: Vec<&String> = reads.iter().filter(|r| r.contains("data: ")).collect();
        assert_eq!(events.len(), 2, "{reads:?}");
        assert!(
            events.iter().all(|r| r.matches("data: ").count() == 1),
            "{reads:?}"
        );
    }
}
