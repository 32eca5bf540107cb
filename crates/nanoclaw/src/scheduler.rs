//! The scheduler (SPEC §12): sleeps until the earliest due task, wakes early when tasks
//! change, and hands due tasks to the group queue, which runs each as a full agent run
//! (see `router/task.rs`) and never runs a task twice at once.
//!
//! Overdue tasks (after downtime) are due once: the run computes the next slot after
//! *now*. A task whose group is no longer registered, or whose folder is invalid, is
//! paused with the reason in its last result.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, watch};

use crate::layout::GroupFolder;
use crate::queue::GroupQueue;
use crate::store::{Store, StoreError};

/// The longest the scheduler sleeps without looking again. It sleeps on the monotonic
/// clock while tasks are due by the wall clock; this bounds the drift after a suspend or
/// a clock change.
pub const MAX_SLEEP: Duration = Duration::from_secs(300);

pub struct Scheduler {
    pub store: Arc<Store>,
    pub queue: Arc<GroupQueue>,
    /// Notified whenever tasks are created or change (IPC, HTTP, finished runs).
    pub changed: Arc<Notify>,
}

impl Scheduler {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let wait = match self.dispatch_due().await {
                Ok(Some(next)) => {
                    let until = next.duration_since(Timestamp::now());
                    Duration::try_from(until)
                        .unwrap_or(Duration::ZERO)
                        .min(MAX_SLEEP)
                }
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::error!("scheduler cannot read tasks: {e}");
                    Duration::from_secs(30)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.changed.notified() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Queues every due task; returns when the next not-yet-due task is due.
    pub async fn dispatch_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let queued = self.queue.queued_tasks();
        let now = Timestamp::now();
        let store = Arc::clone(&self.store);
        // (due: (task id, chat jid)), to pause: (task id, reason)), next due time
        let (due, pause, next) = self
            .store
            .call(move |s| {
                let mut due = Vec::new();
                let mut pause = Vec::new();
                let mut next: Option<Timestamp> = None;
                for task in s.active_tasks()? {
                    if queued.contains(&task.id) {
                        continue;
                    }
                    let Some(at) = task.next_run.as_deref() else {
                        continue;
                    };
                    let Ok(at) = at.parse::<Timestamp>() else {
                        pause.push((task.id, format!("its next run time `{at}` is unreadable")));
                        continue;
                    };
                    if at > now {
                        next = Some(next.map_or(at, |n| n.min(at)));
                        continue;
                    }
                    match s.registered_group_by_folder(&task.group_folder)? {
                        None => pause.push((
                            task.id,
                            format!("group `{}` is not registered", task.group_folder),
                        )),
                        Some(g) => match GroupFolder::parse(&g.folder) {
                            Err(e) => pause.push((task.id, e.to_string())),
                            Ok(_) => due.push((task.id, g.jid)),
                        },
                    }
                }
                Ok((due, pause, next))
            })
            .await?;
        for (id, reason) in pause {
            tracing::warn!(task_id = %id, %reason, "pausing a task that cannot run");
            let (store, id2) = (Arc::clone(&store), id.clone());
            let text = format!("Paused: {reason}");
            if let Err(e) = store.call(move |s| s.pause_task_because(&id2, &text)).await {
                tracing::error!(task_id = %id, "cannot pause the task: {e}");
            }
        }
        for (id, jid) in due {
            if self.queue.enqueue_task(&jid, &id) {
                tracing::info!(task_id = %id, chat_jid = %jid, "task due; queued");
            }
        }
        Ok(next)
    }
}
