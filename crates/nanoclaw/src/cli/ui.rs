//! `nanoclaw ui [--print]` (SPEC §14): a one-time sign-in link for the web app, from the
//! running daemon, opened in a browser when there is one.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{daemon_endpoint, runtime};
use crate::config::Config;

pub fn ui(config: &Config, env: &HashMap<String, String>, print_only: bool) -> Result<ExitCode> {
    let url = login_link(config)?;
    println!("{url}");
    println!("(works once, for 10 minutes; it signs in the browser that opens it)");
    if print_only {
        return Ok(ExitCode::SUCCESS);
    }
    match open_browser(env, &url) {
        Some(how) => println!("opened it with {how}"),
        None => println!("open it in a browser on this computer"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A fresh one-time sign-in link from the running daemon.
pub(crate) fn login_link(config: &Config) -> Result<String> {
    let endpoint = daemon_endpoint(config)?;
    runtime()?.block_on(async {
        // The daemon is on loopback; a proxy would see the bearer token.
        let client = crate::tls::client()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot create an HTTP client")?;
        let response = client
            .post(format!("{}/api/login-codes", endpoint.base_url))
            .bearer_auth(&endpoint.token)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the assistant at {}; is `nanoclaw run --root {}` running?",
                    endpoint.base_url,
                    config.root.display()
                )
            })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "the assistant refused to make a sign-in link (HTTP {status}): {}",
                body["error"].as_str().unwrap_or("no reason given")
            );
        }
        // The link is built here from a checked code, so whatever answered cannot make
        // this command open a page of its choosing.
        let code = body["code"].as_str().unwrap_or_default();
        if code.len() != 48 || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("the assistant's answer had no sign-in code");
        }
        Ok(format!("{}/login#{code}", endpoint.base_url))
    })
}

/// Opens `url` in the desktop's browser, if this session has a desktop. The browser is
/// given a private file that forwards to the link, not the link itself: a command line
/// is readable by every user of the machine (`/proc/PID/cmdline`).
fn open_browser(env: &HashMap<String, String>, url: &str) -> Option<&'static str> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|k| env.get(*k).is_some_and(|v| !v.is_empty()));
        if !desktop {
            return None;
        }
        "xdg-open"
    };
    let base = env
        .get("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("nanoclaw-ui-{}", crate::ids::random_hex(8)));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
    }
    let page = dir.join("sign-in.html");
    let html = format!(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url={url}\"><title>NanoClaw</title>"
    );
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&page)
            .ok()?;
        if f.write_all(html.as_bytes()).is_err() {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
    }
    let spawned = std::process::Command::new(opener)
        .arg(&page)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if spawned.is_ok() {
        // Long enough for a browser to read it; then the file (and the code in it) goes.
        std::thread::sleep(Duration::from_secs(15));
    }
    let _ = std::fs::remove_dir_all(&dir);
    spawned.ok().map(|_| opener)
}
