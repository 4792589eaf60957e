//! A real headless Chromium, driven over WebDriver: Debian's `chromium` and
//! `chromedriver` (packages chromium and chromium-driver, which `make test`
//! installs when missing). Never a browser download.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::topology::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";

/// How often a page is looked at again while waiting on it.
const LOOK_EVERY: Duration = Duration::from_millis(100);

pub struct Browser {
    client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// chromedriver, in a process group of its own with the Chromium it
/// starts: the whole group is killed when this drops, a failed start too.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// with a fresh profile and no background traffic (this machine's
    /// network is closed: Chromium's own update and sync calls would fail).
    pub async fn start() -> Self {
        for tool in [CHROMIUM, DRIVER] {
            assert!(
                Path::new(tool).is_file(),
                "{tool} is missing: `make test` installs Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver)"
            );
        }
        let port = free_port();
        // Its own process group, so Chromium (its child) goes with it.
        let driver = Driver(
            Command::new(DRIVER)
                .arg(format!("--port={port}"))
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let profile = tempfile::tempdir().expect("a browser profile folder");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let capabilities = match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("an object"),
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            // The driver is on loopback: plain HTTP, no TLS stack.
            let connected = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await;
            match connected {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(LOOK_EVERY).await;
                }
                Err(e) => panic!("cannot start a Chromium session: {e}"),
            }
        };
        Self {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    /// The text of the first element `css` finds, if any.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// The text of every element `css` finds, in page order.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let Ok(elements) = self.client.find_all(Locator::Css(css)).await else {
            return Vec::new();
        };
        let mut texts = Vec::new();
        for element in elements {
            texts.push(element.text().await.unwrap_or_default());
        }
        texts
    }

    /// The whole page's visible text.
    pub async fn page_text(&self) -> String {
        self.text("body").await.unwrap_or_default()
    }

    /// Waits until `check` accepts the page's text, looking again every
    /// 100 ms; panics with `what` and the page after `timeout`.
    pub async fn wait_for_text(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let text = self.page_text().await;
            if check(&text) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {what}; the page shows:\n{text}"
            );
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Saves the window as `<$CBS_SCREENSHOTS>/<name>.png` when that
    /// variable names a folder (`make console-screenshots` sets it for the
    /// docs); does nothing otherwise.
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("CBS_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = Path::new(&dir).join(format!("{name}.png"));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Every URL the page has requested so far (the browser's resource
    /// timing entries, EventSource streams included), and the page's own.
    pub async fn requested_urls(&self) -> Vec<String> {
        let script = "return [location.href].concat(\
            performance.getEntriesByType('resource').map(e => e.name))";
        let urls = self
            .client
            .execute(script, vec![])
            .await
            .expect("the script runs");
        serde_json::from_value(urls).expect("a list of URLs")
    }

    /// Signs in on the page's sign-in form with `token`.
    pub async fn sign_in(&self, token: &str) {
        let field = self
            .client
            .find(Locator::Id("token"))
            .await
            .expect("a sign-in field (is the console started with actions?)");
        field.send_keys(token).await.expect("the token is typed");
        let form = self.client.form(Locator::Id("sign-in")).await.unwrap();
        form.submit().await.expect("the sign-in form submits");
    }

    /// Clicks the element `css` finds, waiting up to `timeout` for it to
    /// be there and visible.
    pub async fn click(&self, css: &str, timeout: Duration) {
        let started = Instant::now();
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.click().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match clicked {
                Ok(()) => return,
                Err(e) => assert!(started.elapsed() < timeout, "cannot click {css}: {e}"),
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Accepts the `confirm()` dialog the page opened, waiting up to
    /// `timeout` for it.
    pub async fn accept_confirm(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            match self.client.accept_alert().await {
                Ok(()) => return,
                Err(e) => assert!(started.elapsed() < timeout, "no dialog opened: {e}"),
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }
}

impl Browser {
    /// Ends the session (Chromium exits), then the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}
