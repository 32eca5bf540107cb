//! Channel adapters (SPEC §13). The contract (the `Channel` and `ChannelHost` traits and
//! the types they exchange) is the `nanoclaw-channel` crate; each platform is a crate of
//! its own (`nanoclaw-telegram`, `nanoclaw-discord`, `nanoclaw-slack`, `nanoclaw-email`,
//! `nanoclaw-whatsapp`)
//! turned on by a cargo feature of this crate. Only the
//! built-in web channel lives here, with the set of channels a daemon runs and
//! [`configured`], which starts the ones whose credentials are set.

pub mod web;

use std::sync::Arc;

pub use nanoclaw_channel::{
    Backoff, Channel, ChannelCondition, ChannelError, ChannelHost, OutboundFile, OutboundMessage,
    SendRetry, VerifyError, text,
};
#[cfg(feature = "discord")]
pub use nanoclaw_discord as discord;
#[cfg(feature = "email")]
pub use nanoclaw_email as email;
#[cfg(feature = "slack")]
pub use nanoclaw_slack as slack;
#[cfg(feature = "telegram")]
pub use nanoclaw_telegram as telegram;
#[cfg(feature = "whatsapp")]
pub use nanoclaw_whatsapp as whatsapp;

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

/// Why a channel is not among those [`configured`] built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelOff {
    /// No credentials: what to set to turn it on.
    NotConfigured(String),
    /// Credentials set but unusable: what is wrong and how to fix it.
    Invalid(String),
}

/// The channels whose credentials are configured, and for each other channel compiled
/// in, why it is off. (The web channel is always on and not listed.)
pub struct Configured {
    pub channels: Vec<Arc<dyn Channel>>,
    pub off: Vec<(&'static str, ChannelOff)>,
}

/// Builds every channel whose credentials are set (nothing connects yet).
pub fn configured(config: &crate::config::Config, secrets: &crate::config::Secrets) -> Configured {
    let mut built = Configured {
        channels: Vec::new(),
        off: Vec::new(),
    };
    #[allow(unused_mut, unused_variables)] // with every channel feature off
    let mut add = |name: &'static str, made: Result<Arc<dyn Channel>, ChannelOff>| match made {
        Ok(c) => built.channels.push(c),
        Err(off) => built.off.push((name, off)),
    };
    #[cfg(feature = "telegram")]
    add(
        "telegram",
        match &secrets.telegram_bot_token {
            None => Err(ChannelOff::NotConfigured(
                "set TELEGRAM_BOT_TOKEN (from @BotFather) in .env to turn it on".into(),
            )),
            Some(token) => telegram::Telegram::new(
                &config.telegram_api_url,
                token.expose(),
                &config.assistant_name,
            )
            .map(|t| t as Arc<dyn Channel>)
            .map_err(ChannelOff::Invalid),
        },
    );
    #[cfg(feature = "discord")]
    add(
        "discord",
        match &secrets.discord_bot_token {
            None => Err(ChannelOff::NotConfigured(
                "set DISCORD_BOT_TOKEN (Developer Portal → your application → Bot) in .env to turn it on"
                    .into(),
            )),
            Some(token) => discord::Discord::new(
                discord::DiscordConfig {
                    api_url: config.discord_api_url.clone(),
                    gateway_url: config.discord_gateway_url.clone(),
                    assistant_name: config.assistant_name.clone(),
                },
                token.expose(),
            )
            .map(|d| d as Arc<dyn Channel>)
            .map_err(ChannelOff::Invalid),
        },
    );
    #[cfg(feature = "slack")]
    add(
        "slack",
        match (&secrets.slack_app_token, &secrets.slack_bot_token) {
            (None, None) => Err(ChannelOff::NotConfigured(
                "set SLACK_APP_TOKEN (xapp-…) and SLACK_BOT_TOKEN (xoxb-…) in .env to turn it on"
                    .into(),
            )),
            (Some(app), Some(bot)) => slack::Slack::new(
                slack::SlackConfig {
                    api_url: config.slack_api_url.clone(),
                    assistant_name: config.assistant_name.clone(),
                },
                app.expose(),
                bot.expose(),
            )
            .map(|s| s as Arc<dyn Channel>)
            .map_err(ChannelOff::Invalid),
            (Some(_), None) => Err(ChannelOff::Invalid(
                "SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN is not (xoxb-…, your app's page → OAuth & Permissions)"
                    .into(),
            )),
            (None, Some(_)) => Err(ChannelOff::Invalid(
                "SLACK_BOT_TOKEN is set but SLACK_APP_TOKEN is not (xapp-…, your app's page → Basic Information → App-Level Tokens)"
                    .into(),
            )),
        },
    );
    #[cfg(feature = "email")]
    add("email", {
        let settings = secrets
            .email
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        match email::EmailConfig::from_settings(&settings, &config.assistant_name) {
            Ok(None) => Err(ChannelOff::NotConfigured(
                "set EMAIL_ADDRESS, EMAIL_IMAP_URL, EMAIL_SMTP_URL and EMAIL_PASSWORD (or OAuth2) in .env to turn it on (README: Email)"
                    .into(),
            )),
            Ok(Some(c)) => email::Email::new(c)
                .map(|e| e as Arc<dyn Channel>)
                .map_err(ChannelOff::Invalid),
            Err(why) => Err(ChannelOff::Invalid(why)),
        }
    });
    #[cfg(feature = "whatsapp")]
    add("whatsapp", {
        let store = crate::layout::Layout::new(&config.root).whatsapp_store();
        match whatsapp::store::linked_account(&store) {
            Ok(None) => Err(ChannelOff::NotConfigured(
                "not linked: run `nanoclaw whatsapp link`".into(),
            )),
            Ok(Some(account)) => Ok(whatsapp_channel(config, account) as Arc<dyn Channel>),
            Err(why) => Err(ChannelOff::Invalid(why)),
        }
    });
    let _ = (config, secrets);
    built
}

/// Where and how the WhatsApp client connects.
#[cfg(feature = "whatsapp")]
pub fn whatsapp_config(config: &crate::config::Config) -> whatsapp::live::LiveConfig {
    whatsapp::live::LiveConfig {
        ws_url: config.whatsapp_ws_url.clone(),
        store: crate::layout::Layout::new(&config.root).whatsapp_store(),
        version: config.whatsapp_version,
    }
}

/// The WhatsApp channel of a linked account (it connects when the daemon runs it).
#[cfg(feature = "whatsapp")]
fn whatsapp_channel(
    config: &crate::config::Config,
    account: whatsapp::adapter::Account,
) -> Arc<whatsapp::channel::WhatsApp> {
    let (client, events) = whatsapp::live::Live::new(whatsapp_config(config), None);
    Arc::new(
        whatsapp::channel::WhatsApp::new(
            client,
            events,
            whatsapp::channel::Settings {
                assistant_name: config.assistant_name.clone(),
                read_receipts: config.whatsapp_read_receipts,
            },
        )
        .with_account(account),
    )
}
