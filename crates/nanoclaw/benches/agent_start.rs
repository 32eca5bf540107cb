//! Agent start-up numbers (issues 4 and 16): how long from starting an agent to its
//! first request to the model API (a local fake), median of 20, for each harness (our
//! own loop, and Claude Code driven by nanoclaw-agent), and how large that fresh turn's
//! request is.
//!
//! ```sh
//! cargo build --release -p nanoclaw-agent
//! cargo bench -p nanoclaw --bench agent_start          # everything
//! cargo bench -p nanoclaw --bench agent_start -- bare  # the bare processes only
//! ```
//!
//! 1. The bare `nanoclaw-agent` process: spawn, read its input, build the system prompt
//!    and tools (Claude Code: start it, with our MCP server), send the first request.
//!    A non-main group, web search off; Claude Code is the pinned one of `.tools/`.
//! 2. Through the whole host with a real bubblewrap sandbox: `POST /api/messages` (new
//!    group each time, so every sample starts a fresh sandbox) to the first request
//!    arriving at the fake, via the credential proxy's Unix socket.
//! 3. The same with podman (skipped, with the reason, if podman or the image is not
//!    usable here).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::FakeAnthropic;
use tokio::io::AsyncWriteExt;

const SAMPLES: usize = 20;

fn agent_bin() -> PathBuf {
    PathBuf::from(support::nanoclaw_bin()).with_file_name("nanoclaw-agent")
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name} ({} samples): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
}

/// Claude Code's settings for a bare agent process, or none for our own loop.
fn harness_env(claude_code: bool) -> Vec<(&'static str, String)> {
    if !claude_code {
        return Vec::new();
    }
    vec![
        ("NANOCLAW_HARNESS", "claude-code".into()),
        (
            "NANOCLAW_CLAUDE_CODE",
            support::claude_code_binary().display().to_string(),
        ),
    ]
}

/// Start-up times, and the size of the first request (its JSON, compact).
async fn bare_process(claude_code: bool) -> (Vec<Duration>, usize) {
    let fake = FakeAnthropic::start(vec![]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let workspace = dir.path().join("workspace");
    for sub in ["group", "global", "ipc/input"] {
        std::fs::create_dir_all(workspace.join(sub)).expect("workspace");
    }
    let input = serde_json::to_string(&nanoclaw_protocol::AgentInput {
        prompt: "<messages><message sender=\"Me\" time=\"now\">hi</message></messages>".into(),
        session_id: None,
        group_folder: "team".into(),
        chat_jid: "web:team".into(),
        is_main: false,
        is_scheduled_task: false,
        assistant_name: "Andy".into(),
    })
    .expect("input");
    let mut out = Vec::new();
    for i in 0..SAMPLES + 2 {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(agent_bin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path().join("home"))
            .env("NANOCLAW_WORKSPACE", &workspace)
            .env("ANTHROPIC_BASE_URL", &fake.url)
            .env("ANTHROPIC_API_KEY", "bench")
            .env("NANOCLAW_WEB_SEARCH", "off")
            .envs(harness_env(claude_code))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nanoclaw-agent");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).await.expect("input");
        drop(stdin);
        let requests = fake.wait_requests(i + 1).await;
        let at = requests[i].at;
        let _ = child.kill().await;
        if i >= 2 {
            out.push(at - started); // the first two warm the page cache
        }
    }
    let size = serde_json::to_vec(&fake.requests()[0].body).map_or(0, |b| b.len());
    (out, size)
}

async fn through_the_host(kind: RuntimeKind, claude_code: bool) -> Result<Vec<Duration>, String> {
    let fake = FakeAnthropic::start(vec![]).await;
    let url = fake.url.clone();
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .map_err(|e| e.to_string())?;
    for i in 0..SAMPLES + 1 {
        let config = claude_code.then(|| serde_json::json!({"harness": "claude-code"}));
        support::register_web_group(root.path(), &format!("g{i}"), config);
    }
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-bench")),
        ..Default::default()
    };
    let d =
        support::start_sandboxed_daemon_in(root, kind, Some(agent_bin()), secrets, vec![], |c| {
            c.anthropic_base_url = url;
            c.claude_code_path = Some(support::claude_code_binary());
            c.max_concurrent_containers = SAMPLES + 2;
            c.idle_timeout = Duration::from_secs(600);
            c.llm_attempts = 1;
            c.retry_base = Duration::from_secs(3600);
        })
        .await;
    let mut out = Vec::new();
    for i in 0..SAMPLES + 1 {
        let jid = format!("web:g{i}");
        let started = Instant::now();
        d.api
            .send(&jid, "me", "Me", "hi")
            .await
            .map_err(|e| e.to_string())?;
        let answered = tokio::time::timeout(
            Duration::from_secs(60),
            support::wait_bot_texts(&d.api, &jid, 1),
        )
        .await
        .map_err(|_| format!("{} run {i} did not answer", kind.name()))?;
        if answered[0] != "ok" {
            return Err(format!("{}: {}", kind.name(), answered[0]));
        }
        // The first request after the message (Claude Code sends no others here).
        let Some(at) = fake
            .requests()
            .iter()
            .map(|r| r.at)
            .find(|at| *at > started)
        else {
            return Err(format!("{} run {i} made no model request", kind.name()));
        };
        if i >= 1 {
            out.push(at - started); // the first run may build or check the image
        }
    }
    d.stop().await;
    Ok(out)
}

fn main() {
    if !agent_bin().exists() {
        eprintln!(
            "{} is missing: run `cargo build --release -p nanoclaw-agent` first",
            agent_bin().display()
        );
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bare_only = std::env::args().skip(1).any(|a| a == "bare");
    for (claude_code, harness) in [(false, "nanoclaw"), (true, "claude-code")] {
        let (samples, size) = rt.block_on(bare_process(claude_code));
        summary(
            &format!("[{harness}] nanoclaw-agent process start -> first LLM request"),
            samples,
        );
        println!("[{harness}] fresh-turn request: {size} bytes of JSON");
    }
    if bare_only {
        return;
    }
    for (claude_code, harness) in [(false, "nanoclaw"), (true, "claude-code")] {
        for kind in [RuntimeKind::Bwrap, RuntimeKind::Podman] {
            match rt.block_on(through_the_host(kind, claude_code)) {
                Ok(samples) => summary(
                    &format!(
                        "[{harness}] POST /api/messages -> first LLM request, fresh {} sandbox",
                        kind.name()
                    ),
                    samples,
                ),
                Err(e) => println!("[{harness}] {}: skipped: {e}", kind.name()),
            }
        }
    }
}
