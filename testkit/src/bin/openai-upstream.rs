//! The OpenAI-compatible test upstream as a standalone server.
//!
//! `openai-upstream [--listen 127.0.0.1:8000]`; see the `upstream` module for the headers
//! that steer its answers.

fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:8000".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: openai-upstream [--listen HOST:PORT]"
            ),
        }
    }
    let up = tokenmeter_testkit::upstream::Upstream::start_on(listen.parse()?)?;
    eprintln!("openai-upstream listening on http://{}", up.addr);
    up.wait();
    Ok(())
}
