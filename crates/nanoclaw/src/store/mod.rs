//! The SQLite store (SPEC §4): NanoClaw v1's tables plus our own (cursors, outbox,
//! token usage).
//!
//! One connection behind a mutex. Methods are synchronous, which is what the CLI wants;
//! the daemon calls them through [`Store::call`], which runs the closure on tokio's
//! blocking pool so SQLite never stalls the async threads.

mod groups;
mod messages;
mod outbox;
mod schema;
mod tasks;
mod usage;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use thiserror::Error;

pub use groups::{GroupRequest, RegisteredGroup};
pub use messages::{ChatInfo, ChatMeta, Message, StoredMessage};
pub use outbox::{CommittedReply, OutboxFile, OutboxItem};
pub use schema::LATEST_VERSION;
pub use tasks::{ScheduledTask, TaskRunRecord, TaskStatus};
pub use usage::{Usage, UsageRow};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store error while {action}: {source}")]
    Sqlite {
        action: &'static str,
        source: rusqlite::Error,
    },
    #[error(
        "the store has schema version {found}, but this nanoclaw understands up to {supported}; \
         it was written by a newer nanoclaw, so upgrade nanoclaw instead of downgrading the store"
    )]
    TooNew { found: i64, supported: i64 },
    /// A request that conflicts with what is stored (e.g. a folder already in use).
    #[error("{0}")]
    Conflict(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// Attaches "while doing X" to SQLite errors.
pub(crate) trait WithContext<T> {
    fn ctx(self, action: &'static str) -> Result<T, StoreError>;
}

impl<T> WithContext<T> for Result<T, rusqlite::Error> {
    fn ctx(self, action: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { action, source })
    }
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) and migrates the store at `path`.
    /// `assistant_name` is used once, to mark v1-era assistant messages while migrating.
    pub fn open(path: &Path, assistant_name: &str) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        Self::configure(&mut conn).map_err(open_err)?;
        schema::migrate(&mut conn, &schema::MigrationContext { assistant_name })?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn configure(conn: &mut Connection) -> Result<(), rusqlite::Error> {
        // Another process (the CLI next to the daemon) may hold the write lock briefly.
        conn.busy_timeout(Duration::from_secs(10))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "SQLite refused WAL mode; continuing with {mode}");
        }
        // FULL: an accepted message survives power loss too, not only a crash. Our write
        // rate is a person's chat rate, so the extra fsync costs nothing that matters.
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(())
    }

    /// Runs `f` on the blocking pool. A panic inside `f` is re-raised here.
    /// If the runtime is shutting down, this never returns (its task is being dropped).
    pub async fn call<R, F>(self: &Arc<Self>, f: F) -> R
    where
        F: FnOnce(&Store) -> R + Send + 'static,
        R: Send + 'static,
    {
        let store = Arc::clone(self);
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down and this task with it.
            Err(_) => std::future::pending().await,
        }
    }

    /// A write transaction that takes the write lock at `BEGIN` (waiting up to
    /// `busy_timeout` for another connection to finish). A deferred transaction that
    /// reads first and writes later gets `SQLITE_BUSY` at once when another connection
    /// wrote in between, without waiting: every read-then-write goes through here.
    fn write_tx<'c>(
        conn: &'c mut Connection,
        action: &'static str,
    ) -> Result<rusqlite::Transaction<'c>, StoreError> {
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .ctx(action)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions
        // roll back on drop), so a poisoned lock is safe to keep using.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The schema version of the open store.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .ctx("reading the schema version")
    }
}

impl Store {
    /// The query plans (`EXPLAIN QUERY PLAN`) of the statements on the path of every
    /// message and reply, by name: what must not grow with history.
    pub fn hot_query_plans(&self) -> Result<Vec<(&'static str, Vec<String>)>, StoreError> {
        let queries: Vec<(&'static str, String)> = vec![
            ("store a message", messages::INSERT_MESSAGE_SQL.into()),
            ("its sequence number", messages::NEW_SEQ_SQL.into()),
            ("a duplicate check", messages::HAS_MESSAGE_SQL.into()),
            ("a chat's cursor", messages::CURSOR_SQL.into()),
            ("move a cursor", messages::ADVANCE_CURSOR_SQL.into()),
            ("pending messages of a chat", messages::pending_sql()),
            ("a chat's last messages", messages::chat_messages_sql()),
            ("undelivered replies", outbox::pending_heads_sql()),
            ("replies to replay", outbox::delivered_after_sql()),
            ("count undelivered", outbox::COUNT_PENDING_SQL.into()),
        ];
        let conn = self.conn();
        let mut plans = Vec::new();
        for (name, sql) in queries {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .ctx("preparing a query plan")?;
            // Parameters left unbound: the plan does not depend on their values.
            let mut rows = stmt.raw_query();
            let mut lines = Vec::new();
            while let Some(row) = rows.next().ctx("reading a query plan")? {
                lines.push(row.get::<_, String>(3).ctx("reading a query plan")?);
            }
            plans.push((name, lines));
        }
        Ok(plans)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Store;

    pub fn open_temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("messages.db"), "Andy").expect("open store");
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing on the hot path reads a table whole: every message and reply statement
    /// finds its rows through a key or an index, so its cost does not grow with history.
    #[test]
    fn hot_queries_use_indexes() {
        let (_dir, store) = test_support::open_temp();
        let plans = store.hot_query_plans().expect("plans");
        assert_eq!(plans.len(), 10);
        for (name, lines) in &plans {
            for line in lines {
                let whole = line.starts_with("SCAN ")
                    && !line.contains("USING INDEX")
                    && !line.contains("USING COVERING INDEX")
                    && !line.contains("USING INTEGER PRIMARY KEY")
                    && !line.starts_with("SCAN CONSTANT ROW")
                    // The rows a subquery already found through an index (and limited).
                    && !line.starts_with("SCAN (subquery");
                assert!(!whole, "{name}: {line} (all plans: {plans:#?})");
            }
        }
    }

    #[test]
    fn fresh_store_is_wal_and_at_latest_version() {
        let (_dir, store) = test_support::open_temp();
        assert_eq!(store.schema_version().expect("version"), LATEST_VERSION);
        let mode: String = store
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn reopening_is_idempotent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("messages.db");
        drop(Store::open(&path, "Andy").expect("first open"));
        let store = Store::open(&path, "Andy").expect("second open");
        assert_eq!(store.schema_version().expect("version"), LATEST_VERSION);
    }

    /// Another process (the CLI beside the daemon, or the daemon beside the CLI) holds
    /// the write lock for 2 s: every read-then-write waits for it (`busy_timeout`)
    /// instead of failing at once with "database is locked".
    #[test]
    fn read_then_write_operations_wait_for_a_concurrent_writer() {
        use super::groups::tests::group;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("messages.db");
        let store = Store::open(&path, "Andy").expect("open store");
        store
            .register_group(&group("web:main", "main", true))
            .expect("main");
        let reply = store
            .commit_reply("web:main", "first", "Andy", None)
            .expect("reply");
        tasks::tests::insert(&store, "t1", "active");
        let hold = |path: PathBuf| {
            let (locked_tx, locked_rx) = std::sync::mpsc::channel();
            let holder = std::thread::spawn(move || {
                let other = Connection::open(&path).expect("second connection");
                other.execute_batch("BEGIN IMMEDIATE").expect("lock");
                other
                    .execute("INSERT INTO router_state (key, value) VALUES ('x', 'y') ON CONFLICT(key) DO UPDATE SET value = 'z'", [])
                    .expect("write");
                locked_tx.send(()).expect("signal");
                std::thread::sleep(Duration::from_secs(2));
                other.execute_batch("COMMIT").expect("commit");
            });
            locked_rx.recv().expect("locked");
            holder
        };
        type Op<'a> = (&'a str, Box<dyn Fn(&Store) -> Result<(), StoreError> + 'a>);
        let ops: Vec<Op<'_>> = vec![
            (
                "register_group",
                Box::new(|s| s.register_group(&group("tg:1", "team", false))),
            ),
            (
                "mark_delivered",
                Box::new(|s| s.mark_delivered(reply.outbox_id).map(|_| ())),
            ),
            (
                "insert_message",
                Box::new(|s| {
                    s.insert_message(
                        &ChatMeta {
                            jid: "web:main".into(),
                            timestamp: "2026-01-01T00:00:00.000Z".into(),
                            ..Default::default()
                        },
                        &Message {
                            id: "m1".into(),
                            chat_jid: "web:main".into(),
                            sender: "u".into(),
                            sender_name: "U".into(),
                            content: "hi".into(),
                            timestamp: "2026-01-01T00:00:00.000Z".into(),
                            is_from_me: false,
                            is_bot_message: false,
                            flagged: None,
                        },
                    )
                    .map(|_| ())
                }),
            ),
            (
                "commit_reply",
                Box::new(|s| {
                    s.commit_reply("web:main", "second", "Andy", None)
                        .map(|_| ())
                }),
            ),
            (
                "set_task_status",
                Box::new(|s| s.set_task_status("t1", TaskStatus::Paused).map(|_| ())),
            ),
            (
                "record_task_run",
                Box::new(|s| {
                    s.record_task_run(&TaskRunRecord {
                        task_id: "t1".into(),
                        run_at: "2026-01-01T00:00:00.000Z".into(),
                        duration_ms: 1,
                        status: "success".into(),
                        result: Some("ok".into()),
                        error: None,
                        last_result: Some("ok".into()),
                        next_run: None,
                    })
                }),
            ),
        ];
        for (name, op) in ops {
            let holder = hold(path.clone());
            let started = std::time::Instant::now();
            let result = op(&store);
            holder.join().expect("holder");
            if let Err(e) = result {
                panic!("{name} failed while another connection wrote: {e}");
            }
            assert!(
                started.elapsed() >= Duration::from_millis(1500),
                "{name} waited for the lock"
            );
        }
    }

    #[test]
    fn a_newer_schema_is_refused_with_advice() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("messages.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.pragma_update(None, "user_version", 99)
                .expect("set version");
        }
        let err = Store::open(&path, "Andy")
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("99") && err.contains("upgrade nanoclaw"),
            "{err}"
        );
    }
}
