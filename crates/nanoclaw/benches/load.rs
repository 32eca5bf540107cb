//! Load and scale: `cargo bench -p nanoclaw --bench load`.
//!
//! A root with 1,000 registered groups and 1,000,000 stored messages (history the
//! agent has already seen), then:
//! 1. the start time (spawn to `/healthz` answering) and idle RSS of `nanoclaw run`
//!    (the release binary) on that root;
//! 2. message→runner latency through the real HTTP server, store, router and queue
//!    (an in-process daemon whose runner stamps the moment it is called), under 50
//!    inbound messages per second spread over the groups, for `NANOCLAW_LOAD_SECONDS`
//!    (default 300);
//! 3. the plans of the hot queries on that store.
//!
//! `NANOCLAW_LOAD_GROUPS`, `NANOCLAW_LOAD_MESSAGES` and `NANOCLAW_LOAD_RATE` change the
//! shape.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nanoclaw::config::Config;
use nanoclaw::daemon::{self, DaemonOptions};
use nanoclaw::runner::{AgentEvent, AgentRunner, RunError, RunIo, RunRequest};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Answers at once, noting when each message (by its `load-N` tag) reached a runner.
struct StampingRunner {
    reached: Arc<Mutex<HashMap<u64, Instant>>>,
}

#[async_trait]
impl AgentRunner for StampingRunner {
    async fn run(&self, request: RunRequest, io: RunIo) -> Result<(), RunError> {
        let now = Instant::now();
        {
            let mut reached = self.reached.lock().unwrap_or_else(|p| p.into_inner());
            for tag in request.prompt.split("load-").skip(1) {
                let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(n) = digits.parse() {
                    reached.entry(n).or_insert(now);
                }
            }
        }
        let _ = io.events.send(AgentEvent::Result {
            text: "ok".into(),
            inputs: 0,
        });
        Ok(())
    }
    fn describe(&self) -> String {
        "load bench runner".into()
    }
}

fn env_for(root: &std::path::Path) -> HashMap<String, String> {
    HashMap::from([
        ("TZ".to_string(), "UTC".to_string()),
        ("HOME".to_string(), root.join("home").display().to_string()),
        ("NANOCLAW_LOG".to_string(), "warn".to_string()),
    ])
}

/// Registers `groups` web groups and stores `messages` messages spread over them, all
/// already seen by the agent (each chat's cursor at its last message).
fn seed(root: &std::path::Path, groups: u64, messages: u64) -> Duration {
    let started = Instant::now();
    nanoclaw::layout::Layout::new(root)
        .create()
        .expect("layout");
    let store = support::open_store(root);
    for g in 0..groups {
        store
            .register_group(&nanoclaw::store::RegisteredGroup {
                jid: format!("web:g{g:04}"),
                name: format!("Group {g}"),
                folder: format!("g{g:04}"),
                trigger_pattern: "@Andy".into(),
                added_at: nanoclaw::clock::now(),
                container_config: None,
                requires_trigger: false,
                is_main: false,
            })
            .expect("register");
        store
            .upsert_chat(&nanoclaw::store::ChatMeta {
                jid: format!("web:g{g:04}"),
                name: Some(format!("Group {g}")),
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                channel: Some("web".into()),
                is_group: Some(true),
            })
            .expect("chat");
    }
    drop(store);
    // One transaction through SQLite directly: a million single-message transactions
    // would measure the disk, not the daemon. The schema's trigger numbers each row.
    let mut conn = rusqlite::Connection::open(root.join("store/messages.db")).expect("db");
    let tx = conn.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO messages (id, chat_jid, sender, sender_name, content, timestamp,
                                       is_from_me, is_bot_message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
            )
            .expect("prepare");
        let start = jiff::Timestamp::from_second(1_735_689_600).expect("time");
        for i in 0..messages {
            let g = i % groups;
            let at = start
                .checked_add(jiff::SignedDuration::from_secs(i as i64 * 20))
                .expect("time");
            let bot = i % 3 == 2;
            insert
                .execute(rusqlite::params![
                    format!("h{i}"),
                    format!("web:g{g:04}"),
                    if bot { "bot" } else { "u1" },
                    if bot { "Andy" } else { "User" },
                    format!("history message {i} with some ordinary words in it"),
                    nanoclaw::clock::format_utc(at),
                    bot,
                ])
                .expect("insert");
        }
    }
    tx.execute(
        "INSERT INTO chat_cursors (chat_jid, last_seq, updated_at)
         SELECT chat_jid, MAX(seq), '2026-01-01T00:00:00.000Z' FROM messages GROUP BY chat_jid",
        [],
    )
    .expect("cursors");
    tx.commit().expect("commit");
    started.elapsed()
}

/// Spawn to `/healthz`, and the RSS a second later, of the release binary on `root`.
async fn start_and_idle(root: &std::path::Path) -> (Duration, u64) {
    let port = nanoclaw_test_support::free_port();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(support::nanoclaw_bin())
        .args(["run", "--root"])
        .arg(root)
        .env("NANOCLAW_HTTP_PORT", port.to_string())
        .env(
            "CREDENTIAL_PROXY_PORT",
            nanoclaw_test_support::free_port().to_string(),
        )
        .env("CONTAINER_RUNTIME", "bwrap")
        .env("HOME", root.join("home"))
        .env("TZ", "UTC")
        .env("NANOCLAW_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let client = nanoclaw::tls::client().build().expect("client");
    let health = format!("http://127.0.0.1:{port}/healthz");
    while client.get(&health).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(120), "no start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let up = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = common::rss_kib(child.id().expect("pid"));
    let _ = child.start_kill();
    let _ = child.wait().await;
    (up, rss)
}

struct Load {
    sent: usize,
    latencies: Vec<Duration>,
    unanswered: usize,
    seconds: f64,
    rss_before: u64,
    rss_after: u64,
}

async fn latency_under_load(root: &std::path::Path, groups: u64, rate: u64, seconds: u64) -> Load {
    let (mut config, secrets) = Config::load(root, &env_for(root)).expect("config");
    config.http_port = 0;
    config.credential_proxy_port = 0;
    let reached: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let d = daemon::start(DaemonOptions {
        config,
        secrets,
        tokens: Default::default(),
        runner: Arc::new(StampingRunner {
            reached: Arc::clone(&reached),
        }),
        channels: vec![],
    })
    .await
    .expect("daemon");
    let rss_before = common::rss_kib(std::process::id());
    let client = nanoclaw::tls::client().build().expect("client");
    let url = format!("http://{}/api/messages", d.http_addr);
    let token = d.http_token.clone();
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let total = rate * seconds;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let began = Instant::now();
    let mut posts = tokio::task::JoinSet::new();
    // A fixed pseudo-random spread over the groups (no two runs of the bench differ).
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for n in 0..total {
        ticker.tick().await;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let g = state % groups;
        let body = serde_json::json!({"chat_jid": format!("web:g{g:04}"), "sender": "u1",
            "sender_name": "User", "text": format!("load-{n} how are things")})
        .to_string();
        let (client, url, token, sent_at) = (
            client.clone(),
            url.clone(),
            token.clone(),
            Arc::clone(&sent_at),
        );
        posts.spawn(async move {
            let at = Instant::now();
            let response = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            if response.is_ok_and(|r| r.status() == 202) {
                sent_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(n, at);
            }
        });
        while posts.try_join_next().is_some() {}
    }
    while posts.join_next().await.is_some() {}
    let seconds_taken = began.elapsed().as_secs_f64();
    // The last ones reach their runner.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = reached.lock().unwrap_or_else(|p| p.into_inner()).len();
        if done >= total as usize || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after = common::rss_kib(std::process::id());
    d.shutdown().await;
    let sent_at = sent_at.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let reached = reached.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut latencies: Vec<Duration> = sent_at
        .iter()
        .filter_map(|(n, at)| reached.get(n).map(|r| r.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    Load {
        sent: sent_at.len(),
        unanswered: sent_at.len() - latencies.len(),
        latencies,
        seconds: seconds_taken,
        rss_before,
        rss_after,
    }
}

fn main() {
    let groups = setting("NANOCLAW_LOAD_GROUPS", 1_000).max(1);
    let messages = setting("NANOCLAW_LOAD_MESSAGES", 1_000_000);
    let rate = setting("NANOCLAW_LOAD_RATE", 50).max(1);
    let seconds = setting("NANOCLAW_LOAD_SECONDS", 300).max(1);
    let root = tempfile::tempdir().expect("temp dir");
    let seeded = seed(root.path(), groups, messages);
    let db_bytes = std::fs::metadata(root.path().join("store/messages.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "seeded {groups} groups and {messages} messages in {:.1} s (store {:.0} MiB)",
        seeded.as_secs_f64(),
        db_bytes as f64 / 1_048_576.0
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (up, idle) = rt.block_on(start_and_idle(root.path()));
    println!(
        "`nanoclaw run` on that root: /healthz answers {:.0} ms after spawn; idle RSS {idle} KiB",
        up.as_secs_f64() * 1000.0
    );
    let load = rt.block_on(latency_under_load(root.path(), groups, rate, seconds));
    let l = &load.latencies;
    if l.is_empty() {
        println!("no message reached a runner");
    } else {
        println!(
            "{} messages in {:.0} s ({:.1}/s) -> runner: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; {} never reached a runner",
            load.sent,
            load.seconds,
            load.sent as f64 / load.seconds,
            common::percentile(l, 0.5),
            common::percentile(l, 0.9),
            common::percentile(l, 0.99),
            l[l.len() - 1],
            load.unanswered
        );
    }
    println!(
        "bench process RSS (in-process daemon and client): {} KiB before, {} KiB after",
        load.rss_before, load.rss_after
    );
    let store = support::open_store(root.path());
    for (name, plan) in store.hot_query_plans().expect("plans") {
        println!("plan, {name}: {}", plan.join(" | "));
    }
}
