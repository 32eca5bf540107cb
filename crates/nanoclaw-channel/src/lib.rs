//! The channel contract (SPEC §13): what a chat platform adapter and the NanoClaw host
//! exchange, and nothing else. A channel crate depends on this and on its platform's
//! protocol libraries; it never sees the host's store, router or queue, only a
//! [`ChannelHost`]. The host enables each channel crate through a cargo feature.
//!
//! Also here, because every channel needs them the same way: splitting long replies
//! ([`text`]), the store's timestamp format ([`time`]), an HTTP client with TLS ready
//! ([`http`]) and reconnect backoff with jitter ([`Backoff`]).

pub mod catch_up;
pub mod files;
pub mod http;
pub mod multipart;
pub mod text;
pub mod time;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

/// A message as a channel delivers it (and as the store keeps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// The platform's id of the message, unique within the chat (redeliveries repeat it).
    pub id: String,
    pub chat_jid: String,
    /// Platform id of the sender (what the sender allowlist matches).
    pub sender: String,
    /// Display name of the sender (what the agent sees).
    pub sender_name: String,
    pub content: String,
    /// RFC 3339 UTC, see [`time`].
    pub timestamp: String,
    /// Sent from the account the assistant uses.
    pub is_from_me: bool,
    /// Written by the assistant itself: stored, never a trigger, never fed back.
    pub is_bot_message: bool,
    /// Why the message must never reach an agent (mail whose sender could not be
    /// authenticated, a bounce, an auto-reply): stored and shown in the chat, but never
    /// a trigger and never part of a prompt. `None` for ordinary messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flagged: Option<String>,
}

/// Chat metadata a channel reports along with messages.
#[derive(Debug, Clone, Default)]
pub struct ChatMeta {
    pub jid: String,
    pub name: Option<String>,
    pub timestamp: String,
    pub channel: Option<String>,
    pub is_group: Option<bool>,
}

/// What a channel hands its inbound traffic to (the host's router and store).
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

    /// Whether the chat already holds a message with this id (a channel may skip work,
    /// such as saving attachments, for a message it is handed again). `false` when
    /// unknown.
    async fn has_message(&self, _jid: &str, _id: &str) -> bool {
        false
    }

    /// Whether the files `message` carries are wanted: its chat is a registered group's,
    /// and its sender is not one the sender allowlist drops (their messages are never
    /// stored, so their files must not reach the inbox either).
    async fn wants_files(&self, message: &Message) -> bool {
        self.trigger_for(&message.chat_jid).await.is_some()
    }

    /// Why a file of `size` bytes a user sent cannot be saved for `jid` now (the group's
    /// disk quota, the free-space floor), asked before downloading it; `None`: go ahead.
    async fn refuse_file(&self, _jid: &str, _size: u64) -> Option<String> {
        None
    }

    /// Saves a file a user sent (an attachment) into the working folder of the group
    /// registered for `jid`, under `inbox/`, with a safe name derived from `name`;
    /// returns the path the agent sees (`/workspace/group/inbox/…`). `Ok(None)` when no
    /// group is registered for the chat (nothing is saved).
    async fn save_file(
        &self,
        _jid: &str,
        _name: &str,
        _bytes: &[u8],
    ) -> Result<Option<String>, String> {
        Ok(None)
    }

    /// The text spoken in an audio file a user sent (`name` says its kind), when the
    /// host has a transcription service (`TRANSCRIBE_URL`); `Ok(None)` when it has none.
    async fn transcribe(&self, _name: &str, _bytes: &[u8]) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// How a channel is doing, as `status` and `doctor` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ChannelCondition {
    Connecting,
    Connected {
        detail: String,
    },
    /// Retrying after a failure that may pass.
    Reconnecting {
        reason: String,
    },
    /// Stopped until the user acts (bad token, missing permission): `reason` says what.
    NeedsAttention {
        reason: String,
    },
}

/// A committed reply on its way to a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboundMessage {
    /// The outbox row id: unique and increasing, usable for de-duplication.
    pub outbox_id: i64,
    pub chat_jid: String,
    /// The reply's text; with a file, its caption (maybe empty).
    pub text: String,
    pub timestamp: String,
    /// A file the agent sent (`send_file`), checked against [`Channel::max_file_bytes`].
    pub file: Option<OutboundFile>,
    /// The main group's agent sent it to this chat on purpose (IPC `message`), so a
    /// channel that writes only to chats that wrote first (WhatsApp) may deliver it.
    pub explicit: bool,
}

/// A file in a reply: the host's own copy (read it from `path`), never the group's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboundFile {
    /// The name the chat shows (the file's own name: letters, digits and the like).
    pub name: String,
    #[serde(skip)]
    pub path: std::path::PathBuf,
    pub size: u64,
}

impl OutboundFile {
    /// The file's media type, from its name (for platforms that want one).
    pub fn media_type(&self) -> &'static str {
        let ext = self
            .name
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "jpg" | "jpeg" => "image/jpeg",
            "png" => "image/png",
            "gif" => "image/gif",
            "webp" => "image/webp",
            "pdf" => "application/pdf",
            "txt" | "md" | "log" => "text/plain",
            "csv" => "text/csv",
            "json" => "application/json",
            "zip" => "application/zip",
            "mp3" => "audio/mpeg",
            "ogg" => "audio/ogg",
            "mp4" => "video/mp4",
            _ => "application/octet-stream",
        }
    }

    /// The file's bytes (the host's copy).
    pub async fn read(&self, channel: &'static str) -> Result<Vec<u8>, ChannelError> {
        tokio::fs::read(&self.path).await.map_err(|e| {
            ChannelError::new(channel, format!("cannot read the file {}: {e}", self.name))
                .with_retry(SendRetry::Never)
        })
    }
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
    After(Duration),
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

/// Why a channel's credentials could not be confirmed ([`Channel::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The platform said no: what is wrong, and what to do about it.
    Refused(String),
    /// The platform could not be asked (network, timeout, its own error).
    Unreachable(String),
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

    /// How the channel is doing, for `status` and `doctor`: connected, or why not and
    /// what to do about it.
    fn condition(&self) -> ChannelCondition {
        if self.is_connected() {
            ChannelCondition::Connected {
                detail: String::new(),
            }
        } else {
            ChannelCondition::Connecting
        }
    }

    /// Asks the platform once whether the credentials work, without staying connected,
    /// and says who they sign in as. `setup` checks answers with it before saving them,
    /// and `doctor` checks the settings while the daemon is not running.
    async fn verify(&self) -> Result<String, VerifyError> {
        Ok("nothing to check".into())
    }

    /// Sends a reply. An error leaves the reply in the outbox for a later attempt.
    async fn send(&self, message: &OutboundMessage) -> Result<(), ChannelError>;

    /// The largest file a reply may carry on this channel; `None` when it cannot carry
    /// files (a file sent there is refused with that reason).
    fn max_file_bytes(&self) -> Option<u64> {
        None
    }

    /// Whether the chat fetches a delivered file from the host later (the web app
    /// downloads it), so the host's copy is kept for a while; otherwise it goes once sent.
    fn serves_files(&self) -> bool {
        false
    }

    /// Shows or hides a typing indicator. Best effort: failures are logged, never fatal.
    async fn set_typing(&self, _jid: &str, _typing: bool) -> Result<(), ChannelError> {
        Ok(())
    }

    /// Runs the channel's connection until `shutdown` turns true: connects, hands inbound
    /// messages to `host`, reconnects with backoff after any failure, and never panics or
    /// ends the process. Channels without a connection of their own return at once.
    async fn run(self: Arc<Self>, _host: Arc<dyn ChannelHost>, _shutdown: watch::Receiver<bool>) {}
}

/// Reconnect delays: doubling from `base` up to `max`, each with up to a quarter of
/// random jitter (so many clients do not come back in step), reset after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        self.attempt = self.attempt.saturating_add(1);
        let plain = self.base.saturating_mul(factor).min(self.max);
        plain + jitter(plain / 4)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How one connection to a platform ended, for [`Reconnects`].
#[derive(Debug)]
pub enum Outcome {
    Shutdown,
    /// Connect again at once (the platform asked), unless the connection was too short
    /// to trust that.
    Reconnect(String),
    /// Connect again after a backoff.
    Retry(String),
    /// Connect again after this long (the platform said when).
    Wait(Duration, String),
    /// Only the user can fix this: stop until restarted.
    Fatal(String),
}

/// The reconnect policy every connected channel follows: at once when the platform asks
/// (after a connection that lasted), with a growing backoff after failures and after
/// connections that did not last (so nothing loops tightly), the backoff starting over
/// only once a connection stayed up, and never again after a fatal error.
pub struct Reconnects {
    channel: &'static str,
    backoff: Backoff,
}

impl Reconnects {
    /// A connection that lasted this long was healthy: the backoff starts over.
    pub const HEALTHY: Duration = Duration::from_secs(60);
    /// A reconnect asked for sooner than this after connecting backs off like a failure.
    pub const QUICK: Duration = Duration::from_secs(10);

    pub fn new(channel: &'static str) -> Reconnects {
        Reconnects {
            channel,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        }
    }

    /// Acts on how a connection that `lasted` ended: says so through `condition`, waits
    /// as the policy says; `false` when the channel should stop.
    pub async fn after(
        &mut self,
        outcome: Outcome,
        lasted: Duration,
        condition: impl Fn(ChannelCondition),
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let channel = self.channel;
        if lasted >= Self::HEALTHY {
            self.backoff.reset();
        }
        let (delay, reason) = match outcome {
            Outcome::Shutdown => return false,
            Outcome::Fatal(reason) => {
                tracing::error!("{channel}: {reason}");
                condition(ChannelCondition::NeedsAttention { reason });
                let _ = shutdown.wait_for(|s| *s).await;
                return false;
            }
            Outcome::Reconnect(reason) if lasted >= Self::QUICK => {
                tracing::info!("{channel}: reconnecting: {reason}");
                condition(ChannelCondition::Reconnecting { reason });
                return !*shutdown.borrow();
            }
            Outcome::Wait(delay, reason) => (delay, reason),
            Outcome::Reconnect(reason) | Outcome::Retry(reason) => {
                (self.backoff.next_delay(), reason)
            }
        };
        tracing::warn!(
            "{channel}: {reason}; trying again in {:.1} s",
            delay.as_secs_f64()
        );
        condition(ChannelCondition::Reconnecting { reason });
        sleep_unless_shutdown(delay, shutdown).await
    }
}

/// A random duration from zero to `max`.
pub fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 2];
    match getrandom::fill(&mut bytes) {
        Ok(()) => max.mul_f64(f64::from(u16::from_ne_bytes(bytes)) / f64::from(u16::MAX)),
        Err(_) => max / 2,
    }
}

/// Waits `delay`, or less if `shutdown` turns true; returns whether to go on.
pub async fn sleep_unless_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    };
    !stopped && !*shutdown.borrow()
}

/// A key naming piece `i` of a reply, the same on every attempt and across restarts
/// and builds (FNV-1a of the outbox id, its time, the chat and the index): for
/// platforms that deduplicate by a client key (Discord's `nonce`), or to find a piece
/// in a chat's history (Slack). 18 characters.
pub fn piece_key(message: &OutboundMessage, i: usize) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let identity = format!(
        "{}|{}|{}|{i}",
        message.outbox_id, message.timestamp, message.chat_jid
    );
    for byte in identity.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("nc{hash:016x}")
}

/// Sends a long reply piece by piece and remembers how far it got (in memory, and in
/// the host's state under `{prefix}{outbox id}` so a restart does not repeat pieces
/// either): a reply retried after a failure resumes at the first piece not yet sent.
pub struct PieceLedger {
    prefix: &'static str,
    channel: &'static str,
    sent: std::sync::Mutex<std::collections::HashMap<i64, usize>>,
}

impl PieceLedger {
    /// `prefix`, e.g. `discord:partial_send:`, names the state keys.
    pub fn new(channel: &'static str, prefix: &'static str) -> PieceLedger {
        PieceLedger {
            prefix,
            channel,
            sent: std::sync::Mutex::default(),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, usize>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `pieces` of `message` with `send_piece(index, piece)`, skipping those
    /// already sent.
    pub async fn send<F, Fut>(
        &self,
        host: Option<&Arc<dyn ChannelHost>>,
        message: &OutboundMessage,
        pieces: &[String],
        mut send_piece: F,
    ) -> Result<(), ChannelError>
    where
        F: FnMut(usize, String) -> Fut,
        Fut: std::future::Future<Output = Result<(), ChannelError>>,
    {
        let id = message.outbox_id;
        let key = format!("{}{id}", self.prefix);
        let many = pieces.len() > 1;
        let mut done = self.memory().get(&id).copied().unwrap_or(0);
        if done == 0
            && many
            && let Some(host) = host
        {
            // Pieces sent before a restart.
            done = host
                .load_state(&key)
                .await
                .ok()
                .flatten()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        let save = |progress: String| {
            let key = key.clone();
            async move {
                if let Some(host) = host
                    && let Err(e) = host.save_state(&key, &progress).await
                {
                    tracing::warn!(
                        "{}: cannot record how much of a long reply was sent: {e}",
                        self.channel
                    );
                }
            }
        };
        for (i, piece) in pieces.iter().enumerate().skip(done) {
            if let Err(e) = send_piece(i, piece.clone()).await {
                if e.retry == SendRetry::Never {
                    self.memory().remove(&id);
                    if many {
                        save(String::new()).await;
                    }
                }
                return Err(e);
            }
            self.memory().insert(id, i + 1);
            if many {
                // Cleared once the whole reply is out.
                let last = i + 1 == pieces.len();
                save(if last {
                    String::new()
                } else {
                    (i + 1).to_string()
                })
                .await;
            }
        }
        self.memory().remove(&id);
        Ok(())
    }
}

/// Typing indicators that a platform shows for a few seconds per call: while a chat
/// wants one, `tick` is called every `every`, for at most `max`; a refused call ends it.
pub struct TypingTickers {
    every: Duration,
    max: Duration,
    tasks: std::sync::Mutex<std::collections::HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl TypingTickers {
    pub fn new(every: Duration, max: Duration) -> TypingTickers {
        TypingTickers {
            every,
            max,
            tasks: std::sync::Mutex::default(),
        }
    }

    /// Stops every indicator (the channel is shutting down).
    pub fn stop_all(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (_, task) in tasks.drain() {
            task.abort();
        }
    }

    /// Starts (replacing any) or stops the indicator of `jid`. `tick` returns `false`
    /// when the platform refused it for good.
    pub fn set<F, Fut>(&self, jid: &str, typing: bool, tick: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = tasks.remove(jid) {
            old.abort();
        }
        if !typing {
            return;
        }
        let (every, max) = (self.every, self.max);
        tasks.insert(
            jid.to_string(),
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                while started.elapsed() < max {
                    if !tick().await {
                        break;
                    }
                    tokio::time::sleep(every).await;
                }
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{ChannelCondition, Outcome, Reconnects};
    use std::time::Duration;

    /// The policy's waits, on a paused clock: `(outcome, how long the connection
    /// lasted)` → how long it waited before the next attempt.
    async fn waits(steps: Vec<(Outcome, Duration)>) -> Vec<Duration> {
        let (_tx, mut shutdown) = tokio::sync::watch::channel(false);
        let mut r = Reconnects::new("test");
        let mut waited = Vec::new();
        for (outcome, lasted) in steps {
            let start = tokio::time::Instant::now();
            assert!(
                r.after(outcome, lasted, |_: ChannelCondition| {}, &mut shutdown)
                    .await
            );
            waited.push(start.elapsed());
        }
        waited
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_never_loop_tightly() {
        let s = Duration::from_secs;
        let w = waits(vec![
            // Asked to reconnect after a long healthy connection: at once.
            (Outcome::Reconnect("asked".into()), s(600)),
            // Asked again right after connecting: that backs off, and keeps growing.
            (Outcome::Reconnect("asked".into()), s(1)),
            (Outcome::Reconnect("asked".into()), s(1)),
            (Outcome::Retry("failed".into()), s(1)),
            // The platform said when.
            (Outcome::Wait(s(30), "later".into()), s(1)),
            // A connection that stayed up starts the backoff over.
            (Outcome::Retry("failed".into()), s(120)),
        ])
        .await;
        assert_eq!(w[0], Duration::ZERO);
        assert!(w[1] >= s(1) && w[1] <= Duration::from_millis(1250), "{w:?}");
        assert!(w[2] >= s(2), "{w:?}");
        assert!(w[3] >= s(4), "{w:?}");
        assert_eq!(w[4], s(30));
        assert!(w[5] <= Duration::from_millis(1250), "{w:?}");
    }

    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (d, plain) in delays.iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
            let plain = Duration::from_millis(plain);
            assert!(
                *d >= plain && *d <= plain + plain / 4,
                "{d:?} for {plain:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
