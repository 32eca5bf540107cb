//! `nanoclaw ui [--print]` (SPEC §14): a one-time sign-in link for the web app, from the
//! running daemon, opened in a browser when there is one.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{daemon_endpoint, runtime};
use crate::config::Config;

pub fn ui(config: &Config, env: &HashMap<String, String>, print_only: bool) -> Result<ExitCode> {
    let endpoint = daemon_endpoint(config)?;
    let url: String = runtime()?.block_on(async {
        let client = crate::tls::client()
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
        body["url"]
            .as_str()
            .map(str::to_string)
            .context("the assistant's answer had no link")
    })?;
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

/// Opens `url` in the desktop's browser, if this session has a desktop.
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
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
        .map(|_| opener)
}
