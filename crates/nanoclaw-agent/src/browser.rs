//! A headless Chromium for the `Browser` tool, driven over the Chrome DevTools Protocol.
//!
//! One browser per run, started on first use and killed with the run (it dies with the
//! agent, `PR_SET_PDEATHSIG`, and with the sandbox in any case). It runs inside the
//! sandbox, so the group's network policy applies to it as to every tool: under
//! `internet` it is pointed at the sandbox's egress proxy. Its profile (cookies, local
//! storage) lives in the group's folder and persists across the group's runs, never
//! shared with another group; its cache lives in the run's `/tmp`.
//!
//! DevTools is spoken over a pair of pipes (`--remote-debugging-pipe`: Chromium reads
//! commands on fd 3 and writes answers on fd 4, each message a JSON text ended by a NUL),
//! never over a TCP port: a sandbox that shares the host's network (bwrap `full` as an
//! ordinary user) would otherwise let anyone on the host drive the browser, and through
//! it write this group's IPC files.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A running browser and the page the tool works in.
pub struct Browser {
    child: tokio::process::Child,
    commands: tokio::net::unix::pipe::Sender,
    answers: tokio::net::unix::pipe::Receiver,
    /// Bytes read past the last whole message.
    pending: Vec<u8>,
    session: String,
    next_id: u64,
}

/// A pipe end moved to a descriptor number above the ones the child takes (3 and 4), so
/// placing them cannot overwrite each other.
fn high(fd: OwnedFd) -> Result<OwnedFd, String> {
    rustix::io::fcntl_dupfd_cloexec(&fd, 10)
        .map_err(|e| format!("cannot set up the browser's pipes: {e}"))
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
        for stale in ["SingletonLock", "SingletonSocket", "SingletonCookie"] {
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
                "--remote-debugging-pipe",
                // Nothing of its own phoned home from the user's sandbox.
                "--no-pings",
                "--disable-client-side-phishing-detection",
                "--disable-default-apps",
                "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
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
        let (command_read, command_write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| format!("cannot set up the browser's pipes: {e}"))?;
        let (answer_read, answer_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("cannot set up the browser's pipes: {e}"))?;
        let (child_in, child_out) = (high(command_read)?, high(answer_write)?);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Dies with the agent: a run's browser never outlives it.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                // Its DevTools pipes at 3 and 4 (dup2 clears close-on-exec there).
                for (fd, at) in [(child_in.as_fd(), 3), (child_out.as_fd(), 4)] {
                    let mut target = OwnedFd::from_raw_fd(at);
                    let placed = rustix::io::dup2(fd, &mut target);
                    std::mem::forget(target);
                    placed?;
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        // This side keeps only its own ends.
        drop(command);
        let pipe = |e: std::io::Error| format!("cannot set up the browser's pipes: {e}");
        let mut browser = Browser {
            child,
            commands: tokio::net::unix::pipe::Sender::from_owned_fd(command_write).map_err(pipe)?,
            answers: tokio::net::unix::pipe::Receiver::from_owned_fd(answer_read).map_err(pipe)?,
            pending: Vec::new(),
            session: String::new(),
            next_id: 0,
        };
        if let Err(e) = tokio::time::timeout(
            START_TIMEOUT,
            browser.call(None, "Browser.getVersion", json!({})),
        )
        .await
        .map_err(|_| {
            format!(
                "Chromium did not start within {} s",
                START_TIMEOUT.as_secs()
            )
        })
        .and_then(|r| r)
        {
            let _ = browser.child.kill().await;
            return Err(e);
        }
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
            self.send(&message).await?;
            loop {
                let value = self.receive().await?;
                if value["id"].as_u64() == Some(id) {
                    return Ok::<Value, String>(value);
                }
                // A page's alert, confirm or prompt blocks its scripts until answered:
                // dismiss it, so the call waiting on the page can finish.
                if value["method"] == "Page.javascriptDialogOpening"
                    && let Some(s) = value["sessionId"].as_str()
                {
                    self.next_id += 1;
                    let dismiss = json!({"id": self.next_id, "sessionId": s,
                        "method": "Page.handleJavaScriptDialog", "params": {"accept": false}});
                    self.send(&dismiss).await?;
                }
            }
        })
        .await
        .map_err(|_| {
            format!(
                "the browser connection failed: it did not answer {method} within {} s",
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

    async fn send(&mut self, message: &Value) -> Result<(), String> {
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .await
            .map_err(|e| format!("the browser connection failed: {e}"))
    }

    /// The next whole message Chromium wrote (answers and events, NUL-ended).
    async fn receive(&mut self) -> Result<Value, String> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == 0) {
                let message: Vec<u8> = self.pending.drain(..=end).collect();
                if let Ok(value) = serde_json::from_slice::<Value>(&message[..end]) {
                    return Ok(value);
                }
                continue;
            }
            if self.pending.len() > MAX_MESSAGE {
                return Err("the browser connection failed: a message too large".into());
            }
            let mut buf = [0u8; 64 * 1024];
            let n = self
                .answers
                .read(&mut buf)
                .await
                .map_err(|e| format!("the browser connection failed: {e}"))?;
            if n == 0 {
                return Err("the browser connection failed: Chromium closed it".into());
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
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
