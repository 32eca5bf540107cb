//! The small interface between the channel and a WhatsApp client: events in, sends out.
//! The channel's rules (chats, the self-chat, mentions, `@lid` forms, what is user input)
//! are written against it once; it is implemented over whatsapp-rust for real use and by
//! [`FakeClient`] for tests, so the rules are tested without a WhatsApp server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// The linked account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The phone-number JID without a device (`15551234567@s.whatsapp.net`).
    pub pn: String,
    /// The account's `@lid` form, when known.
    pub lid: Option<String>,
    pub push_name: String,
}

/// What kind of file a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
    /// A recorded voice note (push to talk).
    Voice,
    Audio,
    Document,
}

impl MediaKind {
    /// How the message reads in the chat's history (`[Photo]`).
    pub fn label(self) -> &'static str {
        match self {
            MediaKind::Image => "Photo",
            MediaKind::Video => "Video",
            MediaKind::Voice => "Voice note",
            MediaKind::Audio => "Audio",
            MediaKind::Document => "Document",
        }
    }
}

/// A file a message carries: what the channel needs to decide whether to fetch it, and
/// what the client needs to fetch and decrypt it from WhatsApp's media servers.
#[derive(Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: MediaKind,
    /// The name it is saved under: a document's own name, else one made from the
    /// message id and the media type (`photo-3EB0….jpg`).
    pub name: String,
    pub mime: String,
    /// The size the sender announced, in bytes.
    pub size: u64,
    pub direct_path: String,
    pub media_key: Vec<u8>,
    pub file_sha256: Vec<u8>,
    pub file_enc_sha256: Vec<u8>,
}

/// The keys stay out of logs.
impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("mime", &self.mime)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What a message holds, as far as NanoClaw cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Text, or a media message's caption (empty when it has none). `quoted` is the
    /// text of the message it replies to; `mentions` the JIDs it mentions; `media` the
    /// file it carries.
    Text {
        text: String,
        quoted: Option<String>,
        mentions: Vec<String>,
        media: Option<Box<Media>>,
    },
    /// A reaction to a message: not user input.
    Reaction,
    /// Protocol traffic (a revoke, an edit notice, key distribution): not user input.
    Protocol,
    /// Anything else (a sticker, a poll, a call notice): not handled yet.
    Other(String),
}

/// A message as the client reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaMessage {
    pub id: String,
    /// The chat as the server addressed it (`@s.whatsapp.net`, `@lid` or `@g.us`).
    pub chat: String,
    /// The chat's other form (the phone-number JID of an `@lid` chat), if given.
    pub chat_alt: Option<String>,
    pub sender: String,
    /// The sender's other form, if given.
    pub sender_alt: Option<String>,
    pub push_name: String,
    pub from_me: bool,
    /// Seconds since the epoch.
    pub timestamp: i64,
    pub body: Body,
}

impl WaMessage {
    /// A plain text message, as tests and the fake make them.
    pub fn text(id: &str, chat: &str, sender: &str, from_me: bool, text: &str) -> WaMessage {
        WaMessage {
            id: id.into(),
            chat: chat.into(),
            chat_alt: None,
            sender: sender.into(),
            sender_alt: None,
            push_name: String::new(),
            from_me,
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            body: Body::Text {
                text: text.into(),
                quoted: None,
                mentions: Vec::new(),
                media: None,
            },
        }
    }
}

/// A file to send: its name as the chat shows it, its media type, its bytes.
pub struct OutFile<'a> {
    pub name: &'a str,
    pub mime: &'a str,
    pub bytes: Vec<u8>,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaEvent {
    /// A QR code to show while linking (WhatsApp rotates them).
    Qr { code: String, ttl: Duration },
    /// A code to type on the phone, when linking with a phone number.
    PairCode { code: String },
    /// Linking succeeded.
    Paired { account: Account },
    /// Connected and logged in.
    Connected { account: Account },
    /// A message, live or delivered after being offline.
    Message(WaMessage),
    /// Messages of the history sync after linking: stored, never acted on.
    History(Vec<WaMessage>),
    /// A group's name.
    GroupName { jid: String, name: String },
    /// The connection dropped; the client reconnects by itself.
    Disconnected { reason: String },
    /// The user removed this device on the phone: final, no reconnecting.
    LoggedOut { reason: String },
    /// WhatsApp locked the account (it may be unlocked in the app): no reconnecting,
    /// the keys are kept.
    Locked { reason: String },
    /// The client stopped for good and keeps the keys (another connection took over,
    /// a temporary ban, an outdated client): `reason` says what to do.
    Stopped { reason: String },
    /// Linking did not succeed (codes ran out, the phone refused).
    LinkFailed { reason: String },
}

/// What the channel asks of the client.
#[async_trait]
pub trait WaClient: Send + Sync + 'static {
    /// Connects (once; later calls do nothing). Events then flow.
    async fn start(&self) -> Result<(), String> {
        Ok(())
    }
    /// Disconnects, keeping the session.
    async fn stop(&self) {}
    /// Sends a text message; returns its id.
    async fn send_text(&self, jid: &str, text: &str) -> Result<String, String>;
    /// Uploads a file and sends it (an image as a photo, else as a document) with a
    /// caption; returns the message's id.
    async fn send_file(
        &self,
        jid: &str,
        file: OutFile<'_>,
        caption: &str,
    ) -> Result<String, String>;
    /// Fetches and decrypts a message's file, refusing one over `max` bytes.
    async fn download(&self, media: &Media, max: u64) -> Result<Vec<u8>, String>;
    /// Shows or clears "typing…" in a chat.
    async fn composing(&self, jid: &str, on: bool) -> Result<(), String>;
    /// Marks messages read (a read receipt).
    async fn mark_read(
        &self,
        chat: &str,
        sender: Option<&str>,
        ids: &[String],
    ) -> Result<(), String>;
    /// A group's name, asked of the server.
    async fn group_name(&self, jid: &str) -> Result<Option<String>, String>;
}

/// Something the fake client was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Text {
        jid: String,
        text: String,
    },
    File {
        jid: String,
        name: String,
        mime: String,
        bytes: Vec<u8>,
        caption: String,
    },
    Composing {
        jid: String,
        on: bool,
    },
    Read {
        chat: String,
        ids: Vec<String>,
    },
}

/// A client for tests: the test feeds events with [`FakeClient::event`] and reads what
/// the channel did with [`FakeClient::sent`].
pub struct FakeClient {
    events: mpsc::UnboundedSender<WaEvent>,
    sent: Mutex<Vec<Sent>>,
    groups: Mutex<std::collections::HashMap<String, String>>,
    /// What each file's `direct_path` serves.
    media: Mutex<std::collections::HashMap<String, Vec<u8>>>,
    downloads: std::sync::atomic::AtomicUsize,
    fail_sends: std::sync::atomic::AtomicBool,
    fail_composing: std::sync::atomic::AtomicBool,
    ids: std::sync::atomic::AtomicU64,
}

impl FakeClient {
    /// The client and the event stream the channel reads.
    pub fn new() -> (Arc<FakeClient>, mpsc::UnboundedReceiver<WaEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(FakeClient {
                events: tx,
                sent: Mutex::default(),
                groups: Mutex::default(),
                media: Mutex::default(),
                downloads: Default::default(),
                fail_sends: Default::default(),
                fail_composing: Default::default(),
                ids: Default::default(),
            }),
            rx,
        )
    }

    pub fn event(&self, event: WaEvent) {
        let _ = self.events.send(event);
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets what was sent (a long soak would otherwise keep it all).
    pub fn clear_sent(&self) {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The texts sent to `jid`, in order.
    pub fn texts_to(&self, jid: &str) -> Vec<String> {
        self.sent()
            .into_iter()
            .filter_map(|s| match s {
                Sent::Text { jid: j, text } if j == jid => Some(text),
                _ => None,
            })
            .collect()
    }

    pub fn set_group_name(&self, jid: &str, name: &str) {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(jid.into(), name.into());
    }

    /// Makes `bytes` the file behind `media` (as the media server would serve it).
    pub fn serve_media(&self, media: &Media, bytes: &[u8]) {
        self.media
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(media.direct_path.clone(), bytes.to_vec());
    }

    /// How many files were fetched.
    pub fn downloads(&self) -> usize {
        self.downloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn fail_composing(&self, fail: bool) {
        self.fail_composing
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn fail_sends(&self, fail: bool) {
        self.fail_sends
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    fn record(&self, sent: Sent) {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sent);
    }
}

#[async_trait]
impl WaClient for FakeClient {
    async fn send_text(&self, jid: &str, text: &str) -> Result<String, String> {
        if self.fail_sends.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("not connected".into());
        }
        self.record(Sent::Text {
            jid: jid.into(),
            text: text.into(),
        });
        let n = self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(format!("3EB0FAKE{n:08X}"))
    }

    async fn send_file(
        &self,
        jid: &str,
        file: OutFile<'_>,
        caption: &str,
    ) -> Result<String, String> {
        if self.fail_sends.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("not connected".into());
        }
        self.record(Sent::File {
            jid: jid.into(),
            name: file.name.into(),
            mime: file.mime.into(),
            bytes: file.bytes,
            caption: caption.into(),
        });
        let n = self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(format!("3EB0FAKE{n:08X}"))
    }

    async fn download(&self, media: &Media, max: u64) -> Result<Vec<u8>, String> {
        self.downloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = self
            .media
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&media.direct_path)
            .cloned()
            .ok_or_else(|| "the media server answered 404".to_string())?;
        if bytes.len() as u64 > max {
            return Err(format!("the file is over {max} bytes"));
        }
        Ok(bytes)
    }

    async fn composing(&self, jid: &str, on: bool) -> Result<(), String> {
        if self
            .fail_composing
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err("presence refused".into());
        }
        self.record(Sent::Composing {
            jid: jid.into(),
            on,
        });
        Ok(())
    }

    async fn mark_read(
        &self,
        chat: &str,
        _sender: Option<&str>,
        ids: &[String],
    ) -> Result<(), String> {
        self.record(Sent::Read {
            chat: chat.into(),
            ids: ids.to_vec(),
        });
        Ok(())
    }

    async fn group_name(&self, jid: &str) -> Result<Option<String>, String> {
        Ok(self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(jid)
            .cloned())
    }
}
