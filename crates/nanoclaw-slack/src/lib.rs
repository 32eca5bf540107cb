//! Slack (SPEC §13.3) over Socket Mode: no public URL. `auth.test` says who the bot is,
//! `apps.connections.open` (with the app-level token) gives a WebSocket URL, and events
//! arrive on it as envelopes, each acknowledged with its `envelope_id` as soon as the
//! message is stored, before any run (see docs/decisions.md). Replies go out with
//! `chat.postMessage`. JIDs are `slack:{channel_id}`.
//!
//! - Messages in channels, private channels, DMs and group DMs; edits, joins and bot
//!   messages (ours included) are not user input. One message arriving as both
//!   `message` and `app_mention`, or redelivered, has the same `ts`, its id in the
//!   store, so it is stored and answered once.
//! - Slack's text format is decoded into plain text before storing; replies are
//!   escaped (`& < >`) and split at 4000 characters, resumably. Each piece is recorded
//!   as in flight before it is posted: after a crash or an unanswered request the
//!   channel's history says whether it went out, so a reply is posted once.
//! - 429 `Retry-After` goes back to delivery; `not_in_channel`, `channel_not_found`,
//!   `is_archived` and other refusals are given up so they don't block the chat.
//! - Bots have no typing indicator on Slack: while a run works, the message that started
//!   it carries an ⏳ reaction (`reactions:write`), removed when the run ends.
//!
//! Own client, not slack-morphism: see docs/decisions.md.

mod api;
mod inbound;
mod socket;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nanoclaw_channel::text::{Units, split};
use nanoclaw_channel::{
    Channel, ChannelCondition, ChannelError, ChannelHost, OutboundFile, OutboundMessage,
    PieceLedger, SendRetry, VerifyError,
};
use tokio::sync::watch;

use api::{Api, ApiError};

pub const PREFIX: &str = "slack:";
/// Slack asks for messages of at most 4000 characters (it truncates at 40 000).
pub const MAX_MESSAGE: usize = 4000;
const PARTIAL_SEND_PREFIX: &str = "slack:partial_send:";
/// `…{channel}` → the chat's latest piece (its key) and the Unix time before it was
/// first posted.
const IN_FLIGHT_PREFIX: &str = "slack:in_flight:";
/// What shows that the assistant is working on a message.
const WORKING_REACTION: &str = "hourglass_flowing_sand";
/// How far before our clock Slack's may be, when searching for a piece we posted.
const CLOCK_SLACK_SECONDS: u64 = 120;
/// The metadata event type replies carry (with their piece key), to be found again.
const METADATA_EVENT: &str = "nanoclaw_reply";
/// History pages searched for a piece at most.
const HISTORY_PAGES: usize = 5;
/// Names cached at most (then the cache starts over).
const MAX_NAMES: usize = 10_000;

/// Where the channel connects (SPEC §13.3).
#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// `SLACK_API_URL`: `https://slack.com/api`; methods are `POST {api_url}/{method}`.
    pub api_url: String,
    pub assistant_name: String,
}

/// The bot, from `auth.test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BotUser {
    pub user_id: String,
    pub bot_id: Option<String>,
    pub name: String,
    pub team: Option<String>,
}

/// What `conversations.info` said of a channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conversation {
    pub name: Option<String>,
    pub is_im: bool,
}

pub struct Slack {
    config: SlackConfig,
    api: Api,
    /// For files people share: the bot token goes with each request, so redirects are
    /// never followed (they could lead anywhere).
    files_client: reqwest::Client,
    /// `xapp-…`: only for `apps.connections.open`.
    app_token: String,
    /// `xoxb-…`: every other method.
    bot_token: String,
    me: Mutex<Option<BotUser>>,
    /// user id → display name.
    users: Mutex<HashMap<String, String>>,
    conversations: Mutex<HashMap<String, Conversation>>,
    condition: Mutex<ChannelCondition>,
    pieces: PieceLedger,
    /// channel → `ts` of the latest message a person wrote there.
    latest: Mutex<HashMap<String, String>>,
    /// channel → `ts` of the message carrying our working reaction.
    reacted: Mutex<HashMap<String, String>>,
    /// Off once Slack refused a reaction for good (no `reactions:write`).
    reactions: AtomicBool,
    /// Where each registered chat's stored messages stop (persisted).
    cursors: Mutex<nanoclaw_channel::catch_up::Cursors>,
    host: Mutex<Option<Arc<dyn ChannelHost>>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_token(name: &str, token: &str, prefix: &str, where_: &str) -> Result<String, String> {
    let token = token.trim();
    if !token.starts_with(prefix) || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{name} must be the token starting with {prefix} (Slack app page → {where_})"
        ));
    }
    Ok(token.to_string())
}

impl Slack {
    /// `app_token` is `SLACK_APP_TOKEN`, `bot_token` is `SLACK_BOT_TOKEN` (secrets: sent
    /// only in the Authorization header).
    pub fn new(
        config: SlackConfig,
        app_token: &str,
        bot_token: &str,
    ) -> Result<Arc<Slack>, String> {
        let app_token = check_token(
            "SLACK_APP_TOKEN",
            app_token,
            "xapp-",
            "Basic Information → App-Level Tokens, with the connections:write scope",
        )?;
        let bot_token = check_token(
            "SLACK_BOT_TOKEN",
            bot_token,
            "xoxb-",
            "OAuth & Permissions → Bot User OAuth Token",
        )?;
        let api_url = config.api_url.trim_end_matches('/').to_string();
        nanoclaw_channel::http::check_endpoint("SLACK_API_URL", &api_url)?;
        Ok(Arc::new(Slack {
            api: Api::new(&api_url)?,
            files_client: nanoclaw_channel::http::client()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(std::time::Duration::from_secs(15))
                .build()
                .map_err(|e| format!("cannot create the Slack HTTP client: {e}"))?,
            config: SlackConfig { api_url, ..config },
            app_token,
            bot_token,
            me: Mutex::default(),
            users: Mutex::default(),
            conversations: Mutex::default(),
            condition: Mutex::new(ChannelCondition::Connecting),
            pieces: PieceLedger::new("slack", PARTIAL_SEND_PREFIX),
            latest: Mutex::default(),
            reacted: Mutex::default(),
            reactions: AtomicBool::new(true),
            cursors: Mutex::default(),
            host: Mutex::default(),
        }))
    }

    fn channel_id(jid: &str) -> Result<&str, ChannelError> {
        jid.strip_prefix(PREFIX)
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
            .ok_or_else(|| ChannelError::new("slack", format!("{jid} is not a Slack chat")))
    }

    pub(crate) fn set_condition(&self, condition: ChannelCondition) {
        *lock(&self.condition) = condition;
    }

    pub(crate) fn me(&self) -> Option<BotUser> {
        lock(&self.me).clone()
    }

    /// A user's display name (`users.info`, cached; the id if Slack will not say).
    pub(crate) async fn user_name(&self, id: &str) -> String {
        if let Some(name) = lock(&self.users).get(id) {
            return name.clone();
        }
        let name = match self
            .api
            .call("users.info", &self.bot_token, &[("user", id)])
            .await
        {
            Ok(v) => {
                let user = &v["user"];
                [
                    &user["profile"]["display_name"],
                    &user["profile"]["real_name"],
                    &user["real_name"],
                    &user["name"],
                ]
                .into_iter()
                .filter_map(|n| n.as_str())
                .find(|n| !n.trim().is_empty())
                .unwrap_or(id)
                .to_string()
            }
            Err(e) => {
                tracing::debug!("slack: users.info failed: {e}");
                if e.is_transient() {
                    // Asked again next time.
                    return id.to_string();
                }
                id.to_string()
            }
        };
        let mut users = lock(&self.users);
        if users.len() >= MAX_NAMES {
            users.clear();
        }
        users.insert(id.to_string(), name.clone());
        name
    }

    /// What Slack says of a channel (`conversations.info`, cached).
    pub(crate) async fn conversation(&self, id: &str) -> Conversation {
        if let Some(c) = lock(&self.conversations).get(id) {
            return c.clone();
        }
        let c = match self
            .api
            .call("conversations.info", &self.bot_token, &[("channel", id)])
            .await
        {
            Ok(v) => {
                let ch = &v["channel"];
                Conversation {
                    name: ch["name"].as_str().map(str::to_string),
                    is_im: ch["is_im"].as_bool() == Some(true),
                }
            }
            Err(e) => {
                tracing::debug!("slack: conversations.info failed: {e}");
                if e.is_transient() {
                    // Asked again next time.
                    return Conversation::default();
                }
                Conversation::default()
            }
        };
        let mut conversations = lock(&self.conversations);
        if conversations.len() >= MAX_NAMES {
            conversations.clear();
        }
        conversations.insert(id.to_string(), c.clone());
        c
    }

    /// Posts one piece, once. It carries its [`piece_key`] as message metadata, and the
    /// chat's in-flight record names it before it is posted. The record stays after
    /// Slack posted it (until the chat's next piece replaces it: delivery goes in order
    /// per chat, so by then this one is settled), and is cleared when Slack refused it.
    /// Finding the record naming this very piece means an earlier attempt may have gone
    /// out (a crash before delivery noted it, an answer lost on the way back): the
    /// channel's history is asked for its key before posting again.
    ///
    /// [`piece_key`]: nanoclaw_channel::piece_key
    async fn post_piece(
        &self,
        host: Option<&Arc<dyn ChannelHost>>,
        message: &OutboundMessage,
        channel: &str,
        index: usize,
        piece: &str,
    ) -> Result<(), ChannelError> {
        let marker = nanoclaw_channel::piece_key(message, index);
        let record_key = format!("{IN_FLIGHT_PREFIX}{channel}");
        if let Some(host) = host {
            let record: serde_json::Value = host
                .load_state(&record_key)
                .await
                .ok()
                .flatten()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            if record["piece"] == marker.as_str() {
                let since = record["since"].as_u64().unwrap_or(0).to_string();
                if self.already_posted(channel, &since, &marker).await {
                    tracing::info!(
                        "slack: a piece of reply {} was posted before; not posting it again",
                        message.outbox_id
                    );
                    return Ok(());
                }
            } else {
                let since = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs().saturating_sub(CLOCK_SLACK_SECONDS))
                    .unwrap_or(0);
                let record = serde_json::json!({"piece": marker, "since": since}).to_string();
                if let Err(e) = host.save_state(&record_key, &record).await {
                    tracing::warn!("slack: cannot record a reply piece as in flight: {e}");
                }
            }
        }
        let escaped = inbound::escape(piece);
        let metadata = serde_json::json!({
            "event_type": METADATA_EVENT,
            "event_payload": {"piece": marker},
        })
        .to_string();
        let result = self
            .api
            .call(
                "chat.postMessage",
                &self.bot_token,
                &[
                    ("channel", channel),
                    ("text", &escaped),
                    ("metadata", &metadata),
                    // Slack's servers would fetch every link in a reply to preview it,
                    // a way out for an agent whose network is limited.
                    ("unfurl_links", "false"),
                    ("unfurl_media", "false"),
                ],
            )
            .await;
        // Refused (a 429, an `ok: false`): nothing was posted, nothing is in doubt.
        if let (Err(e), Some(host)) = (&result, host)
            && e.answered()
        {
            let _ = host.save_state(&record_key, "").await;
        }
        send_outcome(result)
    }

    /// Saves the files a person shared into the group's inbox and names them in the
    /// message, so the agent can open them (and see photos). They are fetched with the
    /// bot token (scope `files:read`), which goes only to Slack's file host over https
    /// (or the API's own origin, a test double or proxy), never through a redirect; not
    /// again for a message seen before, nothing for a chat no group is registered for.
    pub(crate) async fn save_files(
        &self,
        host: &dyn ChannelHost,
        shared: &[inbound::SharedFile],
        message: &mut nanoclaw_channel::Message,
    ) {
        use nanoclaw_channel::files;
        if !files::wanted(host, message).await {
            return;
        }
        let mut notes = Vec::new();
        for file in shared.iter().take(MAX_FILES) {
            let size = file.size.unwrap_or(0);
            let note = if size > MAX_FILE {
                Some(files::too_large(&file.name, size, MAX_FILE, "larger than"))
            } else if let Some(refused) =
                files::refused(host, &message.chat_jid, &file.name, size).await
            {
                Some(refused)
            } else {
                let fetched = match &file.url {
                    Some(url) if token_may_go_to(url, &self.config.api_url) => {
                        let request = self.files_client.get(url).bearer_auth(&self.bot_token);
                        files::fetch_capped(request, MAX_FILE).await.map_err(|e| {
                            if e.contains("HTTP 3") {
                                format!("{e} (Slack sends a login page instead: the app needs the files:read scope)")
                            } else {
                                e
                            }
                        })
                    }
                    Some(_) => Err("its URL is not on Slack's file host".to_string()),
                    None => Err("Slack gave no URL for it".to_string()),
                };
                files::save(host, "slack", &message.chat_jid, &file.name, fetched).await
            };
            notes.extend(note);
        }
        if !notes.is_empty() {
            message.content = format!("{}\n{}", message.content, notes.join("\n"));
        }
    }

    /// Shares a file in `channel` with `comment`: `files.getUploadURLExternal`, the
    /// bytes to the URL it gives, `files.completeUploadExternal` (scope `files:write`).
    /// Unlike text, a crash between the upload and recording it may share it twice.
    async fn post_file(
        &self,
        channel: &str,
        file: &OutboundFile,
        comment: &str,
    ) -> Result<(), ChannelError> {
        let bytes = file.read("slack").await?;
        let length = bytes.len().to_string();
        let slot = self
            .api
            .call(
                "files.getUploadURLExternal",
                &self.bot_token,
                &[("filename", &file.name), ("length", &length)],
            )
            .await
            .map_err(|e| file_refused(e, "files.getUploadURLExternal"))?;
        let (Some(url), Some(id)) = (slot["upload_url"].as_str(), slot["file_id"].as_str()) else {
            return Err(ChannelError::new(
                "slack",
                "files.getUploadURLExternal answered without an upload_url or file_id",
            ));
        };
        self.api
            .upload(url, bytes)
            .await
            .map_err(|e| file_refused(e, "the upload"))?;
        let files = serde_json::json!([{"id": id, "title": file.name}]).to_string();
        let escaped = inbound::escape(comment);
        let mut params = vec![("files", files.as_str()), ("channel_id", channel)];
        if !escaped.is_empty() {
            params.push(("initial_comment", &escaped));
        }
        self.api
            .call("files.completeUploadExternal", &self.bot_token, &params)
            .await
            .map_err(|e| file_refused(e, "files.completeUploadExternal"))?;
        Ok(())
    }

    /// Whether the bot posted the piece `marker` in `channel` since the Unix time
    /// `since`.
    async fn already_posted(&self, channel: &str, since: &str, marker: &str) -> bool {
        let mut cursor = String::new();
        for _ in 0..HISTORY_PAGES {
            let mut params = vec![
                ("channel", channel),
                ("oldest", since),
                ("limit", "200"),
                ("include_all_metadata", "true"),
            ];
            if !cursor.is_empty() {
                params.push(("cursor", cursor.as_str()));
            }
            let history = match self
                .api
                .call("conversations.history", &self.bot_token, &params)
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(
                        "slack: cannot tell whether a reply went out before ({e}); posting it"
                    );
                    return false;
                }
            };
            let found = history["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| {
                    m["metadata"]["event_type"] == METADATA_EVENT
                        && m["metadata"]["event_payload"]["piece"] == marker
                });
            if found {
                return true;
            }
            match history["response_metadata"]["next_cursor"].as_str() {
                Some(next) if !next.is_empty() && history["has_more"] == true => {
                    cursor = next.to_string();
                }
                _ => return false,
            }
        }
        false
    }

    async fn react(&self, method: &str, channel: &str, ts: &str) {
        if !self.reactions.load(Ordering::Relaxed) {
            return;
        }
        let result = self
            .api
            .call(
                method,
                &self.bot_token,
                &[
                    ("channel", channel),
                    ("timestamp", ts),
                    ("name", WORKING_REACTION),
                ],
            )
            .await;
        match result {
            Ok(_) => {}
            Err(ApiError::Slack(code)) if code == "already_reacted" || code == "no_reaction" => {}
            Err(ApiError::Slack(code))
                if code == "missing_scope" || code == "not_allowed_token_type" =>
            {
                tracing::warn!(
                    "slack: cannot show that the assistant is working ({code}): add the \
                     reactions:write scope (OAuth & Permissions) and reinstall the app"
                );
                self.reactions.store(false, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("slack: {method} failed: {e}"),
        }
    }

    /// Notes the latest message a person wrote in `channel`.
    pub(crate) fn saw_message(&self, channel: &str, ts: &str) {
        lock(&self.latest).insert(channel.to_string(), ts.to_string());
    }
}

/// Largest file a person shares that is saved.
const MAX_FILE: u64 = 25 << 20;
/// Files of one message saved at most.
const MAX_FILES: usize = 10;

/// Whether the bot token may be sent to `url`: a private file on Slack's file host
/// (`https://files.slack.com/files-pri/…` or `/files-tmb/…`), and nothing else; or, when
/// `SLACK_API_URL` is this machine (a test double), a file path on its origin. Never
/// the API itself: a "file" URL naming an API method would have the bot call it.
fn token_may_go_to(url: &str, api_url: &str) -> bool {
    let split = |u: &str| -> Option<(String, String, String)> {
        let (scheme, rest) = u.split_once("://")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') || authority.contains('\\') {
            return None;
        }
        Some((
            scheme.to_ascii_lowercase(),
            authority.to_ascii_lowercase(),
            path.to_string(),
        ))
    };
    let Some((scheme, authority, path)) = split(url) else {
        return false;
    };
    let file_path = (path.starts_with("/files-pri/") || path.starts_with("/files-tmb/"))
        && !path.contains("..")
        && !path.contains('%');
    if !file_path {
        return false;
    }
    if scheme == "https" && authority == "files.slack.com" {
        return true;
    }
    nanoclaw_channel::http::is_loopback(api_url)
        && split(api_url).is_some_and(|(s, a, _)| s == scheme && a == authority)
}

/// A failed step of a file upload, as delivery needs it (`missing_scope` says which).
fn file_refused(e: ApiError, step: &str) -> ChannelError {
    match e {
        ApiError::Slack(code) if code == "missing_scope" => ChannelError::new(
            "slack",
            format!("{step}: Slack answered missing_scope: add files:write under OAuth & Permissions and reinstall the app"),
        )
        .with_retry(SendRetry::Never),
        e => match send_outcome(Err(e)) {
            Err(c) => c,
            Ok(()) => ChannelError::new("slack", step.to_string()),
        },
    }
}

/// What delivery should do with a `chat.postMessage` answer.
fn send_outcome(result: Result<serde_json::Value, ApiError>) -> Result<(), ChannelError> {
    let error = match result {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let message = error.to_string();
    Err(match error {
        ApiError::RateLimited(after) => {
            ChannelError::new("slack", message).with_retry(SendRetry::After(after))
        }
        ApiError::Transport(_) => ChannelError::new("slack", message),
        e if e.is_auth() => ChannelError::new(
            "slack",
            format!(
                "{message}: SLACK_BOT_TOKEN was refused; copy the Bot User OAuth Token again \
                 (OAuth & Permissions) and restart nanoclaw"
            ),
        ),
        e if e.is_transient() => ChannelError::new("slack", message),
        // not_in_channel, channel_not_found, is_archived, msg_too_long, restricted_action,
        // …: the same request will be refused again.
        ApiError::Slack(code) => ChannelError::new(
            "slack",
            match code.as_str() {
                "not_in_channel" => format!(
                    "{message}: invite the app to the channel (/invite @yourapp) to reply there"
                ),
                _ => message,
            },
        )
        .with_retry(SendRetry::Never),
    })
}

#[async_trait]
impl Channel for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    /// `auth.test` with the bot token, then `apps.connections.open` with the app token
    /// (the URL it gives is not used, and expires unused).
    async fn verify(&self) -> Result<String, VerifyError> {
        let refused = |setting: &str, method: &str, e: ApiError| match e {
            ApiError::Slack(code) if !e.is_transient() => VerifyError::Refused(format!(
                "Slack refused {setting} ({method}: {code}): {}",
                if setting == "SLACK_APP_TOKEN" {
                    "your app's page → Basic Information → App-Level Tokens, with the connections:write scope, and Socket Mode on"
                } else {
                    "your app's page → OAuth & Permissions → Bot User OAuth Token (install the app to the workspace first)"
                }
            )),
            ApiError::Slack(code) => {
                VerifyError::Unreachable(format!("Slack could not answer {method} ({code})"))
            }
            ApiError::RateLimited(d) => VerifyError::Unreachable(format!(
                "Slack asked to wait {} s before {method}",
                d.as_secs()
            )),
            ApiError::Transport(why) => VerifyError::Unreachable(why),
        };
        let me = self
            .api
            .call("auth.test", &self.bot_token, &[])
            .await
            .map_err(|e| refused("SLACK_BOT_TOKEN", "auth.test", e))?;
        self.api
            .call("apps.connections.open", &self.app_token, &[])
            .await
            .map_err(|e| refused("SLACK_APP_TOKEN", "apps.connections.open", e))?;
        Ok(format!(
            "the bot @{} in {} (auth.test, apps.connections.open)",
            me["user"].as_str().unwrap_or("?"),
            me["team"].as_str().unwrap_or("?")
        ))
    }

    fn owns_jid(&self, jid: &str) -> bool {
        jid.starts_with(PREFIX)
    }

    fn is_connected(&self) -> bool {
        matches!(*lock(&self.condition), ChannelCondition::Connected { .. })
    }

    fn condition(&self) -> ChannelCondition {
        lock(&self.condition).clone()
    }

    async fn send(&self, message: &OutboundMessage) -> Result<(), ChannelError> {
        let channel = Slack::channel_id(&message.chat_jid)?.to_string();
        let host = lock(&self.host).clone();
        let mut pieces = split(&message.text, MAX_MESSAGE, Units::Chars);
        if let Some(file) = &message.file {
            // The file first, with the caption as its comment when it is one piece;
            // a longer caption follows as messages. Piece 0 stands for the file.
            let comment = if pieces.len() == 1 {
                pieces.remove(0)
            } else {
                String::new()
            };
            pieces.insert(0, comment);
            return self
                .pieces
                .send(host.as_ref(), message, &pieces, |i, piece| {
                    let (channel, host) = (channel.clone(), host.clone());
                    async move {
                        if i == 0 {
                            self.post_file(&channel, file, &piece).await
                        } else {
                            self.post_piece(host.as_ref(), message, &channel, i, &piece)
                                .await
                        }
                    }
                })
                .await;
        }
        self.pieces
            .send(host.as_ref(), message, &pieces, |i, piece| {
                let (channel, host) = (channel.clone(), host.clone());
                async move {
                    self.post_piece(host.as_ref(), message, &channel, i, &piece)
                        .await
                }
            })
            .await
    }

    /// Slack takes files far larger; 50 MB is the most any reply carries.
    fn max_file_bytes(&self) -> Option<u64> {
        Some(50 << 20)
    }

    /// Slack has no typing indicator for bots: the message being worked on gets a
    /// reaction instead, removed when the run ends.
    async fn set_typing(&self, jid: &str, typing: bool) -> Result<(), ChannelError> {
        let channel = Slack::channel_id(jid)?.to_string();
        if typing {
            let Some(ts) = lock(&self.latest).get(&channel).cloned() else {
                return Ok(());
            };
            let previous = lock(&self.reacted).insert(channel.clone(), ts.clone());
            if previous.as_deref() == Some(ts.as_str()) {
                return Ok(());
            }
            if let Some(old) = previous {
                self.react("reactions.remove", &channel, &old).await;
            }
            self.react("reactions.add", &channel, &ts).await;
        } else {
            let reacted = lock(&self.reacted).remove(&channel);
            if let Some(ts) = reacted {
                self.react("reactions.remove", &channel, &ts).await;
            }
        }
        Ok(())
    }

    async fn run(self: Arc<Self>, host: Arc<dyn ChannelHost>, shutdown: watch::Receiver<bool>) {
        *lock(&self.host) = Some(Arc::clone(&host));
        socket::run(&self, &host, shutdown).await;
        // The host holds the channels; do not keep it alive from here.
        *lock(&self.host) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bot_token_goes_only_to_slacks_file_host_or_the_api_itself() {
        let api = "https://slack.com/api";
        assert!(token_may_go_to(
            "https://files.slack.com/files-pri/T1-F1/download/a.png",
            api
        ));
        assert!(token_may_go_to(
            "http://127.0.0.1:4000/files-pri/T1-F1/x",
            "http://127.0.0.1:4000/api"
        ));
        for bad in [
            "https://slack.com/api/conversations.history?channel=CPRIVATE",
            "https://files.slack.com/api/conversations.history",
            "https://files.slack.com/files-pri/../api/x",
            "https://files.slack.com/files-pri/%2e%2e/x",
            "http://files.slack.com/files-pri/x",
            "https://files.slack.com.evil.test/x",
            "https://evil.test/files.slack.com/x",
            "https://user@files.slack.com/x",
            "http://127.0.0.1:4001/x",
            "files.slack.com/x",
        ] {
            assert!(
                !token_may_go_to(
                    bad,
                    if bad.contains("4001") {
                        "http://127.0.0.1:4000/api"
                    } else {
                        api
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn tokens_are_checked_for_their_kind() {
        let config = SlackConfig {
            api_url: "https://slack.com/api".into(),
            assistant_name: "Andy".into(),
        };
        assert!(Slack::new(config.clone(), "xapp-1-A", "xoxb-1").is_ok());
        let swapped = Slack::new(config.clone(), "xoxb-1", "xapp-1-A")
            .err()
            .unwrap_or_default();
        assert!(swapped.contains("SLACK_APP_TOKEN") && swapped.contains("App-Level Tokens"));
        assert!(Slack::new(config, "xapp-1 A", "xoxb-1").is_err());
    }

    #[test]
    fn refusals_for_good_are_given_up_and_limits_waited_out() {
        let never = |code: &str| {
            send_outcome(Err(ApiError::Slack(code.into())))
                .err()
                .map(|e| e.retry)
        };
        for code in ["not_in_channel", "channel_not_found", "is_archived"] {
            assert_eq!(never(code), Some(SendRetry::Never), "{code}");
        }
        assert_ne!(never("internal_error"), Some(SendRetry::Never));
        assert_ne!(never("invalid_auth"), Some(SendRetry::Never));
        let limited = send_outcome(Err(ApiError::RateLimited(std::time::Duration::from_secs(
            3,
        ))));
        assert_eq!(
            limited.err().map(|e| e.retry),
            Some(SendRetry::After(std::time::Duration::from_secs(3)))
        );
    }
}
