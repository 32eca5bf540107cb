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
}

#[derive(Debug, Clone)]
pub struct CommittedReply {
    pub outbox_id: i64,
    pub message: Message,
}

const OUTBOX_COLUMNS: &str = "id, chat_jid, text, message_id, created_at, attempts, delivery_seq";

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
            "INSERT INTO outbox (chat_jid, text, message_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![chat_jid, text, message.id, now],
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
