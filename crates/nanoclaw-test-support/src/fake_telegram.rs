//! A fake Telegram Bot API speaking the real HTTP/JSON shapes: `POST /bot{token}/{method}`
//! with JSON bodies, `{"ok":true,"result":…}` answers and `{"ok":false,"error_code",
//! "description","parameters":{"retry_after"}}` errors. `getUpdates` long-polls and
//! confirms updates below `offset`, as the real API does. Tests inject platform traffic
//! (user messages, the bot's own messages, malformed updates), failures (429 on send,
//! 409 on poll), and dropped connections (every open TCP connection cut).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const BOT_ID: i64 = 7_000_001;
pub const BOT_USERNAME: &str = "nanoclaw_test_bot";
/// Telegram's message limit in UTF-16 code units.
pub const MAX_MESSAGE: usize = 4096;

/// A message the bot sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub chat_id: i64,
    pub text: String,
}

/// A file the bot uploaded (`sendDocument` / `sendPhoto`, multipart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentFile {
    pub chat_id: i64,
    /// `sendDocument` or `sendPhoto`.
    pub method: String,
    pub file_name: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub caption: Option<String>,
}

/// A refusal of `sendMessage`.
#[derive(Debug, Clone)]
pub struct SendFailure {
    pub code: u16,
    pub description: String,
    pub retry_after: Option<u64>,
    pub migrate_to_chat_id: Option<i64>,
}

impl SendFailure {
    pub fn new(code: u16, description: &str) -> SendFailure {
        SendFailure {
            code,
            description: description.into(),
            retry_after: None,
            migrate_to_chat_id: None,
        }
    }
}

#[derive(Default)]
struct Inner {
    token: String,
    next_update_id: i64,
    next_message_id: i64,
    /// Unconfirmed updates, oldest first.
    updates: VecDeque<Value>,
    sent: Vec<Sent>,
    actions: Vec<(i64, String)>,
    /// How the next sends fail.
    send_failures: VecDeque<SendFailure>,
    /// The next polls answer 409.
    poll_409: usize,
    /// Typing requests fail with 500.
    typing_fails: bool,
    /// The next getMe calls fail with 500.
    get_me_failures: usize,
    /// Offsets seen by getUpdates.
    poll_offsets: Vec<i64>,
    /// Every update ever queued, for redelivery.
    history: Vec<Value>,
    /// When each sendMessage arrived and the status it got.
    send_attempts: Vec<(std::time::Instant, u16)>,
    /// Files users sent: file_id → (file_path, bytes), served by `getFile` and
    /// `GET /file/bot{token}/{file_path}`.
    files: std::collections::HashMap<String, (String, Vec<u8>)>,
    /// How many file downloads were served.
    downloads: usize,
    /// Files the bot uploaded.
    uploads: Vec<SentFile>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
    /// A second handle on every accepted connection, to cut it from our side.
    connections: Mutex<Vec<std::net::TcpStream>>,
}

pub struct FakeTelegram {
    /// The API root to configure (`TELEGRAM_API_URL`).
    pub url: String,
    pub token: String,
    shared: Arc<Shared>,
    server: Mutex<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort();
    }
}

/// A chat as it appears in updates.
#[derive(Debug, Clone)]
pub struct Chat {
    pub id: i64,
    pub kind: &'static str,
    pub title: Option<String>,
}

impl Chat {
    pub fn group(id: i64, title: &str) -> Chat {
        Chat {
            id,
            kind: "supergroup",
            title: Some(title.into()),
        }
    }
    pub fn private(id: i64) -> Chat {
        Chat {
            id,
            kind: "private",
            title: None,
        }
    }
    fn json(&self) -> Value {
        let mut v = json!({"id": self.id, "type": self.kind});
        match &self.title {
            Some(t) => v["title"] = json!(t),
            None => v["first_name"] = json!("Jo"),
        }
        v
    }
}

/// A user as it appears in updates.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub first_name: String,
}

impl User {
    pub fn new(id: i64, first_name: &str) -> User {
        User {
            id,
            first_name: first_name.into(),
        }
    }
}

impl FakeTelegram {
    pub async fn start(token: &str) -> FakeTelegram {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                token: token.into(),
                next_update_id: 500,
                next_message_id: 1,
                ..Default::default()
            }),
            changed: Notify::new(),
            connections: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("fake Telegram cannot listen: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake Telegram has no address: {e}"))
            .port();
        let server = serve(listener, Arc::clone(&shared));
        FakeTelegram {
            url: format!("http://127.0.0.1:{port}"),
            token: token.into(),
            shared,
            server: Mutex::new(server),
        }
    }

    /// Cuts every open connection, including long polls in flight (like a network
    /// failure); the server keeps listening with the same state.
    pub async fn drop_connections(&self) {
        let connections: Vec<std::net::TcpStream> = std::mem::take(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for c in connections {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_update(&self, update_body: Value) -> i64 {
        let id = {
            let mut st = self.lock();
            st.next_update_id += 1;
            let id = st.next_update_id;
            let mut update = update_body;
            update["update_id"] = json!(id);
            st.history.push(update.clone());
            st.updates.push_back(update);
            id
        };
        self.shared.changed.notify_waiters();
        id
    }

    fn message(&self, chat: &Chat, from: Value, text: &str) -> (i64, Value) {
        let message_id = {
            let mut st = self.lock();
            st.next_message_id += 1;
            st.next_message_id
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        (
            message_id,
            json!({"message": {"message_id": message_id, "date": now, "chat": chat.json(), "from": from, "text": text}}),
        )
    }

    /// A user writes in a chat; returns the message id.
    pub fn user_says(&self, chat: &Chat, user: &User, text: &str) -> i64 {
        let (id, update) = self.message(
            chat,
            json!({"id": user.id, "is_bot": false, "first_name": user.first_name}),
            text,
        );
        self.push_update(update);
        id
    }

    /// The bot's own message comes back as an update (as with channel posts or a second
    /// client of the same account).
    pub fn bot_says(&self, chat: &Chat, text: &str) -> i64 {
        let (id, update) = self.message(
            chat,
            json!({"id": BOT_ID, "is_bot": true, "first_name": "Andy", "username": BOT_USERNAME}),
            text,
        );
        self.push_update(update);
        id
    }

    /// A user sends a photo (Telegram offers it in sizes; this one in two, the larger
    /// being `bytes`); returns the message id.
    pub fn user_sends_photo(
        &self,
        chat: &Chat,
        user: &User,
        bytes: &[u8],
        caption: Option<&str>,
    ) -> i64 {
        let small = self.add_file("photos/file_0.jpg", bytes[..bytes.len().min(64)].to_vec());
        let large = self.add_file("photos/file_1.jpg", bytes.to_vec());
        let (id, mut update) = self.media_message(chat, user);
        let message = &mut update["message"];
        message["photo"] = json!([
            {"file_id": small, "file_unique_id": format!("u{small}"), "width": 90, "height": 90, "file_size": bytes.len().min(64)},
            {"file_id": large, "file_unique_id": format!("u{large}"), "width": 800, "height": 600, "file_size": bytes.len()},
        ]);
        if let Some(c) = caption {
            message["caption"] = json!(c);
        }
        self.push_update(update);
        id
    }

    /// A user sends a document; returns the message id.
    pub fn user_sends_document(&self, chat: &Chat, user: &User, name: &str, bytes: &[u8]) -> i64 {
        let file = self.add_file(&format!("documents/file_{}", name.len()), bytes.to_vec());
        let (id, mut update) = self.media_message(chat, user);
        let message = &mut update["message"];
        message["document"] = json!({"file_id": file, "file_unique_id": format!("u{file}"),
            "file_name": name, "mime_type": "application/octet-stream", "file_size": bytes.len()});
        self.push_update(update);
        id
    }

    /// A user sends a voice note (OGG/Opus, as Telegram records them); returns the
    /// message id.
    pub fn user_sends_voice(&self, chat: &Chat, user: &User, bytes: &[u8]) -> i64 {
        let file = self.add_file(&format!("voice/file_{}.oga", bytes.len()), bytes.to_vec());
        let (id, mut update) = self.media_message(chat, user);
        update["message"]["voice"] = json!({"file_id": file, "file_unique_id": format!("u{file}"),
            "duration": 2, "mime_type": "audio/ogg", "file_size": bytes.len()});
        self.push_update(update);
        id
    }

    /// A message from `user` without text, for a file to be attached to.
    fn media_message(&self, chat: &Chat, user: &User) -> (i64, Value) {
        let (id, mut update) = self.message(
            chat,
            json!({"id": user.id, "is_bot": false, "first_name": user.first_name}),
            "",
        );
        if let Some(m) = update["message"].as_object_mut() {
            m.remove("text");
        }
        (id, update)
    }

    fn add_file(&self, path: &str, bytes: Vec<u8>) -> String {
        let mut st = self.lock();
        let id = format!("F{}", st.files.len() + 1);
        st.files.insert(id.clone(), (format!("{id}/{path}"), bytes));
        id
    }

    /// How many files were downloaded.
    pub fn downloads(&self) -> usize {
        self.lock().downloads
    }

    /// Queues an update exactly as given (plus an update_id).
    pub fn raw_update(&self, body: Value) -> i64 {
        self.push_update(body)
    }

    /// Delivers the last queued update again under a new update_id (a redelivery).
    pub fn redeliver_last(&self) {
        let last = self.lock().history.last().cloned();
        if let Some(mut update) = last
            && let Some(map) = update.as_object_mut()
        {
            map.remove("update_id");
            self.push_update(update);
        }
    }

    pub fn fail_next_sends_with_429(&self, retry_after: u64, times: usize) {
        let mut failure = SendFailure::new(
            429,
            &format!("Too Many Requests: retry after {retry_after}"),
        );
        failure.retry_after = Some(retry_after);
        self.fail_next_sends(failure, times);
    }

    /// The next `times` sends are refused like this (a `200` lets them through, to fail
    /// a later one).
    pub fn fail_next_sends(&self, failure: SendFailure, times: usize) {
        let mut st = self.lock();
        for _ in 0..times {
            st.send_failures.push_back(failure.clone());
        }
    }

    /// The next `times` getMe calls fail (the Bot API is down at start-up).
    pub fn fail_next_get_me(&self, times: usize) {
        self.lock().get_me_failures = times;
    }

    pub fn conflict_next_polls(&self, times: usize) {
        self.lock().poll_409 = times;
    }

    pub fn fail_typing(&self, fail: bool) {
        self.lock().typing_fails = fail;
    }

    pub fn sent(&self, chat_id: i64) -> Vec<String> {
        self.lock()
            .sent
            .iter()
            .filter(|s| s.chat_id == chat_id)
            .map(|s| s.text.clone())
            .collect()
    }

    /// Files the bot uploaded to `chat_id`, in order.
    pub fn sent_files(&self, chat_id: i64) -> Vec<SentFile> {
        self.lock()
            .uploads
            .iter()
            .filter(|f| f.chat_id == chat_id)
            .cloned()
            .collect()
    }

    /// Waits until `n` files were uploaded to `chat_id`.
    pub async fn wait_files(&self, chat_id: i64, n: usize) -> Vec<SentFile> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let changed = self.shared.changed.notified();
            let files = self.sent_files(chat_id);
            if files.len() >= n {
                return files;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("expected {n} files in {chat_id}, got {files:?}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
        }
    }

    pub fn typing_actions(&self, chat_id: i64) -> usize {
        self.lock()
            .actions
            .iter()
            .filter(|(c, a)| *c == chat_id && a == "typing")
            .count()
    }

    /// When each `sendMessage` call arrived, and whether it got 429 or 200.
    pub fn send_attempts(&self) -> Vec<(std::time::Instant, u16)> {
        self.lock().send_attempts.clone()
    }

    pub fn poll_offsets(&self) -> Vec<i64> {
        self.lock().poll_offsets.clone()
    }

    /// Unconfirmed updates (not yet acknowledged by a higher offset).
    pub fn pending_updates(&self) -> usize {
        self.lock().updates.len()
    }

    /// Waits until the bot has sent at least `n` messages to `chat_id`.
    pub async fn wait_sent(&self, chat_id: i64, n: usize) -> Vec<String> {
        tokio::time::timeout(crate::DEADLINE, async {
            loop {
                let notified = self.shared.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let sent = self.sent(chat_id);
                if sent.len() >= n {
                    return sent;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the bot did not send {n} messages to {chat_id} in time; sent: {:?}",
                self.sent(chat_id)
            )
        })
    }
}

fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    use axum::serve::ListenerExt;
    use std::os::fd::AsFd;
    let keep = Arc::clone(&shared);
    let listener = listener.tap_io(move |tcp| {
        if let Ok(fd) = tcp.as_fd().try_clone_to_owned() {
            keep.connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(std::net::TcpStream::from(fd));
        }
    });
    let app = Router::new()
        .route("/{bot}/{method}", post(handle))
        .route("/file/{bot}/{*path}", axum::routing::get(download))
        .with_state(shared);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

fn ok(result: Value) -> Response {
    axum::Json(json!({"ok": true, "result": result})).into_response()
}

fn error(code: u16, description: &str, retry_after: Option<u64>) -> Response {
    let mut body = json!({"ok": false, "error_code": code, "description": description});
    if let Some(s) = retry_after {
        body["parameters"] = json!({"retry_after": s});
    }
    (
        axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::BAD_REQUEST),
        axum::Json(body),
    )
        .into_response()
}

fn error_with(code: u16, description: &str, parameters: Value) -> Response {
    (
        axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::BAD_REQUEST),
        axum::Json(json!({"ok": false, "error_code": code, "description": description, "parameters": parameters})),
    )
        .into_response()
}

/// `GET /file/bot{token}/{file_path}`: a file's bytes, as the Bot API serves them.
async fn download(
    State(shared): State<Arc<Shared>>,
    Path((bot, path)): Path<(String, String)>,
) -> Response {
    let mut st = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
    if bot.strip_prefix("bot") != Some(st.token.as_str()) {
        return error(401, "Unauthorized", None);
    }
    let found = st
        .files
        .values()
        .find(|(p, _)| *p == path)
        .map(|(_, b)| b.clone());
    match found {
        Some(bytes) => {
            st.downloads += 1;
            bytes.into_response()
        }
        None => error(404, "Not Found", None),
    }
}

/// `sendDocument` / `sendPhoto` with a `multipart/form-data` body, as bots upload files:
/// `chat_id`, an optional `caption` (at most 1024 characters) and the file in the field
/// the method names.
async fn upload(shared: &Arc<Shared>, method: &str, content_type: &str, body: Bytes) -> Response {
    use axum::extract::FromRequest;
    let field_name = if method == "sendPhoto" {
        "photo"
    } else {
        "document"
    };
    let request = match axum::http::Request::builder()
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
    {
        Ok(r) => r,
        Err(_) => return error(400, "Bad Request: bad multipart request", None),
    };
    let Ok(mut form) = axum::extract::Multipart::from_request(request, &()).await else {
        return error(400, "Bad Request: bad multipart request", None);
    };
    let (mut chat_id, mut caption, mut file) = (None, None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return error(400, "Bad Request: bad multipart request", None),
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let media_type = field.content_type().unwrap_or("").to_string();
        let Ok(bytes) = field.bytes().await else {
            return error(400, "Bad Request: bad multipart request", None);
        };
        match name.as_str() {
            "chat_id" => chat_id = String::from_utf8_lossy(&bytes).parse::<i64>().ok(),
            "caption" => caption = Some(String::from_utf8_lossy(&bytes).into_owned()),
            n if n == field_name => file = Some((file_name.unwrap_or_default(), media_type, bytes)),
            _ => {}
        }
    }
    let Some(chat_id) = chat_id else {
        return error(400, "Bad Request: chat_id is empty", None);
    };
    let Some((file_name, media_type, bytes)) = file.filter(|f| !f.2.is_empty()) else {
        return error(
            400,
            &format!("Bad Request: there is no {field_name} in the request"),
            None,
        );
    };
    if caption
        .as_ref()
        .is_some_and(|c| c.encode_utf16().count() > 1024)
    {
        return error(400, "Bad Request: message caption is too long", None);
    }
    let result = {
        let mut st = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.next_message_id += 1;
        st.uploads.push(SentFile {
            chat_id,
            method: method.to_string(),
            file_name: file_name.clone(),
            media_type,
            bytes: bytes.to_vec(),
            caption: caption.clone(),
        });
        let file = json!({"file_id": format!("up{}", st.next_message_id),
                          "file_unique_id": format!("uu{}", st.next_message_id), "file_size": bytes.len()});
        let mut message = json!({"message_id": st.next_message_id, "date": 0,
               "chat": {"id": chat_id, "type": "supergroup"},
               "from": {"id": BOT_ID, "is_bot": true, "first_name": "Andy", "username": BOT_USERNAME}});
        if method == "sendPhoto" {
            message["photo"] = json!([file]);
        } else {
            let mut document = file;
            document["file_name"] = json!(file_name);
            message["document"] = document;
        }
        if let Some(c) = caption {
            message["caption"] = json!(c);
        }
        message
    };
    shared.changed.notify_waiters();
    ok(result)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((bot, method)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let token_ok = {
        let st = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        bot.strip_prefix("bot") == Some(st.token.as_str())
    };
    if !token_ok {
        return error(401, "Unauthorized", None);
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("multipart/form-data") {
        return match method.as_str() {
            "sendDocument" | "sendPhoto" => upload(&shared, &method, content_type, body).await,
            _ => error(400, "Bad Request: unexpected multipart body", None),
        };
    }
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return error(400, "Bad Request: can't parse JSON", None),
        }
    };
    match method.as_str() {
        "getMe"
            if {
                let mut st = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
                let fail = st.get_me_failures > 0;
                st.get_me_failures = st.get_me_failures.saturating_sub(1);
                fail
            } =>
        {
            error(500, "Internal Server Error", None)
        }
        "getMe" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "Andy", "username": BOT_USERNAME,
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false
        })),
        "getUpdates" => get_updates(&shared, &body).await,
        "getFile" => {
            let st = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            match body["file_id"]
                .as_str()
                .and_then(|id| st.files.get(id).map(|f| (id, f)))
            {
                Some((id, (path, bytes))) => {
                    ok(json!({"file_id": id, "file_unique_id": format!("u{id}"),
                    "file_size": bytes.len(), "file_path": path}))
                }
                None => error(400, "Bad Request: invalid file_id", None),
            }
        }
        "sendMessage" => {
            let Some(chat_id) = body["chat_id"].as_i64() else {
                return error(400, "Bad Request: chat_id is empty", None);
            };
            let text = body["text"].as_str().unwrap_or("").to_string();
            if text.is_empty() {
                return error(400, "Bad Request: message text is empty", None);
            }
            if text.encode_utf16().count() > MAX_MESSAGE {
                return error(400, "Bad Request: message is too long", None);
            }
            let result = {
                let mut st = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
                let now = std::time::Instant::now();
                // A queued 200 lets that one send through.
                if let Some(f) = st.send_failures.pop_front().filter(|f| f.code != 200) {
                    st.send_attempts.push((now, f.code));
                    drop(st);
                    let mut response = error(f.code, &f.description, f.retry_after);
                    if let Some(id) = f.migrate_to_chat_id {
                        response =
                            error_with(f.code, &f.description, json!({"migrate_to_chat_id": id}));
                    }
                    return response;
                }
                st.send_attempts.push((now, 200));
                st.next_message_id += 1;
                st.sent.push(Sent {
                    chat_id,
                    text: text.clone(),
                });
                json!({"message_id": st.next_message_id, "date": 0, "chat": {"id": chat_id, "type": "supergroup"},
                       "from": {"id": BOT_ID, "is_bot": true, "first_name": "Andy", "username": BOT_USERNAME},
                       "text": text})
            };
            shared.changed.notify_waiters();
            ok(result)
        }
        "sendChatAction" => {
            let mut st = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            if st.typing_fails {
                return error(500, "Internal Server Error", None);
            }
            let chat_id = body["chat_id"].as_i64().unwrap_or(0);
            let action = body["action"].as_str().unwrap_or("").to_string();
            st.actions.push((chat_id, action));
            drop(st);
            shared.changed.notify_waiters();
            ok(json!(true))
        }
        _ => error(404, "Not Found", None),
    }
}

async fn get_updates(shared: &Arc<Shared>, body: &Value) -> Response {
    let offset = body["offset"].as_i64().unwrap_or(0);
    let timeout = body["timeout"].as_u64().unwrap_or(0).min(50);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    {
        let mut st = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.poll_offsets.push(offset);
        if st.poll_409 > 0 {
            st.poll_409 -= 1;
            return error(
                409,
                "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                None,
            );
        }
    }
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ready: Vec<Value> = {
            let mut st = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            // An offset confirms every update below it.
            while st
                .updates
                .front()
                .is_some_and(|u| u["update_id"].as_i64().unwrap_or(0) < offset)
            {
                st.updates.pop_front();
            }
            st.updates.iter().take(100).cloned().collect()
        };
        if !ready.is_empty() || tokio::time::Instant::now() >= deadline {
            return ok(json!(ready));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return ok(json!([]));
        }
    }
}
