//! The agent binary end to end against fakes of the model APIs that speak the real wire
//! format: the tool loop, follow-ups through the inbox, sessions across runs, retries,
//! failures the user can understand, compaction, prompt caching, and the
//! OpenAI-compatible mode. (Inside real sandboxes it is tested from the host crate.)

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nanoclaw_protocol::{AgentEvent, AgentInput, CLOSE_SENTINEL};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use nanoclaw_test_support::fake_openai::{FakeOpenAi, OpenAiReply};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

const KEY: &str = "run-token-0123456789";

struct Run {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    workspace: PathBuf,
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        for d in [
            "workspace/group",
            "workspace/global",
            "workspace/ipc/input",
            "workspace/ipc/messages",
            "workspace/ipc/tasks",
            "home",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        std::fs::write(
            dir.path().join("workspace/group/CLAUDE.md"),
            "The user's cat is called Miso.",
        )
        .expect("memory");
        Env { dir }
    }

    fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    async fn start(&self, base_url: &str, session: Option<&str>, extra: &[(&str, &str)]) -> Run {
        self.start_asking(base_url, session, extra, "please make a file")
            .await
    }

    async fn start_asking(
        &self,
        base_url: &str,
        session: Option<&str>,
        extra: &[(&str, &str)],
        asking: &str,
    ) -> Run {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nanoclaw-agent"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path().join("home"))
            .env("NANOCLAW_WORKSPACE", self.workspace())
            .env("ANTHROPIC_BASE_URL", base_url)
            .env("ANTHROPIC_API_KEY", KEY)
            .env("NANOCLAW_MODEL", "claude-test")
            .env("NANOCLAW_LLM_RETRY_MS", "10")
            .env("TZ", "Europe/Berlin")
            .envs(extra.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("agent starts");
        let input = AgentInput {
            prompt: format!(
                "<messages><message sender=\"Jo\" time=\"now\">{asking}</message></messages>"
            ),
            session_id: session.map(str::to_string),
            group_folder: "team".into(),
            chat_jid: "tg:1".into(),
            is_main: false,
            is_scheduled_task: false,
            assistant_name: "Andy".into(),
        };
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(serde_json::to_string(&input).expect("json").as_bytes())
            .await
            .expect("write input");
        drop(stdin);
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Run {
            child,
            lines,
            workspace: self.workspace(),
        }
    }
}

impl Run {
    async fn event(&mut self) -> AgentEvent {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("an event in time")
            .expect("stdout readable")
            .expect("the agent is still talking");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not an event: {line} ({e})"))
    }

    /// Events until (and including) the next idle.
    async fn until_idle(&mut self) -> Vec<AgentEvent> {
        let mut events = Vec::new();
        loop {
            let e = self.event().await;
            let done = matches!(e, AgentEvent::Idle { .. } | AgentEvent::Error { .. });
            events.push(e);
            if done {
                return events;
            }
        }
    }

    fn follow_up(&self, name: &str, text: &str) {
        let dir = self.workspace.join("ipc/input");
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, json!({"type": "message", "text": text}).to_string()).expect("write");
        std::fs::rename(tmp, dir.join(name)).expect("rename");
    }

    async fn close(mut self) -> i32 {
        std::fs::write(self.workspace.join("ipc/input").join(CLOSE_SENTINEL), "").expect("close");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exits after _close")
            .expect("wait")
            .code()
            .unwrap_or(-1)
    }
}

fn session_of(events: &[AgentEvent]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            AgentEvent::Session { session_id } => Some(session_id.clone()),
            _ => None,
        })
        .expect("a session event")
}

fn results(events: &[AgentEvent]) -> Vec<(String, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Result { text, inputs } => Some((text.clone(), *inputs)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn bash_tool_use_then_answer_with_caching_and_headers() {
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "Bash",
            json!({"command": "echo hello > made.txt && cat made.txt"}),
        ),
        Reply::text("I made the file."),
    ])
    .await;
    let env = Env::new();
    let mut run = env.start(&fake.url, None, &[]).await;
    let events = run.until_idle().await;
    assert_eq!(results(&events), [("I made the file.".to_string(), 0)]);
    assert_eq!(events.last(), Some(&AgentEvent::Idle { inputs: 0 }));
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("group/made.txt")).expect("file"),
        "hello\n"
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(first.header("x-api-key"), Some(KEY));
    assert_eq!(first.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(first.body["model"], "claude-test");
    assert_eq!(first.body["stream"], true);
    let system = first.body["system"][0]["text"].as_str().expect("system");
    assert!(
        system.contains("You are Andy") && system.contains("Miso"),
        "memory is in the system prompt"
    );
    assert_eq!(
        first.body["system"][0]["cache_control"]["type"],
        "ephemeral"
    );
    let tools = first.body["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    for t in [
        "Bash",
        "Read",
        "Write",
        "Edit",
        "Glob",
        "Grep",
        "WebFetch",
        "send_message",
        "schedule_task",
        "web_search",
    ] {
        assert!(names.contains(&t), "{t} offered");
    }
    assert!(!names.contains(&"register_group"), "not main");
    assert_eq!(
        tools.last().expect("a tool")["cache_control"]["type"],
        "ephemeral"
    );
    let second = &requests[1];
    let last_message = &second.body["messages"]
        .as_array()
        .expect("messages")
        .last()
        .expect("one")["content"];
    assert_eq!(last_message[0]["type"], "tool_result");
    assert!(
        last_message[0]["content"]
            .as_str()
            .expect("text")
            .contains("hello")
    );
    assert_eq!(
        last_message[0]["cache_control"]["type"], "ephemeral",
        "the tail is cached"
    );
    assert_eq!(run.close().await, 0);
}

#[tokio::test]
async fn follow_ups_continue_the_conversation_and_sessions_resume_across_runs() {
    let fake = FakeAnthropic::start(vec![
        Reply::text("first answer"),
        Reply::text("second answer"),
        Reply::text("third"),
    ])
    .await;
    let env = Env::new();
    let mut run = env.start(&fake.url, None, &[]).await;
    let events = run.until_idle().await;
    let session = session_of(&events);
    run.follow_up("100-000001.json", "and one more thing");
    let events = run.until_idle().await;
    assert_eq!(results(&events), [("second answer".to_string(), 1)]);
    assert_eq!(events.last(), Some(&AgentEvent::Idle { inputs: 1 }));
    let second = &fake.requests()[1];
    let text = second.all_text();
    assert!(
        text.contains("please make a file")
            && text.contains("first answer")
            && text.contains("one more thing")
    );
    assert_eq!(run.close().await, 0);

    // A new run given the session id continues it.
    let mut again = env.start(&fake.url, Some(&session), &[]).await;
    let events = again.until_idle().await;
    assert_eq!(session_of(&events), session);
    let third = &fake.requests()[2];
    assert!(
        third.all_text().contains("second answer"),
        "the earlier turns are sent again"
    );
    assert_eq!(again.close().await, 0);
}

#[tokio::test]
async fn overload_is_retried_honouring_retry_after() {
    let fake = FakeAnthropic::start(vec![
        Reply::overloaded(Some(0)),
        Reply::StreamError {
            kind: "overloaded_error".into(),
            message: "Overloaded".into(),
        },
        Reply::text("made it"),
    ])
    .await;
    let env = Env::new();
    let mut run = env.start(&fake.url, None, &[]).await;
    let events = run.until_idle().await;
    assert_eq!(results(&events), [("made it".to_string(), 0)]);
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(run.close().await, 0);
}

#[tokio::test]
async fn rejected_credentials_are_a_permanent_error_without_secrets() {
    let fake = FakeAnthropic::start(vec![Reply::HttpError {
        status: 401,
        kind: "authentication_error".into(),
        message: "invalid x-api-key".into(),
        retry_after: None,
    }])
    .await;
    let env = Env::new();
    let mut run = env.start(&fake.url, None, &[]).await;
    let events = run.until_idle().await;
    let Some(AgentEvent::Error { message, permanent }) = events.last() else {
        panic!("{events:?}");
    };
    assert!(*permanent);
    assert!(
        message.contains("rejected the credentials") && message.contains("401"),
        "{message}"
    );
    assert!(!message.contains(KEY), "no secret in the message");
    let status = tokio::time::timeout(Duration::from_secs(10), run.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(!status.success());
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried");
}

#[tokio::test]
async fn long_conversations_are_compacted_and_archived() {
    let fake = FakeAnthropic::start(vec![
        Reply::text(&"a long answer ".repeat(100)),
        Reply::text("SUMMARY: Jo asked for a file."),
        Reply::text("continuing"),
    ])
    .await;
    let env = Env::new();
    let mut run = env
        .start(&fake.url, None, &[("NANOCLAW_COMPACT_TOKENS", "200")])
        .await;
    run.until_idle().await;
    run.follow_up("100-000001.json", "next question");
    let events = run.until_idle().await;
    assert_eq!(results(&events), [("continuing".to_string(), 1)]);
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests[1]
            .all_text()
            .contains("Summarise the conversation"),
        "a summary was asked for"
    );
    let after = requests[2].body.to_string();
    assert!(
        after.contains("SUMMARY: Jo asked for a file.")
            && !after.contains("a long answer a long answer")
    );
    // Without compaction the messages would hold the 1400-character answer.
    let messages_after = requests[2].body["messages"].to_string().len();
    assert!(
        messages_after < 1400,
        "the next request is shorter: {messages_after}"
    );
    let archived: Vec<PathBuf> = std::fs::read_dir(env.workspace().join("group/conversations"))
        .expect("archive folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(archived.len(), 1);
    let md = std::fs::read_to_string(&archived[0]).expect("archive");
    assert!(
        md.contains("please make a file") && md.contains("a long answer"),
        "the full transcript is kept"
    );
    assert_eq!(run.close().await, 0);
}

#[tokio::test]
async fn openai_compatible_mode_runs_the_same_tool_loop() {
    let fake = FakeOpenAi::start(vec![
        OpenAiReply::ToolCall(
            "Write".into(),
            json!({"file_path": "local.txt", "content": "from a local model"}),
        ),
        OpenAiReply::Text("Saved it.".into()),
    ])
    .await;
    let env = Env::new();
    let mut run = env
        .start(&fake.url, None, &[("NANOCLAW_LLM_API", "openai")])
        .await;
    let events = run.until_idle().await;
    assert_eq!(results(&events), [("Saved it.".to_string(), 0)]);
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("group/local.txt")).expect("file"),
        "from a local model"
    );
    let requests = fake.requests();
    assert_eq!(
        requests[0]
            .0
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(
        requests[1].1["messages"]
            .as_array()
            .expect("messages")
            .last()
            .expect("one")["role"],
        "tool"
    );
    assert_eq!(run.close().await, 0);
}

#[tokio::test]
async fn ipc_tools_write_files_the_host_can_parse() {
    let fake = FakeAnthropic::start(vec![
        Reply::Message(vec![
            nanoclaw_test_support::fake_anthropic::Block::ToolUse {
                name: "send_message".into(),
                input: json!({"text": "working on it"}),
            },
            nanoclaw_test_support::fake_anthropic::Block::ToolUse {
                name: "schedule_task".into(),
                input: json!({"prompt": "check the weather", "schedule_type": "cron", "schedule_value": "0 8 * * *"}),
            },
        ]),
        Reply::text("scheduled"),
    ])
    .await;
    let env = Env::new();
    let mut run = env.start(&fake.url, None, &[]).await;
    run.until_idle().await;
    let read = |dir: &str| -> Vec<nanoclaw_protocol::ipc::IpcRequest> {
        std::fs::read_dir(env.workspace().join("ipc").join(dir))
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| {
                serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("parses")
            })
            .collect()
    };
    assert_eq!(
        read("messages"),
        [nanoclaw_protocol::ipc::IpcRequest::Message {
            chat_jid: "tg:1".into(),
            text: "working on it".into(),
            sender: None
        }]
    );
    assert!(
        matches!(&read("tasks")[..], [nanoclaw_protocol::ipc::IpcRequest::ScheduleTask { schedule_value, target_jid, .. }]
        if schedule_value == "0 8 * * *" && target_jid == "tg:1")
    );
    assert_eq!(run.close().await, 0);
}

#[tokio::test]
async fn bad_input_is_reported() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nanoclaw-agent"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("agent starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"not json").await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("exits");
    let event: AgentEvent = serde_json::from_slice(out.stdout.trim_ascii()).expect("an event");
    assert!(
        matches!(event, AgentEvent::Error { message, permanent: true } if message.contains("not an AgentInput"))
    );
    assert!(!out.status.success());
}

#[tokio::test]
async fn a_model_repeating_the_same_call_is_nudged_once_then_stopped() {
    let same = || Reply::tool("Bash", json!({"command": "ls /no/such/dir"}));
    let fake = FakeAnthropic::start(vec![
        same(),
        same(),
        same(),
        same(),
        same(),
        Reply::text("never asked for"),
    ])
    .await;
    let env = Env::new();
    let mut run = env.start(&fake.url, None, &[]).await;
    let events = run.until_idle().await;
    let texts = results(&events);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].0.contains("kept repeating the same step (Bash)"),
        "{texts:?}"
    );
    let requests = fake.requests();
    assert_eq!(
        requests.len(),
        4,
        "three calls, the nudge with the third's result, one more call, then stop"
    );
    let nudge = "exactly the same call (Bash) with the same input 3 times in a row";
    let last_user = |i: usize| {
        requests[i].body["messages"]
            .as_array()
            .expect("messages")
            .last()
            .expect("one")
            .to_string()
    };
    assert!(
        !last_user(2).contains(nudge),
        "no nudge before the third call"
    );
    assert!(
        last_user(3).contains(nudge),
        "the nudge follows the third call's result"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.all_text().contains(nudge))
            .count(),
        1,
        "one nudge"
    );
    assert_eq!(run.close().await, 0);
}

/// The repository's `.tools/node/node_modules` (installed by `scripts/test-tools.sh`).
fn node_modules() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/node/node_modules");
    assert!(
        dir.join("@modelcontextprotocol/sdk").is_dir()
            && dir.join("@modelcontextprotocol/server-everything").is_dir(),
        "the MCP SDK and server-everything are missing from {}: run ./scripts/test-tools.sh",
        dir.display()
    );
    dir
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Runs the official SDK's client against `nanoclaw-agent mcp-server` with `env`.
async fn sdk_client(env: &[(&str, String)], calls: serde_json::Value) -> serde_json::Value {
    let out = tokio::process::Command::new("node")
        .arg(fixture("mcp_sdk_client.cjs"))
        .arg(env!("CARGO_BIN_EXE_nanoclaw-agent"))
        .arg(json!(["mcp-server"]).to_string())
        .arg(calls.to_string())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NODE_PATH", node_modules())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the SDK client finishes")
        .expect("node runs");
    assert!(
        out.status.success(),
        "SDK client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test]
async fn the_official_mcp_client_lists_and_calls_the_nanoclaw_tools() {
    let env = Env::new();
    let context = |main: &str| {
        vec![
            ("NANOCLAW_WORKSPACE", env.workspace().display().to_string()),
            ("NANOCLAW_GROUP_FOLDER", "team".to_string()),
            ("NANOCLAW_CHAT_JID", "tg:77".to_string()),
            ("NANOCLAW_IS_MAIN", main.to_string()),
        ]
    };
    let seen = sdk_client(
        &context("0"),
        json!([
            {"name": "send_message", "arguments": {"text": "hi from MCP"}},
            {"name": "register_group", "arguments": {"jid": "tg:9", "name": "x", "folder": "x", "trigger": "@x"}},
            {"name": "schedule_task", "arguments": {"prompt": "p", "schedule_type": "cron", "schedule_value": "not cron"}},
        ]),
    )
    .await;
    assert_eq!(seen["server"]["name"], "nanoclaw");
    let names: Vec<&str> = seen["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for tool in [
        "send_message",
        "schedule_task",
        "list_tasks",
        "pause_task",
        "resume_task",
        "cancel_task",
        "update_task",
    ] {
        assert!(names.contains(&tool), "{tool} in {names:?}");
    }
    assert!(!names.contains(&"register_group") && !names.contains(&"refresh_groups"));
    let calls = seen["calls"].as_array().expect("calls");
    assert_eq!(calls[0]["isError"], false, "{}", calls[0]);
    // A tool that is not offered is refused, whatever the caller says it is.
    assert!(
        calls[1]["thrown"]
            .as_str()
            .unwrap_or("")
            .contains("unknown tool")
            || calls[1]["isError"] == true,
        "{}",
        calls[1]
    );
    // The same limits as our loop: a bad schedule is a tool error, and nothing is written.
    assert_eq!(calls[2]["isError"], true, "{}", calls[2]);
    let files = |dir: &str| -> Vec<PathBuf> {
        std::fs::read_dir(env.workspace().join("ipc").join(dir))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let messages = files("messages");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&messages[0]).expect("read")).expect("json");
    assert_eq!(
        body,
        json!({"type": "message", "chatJid": "tg:77", "text": "hi from MCP"})
    );
    assert!(files("tasks").is_empty(), "{:?}", files("tasks"));

    let main = sdk_client(&context("1"), json!([])).await;
    let names: Vec<&str> = main["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"register_group") && names.contains(&"refresh_groups"));

    // Outside a sandbox's environment it says what is missing instead of guessing.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nanoclaw-agent"))
        .arg("mcp-server")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NANOCLAW_GROUP_FOLDER is not set"));
}

/// The last message of a recorded request (the tool results of the step before).
fn last_content(request: &nanoclaw_test_support::fake_anthropic::Recorded) -> serde_json::Value {
    request.body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| m["content"].clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn mcp_tools_of_the_reference_server_are_offered_called_and_answered() {
    let everything = node_modules()
        .join("@modelcontextprotocol/server-everything/dist/index.js")
        .display()
        .to_string();
    let fake = FakeAnthropic::start(vec![
        Reply::tool("mcp__everything__echo", json!({"message": "ping-42"})),
        Reply::tool("mcp__everything__get-sum", json!({"a": 20, "b": 22})),
        Reply::text("The server echoed and added."),
    ])
    .await;
    let env = Env::new();
    let servers =
        json!({"everything": {"command": "node", "args": [everything, "stdio"]}}).to_string();
    let mut run = env
        .start(
            &fake.url,
            None,
            &[("NANOCLAW_MCP_SERVERS", servers.as_str())],
        )
        .await;
    let events = run.until_idle().await;
    assert_eq!(
        results(&events),
        [("The server echoed and added.".to_string(), 0)]
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    let tools = requests[0].body["tools"].as_array().expect("tools");
    let echo = tools
        .iter()
        .find(|t| t["name"] == "mcp__everything__echo")
        .unwrap_or_else(|| panic!("echo offered: {tools:?}"));
    assert_eq!(echo["input_schema"]["type"], "object");
    assert!(
        echo["input_schema"]["properties"]["message"].is_object(),
        "{echo}"
    );
    // The list is the same in every request (it is part of the cached prefix).
    assert_eq!(requests[0].body["tools"], requests[2].body["tools"]);
    let echoed = last_content(&requests[1]);
    assert_eq!(echoed[0]["is_error"], false, "{echoed}");
    assert!(
        echoed[0]["content"]
            .as_str()
            .unwrap_or("")
            .contains("ping-42"),
        "{echoed}"
    );
    let sum = last_content(&requests[2]);
    assert!(
        sum[0]["content"].as_str().unwrap_or("").contains("42"),
        "{sum}"
    );
    assert_eq!(run.close().await, 0);
}

#[tokio::test]
async fn a_crashing_or_hanging_mcp_server_fails_the_call_not_the_run() {
    let env = Env::new();
    let starts = env.dir.path().join("starts");
    let fake = FakeAnthropic::start(vec![
        Reply::tool("mcp__flaky__crash", json!({})),
        Reply::tool("mcp__flaky__hello", json!({"who": "Jo"})),
        Reply::tool("mcp__flaky__hang", json!({})),
        Reply::tool("mcp__flaky__big", json!({})),
        Reply::tool("mcp__flaky__bigerror", json!({})),
        Reply::tool("mcp__missing__anything", json!({})),
        Reply::text("Still here."),
    ])
    .await;
    let servers = json!({
        "flaky": {"command": "python3", "args": [fixture("flaky_mcp_server.py"), starts.display().to_string()]},
        "missing": {"command": "/nonexistent/mcp-server"},
    })
    .to_string();
    let mut run = env
        .start(
            &fake.url,
            None,
            &[
                ("NANOCLAW_MCP_SERVERS", servers.as_str()),
                ("NANOCLAW_MCP_CALL_TIMEOUT_MS", "1000"),
            ],
        )
        .await;
    let events = run.until_idle().await;
    assert_eq!(results(&events), [("Still here.".to_string(), 0)]);
    let requests = fake.requests();
    assert_eq!(requests.len(), 7);
    let names: Vec<String> = requests[0]
        .tool_names()
        .into_iter()
        .filter(|n| n.starts_with("mcp__"))
        .collect();
    // A server that cannot start offers nothing; the others are unaffected.
    assert_eq!(
        names,
        [
            "mcp__flaky__hello",
            "mcp__flaky__crash",
            "mcp__flaky__hang",
            "mcp__flaky__big",
            "mcp__flaky__bigerror"
        ]
    );
    let result = |i: usize| last_content(&requests[i])[0].clone();
    let crashed = result(1);
    assert_eq!(crashed["is_error"], true, "{crashed}");
    assert!(
        crashed["content"].as_str().unwrap_or("").contains("exited"),
        "{crashed}"
    );
    // The next call starts it again.
    let hello = result(2);
    assert_eq!(hello["is_error"], false, "{hello}");
    assert_eq!(hello["content"], "hello, Jo");
    let hung = result(3);
    assert_eq!(hung["is_error"], true, "{hung}");
    assert!(
        hung["content"]
            .as_str()
            .unwrap_or("")
            .contains("did not answer within 1 s"),
        "{hung}"
    );
    // The hung one was stopped and started again, so the next call is answered.
    let big = result(4);
    assert_eq!(big["is_error"], false, "{big}");
    let text = big["content"].as_str().unwrap_or("");
    assert!(
        text.len() < 40_000 && text.contains("omitted"),
        "{} bytes",
        text.len()
    );
    // An error is capped like a result, and the server (which writes bytes that are not
    // UTF-8 and overlong lines to stderr on every call) is still running.
    let failed = result(5);
    assert_eq!(failed["is_error"], true, "{failed}");
    let text = failed["content"].as_str().unwrap_or("");
    assert!(
        text.len() < 40_000 && text.contains("omitted"),
        "{} bytes",
        text.len()
    );
    let missing = result(6);
    assert_eq!(missing["is_error"], true, "{missing}");
    assert_eq!(
        std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .count(),
        3,
        "started once, again after the crash, and again after it hung"
    );
    // Its request for sampling was refused, not left unanswered.
    let sampling: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(starts.with_extension("sampling")).unwrap_or_default(),
    )
    .unwrap_or_default();
    assert_eq!(sampling["error"]["code"], -32601, "{sampling}");
    assert_eq!(run.close().await, 0);
}

/// `memory_search` finds a fact that compaction took out of the session weeks ago and
/// kept only in the archive, with the archive's date.
#[tokio::test]
async fn memory_search_finds_what_compaction_archived_weeks_ago() {
    let fake = FakeAnthropic::start(vec![
        Reply::text(&format!("Noted. {}", "I will remember that. ".repeat(60))),
        Reply::text("SUMMARY: Jo talked about the home network."),
        Reply::text("You are welcome."),
    ])
    .await;
    let env = Env::new();
    let mut run = env
        .start_asking(
            &fake.url,
            None,
            &[("NANOCLAW_COMPACT_TOKENS", "200")],
            "the wifi password is tulip-42",
        )
        .await;
    run.until_idle().await;
    run.follow_up("100-000001.json", "thanks");
    run.until_idle().await;
    assert_eq!(run.close().await, 0);
    // The archive compaction wrote, as if it had been written four weeks ago.
    let conversations = env.workspace().join("group/conversations");
    let archived: Vec<PathBuf> = std::fs::read_dir(&conversations)
        .expect("archive folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(archived.len(), 1);
    let weeks_ago = conversations.join("2026-11-04-090000-old.md");
    std::fs::rename(&archived[0], &weeks_ago).expect("rename");

    fake.push(Reply::tool(
        "memory_search",
        json!({"query": "wifi password"}),
    ));
    fake.push(Reply::text("It is tulip-42."));
    let mut run = env
        .start_asking(&fake.url, None, &[], "what was the wifi password?")
        .await;
    let events = run.until_idle().await;
    assert_eq!(results(&events), [("It is tulip-42.".to_string(), 0)]);
    let requests = fake.requests();
    let first = &requests[3];
    assert!(
        !first.all_text().contains("tulip-42"),
        "the new session does not hold it"
    );
    let found = &requests[4].body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .expect("a message")["content"][0];
    let text = found["content"].as_str().unwrap_or("");
    assert_eq!(found["is_error"], false, "{found}");
    assert!(
        text.contains("tulip")
            && text.contains("2026-11-04")
            && text.contains("/workspace/group/conversations/2026-11-04-090000-old.md"),
        "{text}"
    );
    assert_eq!(run.close().await, 0);
}

/// A photo is shown in the turn it arrives; later requests carry a note in its place, so
/// a group that sends many photos never outgrows the API's request size.
#[tokio::test]
async fn images_are_shown_once_then_replaced_by_a_note() {
    let fake = FakeAnthropic::start(vec![Reply::text("A cat."), Reply::text("A dog.")]).await;
    let env = Env::new();
    let inbox = env.workspace().join("group/inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    let png = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 1, 2, 3];
    std::fs::write(inbox.join("a.png"), png).expect("a");
    std::fs::write(inbox.join("b.png"), png).expect("b");
    let mut run = env
        .start_asking(
            &fake.url,
            None,
            &[],
            "what is this? [attachment: /workspace/group/inbox/a.png (1 KB)]",
        )
        .await;
    run.until_idle().await;
    run.follow_up(
        "100-000001.json",
        "and this? [attachment: /workspace/group/inbox/b.png (1 KB)]",
    );
    run.until_idle().await;
    let requests = fake.requests();
    let images = |i: usize, m: usize| {
        requests[i].body["messages"][m]["content"]
            .as_array()
            .map(|b| b.iter().filter(|b| b["type"] == "image").count())
            .unwrap_or(0)
    };
    assert_eq!(images(0, 0), 1, "shown in its turn");
    assert_eq!(images(1, 0), 0, "replaced by a note later");
    assert!(
        requests[1].body["messages"][0]
            .to_string()
            .contains("An image was shown here")
    );
    assert_eq!(images(1, 2), 1, "the new one is shown");
    assert_eq!(run.close().await, 0);
}

/// The command lines of `pid`'s children.
fn children_of(pid: u32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // The parent is the second field after the parenthesised name.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then(|| {
                String::from_utf8_lossy(
                    &std::fs::read(e.path().join("cmdline")).unwrap_or_default(),
                )
                .replace('\0', " ")
            })
        })
        .collect()
}

/// The pinned Claude Code of `.tools/` (scripts/test-tools.sh), for the claude-code harness.
fn claude_code() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/node/node_modules/@anthropic-ai/claude-code-linux-x64/claude");
    assert!(
        path.is_file(),
        "Claude Code is missing from {}: run ./scripts/test-tools.sh",
        path.display()
    );
    path.display().to_string()
}

#[tokio::test]
async fn the_claude_code_harness_answers_takes_follow_ups_closes_and_resumes() {
    let fake = FakeAnthropic::start(vec![
        Reply::text("first answer"),
        Reply::text("second answer"),
        Reply::text("third"),
    ])
    .await;
    let claude = claude_code();
    let harness = [
        ("NANOCLAW_HARNESS", "claude-code"),
        ("NANOCLAW_CLAUDE_CODE", claude.as_str()),
        // An HTTP server puts the run token into Claude Code's MCP config.
        ("NANOCLAW_MCP_SERVERS", r#"{"docs": {"type": "http"}}"#),
    ];
    let env = Env::new();
    std::fs::write(
        env.workspace().join("global/CLAUDE.md"),
        "The office plant is called Fern.",
    )
    .expect("shared memory");
    let mut run = env.start(&fake.url, None, &harness).await;
    let events = run.until_idle().await;
    assert_eq!(results(&events), [("first answer".to_string(), 0)]);
    // Command lines are readable by every user of the host: Claude Code's holds neither
    // the token nor the memory (they are in files of its own).
    let children = children_of(run.child.id().expect("running"));
    assert!(!children.is_empty(), "Claude Code runs under the agent");
    for cmdline in children {
        assert!(
            cmdline.contains("stream-json") && !cmdline.contains(KEY) && !cmdline.contains("Fern"),
            "{cmdline}"
        );
    }
    let session = session_of(&events);
    assert_eq!(session.len(), 36, "Claude Code's own session id: {session}");
    let first = &fake.requests()[0];
    assert_eq!(
        first.header("x-api-key"),
        Some(KEY),
        "the run token goes to the proxy"
    );
    let body = first.body.to_string();
    assert!(
        body.contains("Miso") && body.contains("Fern"),
        "Claude Code read the group's CLAUDE.md, and was given the shared one"
    );
    run.follow_up("100-000001.json", "and one more thing");
    let events = run.until_idle().await;
    assert_eq!(results(&events), [("second answer".to_string(), 1)]);
    assert_eq!(events.last(), Some(&AgentEvent::Idle { inputs: 1 }));
    let text = fake.requests()[1].body["messages"].to_string();
    assert!(
        text.contains("please make a file")
            && text.contains("first answer")
            && text.contains("one more thing"),
        "the follow-up is a further turn of the same conversation: {text}"
    );
    assert_eq!(
        run.close().await,
        0,
        "_close ends Claude Code and the run cleanly"
    );

    let mut again = env.start(&fake.url, Some(&session), &harness).await;
    let events = again.until_idle().await;
    assert_eq!(session_of(&events), session, "the session is resumed by id");
    assert!(
        fake.requests()[2].body["messages"]
            .to_string()
            .contains("second answer"),
        "the earlier turns are sent again"
    );
    assert_eq!(again.close().await, 0);
}

#[tokio::test]
async fn the_claude_code_harness_reports_rejected_credentials_and_a_missing_install() {
    let fake = FakeAnthropic::start(vec![]).await;
    fake.respond_with(|_| Reply::HttpError {
        status: 401,
        kind: "authentication_error".into(),
        message: "invalid x-api-key".into(),
        retry_after: None,
    });
    let claude = claude_code();
    let env = Env::new();
    let mut run = env
        .start(
            &fake.url,
            None,
            &[
                ("NANOCLAW_HARNESS", "claude-code"),
                ("NANOCLAW_CLAUDE_CODE", claude.as_str()),
            ],
        )
        .await;
    let events = run.until_idle().await;
    let Some(AgentEvent::Error { message, permanent }) = events.last() else {
        panic!("{events:?}");
    };
    assert!(*permanent, "{message}");
    assert!(
        message.contains("401") && !message.contains(KEY),
        "{message}"
    );
    assert_eq!(
        fake.requests().len(),
        1,
        "rejected credentials are not retried"
    );

    let mut run = env
        .start(
            &fake.url,
            None,
            &[
                ("NANOCLAW_HARNESS", "claude-code"),
                ("NANOCLAW_CLAUDE_CODE", "/nonexistent/claude"),
            ],
        )
        .await;
    let events = run.until_idle().await;
    let Some(AgentEvent::Error { message, permanent }) = events.last() else {
        panic!("{events:?}");
    };
    assert!(*permanent, "{message}");
    assert!(
        message.contains("Claude Code is not installed") && message.contains("nanoclaw doctor"),
        "{message}"
    );
}
