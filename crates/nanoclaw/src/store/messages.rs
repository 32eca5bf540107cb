//! Chats, messages and the per-chat cursor.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, StoreError, WithContext};

pub use nanoclaw_channel::{ChatMeta, Message};

/// A stored message with its arrival order (`seq`), which the cursor follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    pub seq: i64,
    #[serde(flatten)]
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatInfo {
    pub jid: String,
    pub name: Option<String>,
    pub last_message_time: Option<String>,
    pub channel: Option<String>,
    pub is_group: bool,
}

const MESSAGE_COLUMNS: &str = "seq, id, chat_jid, sender, sender_name, content, timestamp, is_from_me, is_bot_message,
     (SELECT reason FROM message_flags f WHERE f.chat_jid = messages.chat_jid AND f.id = messages.id)";

fn stored_message(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        seq: row.get(0)?,
        message: Message {
            id: row.get(1)?,
            chat_jid: row.get(2)?,
            sender: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
            sender_name: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
            content: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
            timestamp: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
            is_from_me: row.get::<_, Option<bool>>(7)?.unwrap_or(false),
            is_bot_message: row.get::<_, Option<bool>>(8)?.unwrap_or(false),
            flagged: row.get(9)?,
        },
    })
}

// The statements on the path of every message, named so that a test can check their
// plans (`store::tests::hot_queries_use_indexes`): none may read more as history grows.

/// Messages of a chat after its cursor that the agent should see.
pub(super) fn pending_sql() -> String {
    format!(
        "SELECT * FROM (
           SELECT {MESSAGE_COLUMNS} FROM messages
           WHERE chat_jid = ?1 AND seq > ?2
             AND COALESCE(is_bot_message, 0) = 0
             AND content IS NOT NULL AND content <> ''
             AND NOT EXISTS (SELECT 1 FROM message_flags f
                             WHERE f.chat_jid = messages.chat_jid AND f.id = messages.id)
           ORDER BY seq DESC LIMIT ?3
         ) ORDER BY timestamp, seq"
    )
}

/// The last messages of a chat (the web app's chat page).
pub(super) fn chat_messages_sql() -> String {
    format!(
        "SELECT * FROM (
           SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_jid = ?1
           ORDER BY timestamp DESC, seq DESC LIMIT ?2
         ) ORDER BY timestamp, seq"
    )
}

pub(super) const INSERT_MESSAGE_SQL: &str = "INSERT OR IGNORE INTO messages
       (id, chat_jid, sender, sender_name, content, timestamp, is_from_me, is_bot_message)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
pub(super) const NEW_SEQ_SQL: &str = "SELECT seq FROM messages WHERE rowid = ?1";
pub(super) const HAS_MESSAGE_SQL: &str =
    "SELECT EXISTS(SELECT 1 FROM messages WHERE chat_jid = ?1 AND id = ?2)";
pub(super) const CURSOR_SQL: &str = "SELECT last_seq FROM chat_cursors WHERE chat_jid = ?1";
pub(super) const ADVANCE_CURSOR_SQL: &str =
    "INSERT INTO chat_cursors (chat_jid, last_seq, updated_at) VALUES (?1, ?2, ?3)
     ON CONFLICT(chat_jid) DO UPDATE SET
       last_seq = MAX(last_seq, excluded.last_seq),
       updated_at = excluded.updated_at";

impl Store {
    /// Records chat metadata: a name replaces the stored one, the activity time only
    /// moves forward, channel and group flag are filled in when known.
    pub fn upsert_chat(&self, meta: &ChatMeta) -> Result<(), StoreError> {
        upsert_chat(&self.conn(), meta)
    }

    /// Stores a message; returns its `seq`, or `None` if `(id, chat_jid)` was already
    /// stored (channels may redeliver; the first copy wins, nothing is rewritten).
    pub fn insert_message(
        &self,
        meta: &ChatMeta,
        msg: &Message,
    ) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn();
        let tx = Store::write_tx(&mut conn, "starting to store a message")?;
        upsert_chat(&tx, meta)?;
        let inserted = insert_message(&tx, msg)?;
        tx.commit().ctx("committing a message")?;
        Ok(inserted)
    }

    /// Messages of `chat_jid` after `after_seq` that the agent should see: not the
    /// assistant's own, not empty, not flagged. At most `limit` (the most recent), oldest first.
    pub fn pending_messages(
        &self,
        chat_jid: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&pending_sql())
            .ctx("preparing the pending-messages query")?;
        let rows = stmt
            .query_map(params![chat_jid, after_seq, limit as i64], stored_message)
            .ctx("reading pending messages")?;
        rows.collect::<Result<_, _>>()
            .ctx("reading pending messages")
    }

    /// All messages of a chat, user and assistant, oldest first; with `limit`, the last N.
    pub fn chat_messages(
        &self,
        chat_jid: &str,
        limit: Option<usize>,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let conn = self.conn();
        let limit = limit.map(|l| l as i64).unwrap_or(-1);
        let mut stmt = conn
            .prepare_cached(&chat_messages_sql())
            .ctx("preparing the chat-messages query")?;
        let rows = stmt
            .query_map(params![chat_jid, limit], stored_message)
            .ctx("reading chat messages")?;
        rows.collect::<Result<_, _>>().ctx("reading chat messages")
    }

    pub fn chats(&self) -> Result<Vec<ChatInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT jid, name, last_message_time, channel, COALESCE(is_group, 0) FROM chats
                 WHERE jid <> '__group_sync__' ORDER BY last_message_time DESC",
            )
            .ctx("preparing the chats query")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ChatInfo {
                    jid: r.get(0)?,
                    name: r.get(1)?,
                    last_message_time: r.get(2)?,
                    channel: r.get(3)?,
                    is_group: r.get(4)?,
                })
            })
            .ctx("reading chats")?;
        rows.collect::<Result<_, _>>().ctx("reading chats")
    }

    /// A value in `router_state` (channel offsets and similar).
    pub fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT value FROM router_state WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading router state")
    }

    /// Saves `value` under `key`; an empty value removes the key.
    pub fn set_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        if value.is_empty() {
            self.conn()
                .execute("DELETE FROM router_state WHERE key = ?1", params![key])
                .ctx("removing router state")?;
            return Ok(());
        }
        self.conn()
            .execute(
                "INSERT INTO router_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .ctx("saving router state")?;
        Ok(())
    }

    /// The `seq` of the last message the agent has handled in this chat (0: none).
    pub fn cursor(&self, chat_jid: &str) -> Result<i64, StoreError> {
        self.conn()
            .query_row(CURSOR_SQL, params![chat_jid], |r| r.get(0))
            .optional()
            .map(Option::unwrap_or_default)
            .ctx("reading a chat cursor")
    }

    /// Moves the cursor forward to `seq` (never backwards).
    pub fn advance_cursor(&self, chat_jid: &str, seq: i64) -> Result<(), StoreError> {
        advance_cursor(&self.conn(), chat_jid, seq)
    }

    /// Whether `chat_jid` already holds a message with this id.
    pub fn has_message(&self, chat_jid: &str, id: &str) -> Result<bool, StoreError> {
        self.conn()
            .query_row(HAS_MESSAGE_SQL, params![chat_jid, id], |r| r.get(0))
            .ctx("looking up a message")
    }

    pub fn count_messages(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .ctx("counting messages")
    }
}

pub(super) fn upsert_chat(conn: &rusqlite::Connection, meta: &ChatMeta) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO chats (jid, name, last_message_time, channel, is_group)
         VALUES (?1, COALESCE(?2, ?1), ?3, ?4, COALESCE(?5, 0))
         ON CONFLICT(jid) DO UPDATE SET
           name = COALESCE(?2, name),
           last_message_time = MAX(COALESCE(last_message_time, ''), excluded.last_message_time),
           channel = COALESCE(?4, channel),
           is_group = COALESCE(?5, is_group)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            meta.jid,
            meta.name,
            meta.timestamp,
            meta.channel,
            meta.is_group
        ])
    })
    .ctx("storing chat metadata")?;
    Ok(())
}

pub(super) fn insert_message(
    conn: &rusqlite::Connection,
    msg: &Message,
) -> Result<Option<i64>, StoreError> {
    let changed = conn
        .prepare_cached(INSERT_MESSAGE_SQL)
        .and_then(|mut stmt| {
            stmt.execute(params![
                msg.id,
                msg.chat_jid,
                msg.sender,
                msg.sender_name,
                msg.content,
                msg.timestamp,
                msg.is_from_me,
                msg.is_bot_message
            ])
        })
        .ctx("storing a message")?;
    if changed != 1 {
        return Ok(None);
    }
    if let Some(reason) = &msg.flagged {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO message_flags (chat_jid, id, reason) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut stmt| stmt.execute(params![msg.chat_jid, msg.id, reason]))
        .ctx("flagging a message")?;
    }
    // `seq` is assigned by the `messages_seq` trigger (see schema.rs).
    conn.query_row(NEW_SEQ_SQL, params![conn.last_insert_rowid()], |r| r.get(0))
        .map(Some)
        .ctx("reading a new message's sequence number")
}

pub(super) fn advance_cursor(
    conn: &rusqlite::Connection,
    chat_jid: &str,
    seq: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(ADVANCE_CURSOR_SQL)
        .and_then(|mut stmt| stmt.execute(params![chat_jid, seq, crate::clock::now()]))
        .ctx("moving a chat cursor")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::open_temp;
    use super::*;

    pub(crate) fn msg(id: &str, chat: &str, content: &str, ts: &str) -> Message {
        Message {
            id: id.into(),
            chat_jid: chat.into(),
            sender: "u1".into(),
            sender_name: "User".into(),
            content: content.into(),
            timestamp: ts.into(),
            is_from_me: false,
            is_bot_message: false,
            flagged: None,
        }
    }

    fn meta(chat: &str) -> ChatMeta {
        ChatMeta {
            jid: chat.into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn duplicates_are_ignored_and_the_first_copy_kept() {
        let (_d, store) = open_temp();
        let first = store
            .insert_message(
                &meta("web:a"),
                &msg("1", "web:a", "original", "2026-01-01T00:00:01.000Z"),
            )
            .expect("insert");
        assert!(first.is_some());
        let again = store
            .insert_message(
                &meta("web:a"),
                &msg("1", "web:a", "changed", "2026-01-01T00:00:02.000Z"),
            )
            .expect("insert");
        assert_eq!(again, None);
        let all = store.chat_messages("web:a", None).expect("list");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].message.content, "original");
        // Same id in another chat is a different message.
        assert!(
            store
                .insert_message(
                    &meta("web:b"),
                    &msg("1", "web:b", "x", "2026-01-01T00:00:01.000Z")
                )
                .expect("insert")
                .is_some()
        );
    }

    #[test]
    fn pending_follows_arrival_not_timestamp_and_skips_bot_messages() {
        let (_d, store) = open_temp();
        let m = meta("web:a");
        store
            .insert_message(&m, &msg("1", "web:a", "one", "2026-01-01T00:00:05.000Z"))
            .expect("insert");
        let mut bot = msg("2", "web:a", "reply", "2026-01-01T00:00:06.000Z");
        bot.is_bot_message = true;
        store.insert_message(&m, &bot).expect("insert");
        store
            .insert_message(&m, &msg("3", "web:a", "", "2026-01-01T00:00:07.000Z"))
            .expect("insert");
        let r1 = store.pending_messages("web:a", 0, 100).expect("pending");
        assert_eq!(
            r1.iter().map(|s| s.message.id.as_str()).collect::<Vec<_>>(),
            ["1"]
        );
        store.advance_cursor("web:a", r1[0].seq).expect("advance");
        // A late message with an *older* timestamp is still pending.
        store
            .insert_message(&m, &msg("4", "web:a", "late", "2026-01-01T00:00:01.000Z"))
            .expect("insert");
        let cursor = store.cursor("web:a").expect("cursor");
        let r2 = store
            .pending_messages("web:a", cursor, 100)
            .expect("pending");
        assert_eq!(
            r2.iter().map(|s| s.message.id.as_str()).collect::<Vec<_>>(),
            ["4"]
        );
    }

    #[test]
    fn flagged_messages_are_stored_and_shown_but_never_pending() {
        let (_dir, store) = open_temp();
        let m = meta("mail:a@b.test");
        let mut forged = msg(
            "f1",
            "mail:a@b.test",
            "wire money",
            "2026-01-01T00:00:05.000Z",
        );
        forged.flagged = Some("untrusted: dmarc=fail".into());
        store.insert_message(&m, &forged).expect("insert");
        store
            .insert_message(
                &m,
                &msg("ok", "mail:a@b.test", "hello", "2026-01-01T00:00:06.000Z"),
            )
            .expect("insert");
        // A redelivery of the flagged mail without the flag does not clear it.
        let mut again = forged.clone();
        again.flagged = None;
        assert_eq!(store.insert_message(&m, &again).expect("insert"), None);
        let pending = store
            .pending_messages("mail:a@b.test", 0, 100)
            .expect("pending");
        assert_eq!(
            pending
                .iter()
                .map(|s| s.message.id.as_str())
                .collect::<Vec<_>>(),
            ["ok"]
        );
        let all = store.chat_messages("mail:a@b.test", None).expect("all");
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0].message.flagged.as_deref(),
            Some("untrusted: dmarc=fail")
        );
        assert_eq!(all[1].message.flagged, None);
    }

    #[test]
    fn pending_keeps_the_most_recent_when_capped_and_orders_by_time() {
        let (_d, store) = open_temp();
        let m = meta("web:a");
        for i in 0..5 {
            store
                .insert_message(
                    &m,
                    &msg(
                        &i.to_string(),
                        "web:a",
                        "x",
                        &format!("2026-01-01T00:00:0{i}.000Z"),
                    ),
                )
                .expect("insert");
        }
        let r = store.pending_messages("web:a", 0, 2).expect("pending");
        assert_eq!(
            r.iter().map(|s| s.message.id.as_str()).collect::<Vec<_>>(),
            ["3", "4"]
        );
    }

    #[test]
    fn sequence_numbers_survive_vacuum_and_deletions() {
        let (_d, store) = open_temp();
        let m = meta("web:a");
        for i in 0..3 {
            store
                .insert_message(
                    &m,
                    &msg(&i.to_string(), "web:a", "x", "2026-01-01T00:00:00.000Z"),
                )
                .expect("insert");
        }
        // Someone deletes the newest row and vacuums (which may renumber rowids).
        store
            .conn()
            .execute_batch("DELETE FROM messages WHERE id = '2'; VACUUM;")
            .expect("vacuum");
        let seq = store
            .insert_message(&m, &msg("new", "web:a", "x", "2026-01-01T00:00:00.000Z"))
            .expect("insert")
            .expect("stored");
        assert_eq!(
            seq, 4,
            "a new message is always after every seq ever handed out"
        );
        // A writer that knows nothing of seq (NanoClaw v1) gets one from the trigger.
        store
            .conn()
            .execute("INSERT INTO messages (id, chat_jid, content, timestamp) VALUES ('v1', 'web:a', 'y', 't')", [])
            .expect("plain insert");
        let all = store.pending_messages("web:a", seq, 10).expect("pending");
        assert_eq!(
            all.iter()
                .map(|s| (s.message.id.as_str(), s.seq))
                .collect::<Vec<_>>(),
            [("v1", 5)]
        );
    }

    #[test]
    fn cursor_never_moves_backwards() {
        let (_d, store) = open_temp();
        assert_eq!(store.cursor("web:a").expect("cursor"), 0);
        store.advance_cursor("web:a", 7).expect("advance");
        store.advance_cursor("web:a", 3).expect("advance");
        assert_eq!(store.cursor("web:a").expect("cursor"), 7);
    }

    #[test]
    fn chat_metadata_keeps_names_and_latest_time() {
        let (_d, store) = open_temp();
        store
            .upsert_chat(&ChatMeta {
                jid: "tg:1".into(),
                name: Some("Family".into()),
                timestamp: "2026-01-02T00:00:00.000Z".into(),
                channel: Some("telegram".into()),
                is_group: Some(true),
            })
            .expect("upsert");
        store
            .upsert_chat(&ChatMeta {
                jid: "tg:1".into(),
                name: None,
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                channel: None,
                is_group: None,
            })
            .expect("upsert");
        let chats = store.chats().expect("chats");
        assert_eq!(chats.len(), 1);
        assert_eq!(chats[0].name.as_deref(), Some("Family"));
        assert_eq!(
            chats[0].last_message_time.as_deref(),
            Some("2026-01-02T00:00:00.000Z")
        );
        assert!(chats[0].is_group);
        assert_eq!(chats[0].channel.as_deref(), Some("telegram"));
    }
}
