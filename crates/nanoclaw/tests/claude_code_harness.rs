//! The Claude Code harness (SPEC §9.2, issue 16), end to end: a group with
//! `"harness": "claude-code"` runs the real Claude Code (the pinned release) inside a real
//! sandbox, driven by nanoclaw-agent, against the scripted fake model API, reached only
//! through the credential proxy. Podman uses the image's copy; bwrap the host's.

mod support;

use std::path::PathBuf;

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Recorded, Reply};
use serde_json::{Value, json};
use support::wait_bot_texts;

const REAL_KEY: &str = "sk-ant-real-key-for-the-claude-code-harness";
const SENT: &str = "sent through Claude Code's MCP tool";
/// Settings a run plants in the group's persistent home and folder: hooks that would run
/// in every later run, on every message.
/// A global config in the persistent home whose `env` Claude Code would apply to its
/// model requests, and a session hook it would source before every Bash command.
const CONFIG: &str = r#"{"env":{"ANTHROPIC_CUSTOM_HEADERS":"X-Planted: yes"}}"#;
const HOOKS: &str = r#"{"hooks":{"UserPromptSubmit":[{"hooks":[{"type":"command","command":"touch /workspace/group/hook-ran"}]}],"SessionStart":[{"hooks":[{"type":"command","command":"touch /workspace/group/hook-ran"}]}]}}"#;

/// The newest user text of a request (not Claude Code's own reminders), and whether the
/// request ends with a tool result (and which).
fn newest(body: &Value) -> (String, Option<String>) {
    let Some(last) = body["messages"].as_array().and_then(|m| m.last()) else {
        return (String::new(), None);
    };
    let blocks: Vec<Value> = match &last["content"] {
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(a) => a.clone(),
        _ => Vec::new(),
    };
    let text = blocks
        .iter()
        .rev()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .find(|t| !t.trim_start().starts_with("<system-reminder>"))
        .unwrap_or_default()
        .to_string();
    let result = blocks
        .last()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| b["content"].to_string());
    (text, result)
}

/// The model's side: a keyword in the newest message picks the answer.
fn respond(body: &Value) -> Reply {
    if body["tools"].as_array().is_none_or(|t| t.is_empty()) {
        return Reply::text("ok");
    }
    let (text, result) = newest(body);
    if let Some(result) = result {
        return Reply::text(if result.contains("Message sent") {
            "sent it"
        } else if result.contains("bash in the resumed run") {
            "resumed"
        } else {
            "probed"
        });
    }
    if text.contains("SEND") {
        Reply::tool("mcp__nanoclaw__send_message", json!({"text": SENT}))
    } else if text.contains("PROBE") {
        Reply::tool(
            "Bash",
            json!({
                "command": format!(
                    "id -u; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -E '^ANTHROPIC_' | sort -u; \
                     mkdir -p ~/.claude /workspace/group/.claude; \
                     echo '{HOOKS}' | tee ~/.claude/settings.json > /workspace/group/.claude/settings.json; \
                     echo '{CONFIG}' | tee ~/.claude/.config.json > ~/.claude/.claude.json; \
                     for t in ~/.claude/projects/*/*.jsonl; do \
                       s=$(basename $t .jsonl); mkdir -p ~/.claude/session-env/$s; \
                       echo 'touch /workspace/group/hook-ran' > ~/.claude/session-env/$s/sessionstart-hook-0.sh; \
                     done"
                ),
                "description": "look at the environment",
            }),
        )
    } else if text.contains("REMEMBER") {
        // A Bash command, so that a planted session hook would run.
        Reply::tool(
            "Bash",
            json!({"command": "echo bash in the resumed run", "description": "check"}),
        )
    } else {
        Reply::text("answered by Claude Code")
    }
}

/// The first request that carries `needle` in its newest text.
fn request_for<'a>(requests: &'a [Recorded], needle: &str) -> &'a Recorded {
    requests
        .iter()
        .find(|r| newest(&r.body).0.contains(needle) && newest(&r.body).1.is_none())
        .unwrap_or_else(|| panic!("no request for {needle:?}"))
}

async fn start(root: tempfile::TempDir, kind: RuntimeKind, url: String) -> support::TestDaemon {
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new(REAL_KEY)),
        ..Default::default()
    };
    support::start_sandboxed_daemon_in(root, kind, None, secrets, vec![], move |c| {
        c.anthropic_base_url = url;
        c.claude_code_path = Some(support::claude_code_binary());
        c.idle_timeout = std::time::Duration::from_secs(120);
        c.llm_attempts = 2;
    })
    .await
}

async fn claude_code_end_to_end(kind: RuntimeKind) {
    let name = kind.name();
    let fake = FakeAnthropic::start(vec![]).await;
    fake.respond_with(respond);
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    let config = json!({
        "harness": "claude-code",
        "mcpServers": {
            "flaky": {"command": "python3", "args": ["/workspace/group/flaky.py"]},
            // Not a server: it shows what environment a server is given.
            "dump": {"command": "sh", "args": ["-c", "env > /workspace/group/server-env.txt"]},
        },
    });
    support::register_web_group(root.path(), "team", Some(config));
    let group = root.path().join("groups/team");
    std::fs::create_dir_all(&group).expect("group dir");
    std::fs::write(
        group.join("CLAUDE.md"),
        "Team memory: the team likes boats.\n",
    )
    .expect("group memory");
    std::fs::write(
        root.path().join("groups/global/CLAUDE.md"),
        "Global memory: tea at noon.\n",
    )
    .expect("global memory");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../nanoclaw-agent/tests/fixtures/flaky_mcp_server.py");
    std::fs::copy(fixture, group.join("flaky.py")).expect("server script");

    let d = start(root, kind, fake.url.clone()).await;
    // A message is answered, and NanoClaw's own tool, called by Claude Code over MCP,
    // delivers a message of its own.
    d.api
        .send("web:team", "me", "Me", "hello, please SEND a note")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:team", 2).await,
        [SENT, "sent it"],
        "[{name}]"
    );
    let requests = fake.requests();
    let first = request_for(&requests, "please SEND");
    let names = first.tool_names();
    for tool in [
        "Bash",
        "Read",
        "mcp__nanoclaw__send_message",
        "mcp__nanoclaw__schedule_task",
        "mcp__flaky__hello",
    ] {
        assert!(
            names.iter().any(|n| n == tool),
            "[{name}] {tool} in {names:?}"
        );
    }
    for absent in [
        "mcp__nanoclaw__register_group",
        "CronCreate",
        "ScheduleWakeup",
    ] {
        assert!(
            !names.iter().any(|n| n == absent),
            "[{name}] no {absent} in {names:?}"
        );
    }
    let seen = first.body.to_string();
    assert!(
        seen.contains("tea at noon") && seen.contains("the team likes boats"),
        "[{name}] both memories reach the model"
    );
    assert!(
        seen.contains("You are Andy"),
        "[{name}] NanoClaw's context is appended"
    );

    // A follow-up goes into the same run: the same Claude Code process, the same
    // conversation. Its Bash tool runs as the sandbox user and sees no real key.
    d.api
        .send("web:team", "me", "Me", "now PROBE the environment")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:team", 3).await[2],
        "probed",
        "[{name}]"
    );
    let requests = fake.requests();
    let probe = request_for(&requests, "PROBE");
    assert!(
        probe.body["messages"].to_string().contains("please SEND"),
        "[{name}] the follow-up continues the conversation"
    );
    assert_eq!(
        support::run_log_count(d.root(), "team"),
        0,
        "[{name}] one run so far"
    );
    let env = requests
        .iter()
        .filter_map(|r| newest(&r.body).1)
        .find(|r| r.contains("ANTHROPIC_"))
        .expect("the probe's result");
    assert!(env.contains("1000"), "[{name}] Bash ran as uid 1000: {env}");
    assert!(
        env.contains("ANTHROPIC_API_KEY=") && !env.contains(REAL_KEY),
        "[{name}] only the run token is inside: {env}"
    );
    let server_env = std::fs::read_to_string(d.root().join("groups/team/server-env.txt"))
        .expect("the dump server ran");
    assert!(
        server_env.contains("NANOCLAW_") || server_env.contains("PATH="),
        "[{name}] {server_env}"
    );
    assert!(
        !server_env.contains("nanoclaw-run-") && !server_env.contains(REAL_KEY),
        "[{name}] an MCP server is not handed the run token: {server_env}"
    );
    assert!(
        d.root().join("groups/team/.claude/settings.json").is_file(),
        "[{name}] the probe planted its hooks"
    );

    // The next run resumes Claude Code's session.
    let root = d.stop().await;
    assert_eq!(support::run_log_count(root.path(), "team"), 1, "[{name}]");
    let d = start(root, kind, fake.url.clone()).await;
    d.api
        .send("web:team", "me", "Me", "do you REMEMBER?")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:team", 4).await[3],
        "resumed",
        "[{name}]"
    );
    let requests = fake.requests();
    let resumed = request_for(&requests, "REMEMBER");
    let history = resumed.body["messages"].to_string();
    assert!(
        history.contains("please SEND") && history.contains("PROBE"),
        "[{name}] the new run resumed the session: {history}"
    );
    assert!(
        !d.root().join("groups/team/hook-ran").exists(),
        "[{name}] settings and hooks the group planted in its home and folder did not run"
    );
    assert!(
        requests.iter().all(|r| r.header("x-planted").is_none()),
        "[{name}] a config planted in the persistent home was not applied"
    );
    support::assert_only_the_real_key(&requests, REAL_KEY);
    let usage = support::open_store(d.root())
        .usage_since("")
        .expect("usage");
    let team: i64 = usage
        .iter()
        .filter(|u| u.group_folder == "team")
        .map(|u| u.usage.input_tokens)
        .sum();
    assert!(team > 0, "[{name}] usage recorded for the group: {usage:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_runs_claude_code_as_the_groups_harness() {
    claude_code_end_to_end(RuntimeKind::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_runs_claude_code_as_the_groups_harness() {
    claude_code_end_to_end(RuntimeKind::Bwrap).await;
}
