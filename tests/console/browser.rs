//! A real browser for the console: Debian's chromium, driven through chromedriver (both
//! started here on loopback and stopped when dropped) with the WebDriver client fantoccini.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
const LIMIT: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where screenshots go: kept after the run as the test's artefacts.
    pub shots: PathBuf,
}

impl Browser {
    pub async fn start() -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: `make browser` installs Debian's chromium and chromium-driver"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + LIMIT;
        while tokenmeter_testkit::client::get(&format!("{url}/status")).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        // The flags keep Chromium off the network: it reaches nothing but loopback here.
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1500", format!("--user-data-dir={}", profile.path().display())]}),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("chromedriver would not open a session");
        let shots = std::env::var_os("TOKENMETER_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("console"));
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            _profile: profile,
            shots,
        }
    }

    /// How many times the console has drawn its view.
    async fn generation(&self) -> i64 {
        self.client
            .execute(
                "const v = document.getElementById('view'); return v ? Number(v.dataset.generation || 0) : 0",
                vec![],
            )
            .await
            .unwrap()
            .as_i64()
            .unwrap_or(0)
    }

    /// Does `action`, then waits until the console has drawn a new view and finished it.
    pub async fn after<F: std::future::Future<Output = ()>>(&self, action: F) {
        let before = self.generation().await;
        action.await;
        let deadline = Instant::now() + LIMIT;
        loop {
            let state = self
                .client
                .execute(
                    "const v = document.getElementById('view'); return v ? [Number(v.dataset.generation || 0), v.dataset.loading] : [0, null];",
                    vec![],
                )
                .await
                .unwrap();
            if state[0].as_i64().unwrap_or(0) > before && state[1] == "false" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the console did not finish drawing: {state}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn open(&self, url: &str) {
        self.after(async {
            self.client.goto(url).await.unwrap();
        })
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    pub async fn script(&self, js: &str) -> Value {
        self.client.execute(js, vec![]).await.unwrap()
    }

    pub async fn select(&self, css: &str, value: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap();
        self.after(async {
            el.select_by_value(value).await.unwrap();
        })
        .await;
    }

    pub async fn click(&self, css: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap();
        self.after(async {
            el.click().await.unwrap();
        })
        .await;
    }

    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Stops the browsers chromedriver started (its children: a browser's own helpers end
    /// with it), then chromedriver, even after a failed assertion left the session open.
    fn stop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.driver.id().to_string()])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}
