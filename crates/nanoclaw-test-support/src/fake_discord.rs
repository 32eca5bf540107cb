//! A fake Discord speaking the documented wire protocol: REST under `/api/v10`
//! (`Authorization: Bot …`, JSON error bodies `{"message","code"}`, 429 with
//! `retry_after` and `X-RateLimit-*` headers) and a JSON gateway over WebSocket (op 10
//! HELLO, op 2 IDENTIFY → READY and GUILD_CREATE, op 1/11 heartbeats, op 6 RESUME →
//! replay and RESUMED, op 7 RECONNECT, op 9 INVALID_SESSION, close codes 4004 and 4014).
//! Its gateway also echoes the bot's own messages, as Discord does. Tests inject user
//! messages, drops, failures; `@discordjs/ws` and `@discordjs/rest` talk to it in
//! `tests/discord.rs` to prove it faithful.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub const BOT_ID: &str = "900000000000000001";
pub const BOT_NAME: &str = "andy-bot";
pub const GUILD_ID: &str = "100000000000000001";
pub const GUILD_NAME: &str = "Family";
/// A text channel of the guild.
pub const CHANNEL_ID: &str = "200000000000000001";
pub const CHANNEL_NAME: &str = "general";
/// A DM channel with [`USER_ID`].
pub const DM_CHANNEL_ID: &str = "300000000000000001";
pub const USER_ID: &str = "400000000000000001";
pub const USER_NAME: &str = "bob";

/// A message the bot sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub channel_id: String,
    pub content: String,
    /// The message flags asked for (4: no embeds).
    pub flags: u64,
    /// Files uploaded with it (`multipart/form-data`, `files[n]`): name and bytes.
    pub files: Vec<(String, Vec<u8>)>,
}

enum Command {
    Text(String),
    Close(u16, String),
    Drop,
}

#[derive(Default)]
struct Session {
    /// Dispatches sent in this session, each with its `s`, for RESUME replays.
    events: Vec<Value>,
}

struct Inner {
    token: String,
    message_content: bool,
    heartbeat_interval: u64,
    ack_heartbeats: bool,
    sessions: HashMap<String, Session>,
    /// The session of the connected client, and the way to its socket.
    current: Option<(String, mpsc::UnboundedSender<Command>)>,
    latest_session: Option<String>,
    sent: Vec<Sent>,
    typing: HashMap<String, usize>,
    identifies: usize,
    /// IDENTIFY payloads received, refused ones included.
    identify_attempts: usize,
    gateway_bot_requests: usize,
    resumes: usize,
    send_failures: VecDeque<(u16, Value)>,
    fail_typing: bool,
    last_message: Option<Value>,
    next_id: u64,
    /// `nonce` → the message created with it (`enforce_nonce`).
    nonces: HashMap<String, Value>,
    /// Every `POST /channels/{id}/messages` answered, with its status.
    send_attempts: Vec<u16>,
    /// Files users attached, by the path of their CDN URL (`/attachments/…`).
    attachments: HashMap<String, Vec<u8>>,
    /// channel → its messages, oldest first (`GET /channels/{id}/messages`).
    history: HashMap<String, Vec<Value>>,
    history_requests: usize,
    history_failures: usize,
    /// The next message post says the route's bucket is empty for this many seconds.
    exhaust_bucket: Option<f64>,
    gateway_bot_fails: bool,
    sessions_remaining: u64,
    /// IDENTIFYs still to answer with op 9 (as Discord does when it cannot start one).
    invalid_identifies: usize,
}

impl Inner {
    /// When the latest message was written: a millisecond after the one before.
    fn timestamp(&self) -> String {
        let n = self.next_id;
        format!(
            "2026-01-31T13:{:02}:{:02}.{:03}000+00:00",
            32 + n / 60_000,
            (n / 1000) % 60,
            n % 1000
        )
    }

    fn snowflake(&mut self) -> String {
        self.next_id += 1;
        format!("{}", 500_000_000_000_000_000u64 + self.next_id)
    }

    /// Adds a dispatch to `session` and sends it if that session is connected.
    fn dispatch(&mut self, session: &str, t: &str, d: Value) {
        let log = self.sessions.entry(session.to_string()).or_default();
        let s = log.events.len() as u64 + 1;
        let event = json!({"op": 0, "t": t, "s": s, "d": d});
        log.events.push(event.clone());
        if let Some((current, tx)) = &self.current
            && current == session
        {
            let _ = tx.send(Command::Text(event.to_string()));
        }
    }
}

pub struct FakeDiscord {
    /// The REST root (`DISCORD_API_URL`): REST is `{api_url}/api/v10/…`.
    pub api_url: String,
    /// The gateway (`DISCORD_GATEWAY_URL`, and what `GET /gateway/bot` answers).
    pub gateway_url: String,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn channel_json(id: &str) -> Value {
    if id == DM_CHANNEL_ID {
        json!({"id": id, "type": 1, "recipients": [{"id": USER_ID, "username": USER_NAME}]})
    } else {
        json!({"id": id, "type": 0, "name": CHANNEL_NAME, "guild_id": GUILD_ID})
    }
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "username": BOT_NAME, "global_name": null, "bot": true, "discriminator": "0"})
}

type Shared = (Arc<Mutex<Inner>>, Arc<Notify>, String);

fn error(status: u16, code: i64, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [("content-type", "application/json")],
        json!({"message": message, "code": code}).to_string(),
    )
        .into_response()
}

fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bot {}", inner.token))
}

impl FakeDiscord {
    /// Starts REST and gateway on loopback; the bot's token is `token`.
    pub async fn start(token: &str) -> FakeDiscord {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_string(),
            message_content: true,
            heartbeat_interval: 41_250,
            ack_heartbeats: true,
            sessions: HashMap::new(),
            current: None,
            latest_session: None,
            sent: Vec::new(),
            typing: HashMap::new(),
            identifies: 0,
            identify_attempts: 0,
            gateway_bot_requests: 0,
            resumes: 0,
            send_failures: VecDeque::new(),
            fail_typing: false,
            last_message: None,
            next_id: 0,
            nonces: HashMap::new(),
            send_attempts: Vec::new(),
            attachments: HashMap::new(),
            history: HashMap::new(),
            history_requests: 0,
            history_failures: 0,
            exhaust_bucket: None,
            gateway_bot_fails: false,
            sessions_remaining: 999,
            invalid_identifies: 0,
        }));
        let changed = Arc::new(Notify::new());
        let gateway = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("the fake Discord gateway cannot listen: {e}"));
        let gateway_url = format!(
            "ws://{}",
            gateway
                .local_addr()
                .unwrap_or_else(|e| panic!("no gateway address: {e}"))
        );
        let shared: Shared = (
            Arc::clone(&inner),
            Arc::clone(&changed),
            gateway_url.clone(),
        );
        let app = Router::new()
            .route("/api/v10/gateway", get(gateway_info))
            .route("/api/v10/gateway/bot", get(gateway_bot))
            .route("/api/v10/users/@me", get(users_me))
            .route("/api/v10/channels/{id}", get(get_channel))
            .route(
                "/api/v10/channels/{id}/messages",
                post(create_message).get(list_messages),
            )
            .route("/api/v10/channels/{id}/typing", post(typing))
            .route("/api/v10/guilds/{id}", get(get_guild))
            .route("/attachments/{channel}/{id}/{name}", get(attachment))
            .with_state(shared.clone());
        let (api_url, rest) = crate::serve_on_loopback(app, "the fake Discord REST API").await;
        let gateway_task = tokio::spawn(accept_gateway(gateway, shared));
        FakeDiscord {
            api_url,
            gateway_url,
            inner,
            changed,
            tasks: vec![rest, gateway_task],
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the bot's application has the Message Content intent switched on.
    pub fn set_message_content_intent(&self, on: bool) {
        self.lock().message_content = on;
    }

    /// The heartbeat interval HELLO announces (ms).
    pub fn set_heartbeat_interval(&self, ms: u64) {
        self.lock().heartbeat_interval = ms;
    }

    /// Stops answering heartbeats (a zombie connection).
    pub fn set_ack_heartbeats(&self, ack: bool) {
        self.lock().ack_heartbeats = ack;
    }

    /// A user writes `content` in `channel_id` (as `MESSAGE_CREATE`; `<@id>` tokens
    /// become its `mentions`). Sent at once if a client is connected, else replayed on
    /// RESUME. Returns the message id.
    pub fn user_says(&self, channel_id: &str, content: &str) -> String {
        self.say(
            channel_id,
            json!({"id": USER_ID, "username": USER_NAME, "global_name": "Bob"}),
            content,
            None,
        )
    }

    /// A user replies to the message `to` (written by the bot).
    pub fn user_replies(&self, channel_id: &str, to: &str, content: &str) -> String {
        let referenced = json!({"id": to, "channel_id": channel_id, "author": bot_user(), "content": "", "type": 0});
        self.say(
            channel_id,
            json!({"id": USER_ID, "username": USER_NAME, "global_name": "Bob"}),
            content,
            Some(referenced),
        )
    }

    /// A user writes `content` with a file attached (served, as Discord's CDN serves
    /// it, at the attachment's `url`). Returns the message id.
    pub fn user_sends_file(
        &self,
        channel_id: &str,
        content: &str,
        name: &str,
        bytes: &[u8],
    ) -> String {
        let id = self.lock().snowflake();
        let path = format!("/attachments/{channel_id}/{id}/{name}");
        self.lock().attachments.insert(path.clone(), bytes.to_vec());
        let attachment = json!({"id": id, "filename": name, "size": bytes.len(),
            "url": format!("{}{path}", self.api_url), "proxy_url": format!("{}{path}", self.api_url),
            "content_type": "application/octet-stream"});
        self.say_with(
            channel_id,
            json!({"id": USER_ID, "username": USER_NAME, "global_name": "Bob"}),
            content,
            None,
            vec![attachment],
        )
    }

    fn say(
        &self,
        channel_id: &str,
        author: Value,
        content: &str,
        referenced: Option<Value>,
    ) -> String {
        self.say_with(channel_id, author, content, referenced, Vec::new())
    }

    fn say_with(
        &self,
        channel_id: &str,
        author: Value,
        content: &str,
        referenced: Option<Value>,
        attachments: Vec<Value>,
    ) -> String {
        let mut inner = self.lock();
        let id = inner.snowflake();
        let mentions: Vec<Value> = content
            .split("<@")
            .skip(1)
            .filter_map(|rest| {
                let id = rest.trim_start_matches('!').split('>').next()?;
                Some(if id == BOT_ID {
                    bot_user()
                } else {
                    json!({"id": id, "username": format!("user{id}")})
                })
            })
            .collect();
        let mut d = json!({
            "id": id, "channel_id": channel_id, "author": author, "content": content,
            "timestamp": inner.timestamp(), "type": if referenced.is_some() { 19 } else { 0 },
            "mentions": mentions, "attachments": attachments, "embeds": [], "tts": false,
            "mention_everyone": false, "mention_roles": [], "pinned": false,
        });
        if channel_id != DM_CHANNEL_ID {
            d["guild_id"] = json!(GUILD_ID);
            d["member"] = json!({"nick": null, "roles": []});
        }
        if let Some(r) = referenced {
            d["message_reference"] = json!({"message_id": r["id"], "channel_id": channel_id});
            d["referenced_message"] = r;
        }
        let session = inner
            .current
            .as_ref()
            .map(|(s, _)| s.clone())
            .or_else(|| inner.latest_session.clone());
        inner.last_message = Some(d.clone());
        inner
            .history
            .entry(channel_id.to_string())
            .or_default()
            .push(d.clone());
        if let Some(session) = session {
            inner.dispatch(&session, "MESSAGE_CREATE", d);
        }
        id
    }

    /// The bot's own message, as the gateway shows it to the bot.
    pub fn bot_says(&self, channel_id: &str, content: &str) -> String {
        self.say(channel_id, bot_user(), content, None)
    }

    /// Sends the last user message again (same id, new sequence number).
    pub fn redeliver_last(&self) {
        let mut inner = self.lock();
        let (Some(d), Some((session, _))) = (inner.last_message.clone(), inner.current.clone())
        else {
            return;
        };
        inner.dispatch(&session, "MESSAGE_CREATE", d);
    }

    /// Makes `POST /channels/{id}/typing` fail (500) or work again.
    pub fn fail_typing(&self, fail: bool) {
        self.lock().fail_typing = fail;
    }

    /// Sends a raw dispatch payload (e.g. a malformed one) to the connected client.
    pub fn send_raw(&self, text: &str) {
        if let Some((_, tx)) = &self.lock().current {
            let _ = tx.send(Command::Text(text.to_string()));
        }
    }

    /// Cuts the connection without a close frame (the client should resume).
    pub fn drop_connection(&self) {
        if let Some((_, tx)) = self.lock().current.take() {
            let _ = tx.send(Command::Drop);
        }
    }

    /// Closes the connection with `code` (e.g. 4000: resumable).
    pub fn close_connection(&self, code: u16) {
        if let Some((_, tx)) = self.lock().current.take() {
            let _ = tx.send(Command::Close(code, "closed by the test".into()));
        }
    }

    /// Op 7: asks the client to reconnect and resume.
    pub fn request_reconnect(&self) {
        if let Some((_, tx)) = &self.lock().current {
            let _ = tx.send(Command::Text(json!({"op": 7, "d": null}).to_string()));
        }
    }

    /// The next `POST /channels/{id}/messages` answers `status` with this error body.
    pub fn fail_next_send(&self, status: u16, body: Value) {
        self.lock().send_failures.push_back((status, body));
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.lock().sent.clone()
    }

    /// The status of every message post, in order (failures injected included).
    pub fn send_attempts(&self) -> Vec<u16> {
        self.lock().send_attempts.clone()
    }

    pub fn typing_count(&self, channel_id: &str) -> usize {
        self.lock().typing.get(channel_id).copied().unwrap_or(0)
    }

    pub fn identifies(&self) -> usize {
        self.lock().identifies
    }

    /// Every IDENTIFY, refused ones (bad token, missing intent) included.
    pub fn identify_attempts(&self) -> usize {
        self.lock().identify_attempts
    }

    /// `GET /channels/{id}/messages` calls.
    pub fn history_requests(&self) -> usize {
        self.lock().history_requests
    }

    pub fn gateway_bot_requests(&self) -> usize {
        self.lock().gateway_bot_requests
    }

    /// The next message post answers with an empty rate-limit bucket for `secs`.
    pub fn exhaust_bucket(&self, secs: f64) {
        self.lock().exhaust_bucket = Some(secs);
    }

    /// Makes `GET /gateway/bot` answer 502 (or work again).
    pub fn fail_gateway_bot(&self, fail: bool) {
        self.lock().gateway_bot_fails = fail;
    }

    /// What `session_start_limit.remaining` says (new sessions left today).
    pub fn set_sessions_remaining(&self, n: u64) {
        self.lock().sessions_remaining = n;
    }

    /// The next `n` IDENTIFYs get op 9 (`d: false`) instead of READY.
    pub fn refuse_identifies(&self, n: usize) {
        self.lock().invalid_identifies = n;
    }

    /// The next `n` `GET /channels/{id}/messages` answer 500.
    pub fn fail_history(&self, n: usize) {
        self.lock().history_failures = n;
    }

    /// Forgets every session (as after a long outage): a RESUME gets op 9, `false`.
    pub fn invalidate_sessions(&self) {
        let mut inner = self.lock();
        inner.sessions.clear();
        inner.latest_session = None;
    }

    pub fn resumes(&self) -> usize {
        self.lock().resumes
    }

    pub fn connected(&self) -> bool {
        self.lock().current.is_some()
    }

    /// Waits (up to [`crate::DEADLINE`]) until `cond` holds of what the bot sent.
    pub async fn wait_sent(&self, what: &str, cond: impl Fn(&[Sent]) -> bool) -> Vec<Sent> {
        tokio::time::timeout(crate::DEADLINE, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let sent = self.sent();
                if cond(&sent) {
                    return sent;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what}; sent so far: {:#?}",
                self.sent()
            )
        })
    }

    /// Waits until a client is connected and identified (READY sent) or resumed.
    pub async fn wait_connected(&self, what: &str) {
        crate::wait_for(what, crate::DEADLINE, || async {
            self.connected().then_some(())
        })
        .await;
    }
}

/// `GET /attachments/{channel}/{id}/{name}`: an attached file, as the CDN serves it
/// (no authorization: the URL is the capability).
async fn attachment(
    State((inner, _, _)): State<Shared>,
    Path((channel, id, name)): Path<(String, String, String)>,
) -> Response {
    let path = format!("/attachments/{channel}/{id}/{name}");
    match inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .attachments
        .get(&path)
    {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn gateway_info(State((_, _, url)): State<Shared>) -> Response {
    (
        [("content-type", "application/json")],
        json!({"url": url}).to_string(),
    )
        .into_response()
}

async fn gateway_bot(State((inner, _, url)): State<Shared>, headers: HeaderMap) -> Response {
    {
        let mut state = inner.lock().unwrap_or_else(|p| p.into_inner());
        state.gateway_bot_requests += 1;
        if state.gateway_bot_fails {
            return error(502, 0, "502: Bad Gateway");
        }
        if !authorized(&state, &headers) {
            return error(401, 0, "401: Unauthorized");
        }
    }
    let remaining = inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sessions_remaining;
    let body = json!({
        "url": url, "shards": 1,
        "session_start_limit": {"total": 1000, "remaining": remaining, "reset_after": 2_000, "max_concurrency": 1},
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

async fn users_me(State((inner, _, _)): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&inner.lock().unwrap_or_else(|p| p.into_inner()), &headers) {
        return error(401, 0, "401: Unauthorized");
    }
    (
        [("content-type", "application/json")],
        bot_user().to_string(),
    )
        .into_response()
}

async fn get_channel(
    State((inner, _, _)): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&inner.lock().unwrap_or_else(|p| p.into_inner()), &headers) {
        return error(401, 0, "401: Unauthorized");
    }
    if id != CHANNEL_ID && id != DM_CHANNEL_ID {
        return error(404, 10003, "Unknown Channel");
    }
    (
        [("content-type", "application/json")],
        channel_json(&id).to_string(),
    )
        .into_response()
}

async fn get_guild(
    State((inner, _, _)): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&inner.lock().unwrap_or_else(|p| p.into_inner()), &headers) {
        return error(401, 0, "401: Unauthorized");
    }
    if id != GUILD_ID {
        return error(404, 10004, "Unknown Guild");
    }
    (
        [("content-type", "application/json")],
        json!({"id": GUILD_ID, "name": GUILD_NAME, "roles": [], "emojis": [], "features": []})
            .to_string(),
    )
        .into_response()
}

/// A `multipart/form-data` message: `payload_json` and the files `files[n]`, as
/// Discord takes uploads; parsed with axum's (multer's) parser, not ours.
async fn multipart_message(
    content_type: &str,
    body: axum::body::Bytes,
) -> Result<(Value, Vec<(String, Vec<u8>)>), Response> {
    use axum::extract::FromRequest;
    let bad = || error(400, 50035, "Invalid Form Body");
    let request = axum::http::Request::builder()
        .header("content-type", content_type)
        .body(axum::body::Body::from(body))
        .map_err(|_| bad())?;
    let mut form = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|_| bad())?;
    let (mut payload, mut files) = (Value::Null, Vec::new());
    while let Some(field) = form.next_field().await.map_err(|_| bad())? {
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let bytes = field.bytes().await.map_err(|_| bad())?;
        if name == "payload_json" {
            payload = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        } else if name.starts_with("files[") {
            files.push((file_name.unwrap_or_default(), bytes.to_vec()));
        }
    }
    Ok((payload, files))
}

async fn create_message(
    State((inner, changed, _)): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (request, files) = if content_type.starts_with("multipart/form-data") {
        match multipart_message(&content_type, body).await {
            Ok(parsed) => parsed,
            Err(response) => return response,
        }
    } else {
        (
            serde_json::from_slice(&body).unwrap_or(Value::Null),
            Vec::new(),
        )
    };
    let mut state = inner.lock().unwrap_or_else(|p| p.into_inner());
    if !authorized(&state, &headers) {
        return error(401, 0, "401: Unauthorized");
    }
    if let Some((status, body)) = state.send_failures.pop_front() {
        state.send_attempts.push(status);
        let retry = body["retry_after"].as_f64();
        let mut response = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response();
        if let Some(after) = retry {
            let h = response.headers_mut();
            h.insert(
                "retry-after",
                after.ceil().to_string().parse().expect("header"),
            );
            h.insert("x-ratelimit-remaining", "0".parse().expect("header"));
            h.insert(
                "x-ratelimit-reset-after",
                after.to_string().parse().expect("header"),
            );
            h.insert("x-ratelimit-scope", "user".parse().expect("header"));
        }
        return response;
    }
    let content = request["content"].as_str().unwrap_or("");
    if content.is_empty() && files.is_empty() {
        return error(400, 50006, "Cannot send an empty message");
    }
    if files.iter().any(|(_, b)| b.len() > 10 << 20) {
        return error(413, 40005, "Request entity too large");
    }
    if content.chars().count() > 2000 {
        return error(
            400,
            50035,
            "Invalid Form Body: content must be 2000 or fewer in length.",
        );
    }
    if id != CHANNEL_ID && id != DM_CHANNEL_ID {
        return error(404, 10003, "Unknown Channel");
    }
    let nonce = match &request["nonce"] {
        Value::String(n) if n.chars().count() <= 25 => Some(n.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        _ => {
            return error(
                400,
                50035,
                "Invalid Form Body: nonce must be 25 or fewer in length.",
            );
        }
    };
    state.send_attempts.push(200);
    // The same author and nonce within a few minutes: the first message, not a new one.
    if request["enforce_nonce"].as_bool() == Some(true)
        && let Some(first) = nonce.as_ref().and_then(|n| state.nonces.get(n))
    {
        return ([("content-type", "application/json")], first.to_string()).into_response();
    }
    let message_id = state.snowflake();
    let attachments: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            json!({"id": format!("{message_id}{i}"), "filename": name, "size": bytes.len(),
                   "url": format!("https://cdn.discordapp.com/attachments/{id}/{message_id}/{name}")})
        })
        .collect();
    state.sent.push(Sent {
        channel_id: id.clone(),
        content: content.to_string(),
        flags: request["flags"].as_u64().unwrap_or(0),
        files,
    });
    let exhausted = state.exhaust_bucket.take();
    let mut message = json!({
        "id": message_id, "channel_id": id, "author": bot_user(), "content": content,
        "timestamp": "2026-01-31T13:33:00.000000+00:00", "type": 0, "mentions": [],
        "attachments": attachments, "embeds": [], "tts": false, "mention_everyone": false,
        "mention_roles": [], "pinned": false,
    });
    if id == CHANNEL_ID {
        message["guild_id"] = json!(GUILD_ID);
    }
    if let Some(n) = nonce {
        message["nonce"] = json!(n);
        state.nonces.insert(n, message.clone());
    }
    state
        .history
        .entry(id.clone())
        .or_default()
        .push(message.clone());
    // Discord shows a bot its own messages on the gateway too.
    if let Some((session, _)) = state.current.clone() {
        state.dispatch(&session, "MESSAGE_CREATE", message.clone());
    }
    drop(state);
    changed.notify_waiters();
    let mut response =
        ([("content-type", "application/json")], message.to_string()).into_response();
    let h = response.headers_mut();
    let (remaining, reset_after) = match exhausted {
        Some(secs) => ("0".to_string(), format!("{secs:.3}")),
        None => ("4".to_string(), "1.000".to_string()),
    };
    for (k, v) in [
        ("x-ratelimit-limit", "5".to_string()),
        ("x-ratelimit-remaining", remaining),
        ("x-ratelimit-reset-after", reset_after),
        ("x-ratelimit-bucket", "fake-bucket".to_string()),
    ] {
        h.insert(k, v.parse().expect("header"));
    }
    response
}

/// `GET /channels/{id}/messages?after=&limit=`: the `limit` messages right after
/// `after`, newest first, as REST shows them (no `guild_id`, no `member`).
async fn list_messages(
    State((inner, _, _)): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let mut state = inner.lock().unwrap_or_else(|p| p.into_inner());
    if !authorized(&state, &headers) {
        return error(401, 0, "401: Unauthorized");
    }
    state.history_requests += 1;
    if state.history_failures > 0 {
        state.history_failures -= 1;
        return error(500, 0, "500: Internal Server Error");
    }
    if id != CHANNEL_ID && id != DM_CHANNEL_ID {
        return error(404, 10003, "Unknown Channel");
    }
    let after: u64 = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(50)
        .clamp(1, 100);
    let mut page: Vec<Value> = state
        .history
        .get(&id)
        .into_iter()
        .flatten()
        .filter(|m| {
            m["id"]
                .as_str()
                .and_then(|i| i.parse::<u64>().ok())
                .is_some_and(|i| i > after)
        })
        .take(limit)
        .map(|m| {
            let mut m = m.clone();
            if let Some(o) = m.as_object_mut() {
                o.remove("guild_id");
                o.remove("member");
            }
            m
        })
        .collect();
    page.reverse();
    (
        [("content-type", "application/json")],
        Value::Array(page).to_string(),
    )
        .into_response()
}

async fn typing(
    State((inner, changed, _)): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut state = inner.lock().unwrap_or_else(|p| p.into_inner());
    if !authorized(&state, &headers) {
        return error(401, 0, "401: Unauthorized");
    }
    if state.fail_typing {
        return error(500, 0, "500: Internal Server Error");
    }
    *state.typing.entry(id).or_default() += 1;
    drop(state);
    changed.notify_waiters();
    StatusCode::NO_CONTENT.into_response()
}

async fn accept_gateway(listener: tokio::net::TcpListener, shared: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                serve_gateway(ws, shared).await;
            }
        });
    }
}

async fn serve_gateway(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    shared: Shared,
) {
    let (inner, changed, url) = shared;
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let interval = inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .heartbeat_interval;
    let hello = json!({"op": 10, "d": {"heartbeat_interval": interval}, "s": null, "t": null});
    if ws.send(Frame::text(hello.to_string())).await.is_err() {
        return;
    }
    let close = |code: u16, reason: &str| {
        Frame::Close(Some(CloseFrame {
            code: code.into(),
            reason: reason.to_string().into(),
        }))
    };
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                Some(Command::Text(t)) => {
                    if ws.send(Frame::text(t)).await.is_err() {
                        return;
                    }
                }
                Some(Command::Close(code, reason)) => {
                    let _ = ws.send(close(code, &reason)).await;
                    return;
                }
                Some(Command::Drop) | None => return,
            },
            frame = ws.next() => {
                let Some(Ok(frame)) = frame else {
                    let mut state = inner.lock().unwrap_or_else(|p| p.into_inner());
                    if state.current.as_ref().is_some_and(|(_, t)| t.same_channel(&tx)) {
                        state.current = None;
                    }
                    return;
                };
                let Frame::Text(text) = frame else { continue };
                let payload: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                let mut state = inner.lock().unwrap_or_else(|p| p.into_inner());
                match payload["op"].as_u64() {
                    Some(1) if state.ack_heartbeats => {
                        let _ = tx.send(Command::Text(json!({"op": 11}).to_string()));
                    }
                    Some(2) => {
                        state.identify_attempts += 1;
                        let d = &payload["d"];
                        if d["token"].as_str() != Some(state.token.as_str()) {
                            let _ = tx.send(Command::Close(4004, "Authentication failed.".into()));
                            continue;
                        }
                        let intents = d["intents"].as_u64().unwrap_or(0);
                        if intents & (1 << 15) != 0 && !state.message_content {
                            let _ = tx.send(Command::Close(4014, "Disallowed intent(s).".into()));
                            continue;
                        }
                        if state.invalid_identifies > 0 {
                            state.invalid_identifies -= 1;
                            let _ = tx.send(Command::Text(json!({"op": 9, "d": false}).to_string()));
                            continue;
                        }
                        state.identifies += 1;
                        let session = format!("session-{}", state.identifies);
                        state.current = Some((session.clone(), tx.clone()));
                        state.latest_session = Some(session.clone());
                        let ready = json!({
                            "v": 10, "user": bot_user(), "session_id": session,
                            "resume_gateway_url": url, "guilds": [{"id": GUILD_ID, "unavailable": true}],
                            "application": {"id": BOT_ID, "flags": 0}, "session_type": "normal",
                        });
                        state.dispatch(&session, "READY", ready);
                        let guild = json!({
                            "id": GUILD_ID, "name": GUILD_NAME, "unavailable": false,
                            "channels": [{"id": CHANNEL_ID, "type": 0, "name": CHANNEL_NAME, "guild_id": GUILD_ID}],
                            "threads": [], "members": [], "roles": [],
                        });
                        state.dispatch(&session, "GUILD_CREATE", guild);
                    }
                    Some(6) => {
                        let d = &payload["d"];
                        let session = d["session_id"].as_str().unwrap_or("").to_string();
                        let known = state.sessions.contains_key(&session)
                            && d["token"].as_str() == Some(state.token.as_str());
                        if !known {
                            let _ = tx.send(Command::Text(json!({"op": 9, "d": false}).to_string()));
                            continue;
                        }
                        state.resumes += 1;
                        let seq = d["seq"].as_u64().unwrap_or(0);
                        let missed: Vec<Value> = state.sessions[&session]
                            .events
                            .iter()
                            .filter(|e| e["s"].as_u64().unwrap_or(0) > seq)
                            .cloned()
                            .collect();
                        for e in missed {
                            let _ = tx.send(Command::Text(e.to_string()));
                        }
                        state.current = Some((session.clone(), tx.clone()));
                        state.latest_session = Some(session.clone());
                        state.dispatch(&session, "RESUMED", json!({}));
                    }
                    _ => {}
                }
                drop(state);
                changed.notify_waiters();
            }
        }
    }
}
