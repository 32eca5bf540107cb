//! The reply outbox: an assistant reply is committed (stored as a chat message, queued for
//! delivery, and the chat cursor moved past what it answers) in one transaction, then
//! delivered by the outbox worker. A crash after the commit re-delivers instead of
//! re-running the agent; a crash before it re-runs the agent, because nothing was sent.

use rusqlite::{Row, params};
use serde::Serialize;

use super::messages::{ChatMeta, Message, advance_cursor, insert_message, upsert_chat};
use super::{Store, StoreError, WithContext};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxItem {
    pub id: i64,
    /// Position in delivery order, once delivered.
    pub delivery_seq: Option<i64>,
    pub chat_jid: String,
    pub text: String,
    pub message_id: String,
    pub created_at: String,
    pub attempts: i64,
    /// The file the reply carries (`text` is then its caption, maybe empty).
    pub file: Option<OutboxFile>,
    /// The main group's agent sent it to this chat on purpose (IPC `message`).
    pub explicit: bool,
}

/// A file in a reply: the host's own copy, made when the agent sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxFile {
    /// The file's name as the chat shows it.
    pub name: String,
    #[serde(skip)]
    pub path: std::path::PathBuf,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct CommittedReply {
    pub outbox_id: i64,
    pub message: Message,
}

const OUTBOX_COLUMNS: &str = "id, chat_jid, text, message_id, created_at, attempts, delivery_seq, file_name, file_path, file_size, explicit";

// The outbox statements every reply and the status page run (plans checked by
// `store::tests::hot_queries_use_indexes`).

/// The oldest undelivered reply of each chat.
pub(super) fn pending_heads_sql() -> String {
    format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox
         WHERE id IN (SELECT MIN(id) FROM outbox
                      WHERE delivered_at IS NULL AND failed_at IS NULL GROUP BY chat_jid)
         ORDER BY id LIMIT ?1"
    )
}

/// Replies delivered after a delivery number (event-stream replay).
pub(super) fn delivered_after_sql() -> String {
    format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE delivery_seq > ?1 ORDER BY delivery_seq LIMIT ?2"
    )
}

pub(super) const COUNT_PENDING_SQL: &str =
    "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL";

fn outbox_item(row: &Row<'_>) -> rusqlite::Result<OutboxItem> {
    Ok(OutboxItem {
        id: row.get(0)?,
        chat_jid: row.get(1)?,
        text: row.get(2)?,
        message_id: row.get(3)?,
        created_at: row.get(4)?,
        attempts: row.get(5)?,
        delivery_seq: row.get(6)?,
        file: match (
            row.get::<_, Option<String>>(7)?,
            row.get::<_, Option<String>>(8)?,
        ) {
            (Some(name), Some(path)) => Some(OutboxFile {
                name,
                path: path.into(),
                size: row.get::<_, Option<i64>>(9)?.unwrap_or(0).max(0) as u64,
            }),
            _ => None,
        },
        explicit: row.get::<_, Option<bool>>(10)?.unwrap_or(false),
    })
}

impl Store {
    /// Stores an assistant reply, queues it for delivery and, if `answered_upto` is
    /// given, moves the chat's cursor to it — all or nothing.
    pub fn commit_reply(
        &self,
        chat_jid: &str,
        text: &str,
        assistant_name: &str,
        answered_upto: Option<i64>,
    ) -> Result<CommittedReply, StoreError> {
        self.commit_outbound(chat_jid, text, None, assistant_name, answered_upto, false)
    }

    /// Stores and queues a message the main group's agent sends to `chat_jid` on
    /// purpose (IPC `message`): a channel may deliver it to a chat that never wrote.
    pub fn commit_explicit_message(
        &self,
        chat_jid: &str,
        text: &str,
        assistant_name: &str,
    ) -> Result<CommittedReply, StoreError> {
        self.commit_outbound(chat_jid, text, None, assistant_name, None, true)
    }

    /// Stores a file an agent sent (the host's copy, `file.path`) with its caption, and
    /// queues it for delivery. The chat shows `[file: name]` and the caption.
    pub fn commit_file(
        &self,
        chat_jid: &str,
        caption: &str,
        file: &OutboxFile,
        assistant_name: &str,
    ) -> Result<CommittedReply, StoreError> {
        self.commit_outbound(chat_jid, caption, Some(file), assistant_name, None, false)
    }

    fn commit_outbound(
        &self,
        chat_jid: &str,
        text: &str,
        file: Option<&OutboxFile>,
        assistant_name: &str,
        answered_upto: Option<i64>,
        explicit: bool,
    ) -> Result<CommittedReply, StoreError> {
        let now = crate::clock::now();
        let content = match file {
            Some(f) if text.is_empty() => format!("[file: {}]", f.name),
            Some(f) => format!("[file: {}] {text}", f.name),
            None => text.to_string(),
        };
        let message = Message {
            id: crate::ids::message_id(),
            chat_jid: chat_jid.to_string(),
            sender: assistant_name.to_string(),
            sender_name: assistant_name.to_string(),
            content,
            timestamp: now.clone(),
            is_from_me: true,
            is_bot_message: true,
            flagged: None,
        };
        let mut conn = self.conn();
        let tx = Store::write_tx(&mut conn, "starting to commit a reply")?;
        upsert_chat(
            &tx,
            &ChatMeta {
                jid: chat_jid.to_string(),
                timestamp: now.clone(),
                ..Default::default()
            },
        )?;
        insert_message(&tx, &message)?;
        tx.execute(
            "INSERT INTO outbox (chat_jid, text, message_id, created_at, file_name, file_path, file_size, explicit)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                chat_jid,
                text,
                message.id,
                now,
                file.map(|f| f.name.as_str()),
                file.map(|f| f.path.to_string_lossy().into_owned()),
                file.map(|f| f.size as i64),
                explicit,
            ],
        )
        .ctx("queueing a reply")?;
        let outbox_id = tx.last_insert_rowid();
        if let Some(seq) = answered_upto {
            advance_cursor(&tx, chat_jid, seq)?;
        }
        tx.commit().ctx("committing a reply")?;
        Ok(CommittedReply { outbox_id, message })
    }

    /// The oldest undelivered reply of each chat (replies to one chat go out in order,
    /// and a chat whose channel is down must not hold back the others), oldest first.
    pub fn pending_outbox_heads(&self, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&pending_heads_sql())
            .ctx("preparing the outbox query")?;
        let rows = stmt
            .query_map(params![limit as i64], outbox_item)
            .ctx("reading the outbox")?;
        rows.collect::<Result<_, _>>().ctx("reading the outbox")
    }

    /// Replies delivered after delivery number `after_seq`, in delivery order (for
    /// event-stream replay).
    pub fn delivered_after(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&delivered_after_sql())
            .ctx("preparing the outbox replay query")?;
        let rows = stmt
            .query_map(params![after_seq, limit as i64], outbox_item)
            .ctx("reading the outbox")?;
        rows.collect::<Result<_, _>>().ctx("reading the outbox")
    }

    /// Records a delivery; returns the reply's delivery number. Idempotent.
    pub fn mark_delivered(&self, id: i64) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = Store::write_tx(&mut conn, "starting to mark a reply delivered")?;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT delivery_seq FROM outbox WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .ctx("reading a reply's delivery number")?;
        if let Some(seq) = existing {
            return Ok(seq);
        }
        let seq: i64 = tx
            .query_row(
                "UPDATE counters SET value = value + 1 WHERE name = 'delivery_seq' RETURNING value",
                [],
                |r| r.get(0),
            )
            .ctx("numbering a delivery")?;
        tx.execute(
            "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL, delivery_seq = ?3
             WHERE id = ?1",
            params![id, crate::clock::now(), seq],
        )
        .ctx("marking a reply delivered")?;
        tx.commit().ctx("committing a delivery")?;
        Ok(seq)
    }

    pub fn record_delivery_failure(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                params![id, error],
            )
            .ctx("recording a delivery failure")?;
        Ok(())
    }

    /// Gives up on a reply: it is never tried again and no longer holds back its chat.
    pub fn mark_undeliverable(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, failed_at = ?3 WHERE id = ?1",
                params![id, error, crate::clock::now()],
            )
            .ctx("giving up on a reply")?;
        Ok(())
    }

    /// The host's copies of files in replies still waiting for delivery (the sweep of
    /// `data/outbox-files/` keeps these).
    pub fn pending_outbox_files(&self) -> Result<Vec<std::path::PathBuf>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT file_path FROM outbox WHERE file_path IS NOT NULL
                 AND delivered_at IS NULL AND failed_at IS NULL",
            )
            .ctx("preparing the outbox files query")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .ctx("reading the outbox files")?;
        rows.map(|r| r.map(std::path::PathBuf::from))
            .collect::<Result<_, _>>()
            .ctx("reading the outbox files")
    }

    /// The files in a chat's replies, by the reply's message id: `(outbox id, file)`.
    pub fn reply_files(
        &self,
        chat_jid: &str,
    ) -> Result<std::collections::HashMap<String, (i64, OutboxFile)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT message_id, id, file_name, file_path, file_size FROM outbox
                 WHERE chat_jid = ?1 AND file_path IS NOT NULL",
            )
            .ctx("preparing the reply files query")?;
        let rows = stmt
            .query_map(params![chat_jid], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (
                        r.get::<_, i64>(1)?,
                        OutboxFile {
                            name: r.get(2)?,
                            path: r.get::<_, String>(3)?.into(),
                            size: r.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as u64,
                        },
                    ),
                ))
            })
            .ctx("reading the reply files")?;
        rows.collect::<Result<_, _>>()
            .ctx("reading the reply files")
    }

    /// A delivered reply by its outbox id (a file the web app downloads).
    pub fn outbox_item(&self, id: i64) -> Result<Option<OutboxItem>, StoreError> {
        use rusqlite::OptionalExtension;
        self.conn()
            .query_row(
                &format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ?1"),
                params![id],
                outbox_item,
            )
            .optional()
            .ctx("reading a reply")
    }

    pub fn count_pending_outbox(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row(COUNT_PENDING_SQL, [], |r| r.get(0))
            .ctx("counting undelivered replies")
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::open_temp;

    #[test]
    fn a_committed_reply_is_a_message_an_outbox_item_and_a_cursor_move() {
        let (_d, store) = open_temp();
        let c = store
            .commit_reply("web:main", "hello", "Andy", Some(42))
            .expect("commit");
        assert!(c.message.is_bot_message && c.message.is_from_me);
        let msgs = store.chat_messages("web:main", None).expect("messages");
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].message.content, "hello");
        assert_eq!(store.cursor("web:main").expect("cursor"), 42);
        let pending = store.pending_outbox_heads(10).expect("outbox");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, c.outbox_id);

        store
            .record_delivery_failure(c.outbox_id, "offline")
            .expect("failure");
        assert_eq!(
            store.pending_outbox_heads(10).expect("outbox")[0].attempts,
            1
        );
        assert!(store.delivered_after(0, 10).expect("replay").is_empty());
        let seq = store.mark_delivered(c.outbox_id).expect("delivered");
        assert_eq!(
            store.mark_delivered(c.outbox_id).expect("again"),
            seq,
            "idempotent"
        );
        assert!(store.pending_outbox_heads(10).expect("outbox").is_empty());
        assert_eq!(store.delivered_after(0, 10).expect("replay").len(), 1);
        assert_eq!(store.count_pending_outbox().expect("count"), 0);
    }

    #[test]
    fn heads_are_per_chat_and_replay_follows_delivery_order() {
        let (_d, store) = open_temp();
        let a1 = store
            .commit_reply("tg:a", "a1", "Andy", None)
            .expect("commit");
        let a2 = store
            .commit_reply("tg:a", "a2", "Andy", None)
            .expect("commit");
        let b1 = store
            .commit_reply("web:b", "b1", "Andy", None)
            .expect("commit");
        let heads: Vec<i64> = store
            .pending_outbox_heads(10)
            .expect("heads")
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(
            heads,
            [a1.outbox_id, b1.outbox_id],
            "one per chat; a2 waits for a1"
        );
        // b1 goes out before a1 (a's channel was down): replay follows delivery order.
        store.mark_delivered(b1.outbox_id).expect("b1");
        store.mark_delivered(a1.outbox_id).expect("a1");
        store.mark_delivered(a2.outbox_id).expect("a2");
        let texts = |after| -> Vec<String> {
            store
                .delivered_after(after, 10)
                .expect("replay")
                .into_iter()
                .map(|i| i.text)
                .collect()
        };
        assert_eq!(texts(0), ["b1", "a1", "a2"]);
        assert_eq!(texts(1), ["a1", "a2"]);
    }
}
