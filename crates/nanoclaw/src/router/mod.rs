//! The inbound path (SPEC §5): store what channels deliver, decide whether a chat needs
//! the agent, and hand it to the queue. The run loop that talks to the agent is in
//! [`run`]; prompt formatting in [`prompt`].
//!
//! The cursor: each chat has a persisted cursor (`chat_cursors.last_seq`) = the last
//! message the agent has *handled*. It moves when a reply is committed (same transaction)
//! or when the agent goes idle or ends successfully — not merely when a run starts. So a
//! run that fails, is killed, or dies with the daemon (`kill -9`) leaves its messages
//! pending and they run again; a run that already answered is never repeated.

mod inbox;
pub mod prompt;
pub mod run;
pub mod sender_allowlist;
mod task;
pub mod trigger;

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::queue::GroupQueue;
use crate::store::{ChatMeta, Message, RegisteredGroup, Store, StoreError, StoredMessage};
use sender_allowlist::{AllowlistState, SenderPolicy};
use trigger::Trigger;

/// At most this many messages (the most recent) go into one prompt; older unhandled
/// ones stay in the store and in the chat history but are not shown to the agent.
pub const MAX_PROMPT_MESSAGES: usize = 200;

/// What happened to an inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    Stored {
        seq: i64,
    },
    /// `(id, chat_jid)` was already stored.
    Duplicate,
    /// The sender allowlist drops this sender's messages in this chat.
    Dropped,
}

pub struct Router {
    store: Arc<Store>,
    senders: Arc<SenderPolicy>,
    queue: Arc<GroupQueue>,
    default_trigger: String,
    metrics: Arc<Metrics>,
    /// Unregistered chats already mentioned in the log.
    unregistered_logged: std::sync::Mutex<std::collections::HashSet<String>>,
    /// `groups/`, where files users send are saved (`None`: they are not).
    groups_dir: Option<std::path::PathBuf>,
    /// `NANOCLAW_MIN_FREE_DISK_MB`, for files users send.
    min_free_bytes: u64,
    /// Voice notes to text (`TRANSCRIBE_URL`), if set.
    transcriber: Option<Arc<crate::transcribe::Transcriber>>,
}

impl Router {
    pub fn new(
        store: Arc<Store>,
        senders: Arc<SenderPolicy>,
        queue: Arc<GroupQueue>,
        default_trigger: String,
        metrics: Arc<Metrics>,
    ) -> Router {
        Router {
            store,
            senders,
            queue,
            default_trigger,
            metrics,
            unregistered_logged: Default::default(),
            groups_dir: None,
            min_free_bytes: 0,
            transcriber: None,
        }
    }

    /// Transcribes audio files users send with `transcriber`.
    pub fn with_transcriber(
        mut self,
        transcriber: Option<Arc<crate::transcribe::Transcriber>>,
    ) -> Router {
        self.transcriber = transcriber;
        self
    }

    /// The disk limits a file saved for `group` is held to: its folders within its quota
    /// (`container_config.limits.diskMb`), and the free-space floor, as for its runs.
    fn disk_limits(
        &self,
        groups_dir: &std::path::Path,
        group: &RegisteredGroup,
        folder: &crate::layout::GroupFolder,
    ) -> Result<crate::sandbox::disk::DiskLimits, String> {
        // A config that does not parse has no quota to go by: no file is taken (its runs
        // fail too, and `doctor` says why).
        let quota_mb = crate::mounts::ContainerConfig::parse(group.container_config.as_deref())
            .map_err(|e| format!("the group's container_config is invalid ({e})"))?
            .limits
            .disk_mb
            .unwrap_or(crate::sandbox::Limits::DEFAULT_DISK_MB);
        let root = groups_dir
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| groups_dir.to_path_buf());
        // The same folders and quota a run of the group is held to.
        Ok(crate::sandbox::disk::DiskLimits::for_group(
            &crate::layout::Layout::new(&root),
            folder,
            group.is_main,
            quota_mb << 20,
            self.min_free_bytes,
        ))
    }

    /// Saves files users send (attachments) into the groups' folders under `groups_dir`,
    /// within each group's disk quota and never below `min_free_bytes` of free space.
    pub fn with_groups_dir(
        mut self,
        groups_dir: std::path::PathBuf,
        min_free_bytes: u64,
    ) -> Router {
        self.groups_dir = Some(groups_dir);
        self.min_free_bytes = min_free_bytes;
        self
    }

    /// Stores an inbound message (unless the sender allowlist drops it) and, for a
    /// registered chat, queues a run when the message warrants one. Returns once the
    /// message is durable.
    pub async fn accept(&self, chat: ChatMeta, message: Message) -> Result<Accepted, StoreError> {
        let senders = Arc::clone(&self.senders);
        let (jid, name) = (chat.jid.clone(), chat.name.clone());
        let (accepted, group) = self
            .store
            .call(move |s| {
                let group = s.registered_group(&message.chat_jid)?;
                if group.is_some()
                    && !message.is_from_me
                    && !message.is_bot_message
                    && senders
                        .current()
                        .should_drop(&message.chat_jid, &message.sender)
                {
                    return Ok((Accepted::Dropped, None));
                }
                let accepted = match s.insert_message(&chat, &message)? {
                    Some(seq) => Accepted::Stored { seq },
                    None => Accepted::Duplicate,
                };
                Ok::<_, StoreError>((accepted, group))
            })
            .await?;
        match accepted {
            Accepted::Stored { .. } => Metrics::inc(&self.metrics.messages_stored),
            Accepted::Dropped => Metrics::inc(&self.metrics.messages_dropped),
            Accepted::Duplicate => {}
        }
        match (&accepted, group) {
            (Accepted::Stored { .. }, Some(group)) => self.check_group(group).await,
            (Accepted::Stored { .. }, None) => self.mention_unregistered(&jid, name.as_deref()),
            _ => {}
        }
        Ok(accepted)
    }

    /// Tells the user, once per chat and process, how to let the assistant answer in a
    /// chat it hears but is not registered for (where else would they find its JID?).
    fn mention_unregistered(&self, jid: &str, name: Option<&str>) {
        let first = {
            let mut logged = self
                .unregistered_logged
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Bounded: a bot added to thousands of chats must not grow this forever.
            logged.len() < 1000 && logged.insert(jid.to_string())
        };
        if first {
            tracing::info!(
                chat_jid = ?jid,
                chat_name = ?name,
                "message stored from a chat that is not registered; to have the assistant answer there: nanoclaw groups add --jid {jid:?} --name NAME --folder FOLDER"
            );
        }
    }

    /// Records chat metadata alone.
    pub async fn chat_seen(&self, chat: ChatMeta) -> Result<(), StoreError> {
        self.store.call(move |s| s.upsert_chat(&chat)).await
    }

    /// Startup recovery: queue every registered chat with messages that need the agent
    /// (accepted before a crash, or left by runs that failed).
    pub async fn recover(&self) -> Result<(), StoreError> {
        let groups = self.store.call(|s| s.registered_groups()).await?;
        for group in groups {
            self.check_group(group).await;
        }
        Ok(())
    }

    /// Queues a run for `group` if its pending messages warrant one. Cheap to call often:
    /// the queue hands it to a live run or coalesces it with a waiting one.
    pub async fn check_group(&self, group: RegisteredGroup) {
        if let Err(e) = group.folder() {
            tracing::warn!(chat_jid = %group.jid, "not running the agent for this group: {e}");
            return;
        }
        let senders = Arc::clone(&self.senders);
        let default_trigger = self.default_trigger.clone();
        let jid = group.jid.clone();
        let decision = self
            .store
            .call(move |s| {
                let cursor = s.cursor(&group.jid)?;
                let pending = s.pending_messages(&group.jid, cursor, MAX_PROMPT_MESSAGES)?;
                Ok::<_, StoreError>(wants_run(
                    &group,
                    &pending,
                    &senders.current(),
                    &default_trigger,
                ))
            })
            .await;
        match decision {
            Ok(true) => self.queue.enqueue_messages(&jid),
            Ok(false) => {}
            Err(e) => tracing::error!(chat_jid = %jid, "cannot check pending messages: {e}"),
        }
    }
}

/// Whether `pending` messages of `group` should reach the agent now: main and
/// no-trigger groups always; others only when a sender who may trigger used the trigger.
/// The assistant's own messages never count (they are not in `pending`).
pub fn wants_run(
    group: &RegisteredGroup,
    pending: &[StoredMessage],
    senders: &AllowlistState,
    default_trigger: &str,
) -> bool {
    if pending.is_empty() {
        return false;
    }
    if !group.needs_trigger() {
        return true;
    }
    let trigger = Trigger::new(&group.trigger_pattern, default_trigger);
    pending.iter().any(|m| {
        let m = &m.message;
        !m.is_bot_message
            && trigger.matches(&m.content)
            && (m.is_from_me || senders.may_trigger(&group.jid, &m.sender))
    })
}

#[async_trait::async_trait]
impl crate::channels::ChannelHost for Router {
    async fn deliver(&self, chat: ChatMeta, message: Message) -> Result<(), String> {
        self.accept(chat, message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn chat_seen(&self, chat: ChatMeta) -> Result<(), String> {
        Router::chat_seen(self, chat)
            .await
            .map_err(|e| e.to_string())
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, String> {
        let key = key.to_string();
        self.store
            .call(move |s| s.state(&key))
            .await
            .map_err(|e| e.to_string())
    }

    async fn save_state(&self, key: &str, value: &str) -> Result<(), String> {
        let (key, value) = (key.to_string(), value.to_string());
        self.store
            .call(move |s| s.set_state(&key, &value))
            .await
            .map_err(|e| e.to_string())
    }

    async fn trigger_for(&self, jid: &str) -> Option<String> {
        let jid = jid.to_string();
        let group = self
            .store
            .call(move |s| s.registered_group(&jid))
            .await
            .ok()
            .flatten()?;
        Some(match group.trigger_pattern.trim() {
            "" => self.default_trigger.clone(),
            t => t.to_string(),
        })
    }

    async fn wants_files(&self, message: &Message) -> bool {
        let senders = Arc::clone(&self.senders);
        let (jid, sender) = (message.chat_jid.clone(), message.sender.clone());
        // As `accept` decides: the owner's and the assistant's own are never dropped.
        let own = message.is_from_me || message.is_bot_message;
        self.store
            .call(move |s| s.registered_group(&jid))
            .await
            .ok()
            .flatten()
            .is_some_and(|g| own || !senders.current().should_drop(&g.jid, &sender))
    }

    async fn has_message(&self, jid: &str, id: &str) -> bool {
        let (jid, id) = (jid.to_string(), id.to_string());
        self.store
            .call(move |s| s.has_message(&jid, &id))
            .await
            .unwrap_or(false)
    }

    async fn transcribe(&self, name: &str, bytes: &[u8]) -> Result<Option<String>, String> {
        match &self.transcriber {
            Some(t) if crate::transcribe::is_audio(name) => {
                t.transcribe(name, bytes).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn refuse_file(&self, jid: &str, size: u64) -> Option<String> {
        let groups_dir = self.groups_dir.clone()?;
        let key = jid.to_string();
        let group = self
            .store
            .call(move |s| s.registered_group(&key))
            .await
            .ok()
            .flatten()?;
        let folder = group.folder().ok()?;
        let disk = match self.disk_limits(&groups_dir, &group, &folder) {
            Ok(disk) => disk,
            Err(why) => return Some(why),
        };
        tokio::task::spawn_blocking(move || disk.refuse_file(size))
            .await
            .ok()
            .flatten()
    }

    async fn save_file(
        &self,
        jid: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<Option<String>, String> {
        let Some(groups_dir) = self.groups_dir.clone() else {
            return Ok(None);
        };
        let key = jid.to_string();
        let group = self
            .store
            .call(move |s| s.registered_group(&key))
            .await
            .map_err(|e| e.to_string())?;
        let Some(group) = group else { return Ok(None) };
        let folder = group.folder().map_err(|e| e.to_string())?;
        let disk = self.disk_limits(&groups_dir, &group, &folder)?;
        let (name, bytes) = (name.to_string(), bytes.to_vec());
        let saved = tokio::task::spawn_blocking(move || {
            if let Some(why) = disk.refuse_file(bytes.len() as u64) {
                return Err(why);
            }
            inbox::save(&groups_dir, folder.as_str(), &name, &bytes).map_err(|e| {
                tracing::warn!("cannot save a file into {}'s inbox: {e}", folder.as_str());
                "it could not be written".to_string()
            })
        })
        .await
        .map_err(|e| format!("saving a file: {e}"))?;
        if let Err(why) = &saved {
            tracing::warn!(group = %group.folder, "a file a user sent is not saved: {why}");
        }
        saved.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(main: bool, requires_trigger: bool) -> RegisteredGroup {
        RegisteredGroup {
            jid: "tg:1".into(),
            name: "g".into(),
            folder: "g".into(),
            trigger_pattern: "@Andy".into(),
            added_at: String::new(),
            container_config: None,
            requires_trigger,
            is_main: main,
        }
    }

    fn msg(content: &str, sender: &str, from_me: bool) -> StoredMessage {
        StoredMessage {
            seq: 1,
            message: Message {
                id: "1".into(),
                chat_jid: "tg:1".into(),
                sender: sender.into(),
                sender_name: sender.into(),
                content: content.into(),
                timestamp: String::new(),
                is_from_me: from_me,
                is_bot_message: false,
                flagged: None,
            },
        }
    }

    #[test]
    fn trigger_decisions() {
        let all = AllowlistState::Missing;
        let invalid = AllowlistState::Invalid {
            path: "x".into(),
            reason: "broken".into(),
        };
        let chatter = [msg("hello", "bob", false)];
        let triggered = [msg("hello", "bob", false), msg("@Andy help", "bob", false)];
        let cases = [
            (
                group(true, true),
                &chatter[..],
                &all,
                true,
                "main never needs a trigger",
            ),
            (
                group(false, false),
                &chatter[..],
                &all,
                true,
                "requires_trigger=false",
            ),
            (
                group(false, true),
                &chatter[..],
                &all,
                false,
                "no trigger, no run",
            ),
            (group(false, true), &triggered[..], &all, true, "triggered"),
            (
                group(false, true),
                &triggered[..],
                &invalid,
                false,
                "invalid allowlist fails closed",
            ),
            (
                group(true, true),
                &chatter[..],
                &invalid,
                true,
                "main still works",
            ),
            (group(false, true), &[][..], &all, false, "nothing pending"),
        ];
        for (g, pending, senders, want, why) in cases {
            assert_eq!(wants_run(&g, pending, senders, "@Andy"), want, "{why}");
        }
        let from_me = [msg("@Andy do it", "me", true)];
        assert!(
            wants_run(&group(false, true), &from_me, &invalid, "@Andy"),
            "the owner's own messages may always trigger"
        );
    }
}
