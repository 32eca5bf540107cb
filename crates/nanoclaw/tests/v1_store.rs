//! A NanoClaw v1 `store/messages.db` opens and keeps working: groups, messages and tasks
//! are visible through the CLI and the API, v1's cursors are honoured (no replay of
//! history), and no existing row is lost or rewritten.
//!
//! Two fixtures, built here from the v1 schema: the last v1 schema, and an early v1
//! database from before the columns v1 added over time.

mod support;

use std::path::Path;

use rusqlite::Connection;
use support::{ScriptedRunner, cli, start_daemon_with, wait_bot_texts};

const V1_LATEST: &str = "
CREATE TABLE chats (jid TEXT PRIMARY KEY, name TEXT, last_message_time TEXT, channel TEXT, is_group INTEGER DEFAULT 0);
CREATE TABLE messages (id TEXT, chat_jid TEXT, sender TEXT, sender_name TEXT, content TEXT, timestamp TEXT,
  is_from_me INTEGER, is_bot_message INTEGER DEFAULT 0, reply_to_message_id TEXT, reply_to_message_content TEXT,
  reply_to_sender_name TEXT, PRIMARY KEY (id, chat_jid), FOREIGN KEY (chat_jid) REFERENCES chats(jid));
CREATE INDEX idx_timestamp ON messages(timestamp);
CREATE TABLE scheduled_tasks (id TEXT PRIMARY KEY, group_folder TEXT NOT NULL, chat_jid TEXT NOT NULL,
  prompt TEXT NOT NULL, schedule_type TEXT NOT NULL, schedule_value TEXT NOT NULL, next_run TEXT, last_run TEXT,
  last_result TEXT, status TEXT DEFAULT 'active', created_at TEXT NOT NULL, context_mode TEXT DEFAULT 'isolated', script TEXT);
CREATE TABLE task_run_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, run_at TEXT NOT NULL,
  duration_ms INTEGER NOT NULL, status TEXT NOT NULL, result TEXT, error TEXT, FOREIGN KEY (task_id) REFERENCES scheduled_tasks(id));
CREATE TABLE router_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (group_folder TEXT PRIMARY KEY, session_id TEXT NOT NULL);
CREATE TABLE registered_groups (jid TEXT PRIMARY KEY, name TEXT NOT NULL, folder TEXT NOT NULL UNIQUE,
  trigger_pattern TEXT NOT NULL, added_at TEXT NOT NULL, container_config TEXT, requires_trigger INTEGER DEFAULT 1, is_main INTEGER DEFAULT 0);
";

/// Before v1 added is_bot_message, is_main, channel/is_group, context_mode, script and replies.
const V1_EARLY: &str = "
CREATE TABLE chats (jid TEXT PRIMARY KEY, name TEXT, last_message_time TEXT);
CREATE TABLE messages (id TEXT, chat_jid TEXT, sender TEXT, sender_name TEXT, content TEXT, timestamp TEXT,
  is_from_me INTEGER, PRIMARY KEY (id, chat_jid), FOREIGN KEY (chat_jid) REFERENCES chats(jid));
CREATE TABLE scheduled_tasks (id TEXT PRIMARY KEY, group_folder TEXT NOT NULL, chat_jid TEXT NOT NULL,
  prompt TEXT NOT NULL, schedule_type TEXT NOT NULL, schedule_value TEXT NOT NULL, next_run TEXT, last_run TEXT,
  last_result TEXT, status TEXT DEFAULT 'active', created_at TEXT NOT NULL);
CREATE TABLE task_run_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, run_at TEXT NOT NULL,
  duration_ms INTEGER NOT NULL, status TEXT NOT NULL, result TEXT, error TEXT);
CREATE TABLE router_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (group_folder TEXT PRIMARY KEY, session_id TEXT NOT NULL);
CREATE TABLE registered_groups (jid TEXT PRIMARY KEY, name TEXT NOT NULL, folder TEXT NOT NULL UNIQUE,
  trigger_pattern TEXT NOT NULL, added_at TEXT NOT NULL, container_config TEXT, requires_trigger INTEGER DEFAULT 1);
";

const MAIN: &str = "120363000000000001@s.whatsapp.net";
const FAMILY: &str = "tg:-1001234";

fn build_fixture(path: &Path, schema: &str, early: bool) {
    let db = Connection::open(path).expect("create fixture");
    db.execute_batch(schema).expect("v1 schema");
    db.execute_batch(&format!(
        "INSERT INTO chats (jid, name, last_message_time) VALUES
           ('{MAIN}', 'Me', '2026-01-10T09:00:00.000Z'), ('{FAMILY}', 'Family', '2026-01-10T10:00:00.000Z');
         INSERT INTO registered_groups (jid, name, folder, trigger_pattern, added_at, container_config, requires_trigger) VALUES
           ('{MAIN}', 'Main', 'main', '@Andy', '2026-01-01T00:00:00.000Z', NULL, 0),
           ('{FAMILY}', 'Family', 'telegram_family', '@Andy', '2026-01-02T00:00:00.000Z',
            '{{\"additionalMounts\":[{{\"hostPath\":\"~/photos\"}}]}}', 1);
         INSERT INTO messages (id, chat_jid, sender, sender_name, content, timestamp, is_from_me) VALUES
           ('m1', '{MAIN}', 'me', 'Me', 'old question', '2026-01-10T08:00:00.000Z', 1),
           ('m2', '{MAIN}', 'me', 'Me', 'Andy: old answer', '2026-01-10T08:00:05.000Z', 1),
           ('f1', '{FAMILY}', '111', 'Mum', '@Andy dinner plans?', '2026-01-10T09:30:00.000Z', 0),
           ('f2', '{FAMILY}', 'bot', 'Andy', 'Andy: pasta!', '2026-01-10T09:30:09.000Z', 1),
           ('m3', '{MAIN}', 'me', 'Me', 'arrived while v1 was down', '2026-01-10T09:00:00.000Z', 1);
         INSERT INTO scheduled_tasks (id, group_folder, chat_jid, prompt, schedule_type, schedule_value, next_run, last_run, last_result, status, created_at) VALUES
           ('task-1', 'main', '{MAIN}', 'morning briefing', 'cron', '0 8 * * *', '2026-01-11T07:00:00.000Z', '2026-01-10T07:00:00.000Z', 'done', 'active', '2026-01-01T00:00:00.000Z'),
           ('task-2', 'telegram_family', '{FAMILY}', 'water the plants', 'interval', '86400000', NULL, NULL, NULL, 'paused', '2026-01-03T00:00:00.000Z');
         INSERT INTO task_run_logs (task_id, run_at, duration_ms, status, result, error) VALUES
           ('task-1', '2026-01-10T07:00:00.000Z', 1234, 'success', 'done', NULL);
         INSERT INTO sessions (group_folder, session_id) VALUES ('main', 'sess-main-1');
         INSERT INTO router_state (key, value) VALUES
           ('last_timestamp', '2026-01-10T09:30:09.000Z'),
           ('last_agent_timestamp', '{{\"{MAIN}\":\"2026-01-10T08:00:00.000Z\",\"{FAMILY}\":\"2026-01-10T09:30:00.000Z\"}}');"
    ))
    .expect("v1 rows");
    if !early {
        db.execute_batch(&format!(
            "UPDATE registered_groups SET is_main = 1 WHERE folder = 'main';
             UPDATE messages SET is_bot_message = 1 WHERE content LIKE 'Andy:%';
             UPDATE chats SET channel = 'whatsapp' WHERE jid = '{MAIN}';"
        ))
        .expect("later v1 columns");
    }
}

/// Every row of every v1 table, restricted to the columns the fixture had.
fn snapshot(path: &Path) -> Vec<(String, Vec<String>)> {
    let db = Connection::open(path).expect("open");
    let tables = [
        "chats",
        "messages",
        "scheduled_tasks",
        "task_run_logs",
        "router_state",
        "sessions",
        "registered_groups",
    ];
    let mut out = vec![];
    for table in tables {
        let mut stmt = db
            .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
            .expect("select");
        let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
        let rows = stmt
            .query_map([], |row| {
                (0..columns.len())
                    .map(|i| {
                        row.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{}={v:?}", columns[i]))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        out.extend(rows.into_iter().map(|r| (table.to_string(), r)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nanoclaw_v1_databases_open_and_keep_everything() {
    for (schema, early) in [(V1_LATEST, false), (V1_EARLY, true)] {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("store")).expect("store dir");
        let db = root.path().join("store/messages.db");
        build_fixture(&db, schema, early);
        let before = snapshot(&db);

        let (ok, out, err) = cli(root.path(), &["groups", "list", "--json"]).await;
        assert!(ok, "{err}");
        let groups: serde_json::Value = serde_json::from_str(&out).expect("groups JSON");
        let groups = groups.as_array().expect("array");
        assert_eq!(groups.len(), 2, "{out}");
        assert_eq!(groups[0]["jid"], MAIN);
        assert_eq!(
            groups[0]["is_main"], true,
            "v1's folder-main backfill applies (early={early})"
        );
        assert_eq!(groups[1]["folder"], "telegram_family");
        assert_eq!(
            groups[1]["container_config"]["additionalMounts"][0]["hostPath"],
            "~/photos"
        );

        let (ok, out, err) = cli(root.path(), &["tasks", "list", "--json"]).await;
        assert!(ok, "{err}");
        let tasks: serde_json::Value = serde_json::from_str(&out).expect("tasks JSON");
        let ids: Vec<&str> = tasks
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|t| t["id"].as_str())
            .collect();
        assert_eq!(ids, ["task-2", "task-1"], "newest first");
        assert_eq!(tasks[1]["schedule_value"], "0 8 * * *");
        assert_eq!(tasks[0]["status"], "paused");
        let (ok, out, _) = cli(root.path(), &["tasks", "list"]).await;
        assert!(
            ok && out.contains("morning briefing") && out.contains("water the plants"),
            "{out}"
        );

        // The daemon honours v1's cursors: only the message v1 never handled runs.
        let runner = ScriptedRunner::new(vec![]);
        let d = start_daemon_with(runner.clone(), root, |_| {}).await;
        // Two runs: the message v1 never handled, and v1's overdue cron task (due
        // while v1 was down), once.
        let mut runs = runner
            .wait_runs("the unhandled main message and the overdue task", |r| {
                r.len() >= 2
            })
            .await;
        assert_eq!(runs.len(), 2, "early={early}: {runs:#?}");
        let task_at = runs
            .iter()
            .position(|r| r.prompt == "morning briefing")
            .unwrap_or_else(|| panic!("the overdue v1 task ran: {runs:#?}"));
        let task_run = runs.remove(task_at);
        assert_eq!(task_run.folder, "main");
        assert_eq!(runs[0].chat_jid, MAIN);
        assert!(
            runs[0].prompt.contains("arrived while v1 was down"),
            "{}",
            runs[0].prompt
        );
        assert!(
            !runs[0].prompt.contains("old question"),
            "handled history is not replayed"
        );
        assert!(
            !runs[0].prompt.contains("old answer"),
            "v1 assistant messages are not user input"
        );
        assert_eq!(
            runs[0].session_id.as_deref(),
            Some("sess-main-1"),
            "v1 session resumed"
        );

        let family = d.api.messages(FAMILY).await.expect("messages");
        assert_eq!(family.len(), 2);
        assert_eq!(family[1]["is_bot_message"], true);
        wait_bot_texts(&d.api, MAIN, 2).await;
        let root = d.stop().await;

        // Nothing lost or rewritten: every original row is still there, unchanged.
        let after = snapshot(&db);
        // A chat's last activity time moves forward when the assistant replies in it, and
        // the run stores the session it continued in, both as in v1; every other value
        // must be exactly as it was.
        // A task that ran records its last and next run and its result, as in v1.
        let comparable = |cell: &String| {
            ![
                "last_message_time=",
                "next_run=",
                "last_run=",
                "last_result=",
            ]
            .iter()
            .any(|p| cell.starts_with(p))
        };
        for (table, row) in before.iter().filter(|(t, _)| t != "sessions") {
            let still = after.iter().any(|(t, r)| {
                t == table
                    && row
                        .iter()
                        .filter(|c| comparable(c))
                        .all(|cell| r.contains(cell))
            });
            assert!(still, "early={early}: {table} row changed or lost: {row:?}");
        }
        drop(root);
    }
}
