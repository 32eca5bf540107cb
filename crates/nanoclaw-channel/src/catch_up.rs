//! Catching up after a gap: where each registered chat's stored messages stop
//! ([`Cursors`]), and fetching what was missed from the platform's history ([`run`]).
//!
//! When a connection (re)opens after a gap the platform will not replay (a new Discord
//! session, Slack after its retries gave up), each chat's cursor becomes *pending*: the
//! position the fetch starts from, which live messages do not move. A pending cursor is
//! cleared only when that chat is caught up (or can no longer be read), and survives a
//! restart, so a gap is never skipped because newer messages arrived meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Message ids as the platforms write them: decimal numbers that grow with time
/// (Discord snowflakes, Slack's `seconds.micros`), compared as numbers.
pub fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    let int = |s: &str| s.split('.').next().unwrap_or("").len();
    int(a).cmp(&int(b)).then_with(|| a.cmp(b))
}

/// How many chats are tracked (the most recently active ones).
pub const MAX_CHATS: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursors {
    /// chat → the newest message id stored from it.
    #[serde(default)]
    pub last: BTreeMap<String, String>,
    /// chat → where fetching the missed messages starts.
    #[serde(default)]
    pub pending: BTreeMap<String, String>,
}

impl Cursors {
    /// Notes that `id` of `chat` was stored (only ever forward).
    pub fn stored(&mut self, chat: &str, id: &str) {
        if self
            .last
            .get(chat)
            .is_none_or(|old| id_order(id, old).is_gt())
        {
            self.last.insert(chat.to_string(), id.to_string());
        }
        while self.last.len() > MAX_CHATS {
            let Some(oldest) = self
                .last
                .iter()
                .min_by(|a, b| id_order(a.1, b.1))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.last.remove(&oldest);
            self.pending.remove(&oldest);
        }
    }

    /// A gap begins: every chat is pending from where it stopped (an older pending
    /// position stays). Returns what to fetch.
    pub fn begin(&mut self) -> Vec<(String, String)> {
        for (chat, id) in &self.last {
            self.pending
                .entry(chat.clone())
                .or_insert_with(|| id.clone());
        }
        self.pending
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Applies what a [`run`] reported.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Progress { chat, id } => {
                if let Some(p) = self.pending.get_mut(chat)
                    && id_order(id, p).is_gt()
                {
                    *p = id.clone();
                }
                self.stored(chat, id);
            }
            Event::Done { chat } => {
                self.pending.remove(chat);
            }
        }
    }
}

/// What a [`run`] tells the connection, to persist with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `id` of `chat` is stored.
    Progress { chat: String, id: String },
    /// `chat` is caught up (or cannot be read).
    Done { chat: String },
}

/// One page of a chat's history after a message.
pub struct Page<T> {
    /// Oldest first, each with its id.
    pub items: Vec<(String, T)>,
    /// There are newer messages after the last one.
    pub more: bool,
}

pub enum HistoryError {
    /// The chat cannot be read, now or later (gone, no access): stop trying.
    Gone(String),
    /// Try again later.
    Failed(String),
}

/// A platform's history, for [`run`].
#[async_trait]
pub trait History: Send + Sync + 'static {
    type Item: Send + Sync;
    /// Messages of `chat` after the message `after`.
    async fn page(&self, chat: &str, after: &str) -> Result<Page<Self::Item>, HistoryError>;
    /// Stores one of them (the store ignores a message it has).
    async fn store(&self, chat: &str, item: &Self::Item) -> Result<(), String>;
}

/// Pages fetched per chat at most.
const MAX_PAGES: usize = 10;
/// Attempts per chat before leaving it to the next connection.
const ATTEMPTS: u32 = 5;

/// Fetches and stores what each chat of `pending` missed, reporting as it goes.
pub async fn run<H: History>(
    channel: &'static str,
    history: Arc<H>,
    pending: Vec<(String, String)>,
    report: mpsc::UnboundedSender<Event>,
) {
    let mut caught = 0usize;
    for (chat, mut after) in pending {
        let mut pages = 0;
        let mut failures = 0;
        loop {
            match history.page(&chat, &after).await {
                Ok(page) => {
                    for (id, item) in &page.items {
                        if let Err(e) = history.store(&chat, item).await {
                            tracing::warn!(
                                "{channel}: cannot store a missed message ({e}); trying again on the next connection"
                            );
                            return;
                        }
                        after = id.clone();
                        caught += 1;
                        let _ = report.send(Event::Progress {
                            chat: chat.clone(),
                            id: id.clone(),
                        });
                    }
                    pages += 1;
                    if page.more && pages >= MAX_PAGES {
                        tracing::warn!(
                            "{channel}: more messages were missed in {chat} than are fetched \
                             ({caught} so far); the rest are not"
                        );
                    }
                    if !page.more || pages >= MAX_PAGES {
                        let _ = report.send(Event::Done { chat: chat.clone() });
                        break;
                    }
                }
                Err(HistoryError::Gone(why)) => {
                    tracing::warn!("{channel}: cannot fetch what {chat} missed: {why}");
                    let _ = report.send(Event::Done { chat: chat.clone() });
                    break;
                }
                Err(HistoryError::Failed(why)) => {
                    failures += 1;
                    if failures >= ATTEMPTS {
                        tracing::warn!(
                            "{channel}: cannot fetch what {chat} missed ({why}); trying again on the next connection"
                        );
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1 << failures)).await;
                }
            }
        }
    }
    if caught > 0 {
        tracing::info!("{channel}: fetched {caught} messages sent while disconnected");
    }
}

/// A task that is stopped when this is dropped (the connection it belongs to ended).
pub struct Task(pub tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_positions_hold_until_the_chat_is_caught_up() {
        let mut c = Cursors::default();
        c.stored("a", "999");
        c.stored("a", "1000");
        c.stored("a", "998");
        assert_eq!(c.last["a"], "1000", "only ever forward, by number");
        assert_eq!(c.begin(), [("a".to_string(), "1000".to_string())]);
        // Live messages move the cursor, not where the fetch starts.
        c.stored("a", "1005");
        assert_eq!(c.begin(), [("a".to_string(), "1000".to_string())]);
        c.apply(&Event::Progress {
            chat: "a".into(),
            id: "1002".into(),
        });
        assert_eq!(c.pending["a"], "1002");
        assert_eq!(c.last["a"], "1005");
        c.apply(&Event::Done { chat: "a".into() });
        assert!(c.pending.is_empty());
        for i in 0..MAX_CHATS + 5 {
            c.stored(&format!("c{i}"), &format!("{}", 2000 + i));
        }
        assert_eq!(c.last.len(), MAX_CHATS);
        assert!(
            !c.last.contains_key("a"),
            "the least recently active chat goes first"
        );
        assert_eq!(
            id_order("1769866320.000005", "1769866320.000010"),
            std::cmp::Ordering::Less
        );
        assert_eq!(id_order("99", "100"), std::cmp::Ordering::Less);
    }
}
