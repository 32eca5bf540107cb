//! Channel numbers: `cargo bench -p nanoclaw --bench channels`.
//!
//! 1. Latency from a Discord gateway `MESSAGE_CREATE` and from a Slack Socket Mode
//!    envelope (the moment the fake platform is told to send it) to the runner being
//!    invoked: the real adapter, store, router and queue (in-process daemon, a runner
//!    that records the moment it is called and answers at once). Every message runs (the
//!    chat needs no trigger).
//!    For email, from postfix accepting a mail (its 250 after the data) to the runner
//!    being invoked: real dovecot and postfix (`scripts/mail-servers.sh`, as root), the
//!    IDLE push, the fetch, the store (dovecot 2.3 delays IDLE pushes by 0.5 s itself).
//! 2. Resident memory (VmRSS) of an idle `nanoclaw run` (the release binary built for
//!    this bench) with Telegram, Discord, Slack and email connected (fakes, and the real
//!    mail servers), after start-up and after 100 messages on each.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nanoclaw::channels::Channel;
use nanoclaw::config::Config;
use nanoclaw::daemon::{self, DaemonOptions};
use nanoclaw_test_support::fake_discord::{self, FakeDiscord};
use nanoclaw_test_support::fake_slack::{self, FakeSlack};
use nanoclaw_test_support::fake_telegram::{Chat, FakeTelegram, User};
use nanoclaw_test_support::mail_servers::MailServers;
use tokio::sync::mpsc;

const DISCORD_TOKEN: &str = "bench.discord.token";
const SLACK_APP: &str = "xapp-1-bench";
const SLACK_BOT: &str = "xoxb-bench";
const TELEGRAM_TOKEN: &str = "123:bench";

fn register(root: &std::path::Path, jid: &str, folder: &str) {
    nanoclaw::layout::Layout::new(root)
        .create()
        .expect("layout");
    nanoclaw::store::Store::open(&root.join("store/messages.db"), "Andy")
        .expect("store")
        .register_group(&nanoclaw::store::RegisteredGroup {
            jid: jid.into(),
            name: folder.into(),
            folder: folder.into(),
            trigger_pattern: "@Andy".into(),
            added_at: nanoclaw::clock::now(),
            container_config: None,
            requires_trigger: false,
            is_main: false,
        })
        .expect("register");
}

/// Samples of "the platform sends a message" → "the runner is invoked".
async fn to_runner_latency(
    channel: Arc<dyn Channel>,
    jid: &str,
    samples: usize,
    mut say: impl FnMut(usize) -> Instant,
) -> Vec<Duration> {
    let root = tempfile::tempdir().expect("temp dir");
    register(root.path(), jid, "bench");
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
        channels: vec![Arc::clone(&channel)],
    })
    .await
    .expect("daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !channel.is_connected() {
        assert!(Instant::now() < deadline, "the channel did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = nanoclaw::tls::client().build().expect("client");
    let status_url = format!("http://{}/api/status", d.http_addr);
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples + 10 {
        let start = say(i);
        let invoked = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("runner invoked")
            .expect("runner alive");
        // Let the run finish so the next message starts a new run, not a follow-up.
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

fn report(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "{what} -> runner invoked ({} samples): median {:?}, p90 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        common::percentile(&latencies, 0.5),
        common::percentile(&latencies, 0.9),
        common::percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}

const ASSISTANT: &str = "assistant@nanoclaw.test";
const ALICE: &str = "alice@trusted.test";

fn mail(i: usize) -> String {
    format!(
        "From: Alice <{ALICE}>\nTo: {ASSISTANT}\nSubject: bench {i}\nMessage-ID: <bench-{i}-{}@trusted.test>\n\nmessage {i}\n",
        std::process::id()
    )
}

fn email_settings(servers: &MailServers) -> Vec<(&'static str, String)> {
    vec![
        ("EMAIL_ADDRESS", ASSISTANT.to_string()),
        (
            "EMAIL_IMAP_URL",
            format!("imap://127.0.0.1:{}", servers.port("IMAP_PORT")),
        ),
        (
            "EMAIL_SMTP_URL",
            format!("smtp://127.0.0.1:{}", servers.port("SUBMISSION_PORT")),
        ),
        ("EMAIL_PASSWORD", servers.get("MAIL_PASSWORD").to_string()),
        ("EMAIL_TLS_CA_FILE", servers.ca_file().display().to_string()),
        ("EMAIL_AUTHSERV_ID", "mx.nanoclaw.test".to_string()),
    ]
}

fn email_channel(servers: &MailServers) -> Arc<dyn Channel> {
    let settings = email_settings(servers)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let config = nanoclaw::channels::email::EmailConfig::from_settings(&settings, "Andy")
        .expect("email settings")
        .expect("email on");
    nanoclaw::channels::email::Email::new(config).expect("email")
}

async fn idle_rss_with_four_channels() -> (u64, u64) {
    let servers = MailServers::start();
    let telegram = FakeTelegram::start(TELEGRAM_TOKEN).await;
    let discord = FakeDiscord::start(DISCORD_TOKEN).await;
    let slack = FakeSlack::start(SLACK_APP, SLACK_BOT).await;
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    let port = nanoclaw_test_support::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nanoclaw"))
        .args(["run", "--root"])
        .arg(root.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NANOCLAW_HTTP_PORT", port.to_string())
        .env(
            "CREDENTIAL_PROXY_PORT",
            nanoclaw_test_support::free_port().to_string(),
        )
        .env("HOME", root.path())
        .env("TZ", "UTC")
        .env("NANOCLAW_LOG", "warn")
        .env("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
        .env("TELEGRAM_API_URL", &telegram.url)
        .env("DISCORD_BOT_TOKEN", DISCORD_TOKEN)
        .env("DISCORD_API_URL", &discord.api_url)
        .env("SLACK_APP_TOKEN", SLACK_APP)
        .env("SLACK_BOT_TOKEN", SLACK_BOT)
        .env("SLACK_API_URL", &slack.api_url)
        .envs(email_settings(&servers))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let client = nanoclaw::tls::client().build().expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the channels did not connect");
        let token =
            std::fs::read_to_string(root.path().join("data/http-token")).unwrap_or_default();
        let connected = match client
            .get(format!("{base}/api/status"))
            .bearer_auth(token.trim())
            .send()
            .await
        {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["channels"].as_array().cloned())
                .map(|c| c.iter().filter(|c| c["connected"] == true).count())
                .unwrap_or(0),
            Err(_) => 0,
        };
        // web, telegram, discord, slack, email
        if connected == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("pid");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh = common::rss_kib(pid);
    let chat = Chat::group(-1001, "Bench");
    let user = User::new(1, "Ann");
    for i in 0..100 {
        telegram.user_says(&chat, &user, &format!("telegram {i}"));
        discord.user_says(fake_discord::CHANNEL_ID, &format!("discord {i}"));
        slack.user_says(fake_slack::CHANNEL_ID, &format!("slack {i}"));
        servers.deliver(ALICE, ASSISTANT, &mail(1000 + i));
    }
    let db = root.path().join("store/messages.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the messages were not stored");
        let stored: i64 = rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0)))
            .unwrap_or(0);
        if stored >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    rt.block_on(async {
        let fake = FakeDiscord::start(DISCORD_TOKEN).await;
        let discord = nanoclaw::channels::discord::Discord::new(
            nanoclaw::channels::discord::DiscordConfig {
                api_url: fake.api_url.clone(),
                gateway_url: None,
                assistant_name: "Andy".into(),
            },
            DISCORD_TOKEN,
        )
        .expect("discord");
        let jid = format!("dc:{}", fake_discord::CHANNEL_ID);
        let latencies = to_runner_latency(discord, &jid, samples, |i| {
            let start = Instant::now();
            fake.user_says(fake_discord::CHANNEL_ID, &format!("message {i}"));
            start
        })
        .await;
        report("Discord MESSAGE_CREATE", latencies);

        let fake = FakeSlack::start(SLACK_APP, SLACK_BOT).await;
        let slack = nanoclaw::channels::slack::Slack::new(
            nanoclaw::channels::slack::SlackConfig {
                api_url: fake.api_url.clone(),
                assistant_name: "Andy".into(),
            },
            SLACK_APP,
            SLACK_BOT,
        )
        .expect("slack");
        let jid = format!("slack:{}", fake_slack::CHANNEL_ID);
        let latencies = to_runner_latency(slack, &jid, samples, |i| {
            let start = Instant::now();
            fake.user_says(fake_slack::CHANNEL_ID, &format!("message {i}"));
            start
        })
        .await;
        report("Slack events_api envelope", latencies);

        let servers = MailServers::start();
        let email = email_channel(&servers);
        let latencies = to_runner_latency(email, "mail:alice@trusted.test", 50, |i| {
            servers.deliver(ALICE, ASSISTANT, &mail(i));
            // postfix has said 250: the mail is accepted.
            Instant::now()
        })
        .await;
        report("email accepted by postfix", latencies);
    });
    let (fresh, after) = rt.block_on(idle_rss_with_four_channels());
    println!(
        "idle RSS of `nanoclaw run` with Telegram, Discord, Slack (fakes) and email (dovecot) \
         connected: {fresh} KiB after start, {after} KiB after 100 messages on each"
    );
}
