//! Discord (SPEC §13.2): a bot on the gateway (WebSocket, JSON) for inbound messages and
//! on REST for replies. JIDs are `dc:{channel_id}` for guild text channels, threads and
//! DMs alike.
//!
//! - Identifies with the guilds, guild messages, direct messages and message content
//!   intents; heartbeats; resumes after a drop (at `resume_gateway_url`), identifies anew
//!   after an invalid session. The session (id, resume URL, last sequence stored) is
//!   persisted, so even a restart resumes and Discord replays what was missed; the store
//!   ignores a message it already has, so nothing is lost or stored twice.
//! - Close codes 4004 (bad token) and 4014 (message content intent off) stop the
//!   retries and say exactly what to fix, in the log, `status` and `doctor`.
//! - A mention of the bot (`<@id>`, `<@!id>`) or a reply to one of its messages becomes
//!   the group's trigger; other mentions become `@name`. The bot's own messages are
//!   stored as its own and never trigger.
//! - Replies are split at 2000 characters on word boundaries, resumably; per-route rate
//!   limits are kept and a 429 `retry_after` goes back to delivery; replies Discord
//!   refuses for good (Missing Access, Unknown Channel) are given up.
//!
//! Own client, not twilight: we need a dozen fields of a handful of events and three
//! REST calls; see docs/decisions.md.

mod gateway;
mod inbound;
mod rest;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nanoclaw_channel::text::{Units, split};
use nanoclaw_channel::{
    Channel, ChannelCondition, ChannelError, ChannelHost, OutboundMessage, PieceLedger,
    TypingTickers, VerifyError,
};
use tokio::sync::watch;

pub const PREFIX: &str = "dc:";
/// Discord's limit for one message, in characters.
pub const MAX_MESSAGE: usize = 2000;
/// GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT.
pub const INTENTS: u64 = (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15);
const PARTIAL_SEND_PREFIX: &str = "discord:partial_send:";
/// Typing shows for about 10 s; renewed this often while a run works.
const TYPING_EVERY: Duration = Duration::from_secs(8);
const TYPING_MAX: Duration = Duration::from_secs(600);

/// Where the channel connects (SPEC §13.2).
#[derive(Debug, Clone)]
pub struct DiscordConfig {
    /// `DISCORD_API_URL`: scheme, host and port (REST is `{api_url}/api/v10/…`).
    pub api_url: String,
    /// `DISCORD_GATEWAY_URL`: else the `url` of `GET /gateway/bot`.
    pub gateway_url: Option<String>,
    pub assistant_name: String,
}

/// The bot account, learnt from READY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BotUser {
    pub id: String,
    pub name: String,
}

/// What is known of a channel, for chat names.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChannelInfo {
    pub name: Option<String>,
    pub guild_id: Option<String>,
}

pub struct Discord {
    config: DiscordConfig,
    rest: rest::Rest,
    me: Mutex<Option<BotUser>>,
    channels: Mutex<HashMap<String, ChannelInfo>>,
    guilds: Mutex<HashMap<String, String>>,
    condition: Mutex<ChannelCondition>,
    pieces: PieceLedger,
    typing: TypingTickers,
    host: Mutex<Option<Arc<dyn ChannelHost>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Discord {
    /// `token` is `DISCORD_BOT_TOKEN` (secret: sent only in the Authorization header).
    pub fn new(config: DiscordConfig, token: &str) -> Result<Arc<Discord>, String> {
        let token = token.trim();
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(
                "DISCORD_BOT_TOKEN is not a bot token; copy it from the Developer Portal (your application → Bot → Reset Token)"
                    .into(),
            );
        }
        let api_url = config.api_url.trim_end_matches('/').to_string();
        nanoclaw_channel::http::check_endpoint("DISCORD_API_URL", &api_url)?;
        if let Some(gateway) = &config.gateway_url {
            nanoclaw_channel::http::check_endpoint("DISCORD_GATEWAY_URL", gateway)?;
        }
        Ok(Arc::new(Discord {
            rest: rest::Rest::new(&api_url, token)?,
            config: DiscordConfig { api_url, ..config },
            me: Mutex::default(),
            channels: Mutex::default(),
            guilds: Mutex::default(),
            condition: Mutex::new(ChannelCondition::Connecting),
            pieces: PieceLedger::new("discord", PARTIAL_SEND_PREFIX),
            typing: TypingTickers::new(TYPING_EVERY, TYPING_MAX),
            host: Mutex::default(),
        }))
    }

    fn channel_id(jid: &str) -> Result<&str, ChannelError> {
        jid.strip_prefix(PREFIX)
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| ChannelError::new("discord", format!("{jid} is not a Discord chat")))
    }

    pub(crate) fn set_condition(&self, condition: ChannelCondition) {
        *lock(&self.condition) = condition;
    }

    /// The raw token, for the gateway's identify and resume payloads.
    pub(crate) fn rest_token(&self) -> &str {
        self.rest.token()
    }

    pub(crate) fn me(&self) -> Option<BotUser> {
        lock(&self.me).clone()
    }

    /// A chat's display name: `guild #channel`, or the channel's name.
    pub(crate) fn chat_name(&self, channel_id: &str) -> Option<String> {
        let info = lock(&self.channels).get(channel_id).cloned()?;
        let name = info.name?;
        let guild = info
            .guild_id
            .and_then(|g| lock(&self.guilds).get(&g).cloned());
        Some(match guild {
            Some(guild) => format!("{guild} #{name}"),
            None => name,
        })
    }
}

#[async_trait]
impl Channel for Discord {
    fn name(&self) -> &'static str {
        "discord"
    }

    async fn verify(&self) -> Result<String, VerifyError> {
        self.rest.current_user().await
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
        let channel = Discord::channel_id(&message.chat_jid)?.to_string();
        let mut pieces = split(&message.text, MAX_MESSAGE, Units::Chars);
        if pieces.is_empty() && message.file.is_some() {
            // A file without a caption: one message carrying only the file.
            pieces.push(String::new());
        }
        let bytes = match &message.file {
            Some(file) => Some(file.read("discord").await?),
            None => None,
        };
        let host = lock(&self.host).clone();
        self.pieces
            .send(host.as_ref(), message, &pieces, |i, piece| {
                let channel = channel.clone();
                // The same on every attempt: with `enforce_nonce`, Discord creates the
                // piece once even when a crash between its answer and our record makes
                // us send it again.
                let nonce = nanoclaw_channel::piece_key(message, i);
                // The file goes with the first piece.
                let attached = match (&message.file, &bytes) {
                    (Some(f), Some(b)) if i == 0 => {
                        Some((f.name.as_str(), f.media_type(), b.as_slice()))
                    }
                    _ => None,
                };
                async move {
                    self.rest
                        .send_message(&channel, &piece, &nonce, attached)
                        .await
                }
            })
            .await
    }

    /// Discord takes uploads up to 10 MiB from bots in servers without boosts.
    fn max_file_bytes(&self) -> Option<u64> {
        Some(10 << 20)
    }

    async fn set_typing(&self, jid: &str, typing: bool) -> Result<(), ChannelError> {
        let channel = Discord::channel_id(jid)?.to_string();
        let rest = self.rest.clone();
        self.typing.set(jid, typing, move || {
            let (rest, channel) = (rest.clone(), channel.clone());
            async move { rest.typing(&channel).await }
        });
        Ok(())
    }

    async fn run(self: Arc<Self>, host: Arc<dyn ChannelHost>, shutdown: watch::Receiver<bool>) {
        *lock(&self.host) = Some(Arc::clone(&host));
        gateway::run(&self, &host, shutdown).await;
        self.typing.stop_all();
        // The host holds the channels; do not keep it alive from here.
        *lock(&self.host) = None;
    }
}
