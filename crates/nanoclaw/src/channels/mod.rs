//! Channel adapters (SPEC §13). The contract (the `Channel` and `ChannelHost` traits and
//! the types they exchange) is the `nanoclaw-channel` crate; each platform is a crate of
//! its own (`nanoclaw-telegram`, …) turned on by a cargo feature of this crate. Only the
//! built-in web channel lives here, with the set of channels a daemon runs and
//! [`configured`], which starts the ones whose credentials are set.

pub mod web;

use std::sync::Arc;

pub use nanoclaw_channel::{
    Backoff, Channel, ChannelCondition, ChannelError, ChannelHost, OutboundMessage, SendRetry, text,
};
#[cfg(feature = "discord")]
pub use nanoclaw_discord as discord;
#[cfg(feature = "telegram")]
pub use nanoclaw_telegram as telegram;

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
    #[allow(unused_mut)] // with every channel feature off
    let mut channels: Vec<Arc<dyn Channel>> = Vec::new();
    #[cfg(feature = "telegram")]
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
    #[cfg(feature = "discord")]
    match &secrets.discord_bot_token {
        None => tracing::warn!(
            "Discord is off: set DISCORD_BOT_TOKEN (Developer Portal → your application → Bot) in .env to turn it on"
        ),
        Some(token) => match discord::Discord::new(
            discord::DiscordConfig {
                api_url: config.discord_api_url.clone(),
                gateway_url: config.discord_gateway_url.clone(),
                assistant_name: config.assistant_name.clone(),
            },
            token.expose(),
        ) {
            Ok(d) => channels.push(d),
            Err(e) => tracing::error!("Discord is off: {e}"),
        },
    }
    let _ = (config, secrets);
    channels
}
