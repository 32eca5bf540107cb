//! A fake Slack speaking the documented wire protocol: the Web API (`POST /api/{method}`,
//! form or JSON bodies, `Authorization: Bearer`, HTTP 200 with `{"ok": false, "error"}`
//! for refusals, 429 with `Retry-After`) and Socket Mode (`apps.connections.open` with
//! the app-level token gives a one-time `ws://…/link/?ticket=` URL; `hello` first,
//! `events_api` envelopes with `envelope_id` and `retry_attempt`, acknowledgements,
//! `disconnect` messages, server pings). Like Slack it delivers a message that mentions
//! the bot twice (`message` and `app_mention`), shows the bot its own messages, and
//! keeps envelopes for a client that is not connected. `@slack/socket-mode` and
//! `@slack/web-api` talk to it in `tests/slack.rs` to prove it faithful.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message as Frame;

pub const TEAM_ID: &str = "T0FAMILY01";
pub const TEAM_NAME: &str = "Family";
pub const APP_ID: &str = "A0NANOCLAW";
pub const BOT_USER_ID: &str = "U0BOTANDY1";
pub const BOT_ID: &str = "B0BOTANDY1";
pub const BOT_NAME: &str = "andy";
/// A public channel the bot is in.
pub const CHANNEL_ID: &str = "C0GENERAL1";
pub const CHANNEL_NAME: &str = "general";
/// A private channel.
pub const PRIVATE_ID: &str = "G0PLANS001";
pub const PRIVATE_NAME: &str = "secret-plans";
/// The DM between [`USER_ID`] and the bot.
pub const DM_ID: &str = "D0BOB00001";
/// A group DM.
pub const MPIM_ID: &str = "G0MPIM0001";
pub const USER_ID: &str = "U0BOB00001";
pub const USER_DISPLAY_NAME: &str = "Bob";
pub const OTHER_USER_ID: &str = "U0CAROL001";

/// What the bot posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub channel: String,
    /// As a person sees it (Slack's `&amp;` `&lt;` `&gt;` undone).
    pub text: String,
    pub ts: String,
}

/// A file the bot shared (`files.getUploadURLExternal`, the upload,
/// `files.completeUploadExternal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    pub channel: String,
    pub title: String,
    pub bytes: Vec<u8>,
    /// `initial_comment`, as a person sees it.
    pub comment: Option<String>,
    /// Whether the upload to `upload_url` carried an `Authorization` header.
    pub upload_had_token: bool,
}

/// How the next `chat.postMessage` fails.
#[derive(Debug, Clone)]
pub enum PostFailure {
    /// HTTP 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// HTTP 200 `{"ok": false, "error": code}`.
    Error(String),
    /// The message is posted, but the answer never arrives (the connection is cut).
    PostedThenCut,
}

enum Command {
    Text(String),
    Drop,
}

/// An upload slot: filename, declared length, and (once uploaded) the bytes and whether
/// a token came with them.
type Upload = (String, usize, Option<(Vec<u8>, bool)>);

struct Inner {
    app_token: String,
    bot_token: String,
    tickets: Vec<String>,
    current: Option<mpsc::UnboundedSender<Command>>,
    /// Envelopes waiting for a connection.
    pending: VecDeque<Value>,
    /// envelope id → when it was sent.
    unacked: HashMap<String, Instant>,
    /// envelope id → the envelope, while unacknowledged.
    sent: HashMap<String, Value>,
    /// Acknowledged envelope ids, with how long the acknowledgement took.
    acks: Vec<(String, Duration)>,
    posted: Vec<Posted>,
    /// channel → messages, oldest first.
    history: HashMap<String, Vec<Value>>,
    /// (method, channel, ts, name) of every reaction call that worked.
    reactions: Vec<(String, String, String, String)>,
    fail_reactions: Option<String>,
    post_failures: VecDeque<PostFailure>,
    post_attempts: Vec<String>,
    /// (`unfurl_links`, `unfurl_media`) of every post.
    unfurls: Vec<(String, String)>,
    history_failures: usize,
    calls: Vec<String>,
    opens: usize,
    connects: usize,
    last_envelope: Option<Value>,
    next: u64,
    base_seconds: u64,
    /// `http://127.0.0.1:port`, for `upload_url`s.
    root: String,
    /// file id → the upload it names.
    uploads: HashMap<String, Upload>,
    shared_files: Vec<SharedFile>,
    /// Files people shared: id → bytes.
    user_files: HashMap<String, Vec<u8>>,
    file_downloads: Vec<(String, bool)>,
}

impl Inner {
    fn next_ts(&mut self) -> String {
        self.next += 1;
        format!(
            "{}.{:06}",
            self.base_seconds + self.next / 1_000_000,
            self.next % 1_000_000
        )
    }

    fn envelope(&mut self, event: Value) -> Value {
        self.next += 1;
        let id = format!("{:08x}-fake-envelope-{}", self.next, self.next);
        json!({
            "envelope_id": id,
            "payload": {
                "token": "verification-token", "team_id": TEAM_ID, "api_app_id": APP_ID,
                "event": event, "type": "event_callback",
                "event_id": format!("Ev{:08}", self.next), "event_time": self.base_seconds,
                "authorizations": [{"enterprise_id": null, "team_id": TEAM_ID, "user_id": BOT_USER_ID,
                                    "is_bot": true, "is_enterprise_install": false}],
                "is_ext_shared_channel": false,
            },
            "type": "events_api", "accepts_response_payload": false,
            "retry_attempt": 0, "retry_reason": "",
        })
    }

    /// Sends an envelope now, or keeps it for the next connection.
    fn dispatch(&mut self, envelope: Value) {
        self.last_envelope = Some(envelope.clone());
        let id = envelope["envelope_id"].as_str().unwrap_or("").to_string();
        match &self.current {
            Some(tx) if tx.send(Command::Text(envelope.to_string())).is_ok() => {
                self.unacked.insert(id.clone(), Instant::now());
                self.sent.insert(id, envelope);
            }
            _ => self.pending.push_back(envelope),
        }
    }
}

fn channel_type(channel: &str) -> &'static str {
    match channel {
        DM_ID => "im",
        MPIM_ID => "mpim",
        PRIVATE_ID => "group",
        _ => "channel",
    }
}

fn known_channel(channel: &str) -> bool {
    [CHANNEL_ID, PRIVATE_ID, DM_ID, MPIM_ID].contains(&channel)
}

pub struct FakeSlack {
    /// `SLACK_API_URL`: methods are `POST {api_url}/{method}`.
    pub api_url: String,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

type Shared = (Arc<Mutex<Inner>>, Arc<Notify>, String);

fn lock_inner(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

impl FakeSlack {
    pub async fn start(app_token: &str, bot_token: &str) -> FakeSlack {
        let base_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1_769_866_320);
        let inner = Arc::new(Mutex::new(Inner {
            app_token: app_token.to_string(),
            bot_token: bot_token.to_string(),
            tickets: Vec::new(),
            current: None,
            pending: VecDeque::new(),
            unacked: HashMap::new(),
            sent: HashMap::new(),
            acks: Vec::new(),
            posted: Vec::new(),
            history: HashMap::new(),
            reactions: Vec::new(),
            fail_reactions: None,
            post_failures: VecDeque::new(),
            post_attempts: Vec::new(),
            unfurls: Vec::new(),
            history_failures: 0,
            calls: Vec::new(),
            opens: 0,
            connects: 0,
            last_envelope: None,
            next: 0,
            base_seconds,
            root: String::new(),
            uploads: HashMap::new(),
            shared_files: Vec::new(),
            user_files: HashMap::new(),
            file_downloads: Vec::new(),
        }));
        let changed = Arc::new(Notify::new());
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("the fake Socket Mode endpoint cannot listen: {e}"));
        let socket_url = format!(
            "ws://{}",
            socket
                .local_addr()
                .unwrap_or_else(|e| panic!("no socket address: {e}"))
        );
        let shared: Shared = (Arc::clone(&inner), Arc::clone(&changed), socket_url);
        let app = Router::new()
            .route("/api/{method}", post(web_api))
            .route("/upload/{id}", post(upload_file))
            .route(
                "/files-pri/{file}/download/{name}",
                axum::routing::get(download_file),
            )
            .with_state(shared.clone());
        let (root, rest) = crate::serve_on_loopback(app, "the fake Slack Web API").await;
        lock_inner(&inner).root = root.clone();
        let socket_task = tokio::spawn(accept_sockets(socket, shared));
        FakeSlack {
            api_url: format!("{root}/api"),
            inner,
            changed,
            tasks: vec![rest, socket_task],
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock_inner(&self.inner)
    }

    /// A person ([`USER_ID`]) writes `text` (Slack-formatted) in `channel`: a `message`
    /// event, and an `app_mention` too if it mentions the bot. Returns the `ts`.
    pub fn user_says(&self, channel: &str, text: &str) -> String {
        self.user_says_as(USER_ID, channel, text)
    }

    pub fn user_says_as(&self, user: &str, channel: &str, text: &str) -> String {
        let mut inner = self.lock();
        let ts = inner.next_ts();
        let message = json!({
            "type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
            "team": TEAM_ID, "event_ts": ts, "channel_type": channel_type(channel),
            "client_msg_id": format!("client-{ts}"),
            "blocks": [{"type": "rich_text", "block_id": "b", "elements": []}],
        });
        inner
            .history
            .entry(channel.to_string())
            .or_default()
            .push(message.clone());
        let envelope = inner.envelope(message);
        inner.dispatch(envelope);
        if text.contains(&format!("<@{BOT_USER_ID}>")) {
            let mention = json!({
                "type": "app_mention", "channel": channel, "user": user, "text": text,
                "ts": ts, "team": TEAM_ID, "event_ts": ts, "client_msg_id": format!("client-{ts}"),
            });
            let envelope = inner.envelope(mention);
            inner.dispatch(envelope);
        }
        drop(inner);
        self.changed.notify_waiters();
        ts
    }

    /// A person shares a file with `text` (a `file_share` message, as Slack sends it):
    /// its `url_private_download` serves the bytes only with the bot token, and
    /// redirects to a login page otherwise, as Slack does.
    pub fn user_shares_file(&self, channel: &str, text: &str, name: &str, bytes: &[u8]) -> String {
        let mut inner = self.lock();
        let ts = inner.next_ts();
        inner.next += 1;
        let id = format!("F0SHARED{:03}", inner.next);
        inner.user_files.insert(id.clone(), bytes.to_vec());
        let url = format!("{}/files-pri/{TEAM_ID}-{id}/download/{name}", inner.root);
        let message = json!({
            "type": "message", "subtype": "file_share", "channel": channel, "user": USER_ID,
            "text": text, "ts": ts, "team": TEAM_ID, "event_ts": ts,
            "channel_type": channel_type(channel), "upload": false,
            "files": [{"id": id, "name": name, "title": name, "mimetype": "application/octet-stream",
                       "size": bytes.len(), "url_private": url.replace("/download", ""),
                       "url_private_download": url}],
        });
        inner
            .history
            .entry(channel.to_string())
            .or_default()
            .push(message.clone());
        let envelope = inner.envelope(message);
        inner.dispatch(envelope);
        drop(inner);
        self.changed.notify_waiters();
        ts
    }

    /// Downloads of shared files: `(file id, whether the bot token came)`.
    pub fn file_downloads(&self) -> Vec<(String, bool)> {
        self.lock().file_downloads.clone()
    }

    /// The bot's own message, as Slack shows it to the bot.
    pub fn bot_says(&self, channel: &str, text: &str) -> String {
        let mut inner = self.lock();
        let ts = inner.next_ts();
        let event = bot_message(channel, text, &ts);
        let envelope = inner.envelope(event);
        inner.dispatch(envelope);
        ts
    }

    /// Any event, in an envelope.
    pub fn send_event(&self, event: Value) {
        let mut inner = self.lock();
        let envelope = inner.envelope(event);
        inner.dispatch(envelope);
    }

    /// The last envelope again, as Slack retries one it thinks was not acknowledged
    /// (a new `envelope_id`, `retry_attempt` + 1).
    pub fn redeliver_last(&self) {
        let mut inner = self.lock();
        let Some(mut envelope) = inner.last_envelope.clone() else {
            return;
        };
        inner.next += 1;
        let attempt = envelope["retry_attempt"].as_u64().unwrap_or(0) + 1;
        envelope["envelope_id"] = json!(format!("{:08x}-fake-retry-{}", inner.next, inner.next));
        envelope["retry_attempt"] = json!(attempt);
        envelope["retry_reason"] = json!("timeout");
        inner.dispatch(envelope);
    }

    /// Sends a raw text frame to the connected client.
    pub fn send_raw(&self, text: &str) {
        if let Some(tx) = &self.lock().current {
            let _ = tx.send(Command::Text(text.to_string()));
        }
    }

    /// A `disconnect` message (`refresh_requested`, `warning`, `link_disabled`).
    pub fn disconnect(&self, reason: &str) {
        self.send_raw(
            &json!({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}})
                .to_string(),
        );
    }

    /// Cuts the connection without a close frame.
    pub fn drop_connection(&self) {
        if let Some(tx) = self.lock().current.take() {
            let _ = tx.send(Command::Drop);
        }
    }

    /// Slack stops retrying what it could not deliver: envelopes waiting for a
    /// connection are dropped.
    pub fn expire_pending(&self) {
        let mut inner = self.lock();
        inner.pending.clear();
        inner.unacked.clear();
        inner.sent.clear();
    }

    /// The next `n` `conversations.history` calls answer `internal_error`.
    pub fn fail_history(&self, n: usize) {
        self.lock().history_failures = n;
    }

    /// (`unfurl_links`, `unfurl_media`) of every post.
    pub fn unfurls(&self) -> Vec<(String, String)> {
        self.lock().unfurls.clone()
    }

    pub fn fail_next_post(&self, failure: PostFailure) {
        self.lock().post_failures.push_back(failure);
    }

    /// Makes reactions fail with `code` (`None`: work again).
    pub fn fail_reactions(&self, code: Option<&str>) {
        self.lock().fail_reactions = code.map(str::to_string);
    }

    /// What the bot posted in `channel`, in order, as people see it.
    /// Files the bot shared, in order.
    pub fn shared_files(&self) -> Vec<SharedFile> {
        self.lock().shared_files.clone()
    }

    pub fn posted(&self, channel: &str) -> Vec<String> {
        self.lock()
            .posted
            .iter()
            .filter(|p| p.channel == channel)
            .map(|p| p.text.clone())
            .collect()
    }

    pub fn all_posted(&self) -> Vec<Posted> {
        self.lock().posted.clone()
    }

    /// The outcome of every `chat.postMessage`: `ok` or the error.
    pub fn post_attempts(&self) -> Vec<String> {
        self.lock().post_attempts.clone()
    }

    /// Web API methods called, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// `reactions.add` calls that worked in `channel`.
    pub fn reactions_added(&self, channel: &str) -> usize {
        self.lock()
            .reactions
            .iter()
            .filter(|r| r.0 == "reactions.add" && r.1 == channel)
            .count()
    }

    /// The reactions on messages now, as (channel, ts, name).
    pub fn reactions_now(&self) -> Vec<(String, String, String)> {
        let inner = self.lock();
        let mut now: Vec<(String, String, String)> = Vec::new();
        for (method, channel, ts, name) in &inner.reactions {
            let r = (channel.clone(), ts.clone(), name.clone());
            if method == "reactions.add" {
                now.push(r);
            } else {
                now.retain(|x| x != &r);
            }
        }
        now
    }

    /// Acknowledged envelopes, with how long each acknowledgement took.
    pub fn acks(&self) -> Vec<(String, Duration)> {
        self.lock().acks.clone()
    }

    /// Envelopes sent and not acknowledged.
    pub fn unacked(&self) -> usize {
        self.lock().unacked.len()
    }

    /// `apps.connections.open` calls.
    pub fn opens(&self) -> usize {
        self.lock().opens
    }

    /// WebSocket connections made.
    pub fn connects(&self) -> usize {
        self.lock().connects
    }

    pub fn connected(&self) -> bool {
        self.lock().current.is_some()
    }

    pub async fn wait_connected(&self, what: &str) {
        crate::wait_for(what, crate::DEADLINE, || async {
            self.connected().then_some(())
        })
        .await;
    }

    /// Waits (up to [`crate::DEADLINE`]) until `cond` holds of what the bot posted.
    pub async fn wait_posted(&self, what: &str, cond: impl Fn(&[Posted]) -> bool) -> Vec<Posted> {
        tokio::time::timeout(crate::DEADLINE, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let posted = self.all_posted();
                if cond(&posted) {
                    return posted;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what}; posted so far: {:#?}",
                self.all_posted()
            )
        })
    }
}

fn bot_message(channel: &str, text: &str, ts: &str) -> Value {
    json!({
        "type": "message", "channel": channel, "user": BOT_USER_ID, "bot_id": BOT_ID,
        "app_id": APP_ID, "text": text, "ts": ts, "team": TEAM_ID, "event_ts": ts,
        "channel_type": channel_type(channel),
        "bot_profile": {"id": BOT_ID, "app_id": APP_ID, "name": BOT_NAME, "team_id": TEAM_ID},
    })
}

fn ok(body: Value) -> Response {
    let mut body = body;
    body["ok"] = json!(true);
    ([("content-type", "application/json")], body.to_string()).into_response()
}

fn refuse(error: &str) -> Response {
    (
        [("content-type", "application/json")],
        json!({"ok": false, "error": error}).to_string(),
    )
        .into_response()
}

/// The request's parameters, form-encoded or JSON, and its token.
fn params(headers: &HeaderMap, body: &[u8]) -> (HashMap<String, String>, Option<String>) {
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let mut params: HashMap<String, String> = if json_body {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .map(|o| {
                o.into_iter()
                    .map(|(k, v)| {
                        let v = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        (k, v)
                    })
                    .collect()
            })
            .unwrap_or_default()
    } else {
        serde_urlencoded::from_bytes(body).unwrap_or_default()
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .or_else(|| params.remove("token"));
    (params, token)
}

/// `GET url_private_download`: the bytes with the bot token; without it, Slack's
/// redirect to its sign-in page.
async fn download_file(
    State((inner, _, _)): State<Shared>,
    Path((file, _name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = lock_inner(&inner);
    let id = file.rsplit('-').next().unwrap_or("").to_string();
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", state.bot_token));
    state.file_downloads.push((id.clone(), authorized));
    if !authorized {
        return (
            StatusCode::FOUND,
            [("location", "https://family.slack.com/?redir=%2Ffiles-pri")],
        )
            .into_response();
    }
    match state.user_files.get(&id) {
        Some(bytes) => (StatusCode::OK, bytes.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "file_not_found").into_response(),
    }
}

/// `POST {upload_url}`: a file's bytes, raw or as the one field of a multipart form
/// (Slack takes both; `@slack/web-api` sends a form).
async fn upload_file(
    State((inner, _, _)): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = if content_type.starts_with("multipart/form-data") {
        use axum::extract::FromRequest;
        let Ok(request) = axum::http::Request::builder()
            .header("content-type", &content_type)
            .body(axum::body::Body::from(body))
        else {
            return (StatusCode::BAD_REQUEST, "bad form").into_response();
        };
        let Ok(mut form) = axum::extract::Multipart::from_request(request, &()).await else {
            return (StatusCode::BAD_REQUEST, "bad form").into_response();
        };
        match form.next_field().await {
            Ok(Some(field)) => match field.bytes().await {
                Ok(b) => b.to_vec(),
                Err(_) => return (StatusCode::BAD_REQUEST, "bad form").into_response(),
            },
            _ => return (StatusCode::BAD_REQUEST, "no file").into_response(),
        }
    } else {
        body.to_vec()
    };
    let had_token = headers.contains_key("authorization");
    let mut state = lock_inner(&inner);
    match state.uploads.get_mut(&id) {
        Some((_, _, slot)) => {
            *slot = Some((bytes.clone(), had_token));
            (StatusCode::OK, format!("OK - {}", bytes.len())).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such upload").into_response(),
    }
}

async fn web_api(
    State((inner, changed, socket_url)): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (p, token) = params(&headers, &body);
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    let mut state = lock_inner(&inner);
    state.calls.push(method.clone());
    let token = token.unwrap_or_default();
    if method == "apps.connections.open" {
        if token == state.bot_token {
            return refuse("not_allowed_token_type");
        }
        if token != state.app_token {
            return refuse("invalid_auth");
        }
        state.opens += 1;
        state.next += 1;
        let ticket = format!("ticket-{}", state.next);
        state.tickets.push(ticket.clone());
        return ok(json!({"url": format!("{socket_url}/link/?ticket={ticket}&app_id={APP_ID}")}));
    }
    if token == state.app_token {
        return refuse("not_allowed_token_type");
    }
    if token != state.bot_token {
        return refuse(if token.is_empty() {
            "not_authed"
        } else {
            "invalid_auth"
        });
    }
    let response = match method.as_str() {
        "auth.test" => ok(json!({
            "url": "https://family.slack.com/", "team": TEAM_NAME, "user": BOT_NAME,
            "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": false,
        })),
        "chat.postMessage" => {
            let channel = get("channel").to_string();
            let text = get("text").to_string();
            let failure = state.post_failures.pop_front();
            match failure {
                Some(PostFailure::RateLimited(secs)) => {
                    state.post_attempts.push("ratelimited".into());
                    let mut r = (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("content-type", "application/json")],
                        json!({"ok": false, "error": "ratelimited"}).to_string(),
                    )
                        .into_response();
                    r.headers_mut()
                        .insert("retry-after", secs.to_string().parse().expect("header"));
                    return r;
                }
                Some(PostFailure::Error(code)) => {
                    state.post_attempts.push(code.clone());
                    return refuse(&code);
                }
                _ if !known_channel(&channel) => {
                    state.post_attempts.push("channel_not_found".into());
                    return refuse("channel_not_found");
                }
                _ if text.trim().is_empty() => {
                    state.post_attempts.push("no_text".into());
                    return refuse("no_text");
                }
                cut => {
                    state.post_attempts.push("ok".into());
                    let ts = state.next_ts();
                    state.posted.push(Posted {
                        channel: channel.clone(),
                        text: unescape(&text),
                        ts: ts.clone(),
                    });
                    let mut message = bot_message(&channel, &text, &ts);
                    if let Ok(metadata) = serde_json::from_str::<Value>(get("metadata")) {
                        message["metadata"] = metadata;
                    }
                    state.unfurls.push((
                        get("unfurl_links").to_string(),
                        get("unfurl_media").to_string(),
                    ));
                    state
                        .history
                        .entry(channel.clone())
                        .or_default()
                        .push(message.clone());
                    // Slack shows a bot its own messages too.
                    let envelope = state.envelope(message.clone());
                    state.dispatch(envelope);
                    drop(state);
                    changed.notify_waiters();
                    if matches!(cut, Some(PostFailure::PostedThenCut)) {
                        return (StatusCode::BAD_GATEWAY, "the connection was cut").into_response();
                    }
                    return ok(json!({"channel": channel, "ts": ts, "message": message}));
                }
            }
        }
        "files.getUploadURLExternal" => {
            let filename = get("filename").to_string();
            let Ok(length) = get("length").parse::<usize>() else {
                return refuse("invalid_arguments");
            };
            if filename.is_empty() || length == 0 {
                return refuse("invalid_arguments");
            }
            state.next += 1;
            let id = format!("F0FILE{:04}", state.next);
            let url = format!("{}/upload/{id}", state.root);
            state.uploads.insert(id.clone(), (filename, length, None));
            ok(json!({"upload_url": url, "file_id": id}))
        }
        "files.completeUploadExternal" => {
            let Ok(files) = serde_json::from_str::<Vec<Value>>(get("files")) else {
                return refuse("invalid_arguments");
            };
            let channel = get("channel_id").to_string();
            if !channel.is_empty() && !known_channel(&channel) {
                return refuse("channel_not_found");
            }
            let comment = p.get("initial_comment").map(|c| unescape(c));
            let mut done = Vec::new();
            for f in &files {
                let id = f["id"].as_str().unwrap_or("");
                let Some((filename, length, Some((bytes, had_token)))) =
                    state.uploads.get(id).cloned()
                else {
                    return refuse("file_not_found");
                };
                if bytes.len() != length {
                    return refuse("file_upload_size_mismatch");
                }
                let title = f["title"].as_str().unwrap_or(&filename).to_string();
                state.shared_files.push(SharedFile {
                    channel: channel.clone(),
                    title: title.clone(),
                    bytes,
                    comment: comment.clone(),
                    upload_had_token: had_token,
                });
                done.push(json!({"id": id, "title": title, "name": filename}));
            }
            drop(state);
            changed.notify_waiters();
            return ok(json!({"files": done}));
        }
        "conversations.info" => {
            let channel = get("channel");
            let info = match channel {
                CHANNEL_ID => {
                    json!({"id": channel, "name": CHANNEL_NAME, "is_channel": true, "is_group": false,
                                      "is_im": false, "is_mpim": false, "is_private": false, "is_member": true})
                }
                PRIVATE_ID => {
                    json!({"id": channel, "name": PRIVATE_NAME, "is_channel": false, "is_group": true,
                                      "is_im": false, "is_mpim": false, "is_private": true, "is_member": true})
                }
                MPIM_ID => {
                    json!({"id": channel, "name": "mpdm-bob--carol--andy-1", "is_channel": false,
                                   "is_group": true, "is_im": false, "is_mpim": true, "is_private": true})
                }
                DM_ID => {
                    json!({"id": channel, "is_im": true, "user": USER_ID, "is_user_deleted": false})
                }
                _ => return refuse("channel_not_found"),
            };
            ok(json!({"channel": info}))
        }
        "users.info" => {
            let user = get("user");
            let (name, display, real) = match user {
                USER_ID => ("bob", USER_DISPLAY_NAME, "Bob Builder"),
                OTHER_USER_ID => ("carol", "", "Carol Jones"),
                BOT_USER_ID => (BOT_NAME, "", "Andy"),
                _ => return refuse("user_not_found"),
            };
            ok(
                json!({"user": {"id": user, "team_id": TEAM_ID, "name": name, "real_name": real,
                               "profile": {"display_name": display, "real_name": real}}}),
            )
        }
        "conversations.history" => {
            let channel = get("channel");
            if !known_channel(channel) {
                return refuse("channel_not_found");
            }
            if state.history_failures > 0 {
                state.history_failures -= 1;
                return refuse("internal_error");
            }
            // Newest first, `limit` at a time, older pages through `cursor`.
            let oldest: f64 = get("oldest").parse().unwrap_or(0.0);
            let limit: usize = get("limit").parse().unwrap_or(100).clamp(1, 999);
            let offset: usize = get("cursor")
                .strip_prefix("off:")
                .and_then(|o| o.parse().ok())
                .unwrap_or(0);
            let with_metadata = get("include_all_metadata") == "true";
            let mut messages: Vec<Value> = state
                .history
                .get(channel)
                .into_iter()
                .flatten()
                .filter(|m| {
                    m["ts"]
                        .as_str()
                        .and_then(|t| t.parse::<f64>().ok())
                        .is_some_and(|t| t > oldest)
                })
                .map(|m| {
                    let mut m = m.clone();
                    if let Some(o) = m.as_object_mut() {
                        // History entries do not name their channel.
                        o.remove("channel");
                        o.remove("channel_type");
                        if !with_metadata {
                            o.remove("metadata");
                        }
                    }
                    m
                })
                .collect();
            messages.reverse();
            let rest: Vec<Value> = messages.into_iter().skip(offset).collect();
            let has_more = rest.len() > limit;
            let page: Vec<Value> = rest.into_iter().take(limit).collect();
            let next = if has_more {
                format!("off:{}", offset + limit)
            } else {
                String::new()
            };
            ok(json!({"messages": page, "has_more": has_more,
                      "response_metadata": {"next_cursor": next}}))
        }
        "reactions.add" | "reactions.remove" => {
            if let Some(code) = state.fail_reactions.clone() {
                return refuse(&code);
            }
            let r = (
                method.clone(),
                get("channel").to_string(),
                get("timestamp").to_string(),
                get("name").to_string(),
            );
            let on_now = state
                .reactions
                .iter()
                .filter(|x| x.1 == r.1 && x.2 == r.2 && x.3 == r.3)
                .fold(false, |_, x| x.0 == "reactions.add");
            if method == "reactions.add" && on_now {
                return refuse("already_reacted");
            }
            if method == "reactions.remove" && !on_now {
                return refuse("no_reaction");
            }
            state.reactions.push(r);
            drop(state);
            changed.notify_waiters();
            return ok(json!({}));
        }
        _ => refuse("unknown_method"),
    };
    drop(state);
    changed.notify_waiters();
    response
}

fn requeue_unacked(state: &mut Inner) {
    let mut unacked: Vec<(String, Instant)> = state.unacked.drain().collect();
    // Oldest first, ahead of anything that came in since.
    unacked.sort_by_key(|(_, at)| *at);
    for (id, _) in unacked.into_iter().rev() {
        let Some(mut envelope) = state.sent.remove(&id) else {
            continue;
        };
        state.next += 1;
        let attempt = envelope["retry_attempt"].as_u64().unwrap_or(0) + 1;
        envelope["envelope_id"] = json!(format!("{:08x}-fake-retry-{}", state.next, state.next));
        envelope["retry_attempt"] = json!(attempt);
        envelope["retry_reason"] = json!("timeout");
        state.pending.push_front(envelope);
    }
}

async fn accept_sockets(listener: tokio::net::TcpListener, shared: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut ticket = String::new();
            // The callback's type is tungstenite's, error response and all.
            #[allow(clippy::result_large_err)]
            let callback =
                |request: &tokio_tungstenite::tungstenite::handshake::server::Request, response| {
                    ticket = request
                        .uri()
                        .query()
                        .unwrap_or("")
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("ticket="))
                        .unwrap_or("")
                        .to_string();
                    Ok(response)
                };
            if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                serve_socket(ws, ticket, shared).await;
            }
        });
    }
}

async fn serve_socket(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ticket: String,
    shared: Shared,
) {
    let (inner, changed, _) = shared;
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let valid = {
        let mut state = lock_inner(&inner);
        // Each ticket opens one connection.
        let found = state.tickets.iter().position(|t| *t == ticket);
        if let Some(i) = found {
            state.tickets.remove(i);
        }
        found.is_some()
    };
    if !valid {
        let _ = ws.close(None).await;
        return;
    }
    {
        let mut state = lock_inner(&inner);
        state.connects += 1;
        let hello = json!({
            "type": "hello", "num_connections": 1,
            "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        });
        let _ = tx.send(Command::Text(hello.to_string()));
        while let Some(envelope) = state.pending.pop_front() {
            if let Some(id) = envelope["envelope_id"].as_str() {
                state.unacked.insert(id.to_string(), Instant::now());
                state.sent.insert(id.to_string(), envelope.clone());
            }
            let _ = tx.send(Command::Text(envelope.to_string()));
        }
        state.current = Some(tx.clone());
    }
    changed.notify_waiters();
    // Slack pings; @slack/socket-mode gives up on a server that does not.
    let mut ping = tokio::time::interval(Duration::from_secs(5));
    // Envelopes this connection never acknowledged: Slack retries them, on the next
    // connection, with `retry_attempt` + 1 and a new `envelope_id`.
    let end = |inner: &Mutex<Inner>| {
        let mut state = lock_inner(inner);
        if state.current.as_ref().is_some_and(|t| t.same_channel(&tx)) {
            state.current = None;
        }
        requeue_unacked(&mut state);
    };
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if ws.send(Frame::Ping(b"fake".to_vec().into())).await.is_err() {
                    end(&inner);
                    return;
                }
            }
            command = rx.recv() => match command {
                Some(Command::Text(t)) => {
                    if ws.send(Frame::text(t)).await.is_err() {
                        end(&inner);
                        return;
                    }
                }
                Some(Command::Drop) | None => {
                    requeue_unacked(&mut lock_inner(&inner));
                    return;
                }
            },
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Frame::Text(text))) => text,
                    // Reading on after a close frame sends tungstenite's reply, so the
                    // closing handshake completes as with Slack.
                    Some(Ok(Frame::Close(_))) => {
                        end(&inner);
                        changed.notify_waiters();
                        continue;
                    }
                    None | Some(Err(_)) => {
                        end(&inner);
                        changed.notify_waiters();
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                if let Some(id) = v["envelope_id"].as_str() {
                    let mut state = lock_inner(&inner);
                    if let Some(sent) = state.unacked.remove(id) {
                        state.acks.push((id.to_string(), sent.elapsed()));
                    }
                    state.sent.remove(id);
                    drop(state);
                    changed.notify_waiters();
                }
            }
        }
    }
}
