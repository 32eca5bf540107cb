//! Telegram over the Bot API (SPEC §13): long polling with `getUpdates`, `sendMessage`,
//! `sendChatAction`. JIDs are `tg:{chat_id}`.
//!
//! - The polling offset is persisted (`router_state`) only after the batch's messages are
//!   stored, so a restart neither skips updates nor processes one twice (a redelivered
//!   message has the same id and is ignored by the store).
//! - `@botusername` mentions, and replies to the bot, become the assistant trigger.
//! - Replies longer than 4096 UTF-16 units are split at word boundaries; a piece that was
//!   sent is never sent again when a later one fails and the reply is retried.
//! - 429 answers are honoured (`retry_after`); 401/409 and network failures back off and
//!   retry forever. The bot token is part of every API URL, so no URL is ever logged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::watch;

use nanoclaw_channel::files;
use nanoclaw_channel::text::{Units, split, starts_with_word};
use nanoclaw_channel::{
    Channel, ChannelError, ChannelHost, ChatMeta, Message, OutboundFile, OutboundMessage,
    PieceLedger, SendRetry, TypingTickers, VerifyError,
};

pub const PREFIX: &str = "tg:";
/// Telegram's limit for one message, in UTF-16 code units.
pub const MAX_MESSAGE: usize = 4096;
const OFFSET_KEY: &str = "telegram:update_offset";
/// `…{outbox id}` → pieces of that long reply already sent, so a restart resumes it.
const PARTIAL_SEND_PREFIX: &str = "telegram:partial_send:";
/// How long one `sendMessage` may take (below delivery's own limit on a whole send).
const SEND_CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Long-poll duration asked of `getUpdates`.
const POLL_SECONDS: u64 = 25;
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Typing indicators last about 5 s; renewed this often while a run works.
const TYPING_EVERY: Duration = Duration::from_millis(4500);
/// A run's typing indicator is never renewed for longer than this.
const TYPING_MAX: Duration = Duration::from_secs(600);

/// Why a Bot API call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFailure {
    /// Could not talk to the API (connection, timeout, unreadable answer).
    Network(String),
    /// 429: wait this many seconds.
    RetryAfter(u64),
    /// 401/404: the token is wrong.
    Unauthorized(String),
    /// 409: another client polls with this token (or a webhook is set).
    Conflict(String),
    /// The group became a supergroup with this new chat id.
    Migrated(i64),
    /// Any other refusal.
    Api { code: i64, description: String },
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiFailure::Network(e) => write!(f, "cannot reach the Telegram Bot API: {e}"),
            ApiFailure::RetryAfter(s) => write!(f, "rate limited by Telegram for {s} s"),
            ApiFailure::Unauthorized(d) => write!(
                f,
                "Telegram rejected TELEGRAM_BOT_TOKEN ({d}); check the token from @BotFather"
            ),
            ApiFailure::Conflict(d) => write!(
                f,
                "another program is receiving this bot's updates ({d}); stop it or delete its webhook"
            ),
            ApiFailure::Migrated(id) => write!(
                f,
                "the group was upgraded and is now tg:{id}; register that chat instead (nanoclaw groups add --jid tg:{id} …) and remove the old one"
            ),
            ApiFailure::Api { code, description } => {
                write!(f, "Telegram refused the request ({code}: {description})")
            }
        }
    }
}

#[derive(Debug, Clone)]
struct BotIdentity {
    id: i64,
    username: String,
}

pub struct Telegram {
    /// `{api}/bot{token}`: secret, never logged.
    base: String,
    /// `{api}/file/bot{token}`, where files are downloaded: secret too.
    files_base: String,
    client: reqwest::Client,
    assistant_name: String,
    me: Mutex<Option<BotIdentity>>,
    connected: AtomicBool,
    /// outbox id → pieces of that reply already sent.
    sent_pieces: PieceLedger,
    typing: TypingTickers,
    /// The daemon, once `run` started (for state that must survive a restart).
    host: Mutex<Option<Arc<dyn ChannelHost>>>,
}

impl Telegram {
    /// `api_url` is the Bot API root (`https://api.telegram.org`).
    pub fn new(api_url: &str, token: &str, assistant_name: &str) -> Result<Arc<Telegram>, String> {
        let token = token.trim();
        if token.is_empty()
            || !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '_' || c == '-')
        {
            return Err(
                "TELEGRAM_BOT_TOKEN does not look like a bot token (digits, `:`, then letters, digits, `_` or `-`); copy it again from @BotFather".into(),
            );
        }
        // The token is part of every URL: never over plain http to another machine.
        nanoclaw_channel::http::check_endpoint("TELEGRAM_API_URL", api_url)?;
        let client = nanoclaw_channel::http::client()
            .connect_timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| format!("cannot create the Telegram HTTP client: {e}"))?;
        Ok(Arc::new(Telegram {
            base: format!("{}/bot{token}", api_url.trim_end_matches('/')),
            files_base: format!("{}/file/bot{token}", api_url.trim_end_matches('/')),
            client,
            assistant_name: assistant_name.to_string(),
            me: Mutex::new(None),
            connected: AtomicBool::new(false),
            sent_pieces: PieceLedger::new("telegram", PARTIAL_SEND_PREFIX),
            typing: TypingTickers::new(TYPING_EVERY, TYPING_MAX),
            host: Mutex::new(None),
        }))
    }

    /// Calls a Bot API method with a JSON body.
    pub async fn call(
        &self,
        method: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, ApiFailure> {
        let request = self
            .client
            .post(format!("{}/{method}", self.base))
            .json(body)
            .timeout(timeout);
        self.answer(method, request).await
    }

    /// Calls a Bot API method with a `multipart/form-data` body (file uploads).
    async fn upload(
        &self,
        method: &str,
        form: nanoclaw_channel::multipart::Form,
        timeout: Duration,
    ) -> Result<Value, ApiFailure> {
        let (content_type, body) = form.finish();
        let request = self
            .client
            .post(format!("{}/{method}", self.base))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .timeout(timeout);
        self.answer(method, request).await
    }

    async fn answer(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, ApiFailure> {
        let response = request
            .send()
            .await
            // The URL holds the token: never let it into an error message.
            .map_err(|e| ApiFailure::Network(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.map_err(|e| {
            ApiFailure::Network(format!(
                "unreadable answer to {method} (HTTP {status}): {}",
                e.without_url()
            ))
        })?;
        if answer["ok"].as_bool() == Some(true) {
            return Ok(answer["result"].clone());
        }
        let code = answer["error_code"].as_i64().unwrap_or(status as i64);
        let description = answer["description"]
            .as_str()
            .unwrap_or("no description")
            .chars()
            .take(300)
            .collect::<String>();
        Err(match code {
            429 => ApiFailure::RetryAfter(
                answer["parameters"]["retry_after"]
                    .as_u64()
                    .unwrap_or(5)
                    .clamp(1, 3600),
            ),
            401 | 404 => ApiFailure::Unauthorized(description),
            409 => ApiFailure::Conflict(description),
            _ => match answer["parameters"]["migrate_to_chat_id"].as_i64() {
                Some(id) => ApiFailure::Migrated(id),
                None => ApiFailure::Api { code, description },
            },
        })
    }

    fn chat_id(jid: &str) -> Result<Value, ChannelError> {
        let raw = jid.strip_prefix(PREFIX).unwrap_or(jid);
        match raw.parse::<i64>() {
            Ok(id) => Ok(json!(id)),
            Err(_) if raw.starts_with('@') && raw.len() > 1 => Ok(json!(raw)),
            Err(_) => Err(ChannelError::new(
                "telegram",
                format!("{jid} is not a Telegram chat (tg:<chat id>)"),
            )
            .with_retry(SendRetry::Never)),
        }
    }

    fn identity(&self) -> Option<BotIdentity> {
        self.me.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Turns one update into a chat and message to store; `None` for updates that carry
    /// no message we keep (edits, service messages, other update kinds).
    #[cfg(test)]
    fn inbound(&self, update: &Value) -> Option<(ChatMeta, Option<Message>)> {
        self.inbound_with_trigger(update, &format!("@{}", self.assistant_name))
    }

    /// The chat and message of an update; a message addressing the bot starts with
    /// `trigger` (the chat's group trigger).
    fn inbound_with_trigger(
        &self,
        update: &Value,
        trigger: &str,
    ) -> Option<(ChatMeta, Option<Message>)> {
        let msg = update
            .get("message")
            .or_else(|| update.get("channel_post"))?;
        let chat = msg.get("chat")?;
        let chat_id = chat["id"].as_i64()?;
        let message_id = msg["message_id"].as_i64()?;
        let jid = format!("{PREFIX}{chat_id}");
        let kind = chat["type"].as_str().unwrap_or("private");
        let person = |v: &Value| -> Option<String> {
            let first = v["first_name"].as_str().unwrap_or("");
            let last = v["last_name"].as_str().unwrap_or("");
            let full = format!("{first} {last}").trim().to_string();
            if !full.is_empty() {
                Some(full)
            } else {
                v["title"]
                    .as_str()
                    .or_else(|| v["username"].as_str())
                    .map(str::to_string)
            }
        };
        let timestamp = msg["date"]
            .as_i64()
            .filter(|s| *s > 0)
            .and_then(nanoclaw_channel::time::from_unix_seconds)
            .unwrap_or_else(nanoclaw_channel::time::now);
        let meta = ChatMeta {
            jid: jid.clone(),
            name: chat["title"]
                .as_str()
                .map(str::to_string)
                .or_else(|| person(chat)),
            timestamp: timestamp.clone(),
            channel: Some("telegram".into()),
            is_group: Some(kind != "private"),
        };
        let Some(mut content) = content_of(msg) else {
            return Some((meta, None));
        };
        // Anonymous admins and posts "as a channel" all share one placeholder `from`;
        // the chat they post as (`sender_chat`) is the real sender.
        let from = msg
            .get("sender_chat")
            .filter(|c| c["id"].as_i64().is_some())
            .or_else(|| msg.get("from"))
            .unwrap_or(chat);
        let me = self.identity();
        let from_me = me
            .as_ref()
            .is_some_and(|me| from["id"].as_i64() == Some(me.id));
        if let Some(me) = &me
            && !from_me
            && addresses_bot(msg, &content, me)
        {
            // "@mybot do X" reads as "@Andy do X"; a mention elsewhere keeps the text
            // whole behind the trigger.
            let handle = format!("@{}", me.username);
            if !me.username.is_empty() && starts_with_word(&content, &handle) {
                content = format!("{trigger}{}", &content[handle.len()..]);
            } else if !starts_with_word(&content, trigger) {
                content = format!("{trigger} {content}");
            }
        }
        let message = Message {
            id: message_id.to_string(),
            chat_jid: jid,
            sender: from["id"]
                .as_i64()
                .map(|id| id.to_string())
                .unwrap_or_else(|| chat_id.to_string()),
            sender_name: person(from).unwrap_or_else(|| "Unknown".into()),
            content,
            timestamp,
            is_from_me: from_me,
            is_bot_message: from_me,
            flagged: None,
        };
        Some((meta, Some(message)))
    }

    async fn connect(&self) -> Result<BotIdentity, ApiFailure> {
        let me = self
            .call("getMe", &json!({}), Duration::from_secs(30))
            .await?;
        let id = me["id"]
            .as_i64()
            .ok_or_else(|| ApiFailure::Network("getMe answered without an id".into()))?;
        let identity = BotIdentity {
            id,
            username: me["username"].as_str().unwrap_or("").to_string(),
        };
        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity.clone());
        Ok(identity)
    }

    /// One `getUpdates` round: stores what arrived, then persists the new offset.
    /// Returns how many updates came.
    async fn poll_once(
        &self,
        host: &dyn ChannelHost,
        offset: &mut i64,
    ) -> Result<usize, ApiFailure> {
        let body = json!({
            "offset": *offset,
            "timeout": POLL_SECONDS,
            "allowed_updates": ["message", "channel_post"],
        });
        let updates = self
            .call("getUpdates", &body, Duration::from_secs(POLL_SECONDS + 15))
            .await?;
        let Some(updates) = updates.as_array() else {
            return Err(ApiFailure::Network(
                "getUpdates did not answer a list".into(),
            ));
        };
        let mut next = *offset;
        for update in updates {
            let Some(update_id) = update["update_id"].as_i64() else {
                tracing::warn!("telegram: skipping an update without update_id");
                continue;
            };
            let chat_jid = update
                .get("message")
                .or_else(|| update.get("channel_post"))
                .and_then(|m| m["chat"]["id"].as_i64())
                .map(|id| format!("{PREFIX}{id}"));
            let trigger = match &chat_jid {
                Some(jid) => host.trigger_for(jid).await,
                None => None,
            }
            .unwrap_or_else(|| format!("@{}", self.assistant_name));
            match self.inbound_with_trigger(update, &trigger) {
                None => tracing::debug!(update_id, "telegram: update not kept"),
                Some((chat, None)) => {
                    if let Err(e) = host.chat_seen(chat).await {
                        tracing::warn!("telegram: cannot record chat metadata: {e}");
                    }
                }
                Some((chat, Some(mut message))) => {
                    if let Some(msg) = update.get("message").or_else(|| update.get("channel_post"))
                    {
                        self.save_media(host, msg, &mut message).await;
                    }
                    if let Err(e) = host.deliver(chat, message).await {
                        // Not stored: keep the offset here, so it is fetched again.
                        self.save_offset(host, next).await;
                        *offset = next;
                        return Err(ApiFailure::Network(format!("cannot store a message: {e}")));
                    }
                }
            }
            next = next.max(update_id + 1);
        }
        if next != *offset {
            self.save_offset(host, next).await;
            *offset = next;
        }
        Ok(updates.len())
    }

    async fn save_offset(&self, host: &dyn ChannelHost, offset: i64) {
        if let Err(e) = host.save_state(OFFSET_KEY, &offset.to_string()).await {
            tracing::warn!("telegram: cannot save the update offset: {e}");
        }
    }

    /// Sends one piece. Rate limits are not waited out here: delivery gets the wait and
    /// retries then, without holding up other chats.
    async fn send_piece(&self, chat_id: &Value, text: &str) -> Result<(), ChannelError> {
        let sent = self
            .call(
                "sendMessage",
                &json!({"chat_id": chat_id, "text": text}),
                SEND_CALL_TIMEOUT,
            )
            .await;
        Self::sent(sent)
    }

    /// Uploads a file, as a photo when Telegram would show it as one (JPEG or PNG up to
    /// 10 MB), otherwise as a document, with `caption` (at most [`MAX_CAPTION`]).
    async fn send_file(
        &self,
        chat_id: &Value,
        file: &OutboundFile,
        caption: &str,
    ) -> Result<(), ChannelError> {
        let bytes = file.read("telegram").await?;
        let media_type = file.media_type();
        let photo = matches!(media_type, "image/jpeg" | "image/png") && bytes.len() <= MAX_PHOTO;
        let (method, field) = if photo {
            ("sendPhoto", "photo")
        } else {
            ("sendDocument", "document")
        };
        let chat = match chat_id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut form = nanoclaw_channel::multipart::Form::new().text("chat_id", &chat);
        if !caption.is_empty() {
            form = form.text("caption", caption);
        }
        let form = form.file(field, &file.name, media_type, &bytes);
        let sent = self.upload(method, form, UPLOAD_TIMEOUT).await;
        Self::sent(sent)
    }

    /// A send's outcome as delivery needs it.
    fn sent(result: Result<Value, ApiFailure>) -> Result<(), ChannelError> {
        let failure = match result {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let retry = match &failure {
            ApiFailure::RetryAfter(seconds) => SendRetry::After(Duration::from_secs(*seconds)),
            // The bot was blocked, removed or never added, the chat is gone, or the
            // request is one Telegram will never accept: retrying cannot help.
            ApiFailure::Api {
                code: 400 | 403, ..
            }
            | ApiFailure::Migrated(_) => SendRetry::Never,
            _ => SendRetry::Later,
        };
        Err(ChannelError::new("telegram", failure.to_string()).with_retry(retry))
    }
}

/// Longest caption of a photo or document, in UTF-16 code units.
const MAX_CAPTION: usize = 1024;
/// Largest photo `sendPhoto` takes; larger images go as documents.
const MAX_PHOTO: usize = 10 << 20;
/// How long one upload may take (below delivery's limit on a send with a file).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(100);

/// Largest file the Bot API lets a bot download (`getFile`).
const MAX_FILE: u64 = 20 << 20;

/// The file a message carries, if any: its `file_id`, a name for the inbox and its size
/// as Telegram reports it. Of a photo's sizes, the largest the API lets us download.
fn media_file(msg: &Value) -> Option<(String, String, Option<u64>)> {
    let id = msg["message_id"].as_i64().unwrap_or(0);
    let size = |v: &Value| v["file_size"].as_u64();
    if let Some(sizes) = msg["photo"].as_array() {
        let best = sizes
            .iter()
            .filter(|p| size(p).is_none_or(|s| s <= MAX_FILE))
            .max_by_key(|p| size(p).unwrap_or(0))
            .or_else(|| sizes.last())?;
        return Some((
            best["file_id"].as_str()?.to_string(),
            format!("photo-{id}.jpg"),
            size(best),
        ));
    }
    for (kind, fallback) in [
        ("document", format!("document-{id}")),
        ("voice", format!("voice-{id}.ogg")),
        ("audio", format!("audio-{id}.mp3")),
        ("video", format!("video-{id}.mp4")),
    ] {
        let file = &msg[kind];
        if let Some(file_id) = file["file_id"].as_str() {
            let name = file["file_name"].as_str().unwrap_or(&fallback).to_string();
            return Some((file_id.to_string(), name, size(file)));
        }
    }
    None
}

impl Telegram {
    /// Saves the file a user sent into the group's inbox and names it in the message, so
    /// the agent can open it (and see a photo). A message seen before is not fetched
    /// again; a file that cannot be had is named with the reason.
    async fn save_media(&self, host: &dyn ChannelHost, msg: &Value, message: &mut Message) {
        let Some((file_id, name, size)) = media_file(msg) else {
            return;
        };
        if message.is_from_me || !files::wanted(host, message).await {
            return;
        }
        let note = match size {
            Some(s) if s > MAX_FILE => Some(files::too_large(
                &name,
                s,
                MAX_FILE,
                "Telegram lets bots download files up to",
            )),
            _ => match files::refused(host, &message.chat_jid, &name, size.unwrap_or(0)).await {
                Some(refused) => Some(refused),
                None => {
                    let fetched = self.download(&file_id).await;
                    files::save(host, "telegram", &message.chat_jid, &name, fetched).await
                }
            },
        };
        if let Some(note) = note {
            message.content = format!("{}\n{note}", message.content);
        }
    }

    /// A file's bytes: `getFile` for its path, then the file URL, at most [`MAX_FILE`].
    async fn download(&self, file_id: &str) -> Result<Vec<u8>, String> {
        let file = self
            .call("getFile", &json!({"file_id": file_id}), SEND_CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let path = file["file_path"]
            .as_str()
            // A relative path of plain segments only: nothing the URL could read as
            // another place on the server (no `..`, no `%2e`, no backslashes).
            .filter(|p| {
                p.split('/').all(|seg| {
                    !seg.is_empty()
                        && seg != "."
                        && seg != ".."
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                })
            })
            .ok_or("getFile gave no usable file_path")?;
        let request = self.client.get(format!("{}/{path}", self.files_base));
        files::fetch_capped(request, MAX_FILE).await
    }
}

/// The text of a message, or a short placeholder for media; `None` for service messages.
/// A caption is the message's text and comes first, as Discord's and Slack's text comes
/// before their attachments: "@Andy what is this? [Photo]" starts with the trigger, so a
/// captioned photo in a group that needs one is answered.
fn content_of(msg: &Value) -> Option<String> {
    if let Some(text) = msg["text"].as_str() {
        return Some(text.to_string());
    }
    let caption = msg["caption"]
        .as_str()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| format!("{c} "))
        .unwrap_or_default();
    let label = if msg.get("photo").is_some() {
        "[Photo]".to_string()
    } else if msg.get("video").is_some() {
        "[Video]".to_string()
    } else if msg.get("voice").is_some() {
        "[Voice message]".to_string()
    } else if msg.get("audio").is_some() {
        "[Audio]".to_string()
    } else if let Some(doc) = msg.get("document") {
        format!(
            "[Document: {}]",
            doc["file_name"].as_str().unwrap_or("file")
        )
    } else if let Some(sticker) = msg.get("sticker") {
        format!("[Sticker {}]", sticker["emoji"].as_str().unwrap_or("")).replace(" ]", "]")
    } else if msg.get("location").is_some() {
        "[Location]".to_string()
    } else if msg.get("contact").is_some() {
        "[Contact]".to_string()
    } else if msg.get("poll").is_some() {
        "[Poll]".to_string()
    } else {
        return None;
    };
    Some(format!("{caption}{label}"))
}

/// Whether `text` starts with `word` (ASCII case-insensitive) as a whole word.
/// Whether the message mentions the bot (`@username`) or replies to one of its messages.
fn addresses_bot(msg: &Value, content: &str, me: &BotIdentity) -> bool {
    let replied_to_bot = msg["reply_to_message"]["from"]["id"].as_i64() == Some(me.id);
    if replied_to_bot || me.username.is_empty() {
        return replied_to_bot;
    }
    // Usernames are ASCII: compare ASCII-case-insensitively on the original text (a
    // full lowercase could map other characters onto ASCII), as a whole word.
    let handle = format!("@{}", me.username);
    content.char_indices().any(|(at, c)| {
        c == '@'
            && content[..at]
                .chars()
                .next_back()
                .is_none_or(|p| !(p.is_alphanumeric() || p == '_'))
            && starts_with_word(&content[at..], &handle)
    })
}

async fn sleep_or_stop(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    }
}

#[async_trait]
impl Channel for Telegram {
    fn name(&self) -> &'static str {
        "telegram"
    }

    async fn verify(&self) -> Result<String, VerifyError> {
        match self
            .call("getMe", &json!({}), Duration::from_secs(15))
            .await
        {
            Ok(me) => Ok(format!(
                "the bot @{} (getMe)",
                me["username"].as_str().unwrap_or("?")
            )),
            Err(e @ ApiFailure::Unauthorized(_)) => Err(VerifyError::Refused(e.to_string())),
            Err(e @ ApiFailure::Api { code, .. }) if (400..500).contains(&code) => {
                Err(VerifyError::Refused(e.to_string()))
            }
            Err(e) => Err(VerifyError::Unreachable(e.to_string())),
        }
    }

    fn owns_jid(&self, jid: &str) -> bool {
        jid.starts_with(PREFIX)
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    async fn send(&self, message: &OutboundMessage) -> Result<(), ChannelError> {
        let chat_id = Telegram::chat_id(&message.chat_jid)?;
        let host = self.host.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(file) = &message.file else {
            let pieces = split(&message.text, MAX_MESSAGE, Units::Utf16);
            return self
                .sent_pieces
                .send(host.as_ref(), message, &pieces, |_, piece| {
                    let chat_id = chat_id.clone();
                    async move { self.send_piece(&chat_id, &piece).await }
                })
                .await;
        };
        // The file first, with the caption if it fits; a longer caption follows it as
        // messages. Piece 0 stands for the file, so a retry does not upload it twice.
        let fits = message.text.encode_utf16().count() <= MAX_CAPTION;
        let mut pieces = vec![if fits {
            message.text.clone()
        } else {
            String::new()
        }];
        if !fits {
            pieces.extend(split(&message.text, MAX_MESSAGE, Units::Utf16));
        }
        self.sent_pieces
            .send(host.as_ref(), message, &pieces, |i, piece| {
                let chat_id = chat_id.clone();
                async move {
                    if i == 0 {
                        self.send_file(&chat_id, file, &piece).await
                    } else {
                        self.send_piece(&chat_id, &piece).await
                    }
                }
            })
            .await
    }

    /// The Bot API lets bots upload files up to 50 MB.
    fn max_file_bytes(&self) -> Option<u64> {
        Some(50 << 20)
    }

    async fn set_typing(&self, jid: &str, typing: bool) -> Result<(), ChannelError> {
        let chat_id = Telegram::chat_id(jid)?;
        let (client, url) = (self.client.clone(), format!("{}/sendChatAction", self.base));
        self.typing.set(jid, typing, move || {
            let (client, url, chat_id) = (client.clone(), url.clone(), chat_id.clone());
            async move {
                let sent = client
                    .post(&url)
                    .json(&json!({"chat_id": chat_id, "action": "typing"}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match sent {
                    Err(e) => {
                        tracing::debug!("telegram: typing indicator failed: {}", e.without_url());
                        true
                    }
                    // Refused (blocked, removed, rate limited): stop asking.
                    Ok(r) => !r.status().is_client_error(),
                }
            }
        });
        Ok(())
    }

    async fn run(self: Arc<Self>, host: Arc<dyn ChannelHost>, mut shutdown: watch::Receiver<bool>) {
        *self.host.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&host));
        let mut backoff = Duration::from_secs(1);
        let mut offset: Option<i64> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.identity().is_none() {
                let connected = tokio::select! {
                    c = self.connect() => c,
                    _ = shutdown.wait_for(|s| *s) => break,
                };
                match connected {
                    Ok(me) => {
                        tracing::info!(bot = %me.username, "telegram connected");
                        // Sending works from here on, before the first poll returns.
                        self.connected.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.connected.store(false, Ordering::Relaxed);
                        tracing::warn!("telegram: {e}; retrying in {} s", backoff.as_secs());
                        if sleep_or_stop(backoff, &mut shutdown).await {
                            break;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let mut current = match offset {
                Some(o) => o,
                None => match host.load_state(OFFSET_KEY).await {
                    Ok(saved) => saved.and_then(|v| v.parse().ok()).unwrap_or(0),
                    Err(e) => {
                        tracing::warn!("telegram: cannot read the saved offset: {e}");
                        if sleep_or_stop(backoff, &mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            let started = tokio::time::Instant::now();
            let before = current;
            let polled = tokio::select! {
                r = self.poll_once(host.as_ref(), &mut current) => r,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            offset = Some(current);
            let wait = match polled {
                Ok(n) => {
                    self.connected.store(true, Ordering::Relaxed);
                    backoff = Duration::from_secs(1);
                    // A server that answers at once instead of long polling must not
                    // be hammered.
                    // (nor one that keeps sending an update we cannot move past).
                    ((n == 0 || current == before) && started.elapsed() < Duration::from_secs(1))
                        .then_some(Duration::from_millis(500))
                }
                Err(ApiFailure::RetryAfter(s)) => Some(Duration::from_secs(s)),
                Err(e) => {
                    // Another poller (409) does not stop us from sending.
                    if !matches!(e, ApiFailure::Conflict(_)) {
                        self.connected.store(false, Ordering::Relaxed);
                    }
                    tracing::warn!("telegram: {e}; retrying in {} s", backoff.as_secs());
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Some(wait)
                }
            };
            if let Some(wait) = wait
                && sleep_or_stop(wait, &mut shutdown).await
            {
                break;
            }
        }
        self.typing.stop_all();
        self.connected.store(false, Ordering::Relaxed);
        // The host holds the channels; do not keep it alive from here.
        *self.host.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> Arc<Telegram> {
        let t = Telegram::new("http://127.0.0.1:1", "123:abc", "Andy").expect("bot");
        *t.me.lock().expect("lock") = Some(BotIdentity {
            id: 42,
            username: "andy_home_bot".into(),
        });
        t
    }

    fn update(msg: Value) -> Value {
        json!({"update_id": 1, "message": msg})
    }

    /// Any update Telegram (or something in its place) sends is kept or dropped, never
    /// a panic; a kept message belongs to the chat it names.
    #[test]
    fn fuzz_updates_are_read_or_dropped() {
        let t = bot();
        nanoclaw_fuzz::fuzz(
            "telegram_update",
            nanoclaw_fuzz::Shape::Json,
            &[
                "message",
                "channel_post",
                "chat",
                "from",
                "text",
                "caption",
                "photo",
                "entities",
                "reply_to_message",
                "migrate_to_chat_id",
                "message_id",
                "date",
                "type",
                "supergroup",
                "private",
                "@Andy",
                "@andy_home_bot",
                "mention",
                "offset",
                "length",
                "is_bot",
                "username",
                "title",
            ],
            |input| {
                let Ok(value) = serde_json::from_slice::<Value>(input) else {
                    return;
                };
                if let Some((chat, Some(message))) = t.inbound(&value) {
                    assert_eq!(message.chat_jid, chat.jid);
                    assert!(chat.jid.starts_with("tg:"), "{}", chat.jid);
                }
            },
        );
    }

    #[test]
    fn group_messages_map_to_jids_names_and_senders() {
        let t = bot();
        let (chat, msg) = t
            .inbound(&update(json!({
                "message_id": 7, "date": 1767225600,
                "chat": {"id": -1001234, "type": "supergroup", "title": "Family"},
                "from": {"id": 99, "first_name": "Jo", "last_name": "Doe", "is_bot": false},
                "text": "hello"
            })))
            .expect("kept");
        let msg = msg.expect("a message");
        assert_eq!(chat.jid, "tg:-1001234");
        assert_eq!(chat.name.as_deref(), Some("Family"));
        assert_eq!(chat.is_group, Some(true));
        assert_eq!(
            (
                msg.id.as_str(),
                msg.sender.as_str(),
                msg.sender_name.as_str()
            ),
            ("7", "99", "Jo Doe")
        );
        assert_eq!(msg.timestamp, "2026-01-01T00:00:00.000Z");
        assert!(!msg.is_bot_message);
    }

    #[test]
    fn mentions_and_replies_become_the_trigger() {
        let t = bot();
        let text_of = |msg: Value| {
            t.inbound(&update(msg))
                .and_then(|(_, m)| m)
                .map(|m| m.content)
        };
        let base = |text: &str| {
            json!({"message_id": 1, "date": 1, "chat": {"id": -5, "type": "group", "title": "G"},
                                        "from": {"id": 9, "first_name": "A"}, "text": text})
        };
        assert_eq!(
            text_of(base("hey @Andy_Home_Bot what's up")).as_deref(),
            Some("@Andy hey @Andy_Home_Bot what's up")
        );
        assert_eq!(
            text_of(base("@Andy hi @andy_home_bot")).as_deref(),
            Some("@Andy hi @andy_home_bot"),
            "already triggered"
        );
        assert_eq!(
            text_of(base("@andy_home_bot can you help?")).as_deref(),
            Some("@Andy can you help?"),
        );
        assert_eq!(
            text_of(base("@andy_home_botx hi @andy_home_bot")).as_deref(),
            Some("@Andy @andy_home_botx hi @andy_home_bot"),
            "a longer handle at the start is not the bot's"
        );
        assert_eq!(
            text_of(base("ask @andy_home_bot_fan")).as_deref(),
            Some("ask @andy_home_bot_fan"),
            "another handle"
        );
        assert_eq!(
            text_of(base("mail x@andy_home_bot please")).as_deref(),
            Some("mail x@andy_home_bot please"),
            "part of an address, not a mention"
        );
        let mut anonymous = base("posted as the group");
        anonymous["from"] = json!({"id": 1087968824, "is_bot": true, "first_name": "Group", "username": "GroupAnonymousBot"});
        anonymous["sender_chat"] = json!({"id": -5, "type": "group", "title": "G"});
        let stored = t
            .inbound(&update(anonymous))
            .and_then(|(_, m)| m)
            .expect("stored");
        assert_eq!(
            (stored.sender.as_str(), stored.sender_name.as_str()),
            ("-5", "G"),
            "anonymous admins are told apart by the chat they post as"
        );
        let mut reply = base("and tomorrow?");
        reply["reply_to_message"] = json!({"message_id": 0, "from": {"id": 42, "is_bot": true}});
        assert_eq!(text_of(reply).as_deref(), Some("@Andy and tomorrow?"));
    }

    #[test]
    fn the_bots_own_messages_are_marked() {
        let t = bot();
        let (_, msg) = t
            .inbound(&update(json!({"message_id": 2, "date": 1, "chat": {"id": 5, "type": "private", "first_name": "Jo"},
                                    "from": {"id": 42, "is_bot": true, "first_name": "Andy"}, "text": "@andy_home_bot I said"})))
            .expect("kept");
        let msg = msg.expect("message");
        assert!(msg.is_bot_message && msg.is_from_me);
        assert_eq!(
            msg.content, "@andy_home_bot I said",
            "never turned into a trigger"
        );
    }

    #[test]
    fn media_get_placeholders_and_service_messages_only_metadata() {
        let t = bot();
        let base = json!({"message_id": 3, "date": 1, "chat": {"id": 5, "type": "private", "first_name": "Jo"}, "from": {"id": 9}});
        let mut photo = base.clone();
        photo["photo"] = json!([{"file_id": "x"}]);
        photo["caption"] = json!("look");
        assert_eq!(
            t.inbound(&update(photo.clone()))
                .and_then(|(_, m)| m)
                .map(|m| m.content)
                .as_deref(),
            Some("look [Photo]")
        );
        // A caption addressed to the bot still starts with its trigger.
        photo["caption"] = json!("@Andy what is this?");
        assert_eq!(
            t.inbound(&update(photo.clone()))
                .and_then(|(_, m)| m)
                .map(|m| m.content)
                .as_deref(),
            Some("@Andy what is this? [Photo]")
        );
        photo.as_object_mut().map(|p| p.remove("caption"));
        assert_eq!(
            t.inbound(&update(photo))
                .and_then(|(_, m)| m)
                .map(|m| m.content)
                .as_deref(),
            Some("[Photo]")
        );
        let mut joined = base.clone();
        joined["new_chat_members"] = json!([{"id": 1}]);
        assert!(matches!(t.inbound(&update(joined)), Some((_, None))));
        assert!(
            t.inbound(&json!({"update_id": 4, "edited_message": base}))
                .is_none()
        );
        assert!(
            t.inbound(&json!({"update_id": 5, "message": {"chat": "nonsense"}}))
                .is_none()
        );
    }

    #[test]
    fn tokens_are_checked_and_jids_parsed() {
        assert!(Telegram::new("http://x", "12:ab/../x", "Andy").is_err());
        assert!(Telegram::new("http://x", "", "Andy").is_err());
        assert_eq!(Telegram::chat_id("tg:-100").expect("id"), json!(-100));
        assert_eq!(Telegram::chat_id("tg:@news").expect("id"), json!("@news"));
        assert!(Telegram::chat_id("tg:abc").is_err());
    }
}
