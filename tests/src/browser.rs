//! A real browser for the dashboard's tests: headless Chromium driven over
//! the W3C WebDriver protocol by chromedriver, spoken here with `reqwest`
//! (a dozen commands; a WebDriver crate would bring a second HTTP stack).
//!
//! Chromium and chromedriver come from Debian (`chromium`,
//! `chromium-driver`); the test command's script installs them on a fresh
//! machine. A test that needs a browser and finds none fails, naming what to
//! install: it never skips. Every page a scenario visits is saved as a
//! screenshot under `target/dashboard-screenshots/` (see [`Browser::shot`]).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// Where Debian puts them; `LEDGERLINE_CHROMIUM` / `LEDGERLINE_CHROMEDRIVER`
/// override.
const CHROMIUM_DEFAULT: &str = "/usr/bin/chromium";
const CHROMEDRIVER_DEFAULT: &str = "/usr/bin/chromedriver";
/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a wait for the page gives up after.
pub const WAIT_MS_MAX: u64 = 15_000;
/// How long chromedriver has to start.
const DRIVER_START_MS_MAX: u64 = 20_000;

/// One browser session, with its chromedriver.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    profile: PathBuf,
    shots: PathBuf,
    scenario: String,
    taken: usize,
}

fn program(variable: &str, default: &str, package: &str) -> anyhow::Result<String> {
    let path = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    if !std::path::Path::new(&path).exists() {
        bail!("{path} is missing: install Debian's `{package}` (the test script does: scripts/test) or set {variable}");
    }
    Ok(path)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (1280×900), for the
    /// scenario `scenario` (the screenshots' prefix).
    ///
    /// # Errors
    /// When Chromium or chromedriver is missing or does not start.
    pub async fn start(scenario: &str) -> anyhow::Result<Self> {
        let chromium = program("LEDGERLINE_CHROMIUM", CHROMIUM_DEFAULT, "chromium")?;
        let chromedriver = program("LEDGERLINE_CHROMEDRIVER", CHROMEDRIVER_DEFAULT, "chromium-driver")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await.ok();
            if let Some(response) = ready {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            if started.elapsed() > Duration::from_millis(DRIVER_START_MS_MAX) {
                bail!("chromedriver did not become ready on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("ledgerline-chromium-{}", uuid::Uuid::new_v4()));
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1280,900", format!("--user-data-dir={}", profile.display()),
                ],
            },
        } } });
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .context("creating a browser session")?
            .json()
            .await?;
        let session = created["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("chromedriver refused the session: {created}"))?
            .to_owned();
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
        std::fs::create_dir_all(&shots)?;
        Ok(Self {
            http,
            session: format!("{base}/session/{session}"),
            driver,
            profile,
            shots,
            scenario: scenario.to_owned(),
            taken: 0,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.context("talking to chromedriver")?.json().await?;
        if let Some(error) = answer["value"].get("error") {
            bail!("{path}: {error}: {}", answer["value"]["message"]);
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url` and waits until the page has loaded.
    ///
    /// # Errors
    /// When the browser fails.
    pub async fn open(&self, url: &str) -> anyhow::Result<()> {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await?;
        Ok(())
    }

    /// The address of the page shown.
    ///
    /// # Errors
    /// When the browser fails.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self.command(reqwest::Method::GET, "/url", None).await?.as_str().unwrap_or_default().to_owned())
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .command(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css })))
            .await?;
        Ok(found[ELEMENT_KEY].as_str().context("an element reference")?.to_owned())
    }

    /// Whether an element matches `css` now.
    ///
    /// # Errors
    /// When the browser fails.
    pub async fn has(&self, css: &str) -> anyhow::Result<bool> {
        let found = self
            .command(reqwest::Method::POST, "/elements", Some(json!({ "using": "css selector", "value": css })))
            .await?;
        Ok(found.as_array().is_some_and(|elements| !elements.is_empty()))
    }

    /// Clicks the element `css`.
    ///
    /// # Errors
    /// When there is none, or the browser fails.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.command(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await?;
        Ok(())
    }

    /// Types `text` into the field `css`.
    ///
    /// # Errors
    /// When there is none, or the browser fails.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.command(reqwest::Method::POST, &format!("/element/{element}/clear"), Some(json!({}))).await?;
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({ "text": text })))
            .await?;
        Ok(())
    }

    /// The visible text of the element `css`.
    ///
    /// # Errors
    /// When there is none, or the browser fails.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let element = self.element(css).await?;
        Ok(self
            .command(reqwest::Method::GET, &format!("/element/{element}/text"), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Runs `script` in the page (a function body; `arguments` are `args`,
    /// and the last argument is the callback it calls with its result) and
    /// gives back that result.
    ///
    /// # Errors
    /// When the script throws, or the browser fails.
    pub async fn run(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.command(reqwest::Method::POST, "/execute/async", Some(json!({ "script": script, "args": args }))).await
    }

    /// Waits until the text of `css` satisfies `done`, at most
    /// [`WAIT_MS_MAX`]; the text it last saw.
    ///
    /// # Errors
    /// When it never does (with that text), or the browser fails.
    pub async fn wait_for_text(&self, css: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_millis(WAIT_MS_MAX) {
            if self.has(css).await? {
                last = self.text(css).await?;
                if done(&last) {
                    return Ok(last);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("{css} never matched; last text: {last:?}")
    }

    /// Saves a screenshot of the page as
    /// `target/dashboard-screenshots/<scenario>-<n>-<name>.png`.
    ///
    /// # Errors
    /// When the browser or the disk fails.
    pub async fn shot(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let encoded = self.command(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap_or_default())?;
        self.taken += 1;
        let path = self.shots.join(format!("{}-{:02}-{name}.png", self.scenario, self.taken));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.http.delete(&self.session).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test still ends chromedriver (and so its Chromium).
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
