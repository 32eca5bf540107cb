//! Channel adapters (SPEC §13). A channel delivers inbound messages to the router and
//! sends outbound text for the JIDs it owns. Adding a channel is adding a file here that
//! implements [`Channel`]; the core never matches on channel names.

pub mod web;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

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
