//! Channel adapters (SPEC §13). A channel delivers inbound messages to the router and
//! sends outbound text for the JIDs it owns. Adding a channel is adding a file here that
//! implements [`Channel`]; the core never matches on channel names.

pub mod telegram;
pub mod text;
pub mod web;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

use crate::store::{ChatMeta, Message};

/// What a channel hands its inbound traffic to (the router and the store).
#[async_trait]
pub trait ChannelHost: Send + Sync + 'static {
    /// Stores a message (and its chat's metadata) and lets the router act on it. An
    /// error means it was not stored: deliver it again later. Duplicates (same message
    /// id in the same chat) are ignored.
    async fn deliver(&self, chat: ChatMeta, message: Message) -> Result<(), String>;

    /// Records chat metadata alone (e.g. a group's new name).
    async fn chat_seen(&self, chat: ChatMeta) -> Result<(), String>;

    /// The channel's persisted state under `key` (e.g. a polling offset).
    async fn load_state(&self, key: &str) -> Result<Option<String>, String>;

    /// Saves channel state; an empty value removes the key.
    async fn save_state(&self, key: &str, value: &str) -> Result<(), String>;

    /// The trigger text of the group registered for `jid` (so a channel can turn a
    /// mention of the bot into that group's trigger); `None` if unknown.
    async fn trigger_for(&self, _jid: &str) -> Option<String> {
        None
    }
}

/// A committed reply on its way to a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboundMessage {
    /// The outbox row id: unique and increasing, usable for de-duplication.
    pub outbox_id: i64,
    pub chat_jid: String,
    pub text: String,
    pub timestamp: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{channel}: {message}")]
pub struct ChannelError {
    pub channel: &'static str,
    pub message: String,
    /// Whether and when delivery should try again.
    pub retry: SendRetry,
}

/// What delivery should do after a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRetry {
    /// Try again with backoff (network trouble, the platform is down).
    Later,
    /// The platform asked to wait this long (rate limits).
    After(std::time::Duration),
    /// It will never work (the bot was removed from the chat, the chat is gone): give
    /// up on this reply so it does not hold back the chat's later ones.
    Never,
}

impl ChannelError {
    /// A failure worth retrying later.
    pub fn new(channel: &'static str, message: impl Into<String>) -> ChannelError {
        ChannelError {
            channel,
            message: message.into(),
            retry: SendRetry::Later,
        }
    }

    pub fn with_retry(mut self, retry: SendRetry) -> ChannelError {
        self.retry = retry;
        self
    }
}

#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Short lowercase name (`web`, `telegram`, …), also stored as `chats.channel`.
    fn name(&self) -> &'static str;

    /// Whether `jid` belongs to this channel (by prefix or suffix).
    fn owns_jid(&self, jid: &str) -> bool;

    /// Whether the channel can deliver right now.
    fn is_connected(&self) -> bool {
        true
    }

    /// Sends a reply. An error leaves the reply in the outbox for a later attempt.
    async fn send(&self, message: &OutboundMessage) -> Result<(), ChannelError>;

    /// Shows or hides a typing indicator. Best effort: failures are logged, never fatal.
    async fn set_typing(&self, _jid: &str, _typing: bool) -> Result<(), ChannelError> {
        Ok(())
    }

    /// Runs the channel's connection until `shutdown` turns true: connects, hands inbound
    /// messages to `host`, reconnects with backoff after any failure, and never panics or
    /// ends the process. Channels without a connection of their own return at once.
    async fn run(self: Arc<Self>, _host: Arc<dyn ChannelHost>, _shutdown: watch::Receiver<bool>) {}
}

/// The channels of this daemon.
#[derive(Default, Clone)]
pub struct ChannelSet {
    channels: Vec<Arc<dyn Channel>>,
}

impl ChannelSet {
    pub fn new(channels: Vec<Arc<dyn Channel>>) -> ChannelSet {
        ChannelSet { channels }
    }

    pub fn for_jid(&self, jid: &str) -> Option<Arc<dyn Channel>> {
        self.channels.iter().find(|c| c.owns_jid(jid)).cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Channel>> {
        self.channels.iter()
    }
}

/// The channels whose credentials are configured; the others are skipped with a warning
/// saying what to set. (The web channel is always on and not listed here.)
pub fn configured(
    config: &crate::config::Config,
    secrets: &crate::config::Secrets,
) -> Vec<Arc<dyn Channel>> {
    let mut channels: Vec<Arc<dyn Channel>> = Vec::new();
    match &secrets.telegram_bot_token {
        None => tracing::warn!(
            "Telegram is off: set TELEGRAM_BOT_TOKEN (from @BotFather) in .env to turn it on"
        ),
        Some(token) => match telegram::Telegram::new(
            &config.telegram_api_url,
            token.expose(),
            &config.assistant_name,
        ) {
            Ok(t) => channels.push(t),
            Err(e) => tracing::error!("Telegram is off: {e}"),
        },
    }
    channels
}
