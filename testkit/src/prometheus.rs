//! Running a real Prometheus (Debian's `prometheus` package, which also ships `promtool`):
//! on loopback, in a temporary directory with its own TSDB, on the configuration a test
//! writes, and asked through its HTTP API. Killed by PID when dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

fn bin(var: &str, debian: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(debian));
    assert!(
        p.exists(),
        "{} not found: `make prometheus` installs Debian's prometheus (make test does), or set {var}",
        p.display()
    );
    p
}

/// The Prometheus server: `PROMETHEUS_BIN`, else Debian's.
pub fn prometheus_bin() -> PathBuf {
    bin("PROMETHEUS_BIN", "/usr/bin/prometheus")
}

/// promtool: `PROMTOOL_BIN`, else Debian's.
pub fn promtool_bin() -> PathBuf {
    bin("PROMTOOL_BIN", "/usr/bin/promtool")
}

/// One sample of an instant vector: its labels (`__name__` included when kept) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on `config` (the text of a `prometheus.yml`) and waits until it is
    /// ready.
    pub fn start(config: &str) -> Result<Prometheus> {
        let mut last = None;
        // A free port is taken from the kernel then handed over: retry if another process
        // took it meanwhile.
        for _ in 0..3 {
            match Self::start_once(config) {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("Prometheus did not start")))
    }

    fn start_once(config: &str) -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting Prometheus")?;
        let mut p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = crate::client::get(&format!("{}/-/ready", p.url)) {
                if r.status == 200 {
                    return Ok(p);
                }
            }
            if let Some(status) = p.child.try_wait()? {
                bail!("Prometheus exited ({status}): {}", p.log());
            }
            if Instant::now() > deadline {
                bail!("Prometheus was not ready within 30 s: {}", p.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET on the HTTP API; the `data` of a successful answer.
    pub fn api(&self, path: &str) -> Result<Value> {
        let r = crate::client::get(&format!("{}{path}", self.url))?;
        data(r.status, &r.json(), path)
    }

    /// An instant query (`/api/v1/query`), evaluated now.
    pub fn query(&self, promql: &str) -> Result<Value> {
        let r = crate::client::post(
            &format!("{}/api/v1/query", self.url),
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("query={}", form_encode(promql)).as_bytes(),
        )?;
        data(r.status, &r.json(), promql)
    }

    /// An instant query whose result is a vector, as samples.
    pub fn vector(&self, promql: &str) -> Result<Vec<Sample>> {
        let d = self.query(promql)?;
        if d["resultType"] != "vector" {
            bail!("{promql}: a {} rather than a vector", d["resultType"]);
        }
        let mut out = Vec::new();
        for s in d["result"].as_array().into_iter().flatten() {
            let labels = s["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = s["value"][1]
                .as_str()
                .context("a sample without a value")?
                .parse()
                .context("a value that is not a number")?;
            out.push(Sample { labels, value });
        }
        Ok(out)
    }

    /// Polls `promql` until `ready` accepts its samples; the last samples either way, after
    /// `limit` (the caller's assertions then fail with them).
    pub fn eventually(
        &self,
        promql: &str,
        limit: Duration,
        ready: impl Fn(&[Sample]) -> bool,
    ) -> Result<Vec<Sample>> {
        let deadline = Instant::now() + limit;
        loop {
            let samples = self.vector(promql)?;
            if ready(&samples) || Instant::now() > deadline {
                return Ok(samples);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data(status: u16, body: &Value, what: &str) -> Result<Value> {
    if status != 200 || body["status"] != "success" {
        bail!("{what}: {status} {body}");
    }
    Ok(body["data"].clone())
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_encoding() {
        assert_eq!(
            super::form_encode(r#"sum by (model) (x{a=~"b|c"})"#),
            "sum%20by%20%28model%29%20%28x%7Ba%3D~%22b%7Cc%22%7D%29"
        );
    }
}
