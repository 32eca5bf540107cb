//! The MCP servers a group configures (`container_config.mcpServers`, SPEC §9.1), as
//! tools of our loop named `mcp__{server}__{tool}`.
//!
//! The host hands the agent the servers in `NANOCLAW_MCP_SERVERS`: stdio servers as
//! configured (started here, inside the sandbox, in the group's folder), HTTP servers as
//! a path on the credential proxy, which adds their secret headers outside the sandbox.
//!
//! A server is never trusted to behave: every read is capped, every wait bounded. A
//! server that fails to start gives no tools (the run log says why); one that crashes
//! fails the call in flight with a message and is started again for the next call (a few
//! times per run); one that hangs fails the call after `NANOCLAW_MCP_CALL_TIMEOUT_MS` and
//! is told to cancel it. The run goes on in every case.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use super::{MAX_MESSAGE, PROTOCOL_VERSIONS, read_line};
use crate::tools::{MAX_OUTPUT_CHARS, ToolOutput, truncate_middle};

/// Tools taken from one server at most.
const MAX_TOOLS_PER_SERVER: usize = 128;
/// Pages of `tools/list` followed at most.
const MAX_LIST_PAGES: usize = 16;
/// Longest tool description kept (the rest is cut: descriptions sit in every request).
const MAX_DESCRIPTION: usize = 2_048;
/// Largest input schema accepted for one tool, as JSON.
const MAX_SCHEMA: usize = 16 << 10;
/// Longest tool name the model APIs accept.
const MAX_TOOL_NAME: usize = 64;
/// Times one server is started again after it died, per run.
const MAX_RESTARTS: u32 = 3;
/// Messages waiting to be written to one server (answers and requests); a server that
/// lets more pile up is not reading and is stopped.
const OUTGOING_QUEUE: usize = 64;
/// Tools taken from all servers together, and the bytes of their definitions: every
/// request carries them.
const MAX_TOOLS: usize = 256;
const MAX_DEFINITION_BYTES: usize = 512 << 10;
/// How long a server that missed a call's deadline has to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of a server's stderr copied into the run log.
const MAX_STDERR_LINES: usize = 200;

/// How long to wait for servers.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From spawning a server to its tool list.
    pub start: Duration,
    /// One tool call.
    pub call: Duration,
}

/// How a server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// Streamable HTTP, through the credential proxy's `/mcp/{server}`: the proxy knows
    /// the URL and adds the headers (secrets included) outside the sandbox.
    Http,
}

/// How the agent reaches the credential proxy (for HTTP servers).
#[derive(Clone)]
pub struct HttpContext {
    pub client: reqwest::Client,
    /// `ANTHROPIC_BASE_URL` (over the proxy's Unix socket).
    pub base_url: String,
    /// The run's proxy token.
    pub token: String,
}

/// Parses `NANOCLAW_MCP_SERVERS` (the host validated it; this only refuses what it cannot
/// use, server by server).
pub fn parse_servers(raw: &str) -> (Vec<(String, Transport)>, Vec<String>) {
    let mut servers = Vec::new();
    let mut problems = Vec::new();
    let map = match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => map,
        Ok(_) | Err(_) => {
            problems.push("NANOCLAW_MCP_SERVERS is not a JSON object; no MCP servers".into());
            return (servers, problems);
        }
    };
    for (name, spec) in map {
        let strings = |v: &Value| -> Option<Vec<String>> {
            match v {
                Value::Null => Some(Vec::new()),
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect(),
                _ => None,
            }
        };
        let env = |v: &Value| -> Option<BTreeMap<String, String>> {
            match v {
                Value::Null => Some(BTreeMap::new()),
                Value::Object(m) => m
                    .iter()
                    .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect(),
                _ => None,
            }
        };
        if spec["type"] == "http" {
            servers.push((name, Transport::Http));
            continue;
        }
        match (
            spec["command"].as_str(),
            strings(&spec["args"]),
            env(&spec["env"]),
        ) {
            (Some(command), Some(args), Some(env)) if !command.is_empty() => servers.push((
                name,
                Transport::Stdio {
                    command: command.to_string(),
                    args,
                    env,
                },
            )),
            _ => problems.push(format!(
                "MCP server {name:?} has no usable command; skipped"
            )),
        }
    }
    (servers, problems)
}

/// The tool name the model sees: `mcp__{server}__{tool}`, with characters the APIs refuse
/// replaced by `_`, at most 64 characters.
pub fn tool_name(server: &str, tool: &str) -> String {
    format!("mcp__{server}__{tool}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_TOOL_NAME)
        .collect()
}

/// Responses waited for, and why the connection closed once it has.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Result<Value, String>>>,
    closed: Option<String>,
    /// We stopped it (its exit status says nothing then).
    stopped: bool,
}

/// One connection to a server: a process of ours, or an HTTP session through the proxy.
struct Connection {
    wire: Wire,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
}

enum Wire {
    Stdio {
        lines: mpsc::Sender<Vec<u8>>,
        child: Mutex<Child>,
    },
    Http(Arc<HttpWire>),
}

/// A streamable-HTTP session: every message is a POST whose answer (JSON or an event
/// stream) carries the responses, read as the stdio reader reads lines.
struct HttpWire {
    context: Arc<HttpContext>,
    url: String,
    session: Mutex<Option<String>>,
    protocol: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connection {
    fn spawn(
        server: &str,
        transport: &Transport,
        workdir: &Path,
        http: Option<&Arc<HttpContext>>,
    ) -> Result<Arc<Connection>, String> {
        let (command, args, env) = match transport {
            Transport::Stdio { command, args, env } => (command, args, env),
            Transport::Http => {
                let Some(context) = http else {
                    return Err(
                        "HTTP servers need the credential proxy, which this run has not".into(),
                    );
                };
                return Ok(Arc::new(Connection {
                    wire: Wire::Http(Arc::new(HttpWire {
                        context: context.clone(),
                        url: format!("{}/mcp/{server}", context.base_url.trim_end_matches('/')),
                        session: Mutex::new(None),
                        protocol: Mutex::new(None),
                    })),
                    pending: Arc::new(Mutex::new(Pending::default())),
                    next_id: AtomicU64::new(1),
                }));
            }
        };
        let mut cmd = Command::new(command);
        cmd.args(args)
            .current_dir(workdir)
            // Not handed out: the run's proxy token is for the agent. (Not a boundary: the
            // server runs as the same user in the same sandbox and could read it from
            // /proc, as the Bash tool could.)
            .env_remove("ANTHROPIC_API_KEY")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that whatever it starts goes with it.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start `{command}`: {e}"))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("its pipes could not be set up".into());
        };
        let (lines, mut to_write) = mpsc::channel::<Vec<u8>>(OUTGOING_QUEUE);
        tokio::spawn(async move {
            while let Some(line) = to_write.recv().await {
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let label = server.to_string();
        tokio::spawn(copy_stderr(label, stderr));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let connection = Arc::new(Connection {
            wire: Wire::Stdio {
                lines: lines.clone(),
                child: Mutex::new(child),
            },
            pending: pending.clone(),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(read_responses(BufReader::new(stdout), pending, lines));
        Ok(connection)
    }

    fn send(&self, message: &Value) {
        match &self.wire {
            Wire::Stdio { lines, .. } => {
                let mut line = message.to_string().into_bytes();
                line.push(b'\n');
                match lines.try_send(line) {
                    Ok(()) => {}
                    // If the writer is gone, the reader sees the end too and fails what
                    // waits.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.stop("it stopped reading what it was sent and was stopped");
                    }
                }
            }
            Wire::Http(wire) => {
                tokio::spawn(post(wire.clone(), self.pending.clone(), message.clone()));
            }
        }
    }

    fn closed(&self) -> Option<String> {
        lock(&self.pending).closed.clone()
    }

    /// Why the connection is gone: the exit status when the process ended (its output
    /// closes a moment before the kernel reports the exit, so wait a little for it).
    async fn exit_reason(&self, closed: &str) -> String {
        if lock(&self.pending).stopped {
            return closed.to_string();
        }
        let Wire::Stdio { child, .. } = &self.wire else {
            return closed.to_string();
        };
        for _ in 0..20 {
            match lock(child).try_wait() {
                Ok(Some(status)) => return format!("it exited ({status})"),
                Ok(None) => {}
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        closed.to_string()
    }

    /// One request and its answer. A timeout fails the call and, when the server does
    /// not even answer a ping after it, stops the server (a later call starts it again):
    /// a stuck server would otherwise make every later call wait out the timeout too.
    async fn request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        match self.exchange(method, params, timeout).await {
            Ok(answer) => Ok(answer),
            Err(Some(e)) => Err(e),
            Err(None) => {
                let mut why = format!("it did not answer within {}", seconds(timeout));
                if self
                    .exchange("ping", json!({}), PING_TIMEOUT)
                    .await
                    .is_err()
                {
                    self.stop("it stopped answering and was stopped");
                    why.push_str(", nor a ping after that, so it was stopped (the next call starts it again)");
                }
                Err(why)
            }
        }
    }

    /// `Err(None)`: no answer in time (the server was told to cancel).
    async fn exchange(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, Option<String>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let closed = {
            let mut pending = lock(&self.pending);
            if pending.closed.is_none() {
                pending.waiting.insert(id, tx);
            }
            pending.closed.clone()
        };
        if let Some(closed) = closed {
            return Err(Some(self.exit_reason(&closed).await));
        }
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer.map_err(Some),
            Ok(Err(_)) => {
                let closed = self
                    .closed()
                    .unwrap_or_else(|| "it closed the connection".into());
                Err(Some(self.exit_reason(&closed).await))
            }
            Err(_) => {
                lock(&self.pending).waiting.remove(&id);
                self.send(
                    &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": id, "reason": "timed out"}}),
                );
                Err(None)
            }
        }
    }

    /// Ends the connection and its processes.
    fn stop(&self, reason: &str) {
        {
            let mut pending = lock(&self.pending);
            pending.closed = Some(reason.to_string());
            pending.stopped = true;
            pending.waiting.clear();
        }
        self.kill();
    }

    fn kill(&self) {
        let Wire::Stdio { child, .. } = &self.wire else {
            return;
        };
        let mut child = lock(child);
        // The whole process group: `npx` and friends leave the real server as a child.
        if let Some(pid) = child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = child.start_kill();
    }

    /// Handshake and tool list.
    async fn initialize(&self, timeout: Duration) -> Result<Vec<Value>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let init = self
            .request(
                "initialize",
                json!({"protocolVersion": PROTOCOL_VERSIONS[0], "capabilities": {},
                       "clientInfo": {"name": "nanoclaw-agent", "version": env!("CARGO_PKG_VERSION")}}),
                left(),
            )
            .await?;
        let version = init["protocolVersion"].as_str().unwrap_or_default();
        if !PROTOCOL_VERSIONS.contains(&version) {
            return Err(format!(
                "it speaks MCP revision {version:?}; this agent speaks {}",
                PROTOCOL_VERSIONS.join(", ")
            ));
        }
        if let Wire::Http(wire) = &self.wire {
            *lock(&wire.protocol) = Some(version.to_string());
        }
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let page = self.request("tools/list", params, left()).await?;
            tools.extend(page["tools"].as_array().cloned().unwrap_or_default());
            cursor = page["nextCursor"].as_str().map(str::to_string);
            if cursor.is_none() || tools.len() >= MAX_TOOLS_PER_SERVER {
                break;
            }
        }
        Ok(tools)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.kill();
    }
}

fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}

/// Copies a server's stderr into the run log: each line cut to 500 bytes (decoded
/// leniently), at most [`MAX_STDERR_LINES`] lines, and the rest read and dropped to the
/// end, so a server that writes a lot (or no newline at all, or bytes that are not UTF-8)
/// neither fills the agent's memory nor blocks on a full pipe.
async fn copy_stderr(label: String, stderr: tokio::process::ChildStderr) {
    const KEEP: usize = 500;
    let mut reader = BufReader::new(stderr);
    let mut line: Vec<u8> = Vec::new();
    let mut shown = 0;
    let show = |line: &mut Vec<u8>, shown: &mut usize| {
        if *shown < MAX_STDERR_LINES {
            eprintln!(
                "mcp server {label}: {}",
                String::from_utf8_lossy(line).trim_end()
            );
        } else if *shown == MAX_STDERR_LINES {
            eprintln!("mcp server {label}: (further output not shown)");
        }
        *shown += 1;
        line.clear();
    };
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (chunk, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = KEEP.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = end.unwrap_or(chunk.len());
        reader.consume(used);
        if end.is_some() {
            show(&mut line, &mut shown);
        }
    }
    if !line.is_empty() {
        show(&mut line, &mut shown);
    }
}

/// Reads the server's messages: responses go to whoever waits for them, requests from the
/// server are answered (ping) or refused (we offer no sampling, roots or elicitation).
async fn read_responses(
    mut stdout: BufReader<tokio::process::ChildStdout>,
    pending: Arc<Mutex<Pending>>,
    lines: mpsc::Sender<Vec<u8>>,
) {
    // A full queue means the server does not read: the answer is dropped (and the next
    // call's `send` stops the server).
    let reply = |message: Value| {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        let _ = lines.try_send(line);
    };
    let reason = loop {
        let line = match read_line(&mut stdout, MAX_MESSAGE).await {
            Ok(Some(line)) => line,
            Ok(None) => break "it closed its output".to_string(),
            Err(e) => break format!("it sent {e}"),
        };
        let Ok(message) = serde_json::from_slice::<Value>(&line) else {
            // Servers that log to stdout: not ours to act on.
            continue;
        };
        dispatch(message, &pending, &reply);
    };
    let mut pending = lock(&pending);
    pending.closed = Some(reason);
    // Dropping the senders fails every call still waiting.
    pending.waiting.clear();
}

/// One message from a server: a response goes to whoever waits for it, a request from
/// the server is answered (ping) or refused (we offer no sampling, roots or elicitation),
/// a notification (logging, progress, list changes) is not ours to act on.
fn dispatch(message: Value, pending: &Mutex<Pending>, reply: &dyn Fn(Value)) {
    // A request id is a number or a short string; anything else gets no answer (an
    // answer echoes it, and a server could make us echo megabytes).
    let id = message
        .get("id")
        .filter(|id| id.is_u64() || id.is_i64() || id.as_str().is_some_and(|s| s.len() <= 128))
        .cloned();
    match (message.get("method").and_then(Value::as_str), id) {
        (Some("ping"), Some(id)) => reply(super::result_response(id, json!({}))),
        (Some(method), Some(id)) => reply(super::error_response(
            id,
            super::METHOD_NOT_FOUND,
            format!("this client offers no {method}"),
        )),
        (Some(_), None) | (None, None) => {}
        (None, Some(id)) => {
            let Some(id) = id.as_u64() else { return };
            let Some(waiter) = lock(pending).waiting.remove(&id) else {
                return;
            };
            let answer = match message.get("error") {
                Some(error) => Err(format!(
                    "it answered with error {}: {}",
                    truncate_middle(&error["code"].to_string(), 40),
                    truncate_middle(error["message"].as_str().unwrap_or("(no message)"), 2_000)
                )),
                None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = waiter.send(answer);
        }
    }
}

/// Fails the call waiting for `id`, if one does.
fn fail_waiter(pending: &Mutex<Pending>, id: &Value, why: String) {
    if let Some(waiter) = id.as_u64().and_then(|id| lock(pending).waiting.remove(&id)) {
        let _ = waiter.send(Err(why));
    }
}

/// Most bytes read from one HTTP answer (an event stream may carry several messages).
const MAX_HTTP_ANSWER: usize = 4 * MAX_MESSAGE;

impl HttpWire {
    /// A POST of `message` with the run's token and the session's headers.
    fn request(&self, message: &Value) -> reqwest::RequestBuilder {
        let mut request = self
            .context
            .client
            .post(&self.url)
            .header("x-api-key", &self.context.token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(message.to_string());
        if let Some(session) = lock(&self.session).clone() {
            request = request.header("mcp-session-id", session);
        }
        if let Some(protocol) = lock(&self.protocol).clone() {
            request = request.header("mcp-protocol-version", protocol);
        }
        request
    }
}

/// Sends our answer to a request of the server's (it expects `202 Accepted`, nothing
/// more).
async fn post_answer(wire: Arc<HttpWire>, answer: Value) {
    let _ = tokio::time::timeout(Duration::from_secs(30), wire.request(&answer).send()).await;
}

/// Sends one message over HTTP and hands what comes back to [`dispatch`].
async fn post(wire: Arc<HttpWire>, pending: Arc<Mutex<Pending>>, message: Value) {
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let mut response = match wire.request(&message).send().await {
        Ok(r) => r,
        Err(e) => {
            return fail_waiter(
                &pending,
                &id,
                format!("cannot reach it: {}", e.without_url()),
            );
        }
    };
    let status = response.status();
    if let Some(session) = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        let mut known = lock(&wire.session);
        if known.is_none() {
            *known = Some(session.to_string());
        }
    }
    if status.as_u16() == 404 && lock(&wire.session).is_some() {
        // The server forgot the session: the next call starts a new one.
        let mut pending = lock(&pending);
        pending.closed = Some("it ended the session".into());
        pending.waiting.clear();
        return;
    }
    let event_stream = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    if !status.is_success() {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() > 4096 {
                break;
            }
        }
        let body = String::from_utf8_lossy(&body);
        return fail_waiter(
            &pending,
            &id,
            format!("HTTP {status}: {}", truncate_middle(body.trim(), 300)),
        );
    }
    let reply_wire = wire.clone();
    let reply = move |answer: Value| {
        tokio::spawn(post_answer(reply_wire.clone(), answer));
    };
    let mut buffer: Vec<u8> = Vec::new();
    let mut events = nanoclaw_protocol::sse::SseParser::new();
    let mut total = 0usize;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => return fail_waiter(&pending, &id, "its answer broke off".into()),
        };
        total += chunk.len();
        if total > MAX_HTTP_ANSWER {
            return fail_waiter(
                &pending,
                &id,
                format!("its answer is over {MAX_HTTP_ANSWER} bytes"),
            );
        }
        if event_stream {
            for event in events.push(&chunk) {
                if let Ok(message) = serde_json::from_str::<Value>(&event.data) {
                    dispatch(message, &pending, &reply);
                }
            }
        } else {
            buffer.extend_from_slice(&chunk);
        }
    }
    if !event_stream && !buffer.is_empty() {
        match serde_json::from_slice::<Value>(&buffer) {
            Ok(Value::Array(batch)) => batch
                .into_iter()
                .for_each(|m| dispatch(m, &pending, &reply)),
            Ok(message) => dispatch(message, &pending, &reply),
            Err(e) => {
                return fail_waiter(&pending, &id, format!("its answer is not JSON: {e}"));
            }
        }
    }
    // An answer that never named our request.
    fail_waiter(
        &pending,
        &id,
        "its answer held no response to the call".into(),
    );
}

/// One configured server: its connection (started again when it died) and its tools.
struct Server {
    name: String,
    transport: Transport,
    workdir: PathBuf,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    restarts: AtomicU32,
    http: Option<Arc<HttpContext>>,
}

impl Server {
    /// The live connection, starting the server again if it died.
    async fn connection(&self, timeouts: Timeouts) -> Result<Arc<Connection>, String> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            match c.closed() {
                None => return Ok(c.clone()),
                Some(closed) => {
                    let why = c.exit_reason(&closed).await;
                    if self.restarts.fetch_add(1, Ordering::Relaxed) >= MAX_RESTARTS {
                        return Err(format!(
                            "{why}, and it has been started again {MAX_RESTARTS} times in this run already"
                        ));
                    }
                    eprintln!("mcp server {}: {why}; starting it again", self.name);
                }
            }
        }
        self.launch(&mut slot, timeouts).await?;
        slot.clone().ok_or_else(|| "it did not start".to_string())
    }

    /// Starts the process and returns its tools.
    async fn launch(
        &self,
        slot: &mut Option<Arc<Connection>>,
        timeouts: Timeouts,
    ) -> Result<Vec<Value>, String> {
        *slot = None;
        let c = Connection::spawn(
            &self.name,
            &self.transport,
            &self.workdir,
            self.http.as_ref(),
        )?;
        let tools = c.initialize(timeouts.start).await?;
        *slot = Some(c);
        Ok(tools)
    }

    /// The first start of the run.
    async fn start(&self, timeouts: Timeouts) -> Result<Vec<Value>, String> {
        let mut slot = self.connection.lock().await;
        self.launch(&mut slot, timeouts).await
    }
}

/// The configured servers' tools.
pub struct McpTools {
    servers: Vec<Arc<Server>>,
    /// Tool name offered → (server index, the server's own tool name).
    routes: HashMap<String, (usize, String)>,
    /// Definitions in the Anthropic shape, sorted by server name then server order.
    pub definitions: Vec<Value>,
    timeouts: Timeouts,
}

impl McpTools {
    pub fn none(timeouts: Timeouts) -> McpTools {
        McpTools {
            servers: Vec::new(),
            routes: HashMap::new(),
            definitions: Vec::new(),
            timeouts,
        }
    }

    /// Starts every server at once and collects their tools. `taken` are the names of
    /// the tools the agent has anyway.
    pub async fn start(
        servers: Vec<(String, Transport)>,
        workdir: &Path,
        timeouts: Timeouts,
        taken: &[String],
        http: Option<HttpContext>,
    ) -> McpTools {
        let http = http.map(Arc::new);
        let mut started = tokio::task::JoinSet::new();
        let servers: Vec<Arc<Server>> = servers
            .into_iter()
            .map(|(name, transport)| {
                Arc::new(Server {
                    name,
                    transport,
                    workdir: workdir.to_path_buf(),
                    connection: tokio::sync::Mutex::new(None),
                    restarts: AtomicU32::new(0),
                    http: http.clone(),
                })
            })
            .collect();
        for (index, server) in servers.iter().enumerate() {
            let server = server.clone();
            started.spawn(async move { (index, server.start(timeouts).await) });
        }
        let mut lists: Vec<Vec<Value>> = vec![Vec::new(); servers.len()];
        while let Some(joined) = started.join_next().await {
            let Ok((index, tools)) = joined else { continue };
            match tools {
                Ok(tools) => lists[index] = tools,
                Err(e) => eprintln!(
                    "mcp server {}: not available in this run: {e}",
                    servers[index].name
                ),
            }
        }
        let mut order: Vec<usize> = (0..servers.len()).collect();
        order.sort_by(|a, b| servers[*a].name.cmp(&servers[*b].name));
        let mut routes = HashMap::new();
        let mut definitions = Vec::new();
        let mut total_bytes = 0;
        for index in order {
            let server = &servers[index].name;
            for tool in lists[index].iter().take(MAX_TOOLS_PER_SERVER) {
                let Some(own) = tool["name"].as_str() else {
                    continue;
                };
                let name = tool_name(server, own);
                let schema = match &tool["inputSchema"] {
                    s @ Value::Object(o) if o.get("type").is_none_or(|t| t == "object") => {
                        let mut s = s.clone();
                        s["type"] = json!("object");
                        s
                    }
                    Value::Null => json!({"type": "object"}),
                    _ => {
                        eprintln!(
                            "mcp server {server}: tool {own:?} skipped: its input schema is not an object schema"
                        );
                        continue;
                    }
                };
                if schema.to_string().len() > MAX_SCHEMA {
                    eprintln!(
                        "mcp server {server}: tool {own:?} skipped: its input schema is over {MAX_SCHEMA} bytes"
                    );
                    continue;
                }
                if routes.contains_key(&name) || taken.contains(&name) {
                    eprintln!(
                        "mcp server {server}: tool {own:?} skipped: the name {name} is taken"
                    );
                    continue;
                }
                let description = tool["description"].as_str().unwrap_or("");
                let description: String = description.chars().take(MAX_DESCRIPTION).collect();
                let definition =
                    json!({"name": name, "description": description, "input_schema": schema});
                let bytes = definition.to_string().len();
                if definitions.len() >= MAX_TOOLS || total_bytes + bytes > MAX_DEFINITION_BYTES {
                    eprintln!(
                        "mcp server {server}: tool {own:?} and the rest skipped: the servers offer more than {MAX_TOOLS} tools or {} KiB of definitions",
                        MAX_DEFINITION_BYTES >> 10
                    );
                    break;
                }
                total_bytes += bytes;
                definitions.push(definition);
                routes.insert(name, (index, own.to_string()));
            }
        }
        McpTools {
            servers,
            routes,
            definitions,
            timeouts,
        }
    }

    pub fn owns(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// Calls a tool; every failure is a tool error the model can read.
    pub async fn call(&self, name: &str, input: &Value) -> ToolOutput {
        let Some((index, own)) = self.routes.get(name) else {
            return ToolOutput::error(format!("no MCP tool named {name}"));
        };
        let server = &self.servers[*index];
        let fail = |why: String| {
            ToolOutput::error(format!(
                "the MCP server {:?} could not run {own}: {why}",
                server.name
            ))
        };
        let connection = match server.connection(self.timeouts).await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let arguments = match input {
            Value::Object(_) => input.clone(),
            _ => json!({}),
        };
        match connection
            .request(
                "tools/call",
                json!({"name": own, "arguments": arguments}),
                self.timeouts.call,
            )
            .await
        {
            Ok(result) => result_to_output(&result),
            Err(e) => fail(e),
        }
    }
}

/// A `tools/call` result as text for the model, capped.
pub fn result_to_output(result: &Value) -> ToolOutput {
    let mut parts = Vec::new();
    for item in result["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        match item["type"].as_str() {
            Some("text") => parts.push(item["text"].as_str().unwrap_or("").to_string()),
            Some("image") | Some("audio") => parts.push(format!(
                "[{} ({}, {} bytes as base64), not shown]",
                item["type"].as_str().unwrap_or("media"),
                item["mimeType"].as_str().unwrap_or("unknown type"),
                item["data"].as_str().map(str::len).unwrap_or(0)
            )),
            Some("resource") => match item["resource"]["text"].as_str() {
                Some(text) => parts.push(text.to_string()),
                None => parts.push(format!(
                    "[resource {}]",
                    item["resource"]["uri"].as_str().unwrap_or("?")
                )),
            },
            Some("resource_link") => parts.push(format!(
                "[link: {} {}]",
                item["name"].as_str().unwrap_or(""),
                item["uri"].as_str().unwrap_or("?")
            )),
            _ => parts.push(item.to_string()),
        }
    }
    if parts.is_empty()
        && let Some(structured) = result.get("structuredContent")
    {
        parts.push(structured.to_string());
    }
    let text = truncate_middle(&parts.join("\n"), MAX_OUTPUT_CHARS);
    if result["isError"].as_bool() == Some(true) {
        ToolOutput::error(text)
    } else {
        ToolOutput::ok(text)
    }
}
