//! Where Claude Code comes from, for groups with `container_config.harness =
//! "claude-code"` (SPEC §9.2). Claude Code ships as one native executable (it needs only
//! the C library), so a sandbox gets exactly that file at
//! [`nanoclaw_protocol::CLAUDE_CODE_IN_SANDBOX`]:
//!
//! - podman/docker: `nanoclaw image build` installs the pinned release from npm (into a
//!   cache of this user's, without running the package's install scripts) and copies it
//!   into the image, labelled with its version;
//! - bwrap: the host's copy is bound read-only: `CLAUDE_CODE_PATH`, else the one the image
//!   build installed, else `claude` on `PATH`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nanoclaw_protocol::CLAUDE_CODE_VERSION;

use crate::config::Config;

/// The image label holding the Claude Code version inside (or `none`).
pub const LABEL: &str = "org.nanoclaw.claude-code";

/// The npm package holding the native executable for this machine.
fn platform_package() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("@anthropic-ai/claude-code-linux-x64"),
        "aarch64" => Some("@anthropic-ai/claude-code-linux-arm64"),
        _ => None,
    }
}

/// This user's cache of the pinned release (`$XDG_CACHE_HOME` or `~/.cache`).
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join(format!("nanoclaw/claude-code-{CLAUDE_CODE_VERSION}")))
}

fn cached_binary() -> Option<PathBuf> {
    let package = platform_package()?;
    Some(
        cache_dir()?
            .join("node_modules")
            .join(package)
            .join("claude"),
    )
}

/// Whether `path` is an ELF executable (an older Claude Code is a Node script, which
/// needs Node and its package folder, not one file).
fn is_native(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The host's Claude Code, for bwrap sandboxes.
pub fn host_binary(config: &Config) -> Result<PathBuf, String> {
    if let Some(path) = &config.claude_code_path {
        return if !path.is_file() {
            Err(format!("CLAUDE_CODE_PATH={} is not a file", path.display()))
        } else if !is_native(path) {
            Err(format!(
                "CLAUDE_CODE_PATH={} is not Claude Code's native executable (a Node script?); \
                 point it at the `claude` of @anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}",
                path.display()
            ))
        } else {
            Ok(path.clone())
        };
    }
    if let Some(cached) = cached_binary().filter(|p| p.is_file()) {
        return Ok(cached);
    }
    match super::which("claude").and_then(|p| std::fs::canonicalize(p).ok()) {
        Some(path) if is_native(&path) => Ok(path),
        Some(path) => Err(format!(
            "the `claude` on PATH ({}) is not Claude Code's native executable; install \
             @anthropic-ai/claude-code@{CLAUDE_CODE_VERSION} or set CLAUDE_CODE_PATH",
            path.display()
        )),
        None => Err(format!(
            "Claude Code is not installed on this host: `nanoclaw image build` installs it when \
             npm is there, or run `npm install -g @anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}`, \
             or set CLAUDE_CODE_PATH"
        )),
    }
}

/// What `claude --version` says (its first word, e.g. `2.1.197`).
pub async fn version(path: &Path) -> Result<String, String> {
    let out = tokio::process::Command::new(path)
        .arg("--version")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("DISABLE_AUTOUPDATER", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(20), out).await {
        Err(_) => Err(format!("{} --version did not answer", path.display())),
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", path.display())),
        Ok(Ok(out)) if !out.status.success() => Err(format!(
            "{} --version failed ({})",
            path.display(),
            out.status
        )),
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()),
    }
}

/// The pinned Claude Code for the image: the host's copy if it is that release, else
/// installed from npm into the cache. `Err` says why there is none (the image is then
/// built without it, and `doctor` and any claude-code run say so).
pub async fn for_image(config: &Config) -> Result<PathBuf, String> {
    if let Ok(host) = host_binary(config)
        && version(&host).await.ok().as_deref() == Some(CLAUDE_CODE_VERSION)
    {
        return Ok(host);
    }
    let (Some(package), Some(dir), Some(binary)) =
        (platform_package(), cache_dir(), cached_binary())
    else {
        return Err(format!(
            "no Claude Code build for this machine ({}) or no cache folder (HOME is unset)",
            std::env::consts::ARCH
        ));
    };
    let Some(npm) = super::which("npm") else {
        return Err(
            "npm is not installed (`apt install npm`), so Claude Code cannot be fetched".into(),
        );
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Only the platform's package: it holds the executable, and no install script of the
    // package runs on this host.
    let install = tokio::process::Command::new(npm)
        .args([
            "install",
            "--prefix",
            &dir.to_string_lossy(),
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--loglevel=error",
            "--fetch-retries=1",
            &format!("{package}@{CLAUDE_CODE_VERSION}"),
        ])
        .envs(super::host_tool_env())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(600), install).await {
        Err(_) => return Err("npm did not finish installing Claude Code within 10 minutes".into()),
        Ok(Err(e)) => return Err(format!("cannot run npm: {e}")),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(format!(
            "npm could not install {package}@{CLAUDE_CODE_VERSION}: {}",
            last.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    match version(&binary).await {
        Ok(v) if v == CLAUDE_CODE_VERSION => Ok(binary),
        Ok(v) => Err(format!(
            "npm installed Claude Code {v}, not {CLAUDE_CODE_VERSION}"
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_native_executable_is_taken() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("claude");
        std::fs::write(&script, "#!/usr/bin/env node\n").expect("write");
        assert!(!is_native(&script));
        assert!(!is_native(&dir.path().join("missing")));
        assert!(is_native(Path::new("/bin/sh")) || !Path::new("/bin/sh").exists());
    }
}
