//! `nanoclaw-agent`: the agent loop that runs inside a sandbox (SPEC §9).
//!
//! stdin: one `AgentInput`. stdout: `AgentEvent` lines (session, results, idle, error).
//! Follow-ups arrive as files in `/workspace/ipc/input/`; `_close` ends the run. The
//! model is reached through `ANTHROPIC_BASE_URL` (the host's credential proxy) with the
//! per-run token in `ANTHROPIC_API_KEY`; `NANOCLAW_LLM_API=openai` switches to an
//! OpenAI-compatible chat-completions API.

mod agent;
mod browser;
mod claude_code;
mod images;
mod inbox;
mod llm;
mod mcp;
mod memory;
mod prompt;
mod sandbox_init;
mod session;
mod tools;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use nanoclaw_protocol::{AgentEvent, AgentInput};

use crate::inbox::{Inbox, Input};
use crate::llm::{LlmError, Retry};

/// Largest stdin accepted (a prompt of 200 messages is far smaller).
const MAX_INPUT: u64 = 16 << 20;

fn emit(event: AgentEvent) {
    let mut out = std::io::stdout().lock();
    // If stdout is gone the host is gone; nothing left to tell anyone.
    let _ = writeln!(out, "{}", event.to_line());
    let _ = out.flush();
}

fn fail(message: String, permanent: bool) -> ExitCode {
    emit(AgentEvent::Error { message, permanent });
    ExitCode::FAILURE
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    env(name)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// How long a run waiting for follow-ups keeps its browser open.
const BROWSER_IDLE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(a) if a == "sandbox-init" => return sandbox_init::run(args.collect()),
        Some(a) if a == "egress-bridge-serve" => return sandbox_init::serve(args.collect()),
        Some(a) if a == "mcp-server" => {
            return match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(mcp::server::serve()),
                Err(e) => {
                    eprintln!("nanoclaw-agent mcp-server cannot start its runtime: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let mut raw = String::new();
    if let Err(e) = std::io::stdin().take(MAX_INPUT).read_to_string(&mut raw) {
        return fail(
            format!("nanoclaw-agent could not read its input from stdin: {e}"),
            true,
        );
    }
    let input: AgentInput = match serde_json::from_str(raw.trim()) {
        Ok(i) => i,
        Err(e) => {
            return fail(
                format!("nanoclaw-agent got input that is not an AgentInput object: {e}"),
                true,
            );
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                format!("nanoclaw-agent cannot start its runtime: {e}"),
                false,
            );
        }
    };
    runtime.block_on(async {
        let code = run(input).await;
        // A clean close writes the browser's cookies to the group's profile.
        tools::close_browser().await;
        code
    })
}

async fn run(input: AgentInput) -> ExitCode {
    let workspace = PathBuf::from(env("NANOCLAW_WORKSPACE").unwrap_or_else(|| "/workspace".into()));
    let home = PathBuf::from(env("HOME").unwrap_or_else(|| "/home/node".into()));
    let model = env("NANOCLAW_MODEL").unwrap_or_else(|| "claude-sonnet-4-5".into());
    let Some(base_url) = env("ANTHROPIC_BASE_URL") else {
        return fail(
            "ANTHROPIC_BASE_URL is not set; the agent cannot reach a model".into(),
            true,
        );
    };
    match env("NANOCLAW_HARNESS").as_deref() {
        None | Some("nanoclaw") => {}
        Some("claude-code") => {
            let settings = claude_code::Settings::from_env(workspace, home, model, base_url);
            return claude_code::run(input, settings).await;
        }
        Some(other) => {
            return fail(
                format!(
                    "NANOCLAW_HARNESS is {other:?}; it must be \"nanoclaw\" or \"claude-code\""
                ),
                true,
            );
        }
    }
    let api_key = env("ANTHROPIC_API_KEY").unwrap_or_default();
    let retry = Retry {
        attempts: env_number("NANOCLAW_LLM_ATTEMPTS", 5),
        first_delay: Duration::from_millis(env_number("NANOCLAW_LLM_RETRY_MS", 1000)),
        max_delay: Duration::from_secs(60),
    };
    let openai = env("NANOCLAW_LLM_API").as_deref() == Some("openai");
    // Inside the sandbox the credential proxy is reached over a Unix socket
    // mounted read-only at NANOCLAW_PROXY_SOCKET, so the sandbox needs no
    // network route to the host at all. The URL's host part is then only a
    // label; every connection goes to the socket.
    let mut builder = llm::http_client();
    if let Some(socket) = env("NANOCLAW_PROXY_SOCKET") {
        let socket = PathBuf::from(socket);
        if socket.exists() {
            builder = builder.unix_socket(socket);
        }
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            return fail(
                format!("nanoclaw-agent cannot build its HTTP client: {e}"),
                false,
            );
        }
    };
    let llm: Box<dyn llm::Llm> = if openai {
        Box::new(llm::openai::OpenAi::new(
            client.clone(),
            &base_url,
            &api_key,
            &model,
            retry,
        ))
    } else {
        Box::new(llm::anthropic::Anthropic::new(
            client.clone(),
            &base_url,
            &api_key,
            &model,
            retry,
            Duration::from_millis(env_number("NANOCLAW_LLM_STREAM_IDLE_MS", 300_000).max(1)),
        ))
    };
    let web_search = !openai && env("NANOCLAW_WEB_SEARCH").as_deref() != Some("off");
    let session = session::Session::resume_or_new(
        &home.join(".claude/nanoclaw/sessions"),
        input.session_id.as_deref(),
    );
    emit(AgentEvent::Session {
        session_id: session.id.clone(),
    });
    let ctx = tools::ToolContext {
        workdir: workspace.join("group"),
        ipc_dir: workspace.join("ipc"),
        chat_jid: input.chat_jid.clone(),
        group_folder: input.group_folder.clone(),
        is_main: input.is_main,
        bash_default_timeout: Duration::from_secs(120),
        home: home.clone(),
    };
    let timezone = env("TZ").unwrap_or_else(|| "UTC".into());
    let mut tools = tools::definitions(input.is_main, web_search);
    let mcp_timeouts = mcp::client::Timeouts {
        start: Duration::from_millis(env_number("NANOCLAW_MCP_START_TIMEOUT_MS", 60_000).max(1)),
        call: Duration::from_millis(env_number("NANOCLAW_MCP_CALL_TIMEOUT_MS", 120_000).max(1)),
    };
    let mcp = match env("NANOCLAW_MCP_SERVERS") {
        None => mcp::client::McpTools::none(mcp_timeouts),
        Some(raw) => {
            let (servers, problems) = mcp::client::parse_servers(&raw);
            for problem in problems {
                eprintln!("{problem}");
            }
            let taken: Vec<String> = tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect();
            let http = mcp::client::HttpContext {
                client: client.clone(),
                base_url: base_url.clone(),
                token: api_key.clone(),
            };
            mcp::client::McpTools::start(servers, &ctx.workdir, mcp_timeouts, &taken, Some(http))
                .await
        }
    };
    tools.extend(mcp.definitions.iter().cloned());
    let mut agent = agent::Agent {
        llm,
        tools,
        mcp,
        system: prompt::system_prompt(&prompt::PromptInput {
            harness: prompt::Harness::Own,
            assistant_name: &input.assistant_name,
            workspace: &workspace,
            is_main: input.is_main,
            is_scheduled_task: input.is_scheduled_task,
            timezone: &timezone,
        }),
        ctx,
        session,
        max_tokens: env_number("NANOCLAW_MAX_TOKENS", 8192),
        compact_at: env_number("NANOCLAW_COMPACT_TOKENS", 150_000),
        assistant_name: input.assistant_name.clone(),
        conversations_dir: workspace.join("group/conversations"),
        inputs_read: 0,
        emit: Box::new(emit),
    };
    let mut inbox = match Inbox::open(&workspace.join("ipc/input")) {
        Ok(i) => i,
        Err(e) => return fail(format!("cannot watch for follow-up messages: {e}"), false),
    };
    let mut next = Some(input.prompt);
    while let Some(text) = next.take() {
        if let Err(e) = agent.turn(&text).await {
            let permanent = matches!(e, LlmError::Auth(_) | LlmError::BadRequest(_));
            return fail(e.to_string(), permanent);
        }
        emit(AgentEvent::Idle {
            inputs: agent.inputs_read,
        });
        // A browser left open by the turn is closed once no follow-up came for a while
        // (its cookies are kept): an idle run may wait half an hour.
        let waited = tokio::select! {
            input = inbox.next() => Some(input),
            _ = tokio::time::sleep(BROWSER_IDLE) => None,
        };
        let input = match waited {
            Some(input) => input,
            None => {
                tools::close_browser().await;
                inbox.next().await
            }
        };
        match input {
            Some(Input::Message(text)) => {
                agent.inputs_read += 1;
                next = Some(text);
            }
            Some(Input::Close) => break,
            None => return fail("the follow-up watch stopped".into(), false),
        }
    }
    ExitCode::SUCCESS
}
