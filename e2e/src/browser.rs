//! Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol, for
//! testing the dashboard as a browser renders it: console errors, page text, screenshots.

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A running headless Chromium with one page; killed when dropped.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    devtools: WebSocketStream<TcpStream>,
    session: Option<String>,
    next_id: u64,
    /// Errors the page reported: exceptions, `console.error`, failed loads.
    errors: Vec<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Chromium binary: `$PORTICO_CHROMIUM`, else `chromium` on the `PATH`.
fn chromium() -> String {
    std::env::var("PORTICO_CHROMIUM").unwrap_or_else(|_| "chromium".to_string())
}

impl Browser {
    /// Starts Chromium with a fresh profile, without the background connections that a
    /// closed network refuses, and connects to its DevTools endpoint.
    pub async fn launch(width: u32, height: u32) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} (Debian package chromium)", chromium()))?;
        // Chromium names its DevTools address on stderr; the rest of stderr is drained so
        // that a full pipe never stalls it.
        let stderr = child.stderr.take().context("chromium stderr")?;
        let (found, url) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.find("ws://") {
                    let _ = found.send(line[at..].trim().to_string());
                }
            }
        });
        let url = tokio::task::spawn_blocking(move || url.recv_timeout(Duration::from_secs(30)))
            .await?
            .context("chromium did not announce its DevTools endpoint within 30 s")?;
        let authority = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let tcp = TcpStream::connect(&authority)
            .await
            .with_context(|| format!("connecting to DevTools at {authority}"))?;
        let (devtools, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .context("DevTools handshake")?;
        Ok(Browser {
            child,
            _profile: profile,
            devtools,
            session: None,
            next_id: 0,
            errors: Vec::new(),
        })
    }

    /// Opens `url` in a new page and waits for it to load.
    pub async fn open(&mut self, url: &str) -> anyhow::Result<()> {
        let target = self
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_string();
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        self.session = Some(
            attached["sessionId"]
                .as_str()
                .context("sessionId")?
                .to_string(),
        );
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            self.call(domain, json!({})).await?;
        }
        self.call("Page.navigate", json!({"url": url})).await?;
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(10),
        )
        .await
    }

    /// Evaluates `expression` in the page; its value as JSON.
    pub async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = result.get("exceptionDetails") {
            anyhow::bail!("{expression}: {e}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `condition` (a JavaScript expression) until it is true; errs after `within`.
    pub async fn wait_for(&mut self, condition: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.eval(condition).await? == Value::Bool(true) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{condition} still false after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's text, as a user reads it.
    pub async fn text(&mut self) -> anyhow::Result<String> {
        Ok(self
            .eval("document.body.innerText")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self) -> anyhow::Result<Vec<u8>> {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let data = shot["data"].as_str().context("screenshot data")?;
        Ok(openssl::base64::decode_block(data)?)
    }

    /// What the page reported as errors so far.
    pub async fn errors(&mut self) -> anyhow::Result<Vec<String>> {
        self.eval("0").await?; // collects the events that arrived before it
        Ok(self.errors.clone())
    }

    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let (Some(session), false) = (&self.session, method.starts_with("Target.")) {
            message["sessionId"] = json!(session);
        }
        self.devtools
            .send(Message::text(message.to_string()))
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let next = tokio::time::timeout_at(deadline, self.devtools.next())
                .await
                .with_context(|| format!("{method}: no answer"))?;
            let Some(Ok(Message::Text(text))) = next else {
                match next {
                    Some(Ok(_)) => continue,
                    _ => anyhow::bail!("{method}: DevTools connection closed"),
                }
            };
            let value: Value = serde_json::from_str(text.as_str())?;
            if value["id"] == json!(id) {
                if let Some(e) = value.get("error") {
                    anyhow::bail!("{method}: {e}");
                }
                return Ok(value["result"].clone());
            }
            self.note_event(&value);
        }
    }

    fn note_event(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .errors
                .push(format!("exception: {}", params["exceptionDetails"])),
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => self
                .errors
                .push(format!("console.error: {}", params["args"])),
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => self.errors.push(
                format!("{}: {}", params["entry"]["source"], params["entry"]["text"]),
            ),
            _ => {}
        }
    }
}
