//! MCP both ways in real sandboxes (SPEC §9.1), on bubblewrap and podman: a group's
//! `container_config.mcpServers` starts stdio servers inside its sandbox, and our loop
//! calls their tools as `mcp__{server}__{tool}`. One of them is `nanoclaw-agent
//! mcp-server` itself, so the NanoClaw tools travel MCP → IPC → the host's authorization
//! → the chat, with the run's context taken from the environment the host set.

mod support;

use std::path::PathBuf;

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Recorded, Reply};
use serde_json::{Value, json};
use support::{open_store, wait_bot_texts};

fn tool_names(request: &Recorded) -> Vec<String> {
    request.body["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn last_result(request: &Recorded) -> Value {
    request.body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| m["content"][0].clone())
        .unwrap_or_default()
}

async fn group_with_mcp_servers(kind: RuntimeKind) {
    let fake = FakeAnthropic::start(vec![
        Reply::tool("mcp__self__send_message", json!({"text": "sent over MCP"})),
        Reply::tool("mcp__flaky__crash", json!({})),
        Reply::tool("mcp__flaky__hello", json!({"who": "the sandbox"})),
        Reply::text("done"),
    ])
    .await;
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    let config = json!({"mcpServers": {
        "self": {"command": "nanoclaw-agent", "args": ["mcp-server"]},
        "flaky": {"command": "python3", "args": ["/workspace/group/flaky.py"]},
    }});
    open_store(root.path())
        .register_group(&nanoclaw::store::RegisteredGroup {
            jid: "web:team".into(),
            name: "team".into(),
            folder: "team".into(),
            trigger_pattern: "@Andy".into(),
            added_at: nanoclaw::clock::now(),
            container_config: Some(config.to_string()),
            requires_trigger: false,
            is_main: false,
        })
        .expect("register");
    let group_dir = root.path().join("groups/team");
    std::fs::create_dir_all(&group_dir).expect("group dir");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../nanoclaw-agent/tests/fixtures/flaky_mcp_server.py");
    std::fs::copy(fixture, group_dir.join("flaky.py")).expect("server script");
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-mcp-servers-test")),
        ..Default::default()
    };
    let url = fake.url.clone();
    let d = support::start_sandboxed_daemon_in(root, kind, None, secrets, vec![], move |c| {
        c.anthropic_base_url = url;
    })
    .await;
    d.api
        .send("web:team", "me", "Me", "use your MCP tools")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:team", 2).await;
    assert_eq!(texts, ["sent over MCP", "done"]);
    let requests = fake.requests();
    assert_eq!(requests.len(), 4);
    let names = tool_names(&requests[0]);
    for tool in [
        "mcp__self__send_message",
        "mcp__self__schedule_task",
        "mcp__flaky__hello",
        "Bash",
    ] {
        assert!(names.iter().any(|n| n == tool), "{tool} in {names:?}");
    }
    // The server inside a non-main sandbox is non-main: the host said so, not the caller.
    assert!(
        !names.iter().any(|n| n == "mcp__self__register_group"),
        "{names:?}"
    );
    let sent = last_result(&requests[1]);
    assert_eq!(sent["is_error"], false, "{sent}");
    let crashed = last_result(&requests[2]);
    assert_eq!(crashed["is_error"], true, "{crashed}");
    assert!(
        crashed["content"].as_str().unwrap_or("").contains("exited"),
        "{crashed}"
    );
    let hello = last_result(&requests[3]);
    assert_eq!(hello["content"], "hello, the sandbox", "{hello}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_runs_a_groups_mcp_servers_and_our_own_over_mcp() {
    group_with_mcp_servers(RuntimeKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_runs_a_groups_mcp_servers_and_our_own_over_mcp() {
    group_with_mcp_servers(RuntimeKind::Podman).await;
}

#[tokio::test]
async fn a_bad_mcp_config_is_refused_when_the_group_is_registered() {
    for (config, says) in [
        (
            json!({"mcpServers": {"x": {"command": "x", "env": {"TOKEN": "${GITHUB_TOKEN}"}}}}),
            "host secret",
        ),
        (
            json!({"mcpServers": {"x": {"type": "http", "url": "https://mcp.example.com"}}}),
            "not supported yet",
        ),
        (
            json!({"mcpServers": {"x": {"command": "x", "cwd": "/"}}}),
            "unknown key",
        ),
        (json!({"mcpservers": {}}), "unknown field"),
    ] {
        let request = nanoclaw::store::GroupRequest {
            jid: "web:team",
            name: "team",
            folder: "team",
            trigger: None,
            requires_trigger: true,
            container_config: Some(config.to_string()),
            is_main: false,
        };
        let err = request.check("@Andy").err().unwrap_or_default();
        assert!(err.contains(says), "{config}: {err}");
    }
}
