//! The web channel: chats `web:…`, fed by `POST /api/messages` and read through
//! `GET /api/chats/{jid}/messages` and the `GET /api/events` stream (see `http`).
//!
//! Delivery needs no network: once the outbox worker hands a reply to this channel it is
//! already stored, and the worker publishes it on the event stream.

use async_trait::async_trait;

use super::{Channel, ChannelError, OutboundMessage};

pub const PREFIX: &str = "web:";

/// The chat registered as the main group on first start.
pub const MAIN_JID: &str = "web:main";

pub struct WebChannel;

/// Why a string cannot be a web chat JID, if it cannot.
pub fn check_jid(jid: &str) -> Result<(), String> {
    let Some(name) = jid.strip_prefix(PREFIX) else {
        return Err(format!(
            "`chat_jid` must be a web chat like \"{MAIN_JID}\" (only web: chats can be posted to over HTTP)"
        ));
    };
    if name.is_empty() || name.len() > 128 {
        return Err("the part after `web:` must be 1 to 128 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
    {
        return Err(format!("`chat_jid` may not contain {:?}", c));
    }
    Ok(())
}

#[async_trait]
impl Channel for WebChannel {
    fn name(&self) -> &'static str {
        "web"
    }

    fn owns_jid(&self, jid: &str) -> bool {
        jid.starts_with(PREFIX)
    }

    async fn send(&self, _message: &OutboundMessage) -> Result<(), ChannelError> {
        Ok(())
    }

    fn max_file_bytes(&self) -> Option<u64> {
        Some(nanoclaw_protocol::ipc::MAX_SEND_FILE_BYTES)
    }

    /// The web app downloads a file after delivery (`GET /api/files/{id}`).
    fn serves_files(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jid_rules() {
        assert!(check_jid("web:main").is_ok());
        assert!(check_jid("web:kitchen-2").is_ok());
        for bad in ["tg:1", "web:", "web:a b", "web:a/b", "main"] {
            assert!(check_jid(bad).is_err(), "{bad}");
        }
    }
}
