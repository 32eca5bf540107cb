//! One run of a scheduled task (SPEC §12): a full agent run in the group's sandbox with
//! the task's prompt, its output sent to the group's chat (unless all `<internal>`), then
//! a `task_run_logs` row and the task's next run.

use jiff::Timestamp;
use tokio::sync::mpsc;

use super::prompt::strip_internal;
use super::run::RunLoop;
use crate::queue::{RunOutcome, RunSignal, RunSlot};
use crate::runner::{AgentEvent, RunInput, RunIo, RunRequest};
use crate::schedule::Schedule;
use crate::store::{ScheduledTask, TaskRunRecord};

/// `last_result` is cut to this many characters.
const LAST_RESULT_CHARS: usize = 500;

fn summary(text: &str) -> String {
    let mut out: String = text.chars().take(LAST_RESULT_CHARS).collect();
    if text.chars().count() > LAST_RESULT_CHARS {
        out.push('…');
    }
    out
}

impl RunLoop {
    pub(crate) async fn task_run(
        &self,
        chat_jid: &str,
        task_id: &str,
        slot: &mut RunSlot,
    ) -> RunOutcome {
        let (jid, id) = (chat_jid.to_string(), task_id.to_string());
        let loaded = self
            .store
            .call(move |s| {
                Ok::<_, crate::store::StoreError>((s.task(&id)?, s.registered_group(&jid)?))
            })
            .await;
        let (task, group) = match loaded {
            Ok((Some(task), Some(group))) => (task, group),
            Ok(_) => {
                tracing::warn!(task_id, chat_jid, "task or group vanished before its run");
                return RunOutcome::Done;
            }
            Err(e) => {
                tracing::error!(task_id, "cannot read the task: {e}");
                return RunOutcome::Done;
            }
        };
        if task.status != "active" || group.folder != task.group_folder {
            tracing::info!(task_id, status = %task.status, "task not run: no longer active for this group");
            return RunOutcome::Done;
        }
        let group_context = task.context_mode == "group";
        let session_id = if group_context {
            let folder = group.folder.clone();
            self.store
                .call(move |s| s.session(&folder))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        tracing::info!(task_id, context = %task.context_mode, resume = session_id.is_some(), "starting task run");
        self.write_snapshots(&group).await;
        let started = Timestamp::now();
        let clock = tokio::time::Instant::now();

        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (event_tx, mut event_rx) = mpsc::unbounded_channel();
        let request = RunRequest {
            run_id: crate::ids::run_id(),
            group: group.clone(),
            chat_jid: group.jid.clone(),
            prompt: task.prompt.clone(),
            session_id,
            is_scheduled_task: true,
            assistant_name: self.config.assistant_name.clone(),
        };
        let run = self.runner.run(
            request,
            RunIo {
                input: input_rx,
                events: event_tx,
            },
        );
        tokio::pin!(run);
        let mut outputs: Vec<String> = Vec::new();
        let mut error: Option<String> = None;
        let result = loop {
            tokio::select! {
                biased;
                Some(event) = event_rx.recv() => {
                    match &event {
                        AgentEvent::Tool { name } => slot.set_tool(Some(name)),
                        AgentEvent::Session { .. } => {}
                        _ => slot.set_tool(None),
                    }
                    self.on_task_event(&task, &group.jid, group_context, event, &input_tx, &mut outputs, &mut error).await;
                }
                result = &mut run => break result,
                Some(signal) = slot.signals.recv() => match signal {
                    // Messages wait for the group's next run.
                    RunSignal::NewMessages => slot.request_recheck(),
                    RunSignal::Close => { let _ = input_tx.send(RunInput::Close); }
                },
            }
        };
        while let Ok(event) = event_rx.try_recv() {
            self.on_task_event(
                &task,
                &group.jid,
                group_context,
                event,
                &input_tx,
                &mut outputs,
                &mut error,
            )
            .await;
        }
        if let Err(e) = result {
            if let Some(refusal) = &e.budget {
                self.budget_notice(&group, refusal).await;
                error = Some(e.message);
            } else {
                error.get_or_insert(e.message);
            }
        }

        let now = Timestamp::now();
        let next_run = self.next_run_after(&task, now);
        let result_text = (!outputs.is_empty()).then(|| outputs.join("\n\n"));
        let record = TaskRunRecord {
            task_id: task.id.clone(),
            run_at: crate::clock::format_utc(started),
            duration_ms: clock.elapsed().as_millis() as i64,
            status: if error.is_some() { "error" } else { "success" }.into(),
            last_result: Some(match (&error, &result_text) {
                (Some(e), _) => summary(&format!("Error: {e}")),
                (None, Some(text)) => summary(text),
                (None, None) => "Completed (no output sent)".into(),
            }),
            result: result_text,
            error: error.clone(),
            next_run: next_run.map(crate::clock::format_utc),
        };
        match &error {
            Some(e) => tracing::warn!(task_id, error = %e, "task run failed"),
            None => tracing::info!(task_id, "task run finished"),
        }
        if let Err(e) = self.store.call(move |s| s.record_task_run(&record)).await {
            tracing::error!(task_id, "cannot record the task run: {e}");
        }
        self.ipc.tasks_changed.notify_one();
        RunOutcome::Done
    }

    /// When the task runs next, given that the run due at its `next_run` just happened.
    fn next_run_after(&self, task: &ScheduledTask, now: Timestamp) -> Option<Timestamp> {
        let schedule = match Schedule::parse(
            &task.schedule_type,
            &task.schedule_value,
            &self.config.zone.tz,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(task_id = %task.id, "the task's schedule no longer parses ({e}); it will not run again");
                return None;
            }
        };
        let scheduled = task
            .next_run
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or(now);
        schedule.next_after(scheduled, now, &self.config.zone.tz)
    }

    #[allow(clippy::too_many_arguments)]
    async fn on_task_event(
        &self,
        task: &ScheduledTask,
        chat_jid: &str,
        group_context: bool,
        event: AgentEvent,
        input: &mpsc::UnboundedSender<RunInput>,
        outputs: &mut Vec<String>,
        error: &mut Option<String>,
    ) {
        match event {
            AgentEvent::Result { text, .. } => {
                let visible = strip_internal(&text);
                if visible.is_empty() {
                    return;
                }
                let (jid, name, body) = (
                    chat_jid.to_string(),
                    self.config.assistant_name.clone(),
                    visible.clone(),
                );
                match self
                    .store
                    .call(move |s| s.commit_reply(&jid, &body, &name, None))
                    .await
                {
                    Ok(_) => {
                        outputs.push(visible);
                        self.delivery.notify();
                    }
                    Err(e) => {
                        tracing::error!(task_id = %task.id, "cannot store the task's output: {e}");
                        error.get_or_insert_with(|| "its output could not be stored".into());
                    }
                }
            }
            AgentEvent::Session { session_id } if group_context => {
                let folder = task.group_folder.clone();
                if let Err(e) = self
                    .store
                    .call(move |s| s.set_session(&folder, &session_id))
                    .await
                {
                    tracing::error!("cannot store the session id: {e}");
                }
            }
            // An isolated task's session is its own; the group's stays as it was.
            AgentEvent::Session { .. } => {}
            // Shown in `status` (set by the loop that owns the slot).
            AgentEvent::Tool { .. } => {}
            // The task's turn is done: end the run (it takes no follow-ups).
            AgentEvent::Idle { .. } => {
                let _ = input.send(RunInput::Close);
            }
            AgentEvent::Error { message, .. } => {
                error.get_or_insert(message);
            }
        }
    }
}
