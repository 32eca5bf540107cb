//! The [`WaClient`] over whatsapp-rust: the real WhatsApp connection.
//!
//! - The key store is our [`SqliteStore`] under `store/auth/`; the HTTP client is our
//!   reqwest; the WebSocket is the crate's tokio transport, pointed at `WHATSAPP_WS_URL`.
//! - The library's events arrive in order on its dispatch path; they are handed to one
//!   task of ours that turns them into [`WaEvent`]s (this needs the client, for `@lid`
//!   lookups), so the channel sees them in the order they happened.
//! - Reconnecting is the library's: Fibonacci backoff from 1 s with 10% jitter, capped at
//!   15 minutes (WhatsApp Web's own schedule). A logout turns it off, and deletes the
//!   keys (WhatsApp never accepts them again), as whatsmeow does.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::http::{HttpClient, HttpRequest, HttpResponse};
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::{ConnectFailureReason, Event, EventHandler};
use whatsapp_rust::wacore::proto_helpers::MessageExt;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Client, Jid, TokioRuntime};

use crate::adapter::{Account, Body, WaClient, WaEvent, WaMessage};
use crate::store::SqliteStore;

/// WhatsApp Web's endpoint (SPEC §13.4).
pub const DEFAULT_WS_URL: &str = "wss://web.whatsapp.com/ws/chat";
/// The name this device shows under "Linked devices" on the phone.
pub const DEVICE_NAME: &str = "NanoClaw";
/// The largest HTTP response taken (media is not downloaded yet; this bounds the rest).
const MAX_HTTP_BODY: usize = 16 << 20;

/// How to reach WhatsApp.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// `WHATSAPP_WS_URL`.
    pub ws_url: String,
    /// The key store (`store/auth/whatsapp.db`).
    pub store: PathBuf,
    /// `WHATSAPP_VERSION`: the WhatsApp Web version to announce. Unset, the library
    /// reads the current one from web.whatsapp.com once a day.
    pub version: Option<(u32, u32, u32)>,
}

impl LiveConfig {
    /// The endpoint is not WhatsApp's own (a test server, a relay): HTTP requests may
    /// then go only to its host, so a test never reaches the real service.
    fn http_host_only(&self) -> Option<String> {
        if self.ws_url == DEFAULT_WS_URL {
            return None;
        }
        Some(
            reqwest::Url::parse(&self.ws_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default(),
        )
    }
}

/// whatsapp-rust's HTTP client trait on our reqwest. A completed exchange is `Ok`
/// whatever its status (the library reads 401/404 itself).
struct Http {
    client: reqwest::Client,
    host_only: Option<String>,
}

#[async_trait]
impl HttpClient for Http {
    async fn execute(&self, request: HttpRequest) -> whatsapp_rust::anyhow::Result<HttpResponse> {
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| whatsapp_rust::anyhow::anyhow!("bad URL {}: {e}", request.url))?;
        let host = url.host_str().unwrap_or_default();
        match &self.host_only {
            Some(only) if host != only => {
                return Err(whatsapp_rust::anyhow::anyhow!(
                    "refused {}: WHATSAPP_WS_URL points at {only}, so nothing else is contacted",
                    request.url
                ));
            }
            // WhatsApp's own hosts only (the Web version, media), whatever a message
            // names.
            None if !is_whatsapp_host(host) || url.scheme() != "https" => {
                return Err(whatsapp_rust::anyhow::anyhow!(
                    "refused {}: not a WhatsApp host over HTTPS",
                    request.url
                ));
            }
            _ => {}
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|e| whatsapp_rust::anyhow::anyhow!("bad method {}: {e}", request.method))?;
        let mut builder = self.client.request(method, url);
        for (k, v) in &request.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let mut response = builder.send().await?;
        let status_code = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_HTTP_BODY {
                return Err(whatsapp_rust::anyhow::anyhow!(
                    "the response of {} is over {MAX_HTTP_BODY} bytes",
                    request.url
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse { status_code, body })
    }
}

/// `whatsapp.com`, `whatsapp.net` and their subdomains.
fn is_whatsapp_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    ["whatsapp.com", "whatsapp.net"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// Hands each library event, in order, to our mapping task.
struct Forward(mpsc::UnboundedSender<Arc<Event>>);

impl EventHandler for Forward {
    fn handle_event(&self, event: Arc<Event>) {
        let _ = self.0.send(event);
    }
}

/// A connection to WhatsApp. Built with [`Live::new`]; it connects when the channel
/// (or `whatsapp link`) calls [`WaClient::start`].
pub struct Live {
    config: LiveConfig,
    pair_phone: Option<String>,
    events: mpsc::UnboundedSender<WaEvent>,
    running: tokio::sync::Mutex<Option<(BotHandle, tokio::task::JoinHandle<()>)>>,
    client: Mutex<Option<Arc<Client>>>,
}

impl Live {
    /// The client and the event stream the channel reads. `pair_phone` links with a
    /// pairing code for that number instead of (as well as) a QR code.
    pub fn new(
        config: LiveConfig,
        pair_phone: Option<String>,
    ) -> (Arc<Live>, mpsc::UnboundedReceiver<WaEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Live {
                config,
                pair_phone,
                events: tx,
                running: tokio::sync::Mutex::new(None),
                client: Mutex::new(None),
            }),
            rx,
        )
    }

    fn client(&self) -> Result<Arc<Client>, String> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| "WhatsApp is not connected yet".to_string())
    }

    /// Logs this device out on WhatsApp's side (it leaves the phone's "Linked devices")
    /// and stops. The caller deletes the keys.
    pub async fn logout(&self) -> Result<(), String> {
        let client = self.client()?;
        client.logout().await;
        self.stop().await;
        Ok(())
    }
}

fn jid(text: &str) -> Result<Jid, String> {
    text.parse::<Jid>()
        .map_err(|e| format!("{text:?} is not a WhatsApp address: {e}"))
}

#[async_trait]
impl WaClient for Live {
    async fn start(&self) -> Result<(), String> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        nanoclaw_channel::http::install_tls_provider();
        let store = SqliteStore::open(&self.config.store)?;
        let keys = store.clone();
        let http = Http {
            client: nanoclaw_channel::http::client()
                // The host checks above hold for the first URL only: no redirects
                // (the library reads statuses itself).
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(20))
                .timeout(Duration::from_secs(120))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
            host_only: self.config.http_host_only(),
        };
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
        let mut builder = Bot::builder()
            .with_backend(store)
            .with_transport_factory(
                TokioWebSocketTransportFactory::new().with_url(self.config.ws_url.clone()),
            )
            .with_http_client(http)
            .with_runtime(TokioRuntime)
            // The name under the phone's "Linked devices". (Not `with_push_name`: that
            // is the account's own display name, which others see.)
            .with_device_props(
                whatsapp_rust::wacore::store::DevicePropsOverride::new().with_os(DEVICE_NAME),
            )
            .with_event_handler(Forward(raw_tx));
        if let Some(version) = self.config.version {
            builder = builder.with_version(version);
        }
        if let Some(phone) = &self.pair_phone {
            builder = builder.with_pair_code(PairCodeOptions {
                phone_number: phone.clone(),
                ..Default::default()
            });
        }
        let bot = builder
            .build()
            .await
            .map_err(|e| format!("cannot start the WhatsApp client: {e}"))?;
        let client = bot.client();
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&client));
        let events = self.events.clone();
        let mapper = tokio::spawn(async move {
            while let Some(event) = raw_rx.recv().await {
                if let Event::LoggedOut(out) = &*event
                    && device_removed(out.reason)
                {
                    // WhatsApp never takes these keys again: they go, so that `status`
                    // says "not linked" and the next start does not try them. (A
                    // locked account keeps them: a lock can be lifted.)
                    tracing::warn!(
                        "whatsapp: this device was logged out ({:?}); deleting its keys",
                        out.reason
                    );
                    if let Err(e) = keys.wipe().await {
                        tracing::error!("whatsapp: {e}");
                    }
                }
                for mapped in map_event(&event, &client).await {
                    if events.send(mapped).is_err() {
                        return;
                    }
                }
            }
        });
        *running = Some((bot.spawn(), mapper));
        Ok(())
    }

    async fn stop(&self) {
        let taken = self.running.lock().await.take();
        if let Some((bot, mapper)) = taken {
            bot.shutdown().await;
            mapper.abort();
        }
        // The client holds the key store open; it goes with it.
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn send_text(&self, to: &str, text: &str) -> Result<String, String> {
        let client = self.client()?;
        client
            .send_text(jid(to)?, text)
            .await
            .map(|sent| sent.message_id)
            .map_err(|e| e.to_string())
    }

    async fn composing(&self, to: &str, on: bool) -> Result<(), String> {
        let client = self.client()?;
        let to = jid(to)?;
        let chatstate = client.chatstate();
        if on {
            chatstate.send_composing(&to).await
        } else {
            chatstate.send_paused(&to).await
        }
        .map_err(|e| e.to_string())
    }

    async fn mark_read(
        &self,
        chat: &str,
        sender: Option<&str>,
        ids: &[String],
    ) -> Result<(), String> {
        let client = self.client()?;
        let sender = sender.map(jid).transpose()?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        client
            .mark_as_read(&jid(chat)?, sender.as_ref(), &ids)
            .await
            .map_err(|e| e.to_string())
    }

    async fn group_name(&self, group: &str) -> Result<Option<String>, String> {
        let client = self.client()?;
        let meta = client
            .groups()
            .get_metadata(&jid(group)?)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(meta.subject).filter(|s| !s.trim().is_empty()))
    }
}

/// A logout that ends this device for good (removed on the phone, unlinked, or an
/// unknown logout), as against a locked account, which can be unlocked.
fn device_removed(reason: ConnectFailureReason) -> bool {
    matches!(
        reason,
        ConnectFailureReason::LoggedOut | ConnectFailureReason::UnknownLogout
    )
}

fn account_of(client: &Client) -> Option<Account> {
    Some(Account {
        pn: client.pn()?.to_non_ad_string(),
        lid: client.lid().map(|l| l.to_non_ad_string()),
        push_name: client.push_name(),
    })
}

/// The phone-number form of an `@lid` JID, from the library's mapping cache.
async fn pn_of(client: &Client, lid: &Jid) -> Option<String> {
    if !lid.is_lid() {
        return None;
    }
    let entry = client.get_lid_pn_entry(lid).await.ok().flatten()?;
    Some(format!("{}@s.whatsapp.net", entry.phone_number))
}

/// What a message holds, as the channel sees it.
pub fn body_of(message: &wa::Message) -> Body {
    let base = message.get_base_message();
    if base.reaction_message.is_set() || base.enc_reaction_message.is_set() {
        return Body::Reaction;
    }
    if base.protocol_message.is_set() || base.poll_update_message.is_set() {
        return Body::Protocol;
    }
    let text = base.text_content().or_else(|| base.get_caption());
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        if base.sender_key_distribution_message.is_set() {
            return Body::Protocol;
        }
        return Body::Other(kind_of(base).into());
    };
    let context = [
        base.extended_text_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        base.image_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        base.video_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        base.document_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
    ]
    .into_iter()
    .flatten()
    .next();
    let quoted = context
        .and_then(|c| c.quoted_message.as_option())
        .and_then(|q| {
            let q = q.get_base_message();
            q.text_content()
                .or_else(|| q.get_caption())
                .map(str::to_string)
        });
    let mentions = context.map(|c| c.mentioned_jid.clone()).unwrap_or_default();
    Body::Text {
        text: text.to_string(),
        quoted,
        mentions,
    }
}

fn kind_of(m: &wa::Message) -> &'static str {
    if m.image_message.is_set() {
        "an image"
    } else if m.video_message.is_set() {
        "a video"
    } else if m.document_message.is_set() {
        "a document"
    } else if m.audio_message.is_set() {
        "a voice message"
    } else if m.sticker_message.is_set() {
        "a sticker"
    } else {
        "a message NanoClaw does not read yet"
    }
}

async fn live_message(
    client: &Client,
    message: &wa::Message,
    info: &whatsapp_rust::types::message::MessageInfo,
) -> WaMessage {
    let source = &info.source;
    let sender_alt = match &source.sender_alt {
        Some(alt) => Some(alt.to_non_ad_string()),
        None => pn_of(client, &source.sender).await,
    };
    // In a one-to-one chat the chat is the other person (or, for our own messages, the
    // recipient): its other form is theirs.
    let chat_alt = if source.is_group {
        None
    } else if source.is_from_me {
        match &source.recipient_alt {
            Some(alt) => Some(alt.to_non_ad_string()),
            None => pn_of(client, &source.chat).await,
        }
    } else if source.chat.to_non_ad_string() == source.sender.to_non_ad_string() {
        sender_alt.clone()
    } else {
        pn_of(client, &source.chat).await
    };
    WaMessage {
        id: info.id.to_string(),
        chat: source.chat.to_non_ad_string(),
        chat_alt,
        sender: source.sender.to_non_ad_string(),
        sender_alt,
        push_name: info.push_name.clone(),
        from_me: source.is_from_me,
        timestamp: info.timestamp.timestamp(),
        body: body_of(message),
    }
}

/// A message of the history sync (`WebMessageInfo`), as the channel sees it.
fn history_message(chat: &str, web: &wa::WebMessageInfo) -> Option<WaMessage> {
    let key = web.key.as_option()?;
    let chat = key.remote_jid.clone().unwrap_or_else(|| chat.to_string());
    let from_me = key.from_me.unwrap_or(false);
    let sender = key
        .participant
        .clone()
        .or_else(|| web.participant.clone())
        .unwrap_or_else(|| chat.clone());
    Some(WaMessage {
        id: key.id.clone()?,
        chat,
        chat_alt: None,
        sender,
        sender_alt: None,
        push_name: web.push_name.clone().unwrap_or_default(),
        from_me,
        timestamp: web.message_timestamp.unwrap_or(0) as i64,
        body: web
            .message
            .as_option()
            .map_or(Body::Other("an empty message".into()), body_of),
    })
}

/// One library event as the channel's events (none for what it does not care about).
async fn map_event(event: &Event, client: &Arc<Client>) -> Vec<WaEvent> {
    match event {
        Event::PairingQrCode(qr) => vec![WaEvent::Qr {
            code: qr.code.clone(),
            ttl: qr.timeout,
        }],
        Event::PairingCode(code) => vec![WaEvent::PairCode {
            code: code.code.clone(),
        }],
        Event::PairSuccess(ok) => vec![WaEvent::Paired {
            account: Account {
                pn: ok.id.to_non_ad_string(),
                lid: Some(ok.lid.to_non_ad_string()),
                push_name: ok.business_name.clone(),
            },
        }],
        Event::PairError(e) => vec![WaEvent::LinkFailed {
            reason: format!("the phone refused the link: {}", e.error),
        }],
        Event::PairingQrCodesExhausted(_) => vec![WaEvent::LinkFailed {
            reason: "no phone scanned the QR codes in time".into(),
        }],
        Event::QrScannedWithoutMultidevice(_) => vec![WaEvent::LinkFailed {
            reason: "the phone scanned the code but has multi-device turned off".into(),
        }],
        // The library stops reconnecting after these.
        Event::ClientOutdated(_) => vec![WaEvent::Stopped {
            reason: "WhatsApp says this client version is outdated: update NanoClaw (or unset WHATSAPP_VERSION), then restart"
                .into(),
        }],
        Event::Connected(_) => match account_of(client) {
            Some(account) => vec![WaEvent::Connected { account }],
            None => Vec::new(),
        },
        Event::Disconnected(d) => vec![WaEvent::Disconnected {
            reason: format!("{:?}", d.reason),
        }],
        Event::StreamReplaced(_) => vec![WaEvent::Stopped {
            reason: "another connection with this device's keys took over (a second NanoClaw, or `nanoclaw whatsapp unlink`?): restart nanoclaw"
                .into(),
        }],
        Event::TemporaryBan(ban) => vec![WaEvent::Stopped {
            reason: format!(
                "WhatsApp banned this account for a while ({ban:?}): restart nanoclaw when it ends"
            ),
        }],
        Event::LoggedOut(out) if device_removed(out.reason) => vec![WaEvent::LoggedOut {
            reason: format!("{:?}", out.reason),
        }],
        Event::LoggedOut(out) => {
            let said = out
                .logout_message
                .as_ref()
                .map(|m| {
                    [m.header.as_deref(), m.subtext.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": ")
                })
                .filter(|m| !m.is_empty());
            vec![WaEvent::Locked {
                reason: match said {
                    Some(said) => format!("{:?}: {said}", out.reason),
                    None => format!("{:?}", out.reason),
                },
            }]
        }
        Event::Messages(batch) => {
            let mut out = Vec::new();
            for m in batch.messages.iter() {
                out.push(WaEvent::Message(live_message(client, &m.message, &m.info).await));
            }
            out
        }
        Event::HistorySync(sync) => {
            // Inflating and decoding a history chunk (megabytes) is work for the
            // blocking pool, not for the threads that carry messages.
            let sync = (**sync).clone();
            let messages = tokio::task::spawn_blocking(move || {
                let Some(history) = sync.get() else {
                    return Vec::new();
                };
                let mut messages = Vec::new();
                for conversation in &history.conversations {
                    for m in &conversation.messages {
                        if let Some(web) = m.message.as_option()
                            && let Some(m) = history_message(&conversation.id, web)
                        {
                            messages.push(m);
                        }
                    }
                }
                messages
            })
            .await
            .unwrap_or_default();
            if messages.is_empty() {
                Vec::new()
            } else {
                vec![WaEvent::History(messages)]
            }
        }
        Event::GroupUpdate(update) => match &update.action {
            whatsapp_rust::wacore::stanza::groups::GroupNotificationAction::Subject {
                subject,
                ..
            } => vec![WaEvent::GroupName {
                jid: update.group_jid.to_non_ad_string(),
                name: subject.clone(),
            }],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whatsapp_rust::buffa::MessageField;

    fn text(t: &str) -> wa::Message {
        wa::Message {
            conversation: Some(t.into()),
            ..Default::default()
        }
    }

    #[test]
    fn what_a_message_holds() {
        assert_eq!(
            body_of(&text("hello")),
            Body::Text {
                text: "hello".into(),
                quoted: None,
                mentions: vec![]
            }
        );
        let reply = wa::Message {
            extended_text_message: MessageField::some(wa::message::ExtendedTextMessage {
                text: Some("@15550001111 yes".into()),
                context_info: MessageField::some(wa::ContextInfo {
                    quoted_message: MessageField::some(text("lunch?")),
                    mentioned_jid: vec!["15550001111@s.whatsapp.net".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            body_of(&reply),
            Body::Text {
                text: "@15550001111 yes".into(),
                quoted: Some("lunch?".into()),
                mentions: vec!["15550001111@s.whatsapp.net".into()]
            }
        );
        let photo = wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage {
                caption: Some("the view".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(body_of(&photo), Body::Text { text, .. } if text == "the view"));
        let bare_photo = wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage::default()),
            ..Default::default()
        };
        assert_eq!(body_of(&bare_photo), Body::Other("an image".into()));
        let reaction = wa::Message {
            reaction_message: MessageField::some(wa::message::ReactionMessage {
                text: Some("👍".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(body_of(&reaction), Body::Reaction);
        let revoke = wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage::default()),
            ..Default::default()
        };
        assert_eq!(body_of(&revoke), Body::Protocol);
        // A disappearing-messages wrapper is looked through.
        let ephemeral = wa::Message {
            ephemeral_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(text("gone soon")),
            }),
            ..Default::default()
        };
        assert!(matches!(body_of(&ephemeral), Body::Text { text, .. } if text == "gone soon"));
    }

    #[test]
    fn history_messages_keep_chat_sender_and_direction() {
        let web = wa::WebMessageInfo {
            key: MessageField::some(wa::MessageKey {
                remote_jid: Some("120363000000000001@g.us".into()),
                from_me: Some(false),
                id: Some("3EB0AAA".into()),
                participant: Some("15550002222@s.whatsapp.net".into()),
            }),
            message: MessageField::some(text("old news")),
            message_timestamp: Some(1_700_000_000),
            push_name: Some("Bea".into()),
            ..Default::default()
        };
        let m = history_message("ignored@g.us", &web).expect("mapped");
        assert_eq!(m.chat, "120363000000000001@g.us");
        assert_eq!(m.sender, "15550002222@s.whatsapp.net");
        assert_eq!(
            (m.id.as_str(), m.from_me, m.timestamp),
            ("3EB0AAA", false, 1_700_000_000)
        );
        assert_eq!(m.push_name, "Bea");
        // No key: nothing to store it under.
        assert!(history_message("x@s.whatsapp.net", &wa::WebMessageInfo::default()).is_none());
    }

    #[tokio::test]
    async fn a_test_endpoint_keeps_http_at_its_host() {
        let config = LiveConfig {
            ws_url: "ws://127.0.0.1:9/ws/chat".into(),
            store: "/nonexistent".into(),
            version: None,
        };
        nanoclaw_channel::http::install_tls_provider();
        let http = Http {
            client: nanoclaw_channel::http::client().build().expect("client"),
            host_only: config.http_host_only(),
        };
        let e = http
            .execute(HttpRequest::get("https://web.whatsapp.com/sw.js"))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("nothing else is contacted"), "{e}");
        let real = LiveConfig {
            ws_url: DEFAULT_WS_URL.into(),
            ..config
        };
        assert_eq!(real.http_host_only(), None);
        let http = Http {
            host_only: None,
            ..http
        };
        for refused in [
            "http://web.whatsapp.com/sw.js",
            "https://whatsapp.com.evil.example/x",
            "https://evilwhatsapp.com/x",
            "https://127.0.0.1/x",
        ] {
            let e = http
                .execute(HttpRequest::get(refused))
                .await
                .expect_err(refused);
            assert!(
                e.to_string().contains("not a WhatsApp host"),
                "{refused}: {e}"
            );
        }
        assert!(is_whatsapp_host("mmg.whatsapp.net") && is_whatsapp_host("WEB.WhatsApp.com."));
    }
}
