//! Shared by the integration tests: a scripted [`AgentRunner`] double and a daemon
//! started in-process on a temporary root with real store, HTTP server and queue.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nanoclaw::channels::Channel;
use nanoclaw::config::{Config, Secrets};
use nanoclaw::daemon::{self, DaemonOptions, RunningDaemon};
use nanoclaw::proxy::RunTokens;
use nanoclaw::runner::{AgentEvent, AgentRunner, RunError, RunInput, RunIo, RunRequest};
use nanoclaw_test_support::{Api, DEADLINE, wait_for};
use tokio::sync::{Notify, Semaphore};

/// What one scripted run does.
#[derive(Debug, Clone)]
pub enum Step {
    /// Report a session, send these replies, go idle; answer each follow-up with
    /// `follow-up reply N`; end on close.
    Reply(Vec<String>),
    /// Fail at once, having sent nothing.
    Fail(String),
    /// Send one reply, then fail.
    ReplyThenFail(String, String),
    /// Wait until a follow-up has been sent to the run, leave it unread, answer the
    /// first prompt only (`inputs: 0`), then crash: the follow-up must be retried.
    ReplyToFirstThenCrash(String),
    /// Report a session, send these replies, go idle, and end the run at once.
    ReplyAndEnd(Vec<String>),
}

pub fn reply(text: &str) -> Step {
    Step::Reply(vec![text.to_string()])
}

/// A run as the double saw it.
#[derive(Debug, Clone)]
pub struct RecordedRun {
    pub chat_jid: String,
    pub folder: String,
    pub prompt: String,
    pub session_id: Option<String>,
    pub follow_ups: Vec<String>,
}

/// An [`AgentRunner`] double that follows a script and records what it was given.
#[derive(Default)]
pub struct ScriptedRunner {
    script: Mutex<VecDeque<Step>>,
    runs: Mutex<Vec<RecordedRun>>,
    changed: Notify,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// When set, every run waits for a permit before it does anything.
    gate: Option<Arc<Semaphore>>,
    sessions: AtomicUsize,
}

impl ScriptedRunner {
    pub fn new(steps: Vec<Step>) -> Arc<ScriptedRunner> {
        Arc::new(ScriptedRunner {
            script: Mutex::new(steps.into()),
            ..Default::default()
        })
    }

    /// Runs block until the returned semaphore gets permits.
    pub fn gated(steps: Vec<Step>) -> (Arc<ScriptedRunner>, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let runner = Arc::new(ScriptedRunner {
            script: Mutex::new(steps.into()),
            gate: Some(Arc::clone(&gate)),
            ..Default::default()
        });
        (runner, gate)
    }

    /// Adds a step to the end of the script.
    pub fn push(&self, step: Step) {
        self.script.lock().expect("lock").push_back(step);
    }

    pub fn runs(&self) -> Vec<RecordedRun> {
        self.runs.lock().expect("lock").clone()
    }

    pub fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Waits until `cond(runs)` holds.
    pub async fn wait_runs(
        &self,
        what: &str,
        cond: impl Fn(&[RecordedRun]) -> bool,
    ) -> Vec<RecordedRun> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let runs = self.runs();
                if cond(&runs) {
                    return runs;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what}; runs so far: {:#?}",
                self.runs()
            )
        })
    }

    fn record(&self, f: impl FnOnce(&mut Vec<RecordedRun>)) {
        f(&mut self.runs.lock().expect("lock"));
        self.changed.notify_waiters();
    }
}

struct RunningGuard<'a>(&'a AtomicUsize);
impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl AgentRunner for ScriptedRunner {
    async fn run(&self, request: RunRequest, mut io: RunIo) -> Result<(), RunError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = RunningGuard(&self.running);
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let index = {
            let mut runs = self.runs.lock().expect("lock");
            runs.push(RecordedRun {
                chat_jid: request.chat_jid.clone(),
                folder: request.group.folder.clone(),
                prompt: request.prompt.clone(),
                session_id: request.session_id.clone(),
                follow_ups: vec![],
            });
            runs.len() - 1
        };
        self.changed.notify_waiters();
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        let step = self
            .script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| reply("ok"));
        let send = |e: AgentEvent| {
            let _ = io.events.send(e);
        };
        match step {
            Step::Fail(message) => return Err(RunError::new(message)),
            Step::ReplyThenFail(text, message) => {
                send(AgentEvent::Result { text, inputs: 0 });
                return Err(RunError::new(message));
            }
            Step::ReplyToFirstThenCrash(text) => {
                let _unread = io.input.recv().await;
                send(AgentEvent::Result { text, inputs: 0 });
                return Err(RunError::new("crashed"));
            }
            Step::ReplyAndEnd(texts) => {
                for text in texts {
                    send(AgentEvent::Result { text, inputs: 0 });
                }
                send(AgentEvent::Idle { inputs: 0 });
                return Ok(());
            }
            Step::Reply(texts) => {
                let n = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
                send(AgentEvent::Session {
                    session_id: format!("session-{n}"),
                });
                for text in texts {
                    send(AgentEvent::Result { text, inputs: 0 });
                }
                send(AgentEvent::Idle { inputs: 0 });
            }
        }
        let mut follow_ups = 0u32;
        while let Some(input) = io.input.recv().await {
            match input {
                RunInput::Close => break,
                RunInput::Message(text) => {
                    follow_ups += 1;
                    self.record(|runs| runs[index].follow_ups.push(text));
                    let _ = io.events.send(AgentEvent::Result {
                        text: format!("follow-up reply {follow_ups}"),
                        inputs: follow_ups,
                    });
                    let _ = io.events.send(AgentEvent::Idle { inputs: follow_ups });
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "scripted test runner".into()
    }
}

/// A daemon running in this process on a temporary root.
pub struct TestDaemon {
    pub root: tempfile::TempDir,
    pub home: PathBuf,
    pub api: Api,
    daemon: Option<RunningDaemon>,
}

impl TestDaemon {
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
        std::mem::replace(&mut self.root, tempfile::tempdir().expect("temp dir"))
    }
}

/// The environment tests run the daemon with (fixed zone, private HOME).
pub fn test_env(root: &Path) -> HashMap<String, String> {
    HashMap::from([
        ("TZ".to_string(), "Europe/Berlin".to_string()),
        ("HOME".to_string(), root.join("home").display().to_string()),
        ("NANOCLAW_RETRY_BASE_MS".to_string(), "50".to_string()),
    ])
}

pub fn test_config(root: &Path) -> Config {
    // The email channel's warnings (a mail skipped, a fetch retried) by default: they
    // are what a failing mail test needs to be understood from CI's output alone.
    let filter =
        std::env::var("NANOCLAW_TEST_LOG").unwrap_or_else(|_| "nanoclaw_email=warn".into());
    {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let (mut config, _secrets) = Config::load(root, &test_env(root)).expect("test config loads");
    config.http_port = 0;
    config.credential_proxy_port = 0;
    config
}

pub async fn start_daemon(runner: Arc<dyn AgentRunner>) -> TestDaemon {
    start_daemon_with(runner, tempfile::tempdir().expect("temp dir"), |_| {}).await
}

pub async fn start_daemon_with(
    runner: Arc<dyn AgentRunner>,
    root: tempfile::TempDir,
    tweak: impl FnOnce(&mut Config),
) -> TestDaemon {
    start_daemon_full(
        runner,
        Arc::default(),
        Secrets::default(),
        vec![],
        root,
        tweak,
    )
    .await
}

/// Starts a daemon whose credential proxy shares `tokens` with `runner` and holds
/// `secrets`.
pub async fn start_daemon_full(
    runner: Arc<dyn AgentRunner>,
    tokens: Arc<RunTokens>,
    secrets: Secrets,
    channels: Vec<Arc<dyn Channel>>,
    root: tempfile::TempDir,
    tweak: impl FnOnce(&mut Config),
) -> TestDaemon {
    let mut config = test_config(root.path());
    tweak(&mut config);
    let home = config.home.clone();
    std::fs::create_dir_all(home.join(".config/nanoclaw")).expect("create HOME");
    let daemon = daemon::start(DaemonOptions {
        config,
        secrets,
        runner,
        tokens,
        channels,
    })
    .await
    .expect("daemon starts");
    let api = Api::new(
        format!("http://{}", daemon.http_addr),
        daemon.http_token.clone(),
    );
    TestDaemon {
        root,
        home,
        api,
        daemon: Some(daemon),
    }
}

/// Starts a daemon whose runs go into real `kind` sandboxes running `agent` (default:
/// the nanoclaw-agent built next to the nanoclaw binary), with a credential proxy that
/// holds `secrets` and shares its run tokens with the runner.
pub async fn start_sandboxed_daemon(
    kind: nanoclaw::config::RuntimeKind,
    agent: Option<PathBuf>,
    secrets: Secrets,
    tweak: impl FnOnce(&mut Config),
) -> TestDaemon {
    let root = tempfile::tempdir().expect("temp dir");
    start_sandboxed_daemon_in(root, kind, agent, secrets, vec![], tweak).await
}

/// [`start_sandboxed_daemon`] on an existing root (e.g. to restart a stopped daemon).
pub async fn start_sandboxed_daemon_in(
    root: tempfile::TempDir,
    kind: nanoclaw::config::RuntimeKind,
    agent: Option<PathBuf>,
    secrets: Secrets,
    channels: Vec<Arc<dyn Channel>>,
    tweak: impl FnOnce(&mut Config),
) -> TestDaemon {
    use nanoclaw::sandbox::{self, runner::SandboxRunner};
    let mut config = test_config(root.path());
    config.agent_bin =
        agent.or_else(|| Some(PathBuf::from(nanoclaw_bin()).with_file_name("nanoclaw-agent")));
    tweak(&mut config);
    let layout = nanoclaw::layout::Layout::new(root.path());
    layout.create().expect("layout");
    let tokens: Arc<RunTokens> = Arc::default();
    let runner = Arc::new(SandboxRunner::new(
        Arc::new(config.clone()),
        sandbox::backend(kind, &config),
        Arc::clone(&tokens),
    ));
    start_daemon_full(runner, tokens, secrets, channels, root, move |c| {
        *c = config
    })
    .await
}

/// A daemon with a scripted agent and the Telegram channel pointed at `api_url` (a fake
/// Bot API or an emulator).
pub async fn telegram_daemon(
    runner: Arc<ScriptedRunner>,
    api_url: &str,
    token: &str,
    root: tempfile::TempDir,
) -> TestDaemon {
    let telegram =
        nanoclaw::channels::telegram::Telegram::new(api_url, token, "Andy").expect("telegram");
    start_daemon_full(
        runner,
        Arc::default(),
        Default::default(),
        vec![telegram],
        root,
        |_| {},
    )
    .await
}

/// The Discord channel pointed at a fake (its gateway found through `GET /gateway/bot`).
pub fn discord(
    fake: &nanoclaw_test_support::fake_discord::FakeDiscord,
    token: &str,
) -> Arc<nanoclaw::channels::discord::Discord> {
    nanoclaw::channels::discord::Discord::new(
        nanoclaw::channels::discord::DiscordConfig {
            api_url: fake.api_url.clone(),
            gateway_url: None,
            assistant_name: "Andy".into(),
        },
        token,
    )
    .expect("discord")
}

/// The Slack channel pointed at a fake.
pub fn slack(
    fake: &nanoclaw_test_support::fake_slack::FakeSlack,
    app_token: &str,
    bot_token: &str,
) -> Arc<nanoclaw::channels::slack::Slack> {
    nanoclaw::channels::slack::Slack::new(
        nanoclaw::channels::slack::SlackConfig {
            api_url: fake.api_url.clone(),
            assistant_name: "Andy".into(),
        },
        app_token,
        bot_token,
    )
    .expect("slack")
}

/// The email channel reading `assistant@nanoclaw.test`'s mailbox on real test servers
/// (IMAP with STARTTLS on loopback, submission with STARTTLS and AUTH), with `extra`
/// settings on top (e.g. OAuth2 instead of the password).
pub fn email(
    servers: &nanoclaw_test_support::mail_servers::MailServers,
    extra: &[(&str, &str)],
) -> Arc<nanoclaw::channels::email::Email> {
    let mut settings: std::collections::BTreeMap<String, String> = [
        ("EMAIL_ADDRESS", "assistant@nanoclaw.test".to_string()),
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
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        if v.is_empty() {
            settings.remove(*k);
        } else {
            settings.insert(k.to_string(), v.to_string());
        }
    }
    let config = nanoclaw::channels::email::EmailConfig::from_settings(&settings, "Andy")
        .expect("valid email settings")
        .expect("email configured");
    nanoclaw::channels::email::Email::new(config).expect("email channel")
}

/// A daemon with a scripted agent and these channels.
pub async fn channel_daemon(
    runner: Arc<dyn AgentRunner>,
    channels: Vec<Arc<dyn Channel>>,
    root: tempfile::TempDir,
) -> TestDaemon {
    start_daemon_full(
        runner,
        Arc::default(),
        Default::default(),
        channels,
        root,
        |_| {},
    )
    .await
}

/// Registers a non-main web group through the store, as `nanoclaw groups add` does.
pub fn register(root: &Path, jid: &str, folder: &str, requires_trigger: bool) {
    open_store(root)
        .register_group(&nanoclaw::store::RegisteredGroup {
            jid: jid.into(),
            name: folder.into(),
            folder: folder.into(),
            trigger_pattern: "@Andy".into(),
            added_at: nanoclaw::clock::now(),
            container_config: None,
            requires_trigger,
            is_main: false,
        })
        .expect("register group");
}

/// How many runs of `folder` have ended (each leaves one log).
pub fn run_log_count(root: &Path, folder: &str) -> usize {
    std::fs::read_dir(root.join("groups").join(folder).join("logs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The proxy sent the real key, and nothing the sandbox had (its run token) left the host.
pub fn assert_only_the_real_key(
    requests: &[nanoclaw_test_support::fake_anthropic::Recorded],
    real_key: &str,
) {
    for r in requests {
        assert_eq!(r.header("x-api-key"), Some(real_key), "{:?}", r.headers);
        assert!(r.header("authorization").is_none(), "{:?}", r.headers);
        for (name, value) in &r.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains("nanoclaw-run-"),
                "the run token leaked upstream in {name}"
            );
        }
    }
}

/// `.tools/` in the workspace (see scripts/test-tools.sh).
pub fn tool(path: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools")
        .join(path);
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/test-tools.sh (it installs the anthropic SDK and Claude Code for these tests)",
        p.display()
    );
    p
}

/// The pinned Claude Code's native executable in `.tools/`.
pub fn claude_code_binary() -> PathBuf {
    tool("node/node_modules/@anthropic-ai/claude-code-linux-x64/claude")
}

/// Opens the test root's store, as the daemon does.
pub fn open_store(root: &Path) -> nanoclaw::store::Store {
    nanoclaw::store::Store::open(&root.join("store/messages.db"), "Andy").expect("open store")
}

/// Creates the root's layout and registers `jid` as a group that needs its trigger.
pub fn register_new(root: &Path, jid: &str, folder: &str) {
    nanoclaw::layout::Layout::new(root)
        .create()
        .expect("layout");
    register(root, jid, folder, true);
}

/// The texts of user (non-bot) messages stored for a chat, in order.
pub fn stored_user_texts(root: &Path, jid: &str) -> Vec<String> {
    open_store(root)
        .chat_messages(jid, None)
        .expect("messages")
        .into_iter()
        .filter(|m| !m.message.is_bot_message)
        .map(|m| m.message.content)
        .collect()
}

/// Replies in the outbox not yet delivered or given up.
pub fn pending_replies(root: &Path) -> i64 {
    open_store(root).count_pending_outbox().expect("count")
}

/// Waits until `n` user messages are stored for the chat; returns their texts.
pub async fn wait_stored(root: &Path, jid: &str, n: usize) -> Vec<String> {
    wait_stored_within(root, jid, n, DEADLINE).await
}

/// [`wait_stored`] with a deadline of its own (for steps that move large messages);
/// a timeout names what was stored by then.
pub async fn wait_stored_within(
    root: &Path,
    jid: &str,
    n: usize,
    deadline: std::time::Duration,
) -> Vec<String> {
    match try_wait_stored(root, jid, n, deadline).await {
        Ok(texts) => texts,
        Err(why) => panic!("{why}"),
    }
}

/// [`wait_stored_within`] that returns, rather than panics with, what it waited for
/// and what was stored by then (so a test can add what it knows).
pub async fn try_wait_stored(
    root: &Path,
    jid: &str,
    n: usize,
    deadline: std::time::Duration,
) -> Result<Vec<String>, String> {
    let start = std::time::Instant::now();
    loop {
        let texts = stored_user_texts(root, jid);
        if texts.len() >= n {
            return Ok(texts);
        }
        if start.elapsed() > deadline {
            let heads: Vec<String> = texts.iter().map(|t| t.chars().take(60).collect()).collect();
            return Err(format!(
                "timed out after {deadline:?} waiting for {n} user messages stored in {jid}; {} were: {heads:?}",
                texts.len()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Message `i` of a burst: every tenth starts with `mention` (and so asks for a run).
pub fn burst_message(i: usize, mention: &str) -> String {
    if i % 10 == 9 {
        format!("{mention} question {i:03}")
    } else {
        format!("message {i:03}")
    }
}

/// The condition `/api/status` shows for the channel `name`.
pub async fn channel_condition(api: &Api, name: &str) -> serde_json::Value {
    let (_, status) = api.get("/api/status").await.expect("status");
    status["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
        .map(|c| c["condition"].clone())
        .unwrap_or_default()
}

/// The run logs of group `folder`, in the order they were written (by modification
/// time: their names start with the run's time, but only to the second).
pub fn run_logs(root: &Path, folder: &str) -> Vec<String> {
    let mut logs: Vec<(Option<std::time::SystemTime>, String)> =
        std::fs::read_dir(root.join("groups").join(folder).join("logs"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let written = e.metadata().and_then(|m| m.modified()).ok();
                        Some((written, std::fs::read_to_string(e.path()).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
    logs.sort();
    logs.into_iter().map(|(_, text)| text).collect()
}

/// Waits until `folder` has a run log: its first run is over.
pub async fn wait_first_run(root: &Path, folder: &str) {
    let logs = root.join("groups").join(folder).join("logs");
    nanoclaw_test_support::wait_for(
        "the first run to end",
        nanoclaw_test_support::DEADLINE,
        || {
            let logs = logs.clone();
            async move {
                std::fs::read_dir(&logs)
                    .ok()
                    .and_then(|mut dir| dir.next())
                    .map(|_| ())
            }
        },
    )
    .await;
}

/// Waits until the chat shows `n` assistant messages; returns their texts.
pub async fn wait_bot_texts(api: &Api, chat_jid: &str, n: usize) -> Vec<String> {
    wait_bot_texts_within(api, chat_jid, n, DEADLINE).await
}

/// [`wait_bot_texts`], with a deadline of its own.
pub async fn wait_bot_texts_within(
    api: &Api,
    chat_jid: &str,
    n: usize,
    deadline: std::time::Duration,
) -> Vec<String> {
    wait_for(
        &format!("{n} assistant messages in {chat_jid}"),
        deadline,
        || async {
            let texts = api.bot_texts(chat_jid).await.ok()?;
            (texts.len() >= n).then_some(texts)
        },
    )
    .await
}

/// `NANOCLAW_SANDBOX_ID_BASE`'s default: where root's per-group sandbox ids start.
pub const SANDBOX_ID_BASE: u32 = 1_900_000_000;

pub fn nanoclaw_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nanoclaw")
}

/// Asserts that no run is active or waiting. The router decides before `POST
/// /api/messages` answers, so right after a 202 this proves no run was started for it.
pub async fn assert_no_runs(api: &Api, why: &str) {
    let (status, v) = api.get("/api/status").await.expect("status");
    assert_eq!(status, 200);
    assert_eq!(v["queue"]["active"], serde_json::json!([]), "{why}: {v}");
    assert_eq!(v["queue"]["waiting"], serde_json::json!([]), "{why}: {v}");
}

/// The real `nanoclaw run` binary on a root, with a fixed port.
pub struct BinaryDaemon {
    pub child: tokio::process::Child,
    pub port: u16,
    pub api: Api,
}

impl BinaryDaemon {
    pub async fn spawn(root: &Path, extra_env: &[(&str, &str)]) -> BinaryDaemon {
        Self::spawn_as(None, root, extra_env).await
    }

    /// [`BinaryDaemon::spawn`] as the ordinary user `uid` (through `setpriv`), when set;
    /// `root`'s parent must be theirs.
    pub async fn spawn_as(
        uid: Option<u32>,
        root: &Path,
        extra_env: &[(&str, &str)],
    ) -> BinaryDaemon {
        let port = nanoclaw_test_support::free_port();
        std::fs::create_dir_all(root.join("home")).expect("create HOME");
        let mut cmd = match uid {
            Some(uid) => {
                let status = std::process::Command::new("chown")
                    .args(["-R", &format!("{uid}:{uid}")])
                    .arg(root)
                    .status()
                    .expect("chown");
                assert!(status.success());
                let mut c = tokio::process::Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--",
                    nanoclaw_bin(),
                ]);
                c
            }
            None => tokio::process::Command::new(nanoclaw_bin()),
        };
        cmd.args(["run", "--root"])
            .arg(root)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(test_env(root))
            .env("NANOCLAW_HTTP_PORT", port.to_string())
            .env(
                "CREDENTIAL_PROXY_PORT",
                nanoclaw_test_support::free_port().to_string(),
            )
            // bwrap sandboxes die with the daemon, even after kill -9.
            .env("CONTAINER_RUNTIME", "bwrap")
            .envs(extra_env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("nanoclaw run starts");
        let base = format!("http://127.0.0.1:{port}");
        let probe = nanoclaw::tls::client().build().expect("client");
        wait_for("nanoclaw run to answer /healthz", DEADLINE, || {
            let (probe, url) = (probe.clone(), format!("{base}/healthz"));
            async move {
                probe
                    .get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        })
        .await;
        let api = Api::for_root(base, root).expect("token exists once the daemon answers");
        BinaryDaemon { child, port, api }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("child is running")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success());
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("nanoclaw exits after SIGTERM")
            .expect("wait works")
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL sent");
        let _ = self.child.wait().await;
    }
}

/// Runs the `nanoclaw` CLI with the test environment; returns (success, stdout, stderr).
pub async fn cli(root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(nanoclaw_bin())
        .args(args)
        .arg("--root")
        .arg(root)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(test_env(root))
        .output()
        .await
        .expect("nanoclaw CLI runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The unprivileged account sandbox tests switch to when they run nanoclaw "as an
/// ordinary user" (the tests themselves run as root, as CI does).
pub const ORDINARY_UID: u32 = 65534;

/// A root for `nanoclaw sandbox exec` tests, run either as this process's user (root in
/// CI) or as [`ORDINARY_UID`].
pub struct SandboxRoot {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub home: PathBuf,
    /// `Some(uid)`: nanoclaw runs as that ordinary user.
    pub user: Option<u32>,
}

impl SandboxRoot {
    /// A root whose commands run as the rootless podman account, with its own HOME
    /// (where its podman keeps the image, loaded here if it is not current).
    pub fn rootless_podman() -> SandboxRoot {
        let (uid, home) = rootless_podman_account();
        let mut r = SandboxRoot::new(Some(uid));
        r.home = home;
        r
    }

    pub fn new(user: Option<u32>) -> SandboxRoot {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".config/nanoclaw")).expect("home");
        std::fs::create_dir_all(root.join("store")).expect("root");
        drop(nanoclaw::store::Store::open(&root.join("store/messages.db"), "Andy").expect("store"));
        let r = SandboxRoot {
            _dir: dir,
            root,
            home,
            user,
        };
        r.give_to_user();
        r
    }

    fn give_to_user(&self) {
        if let Some(uid) = self.user {
            let base = self.root.parent().expect("parent");
            std::fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
            let status = std::process::Command::new("chown")
                .args(["-R", &format!("{uid}:{uid}")])
                .arg(base)
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown the test root to {uid}");
        }
    }

    /// Registers a group (through the store, as `groups add` or main's IPC would).
    pub fn register(&self, jid: &str, folder: &str, main: bool, container_config: Option<&str>) {
        let store = nanoclaw::store::Store::open(&self.root.join("store/messages.db"), "Andy")
            .expect("store");
        store
            .register_group(&nanoclaw::store::RegisteredGroup {
                jid: jid.into(),
                name: folder.into(),
                folder: folder.into(),
                trigger_pattern: "@Andy".into(),
                added_at: nanoclaw::clock::now(),
                container_config: container_config.map(str::to_string),
                requires_trigger: !main,
                is_main: main,
            })
            .expect("register");
        drop(store);
        self.give_to_user();
    }

    /// The host id of a group's sandboxes when nanoclaw runs as root.
    pub fn host_id(&self, folder: &str) -> u32 {
        let store = nanoclaw::store::Store::open(&self.root.join("store/messages.db"), "Andy")
            .expect("store");
        store
            .sandbox_host_id(folder, SANDBOX_ID_BASE)
            .expect("host id")
    }

    /// `nanoclaw ARGS --root ROOT` as the test's user, with `env` added.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
        let mut cmd = match self.user {
            Some(uid) => {
                let mut c = std::process::Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--",
                    nanoclaw_bin(),
                ]);
                c
            }
            None => std::process::Command::new(nanoclaw_bin()),
        };
        cmd.arg("--root")
            .arg(&self.root)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", &self.home)
            .env("TZ", "UTC")
            .envs(env.iter().copied());
        if self.user.is_some() {
            cmd.current_dir("/");
        }
        cmd
    }

    /// `nanoclaw sandbox exec` of `script` (`sh -c`) in `group`, not started yet.
    fn exec_command(&self, runtime: &str, group: &str, script: &str) -> std::process::Command {
        let args = [
            "sandbox",
            "exec",
            "--group",
            group,
            "--runtime",
            runtime,
            "--",
            "sh",
            "-c",
            script,
        ];
        self.command(&args, &[])
    }

    /// `sandbox exec` of `script` (`sh -c`) in `group`; (exit code, stdout, stderr).
    pub fn exec(&self, runtime: &str, group: &str, script: &str) -> (i32, String, String) {
        let out = self
            .exec_command(runtime, group, script)
            .output()
            .expect("nanoclaw sandbox exec runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// [`SandboxRoot::exec`] that must succeed; its stdout.
    pub fn exec_ok(&self, runtime: &str, group: &str, script: &str) -> String {
        let (code, out, err) = self.exec(runtime, group, script);
        assert_eq!(
            code, 0,
            "[{runtime}/{group}] `{script}` failed:\n{out}\n{err}"
        );
        out
    }

    /// `sandbox exec` in the background (killed when dropped).
    pub fn spawn_exec(&self, runtime: &str, group: &str, script: &str) -> KillOnDrop {
        let child = self
            .exec_command(runtime, group, script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nanoclaw sandbox exec starts");
        KillOnDrop(Some(child))
    }
}

/// The account the rootless podman tests run as (made by scripts/test-tools.sh), and its
/// home; its podman gets the current agent image (`podman save | podman load`) unless it
/// has it already.
pub fn rootless_podman_account() -> (u32, PathBuf) {
    const ACCOUNT: &str = "nanoclaw-rootless";
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{ACCOUNT}:")))
        .unwrap_or_else(|| {
            panic!(
                "this test needs the account {ACCOUNT} (scripts/test-tools.sh creates it, as root)"
            )
        });
    let fields: Vec<&str> = entry.split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    let home = PathBuf::from(fields[5]);
    static LOADED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if !*loaded {
        let label = |as_user: bool| -> String {
            let mut cmd = if as_user {
                let mut c = std::process::Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--init-groups",
                    "--",
                    "podman",
                ]);
                c.env_clear()
                    .env("HOME", &home)
                    .env("PATH", "/usr/bin:/bin")
                    .current_dir("/");
                c
            } else {
                std::process::Command::new("podman")
            };
            let out = cmd
                .args([
                    "image",
                    "inspect",
                    "--format",
                    "{{index .Config.Labels \"org.nanoclaw.agent-build\"}}",
                    "localhost/nanoclaw-agent:latest",
                ])
                .output()
                .expect("podman runs");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let want = label(false);
        assert!(
            !want.is_empty(),
            "the agent image is built (scripts/test.sh builds it)"
        );
        if label(true) != want {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "podman save localhost/nanoclaw-agent:latest | setpriv --reuid={uid} --regid={uid} --init-groups -- env -i HOME={} PATH=/usr/bin:/bin podman load -q",
                    home.display()
                ))
                .current_dir("/")
                .status()
                .expect("podman load");
            assert!(status.success(), "loading the agent image for {ACCOUNT}");
        }
        *loaded = true;
    }
    (uid, home)
}

/// A child process ended when dropped: SIGTERM (so `nanoclaw sandbox exec` removes its
/// sandbox), then SIGKILL if it is still there after 20 s.
pub struct KillOnDrop(pub Option<std::process::Child>);

impl KillOnDrop {
    /// SIGTERM, then everything it printed.
    pub fn wait_output_after_term(mut self) -> std::process::Output {
        let child = self.0.take().expect("child");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait_with_output().expect("wait")
    }

    pub fn wait_output(mut self) -> std::process::Output {
        self.0
            .take()
            .expect("child")
            .wait_with_output()
            .expect("wait")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A web server at a public address that lives in a network namespace of the test's
/// own: traffic to it never leaves this machine. Reached from the host through a /32
/// route over a veth pair, removed with the namespace. Needs root and `ip`.
pub struct PublicHost {
    pub addr: std::net::Ipv4Addr,
    pub port: u16,
    netns: String,
    server: Option<std::process::Child>,
}

impl PublicHost {
    /// What the server answers `GET /` with.
    pub const BODY: &'static str = "hello from the public internet";

    pub fn start() -> PublicHost {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let id = (std::process::id() % 10_000) * 10 + n % 10;
        // 100.128.0.0/9 is public unicast (just past carrier-grade NAT).
        let addr = std::net::Ipv4Addr::new(100, 128 + (id % 100) as u8, (n % 250) as u8, 14);
        let netns = format!("ncpub{id}");
        let (host_if, ns_if) = (format!("ncv{id}h"), format!("ncv{id}n"));
        let link = format!("10.{}.{}", 200 + (id % 50), n % 250);
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("this test needs `ip` (iproute2; scripts/setup.sh installs it)");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &netns])
            .output();
        run(&["netns", "add", &netns]);
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        run(&["link", "set", &ns_if, "netns", &netns]);
        run(&["addr", "add", &format!("{link}.1/30"), "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        let ns = |args: &[&str]| {
            let mut full = vec!["netns", "exec", netns.as_str(), "ip"];
            full.extend_from_slice(args);
            run(&full);
        };
        ns(&["addr", "add", &format!("{link}.2/30"), "dev", &ns_if]);
        ns(&["addr", "add", &format!("{addr}/32"), "dev", &ns_if]);
        ns(&["link", "set", &ns_if, "up"]);
        ns(&["link", "set", "lo", "up"]);
        ns(&["route", "add", "default", "via", &format!("{link}.1")]);
        run(&[
            "route",
            "add",
            &format!("{addr}/32"),
            "via",
            &format!("{link}.2"),
        ]);
        let port = 8080;
        let script = format!(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       b = b'{}'\n\
             \x20       self.send_response(200); self.send_header('content-length', str(len(b))); self.end_headers(); self.wfile.write(b)\n\
             \x20   def log_message(self, *a): pass\n\
             http.server.ThreadingHTTPServer(('{addr}', {port}), H).serve_forever()\n",
            Self::BODY
        );
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs");
        let host = PublicHost {
            addr,
            port,
            netns,
            server: Some(server),
        };
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((addr, port)),
            std::time::Duration::from_millis(200),
        )
        .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the public host did not come up"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        host
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}/", self.addr, self.port)
    }
}

impl Drop for PublicHost {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        // Deleting the namespace deletes the veth pair, and the route with it.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// Registers the non-main web group `web:{folder}` (no trigger needed) with
/// `container_config`, through the store.
pub fn register_web_group(root: &Path, folder: &str, container_config: Option<serde_json::Value>) {
    open_store(root)
        .register_group(&nanoclaw::store::RegisteredGroup {
            jid: format!("web:{folder}"),
            name: folder.into(),
            folder: folder.into(),
            trigger_pattern: "@Andy".into(),
            added_at: nanoclaw::clock::now(),
            container_config: container_config.map(|c| c.to_string()),
            requires_trigger: false,
            is_main: false,
        })
        .expect("register");
}

/// The tool result a model request carries last (its first content block).
pub fn last_tool_result(
    request: &nanoclaw_test_support::fake_anthropic::Recorded,
) -> serde_json::Value {
    request.body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| {
            m["content"]
                .as_array()
                .and_then(|b| b.iter().find(|b| b["type"] == "tool_result"))
                .cloned()
        })
        .unwrap_or_default()
}
