//! Starting and stopping Envoy processes for measurement.
//!
//! Like the testkit's runner, Envoy picks its own ports (port 0) and the admin address is
//! read from the file it writes. Unlike it, this one polls readiness every few
//! milliseconds, so that the time to `/ready` can be reported, and exposes the process id
//! for CPU and memory accounting.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

/// The CPUs every Envoy started from now on runs on (`taskset -c`), if any.
static GATEWAY_CPUS: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Pins the Envoys started after this call to `cpus` (a `taskset -c` list), or not.
pub fn set_gateway_cpus(cpus: Option<String>) {
    if let Ok(mut c) = GATEWAY_CPUS.lock() {
        *c = cpus;
    }
}

pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    /// From spawning the process to the admin interface answering `LIVE`.
    pub ready_after: Duration,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts `binary` on `bootstrap` with `concurrency` workers and waits until it is ready:
    /// a gateway under test, on the CPUs of [`set_gateway_cpus`].
    pub fn start(binary: &Path, bootstrap: &str, concurrency: usize) -> Result<Envoy> {
        let cpus = GATEWAY_CPUS.lock().ok().and_then(|c| c.clone());
        Envoy::start_on(binary, bootstrap, concurrency, cpus.as_deref())
    }

    /// Starts an Envoy that is not under test (an upstream), on this process's CPUs.
    pub fn start_upstream(binary: &Path, bootstrap: &str) -> Result<Envoy> {
        Envoy::start_on(binary, bootstrap, 1, None)
    }

    fn start_on(
        binary: &Path,
        bootstrap: &str,
        concurrency: usize,
        cpus: Option<&str>,
    ) -> Result<Envoy> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap)?;
        let admin_file = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let started = Instant::now();
        // taskset execs Envoy, so the child's pid stays Envoy's.
        let mut command = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["-l", "warning", "--log-format", "[%l] %v"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse()?,
            listener: "127.0.0.1:0".parse()?,
            ready_after: Duration::ZERO,
            dir,
        };
        envoy.wait_ready(&admin_file, started)?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_file: &Path, started: Instant) -> Result<()> {
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("envoy exited ({status}) during start:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("envoy was not ready within 60 s:\n{}", self.log());
            }
            if let Ok(text) = std::fs::read_to_string(admin_file) {
                if let Ok(addr) = text.trim().parse() {
                    self.admin = addr;
                    if self.admin_get("/ready").is_ok_and(|r| r.trim() == "LIVE") {
                        self.ready_after = started.elapsed();
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let listeners: serde_json::Value =
            serde_json::from_str(&self.admin_get("/listeners?format=json")?)?;
        let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .ok_or_else(|| anyhow!("no listener in {listeners}"))?;
        self.listener = format!("127.0.0.1:{port}").parse()?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET on the admin interface.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        let mut resp = ureq::get(&format!("http://{}{path}", self.admin))
            .call()
            .with_context(|| format!("admin GET {path}"))?;
        Ok(resp.body_mut().read_to_string()?)
    }

    /// `http://127.0.0.1:PORT{path}` on the listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("envoy.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy binary's version line.
pub fn version(binary: &Path) -> Result<String> {
    let out = Command::new(binary).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "envoy  version: HASH/1.40.0/Clean/RELEASE/BoringSSL"
    Ok(text
        .split_whitespace()
        .last()
        .and_then(|v| v.split('/').nth(1).map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string()))
}

/// Resolves a path given on the command line against the working directory.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let p = std::path::absolute(path)?;
    if !p.exists() {
        bail!("{} does not exist", p.display());
    }
    Ok(p)
}
