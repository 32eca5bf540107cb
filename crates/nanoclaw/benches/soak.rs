//! A shortened soak: `cargo build --release -p nanoclaw-agent && cargo bench -p nanoclaw --bench soak`.
//!
//! The release `nanoclaw run` with real bwrap sandboxes running the release
//! `nanoclaw-agent` against a fake model API, fed messages for `NANOCLAW_SOAK_SECONDS`
//! (default 600) at `NANOCLAW_SOAK_RATE` per second (default 4) over 20 groups. Hours
//! are compressed by a short IDLE_TIMEOUT: every group's sandbox starts, idles and
//! closes over and over. Every 30 s it samples the daemon's RSS, open descriptors,
//! inotify watches, threads, alive async tasks (`/metrics`) and sandboxes alive; at
//! the end, with traffic stopped and the idle sandboxes closed, what is left.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};

const GROUPS: u64 = 20;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    rss_kib: u64,
    fds: usize,
    inotify_watches: usize,
    threads: u64,
    tasks: u64,
    sandboxes: usize,
    replies: u64,
}

fn inotify_watches(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|info| {
            info.lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count()
        })
        .sum()
}

/// bwrap processes carrying this root's mark (the daemon's sandboxes).
fn sandboxes(mark: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "bwrap")
                && std::fs::read(e.path().join("environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == mark.as_bytes()))
        })
        .count()
}

async fn metric(client: &reqwest::Client, base: &str, token: &str, name: &str) -> u64 {
    let Ok(response) = client
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
    else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn soak(seconds: u64, rate: u64) {
    let agent = std::path::PathBuf::from(support::nanoclaw_bin()).with_file_name("nanoclaw-agent");
    assert!(
        agent.is_file(),
        "{} is missing: run `cargo build --release -p nanoclaw-agent` first",
        agent.display()
    );
    let fake = FakeAnthropic::start(vec![]).await;
    fake.respond_with(|_| Reply::text("noted"));
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    for g in 0..GROUPS {
        support::register(
            root.path(),
            &format!("web:s{g:02}"),
            &format!("s{g:02}"),
            false,
        );
    }
    let port = nanoclaw_test_support::free_port();
    let mut child = tokio::process::Command::new(support::nanoclaw_bin())
        .args(["run", "--root"])
        .arg(root.path())
        .env("NANOCLAW_HTTP_PORT", port.to_string())
        .env(
            "CREDENTIAL_PROXY_PORT",
            nanoclaw_test_support::free_port().to_string(),
        )
        .env("CONTAINER_RUNTIME", "bwrap")
        .env("NANOCLAW_AGENT_BIN", &agent)
        .env("ANTHROPIC_BASE_URL", &fake.url)
        .env("ANTHROPIC_API_KEY", "sk-ant-soak")
        .env("IDLE_TIMEOUT", "1500")
        .env("HOME", root.path().join("home"))
        .env("TZ", "UTC")
        .env("NANOCLAW_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let pid = child.id().expect("pid");
    let client = nanoclaw::tls::client().build().expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let began = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(began.elapsed() < Duration::from_secs(120), "no start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = std::fs::read_to_string(root.path().join("data/http-token")).expect("token");
    let token = token.trim().to_string();
    let mark = format!(
        "NANOCLAW_SANDBOX_OF={}",
        nanoclaw::sandbox::root_label(root.path())
    );
    let sample = |at: u64, tasks: u64, replies: u64| Sample {
        at,
        rss_kib: common::status_field(pid, "VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        inotify_watches: inotify_watches(pid),
        threads: common::status_field(pid, "Threads:"),
        tasks,
        sandboxes: sandboxes(&mark),
        replies,
    };
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let started = Instant::now();
    let mut next_sample = Duration::ZERO;
    let mut n: u64 = 0;
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        if started.elapsed() >= next_sample {
            let tasks = metric(&client, &base, &token, "nanoclaw_tasks_alive").await;
            let replies = metric(&client, &base, &token, "nanoclaw_replies_delivered_total").await;
            samples.push(sample(started.elapsed().as_secs(), tasks, replies));
            next_sample += Duration::from_secs(30);
        }
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let g = (n >> 33) % GROUPS;
        let body = serde_json::json!({"chat_jid": format!("web:s{g:02}"), "sender": "u1",
            "sender_name": "User", "text": format!("soak message {sent}")})
        .to_string();
        let accepted = client
            .post(format!("{base}/api/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .is_ok_and(|r| r.status() == 202);
        sent += u64::from(accepted);
    }
    // Traffic stops; the idle sandboxes close.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let tasks = metric(&client, &base, &token, "nanoclaw_tasks_alive").await;
    let replies = metric(&client, &base, &token, "nanoclaw_replies_delivered_total").await;
    let end = sample(started.elapsed().as_secs(), tasks, replies);
    let runs = metric(&client, &base, &token, "nanoclaw_runs_started_total").await;
    let failed = metric(&client, &base, &token, "nanoclaw_runs_failed_total").await;
    let _ = child.start_kill();
    let _ = child.wait().await;

    println!("   t(s)  RSS(KiB)  fds  inotify  threads  tasks  sandboxes  replies");
    for s in samples.iter().chain(std::iter::once(&end)) {
        println!(
            "{:>7} {:>9} {:>4} {:>8} {:>8} {:>6} {:>10} {:>8}",
            s.at, s.rss_kib, s.fds, s.inotify_watches, s.threads, s.tasks, s.sandboxes, s.replies
        );
    }
    // The first sample is taken before any traffic; the second, after 30 s of it, is
    // the warm baseline growth is measured from.
    let warm = samples.get(1).copied().unwrap_or(end);
    let peak_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "soak: {seconds} s, {sent} messages accepted, {runs} runs ({failed} failed), {} replies delivered, {} model requests",
        end.replies,
        fake.requests().len()
    );
    println!(
        "after warm-up -> end: RSS {} -> {} KiB (peak {peak_rss}), fds {} -> {}, inotify watches {} -> {}, threads {} -> {}, tasks {} -> {}; sandboxes left {}",
        warm.rss_kib,
        end.rss_kib,
        warm.fds,
        end.fds,
        warm.inotify_watches,
        end.inotify_watches,
        warm.threads,
        end.threads,
        warm.tasks,
        end.tasks,
        end.sandboxes
    );
}

fn main() {
    let seconds = setting("NANOCLAW_SOAK_SECONDS", 600).max(10);
    let rate = setting("NANOCLAW_SOAK_RATE", 4).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(soak(seconds, rate));
}
