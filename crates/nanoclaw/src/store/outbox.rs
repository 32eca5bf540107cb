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
    pub chat_jid: String,
    pub text: String,
    pub message_id: String,
    pub created_at: String,
    pub attempts: i64,
}

#[derive(Debug, Clone)]
pub struct CommittedReply {
    pub outbox_id: i64,
    pub message: Message,
}

fn outbox_item(row: &Row<'_>) -> rusqlite::Result<OutboxItem> {
    Ok(OutboxItem {
        id: row.get(0)?,
        chat_jid: row.get(1)?,
        text: row.get(2)?,
        message_id: row.get(3)?,
        created_at: row.get(4)?,
        attempts: row.get(5)?,
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
        let now = crate::clock::now();
        let message = Message {
            id: crate::ids::message_id(),
            chat_jid: chat_jid.to_string(),
            sender: assistant_name.to_string(),
            sender_name: assistant_name.to_string(),
            content: text.to_string(),
            timestamp: now.clone(),
            is_from_me: true,
            is_bot_message: true,
        };
        let mut conn = self.conn();
        let tx = conn.transaction().ctx("starting to commit a reply")?;
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
            "INSERT INTO outbox (chat_jid, text, message_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![chat_jid, text, message.id, now],
        )
        .ctx("queueing a reply")?;
        let outbox_id = tx.last_insert_rowid();
        if let Some(rowid) = answered_upto {
            advance_cursor(&tx, chat_jid, rowid)?;
        }
        tx.commit().ctx("committing a reply")?;
        Ok(CommittedReply { outbox_id, message })
    }

    /// Undelivered replies, oldest first.
    pub fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, chat_jid, text, message_id, created_at, attempts FROM outbox
                 WHERE delivered_at IS NULL ORDER BY id LIMIT ?1",
            )
            .ctx("preparing the outbox query")?;
        let rows = stmt
            .query_map(params![limit as i64], outbox_item)
            .ctx("reading the outbox")?;
        rows.collect::<Result<_, _>>().ctx("reading the outbox")
    }

    /// Delivered replies after `after_id`, oldest first (for event-stream replay).
    pub fn delivered_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, chat_jid, text, message_id, created_at, attempts FROM outbox
                 WHERE id > ?1 AND delivered_at IS NOT NULL ORDER BY id LIMIT ?2",
            )
            .ctx("preparing the outbox replay query")?;
        let rows = stmt
            .query_map(params![after_id, limit as i64], outbox_item)
            .ctx("reading the outbox")?;
        rows.collect::<Result<_, _>>().ctx("reading the outbox")
    }

    pub fn mark_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
                params![id, crate::clock::now()],
            )
            .ctx("marking a reply delivered")?;
        Ok(())
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

    pub fn count_pending_outbox(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
                [],
                |r| r.get(0),
            )
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
        let pending = store.pending_outbox(10).expect("outbox");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, c.outbox_id);

        store
            .record_delivery_failure(c.outbox_id, "offline")
            .expect("failure");
        assert_eq!(store.pending_outbox(10).expect("outbox")[0].attempts, 1);
        assert!(store.delivered_after(0, 10).expect("replay").is_empty());
        store.mark_delivered(c.outbox_id).expect("delivered");
        assert!(store.pending_outbox(10).expect("outbox").is_empty());
        assert_eq!(store.delivered_after(0, 10).expect("replay").len(), 1);
        assert_eq!(store.count_pending_outbox().expect("count"), 0);
    }
}
