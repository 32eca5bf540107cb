//! MCP both ways in real sandboxes (SPEC §9.1), on bubblewrap and podman: a group's
//! `container_config.mcpServers` starts stdio servers inside its sandbox, and our loop
//! calls their tools as `mcp__{server}__{tool}`. One of them is `nanoclaw-agent
//! mcp-server` itself, so the NanoClaw tools travel MCP → IPC → the host's authorization
//! → the chat, with the run's context taken from the environment the host set.

mod support;

use std::path::PathBuf;

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use serde_json::{Value, json};
use support::wait_bot_texts;

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
    support::register_web_group(root.path(), "team", Some(config));
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
    let names = requests[0].tool_names();
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
    let sent = support::last_tool_result(&requests[1]);
    assert_eq!(sent["is_error"], false, "{sent}");
    let crashed = support::last_tool_result(&requests[2]);
    assert_eq!(crashed["is_error"], true, "{crashed}");
    assert!(
        crashed["content"].as_str().unwrap_or("").contains("exited"),
        "{crashed}"
    );
    let hello = support::last_tool_result(&requests[3]);
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
            json!({"mcpServers": {"x": {"type": "http", "url": "mcp.example.com"}}}),
            "not a URL",
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

/// A streamable-HTTP MCP server on this host (the official SDK's server transport) that
/// wants a bearer token; returns its port, the file of the headers it saw, and the child.
fn http_mcp_server(dir: &std::path::Path, token: &str) -> (u16, PathBuf, support::KillOnDrop) {
    let node_modules =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/node/node_modules");
    assert!(
        node_modules.join("@modelcontextprotocol/sdk").is_dir(),
        "the MCP SDK is missing: run ./scripts/test-tools.sh"
    );
    let port_file = dir.join("port");
    let headers = dir.join("headers.jsonl");
    let child = support::KillOnDrop(Some(
        std::process::Command::new("node")
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/mcp_http_server.cjs"),
            )
            .arg(&port_file)
            .env("NODE_PATH", node_modules)
            .env("EXPECT_TOKEN", token)
            .env("HEADERS_LOG", &headers)
            .spawn()
            .expect("node starts"),
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            return (port, headers, child);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the MCP server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// An HTTP server is reached through the credential proxy, which adds its headers (a
/// secret from `.env` included) outside the sandbox; the group's network policy holds:
/// `full` reaches this host's loopback server, `internet` and `none` do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mcp_servers_get_their_secret_headers_from_the_host_under_the_network_policy() {
    const SECRET: &str = "s3cret-header-value-9f2";
    let scratch = tempfile::tempdir().expect("temp dir");
    let (port, headers_log, _server) = http_mcp_server(scratch.path(), SECRET);
    let fake = FakeAnthropic::start(vec![
        Reply::tool("mcp__remote__whoami", json!({"team": "core"})),
        Reply::text("done"),
        Reply::text("no server for me"),
        Reply::text("none for me either"),
        Reply::text("refused"),
    ])
    .await;
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    std::fs::write(
        root.path().join(".env"),
        format!("MCP_REMOTE_TOKEN={SECRET}\nMCP_WRONG_TOKEN=wrong-token-value-77\n"),
    )
    .expect(".env");
    let remote = json!({"remote": {"type": "http", "url": format!("http://127.0.0.1:{port}/mcp"),
        "headers": {"Authorization": "Bearer ${MCP_REMOTE_TOKEN}", "X-Team": "core"}}});
    support::register_web_group(
        root.path(),
        "full",
        Some(json!({"network": "full", "mcpServers": remote})),
    );
    support::register_web_group(
        root.path(),
        "net",
        Some(json!({"network": "internet", "mcpServers": remote})),
    );
    support::register_web_group(
        root.path(),
        "off",
        Some(json!({"network": "none", "mcpServers": remote})),
    );
    let wrong = json!({"remote": {"type": "http", "url": format!("http://127.0.0.1:{port}/mcp"),
        "headers": {"Authorization": "Bearer ${MCP_WRONG_TOKEN}"}}});
    support::register_web_group(
        root.path(),
        "wrong",
        Some(json!({"network": "full", "mcpServers": wrong})),
    );
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-mcp-http-test")),
        ..Default::default()
    };
    let url = fake.url.clone();
    let d = support::start_sandboxed_daemon_in(
        root,
        RuntimeKind::Bwrap,
        None,
        secrets,
        vec![],
        move |c| {
            c.anthropic_base_url = url;
        },
    )
    .await;
    d.api
        .send("web:full", "me", "Me", "who am I?")
        .await
        .expect("accepted");
    assert_eq!(wait_bot_texts(&d.api, "web:full", 1).await, ["done"]);
    let requests = fake.requests();
    assert!(
        requests[0]
            .tool_names()
            .iter()
            .any(|n| n == "mcp__remote__whoami"),
        "{:?}",
        requests[0].tool_names()
    );
    let answer = support::last_tool_result(&requests[1]);
    assert_eq!(answer["is_error"], false, "{answer}");
    assert_eq!(answer["content"], "authorized for team core");
    // The server got the host's headers and nothing of the sandbox's credentials.
    let seen: Vec<Value> = std::fs::read_to_string(&headers_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        seen.len() >= 3,
        "initialize, initialized, tools/list, call: {seen:?}"
    );
    for h in &seen {
        assert_eq!(h["authorization"], format!("Bearer {SECRET}"), "{h}");
        assert_eq!(h["x-team"], "core");
        assert!(
            h.get("x-api-key").is_none(),
            "the run token stays in the proxy: {h}"
        );
    }
    assert!(
        seen.iter().skip(1).all(|h| h["mcp-session-id"].is_string()),
        "{seen:?}"
    );
    // The secret never reached the model (nor, through NANOCLAW_MCP_SERVERS, the sandbox).
    assert!(!requests.iter().any(|r| r.all_text().contains(SECRET)));
    let before = seen.len();

    for (jid, answer) in [
        ("web:net", "no server for me"),
        ("web:off", "none for me either"),
        ("web:wrong", "refused"),
    ] {
        d.api
            .send(jid, "me", "Me", "who am I?")
            .await
            .expect("accepted");
        assert_eq!(wait_bot_texts(&d.api, jid, 1).await, [answer]);
    }
    let requests = fake.requests();
    for request in &requests[2..] {
        let names = request.tool_names();
        assert!(
            !names.iter().any(|n| n.starts_with("mcp__remote")),
            "{names:?}"
        );
    }
    let after = std::fs::read_to_string(&headers_log)
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(
        after,
        before + 1,
        "nothing reached the server from internet or none; the wrong token once"
    );
    let root = d.stop().await;
    // The server's refusal quoted the token it got; the sandbox saw the proxy's words.
    let wrong = support::run_logs(root.path(), "wrong").join("\n");
    assert!(
        wrong.contains("refused the credentials nanoclaw sent"),
        "{wrong}"
    );
    assert!(!wrong.contains("wrong-token-value-77"), "{wrong}");
    let net = support::run_logs(root.path(), "net").join("\n");
    assert!(net.contains("egress policy refused"), "{net}");
    let off = support::run_logs(root.path(), "off").join("\n");
    assert!(
        off.contains("network policy is \\\"none\\\"")
            || off.contains("network policy is \"none\""),
        "{off}"
    );
}

/// Claude Code as the harness reaches the same HTTP server the same way: through the
/// proxy's `/mcp/{server}` with the run token, the proxy adding the secret header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_reaches_http_mcp_servers_through_the_proxy_too() {
    const SECRET: &str = "s3cret-header-for-claude-code-41";
    let scratch = tempfile::tempdir().expect("temp dir");
    let (port, headers_log, _server) = http_mcp_server(scratch.path(), SECRET);
    let fake = FakeAnthropic::start(vec![]).await;
    fake.respond_with(|body| {
        let offered = body["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "mcp__remote__whoami"));
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .map(|m| m["content"].to_string())
            .unwrap_or_default();
        if last.contains("tool_result") {
            let answered = last.contains("authorized for team core");
            Reply::text(if answered {
                "the server answered"
            } else {
                "no answer"
            })
        } else if offered {
            Reply::tool("mcp__remote__whoami", json!({"team": "core"}))
        } else {
            Reply::text("no server offered")
        }
    });
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    std::fs::write(
        root.path().join(".env"),
        format!("MCP_REMOTE_TOKEN={SECRET}\n"),
    )
    .expect(".env");
    let remote = json!({"remote": {"type": "http", "url": format!("http://127.0.0.1:{port}/mcp"),
        "headers": {"Authorization": "Bearer ${MCP_REMOTE_TOKEN}"}}});
    support::register_web_group(
        root.path(),
        "cc",
        Some(json!({"harness": "claude-code", "network": "full", "mcpServers": remote})),
    );
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-mcp-http-claude-code")),
        ..Default::default()
    };
    let url = fake.url.clone();
    let d = support::start_sandboxed_daemon_in(
        root,
        RuntimeKind::Bwrap,
        None,
        secrets,
        vec![],
        move |c| {
            c.anthropic_base_url = url;
            c.claude_code_path = Some(support::claude_code_binary());
        },
    )
    .await;
    d.api
        .send("web:cc", "me", "Me", "who am I?")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:cc", 1).await,
        ["the server answered"]
    );
    let seen: Vec<Value> = std::fs::read_to_string(&headers_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!seen.is_empty(), "the server was reached");
    for h in &seen {
        assert_eq!(h["authorization"], format!("Bearer {SECRET}"), "{h}");
        assert!(
            h.get("x-api-key").is_none(),
            "the run token stays in the proxy: {h}"
        );
    }
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.all_text().contains(SECRET))
    );
    d.stop().await;
}
