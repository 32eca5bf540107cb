//! Scheduled tasks as stored (the scheduler that runs them lives in `scheduler`).

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, WithContext};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledTask {
    pub id: String,
    pub group_folder: String,
    pub chat_jid: String,
    pub prompt: String,
    pub schedule_type: String,
    pub schedule_value: String,
    pub context_mode: String,
    pub next_run: Option<String>,
    pub last_run: Option<String>,
    pub last_result: Option<String>,
    pub status: String,
    pub created_at: String,
}

/// One run of a scheduled task (a `task_run_logs` row, plus what it changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRunRecord {
    pub task_id: String,
    pub run_at: String,
    pub duration_ms: i64,
    /// `success` or `error`.
    pub status: String,
    pub result: Option<String>,
    pub error: Option<String>,
    /// Shown in `tasks list`.
    #[serde(skip)]
    pub last_result: Option<String>,
    /// `None`: the task is finished (`completed`).
    #[serde(skip)]
    pub next_run: Option<String>,
}

/// What `tasks pause|resume|cancel` may set. `cancelled` keeps the task and its run
/// history (NanoClaw v1 deleted them); v1's scheduler only runs `active` tasks, so the
/// value is harmless to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Active,
    Paused,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Active => "active",
            TaskStatus::Paused => "paused",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

const TASK_COLUMNS: &str = "id, group_folder, chat_jid, prompt, schedule_type, schedule_value, \
     COALESCE(context_mode, 'isolated'), next_run, last_run, last_result, COALESCE(status, 'active'), created_at";

fn task(row: &Row<'_>) -> rusqlite::Result<ScheduledTask> {
    Ok(ScheduledTask {
        id: row.get(0)?,
        group_folder: row.get(1)?,
        chat_jid: row.get(2)?,
        prompt: row.get(3)?,
        schedule_type: row.get(4)?,
        schedule_value: row.get(5)?,
        context_mode: row.get(6)?,
        next_run: row.get(7)?,
        last_run: row.get(8)?,
        last_result: row.get(9)?,
        status: row.get(10)?,
        created_at: row.get(11)?,
    })
}

impl Store {
    pub fn tasks(&self) -> Result<Vec<ScheduledTask>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM scheduled_tasks ORDER BY created_at DESC, id"
            ))
            .ctx("preparing the tasks query")?;
        let rows = stmt.query_map([], task).ctx("reading tasks")?;
        rows.collect::<Result<_, _>>().ctx("reading tasks")
    }

    pub fn task(&self, id: &str) -> Result<Option<ScheduledTask>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM scheduled_tasks WHERE id = ?1"),
                params![id],
                task,
            )
            .optional()
            .ctx("reading a task")
    }

    /// The tasks of one group folder.
    pub fn tasks_for_folder(&self, folder: &str) -> Result<Vec<ScheduledTask>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM scheduled_tasks WHERE group_folder = ?1 ORDER BY created_at DESC, id"
            ))
            .ctx("preparing the tasks query")?;
        let rows = stmt
            .query_map(params![folder], task)
            .ctx("reading a group's tasks")?;
        rows.collect::<Result<_, _>>()
            .ctx("reading a group's tasks")
    }

    /// Stores a new task; refuses an id that is already taken.
    pub fn insert_task(&self, t: &ScheduledTask) -> Result<(), StoreError> {
        let inserted = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO scheduled_tasks (id, group_folder, chat_jid, prompt, schedule_type, schedule_value,
                     context_mode, next_run, last_run, last_result, status, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    t.id,
                    t.group_folder,
                    t.chat_jid,
                    t.prompt,
                    t.schedule_type,
                    t.schedule_value,
                    t.context_mode,
                    t.next_run,
                    t.last_run,
                    t.last_result,
                    t.status,
                    t.created_at
                ],
            )
            .ctx("storing a task")?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "a task with id `{}` already exists; choose another id or leave it out",
                t.id
            )));
        }
        Ok(())
    }

    /// Replaces a task's prompt and schedule (and so its next run).
    pub fn update_task_definition(
        &self,
        id: &str,
        prompt: &str,
        schedule_type: &str,
        schedule_value: &str,
        next_run: Option<&str>,
    ) -> Result<(), StoreError> {
        let changed = self
            .conn()
            .execute(
                "UPDATE scheduled_tasks SET prompt = ?2, schedule_type = ?3, schedule_value = ?4, next_run = ?5
                 WHERE id = ?1",
                params![id, prompt, schedule_type, schedule_value, next_run],
            )
            .ctx("updating a task")?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("no task with id `{id}`")));
        }
        Ok(())
    }

    /// Active tasks, with their next run (NULL sorts last).
    pub fn active_tasks(&self) -> Result<Vec<ScheduledTask>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM scheduled_tasks WHERE COALESCE(status, 'active') = 'active'
                 ORDER BY next_run IS NULL, next_run, id"
            ))
            .ctx("preparing the active tasks query")?;
        let rows = stmt.query_map([], task).ctx("reading active tasks")?;
        rows.collect::<Result<_, _>>().ctx("reading active tasks")
    }

    /// Records a finished task run: a `task_run_logs` row, and the task's last run, last
    /// result and next run (a task with no next run is `completed`), in one transaction.
    pub fn record_task_run(&self, run: &TaskRunRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = Store::write_tx(&mut conn, "starting to record a task run")?;
        tx.execute(
            "INSERT INTO task_run_logs (task_id, run_at, duration_ms, status, result, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                run.task_id,
                run.run_at,
                run.duration_ms,
                run.status,
                run.result,
                run.error
            ],
        )
        .ctx("logging a task run")?;
        tx.execute(
            "UPDATE scheduled_tasks SET last_run = ?2, last_result = ?3, next_run = ?4,
                 status = CASE WHEN ?4 IS NULL AND status = 'active' THEN 'completed' ELSE status END
             WHERE id = ?1",
            params![run.task_id, run.run_at, run.last_result, run.next_run],
        )
        .ctx("updating a task after its run")?;
        tx.commit().ctx("committing a task run")
    }

    /// Pauses a task the scheduler cannot run, saying why in its last result.
    pub fn pause_task_because(&self, id: &str, reason: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE scheduled_tasks SET status = 'paused', last_result = ?2 WHERE id = ?1",
                params![id, reason],
            )
            .ctx("pausing a task")?;
        Ok(())
    }

    /// The run log of one task, newest first.
    pub fn task_runs(&self, id: &str) -> Result<Vec<TaskRunRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT task_id, run_at, duration_ms, status, result, error FROM task_run_logs
                 WHERE task_id = ?1 ORDER BY run_at DESC, id DESC",
            )
            .ctx("preparing the task runs query")?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok(TaskRunRecord {
                    task_id: r.get(0)?,
                    run_at: r.get(1)?,
                    duration_ms: r.get(2)?,
                    status: r.get(3)?,
                    result: r.get(4)?,
                    error: r.get(5)?,
                    last_result: None,
                    next_run: None,
                })
            })
            .ctx("reading task runs")?;
        rows.collect::<Result<_, _>>().ctx("reading task runs")
    }

    /// Pauses, resumes or cancels a task, refusing transitions that make no sense
    /// (resuming a completed or cancelled task, touching an unknown id).
    pub fn set_task_status(&self, id: &str, to: TaskStatus) -> Result<ScheduledTask, StoreError> {
        let mut conn = self.conn();
        let tx = Store::write_tx(&mut conn, "starting to change a task's status")?;
        let current = tx
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM scheduled_tasks WHERE id = ?1"),
                params![id],
                task,
            )
            .optional()
            .ctx("reading a task")?;
        let Some(current) = current else {
            return Err(StoreError::NotFound(format!(
                "no task with id `{id}`; `nanoclaw tasks list` shows the ids"
            )));
        };
        let allowed = match (current.status.as_str(), to) {
            (_, TaskStatus::Cancelled) => current.status != "cancelled",
            ("active" | "paused", _) => true,
            _ => false,
        };
        if !allowed {
            return Err(StoreError::Conflict(format!(
                "task `{id}` is {}; it cannot be set to {}",
                current.status,
                to.as_str()
            )));
        }
        tx.execute(
            "UPDATE scheduled_tasks SET status = ?2 WHERE id = ?1",
            params![id, to.as_str()],
        )
        .ctx("updating a task's status")?;
        tx.commit().ctx("committing a task's status")?;
        Ok(ScheduledTask {
            status: to.as_str().to_string(),
            ..current
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::test_support::open_temp;
    use super::*;

    pub(crate) fn insert(store: &Store, id: &str, status: &str) {
        store
            .conn()
            .execute(
                "INSERT INTO scheduled_tasks (id, group_folder, chat_jid, prompt, schedule_type, schedule_value, status, created_at)
                 VALUES (?1, 'main', 'web:main', 'p', 'interval', '60000', ?2, '2026-01-01T00:00:00.000Z')",
                params![id, status],
            )
            .expect("insert task");
    }

    #[test]
    fn status_transitions() {
        let (_d, store) = open_temp();
        insert(&store, "t1", "active");
        insert(&store, "t2", "completed");
        assert_eq!(
            store
                .set_task_status("t1", TaskStatus::Paused)
                .expect("pause")
                .status,
            "paused"
        );
        assert_eq!(
            store
                .set_task_status("t1", TaskStatus::Active)
                .expect("resume")
                .status,
            "active"
        );
        let e = store
            .set_task_status("t2", TaskStatus::Active)
            .expect_err("completed")
            .to_string();
        assert!(e.contains("completed"), "{e}");
        assert_eq!(
            store
                .set_task_status("t2", TaskStatus::Cancelled)
                .expect("cancel")
                .status,
            "cancelled"
        );
        let e = store
            .set_task_status("nope", TaskStatus::Paused)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("tasks list"), "{e}");
        assert_eq!(
            store.tasks().expect("list").len(),
            2,
            "cancel keeps the task"
        );
    }
}
