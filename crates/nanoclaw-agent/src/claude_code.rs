//! The Claude Code harness (SPEC §9.2): `container_config.harness = "claude-code"` runs
//! Claude Code headless in streaming-JSON mode, and this adapter speaks our own stdin/stdout
//! protocol for it, so the host sees the same run as with our loop.
//!
//! - The prompt goes in as a user turn; each turn's `result` comes out as our `result`
//!   and `idle` events, its tool uses as `tool` events, its session as `session`.
//! - Follow-ups from `/workspace/ipc/input` become further user turns of the same process;
//!   `_close` ends its input, and it exits.
//! - Its model calls reach the credential proxy with the run token. Claude Code speaks
//!   HTTP over TCP only, so a loopback listener inside the sandbox carries each connection
//!   to the proxy's Unix socket (the sandbox may have no other network).
//! - Its sessions live in `/home/node/.claude` (the group's sessions folder) and are
//!   resumed by id. It loads no settings, hooks, plugins or skills from there or from the
//!   group's folder (a hook planted by one run would run in every later one); the
//!   group's and the shared `CLAUDE.md` and NanoClaw's context are appended to its system
//!   prompt instead.
//! - NanoClaw's tools come from our MCP server (`nanoclaw-agent mcp-server`, as
//!   `nanoclaw`), and the group's `mcpServers` are passed on: stdio ones as configured,
//!   HTTP ones through the proxy's `/mcp/{server}` (the sandbox never learns their URL or
//!   headers).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nanoclaw_protocol::{AgentEvent, AgentInput};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::inbox::{Inbox, Input};
use crate::{emit, env, fail};

use nanoclaw_protocol::{CLAUDE_CODE_IN_SANDBOX as DEFAULT_BINARY, CLAUDE_CODE_VERSION as VERSION};

/// A line of Claude Code's output longer than this is skipped (its own limits keep them far
/// smaller; a runaway one must not take the sandbox's memory).
const MAX_LINE: usize = 16 << 20;
/// Claude Code's tools that would only act within this run: NanoClaw's scheduler
/// (`mcp__nanoclaw__schedule_task`) keeps tasks across runs instead.
const RUN_BOUND_TOOLS: [&str; 4] = ["CronCreate", "CronDelete", "CronList", "ScheduleWakeup"];
/// How long Claude Code may take to exit once its input ended.
const EXIT_GRACE: Duration = Duration::from_secs(20);
/// Peer checks of the model bridge running at once.
const PEER_CHECKS: usize = 2;
/// How many of Claude Code's last stderr lines an error report quotes.
const STDERR_KEPT: usize = 12;

/// What the adapter needs from the run's environment (set by the host).
pub struct Settings {
    pub binary: PathBuf,
    pub workspace: PathBuf,
    pub home: PathBuf,
    pub model: String,
    pub base_url: String,
    pub token: String,
    pub proxy_socket: Option<PathBuf>,
    pub web_search: bool,
    pub mcp_servers: Option<String>,
    pub timezone: String,
}

impl Settings {
    pub fn from_env(
        workspace: PathBuf,
        home: PathBuf,
        model: String,
        base_url: String,
    ) -> Settings {
        Settings {
            binary: PathBuf::from(
                env("NANOCLAW_CLAUDE_CODE").unwrap_or_else(|| DEFAULT_BINARY.into()),
            ),
            workspace,
            home,
            model,
            base_url,
            token: env("ANTHROPIC_API_KEY").unwrap_or_default(),
            proxy_socket: env("NANOCLAW_PROXY_SOCKET")
                .map(PathBuf::from)
                .filter(|p| p.exists()),
            web_search: env("NANOCLAW_WEB_SEARCH").as_deref() != Some("off"),
            mcp_servers: env("NANOCLAW_MCP_SERVERS"),
            timezone: env("TZ").unwrap_or_else(|| "UTC".into()),
        }
    }
}

/// One line of Claude Code's `stream-json` output, as far as the host needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `system`/`init`: the session in use.
    Session(String),
    /// An assistant message that calls these tools.
    Tools(Vec<String>),
    /// The end of a turn: its final text, or why it failed.
    Result(Result<String, Failure>),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub permanent: bool,
}

pub fn parse_line(line: &[u8]) -> Line {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return Line::Other;
    };
    match (v["type"].as_str(), v["subtype"].as_str()) {
        (Some("system"), Some("init")) => match v["session_id"].as_str() {
            Some(id) if !id.is_empty() => Line::Session(id.to_string()),
            _ => Line::Other,
        },
        // Claude Code retries even rejected credentials, ten times over minutes; they
        // come back the same, so the run fails at once, as with our own loop.
        (Some("system"), Some("api_retry")) => match v["error_status"].as_u64() {
            Some(status @ (401 | 403)) => Line::Result(Err(Failure {
                message: crate::llm::LlmError::Auth(format!("HTTP {status}")).to_string(),
                permanent: true,
            })),
            Some(status @ 400) => Line::Result(Err(Failure {
                message: crate::llm::LlmError::BadRequest(format!(
                    "HTTP {status}: {}",
                    shorten(v["error"].as_str().unwrap_or("invalid request"), 300)
                ))
                .to_string(),
                permanent: true,
            })),
            _ => Line::Other,
        },
        (Some("assistant"), _) => {
            let names: Vec<String> = v["message"]["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| matches!(c["type"].as_str(), Some("tool_use" | "server_tool_use")))
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect();
            if names.is_empty() {
                Line::Other
            } else {
                Line::Tools(names)
            }
        }
        (Some("result"), subtype) => {
            let text = v["result"].as_str().unwrap_or_default();
            if subtype == Some("success") && v["is_error"] != true {
                return Line::Result(Ok(text.to_string()));
            }
            let status = v["api_error_status"].as_u64();
            let why = if text.trim().is_empty() {
                subtype.unwrap_or("an unknown error").to_string()
            } else {
                shorten(text, 500)
            };
            Line::Result(Err(Failure {
                message: match status {
                    Some(s) => format!("Claude Code failed (model API status {s}): {why}"),
                    None => format!("Claude Code failed: {why}"),
                },
                // Rejected credentials and invalid requests come back the same next time.
                permanent: matches!(status, Some(400 | 401 | 403)),
            }))
        }
        _ => Line::Other,
    }
}

fn shorten(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        return text.to_string();
    }
    format!("{}…", text.chars().take(max).collect::<String>())
}

/// The session to resume: `id` if it names a Claude Code transcript of this working
/// folder. Anything else (our own loop's ids after a harness change, a lost transcript)
/// starts a new session, as our loop does, rather than failing the run.
pub fn resumable(home: &Path, cwd: &Path, id: Option<&str>) -> Option<String> {
    let id = id?;
    // 8-4-4-4-12 hexadecimal digits, nothing else (it is passed on a command line).
    let uuid = id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !uuid {
        eprintln!("session id {id:?} is not Claude Code's; starting a new session");
        return None;
    }
    // Claude Code keeps a folder's sessions under its path with every other character
    // replaced by '-'.
    let slug: String = cwd
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let transcript = home
        .join(".claude/projects")
        .join(slug)
        .join(format!("{id}.jsonl"));
    if transcript.is_file() {
        Some(id.to_string())
    } else {
        eprintln!("session {id} has no transcript; starting a new session");
        None
    }
}

/// The `--mcp-config` Claude Code gets: our server as `nanoclaw`, then the group's.
pub fn mcp_config(s: &Settings, agent: &Path, input: &AgentInput, model_url: &str) -> Value {
    let mut servers = serde_json::Map::new();
    servers.insert(
        "nanoclaw".into(),
        json!({
            "type": "stdio",
            "command": agent.to_string_lossy(),
            "args": ["mcp-server"],
            "env": {
                "ANTHROPIC_API_KEY": "",
                "ANTHROPIC_BASE_URL": "",
                "NANOCLAW_GROUP_FOLDER": input.group_folder,
                "NANOCLAW_CHAT_JID": input.chat_jid,
                "NANOCLAW_IS_MAIN": if input.is_main { "1" } else { "0" },
                "NANOCLAW_WORKSPACE": s.workspace.to_string_lossy(),
            },
        }),
    );
    let (group, problems) = s
        .mcp_servers
        .as_deref()
        .map(crate::mcp::client::parse_servers)
        .unwrap_or_default();
    for problem in problems {
        eprintln!("{problem}");
    }
    for (name, transport) in group {
        if name == "nanoclaw" {
            eprintln!("MCP server \"nanoclaw\" is NanoClaw's own; the group's is skipped");
            continue;
        }
        let spec = match transport {
            crate::mcp::client::Transport::Stdio {
                command,
                args,
                mut env,
            } => {
                // Claude Code gives its servers its own environment; the run token is
                // the agent's, not theirs (as with our loop, §52).
                for name in ["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"] {
                    env.insert(name.to_string(), String::new());
                }
                json!({"type": "stdio", "command": command, "args": args, "env": env})
            }
            crate::mcp::client::Transport::Http => json!({
                "type": "http",
                "url": format!("{}/mcp/{name}", model_url.trim_end_matches('/')),
                "headers": {"x-api-key": s.token},
            }),
        };
        servers.insert(name, spec);
    }
    json!({ "mcpServers": servers })
}

/// A folder only this user can read, in the sandbox's own `/tmp`, removed when dropped.
struct PrivateFiles {
    dir: PathBuf,
}

impl PrivateFiles {
    fn write(files: &[(&str, &str)]) -> std::io::Result<PrivateFiles> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = std::env::temp_dir().join(format!(
            "nanoclaw-claude-code-{}",
            crate::tools::ipc::random_suffix()
        ));
        // A fresh name: creating it fails rather than using anything already there.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let private = PrivateFiles { dir };
        for (name, text) in files {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(private.dir.join(name))?
                .write_all(text.as_bytes())?;
        }
        Ok(private)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A fresh Claude Code configuration folder whose `projects` is the group's
    /// persistent transcripts folder (created if missing), so sessions resume and
    /// nothing else of the group's home is read.
    fn config_dir(&self, projects: &Path) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        // It must be a folder: a symlink or a file left there (by the group's own code)
        // would otherwise fail every later run. It is moved aside, and this run starts
        // without the earlier sessions.
        match std::fs::symlink_metadata(projects) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                let aside = projects.with_file_name(format!(
                    "projects.broken-{}",
                    jiff::Timestamp::now().as_millisecond()
                ));
                std::fs::rename(projects, &aside)?;
                eprintln!(
                    "{} was not a folder; moved to {} (earlier sessions cannot be resumed)",
                    projects.display(),
                    aside.display()
                );
                std::fs::create_dir(projects)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(projects)?
            }
            Err(e) => return Err(e),
        }
        let dir = self.dir.join("config");
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::os::unix::fs::symlink(projects, dir.join("projects"))?;
        Ok(dir)
    }
}

impl Drop for PrivateFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Carries each loopback TCP connection to the proxy's Unix socket. Returns the URL
/// Claude Code should use.
///
/// Only connections made by a process of this sandbox are carried. With bwrap run by an
/// ordinary user, a `full` sandbox shares the host's network namespace, so anyone on
/// the host could connect; without the run token they get nothing, but their
/// connections would use up the run's connections to the proxy.
async fn bridge(socket: PathBuf) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let refused = Arc::new(std::sync::atomic::AtomicU32::new(0));
    // A flood of connections must not take the sandbox's CPU and threads: at most this
    // many checks at once, the others wait (a check reads /proc, a few milliseconds).
    let checks = Arc::new(tokio::sync::Semaphore::new(PEER_CHECKS));
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((mut tcp, peer)) => {
                    let socket = socket.clone();
                    let refused = Arc::clone(&refused);
                    let checks = Arc::clone(&checks);
                    tokio::spawn(async move {
                        let Ok(_permit) = checks.acquire_owned().await else {
                            return;
                        };
                        let ours = tokio::task::spawn_blocking(move || {
                            from_this_sandbox(std::path::Path::new("/proc"), peer, addr)
                        })
                        .await
                        .unwrap_or(false);
                        drop(_permit);
                        if !ours {
                            let n = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if n < 3 {
                                eprintln!(
                                    "refused a connection to the model bridge from {peer}: not a process of this sandbox"
                                );
                            }
                            return;
                        }
                        match tokio::net::UnixStream::connect(&socket).await {
                            Ok(mut unix) => {
                                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                            }
                            Err(e) => eprintln!("cannot reach the credential proxy: {e}"),
                        }
                    });
                }
                // Out of descriptors, say: wait rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    Ok(format!("http://{addr}"))
}

/// Whether the TCP connection from `peer` to our listener at `local` belongs to a process
/// this `proc` shows (the sandbox's own: it has a pid namespace of its own). The peer's
/// socket is found in `net/tcp` by its two addresses, then among the processes' open
/// files by its inode.
fn from_this_sandbox(proc: &Path, peer: std::net::SocketAddr, local: std::net::SocketAddr) -> bool {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        )),
        std::net::SocketAddr::V6(_) => None,
    };
    let (Some(from), Some(to)) = (hex(peer), hex(local)) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string(proc.join("net/tcp")) else {
        return false;
    };
    let Some(inode) = table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9 && fields[1] == from && fields[2] == to).then(|| fields[9].to_string())
    }) else {
        return false;
    };
    if inode == "0" {
        return false;
    }
    let needle = format!("socket:[{inode}]");
    let Ok(entries) = std::fs::read_dir(proc) else {
        return false;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            std::fs::read_dir(e.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str())
                })
        })
}

/// Reads one line (without its newline), at most `MAX_LINE` bytes of it; a longer line
/// is consumed and returned empty. `None` at the end of the stream.
async fn next_line<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut over = false;
    let mut any = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(any.then_some(line));
        }
        any = true;
        let (part, used, end) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if !over && line.len() + part.len() <= MAX_LINE {
            line.extend_from_slice(part);
        } else if !over {
            over = true;
            line.clear();
        }
        r.consume(used);
        if end {
            return Ok(Some(line));
        }
    }
}

fn user_turn(text: &str) -> String {
    let mut line =
        json!({"type": "user", "message": {"role": "user", "content": text}}).to_string();
    line.push('\n');
    line
}

pub async fn run(input: AgentInput, s: Settings) -> ExitCode {
    if env("NANOCLAW_LLM_API").as_deref() == Some("openai") {
        return fail(
            "the claude-code harness speaks the Anthropic API only; this nanoclaw is set up for an \
             OpenAI-compatible one (NANOCLAW_LLM_API=openai). Use the default harness for this group."
                .into(),
            true,
        );
    }
    if !s.binary.is_file() {
        return fail(
            format!(
                "Claude Code is not installed in this sandbox ({} is missing). With podman, run \
                 `nanoclaw image build --force` on a machine with npm; with bubblewrap, install \
                 @anthropic-ai/claude-code@{VERSION} on the host or set CLAUDE_CODE_PATH. \
                 `nanoclaw doctor` says which applies.",
                s.binary.display()
            ),
            true,
        );
    }
    let model_url = match &s.proxy_socket {
        Some(socket) => match bridge(socket.clone()).await {
            Ok(url) => url,
            Err(e) => {
                return fail(
                    format!("cannot open a loopback port for Claude Code's model calls: {e}"),
                    false,
                );
            }
        },
        None => s.base_url.clone(),
    };
    let agent = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("nanoclaw-agent"));
    let cwd = s.workspace.join("group");
    let mut args: Vec<String> = [
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        // The sandbox is the boundary; there is nobody to approve a tool call.
        "--dangerously-skip-permissions",
        "--strict-mcp-config",
        // No settings, hooks, plugins or skills from the group's persistent home or
        // folder: a hook planted there by one run would run in every later one, on
        // every message (§59). Only our own settings file counts.
        "--setting-sources=",
        "--disable-slash-commands",
    ]
    .map(String::from)
    .to_vec();
    args.extend(["--model".into(), s.model.clone()]);
    // The MCP config (it holds the run token for HTTP servers) and the prompt (it holds
    // the shared memory) go in files: a command line is readable by every user of the
    // host in /proc (decisions §23).
    let prompt = crate::prompt::system_prompt(&crate::prompt::PromptInput {
        harness: crate::prompt::Harness::ClaudeCode,
        assistant_name: &input.assistant_name,
        workspace: &s.workspace,
        is_main: input.is_main,
        is_scheduled_task: input.is_scheduled_task,
        timezone: &s.timezone,
    });
    let mcp = mcp_config(&s, &agent, &input, &model_url).to_string();
    let settings = json!({
        // WebFetch would first ask api.anthropic.com, directly, whether a domain may be
        // fetched: outside the proxy, and refused under `internet` with allowedDomains.
        "skipWebFetchPreflight": true,
    })
    .to_string();
    let private = match PrivateFiles::write(&[
        ("mcp.json", &mcp),
        ("prompt.md", &prompt),
        ("settings.json", &settings),
    ]) {
        Ok(p) => p,
        Err(e) => {
            return fail(
                format!("cannot write Claude Code's settings to a private folder: {e}"),
                false,
            );
        }
    };
    // Claude Code's configuration folder is a fresh one per run, with only the group's
    // transcripts linked in: the group's persistent ~/.claude could hold a global config
    // (`.config.json` with `env`: a shell prefix, another model URL), session hooks
    // (`session-env/…/sessionstart-hook-0.sh`) and the like, which it would apply
    // without asking (§59).
    let config_dir = match private.config_dir(&s.home.join(".claude/projects")) {
        Ok(dir) => dir,
        Err(e) => {
            return fail(
                format!("cannot prepare Claude Code's configuration folder: {e}"),
                false,
            );
        }
    };
    args.extend(["--mcp-config".into(), private.path("mcp.json")]);
    args.extend(["--settings".into(), private.path("settings.json")]);
    args.extend([
        "--append-system-prompt-file".into(),
        private.path("prompt.md"),
    ]);
    let mut disallowed: Vec<&str> = RUN_BOUND_TOOLS.to_vec();
    if !s.web_search {
        disallowed.push("WebSearch");
    }
    args.extend(["--disallowedTools".into(), disallowed.join(",")]);
    if let Some(id) = resumable(&s.home, &cwd, input.session_id.as_deref()) {
        args.push(format!("--resume={id}"));
    }

    let mut command = tokio::process::Command::new(&s.binary);
    command
        .args(&args)
        .current_dir(&cwd)
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for name in [
        "HOME",
        "USER",
        "LANG",
        "PATH",
        "TZ",
        "TMPDIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        if let Ok(value) = std::env::var(name) {
            command.env(name, value);
        }
    }
    command
        .env("CLAUDE_CONFIG_DIR", &config_dir)
        .env("CLAUDE_CODE_DISABLE_AUTO_MEMORY", "1")
        .env("ANTHROPIC_BASE_URL", &model_url)
        .env("ANTHROPIC_API_KEY", &s.token)
        // No update checks, telemetry or error reports: only model calls leave, and
        // only to the proxy.
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        // Tells Claude Code it is sandboxed, so skipping permissions is allowed.
        .env("IS_SANDBOX", "1");
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(
                format!("cannot start Claude Code ({}): {e}", s.binary.display()),
                true,
            );
        }
    };
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return fail("Claude Code started without its pipes".into(), false);
    };
    let kept = Arc::new(Mutex::new(VecDeque::<String>::new()));
    {
        let kept = Arc::clone(&kept);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr);
            while let Ok(Some(line)) = next_line(&mut lines).await {
                let line = shorten(&String::from_utf8_lossy(&line), 2000);
                eprintln!("claude: {line}");
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() == STDERR_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
    }
    let stopped = |status: String| {
        let kept = kept.lock().unwrap_or_else(|p| p.into_inner());
        let last: Vec<&str> = kept.iter().map(String::as_str).collect();
        fail(
            format!(
                "Claude Code stopped ({status}) before it answered{}",
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {}", shorten(&last.join(" / "), 800))
                }
            ),
            false,
        )
    };
    let mut inbox = match Inbox::open(&s.workspace.join("ipc/input")) {
        Ok(i) => i,
        Err(e) => return fail(format!("cannot watch for follow-up messages: {e}"), false),
    };
    let mut out = BufReader::new(stdout);
    let mut session: Option<String> = None;
    let mut inputs: u32 = 0;
    let mut next = Some(input.prompt.clone());
    while let Some(text) = next.take() {
        if let Err(e) = stdin.write_all(user_turn(&text).as_bytes()).await {
            let status = exit_status(&mut child).await;
            eprintln!("cannot give Claude Code the message: {e}");
            return stopped(status);
        }
        let _ = stdin.flush().await;
        // The turn: until its result.
        loop {
            let line = match next_line(&mut out).await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => return stopped(exit_status(&mut child).await),
            };
            match parse_line(&line) {
                Line::Session(id) => {
                    if session.as_deref() != Some(id.as_str()) {
                        emit(AgentEvent::Session {
                            session_id: id.clone(),
                        });
                        session = Some(id);
                    }
                }
                Line::Tools(names) => {
                    for name in names {
                        emit(AgentEvent::Tool { name });
                    }
                }
                Line::Result(Ok(text)) => {
                    if !text.trim().is_empty() {
                        emit(AgentEvent::Result { text, inputs });
                    }
                    break;
                }
                Line::Result(Err(failure)) => {
                    let _ = child.start_kill();
                    return fail(failure.message, failure.permanent);
                }
                Line::Other => {}
            }
        }
        emit(AgentEvent::Idle { inputs });
        // Waiting for the host: a follow-up, `_close`, or Claude Code going away.
        let waited = tokio::select! {
            input = inbox.next() => input,
            line = next_line(&mut out) => match line {
                Ok(Some(_)) => {
                    // Nothing is expected between turns; read on until an input comes.
                    inbox.next().await
                }
                Ok(None) | Err(_) => return stopped(exit_status(&mut child).await),
            },
        };
        match waited {
            Some(Input::Message(text)) => {
                inputs += 1;
                next = Some(text);
            }
            Some(Input::Close) => break,
            None => return fail("the follow-up watch stopped".into(), false),
        }
    }
    // End of input: Claude Code saves its session and exits.
    drop(stdin);
    match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            eprintln!("Claude Code did not exit within {EXIT_GRACE:?} of its input ending; killed");
            let _ = child.kill().await;
        }
    }
    ExitCode::SUCCESS
}

async fn exit_status(child: &mut tokio::process::Child) -> String {
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("its status is unknown: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            "it stopped answering and was killed".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_json_lines_become_our_events() {
        let init = br#"{"type":"system","subtype":"init","session_id":"a3187396-17b6-4810-88f4-a8e41ce19c0e","tools":["Bash"]}"#;
        assert_eq!(
            parse_line(init),
            Line::Session("a3187396-17b6-4810-88f4-a8e41ce19c0e".into())
        );
        let tool = br#"{"type":"assistant","message":{"content":[{"type":"text","text":"x"},{"type":"tool_use","id":"t","name":"mcp__nanoclaw__send_message","input":{}}]}}"#;
        assert_eq!(
            parse_line(tool),
            Line::Tools(vec!["mcp__nanoclaw__send_message".into()])
        );
        let text = br#"{"type":"assistant","message":{"content":[{"type":"text","text":"hi"}]}}"#;
        assert_eq!(parse_line(text), Line::Other);
        let ok = br#"{"type":"result","subtype":"success","is_error":false,"result":"pong"}"#;
        assert_eq!(parse_line(ok), Line::Result(Ok("pong".into())));
        let denied = br#"{"type":"result","subtype":"success","is_error":true,"api_error_status":401,"result":"Invalid API key"}"#;
        let Line::Result(Err(f)) = parse_line(denied) else {
            panic!("a failure")
        };
        assert!(f.permanent && f.message.contains("401") && f.message.contains("Invalid API key"));
        let overloaded = br#"{"type":"result","subtype":"error_during_execution","is_error":true,"api_error_status":529}"#;
        let Line::Result(Err(f)) = parse_line(overloaded) else {
            panic!("a failure")
        };
        assert!(!f.permanent && f.message.contains("error_during_execution"));
        let retry = br#"{"type":"system","subtype":"api_retry","attempt":1,"error_status":401,"error":"authentication_failed"}"#;
        let Line::Result(Err(f)) = parse_line(retry) else {
            panic!("a failure")
        };
        assert!(
            f.permanent && f.message.contains("rejected the credentials"),
            "{f:?}"
        );
        let retry = br#"{"type":"system","subtype":"api_retry","attempt":1,"error_status":529}"#;
        assert_eq!(
            parse_line(retry),
            Line::Other,
            "Claude Code retries overloads itself"
        );
        assert_eq!(parse_line(b"not json"), Line::Other);
        assert_eq!(parse_line(br#"{"type":"user"}"#), Line::Other);
    }

    #[test]
    fn only_a_transcript_of_this_folder_is_resumed() {
        let home = tempfile::tempdir().expect("home");
        let cwd = Path::new("/workspace/group");
        let id = "a3187396-17b6-4810-88f4-a8e41ce19c0e";
        assert_eq!(resumable(home.path(), cwd, Some(id)), None);
        let dir = home.path().join(".claude/projects/-workspace-group");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(format!("{id}.jsonl")), "{}\n").expect("write");
        assert_eq!(resumable(home.path(), cwd, Some(id)), Some(id.into()));
        assert_eq!(resumable(home.path(), cwd, None), None);
        // Our own loop's ids, and anything that could walk out of the folder.
        assert_eq!(
            resumable(home.path(), cwd, Some("s1796255235500ab12")),
            None
        );
        assert_eq!(
            resumable(
                home.path(),
                cwd,
                Some("../../../../etc/passwd/aaaaaaaaaaaaaa")
            ),
            None
        );
        // Only the UUID shape: nothing that reads as an option.
        let dashes = "-".repeat(36);
        std::fs::write(dir.join(format!("{dashes}.jsonl")), "{}\n").expect("write");
        assert_eq!(resumable(home.path(), cwd, Some(&dashes)), None);
    }

    #[test]
    fn the_bridge_knows_its_own_processes_connections_from_others() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let local = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(local).expect("connect");
        let (_server, peer) = listener.accept().expect("accept");
        assert_eq!(peer, client.local_addr().expect("addr"));
        // This process holds the connecting socket.
        assert!(from_this_sandbox(Path::new("/proc"), peer, local));
        // The same connection seen from a process table without its owner.
        let other = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(other.path().join("net")).expect("mkdir");
        std::fs::copy("/proc/net/tcp", other.path().join("net/tcp")).expect("copy");
        std::fs::create_dir_all(other.path().join("4242/fd")).expect("a process without it");
        assert!(!from_this_sandbox(other.path(), peer, local));
        // A connection that is not in the table at all.
        let stranger: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
        assert!(!from_this_sandbox(Path::new("/proc"), stranger, local));
    }

    #[test]
    fn a_transcripts_folder_that_is_not_a_folder_is_moved_aside() {
        let home = tempfile::tempdir().expect("home");
        let projects = home.path().join(".claude/projects");
        std::fs::create_dir_all(home.path().join(".claude")).expect("mkdir");
        for broken in ["link", "file"] {
            if broken == "link" {
                std::os::unix::fs::symlink("/nonexistent/x", &projects).expect("symlink");
            } else {
                std::fs::write(&projects, "not a folder").expect("file");
            }
            let private = PrivateFiles::write(&[]).expect("private");
            let config = private.config_dir(&projects).expect("a run can start");
            assert!(
                std::fs::symlink_metadata(&projects).expect("meta").is_dir(),
                "{broken}"
            );
            assert_eq!(
                std::fs::read_link(config.join("projects")).expect("link"),
                projects
            );
            std::fs::remove_dir(&projects).expect("empty");
        }
        let aside = std::fs::read_dir(home.path().join(".claude"))
            .expect("list")
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("projects.broken-")
            })
            .count();
        assert!(aside >= 1, "kept aside, not deleted");
    }

    #[tokio::test]
    async fn over_long_lines_are_skipped_and_the_next_is_read() {
        let mut data = vec![b'x'; MAX_LINE + 10];
        data.extend_from_slice(b"\n{\"a\":1}\nlast");
        let mut r = BufReader::new(&data[..]);
        assert_eq!(next_line(&mut r).await.expect("read"), Some(Vec::new()));
        assert_eq!(
            next_line(&mut r).await.expect("read"),
            Some(b"{\"a\":1}".to_vec())
        );
        assert_eq!(
            next_line(&mut r).await.expect("read"),
            Some(b"last".to_vec())
        );
        assert_eq!(next_line(&mut r).await.expect("read"), None);
    }

    #[test]
    fn our_server_comes_first_and_http_servers_go_through_the_proxy() {
        let s = Settings {
            binary: DEFAULT_BINARY.into(),
            workspace: "/workspace".into(),
            home: "/home/node".into(),
            model: "m".into(),
            base_url: "http://127.0.0.1:3001".into(),
            token: "run-token".into(),
            proxy_socket: None,
            web_search: true,
            mcp_servers: Some(
                r#"{"docs":{"type":"http"},"fs":{"command":"npx","args":["-y","x"],"env":{"A":"1"}},"nanoclaw":{"command":"evil"}}"#
                    .into(),
            ),
            timezone: "UTC".into(),
        };
        let input = AgentInput {
            prompt: "p".into(),
            session_id: None,
            group_folder: "team".into(),
            chat_jid: "web:team".into(),
            is_main: false,
            is_scheduled_task: false,
            assistant_name: "Andy".into(),
        };
        let config = mcp_config(
            &s,
            Path::new("/opt/nanoclaw/bin/nanoclaw-agent"),
            &input,
            "http://127.0.0.1:4000",
        );
        let servers = &config["mcpServers"];
        assert_eq!(servers["nanoclaw"]["args"], json!(["mcp-server"]));
        assert_eq!(servers["nanoclaw"]["env"]["NANOCLAW_IS_MAIN"], "0");
        assert_eq!(servers["nanoclaw"]["env"]["NANOCLAW_GROUP_FOLDER"], "team");
        assert_eq!(servers["docs"]["url"], "http://127.0.0.1:4000/mcp/docs");
        assert_eq!(servers["docs"]["headers"]["x-api-key"], "run-token");
        assert_eq!(servers["fs"]["env"]["A"], "1");
        // Claude Code passes its environment on: the token is blanked for every server.
        for name in ["fs", "nanoclaw"] {
            assert_eq!(servers[name]["env"]["ANTHROPIC_API_KEY"], "", "{name}");
            assert_eq!(servers[name]["env"]["ANTHROPIC_BASE_URL"], "", "{name}");
        }
        assert_eq!(servers.as_object().map(|m| m.len()), Some(3));
    }
}
