//! The credential proxy (SPEC §11): the only way sandboxes reach the model API, and the
//! only place the real credentials are used.
//!
//! Each run gets a random token as its `ANTHROPIC_API_KEY`; the proxy accepts only tokens
//! of live runs (from `x-api-key` or `Authorization: Bearer`), strips them, injects the
//! real credential (API key or OAuth token), and streams request and response bodies
//! through without buffering. Only the API paths agents need are forwarded.
//!
//! Every sandbox reaches it over a Unix socket of its own, `data/proxy/runs/{sandbox}/
//! proxy.sock`, mounted at `/run/nanoclaw/` in that sandbox only ([`RunTokens::open_run`]).
//! The listener itself says which run a connection comes from, so a sandbox can neither
//! pose as another nor take another's connections: each socket has its own cap, and a
//! request on it must carry that run's token. No sandbox needs a route to the host (a
//! `network: none` sandbox still reaches the model). `127.0.0.1:CREDENTIAL_PROXY_PORT`
//! serves host-side clients, with a pool of its own that sandbox traffic never uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde_json::json;
use tokio::sync::watch;

use crate::config::{Config, Secrets};
use crate::store::Store;

mod budget;
mod embeddings;
pub mod mcp;
mod usage;

pub use budget::{Refusal, RunBudget, Spending, day_start};

/// The socket's name in a sandbox's run folder and in its `/run/nanoclaw/`.
pub const SOCKET_NAME: &str = "proxy.sock";
/// Where sandboxes find their run folder (the proxy and egress sockets).
pub const SANDBOX_SOCKET_DIR: &str = "/run/nanoclaw";

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Claude Code's OAuth exchange of its OAuth token for an API key. Forwarded upstream it
/// would mint a real, long-lived API key and hand it to the sandbox, so the proxy answers
/// it itself with the run's own token, which works as a key only through this proxy and
/// only while the run lives.
const OAUTH_KEY_EXCHANGE: &str = "/api/oauth/claude_cli/create_api_key";
/// Where a run asks for embeddings (see [`embeddings`]).
pub const EMBEDDINGS_PATH: &str = "/nanoclaw/embeddings";

/// Connections the loopback TCP listener (host-side clients) serves at once; beyond it,
/// new ones wait in the kernel's backlog.
pub const MAX_TCP_CONNECTIONS: usize = 64;
/// Connections one run may hold on its socket at once; more are closed at once. Each
/// run has its own share, so no run can take another's.
pub const MAX_CONNECTIONS_PER_RUN: usize = 64;
/// Requests one run token may have in flight; more get 429.
pub const MAX_REQUESTS_PER_RUN: usize = 16;
/// A connection that does not send a complete request head within this time (also
/// between requests on a kept-alive connection) is closed.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Who a live run token belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunIdentity {
    pub group_folder: String,
    pub run_id: String,
    /// The spending ceilings its requests are held to.
    pub budget: RunBudget,
    /// Its group's streamable-HTTP MCP servers, by name (`/mcp/{name}`).
    pub mcp: mcp::Routes,
}

/// The live runs: their tokens, and (through [`RunTokens::open_run`]) their sockets.
#[derive(Default)]
pub struct RunTokens {
    live: Mutex<HashMap<String, RunIdentity>>,
    /// Requests in flight per token.
    in_flight: Mutex<HashMap<String, usize>>,
    /// What serves run sockets, once a proxy runs in this process.
    service: Mutex<Option<RunService>>,
    /// Tokens reserved by budgeted requests in flight (SPEC §15).
    pub spending: Arc<Spending>,
}

#[derive(Clone)]
struct RunService {
    app: Router,
    shutdown: watch::Receiver<bool>,
}

/// The run a socket belongs to: a request on it must present this run's token.
#[derive(Clone)]
struct SocketOwner(String);

/// A live run's access to the proxy: its token, and its own socket, served until this
/// is dropped (then the token is revoked and the socket removed).
pub struct RunAccess {
    pub token: String,
    tokens: Arc<RunTokens>,
    server: tokio::task::JoinHandle<()>,
    socket: PathBuf,
}

impl Drop for RunAccess {
    fn drop(&mut self) {
        self.tokens.revoke(&self.token);
        self.server.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One request in flight for a token; counted until dropped (when the response body
/// has been passed on or abandoned).
struct InFlight {
    tokens: Arc<RunTokens>,
    token: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self
            .tokens
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.token);
            }
        }
    }
}

impl RunTokens {
    /// A new token for a run; valid until [`RunTokens::revoke`].
    pub fn issue(&self, identity: RunIdentity) -> String {
        let token = format!("nanoclaw-run-{}", crate::ids::random_hex(24));
        self.lock().insert(token.clone(), identity);
        token
    }

    pub fn revoke(&self, token: &str) {
        self.lock().remove(token);
    }

    pub fn identify(&self, token: &str) -> Option<RunIdentity> {
        self.lock().get(token).cloned()
    }

    /// Starts a run: a new token for `identity`, and a socket at `socket` (a path in a
    /// folder only that run's sandbox sees) that serves requests with that token only,
    /// at most [`MAX_CONNECTIONS_PER_RUN`] connections at once. Needs a proxy started
    /// in this process ([`Proxy::start`] or [`serve_without_model`]).
    pub fn open_run(
        self: &Arc<Self>,
        identity: RunIdentity,
        socket: &Path,
    ) -> Result<RunAccess, String> {
        let Some(service) = self
            .service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Err("the credential proxy is not running".into());
        };
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)
            .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
        {
            // The sandbox user is not the daemon's; the socket is mounted into that
            // sandbox only, and the token authorises each request.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| format!("cannot open {} to the sandbox: {e}", socket.display()))?;
        }
        let group = identity.group_folder.clone();
        let token = self.issue(identity);
        let app = service
            .app
            .layer(axum::Extension(SocketOwner(token.clone())));
        let listener = Capped::new(
            listener,
            Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_RUN)),
            Overflow::Close { group },
        );
        let server = tokio::spawn(serve_connections(
            listener,
            app,
            service.shutdown,
            HEADER_TIMEOUT,
        ));
        Ok(RunAccess {
            token,
            tokens: Arc::clone(self),
            server,
            socket: socket.to_path_buf(),
        })
    }

    fn attach(&self, app: Router, shutdown: watch::Receiver<bool>) {
        *self.service.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(RunService { app, shutdown });
    }

    /// Counts a request for `token`; `None` if it already has the most allowed.
    fn start_request(self: &Arc<Self>, token: &str) -> Option<InFlight> {
        let mut counts = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(token.to_string()).or_default();
        if *n >= MAX_REQUESTS_PER_RUN {
            return None;
        }
        *n += 1;
        Some(InFlight {
            tokens: Arc::clone(self),
            token: token.to_string(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunIdentity>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The real credential, as the upstream wants it.
#[derive(Clone)]
enum Credential {
    ApiKey(String),
    Bearer(String),
    /// OpenAI-compatible local servers (Ollama, llama.cpp) usually take no key.
    NoneNeeded,
    /// Anthropic mode with no credential: every request is refused with this message.
    Missing(String),
}

struct ProxyState {
    upstream: String,
    credential: Credential,
    tokens: Arc<RunTokens>,
    client: reqwest::Client,
    openai: bool,
    /// Where token usage is recorded (absent: not recorded).
    usage: Option<Arc<Store>>,
    /// `EMBEDDINGS_URL`, for `memory_search` (absent: not configured).
    embeddings: Option<embeddings::Upstream>,
}

/// A running proxy.
pub struct Proxy {
    pub tcp_addr: SocketAddr,
    pub tokens: Arc<RunTokens>,
}

/// The folder holding the per-run socket folders (`runs/{sandbox}/`).
pub fn runs_dir(root: &Path) -> PathBuf {
    root.join("data/proxy/runs")
}

/// For a process that runs sandboxes but no proxy (`nanoclaw sandbox exec`): run sockets
/// answer every request with a 401 that says so.
pub fn serve_without_model(tokens: &RunTokens, shutdown: watch::Receiver<bool>) {
    let app = Router::new().fallback(|| async {
        error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "this sandbox was started by `nanoclaw sandbox exec`, which gives no model access; agent runs of `nanoclaw run` have it",
        )
    });
    tokens.attach(app, shutdown);
}

impl Proxy {
    /// Starts listening; stops when `shutdown` turns true.
    pub async fn start(
        config: &Config,
        secrets: &Secrets,
        tokens: Arc<RunTokens>,
        usage: Option<Arc<Store>>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Proxy> {
        use anyhow::Context;
        let openai = config.llm_api == "openai";
        let credential = if openai {
            secrets
                .openai_api_key
                .as_ref()
                .map(|k| Credential::Bearer(k.expose().to_string()))
                .unwrap_or(Credential::NoneNeeded)
        } else if let Some(key) = &secrets.anthropic_api_key {
            Credential::ApiKey(key.expose().to_string())
        } else if let Some(token) = secrets
            .claude_code_oauth_token
            .as_ref()
            .or(secrets.anthropic_auth_token.as_ref())
        {
            Credential::Bearer(token.expose().to_string())
        } else {
            Credential::Missing(format!(
                "nanoclaw has no model credentials configured: set ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN) in {} and restart nanoclaw",
                config.root.join(".env").display()
            ))
        };
        let upstream = if openai {
            config.openai_base_url.clone()
        } else {
            config.anthropic_base_url.clone()
        };
        let state = Arc::new(ProxyState {
            upstream,
            credential,
            tokens: Arc::clone(&tokens),
            client: crate::tls::client()
                .connect_timeout(std::time::Duration::from_secs(15))
                // An upstream that goes silent this long mid-response is given up (a
                // non-streaming model call may think for minutes before answering).
                .read_timeout(std::time::Duration::from_secs(600))
                // A redirect would re-send the real credential to wherever it points.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .context("cannot create the proxy's HTTP client")?,
            openai,
            usage,
            embeddings: config.embeddings_url.as_ref().map(|url| {
                embeddings::Upstream::new(
                    url.clone(),
                    config.embeddings_model.clone(),
                    secrets.embeddings_api_key.clone(),
                )
            }),
        });
        if let Some(store) = &state.usage {
            tokens
                .spending
                .attach(Arc::clone(store), config.zone.tz.clone(), &config.zone.name);
        }
        let app = Router::new().fallback(forward).with_state(state);

        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", config.credential_proxy_port))
            .await
            .with_context(|| {
                format!(
                    "the credential proxy cannot listen on 127.0.0.1:{}; set CREDENTIAL_PROXY_PORT to a free port",
                    config.credential_proxy_port
                )
            })?;
        let tcp_addr = tcp.local_addr()?;
        tokens.attach(app.clone(), shutdown.clone());
        let tcp = Capped::new(
            tcp,
            Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS)),
            Overflow::Wait,
        );
        tokio::spawn(serve_connections(tcp, app, shutdown, HEADER_TIMEOUT));
        tracing::info!(tcp = %tcp_addr, "credential proxy listening (and on one socket per run)");
        Ok(Proxy { tcp_addr, tokens })
    }
}

/// Serves connections from `listener` until `shutdown` turns true, with a header-read
/// timeout (axum's `serve` has no timer, so slow or silent clients would hold their
/// connection forever).
async fn serve_connections<L>(
    mut listener: Capped<L>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    header_timeout: std::time::Duration,
) where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let service = hyper_util::service::TowerToHyperService::new(app);
    loop {
        let io = tokio::select! {
            (io, _) = axum::serve::Listener::accept(&mut listener) => io,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let connection = builder.serve_connection(TokioIo::new(io), service.clone());
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                done = connection.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!("credential proxy connection ended: {e}");
                    }
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// What a listener does with a connection when all its slots are taken.
enum Overflow {
    /// Stop accepting until a slot is free (host-side clients: they can wait).
    Wait,
    /// Close it at once (one run's socket: its share is all it gets).
    Close { group: String },
}

/// A listener that holds a connection slot for every connection it hands out.
struct Capped<L> {
    inner: L,
    slots: Arc<tokio::sync::Semaphore>,
    overflow: Overflow,
}

impl<L> Capped<L> {
    fn new(inner: L, slots: Arc<tokio::sync::Semaphore>, overflow: Overflow) -> Self {
        Capped {
            inner,
            slots,
            overflow,
        }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Capped<L>
where
    L::Io: Unpin,
{
    type Io = SlotIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let mut warned = false;
        loop {
            let slot = match &self.overflow {
                // The semaphore is never closed; if it were, serve uncapped rather than spin.
                Overflow::Wait => Arc::clone(&self.slots).acquire_owned().await.ok(),
                Overflow::Close { .. } => None,
            };
            let (io, addr) = self.inner.accept().await;
            let slot = match (&self.overflow, slot) {
                (Overflow::Close { group }, _) => match Arc::clone(&self.slots).try_acquire_owned()
                {
                    Ok(slot) => Some(slot),
                    Err(_) => {
                        if !warned {
                            tracing::warn!(
                                group = %group,
                                "credential proxy: the run already holds {MAX_CONNECTIONS_PER_RUN} connections; closing more"
                            );
                            warned = true;
                        }
                        continue;
                    }
                },
                (Overflow::Wait, slot) => slot,
            };
            return (SlotIo { io, _slot: slot }, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection and the slot it occupies until it is dropped.
struct SlotIo<T> {
    io: T,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SlotIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SlotIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
    )
        .into_response()
}

/// The run token a client presented, from `x-api-key` or `Authorization: Bearer`.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
        })
        .map(str::trim)
}

/// The headers worth forwarding: not hop-by-hop ones, not those the `Connection` header
/// names, and not `content-length` (the body is re-framed).
fn end_to_end_headers(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    headers.iter().filter(move |(name, _)| {
        let name = name.as_str();
        !HOP_BY_HOP.contains(&name) && name != "content-length" && !named.iter().any(|n| n == name)
    })
}

/// Whether `method path` is one of the API calls agents need.
fn allowed(method: &Method, path: &str, openai: bool) -> bool {
    match (method, path) {
        (&Method::POST, "/v1/messages" | "/v1/messages/count_tokens") => !openai,
        (&Method::POST, "/v1/chat/completions") => openai,
        // Claude Code's connectivity preflight and its OAuth API-key exchange (the
        // exchange is answered by the proxy itself, see `forward`).
        (&Method::HEAD | &Method::GET, "/") => true,
        (&Method::POST, OAUTH_KEY_EXCHANGE) => !openai,
        _ => false,
    }
}

async fn forward(
    State(state): State<Arc<ProxyState>>,
    owner: Option<axum::Extension<SocketOwner>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(axum::Extension(SocketOwner(token))) = &owner
        && presented_token(&parts.headers) != Some(token.as_str())
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "this socket serves only its own run's token",
        );
    }
    let Some(identity) = presented_token(&parts.headers).and_then(|t| state.tokens.identify(t))
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unknown or expired run token",
        );
    };
    let Some(in_flight) =
        presented_token(&parts.headers).and_then(|t| state.tokens.start_request(t))
    else {
        tracing::warn!(group = ?identity.group_folder, "credential proxy: too many requests in flight for one run");
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            &format!(
                "a run may have at most {MAX_REQUESTS_PER_RUN} model requests in flight; wait for one to finish"
            ),
        );
    };
    let path = parts.uri.path();
    if let Some(server) = path.strip_prefix("/mcp/") {
        let server = server.to_string();
        return mcp::forward(&identity, &server, parts, body, in_flight).await;
    }
    if path == EMBEDDINGS_PATH {
        return embeddings::forward(
            state.embeddings.as_ref(),
            &state.client,
            state.usage.as_ref(),
            &identity,
            &parts.method,
            body,
            in_flight,
        )
        .await;
    }
    if !allowed(&parts.method, path, state.openai) {
        tracing::warn!(group = ?identity.group_folder, method = %parts.method, path = ?path, "credential proxy refused a path");
        return error(
            StatusCode::FORBIDDEN,
            "permission_error",
            &format!(
                "{} {path} is not forwarded by the nanoclaw credential proxy",
                parts.method
            ),
        );
    }
    if path == OAUTH_KEY_EXCHANGE {
        // The run token is the only key the sandbox ever gets (see OAUTH_KEY_EXCHANGE).
        let token = presented_token(&parts.headers).unwrap_or_default();
        tracing::info!(group = ?identity.group_folder, "answered an OAuth key exchange with the run token");
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "raw_key": token }).to_string(),
        )
            .into_response();
    }
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in end_to_end_headers(&parts.headers) {
        if name != "x-api-key" && name != header::AUTHORIZATION && name != header::ACCEPT_ENCODING {
            headers.append(name.clone(), value.clone());
        }
    }
    // Usage is read from the response as it passes; a compressed body would hide it.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    match &state.credential {
        Credential::ApiKey(key) => {
            if let Ok(v) = HeaderValue::from_str(key) {
                headers.insert(HeaderName::from_static("x-api-key"), v);
            }
        }
        Credential::Bearer(token) => {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(header::AUTHORIZATION, v);
            }
        }
        Credential::NoneNeeded => {}
        Credential::Missing(message) => {
            return error(StatusCode::UNAUTHORIZED, "authentication_error", message);
        }
    }
    let url = format!(
        "{}{}",
        state.upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or(path)
    );
    let metered = matches!(path, "/v1/messages" | "/v1/chat/completions");
    let (body, reservation) = if metered && identity.budget.is_limited() {
        match budgeted_body(&state, &identity, &parts.headers, body).await {
            Ok(checked) => checked,
            Err(refused) => return refused,
        }
    } else {
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        (reqwest::Body::wrap_stream(stream), None)
    };
    // Settles the reservation whatever happens from here: a client that hangs up while
    // the upstream is still answering (dropping this future) is charged it in full.
    let mut recorder = match (&state.usage, metered) {
        (Some(store), true) => Some(usage::UsageRecorder {
            reader: Some(usage::UsageReader::new(false)),
            store: Arc::clone(store),
            group_folder: identity.group_folder.clone(),
            run_id: identity.run_id.clone(),
            reservation,
        }),
        _ => None,
    };
    let sent = state
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match sent {
        Ok(r) => r,
        Err(e) => {
            if e.is_connect()
                && let Some(r) = recorder.as_mut()
            {
                // Nothing reached the model: nothing to charge.
                r.reservation = None;
                r.reader = None;
            }
            tracing::warn!(group = ?identity.group_folder, "the model API is unreachable: {}", e.without_url());
            return error(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "the credential proxy cannot reach the model API",
            );
        }
    };
    if let Some(r) = recorder.as_mut() {
        if upstream.status().is_success() {
            let sse = upstream
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            r.reader = Some(usage::UsageReader::new(sse));
        } else {
            // An unsuccessful response used no tokens.
            r.reader = None;
            r.reservation = None;
        }
    }
    if matches!(
        upstream.status(),
        reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
    ) {
        // The upstream's words about the real credential (some servers quote part of a
        // wrong key) stay on the host; the agent learns what the user must do.
        let status = upstream.status().as_u16();
        tracing::error!(group = ?identity.group_folder, status, "the model API refused nanoclaw's credentials");
        return error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
            if status == 401 {
                "authentication_error"
            } else {
                "permission_error"
            },
            &format!(
                "the model API refused nanoclaw's credentials (HTTP {status}); check {} in nanoclaw's .env",
                if state.openai {
                    "OPENAI_API_KEY"
                } else {
                    "ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN"
                }
            ),
        );
    }
    let mut response = Response::builder().status(upstream.status().as_u16());
    if let Some(out) = response.headers_mut() {
        for (name, value) in end_to_end_headers(upstream.headers()) {
            // Which organisation holds the real key is the host's business.
            if name.as_str() != "anthropic-organization-id" {
                out.append(name.clone(), value.clone());
            }
        }
    }
    let body = upstream.bytes_stream().map_ok({
        let mut recorder = recorder;
        // Counted as in flight until the body has been passed on (or dropped).
        let _in_flight = in_flight;
        move |chunk| {
            let _ = &_in_flight;
            if let Some(reader) = recorder.as_mut().and_then(|r| r.reader.as_mut()) {
                reader.feed(&chunk);
            }
            chunk
        }
    });
    response.body(Body::from_stream(body)).unwrap_or_else(|_| {
        error(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "unreadable upstream response",
        )
    })
}

/// Largest request body a run with a token budget may send (the Messages API's own
/// limit is 32 MB); it is read whole to bound what it may cost.
const MAX_BUDGETED_BODY: usize = 32 << 20;
/// How long a budgeted request's body may take to arrive.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
/// Most JSON values a budgeted request may hold (an agent's request has thousands).
const MAX_JSON_VALUES: usize = 1_000_000;
/// Budgeted bodies parsed at once, across all runs.
static PARSE_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A budgeted request's body, read whole, with its reservation; its `max_tokens` lowered
/// to what the budget leaves. Refused (402 `billing_error`) when not even its input fits.
async fn budgeted_body(
    state: &ProxyState,
    identity: &RunIdentity,
    headers: &HeaderMap,
    body: Body,
) -> Result<(reqwest::Body, Option<budget::Reservation>), Response> {
    let refuse = |why: String| {
        tracing::warn!(group = %identity.group_folder, "credential proxy refused a model request: {why}");
        error(StatusCode::BAD_REQUEST, "invalid_request_error", &why)
    };
    // Bytes bound the cost only when they are the text itself.
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(refuse(
            "a model request of a group with a token budget must not be compressed".into(),
        ));
    }
    let read = tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, MAX_BUDGETED_BODY));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "a model request of a group with a token budget may be at most 32 MiB",
            ));
        }
        Err(_) => {
            return Err(refuse(format!(
                "the request body did not arrive within {} s",
                BODY_DEADLINE.as_secs()
            )));
        }
    };
    // Parsing costs memory in proportion to the values, not the bytes: bounded first
    // by a count, then by parsing a few bodies at a time, off the async workers.
    if budget::structure_count(&bytes) > MAX_JSON_VALUES {
        return Err(refuse(format!(
            "the request has more than {MAX_JSON_VALUES} JSON values"
        )));
    }
    let parsed = {
        let _slot = PARSE_SLOTS.acquire().await;
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || serde_json::from_slice::<serde_json::Value>(&bytes))
            .await
    };
    let Ok(Ok(mut json)) = parsed else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request body is not JSON",
        ));
    };
    if let Some(why) = budget::unbounded(&json, state.openai) {
        return Err(refuse(format!(
            "this group has a token budget and the request {why}, whose cost the proxy cannot bound; \
             remove it or the group's budget"
        )));
    }
    let ask = budget::Ask::read(&bytes, &json);
    let reserved = state.tokens.spending.reserve(
        &identity.group_folder,
        &identity.run_id,
        identity.budget,
        &ask,
    );
    match reserved {
        Err(why) => {
            tracing::warn!(group = %identity.group_folder, "credential proxy refused a model request: {why}");
            Err(error(StatusCode::PAYMENT_REQUIRED, "billing_error", &why))
        }
        Ok(None) => Ok((bytes.into(), None)),
        Ok(Some(r)) => {
            // Always the parsed request, re-encoded: what the upstream reads is exactly
            // what was checked (a repeated key, say, cannot mean one thing here and
            // another there).
            budget::set_output(&mut json, r.output, state.openai);
            let checked = serde_json::to_vec(&json).map_err(|_| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "cannot re-encode the request",
                )
            })?;
            Ok((checked.into(), Some(r)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_paths_agents_need_are_allowed() {
        let cases = [
            (Method::POST, "/v1/messages", false, true),
            (Method::POST, "/v1/messages/count_tokens", false, true),
            (Method::HEAD, "/", false, true),
            (Method::GET, "/", false, true),
            (Method::POST, OAUTH_KEY_EXCHANGE, false, true),
            (Method::POST, OAUTH_KEY_EXCHANGE, true, false),
            (Method::GET, "/v1/models", false, false),
            (Method::POST, "/v1/files", false, false),
            (Method::DELETE, "/v1/messages", false, false),
            (Method::POST, "/v1/chat/completions", false, false),
            (Method::POST, "/v1/chat/completions", true, true),
            (Method::POST, "/v1/messages", true, false),
        ];
        for (method, path, openai, want) in cases {
            assert_eq!(
                allowed(&method, path, openai),
                want,
                "{method} {path} openai={openai}"
            );
        }
    }

    #[tokio::test]
    async fn the_listener_stops_accepting_while_every_slot_is_taken() {
        use axum::serve::Listener;
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let mut capped = Capped::new(
            tcp,
            Arc::new(tokio::sync::Semaphore::new(2)),
            Overflow::Wait,
        );
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let first = capped.accept().await;
        let _second = capped.accept().await;
        let short = std::time::Duration::from_millis(200);
        assert!(
            tokio::time::timeout(short, capped.accept()).await.is_err(),
            "a third connection waits while both slots are held"
        );
        drop(first);
        let third = tokio::time::timeout(std::time::Duration::from_secs(10), capped.accept()).await;
        assert!(third.is_ok(), "a freed slot lets the next connection in");
    }

    /// A run holds every connection its socket allows, and more: the extra ones are
    /// closed, and another run's socket serves as usual. A token is good only on its
    /// own run's socket.
    #[tokio::test]
    async fn one_run_cannot_take_another_runs_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = Arc::new(RunTokens::default());
        let (_stop, stop_rx) = watch::channel(false);
        let app = Router::new().fallback(
            |owner: Option<axum::Extension<SocketOwner>>, headers: HeaderMap| async move {
                match owner {
                    Some(axum::Extension(SocketOwner(t)))
                        if presented_token(&headers) == Some(t.as_str()) =>
                    {
                        "ok"
                    }
                    _ => "wrong token",
                }
            },
        );
        tokens.attach(app, stop_rx);
        let run = |group: &str| RunIdentity {
            group_folder: group.into(),
            run_id: format!("r-{group}"),
            ..Default::default()
        };
        let greedy = tokens
            .open_run(run("greedy"), &dir.path().join("greedy.sock"))
            .expect("open");
        let other = tokens
            .open_run(run("other"), &dir.path().join("other.sock"))
            .expect("open");
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_RUN + 20 {
            held.push(
                tokio::net::UnixStream::connect(&greedy.socket)
                    .await
                    .expect("connect"),
            );
        }
        // The last ones were closed by the proxy (read returns end-of-file).
        let mut buf = [0u8; 1];
        let extra = held.last_mut().expect("held");
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), extra.read(&mut buf))
            .await
            .expect("closed promptly");
        assert_eq!(closed.expect("read"), 0, "beyond its share, closed");

        let ask = |socket: PathBuf, token: String| async move {
            let mut c = tokio::net::UnixStream::connect(&socket)
                .await
                .expect("connect");
            c.write_all(
                format!(
                    "GET / HTTP/1.1\r\nhost: x\r\nx-api-key: {token}\r\nconnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("write");
            let mut answer = String::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                c.read_to_string(&mut answer),
            )
            .await;
            answer
        };
        let answer = ask(other.socket.clone(), other.token.clone()).await;
        assert!(answer.ends_with("ok"), "the other run is served: {answer}");
        let answer = ask(other.socket.clone(), greedy.token.clone()).await;
        assert!(
            answer.ends_with("wrong token"),
            "a token on another run's socket: {answer}"
        );
        drop(held);
        let token = greedy.token.clone();
        let path = greedy.socket.clone();
        drop(greedy);
        assert!(tokens.identify(&token).is_none(), "revoked with its access");
        assert!(!path.exists(), "socket removed");
    }

    #[tokio::test]
    async fn silent_and_idle_connections_are_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let capped = Capped::new(
            tcp,
            Arc::new(tokio::sync::Semaphore::new(10)),
            Overflow::Wait,
        );
        let app = Router::new().fallback(|| async { "ok" });
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve_connections(
            capped,
            app,
            stop_rx,
            std::time::Duration::from_millis(300),
        ));
        let limit = std::time::Duration::from_secs(10);
        // Says nothing at all.
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(limit, silent.read(&mut buf))
            .await
            .expect("closed by the server")
            .unwrap_or(0);
        assert!(
            !String::from_utf8_lossy(&buf[..n]).contains("200 OK"),
            "no request, no answer"
        );
        // One request, then idle on a kept-alive connection.
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut seen = Vec::new();
        let ended = tokio::time::timeout(limit, async {
            loop {
                match idle.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "an idle kept-alive connection is closed");
        assert!(String::from_utf8_lossy(&seen).contains("200 OK"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret-ish"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
            ("host", "127.0.0.1:3001"),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let kept: Vec<&str> = end_to_end_headers(&h).map(|(n, _)| n.as_str()).collect();
        assert_eq!(kept, ["anthropic-version", "content-type"]);
    }

    #[test]
    fn tokens_are_accepted_from_either_header_only_while_live() {
        let tokens = RunTokens::default();
        let t = tokens.issue(RunIdentity {
            group_folder: "main".into(),
            run_id: "r1".into(),
            ..Default::default()
        });
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_str(&t).expect("header"));
        assert_eq!(presented_token(&h), Some(t.as_str()));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
        );
        assert_eq!(presented_token(&h), Some(t.as_str()));
        assert!(tokens.identify(&t).is_some());
        tokens.revoke(&t);
        assert!(tokens.identify(&t).is_none());
    }
}
