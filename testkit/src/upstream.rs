//! A local OpenAI-compatible upstream that speaks the real wire format.
//!
//! It serves chat completions, completions, embeddings and the Responses API, as JSON or
//! as server-sent events, on OpenAI paths (`/v1/...`, with or without `/v1`) and Azure
//! OpenAI paths (`/openai/deployments/{deployment}/...`). Usage is counted the way OpenAI
//! counts it, with the model's real tokenizer, so estimates can be checked against it.
//!
//! Tests steer each response with request headers (they pass through the gateway):
//!
//! | header | effect |
//! |---|---|
//! | `x-upstream-status: N` | answer with status N and an OpenAI error body (429 adds `retry-after`) |
//! | `x-upstream-body: truncated\|html\|garbage\|empty` | a broken 200 body |
//! | `x-upstream-body: fake-gzip` | streams: `content-encoding: gzip` on a body that is not compressed |
//! | `x-upstream-usage: none` | no usage anywhere, even when the client asked for it |
//! | `x-upstream-reply: TEXT` | the assistant's text (default: derived from the prompt) |
//! | `x-upstream-tool: NAME` | chat answers with a call to tool NAME instead of text |
//! | `x-upstream-cached: N`, `x-upstream-reasoning: N` | cached prompt / reasoning tokens in usage |
//! | `x-upstream-delay-ms: N` | wait N ms before each streamed event (and before a JSON answer) |
//! | `x-upstream-abort-after: N` | reset the connection after N streamed events |
//! | `x-upstream-gzip: 1` | gzip the body (`content-encoding: gzip`) |
//! | `x-upstream-usage-in-every-chunk: 1` | chat streams: vLLM-style usage on every chunk |
//! | `x-upstream-usage-placement: separate\|last\|every` | chat streams asked for usage: `separate` (default, as OpenAI) `"usage":null` on every chunk and the counts on a usage-only chunk; `last` the counts on the last chunk with choices and no `usage` member elsewhere; `every` the counts on every chunk and on a usage-only chunk |
//! | `x-upstream-usage-first: 1` | chat streams: `usage` is the first member of each chunk (default: the last) |
//! | `x-upstream-prompt-tokens: N` | report N prompt tokens (any u64; the total saturates) |
//! | `x-upstream-completion-tokens: N` | report N completion tokens (any u64; the total saturates) |
//! | `x-upstream-big-piece: N` | the reply ends with N more bytes of words, streamed as one content chunk (an event of more than N bytes) |
//! | `x-upstream-eol: lf\|cr\|crlf` | streams: the line ending that frames events (default `lf`) |
//! | `x-upstream-json-spaces: 1\|2` | streams: events' JSON spaced as Python's `json.dumps` writes it (`1`), or with spaces and tabs around every token (`2`) |
//! | `x-upstream-content-type: TYPE` | streams: this content-type instead of `text/event-stream; charset=utf-8` |
//! | `x-upstream-gzip-corrupt-after: N` | streams: gzip (as `x-upstream-gzip: 1`) for N events, then an invalid deflate block and the rest of the events uncompressed |
//! | `x-upstream-discard-body: 1` | read the request body as it arrives and keep only its length (`Received::body_len`; the answer is then the one to an empty body): for uploads that never end |

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use futures_util::stream;
use futures_util::StreamExt as _;
use serde::Serialize as _;
use serde_json::{json, Value};

/// A request the upstream received, as it arrived (after the gateway).
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body's length as it arrived (also when `x-upstream-discard-body` kept nothing).
    pub body_len: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

type Log = Arc<Mutex<Vec<Received>>>;

/// A running upstream on a loopback port; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    log: Log,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Starts on `127.0.0.1` with an ephemeral port.
    pub fn start() -> anyhow::Result<Upstream> {
        Self::start_on("127.0.0.1:0".parse()?)
    }

    pub fn start_on(addr: SocketAddr) -> anyhow::Result<Upstream> {
        let std_listener = std::net::TcpListener::bind(addr).context("binding the upstream")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let log: Log = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app_log = log.clone();
        let thread = std::thread::Builder::new()
            .name("openai-upstream".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("openai-upstream: runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("openai-upstream: listener: {e}");
                            return;
                        }
                    };
                    // Bodies are read as a stream (see `handle`): no size limit applies.
                    let app = axum::Router::new().fallback(move |m, u, h, b| {
                        let log = app_log.clone();
                        async move { handle(log, m, u, h, b).await }
                    });
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })?;
        Ok(Upstream {
            addr,
            log,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last request received, if any (without copying the others).
    pub fn last_received(&self) -> Option<Received> {
        self.log.lock().ok().and_then(|l| l.last().cloned())
    }

    /// Requests received so far, forgotten here (large bodies need not stay in memory).
    pub fn take_received(&self) -> Vec<Received> {
        self.log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// Blocks until the process is asked to stop (for the standalone binary).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Streams in flight may hold the server open; do not wait for them.
        drop(self.thread.take());
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Api {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

fn classify(path: &str) -> Option<Api> {
    let p = path.split('?').next().unwrap_or("").trim_end_matches('/');
    if p.ends_with("/chat/completions") {
        Some(Api::Chat)
    } else if p.ends_with("/completions") {
        Some(Api::Completions)
    } else if p.ends_with("/embeddings") {
        Some(Api::Embeddings)
    } else if p.ends_with("/responses") {
        Some(Api::Responses)
    } else {
        None
    }
}

fn azure_deployment(path: &str) -> Option<String> {
    let rest = path.split_once("/openai/deployments/")?.1;
    rest.split('/').next().map(str::to_string)
}

struct Controls {
    status: Option<u16>,
    broken: Option<String>,
    no_usage: bool,
    reply: Option<String>,
    tool: Option<String>,
    cached: u64,
    reasoning: u64,
    delay: Duration,
    abort_after: Option<usize>,
    gzip: bool,
    usage_every_chunk: bool,
    placement: Placement,
    usage_first: bool,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    big_piece: Option<usize>,
    framing: Framing,
    content_type: Option<String>,
    corrupt_after: Option<usize>,
}

/// Where a chat stream asked for usage carries it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Placement {
    Separate,
    Last,
    Every,
}

/// How stream events are written: line ending and JSON spacing.
#[derive(Clone, Copy, Debug)]
struct Framing {
    eol: &'static str,
    spaces: u8,
}

impl Framing {
    fn json(&self, v: &Value) -> String {
        if self.spaces == 0 {
            return v.to_string();
        }
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced(self.spaces));
        let _ = v.serialize(&mut ser);
        String::from_utf8(out).unwrap_or_default()
    }

    fn data(&self, v: &Value) -> String {
        let eol = self.eol;
        format!("data: {}{eol}{eol}", self.json(v))
    }

    fn done(&self) -> String {
        let eol = self.eol;
        format!("data: [DONE]{eol}{eol}")
    }

    fn event(&self, name: &str, v: &Value) -> String {
        let eol = self.eol;
        format!("event: {name}{eol}data: {}{eol}{eol}", self.json(v))
    }
}

/// JSON with whitespace between tokens: `1` as Python's `json.dumps` (`", "`, `": "`), `2`
/// spaces and tabs around every token.
struct Spaced(u8);

impl Spaced {
    /// The comma before every element and member but the first.
    fn separator<W: ?Sized + std::io::Write>(&self, w: &mut W, first: bool) -> std::io::Result<()> {
        match (first, self.0 >= 2) {
            (true, _) => Ok(()),
            (false, true) => w.write_all(b" ,\t"),
            (false, false) => w.write_all(b", "),
        }
    }
}

impl serde_json::ser::Formatter for Spaced {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(if self.0 >= 2 { b"[ " } else { b"[" })
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(if self.0 >= 2 { b" ]" } else { b"]" })
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.separator(w, first)
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(if self.0 >= 2 { b"{\t" } else { b"{" })
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(if self.0 >= 2 { b" }" } else { b"}" })
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.separator(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(if self.0 >= 2 { b" :\t" } else { b": " })
    }
}

impl Controls {
    fn read(h: &HeaderMap) -> Controls {
        let s = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let n = |n: &str| s(n).and_then(|v| v.parse::<u64>().ok());
        Controls {
            status: n("x-upstream-status").map(|v| v as u16),
            broken: s("x-upstream-body"),
            no_usage: s("x-upstream-usage").as_deref() == Some("none"),
            reply: s("x-upstream-reply"),
            tool: s("x-upstream-tool"),
            cached: n("x-upstream-cached").unwrap_or(0),
            reasoning: n("x-upstream-reasoning").unwrap_or(0),
            delay: Duration::from_millis(n("x-upstream-delay-ms").unwrap_or(0)),
            abort_after: n("x-upstream-abort-after").map(|v| v as usize),
            gzip: s("x-upstream-gzip").as_deref() == Some("1"),
            usage_every_chunk: s("x-upstream-usage-in-every-chunk").as_deref() == Some("1"),
            placement: match s("x-upstream-usage-placement").as_deref() {
                Some("last") => Placement::Last,
                Some("every") => Placement::Every,
                _ => Placement::Separate,
            },
            usage_first: s("x-upstream-usage-first").as_deref() == Some("1"),
            prompt_tokens: n("x-upstream-prompt-tokens"),
            completion_tokens: n("x-upstream-completion-tokens"),
            big_piece: n("x-upstream-big-piece").map(|v| v as usize),
            framing: Framing {
                eol: match s("x-upstream-eol").as_deref() {
                    Some("cr") => "\r",
                    Some("crlf") => "\r\n",
                    _ => "\n",
                },
                spaces: n("x-upstream-json-spaces").unwrap_or(0).min(2) as u8,
            },
            content_type: s("x-upstream-content-type"),
            corrupt_after: n("x-upstream-gzip-corrupt-after").map(|v| v as usize),
        }
    }
}

fn error_body(status: u16) -> Value {
    let (message, kind, code) = match status {
        400 => ("Invalid request", "invalid_request_error", Value::Null),
        401 => (
            "Incorrect API key provided",
            "invalid_request_error",
            json!("invalid_api_key"),
        ),
        404 => (
            "The model does not exist",
            "invalid_request_error",
            json!("model_not_found"),
        ),
        429 => (
            "Rate limit reached for requests",
            "requests",
            json!("rate_limit_exceeded"),
        ),
        _ => (
            "The server had an error while processing your request",
            "server_error",
            Value::Null,
        ),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn json_response(status: u16, body: &Value, gzip: bool) -> Response {
    bytes_response(
        status,
        "application/json",
        body.to_string().into_bytes(),
        gzip,
    )
}

fn bytes_response(status: u16, content_type: &str, body: Vec<u8>, gzip: bool) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .header("content-type", content_type)
        .header("openai-processing-ms", "12");
    let body = if gzip {
        b = b.header("content-encoding", "gzip");
        gzip_bytes(&body)
    } else {
        body
    };
    if status == 429 {
        b = b.header("retry-after", "1");
    }
    b.body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

pub fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

async fn handle(log: Log, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let discard = headers
        .get("x-upstream-discard-body")
        .is_some_and(|v| v.as_bytes() == b"1");
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut body_len = 0;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(b) => {
                body_len += b.len();
                if !discard {
                    kept.extend_from_slice(&b);
                }
            }
            // The client went away mid-upload: nobody reads an answer.
            Err(_) => return bytes_response(400, "text/plain", Vec::new(), false),
        }
    }
    let body = Bytes::from(kept);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if let Ok(mut l) = log.lock() {
        l.push(Received {
            path: path.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            body_len,
        });
    }
    if uri.path() == "/healthz" {
        return bytes_response(200, "text/plain", b"ok".to_vec(), false);
    }
    let c = Controls::read(&headers);
    let Some(api) = classify(&path).filter(|_| method == Method::POST) else {
        return bytes_response(
            404,
            "application/json",
            error_body(404).to_string().into_bytes(),
            false,
        );
    };
    if let Some(status) = c.status {
        tokio::time::sleep(c.delay).await;
        return json_response(status, &error_body(status), c.gzip);
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let mut b = error_body(400);
            b["error"]["message"] = json!(format!(
                "We could not parse the JSON body of your request: {e}"
            ));
            return json_response(400, &b, c.gzip);
        }
    };
    let deployment = azure_deployment(&path);
    // Azure answers with the model behind the deployment, whatever the request says.
    let requested = match (&deployment, api) {
        (Some(_), Api::Embeddings) => "text-embedding-3-small".to_string(),
        (Some(_), Api::Completions) => "gpt-35-turbo-instruct".to_string(),
        (Some(_), _) => "gpt-4o".to_string(),
        (None, _) => req["model"].as_str().unwrap_or("gpt-4o").to_string(),
    };
    let model = snapshot(&requested);
    let azure = deployment.is_some();
    let stream = req["stream"].as_bool().unwrap_or(false);
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false)
        && !c.no_usage;
    match api {
        Api::Embeddings => {
            tokio::time::sleep(c.delay).await;
            embeddings(&req, &model, &c)
        }
        Api::Chat | Api::Completions | Api::Responses => {
            let prompt = match api {
                Api::Chat => chat_prompt_tokens(&model, &req),
                Api::Completions => completions_prompt_tokens(&model, &req),
                _ => responses_prompt_tokens(&model, &req),
            };
            let prompt = c.prompt_tokens.unwrap_or(prompt);
            let mut reply = c.reply.clone().unwrap_or_else(|| default_reply(api, &req));
            if let Some(n) = c.big_piece {
                reply.push_str(&filler(n));
            }
            let tool = if api == Api::Chat {
                c.tool.clone()
            } else {
                None
            };
            let mut gen = Generation {
                api,
                model,
                azure,
                prompt,
                reply,
                tool,
                completion: 0,
            };
            // Counted once: a stream may report it on every chunk.
            gen.completion = gen.completion_tokens(&c);
            if stream {
                gen.stream(&c, include_usage)
            } else {
                tokio::time::sleep(c.delay).await;
                gen.json(&c)
            }
        }
    }
}

/// `n` bytes of words, starting with a space (the tail `x-upstream-big-piece` adds).
fn filler(n: usize) -> String {
    let words = " lorem ipsum dolor sit amet consectetur adipiscing elit";
    let mut s = words.repeat(n / words.len() + 1);
    s.truncate(n);
    s
}

/// The dated snapshot a provider reports for a model alias.
fn snapshot(model: &str) -> String {
    match model {
        "gpt-4o" => "gpt-4o-2024-08-06",
        "gpt-4o-mini" => "gpt-4o-mini-2024-07-18",
        "gpt-4.1" => "gpt-4.1-2025-04-14",
        "gpt-3.5-turbo" => "gpt-3.5-turbo-0125",
        "gpt-4" => "gpt-4-0613",
        other => other,
    }
    .to_string()
}

/// The tokenizer a model uses (as OpenAI documents it).
pub fn bpe_for(model: &str) -> &'static tiktoken_rs::CoreBPE {
    let m = model.to_ascii_lowercase();
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
    ];
    if o200k.iter().any(|p| m.starts_with(p)) {
        tiktoken_rs::o200k_base_singleton()
    } else {
        tiktoken_rs::cl100k_base_singleton()
    }
}

pub fn count(model: &str, text: &str) -> u64 {
    bpe_for(model).encode_with_special_tokens(text).len() as u64
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// OpenAI's accounting for chat prompts: 3 tokens per message, the tokens of each
/// field, 1 more for a name, and 3 to prime the reply; tool definitions are counted as
/// their JSON text.
pub fn chat_prompt_tokens(model: &str, req: &Value) -> u64 {
    let mut n = 0;
    for m in req["messages"].as_array().into_iter().flatten() {
        n += 3;
        n += count(model, m["role"].as_str().unwrap_or(""));
        n += count(model, &text_of(&m["content"]));
        if let Some(name) = m["name"].as_str() {
            n += count(model, name) + 1;
        }
        for call in m["tool_calls"].as_array().into_iter().flatten() {
            n += count(model, call["function"]["name"].as_str().unwrap_or(""));
            n += count(model, call["function"]["arguments"].as_str().unwrap_or(""));
            n += 1;
        }
    }
    for key in ["tools", "functions"] {
        if let Some(t) = req.get(key).filter(|t| !t.is_null()) {
            n += count(model, &t.to_string());
        }
    }
    n + 3
}

fn completions_prompt_tokens(model: &str, req: &Value) -> u64 {
    match &req["prompt"] {
        Value::String(s) => count(model, s),
        Value::Array(items) => items
            .iter()
            .map(|i| count(model, i.as_str().unwrap_or("")))
            .sum(),
        _ => 0,
    }
}

fn responses_prompt_tokens(model: &str, req: &Value) -> u64 {
    let mut messages = Vec::new();
    if let Some(i) = req["instructions"].as_str() {
        messages.push(json!({"role": "developer", "content": i}));
    }
    match &req["input"] {
        Value::String(s) => messages.push(json!({"role": "user", "content": s})),
        Value::Array(items) => {
            for it in items {
                messages.push(json!({"role": it["role"].as_str().unwrap_or("user"), "content": text_of(&it["content"])}));
            }
        }
        _ => {}
    }
    chat_prompt_tokens(model, &json!({"messages": messages}))
}

fn default_reply(api: Api, req: &Value) -> String {
    let asked = match api {
        Api::Chat => req["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .map(|m| text_of(&m["content"]))
            .unwrap_or_default(),
        Api::Completions => req["prompt"].as_str().unwrap_or("").to_string(),
        _ => match &req["input"] {
            Value::String(s) => s.clone(),
            _ => String::new(),
        },
    };
    let words = asked.split_whitespace().count();
    format!(
        "You asked {words} words about \"{}\". Here is a short answer: the gateway counted every token of it.",
        asked.chars().take(40).collect::<String>()
    )
}

fn embeddings(req: &Value, model: &str, c: &Controls) -> Response {
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect(),
        _ => vec![],
    };
    let dims = req["dimensions"].as_u64().unwrap_or(1536) as usize;
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += count(model, text);
            let v: Vec<Value> = (0..dims)
                .map(|d| json!(((i * 31 + d * 17) % 2000) as f64 / 1000.0 - 1.0 + 0.000123456))
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let mut body = json!({"object": "list", "data": data, "model": model});
    if !c.no_usage {
        body["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    }
    broken_or(body, c)
}

fn broken_or(body: Value, c: &Controls) -> Response {
    let text = body.to_string();
    match c.broken.as_deref() {
        Some("truncated") => {
            let cut = text.len() / 2;
            bytes_response(
                200,
                "application/json",
                text.as_bytes()[..cut].to_vec(),
                c.gzip,
            )
        }
        Some("html") => bytes_response(
            200,
            "text/html",
            b"<html><body>502 Bad Gateway</body></html>".to_vec(),
            c.gzip,
        ),
        Some("garbage") => bytes_response(
            200,
            "application/json",
            vec![0xff, 0xfe, b'{', 0, 1, 2, b'"', b'}'],
            c.gzip,
        ),
        Some("empty") => bytes_response(200, "application/json", Vec::new(), c.gzip),
        _ => json_response(200, &body, c.gzip),
    }
}

struct Generation {
    api: Api,
    model: String,
    azure: bool,
    prompt: u64,
    reply: String,
    tool: Option<String>,
    /// The completion tokens reported (see `completion_tokens`).
    completion: u64,
}

const CREATED: u64 = 1_764_150_000;

impl Generation {
    fn tool_args(&self) -> String {
        json!({"query": self.reply}).to_string()
    }

    fn completion_tokens(&self, c: &Controls) -> u64 {
        if let Some(n) = c.completion_tokens {
            return n;
        }
        let visible = match &self.tool {
            Some(name) => count(&self.model, name) + count(&self.model, &self.tool_args()),
            None => count(&self.model, &self.reply),
        };
        visible + c.reasoning
    }

    fn chat_usage(&self, c: &Controls) -> Value {
        let completion = self.completion;
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": completion,
            "total_tokens": self.prompt.saturating_add(completion),
            "prompt_tokens_details": {"cached_tokens": c.cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": c.reasoning, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        })
    }

    fn responses_usage(&self, c: &Controls) -> Value {
        let completion = self.completion;
        json!({
            "input_tokens": self.prompt,
            "input_tokens_details": {"cached_tokens": c.cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": c.reasoning},
            "total_tokens": self.prompt.saturating_add(completion)
        })
    }

    fn response_object(&self, c: &Controls, status: &str) -> Value {
        let mut r = json!({
            "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "error": null,
            "incomplete_details": null,
            "instructions": null,
            "max_output_tokens": null,
            "model": self.model,
            "output": [{
                "type": "message",
                "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": self.reply, "annotations": []}]
            }],
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "store": true,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": null,
            "user": null,
            "metadata": {}
        });
        if !c.no_usage && status != "in_progress" {
            r["usage"] = self.responses_usage(c);
        }
        r
    }

    fn json(&self, c: &Controls) -> Response {
        let body = match self.api {
            Api::Chat => {
                let message = match &self.tool {
                    Some(name) => json!({"role": "assistant", "content": null, "refusal": null,
                        "tool_calls": [{"id": "call_abc123", "type": "function",
                            "function": {"name": name, "arguments": self.tool_args()}}],
                        "annotations": []}),
                    None => {
                        json!({"role": "assistant", "content": self.reply, "refusal": null, "annotations": []})
                    }
                };
                let mut b = json!({
                    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": self.model,
                    "choices": [{"index": 0, "message": message, "logprobs": null,
                        "finish_reason": if self.tool.is_some() { "tool_calls" } else { "stop" }}],
                    "service_tier": "default",
                    "system_fingerprint": "fp_6ec83003ad"
                });
                if self.azure {
                    b["prompt_filter_results"] = json!([{"prompt_index": 0, "content_filter_results": {
                        "hate": {"filtered": false, "severity": "safe"}}}]);
                }
                if !c.no_usage {
                    b["usage"] = self.chat_usage(c);
                }
                b
            }
            Api::Completions => {
                let mut b = json!({
                    "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
                    "object": "text_completion",
                    "created": CREATED,
                    "model": self.model,
                    "choices": [{"text": self.reply, "index": 0, "logprobs": null, "finish_reason": "stop"}],
                    "system_fingerprint": "fp_44709d6fcb"
                });
                if !c.no_usage {
                    b["usage"] = self.chat_usage(c);
                }
                b
            }
            _ => self.response_object(c, "completed"),
        };
        broken_or(body, c)
    }

    /// The reply cut into the pieces a stream delivers.
    fn pieces(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for ch in text.chars() {
            if ch == ' ' && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.push(ch);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// The reply's pieces, the tail `x-upstream-big-piece` added as one.
    fn reply_pieces(&self, c: &Controls) -> Vec<String> {
        let big = c.big_piece.unwrap_or(0).min(self.reply.len());
        let (head, tail) = self.reply.split_at(self.reply.len() - big);
        let mut out = Self::pieces(head);
        if !tail.is_empty() {
            out.push(tail.to_string());
        }
        out
    }

    fn events(&self, c: &Controls, include_usage: bool) -> Vec<String> {
        let f = c.framing;
        let data = |v: Value| f.data(&v);
        let mut ev = Vec::new();
        match self.api {
            Api::Chat => {
                let id = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG";
                let placement = if include_usage {
                    Some(c.placement)
                } else {
                    None
                };
                let every =
                    (c.usage_every_chunk && !c.no_usage) || placement == Some(Placement::Every);
                // Whether chunks without counts carry `"usage": null`.
                let member = every || placement == Some(Placement::Separate);
                let chunk = |choices: Value, usage: Option<Value>| {
                    let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": CREATED,
                        "model": self.model, "service_tier": "default", "system_fingerprint": "fp_6ec83003ad",
                        "choices": choices});
                    let usage = usage.or_else(|| member.then_some(Value::Null));
                    if let (Some(u), Some(o)) = (usage, v.as_object_mut()) {
                        if c.usage_first {
                            o.shift_insert(0, "usage".into(), u);
                        } else {
                            o.insert("usage".into(), u);
                        }
                    }
                    v
                };
                let every_usage = || every.then(|| self.chat_usage(c));
                ev.push(data(chunk(
                    json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                        "logprobs": null, "finish_reason": null}]),
                    every_usage(),
                )));
                match &self.tool {
                    Some(name) => {
                        ev.push(data(chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0,
                            "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
                            "function": {"name": name, "arguments": ""}}]}, "logprobs": null, "finish_reason": null}]), every_usage())));
                        for piece in Self::pieces(&self.tool_args()) {
                            ev.push(data(chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0,
                                "function": {"arguments": piece}}]}, "logprobs": null, "finish_reason": null}]), every_usage())));
                        }
                    }
                    None => {
                        for piece in self.reply_pieces(c) {
                            ev.push(data(chunk(
                                json!([{"index": 0, "delta": {"content": piece}, "logprobs": null, "finish_reason": null}]),
                                every_usage(),
                            )));
                        }
                    }
                }
                let finish = if self.tool.is_some() {
                    "tool_calls"
                } else {
                    "stop"
                };
                let last = if placement == Some(Placement::Last) {
                    Some(self.chat_usage(c))
                } else {
                    every_usage()
                };
                ev.push(data(chunk(
                    json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish}]),
                    last,
                )));
                if include_usage && placement != Some(Placement::Last) {
                    ev.push(data(chunk(json!([]), Some(self.chat_usage(c)))));
                }
                ev.push(f.done());
            }
            Api::Completions => {
                let chunk = |choices: Value, usage: Option<Value>| {
                    let mut v = json!({"id": "cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe", "object": "text_completion",
                        "created": CREATED, "choices": choices, "model": self.model,
                        "system_fingerprint": "fp_44709d6fcb"});
                    if include_usage {
                        v["usage"] = usage.unwrap_or(Value::Null);
                    }
                    v
                };
                for piece in Self::pieces(&self.reply) {
                    ev.push(data(chunk(
                        json!([{"text": piece, "index": 0, "logprobs": null, "finish_reason": null}]),
                        None,
                    )));
                }
                ev.push(data(chunk(
                    json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}]),
                    None,
                )));
                if include_usage {
                    ev.push(data(chunk(json!([]), Some(self.chat_usage(c)))));
                }
                ev.push(f.done());
            }
            Api::Responses => {
                let mut seq = 0u64;
                let mut event = |name: &str, mut v: Value| {
                    v["type"] = json!(name);
                    v["sequence_number"] = json!(seq);
                    seq += 1;
                    f.event(name, &v)
                };
                let item_id = "msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654";
                let in_progress = self.response_object(c, "in_progress");
                ev.push(event("response.created", json!({"response": in_progress})));
                ev.push(event(
                    "response.in_progress",
                    json!({"response": in_progress}),
                ));
                ev.push(event("response.output_item.added", json!({"output_index": 0, "item": {
                    "id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}})));
                ev.push(event("response.content_part.added", json!({"item_id": item_id, "output_index": 0,
                    "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})));
                for piece in Self::pieces(&self.reply) {
                    ev.push(event(
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": 0,
                        "content_index": 0, "delta": piece}),
                    ));
                }
                ev.push(event(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": 0,
                    "content_index": 0, "text": self.reply}),
                ));
                ev.push(event("response.content_part.done", json!({"item_id": item_id, "output_index": 0,
                    "content_index": 0, "part": {"type": "output_text", "text": self.reply, "annotations": []}})));
                ev.push(event(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": {
                    "id": item_id, "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": self.reply, "annotations": []}]}}),
                ));
                ev.push(event(
                    "response.completed",
                    json!({"response": self.response_object(c, "completed")}),
                ));
            }
            Api::Embeddings => {}
        }
        ev
    }

    fn stream(&self, c: &Controls, include_usage: bool) -> Response {
        let events = self.events(c, include_usage);
        let delay = c.delay;
        let abort_after = c.abort_after;
        let fake_gzip = c.broken.as_deref() == Some("fake-gzip");
        let gzip = c.gzip || c.corrupt_after.is_some();
        let mut encoder =
            gzip.then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let items: Vec<Result<Bytes, std::io::Error>> = {
            use std::io::Write;
            let mut out = Vec::new();
            for (i, e) in events.into_iter().enumerate() {
                if abort_after == Some(i) {
                    out.push(Err(std::io::Error::other("upstream aborts the stream")));
                    break;
                }
                let bytes = if c.corrupt_after == Some(i) {
                    // After a sync flush the deflate stream is byte-aligned: 0x07 starts a
                    // final block of the reserved type 3, which no decoder accepts.
                    encoder = None;
                    let mut b = vec![0x07];
                    b.extend_from_slice(e.as_bytes());
                    b
                } else {
                    match encoder.as_mut() {
                        Some(enc) => {
                            let _ = enc.write_all(e.as_bytes());
                            let _ = enc.flush();
                            std::mem::take(enc.get_mut())
                        }
                        None => e.into_bytes(),
                    }
                };
                out.push(Ok(Bytes::from(bytes)));
            }
            if abort_after.is_none() {
                if let Some(enc) = encoder.take() {
                    out.push(Ok(Bytes::from(enc.finish().unwrap_or_default())));
                }
            }
            out
        };
        let body = stream::unfold(items.into_iter(), move |mut it| async move {
            let item = it.next()?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((item, it))
        });
        let mut b = Response::builder()
            .status(200)
            .header(
                "content-type",
                c.content_type
                    .as_deref()
                    .unwrap_or("text/event-stream; charset=utf-8"),
            )
            .header("cache-control", "no-cache");
        if gzip || fake_gzip {
            b = b.header("content-encoding", "gzip");
        }
        b.body(Body::from_stream(body))
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_accounting_matches_the_cookbook_example() {
        let req = json!({"messages": [{"role": "user", "content": "Hello"}]});
        // 3 (message) + 1 ("user") + 1 ("Hello") + 3 (priming)
        assert_eq!(chat_prompt_tokens("gpt-4o", &req), 8);
    }

    #[test]
    fn pieces_rebuild_the_text() {
        let t = "Hello, wide world  again";
        assert_eq!(Generation::pieces(t).concat(), t);
    }
}
