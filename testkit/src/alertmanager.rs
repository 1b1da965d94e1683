//! Running a real Prometheus Alertmanager (Debian's `prometheus-alertmanager`): on loopback,
//! in a temporary directory, clustering off, routing every alert at once (group wait and
//! interval of one second) to a webhook that also gets resolved notifications.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The Alertmanager binary: `ALERTMANAGER_BIN`, else Debian's.
pub fn alertmanager_bin() -> PathBuf {
    let p = std::env::var_os("ALERTMANAGER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus-alertmanager"));
    assert!(
        p.exists(),
        "Alertmanager not found at {}: `make alertmanager` installs Debian's prometheus-alertmanager (make test does)",
        p.display()
    );
    p
}

pub struct Alertmanager {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts an Alertmanager whose only receiver posts to `webhook_url` and waits until
    /// it is ready.
    pub fn start(webhook_url: &str) -> Result<Alertmanager> {
        let mut last = None;
        // A free port is taken from the kernel then handed over: retry if another process
        // took it meanwhile.
        for _ in 0..3 {
            match Self::start_once(webhook_url) {
                Ok(am) => return Ok(am),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the Alertmanager did not start")))
    }

    fn start_once(webhook_url: &str) -> Result<Alertmanager> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: [alertname, monitor, metric]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {webhook_url}\n        send_resolved: true\n"
            ),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("alertmanager.log"))?;
        let child = Command::new(alertmanager_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the Alertmanager")?;
        let mut am = Alertmanager {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = crate::client::get(&format!("{}/-/ready", am.url)) {
                if r.status == 200 {
                    return Ok(am);
                }
            }
            if let Some(status) = am.child.try_wait()? {
                bail!("the Alertmanager exited ({status}): {}", am.log());
            }
            if Instant::now() > deadline {
                bail!("the Alertmanager was not ready within 30 s: {}", am.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its base URL, as a monitor's `alerts.alertmanager.url` names it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The alerts it holds (`GET /api/v2/alerts`), active ones by default.
    pub fn alerts(&self) -> Result<serde_json::Value> {
        let r = crate::client::get(&format!("{}/api/v2/alerts", self.url))?;
        if r.status != 200 {
            bail!("GET /api/v2/alerts: {} {}", r.status, r.text());
        }
        Ok(r.json())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
