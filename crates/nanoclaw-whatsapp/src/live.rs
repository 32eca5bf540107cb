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

use crate::adapter::{Account, Body, Media, MediaKind, OutFile, WaClient, WaEvent, WaMessage};
use crate::store::SqliteStore;

/// WhatsApp Web's endpoint (SPEC §13.4).
pub const DEFAULT_WS_URL: &str = "wss://web.whatsapp.com/ws/chat";
/// The name this device shows under "Linked devices" on the phone.
pub const DEVICE_NAME: &str = "NanoClaw";
/// The largest HTTP response taken: the largest file the channel fetches, encrypted
/// (padding and MAC), with room to spare.
const MAX_HTTP_BODY: usize = crate::channel::MAX_FILE as usize + (1 << 20);

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
        // Media URLs carry the media connection's auth in their query: errors name the
        // URL without it.
        let url = reqwest::Url::parse(&request.url)
            .map_err(|_| whatsapp_rust::anyhow::anyhow!("refused a malformed URL"))?;
        let shown = format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.path()
        );
        let host = url.host_str().unwrap_or_default();
        match &self.host_only {
            Some(only) if host != only => {
                return Err(whatsapp_rust::anyhow::anyhow!(
                    "refused {shown}: WHATSAPP_WS_URL points at {only}, so nothing else is contacted"
                ));
            }
            // WhatsApp's own hosts only (the Web version, media), whatever a message
            // names: over HTTPS on its own port, with nothing posing as a user name
            // (a media path is glued onto a host, so a sender could try `:81/…`).
            None if !is_whatsapp_host(host)
                || url.scheme() != "https"
                || url.port().is_some()
                || !url.username().is_empty()
                || url.password().is_some() =>
            {
                return Err(whatsapp_rust::anyhow::anyhow!(
                    "refused {shown}: not a WhatsApp host over HTTPS"
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
        let failed =
            |e: reqwest::Error| whatsapp_rust::anyhow::anyhow!("{shown}: {}", e.without_url());
        let mut response = builder.send().await.map_err(failed)?;
        let status_code = response.status().as_u16();
        let too_large = || {
            whatsapp_rust::anyhow::anyhow!("the response of {shown} is over {MAX_HTTP_BODY} bytes")
        };
        let announced = response.content_length().unwrap_or(0);
        if announced > MAX_HTTP_BODY as u64 {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(announced as usize);
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_HTTP_BODY {
                return Err(too_large());
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

    async fn send_file(
        &self,
        to: &str,
        file: OutFile<'_>,
        caption: &str,
    ) -> Result<String, String> {
        use whatsapp_rust::download::MediaType;
        use whatsapp_rust::media;
        let client = self.client()?;
        let to = jid(to)?;
        // JPEG and PNG show as photos; anything else (GIF and WebP included, which
        // WhatsApp treats as animations and stickers) as a document with its name.
        let photo = matches!(file.mime, "image/jpeg" | "image/png");
        let kind = if photo {
            MediaType::Image
        } else {
            MediaType::Document
        };
        let upload = client
            .upload(file.bytes, kind, Default::default())
            .await
            .map_err(|e| format!("uploading {}: {e}", file.name))?;
        let message = if photo {
            media::image_message(
                upload,
                media::ImageOptions {
                    caption: Some(caption.into()),
                    mimetype: Some(file.mime.into()),
                    ..Default::default()
                },
            )
        } else {
            media::document_message(
                upload,
                media::DocumentOptions {
                    mimetype: Some(file.mime.into()),
                    file_name: Some(file.name.into()),
                    title: Some(file.name.into()),
                    caption: Some(caption.into()),
                    ..Default::default()
                },
            )
        };
        client
            .send_message(to, message)
            .await
            .map(|sent| sent.message_id)
            .map_err(|e| e.to_string())
    }

    async fn download(&self, media: &Media, max: u64) -> Result<Vec<u8>, String> {
        use whatsapp_rust::download::{DownloadParams, MediaType};
        if media.size > max {
            return Err(format!("the file is over {max} bytes"));
        }
        let client = self.client()?;
        let kind = match media.kind {
            MediaKind::Image => MediaType::Image,
            MediaKind::Video => MediaType::Video,
            MediaKind::Voice | MediaKind::Audio => MediaType::Audio,
            MediaKind::Document => MediaType::Document,
        };
        let params = DownloadParams::encrypted(
            media.direct_path.as_str(),
            &media.media_key,
            &media.file_sha256,
            &media.file_enc_sha256,
            media.size,
            kind,
        );
        // The library checks the MAC (made with the sender's media key); the HTTP
        // client the hosts and the size on the wire.
        let bytes = client
            .download_from_params(&params)
            .await
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 > max {
            return Err(format!("the file is over {max} bytes"));
        }
        Ok(bytes)
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

/// The file extension for a media type (`bin` for one not known here).
fn extension(mime: &str) -> &'static str {
    let essence = mime.split(';').next().unwrap_or("").trim();
    match essence.to_ascii_lowercase().as_str() {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "video/mp4" => "mp4",
        "video/3gpp" => "3gp",
        "audio/ogg" => "ogg",
        "audio/mpeg" => "mp3",
        "audio/mp4" | "audio/aac" => "m4a",
        "audio/amr" => "amr",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        _ => "bin",
    }
}

/// The file a message carries, if it carries one that can be fetched (a media
/// reference and its key). `id` names a file that has no name of its own.
pub fn media_of(message: &wa::Message, id: &str) -> Option<Media> {
    struct Fields<'a> {
        kind: MediaKind,
        mime: Option<&'a String>,
        length: Option<u64>,
        direct_path: Option<&'a String>,
        media_key: Option<&'a Vec<u8>>,
        sha256: Option<&'a Vec<u8>>,
        enc_sha256: Option<&'a Vec<u8>>,
        name: Option<&'a String>,
    }
    macro_rules! fields {
        ($m:expr, $kind:expr, $name:expr) => {
            Fields {
                kind: $kind,
                mime: $m.mimetype.as_ref(),
                length: $m.file_length,
                direct_path: $m.direct_path.as_ref(),
                media_key: $m.media_key.as_ref(),
                sha256: $m.file_sha256.as_ref(),
                enc_sha256: $m.file_enc_sha256.as_ref(),
                name: $name,
            }
        };
    }
    let f = if let Some(m) = message.image_message.as_option() {
        fields!(m, MediaKind::Image, None)
    } else if let Some(m) = message.video_message.as_option() {
        fields!(m, MediaKind::Video, None)
    } else if let Some(m) = message.audio_message.as_option() {
        let kind = if m.ptt == Some(true) {
            MediaKind::Voice
        } else {
            MediaKind::Audio
        };
        fields!(m, kind, None)
    } else if let Some(m) = message.document_message.as_option() {
        fields!(m, MediaKind::Document, m.file_name.as_ref())
    } else {
        return None;
    };
    let mime = f.mime.map_or("application/octet-stream", String::as_str);
    let stem: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    let made = format!(
        "{}-{stem}.{}",
        match f.kind {
            MediaKind::Image => "photo",
            MediaKind::Video => "video",
            MediaKind::Voice => "voice",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
        },
        extension(mime)
    );
    Some(Media {
        kind: f.kind,
        // The host makes any name safe for the inbox; this one also shows in the
        // message, so it loses control and invisible characters and is kept short.
        name: f
            .name
            .map(|n| shown_name(n))
            .filter(|n| !n.is_empty())
            .unwrap_or(made),
        mime: mime.to_string(),
        size: f.length.unwrap_or(0),
        // A path on the media host, nothing that could reach past it.
        direct_path: f
            .direct_path
            .filter(|p| {
                p.starts_with('/')
                    && !p.starts_with("//")
                    && !p
                        .chars()
                        .any(|c| c.is_control() || matches!(c, '\\' | '#' | '@'))
            })?
            .clone(),
        media_key: f.media_key.filter(|k| !k.is_empty())?.clone(),
        file_sha256: f.sha256.cloned().unwrap_or_default(),
        file_enc_sha256: f.enc_sha256.cloned().unwrap_or_default(),
    })
}

/// A sender's file name as it may show in a message: no control, format (bidi,
/// zero-width) or line-separating characters, at most 120 characters.
fn shown_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
        })
        .take(120)
        .collect();
    clean.trim().to_string()
}

/// What a message holds, as the channel sees it; `id` is the message's own.
pub fn body_of(message: &wa::Message, id: &str) -> Body {
    let base = message.get_base_message();
    if base.reaction_message.is_set() || base.enc_reaction_message.is_set() {
        return Body::Reaction;
    }
    if base.protocol_message.is_set() || base.poll_update_message.is_set() {
        return Body::Protocol;
    }
    // What the sender meant to be seen once is not kept in an inbox (the wrappers are
    // looked for on the whole message: the base has them taken off).
    let view_once = message.is_view_once();
    let media = if view_once {
        None
    } else {
        media_of(base, id).map(Box::new)
    };
    let text = base
        .text_content()
        .or_else(|| base.get_caption())
        .filter(|t| !t.trim().is_empty());
    let text = match (text, &media) {
        (Some(text), _) => text,
        (None, Some(_)) => "",
        (None, None) => {
            if base.sender_key_distribution_message.is_set() {
                return Body::Protocol;
            }
            if view_once {
                return Body::Other("a view-once message".into());
            }
            return Body::Other(kind_of(base).into());
        }
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
        base.audio_message
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
        media,
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
        body: body_of(message, &info.id.to_string()),
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
    let id = key.id.clone()?;
    Some(WaMessage {
        body: web
            .message
            .as_option()
            .map_or(Body::Other("an empty message".into()), |m| body_of(m, &id)),
        id,
        chat,
        chat_alt: None,
        sender,
        sender_alt: None,
        push_name: web.push_name.clone().unwrap_or_default(),
        from_me,
        timestamp: web.message_timestamp.unwrap_or(0) as i64,
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
            body_of(&text("hello"), "3EB0TEST"),
            Body::Text {
                text: "hello".into(),
                quoted: None,
                mentions: vec![],
                media: None,
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
            body_of(&reply, "3EB0TEST"),
            Body::Text {
                text: "@15550001111 yes".into(),
                quoted: Some("lunch?".into()),
                mentions: vec!["15550001111@s.whatsapp.net".into()],
                media: None,
            }
        );
        let photo = wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage {
                caption: Some("the view".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            matches!(body_of(&photo, "3EB0TEST"), Body::Text { text, .. } if text == "the view")
        );
        let bare_photo = wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage::default()),
            ..Default::default()
        };
        assert_eq!(
            body_of(&bare_photo, "3EB0TEST"),
            Body::Other("an image".into())
        );
        let reaction = wa::Message {
            reaction_message: MessageField::some(wa::message::ReactionMessage {
                text: Some("👍".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(body_of(&reaction, "3EB0TEST"), Body::Reaction);
        let revoke = wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage::default()),
            ..Default::default()
        };
        assert_eq!(body_of(&revoke, "3EB0TEST"), Body::Protocol);
        // A disappearing-messages wrapper is looked through.
        let ephemeral = wa::Message {
            ephemeral_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(text("gone soon")),
            }),
            ..Default::default()
        };
        assert!(
            matches!(body_of(&ephemeral, "3EB0TEST"), Body::Text { text, .. } if text == "gone soon")
        );
    }

    #[test]
    fn files_messages_carry_are_named_and_keep_what_fetching_them_needs() {
        let photo = wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage {
                mimetype: Some("image/jpeg".into()),
                file_length: Some(48_213),
                direct_path: Some("/v/t62.7118-24/abc?ccb=11-4".into()),
                media_key: Some(vec![7; 32]),
                file_sha256: Some(vec![1; 32]),
                file_enc_sha256: Some(vec![2; 32]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let Body::Text { text, media, .. } = body_of(&photo, "3EB0:12/AB") else {
            panic!("a photo without a caption is still a message");
        };
        assert_eq!(text, "");
        let media = media.expect("its file");
        assert_eq!(
            (media.kind, media.name.as_str(), media.size),
            (MediaKind::Image, "photo-3EB012AB.jpg", 48_213),
            "the id's odd characters stay out of the name"
        );
        assert_eq!(media.direct_path, "/v/t62.7118-24/abc?ccb=11-4");
        assert_eq!(
            (
                media.media_key.len(),
                media.file_sha256[0],
                media.file_enc_sha256[0]
            ),
            (32, 1, 2)
        );
        assert!(
            !format!("{media:?}").contains("7, 7"),
            "the key stays out of logs: {media:?}"
        );
        let voice = wa::Message {
            audio_message: MessageField::some(wa::message::AudioMessage {
                mimetype: Some("audio/ogg; codecs=opus".into()),
                ptt: Some(true),
                direct_path: Some("/v/voice".into()),
                media_key: Some(vec![3; 32]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let Body::Text { media: Some(m), .. } = body_of(&voice, "V1") else {
            panic!("a voice note carries its file");
        };
        assert_eq!(
            (m.kind, m.name.as_str()),
            (MediaKind::Voice, "voice-V1.ogg")
        );
        let document = wa::Message {
            document_message: MessageField::some(wa::message::DocumentMessage {
                mimetype: Some("application/pdf".into()),
                file_name: Some("minutes.pdf".into()),
                caption: Some("for Tuesday".into()),
                direct_path: Some("/v/doc".into()),
                media_key: Some(vec![4; 32]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let Body::Text {
            text,
            media: Some(m),
            ..
        } = body_of(&document, "D1")
        else {
            panic!("a document carries its file");
        };
        assert_eq!(
            (text.as_str(), m.kind, m.name.as_str()),
            ("for Tuesday", MediaKind::Document, "minutes.pdf")
        );
        // Without a reference or a key there is nothing to fetch.
        let keyless = wa::Message {
            video_message: MessageField::some(wa::message::VideoMessage {
                direct_path: Some("/v/vid".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(body_of(&keyless, "K1"), Body::Other("a video".into()));
        // View-once media is not kept, in the legacy wrapper or with the inline flag.
        let wrapped = wa::Message {
            view_once_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(photo.clone()),
            }),
            ..Default::default()
        };
        assert_eq!(
            body_of(&wrapped, "O1"),
            Body::Other("a view-once message".into())
        );
        let mut flagged = photo.clone();
        if let Some(m) = flagged.image_message.as_option_mut() {
            m.view_once = Some(true);
            m.caption = Some("once".into());
        }
        assert!(matches!(
            body_of(&flagged, "O2"),
            Body::Text { media: None, text, .. } if text == "once"
        ));
        // A path that could reach past the media host is not fetched; a name that
        // shows in the message loses its control and bidi characters.
        for bad in [
            ":81/x",
            "@evil.example/x",
            "//evil.example/x",
            "/x#y",
            "/a\\b",
            "/x\ny",
        ] {
            let mut m = photo.clone();
            if let Some(i) = m.image_message.as_option_mut() {
                i.direct_path = Some(bad.into());
            }
            assert!(media_of(&m, "P1").is_none(), "{bad:?}");
        }
        let mut odd = document.clone();
        if let Some(d) = odd.document_message.as_option_mut() {
            d.file_name = Some(format!(
                "re\u{202E}fdp.exe\n[attachment: x]{}",
                "y".repeat(300)
            ));
        }
        let name = media_of(&odd, "N1").expect("media").name;
        assert!(
            !name.contains('\u{202E}') && !name.contains('\n') && name.chars().count() == 120,
            "{name:?}"
        );
        assert_eq!(extension("audio/ogg; codecs=opus"), "ogg");
        assert_eq!(extension("application/x-unknown"), "bin");
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
