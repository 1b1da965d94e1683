//! Runs `tokenmeter serve` as a child process on an ephemeral port, and speaks HTTP to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running `tokenmeter serve`; killed when dropped.
pub struct Collector {
    child: Child,
    base: String,
}

impl Collector {
    /// Starts `BIN serve --db DB --listen 127.0.0.1:0 EXTRA...` and waits for its address.
    pub fn start(bin: &Path, db: &Path, extra: &[&str]) -> Result<Collector> {
        Collector::start_on(bin, db, "127.0.0.1:0", extra)
    }

    /// [`Collector::start`] on a given address (a collector that comes back where the
    /// gateway expects it).
    pub fn start_on(bin: &Path, db: &Path, listen: &str, extra: &[&str]) -> Result<Collector> {
        Collector::start_db(bin, db.as_os_str(), listen, extra, &[])
    }

    /// `BIN serve --db DB --listen LISTEN EXTRA...` with `env` added to its environment:
    /// `db` is a file or a `postgres://` URL (its password in `TOKENMETER_DB_PASSWORD`).
    pub fn start_db(
        bin: &Path,
        db: &std::ffi::OsStr,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Collector> {
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", listen])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("tokenmeter serve did not start ({status}); it printed {line:?}");
        };
        Ok(Collector {
            base: addr.to_string(),
            child,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Kills the process at once (SIGKILL): nothing is flushed or closed cleanly.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// GETs a path until `ready` accepts the body; fails after `limit`.
    pub fn poll(
        &self,
        path: &str,
        limit: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let (status, body) = get(&format!("{}{path}", self.base))?;
            if status == 200 && ready(&body) {
                return Ok(body);
            }
            if start.elapsed() > limit {
                bail!("GET {path} did not become ready within {limit:?}; last answer {status}: {body}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// POSTs a body; returns the status and the response text.
pub fn post(url: &str, content_type: &str, body: impl AsRef<[u8]>) -> Result<(u16, String)> {
    let mut r = agent()
        .post(url)
        .header("content-type", content_type)
        .send(body.as_ref())?;
    let status = r.status().as_u16();
    let text = r
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()?;
    Ok((status, text))
}

/// POSTs a body; returns the status, the named response header (if sent) and the text.
pub fn post_header(
    url: &str,
    content_type: &str,
    body: impl AsRef<[u8]>,
    header: &str,
) -> Result<(u16, Option<String>, String)> {
    let mut r = agent()
        .post(url)
        .header("content-type", content_type)
        .send(body.as_ref())?;
    let status = r.status().as_u16();
    let value = r
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = r.body_mut().read_to_string()?;
    Ok((status, value, text))
}

pub fn get(url: &str) -> Result<(u16, String)> {
    let mut r = agent().get(url).call()?;
    let status = r.status().as_u16();
    let text = r
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()?;
    Ok((status, text))
}
