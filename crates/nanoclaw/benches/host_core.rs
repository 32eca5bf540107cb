//! Host core numbers: `cargo bench -p nanoclaw --bench host_core`.
//!
//! 1. Latency from `POST /api/messages` (client side, before sending) to the runner being
//!    invoked, through the real HTTP server, store, router and queue (in-process daemon,
//!    a runner that records the moment it is called and answers at once).
//! 2. Resident memory (VmRSS) of an idle `nanoclaw run` (the release binary built for
//!    this bench), after start-up and after it has handled some messages.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nanoclaw::config::Config;
use nanoclaw::daemon::{self, DaemonOptions};
use tokio::sync::mpsc;

async fn post_to_runner_latency(samples: usize) -> Vec<Duration> {
    let root = tempfile::tempdir().expect("temp dir");
    let env = std::collections::HashMap::from([
        ("TZ".to_string(), "UTC".to_string()),
        (
            "HOME".to_string(),
            root.path().join("home").display().to_string(),
        ),
    ]);
    let (mut config, secrets) = Config::load(root.path(), &env).expect("config");
    config.http_port = 0;
    config.credential_proxy_port = 0;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = daemon::start(DaemonOptions {
        config,
        secrets,
        tokens: Default::default(),
        runner: Arc::new(common::StampingRunner { invoked: tx }),
        channels: vec![],
    })
    .await
    .expect("daemon");
    let client = nanoclaw::tls::client().build().expect("client");
    let url = format!("http://{}/api/messages", d.http_addr);
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples + 10 {
        let body = format!(
            r#"{{"chat_jid":"web:main","sender":"b","sender_name":"B","text":"message {i}"}}"#
        );
        let start = Instant::now();
        let resp = client
            .post(&url)
            .bearer_auth(&d.http_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 202);
        let invoked = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("runner invoked")
            .expect("runner alive");
        // Let the run finish so the next message starts a new run, not a follow-up.
        let status_url = format!("http://{}/api/status", d.http_addr);
        loop {
            let v: serde_json::Value = client
                .get(&status_url)
                .bearer_auth(&d.http_token)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("json");
            if v["queue"]["active"] == serde_json::json!([]) {
                break;
            }
            tokio::task::yield_now().await;
        }
        if i >= 10 {
            latencies.push(invoked.duration_since(start));
        }
    }
    d.shutdown().await;
    latencies
}

async fn idle_rss() -> (u64, u64) {
    let root = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nanoclaw"))
        .args(["run", "--root"])
        .arg(root.path())
        .env("NANOCLAW_HTTP_PORT", port.to_string())
        .env(
            "CREDENTIAL_PROXY_PORT",
            nanoclaw_test_support::free_port().to_string(),
        )
        .env("HOME", root.path())
        .env("TZ", "UTC")
        .env("NANOCLAW_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let client = nanoclaw::tls::client().build().expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().expect("pid");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fresh = common::rss_kib(pid);
    let token = std::fs::read_to_string(root.path().join("data/http-token")).expect("token");
    for i in 0..100 {
        let body =
            format!(r#"{{"chat_jid":"web:other","sender":"b","sender_name":"B","text":"m{i}"}}"#);
        client
            .post(format!("{base}/api/messages"))
            .bearer_auth(token.trim())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = common::rss_kib(pid);
    let _ = child.kill().await;
    (fresh, after)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let samples = 200;
    let mut latencies = rt.block_on(post_to_runner_latency(samples));
    latencies.sort();
    println!(
        "POST /api/messages -> runner invoked ({} samples): median {:?}, p90 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        common::percentile(&latencies, 0.5),
        common::percentile(&latencies, 0.9),
        common::percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    let (fresh, after) = rt.block_on(idle_rss());
    println!("idle RSS of `nanoclaw run`: {fresh} KiB after start, {after} KiB after 100 messages");
}
