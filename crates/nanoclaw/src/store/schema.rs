//! Versioned migrations, tracked in `PRAGMA user_version`.
//!
//! Migration 1 is the NanoClaw v1 schema, written so that it also *adopts* an existing
//! NanoClaw database: tables are created only if missing, columns that older v1 releases
//! lacked are added with v1's own backfills, and nothing existing is rewritten. NanoClaw
//! v1 never set `user_version`, so its databases start at 0 like a fresh file.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{StoreError, WithContext};

struct Migration {
    version: i64,
    name: &'static str,
    apply: fn(&Transaction<'_>, &MigrationContext) -> Result<(), StoreError>,
}

pub(super) struct MigrationContext<'a> {
    pub assistant_name: &'a str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "NanoClaw v1 tables",
        apply: v1_tables,
    },
    Migration {
        version: 2,
        name: "chat cursors and reply outbox",
        apply: cursors_and_outbox,
    },
    Migration {
        version: 3,
        name: "token usage",
        apply: token_usage,
    },
    Migration {
        version: 4,
        name: "undeliverable replies",
        apply: undeliverable_replies,
    },
    Migration {
        version: 5,
        name: "sandbox host ids",
        apply: sandbox_ids,
    },
    Migration {
        version: 6,
        name: "flagged messages",
        apply: message_flags,
    },
    Migration {
        version: 7,
        name: "files in replies",
        apply: reply_files,
    },
    Migration {
        version: 8,
        name: "an index of replies with files",
        apply: reply_files_index,
    },
    Migration {
        version: 9,
        name: "explicit messages from the main group",
        apply: explicit_messages,
    },
];

pub const LATEST_VERSION: i64 = 9;

pub(super) fn migrate(conn: &mut Connection, ctx: &MigrationContext) -> Result<(), StoreError> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .ctx("reading the schema version")?;
    if current > LATEST_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: LATEST_VERSION,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .ctx("starting a migration")?;
        (m.apply)(&tx, ctx)?;
        tx.pragma_update(None, "user_version", m.version)
            .ctx("recording the schema version")?;
        tx.commit().ctx("committing a migration")?;
        tracing::info!(version = m.version, name = m.name, "store migrated");
    }
    Ok(())
}

fn v1_tables(tx: &Transaction<'_>, ctx: &MigrationContext) -> Result<(), StoreError> {
    tx.execute_batch(
        "
        CREATE TABLE IF NOT EXISTS chats (
            jid TEXT PRIMARY KEY,
            name TEXT,
            last_message_time TEXT,
            channel TEXT,
            is_group INTEGER DEFAULT 0
        );
        CREATE TABLE IF NOT EXISTS messages (
            id TEXT,
            chat_jid TEXT,
            sender TEXT,
            sender_name TEXT,
            content TEXT,
            timestamp TEXT,
            is_from_me INTEGER,
            is_bot_message INTEGER DEFAULT 0,
            reply_to_message_id TEXT,
            reply_to_message_content TEXT,
            reply_to_sender_name TEXT,
            PRIMARY KEY (id, chat_jid),
            FOREIGN KEY (chat_jid) REFERENCES chats(jid)
        );
        CREATE INDEX IF NOT EXISTS idx_timestamp ON messages(timestamp);
        CREATE TABLE IF NOT EXISTS scheduled_tasks (
            id TEXT PRIMARY KEY,
            group_folder TEXT NOT NULL,
            chat_jid TEXT NOT NULL,
            prompt TEXT NOT NULL,
            schedule_type TEXT NOT NULL,
            schedule_value TEXT NOT NULL,
            next_run TEXT,
            last_run TEXT,
            last_result TEXT,
            status TEXT DEFAULT 'active',
            created_at TEXT NOT NULL,
            context_mode TEXT DEFAULT 'isolated',
            script TEXT
        );
        CREATE INDEX IF NOT EXISTS idx_next_run ON scheduled_tasks(next_run);
        CREATE INDEX IF NOT EXISTS idx_status ON scheduled_tasks(status);
        CREATE TABLE IF NOT EXISTS task_run_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            run_at TEXT NOT NULL,
            duration_ms INTEGER NOT NULL,
            status TEXT NOT NULL,
            result TEXT,
            error TEXT,
            FOREIGN KEY (task_id) REFERENCES scheduled_tasks(id)
        );
        CREATE INDEX IF NOT EXISTS idx_task_run_logs ON task_run_logs(task_id, run_at);
        CREATE TABLE IF NOT EXISTS router_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS sessions (
            group_folder TEXT PRIMARY KEY,
            session_id TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS registered_groups (
            jid TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            folder TEXT NOT NULL UNIQUE,
            trigger_pattern TEXT NOT NULL,
            added_at TEXT NOT NULL,
            container_config TEXT,
            requires_trigger INTEGER DEFAULT 1,
            is_main INTEGER DEFAULT 0
        );
        ",
    )
    .ctx("creating the NanoClaw v1 tables")?;

    // Columns added during v1's life, with the backfills v1 itself ran when adding them.
    add_column_if_missing(
        tx,
        "scheduled_tasks",
        "context_mode",
        "TEXT DEFAULT 'isolated'",
    )?;
    add_column_if_missing(tx, "scheduled_tasks", "script", "TEXT")?;
    if add_column_if_missing(tx, "messages", "is_bot_message", "INTEGER DEFAULT 0")? {
        tx.execute(
            "UPDATE messages SET is_bot_message = 1 WHERE content LIKE ?1 ESCAPE '\\'",
            params![format!("{}:%", escape_like(ctx.assistant_name))],
        )
        .ctx("marking old assistant messages")?;
    }
    add_column_if_missing(tx, "registered_groups", "container_config", "TEXT")?;
    add_column_if_missing(
        tx,
        "registered_groups",
        "requires_trigger",
        "INTEGER DEFAULT 1",
    )?;
    if add_column_if_missing(tx, "registered_groups", "is_main", "INTEGER DEFAULT 0")? {
        tx.execute(
            "UPDATE registered_groups SET is_main = 1 WHERE folder = 'main'",
            [],
        )
        .ctx("marking the main group")?;
    }
    let added_channel = add_column_if_missing(tx, "chats", "channel", "TEXT")?;
    add_column_if_missing(tx, "chats", "is_group", "INTEGER DEFAULT 0")?;
    if added_channel {
        tx.execute_batch(
            "
            UPDATE chats SET channel = 'whatsapp', is_group = 1 WHERE jid LIKE '%@g.us';
            UPDATE chats SET channel = 'whatsapp', is_group = 0 WHERE jid LIKE '%@s.whatsapp.net';
            UPDATE chats SET channel = 'discord', is_group = 1 WHERE jid LIKE 'dc:%';
            UPDATE chats SET channel = 'telegram', is_group = 0 WHERE jid LIKE 'tg:%';
            ",
        )
        .ctx("backfilling chat channels")?;
    }
    for column in [
        "reply_to_message_id",
        "reply_to_message_content",
        "reply_to_sender_name",
    ] {
        add_column_if_missing(tx, "messages", column, "TEXT")?;
    }
    Ok(())
}

/// Our own tables and columns.
///
/// `messages.seq` numbers messages in arrival order. Cursors follow it, not timestamps: a
/// message stored late with an older timestamp (a channel catching up after a reconnect)
/// is still "after the cursor". It is not the implicit `rowid`, which `VACUUM` may
/// renumber and deleting the newest row may reuse; a trigger assigns it from a counter
/// that only grows, for every new row, whoever inserts it (NanoClaw v1 too). v1's
/// timestamp cursors are converted.
///
/// `outbox.delivery_seq` numbers replies in the order they were delivered, for the event
/// stream's ids (a reply held back by a failing channel is delivered after newer ones).
/// `outbox.failed_at`: replies given up on (the platform refused them for good, or they
/// kept failing for a day); they no longer hold back their chat's later replies.
fn undeliverable_replies(tx: &Transaction<'_>, _ctx: &MigrationContext) -> Result<(), StoreError> {
    tx.execute_batch(
        "
        ALTER TABLE outbox ADD COLUMN failed_at TEXT;
        DROP INDEX idx_outbox_pending;
        CREATE INDEX idx_outbox_pending ON outbox(chat_jid, id)
            WHERE delivered_at IS NULL AND failed_at IS NULL;
        ",
    )
    .ctx("adding outbox.failed_at")
}

/// The host uid (= gid) each group folder's sandboxes run as when nanoclaw runs as root:
/// allocated once, never reused by another folder.
fn sandbox_ids(tx: &Transaction<'_>, _ctx: &MigrationContext) -> Result<(), StoreError> {
    tx.execute_batch(
        "
        CREATE TABLE sandbox_ids (
            folder TEXT PRIMARY KEY COLLATE NOCASE,
            host_id INTEGER NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        ",
    )
    .ctx("creating sandbox_ids")
}

/// Messages stored but never for an agent (SPEC §13.5: mail that failed the trust rule,
/// bounces, auto-replies), with the reason. A table of its own, so v1's `messages` keeps
/// its columns.
fn message_flags(tx: &Transaction<'_>, _ctx: &MigrationContext) -> Result<(), StoreError> {
    tx.execute_batch(
        "
        CREATE TABLE message_flags (
            chat_jid TEXT NOT NULL,
            id TEXT NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY (chat_jid, id)
        );
        ",
    )
    .ctx("creating message_flags")
}

/// A reply may carry a file an agent sent (`send_file`): its name as the chat shows it,
/// the host's copy under `data/outbox-files/` (the group folder's file may change or go
/// before delivery) and its size.
fn reply_files(tx: &Transaction<'_>, _ctx: &MigrationContext) -> Result<(), StoreError> {
    tx.execute_batch(
        "
        ALTER TABLE outbox ADD COLUMN file_name TEXT;
        ALTER TABLE outbox ADD COLUMN file_path TEXT;
        ALTER TABLE outbox ADD COLUMN file_size INTEGER;
        ",
    )
    .ctx("adding outbox files")
}

/// A chat's replies that carry files, found without reading its whole outbox (the web
/// app's history shows their download buttons).
fn reply_files_index(tx: &Transaction<'_>, _ctx: &MigrationContext) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE INDEX idx_outbox_files ON outbox(chat_jid, message_id) WHERE file_path IS NOT NULL;",
    )
    .ctx("indexing replies with files")
}

/// `outbox.explicit`: a message the main group's agent sent to a chat on purpose (IPC
/// `message`), which a channel may deliver to a chat that never wrote first (WhatsApp).
fn explicit_messages(tx: &Transaction<'_>, _ctx: &MigrationContext) -> Result<(), StoreError> {
    tx.execute_batch("ALTER TABLE outbox ADD COLUMN explicit INTEGER NOT NULL DEFAULT 0;")
        .ctx("adding outbox.explicit")
}

/// One row per model response the credential proxy forwarded.
fn token_usage(tx: &Transaction<'_>, _ctx: &MigrationContext) -> Result<(), StoreError> {
    tx.execute_batch(
        "
        CREATE TABLE token_usage (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            group_folder TEXT NOT NULL,
            run_id TEXT NOT NULL,
            model TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_token_usage_time ON token_usage(created_at);
        CREATE INDEX idx_token_usage_run ON token_usage(run_id);
        ",
    )
    .ctx("creating the token usage table")
}

fn cursors_and_outbox(tx: &Transaction<'_>, ctx: &MigrationContext) -> Result<(), StoreError> {
    tx.execute_batch(
        "
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        ALTER TABLE messages ADD COLUMN seq INTEGER;
        UPDATE messages SET seq = rowid;
        INSERT INTO counters (name, value) VALUES
            ('message_seq', (SELECT COALESCE(MAX(seq), 0) FROM messages)),
            ('delivery_seq', 0);
        CREATE UNIQUE INDEX idx_messages_seq ON messages(seq);
        CREATE INDEX idx_messages_chat_seq ON messages(chat_jid, seq);
        CREATE INDEX idx_messages_chat_time ON messages(chat_jid, timestamp);
        CREATE TRIGGER messages_seq AFTER INSERT ON messages WHEN NEW.seq IS NULL
        BEGIN
            UPDATE counters SET value = value + 1 WHERE name = 'message_seq';
            UPDATE messages SET seq = (SELECT value FROM counters WHERE name = 'message_seq')
            WHERE rowid = NEW.rowid;
        END;
        CREATE TABLE chat_cursors (
            chat_jid TEXT PRIMARY KEY,
            last_seq INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            chat_jid TEXT NOT NULL,
            text TEXT NOT NULL,
            message_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            delivered_at TEXT,
            delivery_seq INTEGER UNIQUE,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT
        );
        CREATE INDEX idx_outbox_pending ON outbox(chat_jid, id) WHERE delivered_at IS NULL;
        ",
    )
    .ctx("creating cursor and outbox tables")?;

    let now = crate::clock::now();
    // v1 kept per-chat cursors as a JSON map of timestamps in router_state.
    let v1_cursors: Option<String> = tx
        .query_row(
            "SELECT value FROM router_state WHERE key = 'last_agent_timestamp'",
            [],
            |row| row.get(0),
        )
        .optional()
        .ctx("reading v1 cursors")?;
    let map: serde_json::Map<String, serde_json::Value> = v1_cursors
        .and_then(|raw| match serde_json::from_str(&raw) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => {
                tracing::warn!(
                    "router_state.last_agent_timestamp is not a JSON object; ignoring v1 cursors"
                );
                None
            }
        })
        .unwrap_or_default();
    for (jid, ts) in &map {
        let Some(ts) = ts.as_str() else { continue };
        // Just before the first message v1 had not handled; if a handled message was
        // stored after it, it is shown again rather than an unhandled one being skipped.
        tx.execute(
            "INSERT INTO chat_cursors (chat_jid, last_seq, updated_at) VALUES (?1, COALESCE(
               (SELECT MIN(seq) - 1 FROM messages WHERE chat_jid = ?1 AND timestamp > ?2),
               (SELECT MAX(seq) FROM messages WHERE chat_jid = ?1),
               0), ?3)",
            params![jid, ts, now],
        )
        .ctx("importing a v1 cursor")?;
    }
    // v1 recovered a missing cursor from the chat's last assistant message; do the same
    // once, so registered chats without a cursor do not replay their whole history.
    tx.execute(
        "INSERT INTO chat_cursors (chat_jid, last_seq, updated_at)
         SELECT g.jid, MAX(m.seq), ?2 FROM registered_groups g
         JOIN messages m ON m.chat_jid = g.jid
         WHERE (m.is_bot_message = 1 OR m.content LIKE ?1 ESCAPE '\\')
           AND g.jid NOT IN (SELECT chat_jid FROM chat_cursors)
         GROUP BY g.jid",
        params![format!("{}:%", escape_like(ctx.assistant_name)), now],
    )
    .ctx("recovering cursors from assistant replies")?;
    Ok(())
}

/// Adds `table.column` unless it exists; returns whether it was added.
fn add_column_if_missing(
    tx: &Transaction<'_>,
    table: &str,
    column: &str,
    decl: &str,
) -> Result<bool, StoreError> {
    let exists: bool = tx
        .query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            params![column],
            |row| row.get(0),
        )
        .ctx("inspecting table columns")?;
    if !exists {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
            .ctx("adding a column")?;
    }
    Ok(!exists)
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}
