//! The WhatsApp channel's rules, over any [`WaClient`]:
//!
//! - Chats are WhatsApp's JIDs without a device part: people `…@s.whatsapp.net`, groups
//!   `…@g.us`. A person who writes in the `@lid` form is the same chat as in the
//!   phone-number form: the first message that carries both teaches the mapping (kept in
//!   the host's channel state), and later `@lid`-only messages land in that chat.
//! - The assistant speaks from the user's own account, so everything it sends starts
//!   with `{ASSISTANT_NAME}: `, and the account's own messages that start so are its own
//!   (stored as the bot's, never triggers). The user's other messages from the phone are
//!   the user's, in the self-chat ("message yourself", the natural main group) and
//!   elsewhere.
//! - In a group, a mention of the linked account, or a reply to one of the assistant's
//!   messages, counts as the group's trigger; a reply carries the text it quotes.
//! - Reactions, protocol messages, status updates, broadcast lists and newsletters are
//!   not user input. The history sync after linking is stored, flagged, and never runs
//!   the agent or reaches a prompt.
//! - A photo, video, voice note, audio file or document in a registered group's chat is
//!   fetched (at most [`MAX_FILE`]), saved into the group's inbox and named in the
//!   message (a voice note with its transcript when the host can make one); never for
//!   the history sync or the assistant's own files.
//! - Replies go only to chats that wrote to this account or are registered, in pieces
//!   well below WhatsApp's limit; a file goes as a photo (images) or a document, its
//!   caption prefixed too; "typing…" shows while a run works; read receipts only when
//!   the user asks for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nanoclaw_channel::files;
use nanoclaw_channel::text::{Units, split, with_trigger};
use nanoclaw_channel::{
    Channel, ChannelCondition, ChannelError, ChannelHost, ChatMeta, Message, OutboundMessage,
    PieceLedger, SendRetry,
};
use tokio::sync::{mpsc, watch};

use crate::adapter::{Account, Body, Media, OutFile, WaClient, WaEvent, WaMessage};

pub const NAME: &str = "whatsapp";
/// WhatsApp takes about 65,000 characters; pieces stay far below, as people read them.
pub const MAX_MESSAGE: usize = 4000;
/// The longest quoted text a reply carries.
const MAX_QUOTE: usize = 500;
/// The largest file fetched from or sent to WhatsApp (held in memory while it is
/// encrypted or decrypted; WhatsApp itself takes larger documents).
pub const MAX_FILE: u64 = 32 << 20;
/// The longest caption a file gets; longer text follows it as messages.
const MAX_CAPTION: usize = 1024;
/// Why history-sync messages never reach an agent.
pub const HISTORY: &str = "from WhatsApp's history sync after linking: kept, never acted on";
const LID_STATE: &str = "whatsapp:lid:";
const KNOWN_STATE: &str = "whatsapp:known:";
const STARTED_STATE: &str = "whatsapp:started:";
/// How many chats main may start on WhatsApp in a day (UTC).
pub const MAX_NEW_CHATS_PER_DAY: u32 = 10;

pub struct Settings {
    pub assistant_name: String,
    /// Send read receipts for messages the assistant receives (`WHATSAPP_READ_RECEIPTS`).
    pub read_receipts: bool,
}

pub struct WhatsApp {
    client: Arc<dyn WaClient>,
    events: Mutex<Option<mpsc::UnboundedReceiver<WaEvent>>>,
    settings: Settings,
    condition: Mutex<ChannelCondition>,
    account: Mutex<Option<Account>>,
    host: Mutex<Option<Arc<dyn ChannelHost>>>,
    /// `@lid` JID → phone-number JID.
    lids: Mutex<HashMap<String, String>>,
    /// Chats this account may write to (they wrote first, or are registered).
    known: Mutex<std::collections::HashSet<String>>,
    group_names: Mutex<HashMap<String, String>>,
    pieces: PieceLedger,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `user[:device]@server` without the device part.
pub fn non_ad(jid: &str) -> String {
    match jid.split_once('@') {
        Some((user, server)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{user}@{server}")
        }
        None => jid.to_string(),
    }
}

fn server(jid: &str) -> &str {
    jid.rsplit_once('@').map_or("", |(_, s)| s)
}

fn user(jid: &str) -> &str {
    jid.split_once('@').map_or(jid, |(u, _)| u)
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

impl WhatsApp {
    pub fn new(
        client: Arc<dyn WaClient>,
        events: mpsc::UnboundedReceiver<WaEvent>,
        settings: Settings,
    ) -> WhatsApp {
        WhatsApp {
            client,
            events: Mutex::new(Some(events)),
            settings,
            condition: Mutex::new(ChannelCondition::Connecting),
            account: Mutex::new(None),
            host: Mutex::new(None),
            lids: Mutex::default(),
            known: Mutex::default(),
            group_names: Mutex::default(),
            pieces: PieceLedger::new(NAME, "whatsapp:partial_send:"),
        }
    }

    /// The account the key store says is linked, known before the first connection.
    pub fn with_account(self, account: Account) -> WhatsApp {
        *lock(&self.account) = Some(account);
        self
    }

    fn prefix(&self) -> String {
        format!("{}: ", self.settings.assistant_name)
    }

    async fn send_piece(&self, jid: &str, piece: &str) -> Result<(), ChannelError> {
        self.client
            .send_text(jid, piece)
            .await
            .map(|_| ())
            .map_err(|e| ChannelError::new(NAME, format!("sending to {jid}: {e}")))
    }

    /// One chat per person: an `@lid` JID becomes the phone-number JID it is known as.
    async fn canonical(&self, host: &dyn ChannelHost, jid: &str, alt: Option<&str>) -> String {
        let jid = non_ad(jid);
        if server(&jid) != "lid" {
            return jid;
        }
        if let Some(pn) = alt.map(non_ad).filter(|a| server(a) == "s.whatsapp.net") {
            let new = lock(&self.lids).insert(jid.clone(), pn.clone()) != Some(pn.clone());
            if new && let Err(e) = host.save_state(&format!("{LID_STATE}{jid}"), &pn).await {
                tracing::warn!("whatsapp: cannot remember that {jid} is {pn}: {e}");
            }
            return pn;
        }
        if let Some(pn) = lock(&self.lids).get(&jid).cloned() {
            return pn;
        }
        match host.load_state(&format!("{LID_STATE}{jid}")).await {
            Ok(Some(pn)) if !pn.is_empty() => {
                lock(&self.lids).insert(jid, pn.clone());
                pn
            }
            _ => jid,
        }
    }

    fn is_own(&self, jid: &str) -> bool {
        let jid = non_ad(jid);
        lock(&self.account)
            .as_ref()
            .is_some_and(|a| a.pn == jid || a.lid.as_deref().map(non_ad) == Some(jid.clone()))
    }

    async fn remember_chat(&self, host: &dyn ChannelHost, jid: &str) {
        if lock(&self.known).insert(jid.to_string())
            && let Err(e) = host.save_state(&format!("{KNOWN_STATE}{jid}"), "1").await
        {
            tracing::warn!("whatsapp: cannot remember chat {jid}: {e}");
        }
    }

    async fn may_write_to(&self, host: &dyn ChannelHost, jid: &str) -> bool {
        if self.is_own(jid) || lock(&self.known).contains(jid) {
            return true;
        }
        if host.trigger_for(jid).await.is_some() {
            return true;
        }
        let known = matches!(host.load_state(&format!("{KNOWN_STATE}{jid}")).await, Ok(Some(v)) if v == "1");
        if known {
            lock(&self.known).insert(jid.to_string());
        }
        known
    }

    /// Counts a chat main starts today; refuses past [`MAX_NEW_CHATS_PER_DAY`].
    async fn count_new_chat(&self, host: &dyn ChannelHost, jid: &str) -> Result<(), ChannelError> {
        let today: String = nanoclaw_channel::time::now().chars().take(10).collect();
        let key = format!("{STARTED_STATE}{today}");
        let started: u32 = match host.load_state(&key).await {
            Ok(v) => v.and_then(|v| v.parse().ok()).unwrap_or(0),
            Err(e) => {
                return Err(ChannelError::new(
                    NAME,
                    format!("cannot count new chats: {e}"),
                ));
            }
        };
        if started >= MAX_NEW_CHATS_PER_DAY {
            return Err(ChannelError::new(
                NAME,
                format!(
                    "not sent to {jid}: the assistant has started {started} new WhatsApp chats today, \
                     the most it may in a day (they come from your own number)"
                ),
            )
            .with_retry(SendRetry::Never));
        }
        host.save_state(&key, &(started + 1).to_string())
            .await
            .map_err(|e| ChannelError::new(NAME, format!("cannot count new chats: {e}")))?;
        // Once started, the chat is known: later messages to it are not new.
        self.remember_chat(host, jid).await;
        Ok(())
    }

    async fn group_name(&self, jid: &str) -> Option<String> {
        if let Some(name) = lock(&self.group_names).get(jid).cloned() {
            return Some(name);
        }
        match self.client.group_name(jid).await {
            Ok(Some(name)) => {
                lock(&self.group_names).insert(jid.to_string(), name.clone());
                Some(name)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!("whatsapp: cannot get the name of {jid}: {e}");
                None
            }
        }
    }

    /// Turns a client message into a stored one (or `None`: not user input).
    pub async fn inbound(
        &self,
        host: &dyn ChannelHost,
        m: &WaMessage,
        history: bool,
    ) -> Option<(ChatMeta, Message)> {
        let raw_chat = non_ad(&m.chat);
        if matches!(server(&raw_chat), "broadcast" | "newsletter") {
            return None;
        }
        let Body::Text {
            text,
            quoted,
            mentions,
            media,
        } = &m.body
        else {
            return None;
        };
        let chat = self.canonical(host, &m.chat, m.chat_alt.as_deref()).await;
        let sender = if m.from_me {
            lock(&self.account)
                .as_ref()
                .map_or_else(|| non_ad(&m.sender), |a| a.pn.clone())
        } else {
            self.canonical(host, &m.sender, m.sender_alt.as_deref())
                .await
        };
        let is_group = server(&chat) == "g.us";
        let is_bot_message = m.from_me && text.starts_with(&self.prefix());
        let mut content = text.trim().to_string();
        if let Some(media) = media {
            content = format!("{content} [{}]", media.kind.label())
                .trim()
                .to_string();
        }
        if let Some(q) = quoted.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            content = format!("{content}\n[replying to: {}]", shorten(q, MAX_QUOTE));
        }
        // A mention of the account, or a reply to one of the assistant's messages
        // (recognised by its prefix, as its own messages are), is the group's trigger.
        let replies_to_assistant = quoted
            .as_deref()
            .is_some_and(|q| q.trim_start().starts_with(&self.prefix()));
        if is_group
            && !m.from_me
            && (replies_to_assistant || mentions.iter().any(|j| self.is_own(j)))
        {
            let trigger = host
                .trigger_for(&chat)
                .await
                .unwrap_or_else(|| format!("@{}", self.settings.assistant_name));
            // The mention itself reads `@15551234567`; the trigger takes its place.
            if let Some(own) = lock(&self.account).as_ref() {
                content = content
                    .replace(&format!("@{}", user(&own.pn)), "")
                    .trim()
                    .to_string();
            }
            content = with_trigger(&content, &trigger);
        }
        let sender_name = if m.from_me {
            lock(&self.account)
                .as_ref()
                .map(|a| a.push_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "me".into())
        } else if m.push_name.trim().is_empty() {
            user(&sender).to_string()
        } else {
            m.push_name.trim().to_string()
        };
        let timestamp = nanoclaw_channel::time::from_unix_seconds(m.timestamp)
            .unwrap_or_else(nanoclaw_channel::time::now);
        let name = if is_group {
            self.group_name(&chat).await
        } else if !m.from_me && !self.is_own(&chat) {
            Some(sender_name.clone())
        } else {
            None
        };
        let meta = ChatMeta {
            jid: chat.clone(),
            name,
            timestamp: timestamp.clone(),
            channel: Some(NAME.into()),
            is_group: Some(is_group),
        };
        let message = Message {
            id: m.id.clone(),
            chat_jid: chat,
            sender,
            sender_name,
            content,
            timestamp,
            is_from_me: m.from_me,
            is_bot_message,
            flagged: history.then(|| HISTORY.to_string()),
        };
        Some((meta, message))
    }

    async fn handle(&self, host: &Arc<dyn ChannelHost>, event: WaEvent) -> bool {
        match event {
            WaEvent::Connected { account } => {
                tracing::info!("whatsapp connected as {}", account.pn);
                *lock(&self.condition) = ChannelCondition::Connected {
                    detail: format!("linked as {}", account.pn),
                };
                *lock(&self.account) = Some(account);
            }
            WaEvent::Message(m) => self.deliver(host, &m, false).await,
            WaEvent::History(messages) => {
                for m in &messages {
                    self.deliver(host, m, true).await;
                }
            }
            WaEvent::GroupName { jid, name } => {
                let jid = non_ad(&jid);
                lock(&self.group_names).insert(jid.clone(), name.clone());
                let chat = ChatMeta {
                    jid,
                    name: Some(name),
                    timestamp: nanoclaw_channel::time::now(),
                    channel: Some(NAME.into()),
                    is_group: Some(true),
                };
                if let Err(e) = host.chat_seen(chat).await {
                    tracing::warn!("whatsapp: cannot record a group's name: {e}");
                }
            }
            WaEvent::Disconnected { reason } => {
                *lock(&self.condition) = ChannelCondition::Reconnecting { reason };
            }
            WaEvent::LoggedOut { reason } => {
                tracing::error!(
                    "whatsapp: this device was unlinked ({reason}); run `nanoclaw whatsapp link` to link it again"
                );
                *lock(&self.condition) = ChannelCondition::NeedsAttention {
                    reason: "unlinked: run `nanoclaw whatsapp link`".into(),
                };
                return false;
            }
            WaEvent::Stopped { reason } => {
                tracing::error!("whatsapp: stopped: {reason}");
                *lock(&self.condition) = ChannelCondition::NeedsAttention { reason };
                return false;
            }
            WaEvent::Locked { reason } => {
                tracing::error!(
                    "whatsapp: WhatsApp locked this account ({reason}); open WhatsApp on the phone, then restart nanoclaw"
                );
                *lock(&self.condition) = ChannelCondition::NeedsAttention {
                    reason: format!(
                        "WhatsApp locked the account ({reason}): open WhatsApp on the phone, then restart"
                    ),
                };
                return false;
            }
            // Linking is `nanoclaw whatsapp link`'s business.
            WaEvent::Qr { .. }
            | WaEvent::PairCode { .. }
            | WaEvent::Paired { .. }
            | WaEvent::LinkFailed { .. } => {}
        }
        true
    }

    /// Fetches a message's file into its group's inbox; the line naming it (or why it
    /// is not there), or `None` when the chat has no group or the message was seen.
    async fn save_media(
        &self,
        host: &dyn ChannelHost,
        message: &nanoclaw_channel::Message,
        media: &Media,
    ) -> Option<String> {
        let chat = &message.chat_jid;
        if !files::wanted(host, message).await {
            return None;
        }
        if media.size > MAX_FILE {
            return Some(files::too_large(
                &media.name,
                media.size,
                MAX_FILE,
                "NanoClaw takes WhatsApp files up to",
            ));
        }
        if let Some(refused) = files::refused(host, chat, &media.name, media.size).await {
            return Some(refused);
        }
        // Messages are handled in order, so a file that never arrives must not hold
        // the chats up for long (the library tries several media hosts).
        let fetched = match tokio::time::timeout(
            files::DOWNLOAD_TIMEOUT,
            self.client.download(media, MAX_FILE),
        )
        .await
        {
            Ok(fetched) => fetched,
            Err(_) => Err(format!(
                "no answer within {} s",
                files::DOWNLOAD_TIMEOUT.as_secs()
            )),
        };
        files::save(host, NAME, chat, &media.name, fetched).await
    }

    async fn deliver(&self, host: &Arc<dyn ChannelHost>, m: &WaMessage, history: bool) {
        let Some((meta, mut message)) = self.inbound(host.as_ref(), m, history).await else {
            return;
        };
        if let Body::Text {
            media: Some(media), ..
        } = &m.body
            && !history
            && !message.is_bot_message
            && let Some(note) = self.save_media(host.as_ref(), &message, media).await
        {
            message.content = format!("{}\n{note}", message.content);
        }
        let (chat, id, from_me) = (
            message.chat_jid.clone(),
            message.id.clone(),
            message.is_from_me,
        );
        if !from_me && !history {
            self.remember_chat(host.as_ref(), &chat).await;
        }
        if let Err(e) = host.deliver(meta, message).await {
            tracing::warn!("whatsapp: cannot store message {id} of {chat}: {e}");
            return;
        }
        if self.settings.read_receipts && !from_me && !history {
            let sender = (server(&chat) == "g.us").then(|| non_ad(&m.sender));
            if let Err(e) = self.client.mark_read(&chat, sender.as_deref(), &[id]).await {
                tracing::debug!("whatsapp: read receipt for {chat} failed: {e}");
            }
        }
    }
}

#[async_trait]
impl Channel for WhatsApp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn owns_jid(&self, jid: &str) -> bool {
        matches!(server(jid), "s.whatsapp.net" | "g.us" | "lid") && !user(jid).is_empty()
    }

    fn is_connected(&self) -> bool {
        matches!(*lock(&self.condition), ChannelCondition::Connected { .. })
    }

    fn condition(&self) -> ChannelCondition {
        lock(&self.condition).clone()
    }

    async fn verify(&self) -> Result<String, nanoclaw_channel::VerifyError> {
        match lock(&self.account).as_ref() {
            Some(account) => Ok(format!("linked as {}", account.pn)),
            None => Err(nanoclaw_channel::VerifyError::Refused(
                "not linked: run `nanoclaw whatsapp link`".into(),
            )),
        }
    }

    async fn send(&self, message: &OutboundMessage) -> Result<(), ChannelError> {
        let host = lock(&self.host).clone();
        let mut jid = non_ad(&message.chat_jid);
        if let Some(host) = &host {
            // A chat is kept under the person's phone-number JID.
            jid = self.canonical(host.as_ref(), &jid, None).await;
        }
        if let Some(host) = &host
            && !self.may_write_to(host.as_ref(), &jid).await
        {
            if !message.explicit {
                return Err(ChannelError::new(
                    NAME,
                    format!(
                        "{jid} has never written to this account and is not a registered group; \
                         NanoClaw starts a WhatsApp chat only when the main group sends to it on purpose"
                    ),
                )
                .with_retry(SendRetry::Never));
            }
            // Main may start chats, from the user's own number: a few a day, so that
            // a prompt injection cannot spam strangers (and get the account locked).
            self.count_new_chat(host.as_ref(), &jid).await?;
        }
        // Every piece carries the prefix, so each is recognised as the assistant's.
        let prefix = self.prefix();
        let budget = MAX_MESSAGE.saturating_sub(prefix.chars().count()).max(100);
        let text_pieces = |text: &str| -> Vec<String> {
            split(text, budget, Units::Chars)
                .into_iter()
                .map(|p| format!("{prefix}{p}"))
                .collect()
        };
        let Some(file) = &message.file else {
            let pieces = text_pieces(&message.text);
            return self
                .pieces
                .send(host.as_ref(), message, &pieces, |_, piece| {
                    let jid = jid.clone();
                    async move { self.send_piece(&jid, &piece).await }
                })
                .await;
        };
        // Piece 0 is the file with its caption, so a retry does not send it twice. The
        // caption always carries the prefix and some words (the file's name when the
        // text is empty): the file's echo is then the assistant's, never a trigger.
        let text = message.text.trim();
        let fits = !text.is_empty() && prefix.chars().count() + text.chars().count() <= MAX_CAPTION;
        let mut pieces = vec![if fits {
            format!("{prefix}{text}")
        } else {
            format!("{prefix}{}", file.name)
        }];
        if !fits && !text.is_empty() {
            pieces.extend(text_pieces(text));
        }
        self.pieces
            .send(host.as_ref(), message, &pieces, |i, piece| {
                let jid = jid.clone();
                async move {
                    if i > 0 {
                        return self.send_piece(&jid, &piece).await;
                    }
                    if file.size > MAX_FILE {
                        return Err(ChannelError::new(
                            NAME,
                            format!(
                                "{} is {} bytes; NanoClaw sends WhatsApp files up to {MAX_FILE}",
                                file.name, file.size
                            ),
                        )
                        .with_retry(SendRetry::Never));
                    }
                    let bytes = tokio::fs::read(&file.path).await.map_err(|e| {
                        ChannelError::new(NAME, format!("cannot read {}: {e}", file.name))
                            .with_retry(SendRetry::Never)
                    })?;
                    let out = OutFile {
                        name: &file.name,
                        mime: file.media_type(),
                        bytes,
                    };
                    self.client
                        .send_file(&jid, out, &piece)
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            ChannelError::new(NAME, format!("sending {} to {jid}: {e}", file.name))
                        })
                }
            })
            .await
    }

    /// WhatsApp takes files up to [`MAX_FILE`] from NanoClaw.
    fn max_file_bytes(&self) -> Option<u64> {
        Some(MAX_FILE)
    }

    async fn set_typing(&self, jid: &str, typing: bool) -> Result<(), ChannelError> {
        self.client
            .composing(&non_ad(jid), typing)
            .await
            .map_err(|e| ChannelError::new(NAME, format!("typing in {jid}: {e}")))
    }

    async fn run(self: Arc<Self>, host: Arc<dyn ChannelHost>, mut shutdown: watch::Receiver<bool>) {
        *lock(&self.host) = Some(Arc::clone(&host));
        let Some(mut events) = lock(&self.events).take() else {
            return;
        };
        if let Err(e) = self.client.start().await {
            tracing::error!("whatsapp: {e}");
            *lock(&self.condition) = ChannelCondition::NeedsAttention { reason: e };
            return;
        }
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        if !self.handle(&host, event).await {
                            break;
                        }
                    }
                    None => break,
                },
                _ = shutdown.changed() => break,
            }
        }
        self.client.stop().await;
    }
}
