//! A headless Chromium for the `Browser` tool, driven over the Chrome DevTools Protocol.
//!
//! One browser per run, started on first use and killed with the run (it dies with the
//! agent, `PR_SET_PDEATHSIG`, and with the sandbox in any case). It runs inside the
//! sandbox, so the group's network policy applies to it as to every tool: under
//! `internet` it is pointed at the sandbox's egress proxy. Its profile (cookies, local
//! storage) lives in the group's folder and persists across the group's runs, never
//! shared with another group; its cache lives in the run's `/tmp`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The profile, relative to the group folder.
pub const PROFILE_DIR: &str = ".browser-profile";
/// Longest one DevTools call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a page may take to load after navigating, clicking or going back.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest Chromium may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest DevTools message read (a screenshot of a big page is a few MB).
const MAX_MESSAGE: usize = 32 << 20;

/// The Chromium binary, if this sandbox has one (`NANOCLAW_BROWSER` names another).
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NANOCLAW_BROWSER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    nanoclaw_protocol::BROWSER_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running browser and the page the tool works in.
pub struct Browser {
    child: tokio::process::Child,
    socket: Socket,
    session: String,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium with the group's profile under `workdir`.
    pub async fn start(workdir: &Path) -> Result<Browser, String> {
        let binary = binary().ok_or(
            "no Chromium in this sandbox (the agent image has it; for bwrap, install Debian's `chromium` on the host)",
        )?;
        let profile = workdir.join(PROFILE_DIR);
        std::fs::create_dir_all(&profile).map_err(|e| {
            format!(
                "cannot create the browser profile {}: {e}",
                profile.display()
            )
        })?;
        // A browser of an earlier run that was killed leaves its locks and port file.
        for stale in [
            "SingletonLock",
            "SingletonSocket",
            "SingletonCookie",
            "DevToolsActivePort",
        ] {
            let _ = std::fs::remove_file(profile.join(stale));
        }
        let mut command = tokio::process::Command::new(&binary);
        command
            .arg("--headless=new")
            // The sandbox is the boundary: Chromium's own needs namespaces it cannot make.
            .arg("--no-sandbox")
            .args([
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--disk-cache-dir=/tmp/nanoclaw-browser-cache");
        // Under `internet`, everything leaves through the sandbox's egress proxy
        // (Chromium reads no proxy variables); loopback stays direct.
        if let Some(proxy) = std::env::var("HTTPS_PROXY").ok().filter(|p| !p.is_empty()) {
            command.arg(format!("--proxy-server={proxy}"));
        }
        command
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // Dies with the agent: a run's browser never outlives it.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let url = match wait_for_port(&profile, &mut child).await {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill().await;
                return Err(e);
            }
        };
        let (socket, _) = tokio::time::timeout(
            CALL_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(
                url.as_str(),
                Some(
                    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                        .max_message_size(Some(MAX_MESSAGE))
                        .max_frame_size(Some(MAX_MESSAGE)),
                ),
                false,
            ),
        )
        .await
        .map_err(|_| "Chromium's DevTools did not answer".to_string())?
        .map_err(|e| format!("cannot connect to Chromium's DevTools: {e}"))?;
        let mut browser = Browser {
            child,
            socket,
            session: String::new(),
            next_id: 0,
        };
        let target = browser
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"].as_str().unwrap_or("").to_string();
        let attached = browser
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or("Chromium gave no session for the page")?
            .to_string();
        browser.page("Page.enable", json!({})).await?;
        Ok(browser)
    }

    /// Calls `method` on the page.
    pub async fn page(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let session = self.session.clone();
        self.call(Some(&session), method, params).await
    }

    /// Calls a DevTools method (on the browser, or on the page's `session`) and waits
    /// for its answer; events in between are skipped.
    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let answer = tokio::time::timeout(CALL_TIMEOUT, async {
            self.socket
                .send(Message::text(message.to_string()))
                .await
                .map_err(|e| format!("the browser connection failed: {e}"))?;
            while let Some(frame) = self.socket.next().await {
                let frame = frame.map_err(|e| format!("the browser connection failed: {e}"))?;
                let Message::Text(text) = frame else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if value["id"].as_u64() == Some(id) {
                    return Ok(value);
                }
            }
            Err("the browser closed its connection".to_string())
        })
        .await
        .map_err(|_| {
            format!(
                "the browser did not answer {method} within {} s",
                CALL_TIMEOUT.as_secs()
            )
        })??;
        if let Some(error) = answer.get("error") {
            return Err(format!(
                "{method}: {}",
                error["message"].as_str().unwrap_or("failed")
            ));
        }
        Ok(answer["result"].clone())
    }

    /// Evaluates `expression` in the page; its value (JSON).
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            let text = exception["exception"]["description"]
                .as_str()
                .or_else(|| exception["text"].as_str())
                .unwrap_or("an exception");
            return Err(format!(
                "the page's script failed: {}",
                nanoclaw_protocol::ipc::shorten(text, 300)
            ));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits until the page has loaded (after a navigation, a click, going back), at
    /// most [`LOAD_TIMEOUT`]; a page still loading then is described as it is. `first`
    /// waits before looking: a click's navigation starts a moment after it, while
    /// `Page.navigate` answers once the new document is there.
    pub async fn settle(&mut self, first: Duration) {
        tokio::time::sleep(first).await;
        let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            match self.eval("document.readyState").await {
                Ok(state) if state == "complete" => return,
                // Between two documents: the old one is gone, the new not there yet.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Ends the browser.
    pub async fn close(mut self) {
        let _ = self.call(None, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// Reads the DevTools URL Chromium writes into `DevToolsActivePort` once listening.
async fn wait_for_port(
    profile: &Path,
    child: &mut tokio::process::Child,
) -> Result<String, String> {
    let file = profile.join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next())
                && let Ok(port) = port.trim().parse::<u16>()
                && path.starts_with("/devtools/browser/")
            {
                return Ok(format!("ws://127.0.0.1:{port}{}", path.trim()));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("Chromium exited at start ({status})"));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "Chromium did not start within {} s",
                START_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Numbers the page's visible interactive elements (`data-nc-ref`) and describes the
/// page: title, URL, readable text (cut), elements, scroll position.
pub const SNAPSHOT_JS: &str = r#"(() => {
  const MAX_TEXT = 12000, MAX_ELEMENTS = 150;
  for (const el of document.querySelectorAll('[data-nc-ref]')) el.removeAttribute('data-nc-ref');
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) return false;
    const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.display !== 'none';
  };
  const clean = (t, n) => String(t || '').replace(/\s+/g, ' ').trim().slice(0, n);
  const selector = 'a[href], button, input:not([type=hidden]), textarea, select, summary, '
    + '[role=button], [role=link], [role=checkbox], [role=tab], [role=menuitem], '
    + '[contenteditable=""], [contenteditable=true], [onclick]';
  const items = [];
  let n = 0;
  for (const el of document.querySelectorAll(selector)) {
    if (!visible(el) || el.disabled) continue;
    if (n >= MAX_ELEMENTS) break;
    n += 1;
    el.setAttribute('data-nc-ref', String(n));
    const tag = el.tagName.toLowerCase();
    let kind = tag === 'a' ? 'link' : tag === 'input' ? `input[${el.type || 'text'}]` : tag;
    const label = clean(el.getAttribute('aria-label') || el.innerText || (tag === 'input' && ['submit', 'button'].includes(el.type) ? el.value : '')
      || el.placeholder || el.title || el.alt || el.name, 80);
    let extra = '';
    if (tag === 'a') extra = ` -> ${clean(el.getAttribute('href'), 120)}`;
    if (tag === 'input' || tag === 'textarea') {
      if (el.name) extra += ` name=${clean(el.name, 40)}`;
      if (el.placeholder) extra += ` placeholder="${clean(el.placeholder, 60)}"`;
      if (el.type === 'checkbox' || el.type === 'radio') extra += el.checked ? ' checked' : ' unchecked';
      else if (el.value && !['submit', 'button'].includes(el.type)) extra += ` value="${clean(el.value, 60)}"`;
    }
    if (tag === 'select') {
      extra = ` selected="${clean((el.selectedOptions[0] || {}).text, 40)}" options: `
        + [...el.options].slice(0, 20).map((o) => clean(o.text, 30)).join(' | ');
    }
    items.push(`[${n}] ${kind} "${label}"${extra}`);
  }
  let text = (document.body ? document.body.innerText : '').replace(/\n{3,}/g, '\n\n').trim();
  const cut = text.length > MAX_TEXT;
  if (cut) text = text.slice(0, MAX_TEXT);
  const bottom = Math.max(0, document.documentElement.scrollHeight - innerHeight);
  return { title: document.title, url: location.href, text, cut, items, y: Math.round(scrollY), bottom };
})()"#;
