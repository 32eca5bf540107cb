//! End to end (issue 4 acceptance): a message posted to the web chat runs the real
//! nanoclaw-agent in a real sandbox (bubblewrap and podman), which reaches a scripted
//! fake of the model API only through the host's credential proxy (SPEC §11): the proxy
//! swaps the run's token for the real key, the agent's `Bash` tool writes into the
//! group's folder, and the model's answer lands in the chat. Sessions continue across
//! messages, across runs and across a daemon restart.

mod support;

use std::time::Duration;

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Recorded, Reply};
use nanoclaw_test_support::fake_openai::{FakeOpenAi, OpenAiReply};
use serde_json::json;
use support::{TestDaemon, wait_bot_texts};

const REAL_KEY: &str = "sk-ant-real-key-that-stays-on-the-host";
const REAL_OPENAI_KEY: &str = "sk-openai-real-key-that-stays-on-the-host";

fn anthropic_secrets() -> Secrets {
    Secrets {
        anthropic_api_key: Some(Secret::new(REAL_KEY)),
        ..Default::default()
    }
}

async fn start(
    root: tempfile::TempDir,
    kind: RuntimeKind,
    secrets: Secrets,
    tweak: impl FnOnce(&mut nanoclaw::config::Config),
) -> TestDaemon {
    support::start_sandboxed_daemon_in(root, kind, None, secrets, vec![], |c| {
        c.idle_timeout = Duration::from_secs(120);
        c.retry_base = Duration::from_millis(50);
        c.llm_attempts = 2;
        tweak(c);
    })
    .await
}

fn run_log_count(root: &std::path::Path) -> usize {
    support::run_log_count(root, "main")
}

fn assert_only_the_real_key(requests: &[Recorded]) {
    support::assert_only_the_real_key(requests, REAL_KEY);
}

fn user_texts(request: &Recorded) -> String {
    request.body["messages"].to_string()
}

async fn end_to_end(kind: RuntimeKind) {
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "Bash",
            json!({"command": "echo written-inside-the-sandbox > note.txt && id -u"}),
        ),
        Reply::text("I wrote note.txt for you."),
        Reply::text("Second answer, same run."),
        Reply::text("Yes, you asked me to write a note."),
    ])
    .await;
    let url = fake.url.clone();
    let d = start(
        tempfile::tempdir().expect("temp dir"),
        kind,
        anthropic_secrets(),
        |c| c.anthropic_base_url = url,
    )
    .await;
    let name = kind.name();

    d.api
        .send("web:main", "me", "Me", "please write a note")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 1).await,
        ["I wrote note.txt for you."],
        "[{name}]"
    );
    assert_eq!(
        std::fs::read_to_string(d.root().join("groups/main/note.txt")).expect("note on host"),
        "written-inside-the-sandbox\n",
        "[{name}] the file the Bash tool wrote is in groups/main/"
    );
    let requests = fake.requests();
    let tool_result = user_texts(&requests[1]);
    assert!(
        tool_result.contains("tool_result") && tool_result.contains("1000"),
        "[{name}] Bash ran as the sandbox user: {tool_result}"
    );

    // The run is idle: the next message goes into the same sandbox.
    d.api
        .send("web:main", "me", "Me", "and one more thing")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 2).await[1],
        "Second answer, same run.",
        "[{name}]"
    );
    let third = &fake.wait_requests(3).await[2];
    let seen = user_texts(third);
    assert!(
        seen.contains("please write a note")
            && seen.contains("I wrote note.txt")
            && seen.contains("and one more thing"),
        "[{name}] the follow-up continues the conversation: {seen}"
    );
    assert_eq!(
        run_log_count(d.root()),
        0,
        "[{name}] the first run is still alive"
    );

    // A restart ends the run; the next message starts a new sandbox that resumes the
    // stored session.
    let root = d.stop().await;
    assert_eq!(run_log_count(root.path()), 1, "[{name}] one sandbox so far");
    let url = fake.url.clone();
    let d = start(root, kind, anthropic_secrets(), |c| {
        c.anthropic_base_url = url
    })
    .await;
    d.api
        .send("web:main", "me", "Me", "do you remember what I asked?")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 3).await;
    assert_eq!(texts[2], "Yes, you asked me to write a note.", "[{name}]");
    let fourth = &fake.wait_requests(4).await[3];
    let seen = user_texts(fourth);
    assert!(
        seen.contains("please write a note") && seen.contains("do you remember"),
        "[{name}] the new run resumed the session: {seen}"
    );
    assert_only_the_real_key(&fake.requests());
    let root = d.stop().await;
    assert_eq!(
        run_log_count(root.path()),
        2,
        "[{name}] two sandboxes in all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_end_to_end_through_the_credential_proxy() {
    end_to_end(RuntimeKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_end_to_end_through_the_credential_proxy() {
    end_to_end(RuntimeKind::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_is_reported_to_the_chat_at_once_without_secrets() {
    let fake = FakeAnthropic::start(vec![Reply::HttpError {
        status: 401,
        kind: "authentication_error".into(),
        message: "invalid x-api-key".into(),
        retry_after: None,
    }])
    .await;
    let url = fake.url.clone();
    let d = start(
        tempfile::tempdir().expect("temp dir"),
        RuntimeKind::Bwrap,
        anthropic_secrets(),
        |c| c.anthropic_base_url = url,
    )
    .await;
    d.api
        .send("web:main", "me", "Me", "hello?")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert!(
        texts[0].contains("rejected the credentials") && texts[0].contains("API key"),
        "the user learns what is wrong and what to check: {texts:?}"
    );
    assert!(
        !texts[0].contains(REAL_KEY) && !texts[0].contains("nanoclaw-run-"),
        "no secret in the chat: {texts:?}"
    );
    let root = d.stop().await;
    assert_eq!(run_log_count(root.path()), 1, "a 401 is not retried");
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried");
    assert_only_the_real_key(&fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_mode_end_to_end() {
    let fake = FakeOpenAi::start(vec![
        OpenAiReply::ToolCall(
            "Bash".into(),
            json!({"command": "echo from-a-local-model > local.txt"}),
        ),
        OpenAiReply::Text("Done with a local model.".into()),
    ])
    .await;
    let url = fake.url.clone();
    let secrets = Secrets {
        openai_api_key: Some(Secret::new(REAL_OPENAI_KEY)),
        ..Default::default()
    };
    let d = start(
        tempfile::tempdir().expect("temp dir"),
        RuntimeKind::Bwrap,
        secrets,
        |c| {
            c.llm_api = "openai".into();
            c.openai_base_url = url;
        },
    )
    .await;
    d.api
        .send("web:main", "me", "Me", "use the local model")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 1).await,
        ["Done with a local model."]
    );
    assert_eq!(
        std::fs::read_to_string(d.root().join("groups/main/local.txt")).expect("file on host"),
        "from-a-local-model\n"
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    for (headers, _) in &requests {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        assert_eq!(auth, Some(format!("Bearer {REAL_OPENAI_KEY}").as_str()));
    }
    d.stop().await;
}

/// Issue 5 end to end: inside a real sandbox the agent's environment holds no real
/// credential; its IPC tools reach the host, which acts on them; usage is recorded.
async fn ipc_credentials_and_usage(kind: RuntimeKind) {
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "Bash",
            json!({"command": "env; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null; echo PROBE-DONE"}),
        ),
        Reply::tool("send_message", json!({"text": "Working on it..."})),
        Reply::tool(
            "schedule_task",
            json!({"prompt": "water the plants", "schedule_type": "cron", "schedule_value": "0 9 * * *", "context_mode": "group"}),
        ),
        Reply::tool("list_tasks", json!({})),
        Reply::text("All set."),
    ])
    .await;
    let url = fake.url.clone();
    let d = start(
        tempfile::tempdir().expect("temp dir"),
        kind,
        anthropic_secrets(),
        |c| c.anthropic_base_url = url,
    )
    .await;
    let name = kind.name();
    d.api
        .send("web:main", "me", "Me", "remind me about the plants")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 2).await;
    assert_eq!(texts, ["Working on it...", "All set."], "[{name}]");

    let requests = fake.requests();
    let probe = user_texts(&requests[1]);
    assert!(
        probe.contains("PROBE-DONE") && probe.contains("ANTHROPIC_API_KEY=nanoclaw-run-"),
        "[{name}] the probe ran and saw the run token: {probe}"
    );
    assert!(
        !probe.contains(REAL_KEY),
        "[{name}] no real key inside: {probe}"
    );
    let listed = user_texts(&requests[4]);
    assert!(
        listed.contains("water the plants"),
        "[{name}] list_tasks sees the task the host stored moments ago: {listed}"
    );
    assert_only_the_real_key(&requests);

    let (status, tasks) = d.api.get("/api/tasks").await.expect("tasks");
    assert_eq!(status, 200);
    let tasks = tasks.as_array().cloned().unwrap_or_default();
    assert_eq!(tasks.len(), 1, "[{name}] {tasks:?}");
    assert_eq!(tasks[0]["group_folder"], "main");
    assert_eq!(tasks[0]["context_mode"], "group");
    assert_eq!(tasks[0]["schedule_value"], "0 9 * * *");

    // Five model responses, all recorded for main.
    let root = d.root().to_path_buf();
    let usage =
        nanoclaw_test_support::wait_for("usage rows", nanoclaw_test_support::DEADLINE, || {
            let root = root.clone();
            async move {
                let (ok, out, _) = support::cli(&root, &["usage", "--json"]).await;
                let rows: serde_json::Value = serde_json::from_str(&out).ok()?;
                (ok && rows[0]["responses"] == 5).then_some(rows)
            }
        })
        .await;
    assert_eq!(usage.as_array().map(Vec::len), Some(1), "[{name}] {usage}");
    assert_eq!(usage[0]["group"], "main");
    assert!(
        usage[0]["input_tokens"].as_i64().unwrap_or(0) > 0,
        "{usage}"
    );
    assert!(
        usage[0]["output_tokens"].as_i64().unwrap_or(0) > 0,
        "{usage}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_ipc_credentials_and_usage() {
    ipc_credentials_and_usage(RuntimeKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_ipc_credentials_and_usage() {
    ipc_credentials_and_usage(RuntimeKind::Podman).await;
}

/// Runs that have failed so far, from `/metrics`.
async fn runs_failed(d: &TestDaemon) -> u64 {
    let text = d
        .api
        .client()
        .get(format!("{}/metrics", d.api.base))
        .bearer_auth(&d.api.token)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("nanoclaw_runs_failed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_runs_failed(d: &TestDaemon, n: u64) {
    nanoclaw_test_support::wait_for("a failed run", nanoclaw_test_support::DEADLINE, || async {
        (runs_failed(d).await >= n).then_some(())
    })
    .await
}

/// SPEC §15: a model request that does not fit what is left of the group's daily budget
/// is refused by the credential proxy (nothing reaches the model) and the chat is told
/// why each time; once the day is spent, the chat is told once that day, and no sandbox
/// starts at all. `usage` and `status` show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_token_budget_stops_runs_and_the_chat_is_told_once_a_day() {
    let fake = FakeAnthropic::start(vec![Reply::text("never sent")]).await;
    let url = fake.url.clone();
    let root = tempfile::tempdir().expect("temp dir");
    // For the CLI; the daemon gets the same through its config.
    std::fs::write(
        root.path().join(".env"),
        "NANOCLAW_DAILY_TOKEN_BUDGET=2000\n",
    )
    .expect(".env");
    let d = start(root, RuntimeKind::Bwrap, anthropic_secrets(), |c| {
        c.anthropic_base_url = url;
        c.daily_token_budget = Some(2_000);
    })
    .await;
    // The agent's first request (system prompt and tools: several KB) may need more
    // than the whole day's 2000 tokens.
    d.api
        .send("web:main", "me", "Me", "hello?")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert!(
        texts[0].starts_with("I had to stop: the next model request may need up to")
            && texts[0].contains("only 2000 are left of this group's daily budget of 2000 tokens")
            && texts[0].contains("resets at 00:00"),
        "{texts:?}"
    );
    assert_eq!(fake.requests().len(), 0, "nothing reached the model");
    wait_runs_failed(&d, 1).await;
    assert_eq!(run_log_count(d.root()), 1);

    // The day spent: no sandbox starts, and the chat hears it once.
    support::open_store(d.root())
        .record_usage(
            "main",
            "earlier-run",
            None,
            &nanoclaw::store::Usage {
                input_tokens: 1_500,
                output_tokens: 500,
                ..Default::default()
            },
        )
        .expect("record usage");
    for (i, text) in ["are you there?", "and now?"].iter().enumerate() {
        d.api
            .send("web:main", "me", "Me", text)
            .await
            .expect("accepted");
        wait_runs_failed(&d, 2 + i as u64).await;
    }
    assert_eq!(run_log_count(d.root()), 1, "no sandbox for a spent day");
    assert_eq!(fake.requests().len(), 0);
    let texts = wait_bot_texts(&d.api, "web:main", 2).await;
    assert_eq!(texts.len(), 2, "told once a day: {texts:?}");
    assert!(
        texts[1].starts_with(
            "I have stopped for today: this group's daily budget of 2000 tokens is reached"
        ) && texts[1].contains("container_config.budget.dailyTokens"),
        "{texts:?}"
    );

    let (ok, usage, err) = support::cli(d.root(), &["usage"]).await;
    assert!(ok, "{err}");
    assert!(
        usage.contains("budget main: 2000 of 2000 tokens today (REACHED, resets at 00:00"),
        "{usage}"
    );
    let (ok, status, err) = support::cli(d.root(), &["status"]).await;
    assert!(ok, "{err}");
    assert!(
        status.contains("budget:     main: 2000 of 2000 tokens today (REACHED"),
        "{status}"
    );
    d.stop().await;
}

/// A group with a budget that is far from spent is answered as usual; its requests
/// carry no server tool whose cost the proxy could not bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_within_its_budget_is_answered() {
    let fake = FakeAnthropic::start(vec![Reply::text("Within budget.")]).await;
    let url = fake.url.clone();
    let d = start(
        tempfile::tempdir().expect("temp dir"),
        RuntimeKind::Bwrap,
        anthropic_secrets(),
        |c| {
            c.anthropic_base_url = url;
            c.daily_token_budget = Some(1_000_000);
            // On for everyone else: the budget is what turns it off here.
            c.web_search = true;
        },
    )
    .await;
    d.api
        .send("web:main", "me", "Me", "hello?")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 1).await,
        ["Within budget."]
    );
    let request = &fake.requests()[0];
    assert!(
        !request.body["tools"].to_string().contains("web_search"),
        "{}",
        request.body["tools"]
    );
    d.stop().await;
}

/// While the agent runs a tool, `/api/status` (and so `status` and the web app) says
/// which; once it has answered, no tool is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_tool_the_agent_is_running() {
    let fake = FakeAnthropic::start(vec![
        Reply::tool("Bash", json!({"command": "sleep 4; echo slept"})),
        Reply::text("I slept."),
    ])
    .await;
    let url = fake.url.clone();
    let d = start(
        tempfile::tempdir().expect("temp dir"),
        RuntimeKind::Bwrap,
        anthropic_secrets(),
        move |c| c.anthropic_base_url = url,
    )
    .await;
    d.api
        .send("web:main", "me", "Me", "take a nap")
        .await
        .expect("202");
    let active = |status: &serde_json::Value| {
        status["queue"]["active"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["chat_jid"] == "web:main").cloned())
    };
    let run = nanoclaw_test_support::wait_for(
        "the run to show its tool",
        nanoclaw_test_support::DEADLINE,
        || async {
            let (_, status) = d.api.get("/api/status").await.ok()?;
            active(&status).filter(|r| r["tool"] == "Bash")
        },
    )
    .await;
    assert_eq!(run["idle"], false, "{run}");
    assert_eq!(wait_bot_texts(&d.api, "web:main", 1).await, ["I slept."]);
    let (_, status) = d.api.get("/api/status").await.expect("status");
    if let Some(run) = active(&status) {
        assert!(run["tool"].is_null(), "no tool after the answer: {run}");
    }
    d.stop().await;
}

/// `NANOCLAW_WEB_SEARCH` (whose default `config::tests` checks) reaches the agent both
/// ways (issue 17: it used to be on for every Anthropic-mode run, with no way to turn it
/// off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_search_is_offered_only_when_the_host_says_so() {
    for (setting, offered) in [(false, false), (true, true)] {
        let fake = FakeAnthropic::start(vec![Reply::text("ok")]).await;
        let url = fake.url.clone();
        let d = start(
            tempfile::tempdir().expect("temp dir"),
            RuntimeKind::Bwrap,
            anthropic_secrets(),
            move |c| {
                c.anthropic_base_url = url;
                c.web_search = setting;
            },
        )
        .await;
        d.api
            .send("web:main", "me", "Me", "search something")
            .await
            .expect("accepted");
        assert_eq!(wait_bot_texts(&d.api, "web:main", 1).await, ["ok"]);
        let tools = fake.requests()[0].body["tools"].to_string();
        assert_eq!(
            tools.contains("web_search"),
            offered,
            "{setting:?}: {tools}"
        );
        d.stop().await;
    }
}

/// `memory_search` in real sandboxes searches only the group's own past: the fact in one
/// group's archive is found there and nowhere else (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_search_sees_only_the_groups_own_past() {
    let fake = FakeAnthropic::start(vec![
        Reply::tool("memory_search", json!({"query": "wifi password"})),
        Reply::text("beta searched"),
        Reply::tool("memory_search", json!({"query": "wifi password"})),
        Reply::text("alpha searched"),
    ])
    .await;
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    support::register(root.path(), "web:alpha", "alpha", false);
    support::register(root.path(), "web:beta", "beta", false);
    let conversations = root.path().join("groups/alpha/conversations");
    std::fs::create_dir_all(&conversations).expect("archive folder");
    std::fs::write(
        conversations.join("2026-10-01-120000-s1.md"),
        "# Conversation s1\n\n## User\n\nOur wifi password is tulip-42.\n",
    )
    .expect("archive");
    let url = fake.url.clone();
    let d = start(root, RuntimeKind::Bwrap, anthropic_secrets(), |c| {
        c.anthropic_base_url = url;
    })
    .await;
    d.api
        .send("web:beta", "me", "Me", "what is the wifi password?")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:beta", 1).await,
        ["beta searched"]
    );
    d.api
        .send("web:alpha", "me", "Me", "what is the wifi password?")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:alpha", 1).await,
        ["alpha searched"]
    );
    let requests = fake.requests();
    let result = |i: usize| -> String {
        requests[i].body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .map(|m| m["content"][0]["content"].to_string())
            .unwrap_or_default()
    };
    assert!(
        result(1).contains("Nothing in this group's past"),
        "{}",
        result(1)
    );
    assert!(!requests[1].all_text().contains("tulip"));
    assert!(
        result(3).contains("tulip") && result(3).contains("2026-10-01"),
        "{}",
        result(3)
    );
    d.stop().await;
}
