//! Running the real Envoy: start it on a bootstrap, find its ports, read its stats, stop it.
//!
//! Bootstraps are rendered with port 0 for the listener and the admin interface; Envoy
//! picks free ports, writes the admin address to a file, and the listener's port is read
//! from the admin `/listeners` endpoint. So any number of Envoys run in parallel without
//! port races (`--disable-hot-restart` avoids shared-memory clashes).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

/// The repository root (the testkit lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Envoy binary: `$ENVOY_BIN`, else the one `make` installs in `.tools/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    let p = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/bin/envoy"));
    assert!(
        p.exists(),
        "Envoy not found at {}: run the tests with `make test`, which installs it",
        p.display()
    );
    p
}

/// The built filter: `$TOKENMETER_WASM`, else the release build `make wasm` writes.
pub fn wasm_path() -> PathBuf {
    let p = std::env::var_os("TOKENMETER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm32-wasip1/release/tokenmeter.wasm"));
    assert!(
        p.exists(),
        "tokenmeter.wasm not found at {}: run the tests with `make test`, which builds it",
        p.display()
    );
    p
}

pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` (YAML) with `concurrency` worker threads and waits until
    /// it is ready.
    pub fn start(bootstrap: &str, concurrency: usize) -> Result<Envoy> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap)?;
        let admin_file = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let child = Command::new(envoy_bin())
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
            .context("starting envoy")?;
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse()?,
            listener: "127.0.0.1:0".parse()?,
            dir,
        };
        envoy.wait_ready(&admin_file)?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_file: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
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
                    if let Ok(ready) = self.admin_get("/ready") {
                        if ready.trim() == "LIVE" {
                            break;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
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

    /// GET on the admin interface.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        let mut resp = ureq::get(&format!("http://{}{path}", self.admin))
            .call()
            .with_context(|| format!("admin GET {path}"))?;
        Ok(resp.body_mut().read_to_string()?)
    }

    /// The Prometheus exposition, parsed.
    pub fn prometheus(&self) -> Result<crate::prom::Exposition> {
        let text = self.admin_get("/stats/prometheus")?;
        crate::prom::Exposition::parse(&text)
    }

    /// `http://127.0.0.1:PORT` of the listener.
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

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `envoy --mode validate` on a bootstrap: whether it was accepted, and the output.
pub fn validate(bootstrap: &str) -> Result<(bool, String)> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, bootstrap)?;
    let out = Command::new(envoy_bin())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&config)
        .arg("--disable-hot-restart")
        .args(["-l", "warning", "--log-format", "[%l] %v"])
        .output()
        .context("running envoy --mode validate")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}
