//! `Bash`: a shell command in the group's folder, with a timeout and output caps. The
//! whole process group is killed on timeout, so background children do not linger.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{MAX_OUTPUT_CHARS, ToolContext, ToolOutput, optional_u64, string, truncate_middle};

const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes kept of each of stdout and stderr (the rest is counted, not kept).
const KEEP_BYTES: usize = 256 * 1024;

pub async fn run(input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let command = string(input, "command")?;
    let timeout = match optional_u64(input, "timeout")? {
        Some(ms) => Duration::from_millis(ms).min(MAX_TIMEOUT),
        None => ctx.bash_default_timeout,
    };
    let shell = if std::path::Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let mut cmd = tokio::process::Command::new(shell);
    cmd.arg("-c")
        .arg(command)
        .current_dir(&ctx.workdir)
        // The run's proxy token is the agent's, not the commands'.
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ToolOutput::error(format!("cannot start {shell}: {e}")))?;
    let pgid = child.id();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ToolOutput::error("the shell has no output pipes"));
    };
    let out_task = tokio::spawn(capture(stdout));
    let err_task = tokio::spawn(capture(stderr));
    let status = tokio::time::timeout(timeout, child.wait()).await.ok();
    if status.is_none()
        && let Some(pid) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = child.wait().await;
    }
    let (stdout, stdout_total) = out_task.await.unwrap_or_default();
    let (stderr, stderr_total) = err_task.await.unwrap_or_default();
    let mut text = String::new();
    text.push_str(&String::from_utf8_lossy(&stdout));
    if stdout_total > stdout.len() {
        text.push_str(&format!(
            "\n… [{} more bytes of stdout not kept]",
            stdout_total - stdout.len()
        ));
    }
    if !stderr.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(&stderr));
        if stderr_total > stderr.len() {
            text.push_str(&format!(
                "\n… [{} more bytes of stderr not kept]",
                stderr_total - stderr.len()
            ));
        }
    }
    let mut text = truncate_middle(text.trim_end(), MAX_OUTPUT_CHARS);
    match status {
        None => {
            text.push_str(&format!(
                "\n[command timed out after {} s and was killed]",
                timeout.as_secs()
            ));
            Err(ToolOutput::error(text))
        }
        Some(Err(e)) => Err(ToolOutput::error(format!(
            "cannot wait for the command: {e}"
        ))),
        Some(Ok(s)) if s.success() => Ok(ToolOutput::ok(if text.is_empty() {
            "(no output)".into()
        } else {
            text
        })),
        Some(Ok(s)) => {
            text.push_str(&format!(
                "\n[exit status {}]",
                s.code()
                    .map_or_else(|| "killed by a signal".into(), |c| c.to_string())
            ));
            Err(ToolOutput::error(text))
        }
    }
}

/// Reads a pipe to the end, keeping the first [`KEEP_BYTES`]; returns them and the total.
async fn capture(mut pipe: impl AsyncRead + Unpin) -> (Vec<u8>, usize) {
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n;
        let room = KEEP_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    (kept, total)
}

#[cfg(test)]
mod tests {
    use super::super::test_ctx::ctx;
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn runs_in_the_group_folder_and_reports_exit_status() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        let out = run(&json!({"command": "pwd; echo err >&2"}), &c)
            .await
            .expect("runs");
        assert!(
            out.content.contains(&dir.path().display().to_string()) && out.content.contains("err")
        );
        let failed = run(&json!({"command": "exit 3"}), &c)
            .await
            .expect_err("fails");
        assert!(failed.content.contains("[exit status 3]"));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; sleep 30", pidfile.display());
        let started = std::time::Instant::now();
        let out = run(&json!({"command": script, "timeout": 500}), &c)
            .await
            .expect_err("times out");
        assert!(out.content.contains("timed out"), "{}", out.content);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pidfile).expect("pid written");
        // Dead soon after the kill: gone, or a zombie waiting to be reaped.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("X")
                .to_string();
            if state == "X" || state == "Z" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the background child is still {state}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn output_is_capped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        let out = run(
            &json!({"command": "head -c 1000000 /dev/zero | tr '\\0' 'x'"}),
            &c,
        )
        .await
        .expect("runs");
        assert!(
            out.content.chars().count() < MAX_OUTPUT_CHARS + 200,
            "{}",
            out.content.len()
        );
        assert!(out.content.contains("not kept") || out.content.contains("omitted"));
    }

    #[tokio::test]
    async fn the_run_token_is_not_in_the_commands_environment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        // SAFETY: test-only; no other thread of this test reads the environment.
        unsafe { std::env::set_var("ANTHROPIC_API_KEY", "run-token-xyz") };
        let out = run(&json!({"command": "env"}), &c).await.expect("runs");
        assert!(!out.content.contains("run-token-xyz"));
    }
}
