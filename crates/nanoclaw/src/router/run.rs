//! The run loop: one agent run for a group, from its pending messages to its replies.
//!
//! It formats the prompt, starts the runner, commits each reply (outbox + cursor, one
//! transaction), stores the session id, hands follow-ups to the live run, closes it when
//! it has been idle for `IDLE_TIMEOUT`, and reports to the queue whether to retry: a run
//! that ends with messages it never answered is retried, one that already answered
//! everything is not (whatever happened after), so no reply is ever sent twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::prompt::{format_prompt, strip_internal};
use super::sender_allowlist::SenderPolicy;
use super::{MAX_PROMPT_MESSAGES, wants_run};
use crate::channels::ChannelSet;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::ipc::IpcContext;
use crate::metrics::Metrics;
use crate::proxy::Refusal;
use crate::queue::{GroupProcessor, RunOutcome, RunSignal, RunSlot};
use crate::runner::{AgentEvent, AgentRunner, RunError, RunInput, RunIo, RunRequest};
use crate::store::{RegisteredGroup, Store, StoreError, StoredMessage};

/// How long a typing indicator call may take before we stop waiting for it.
const TYPING_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RunLoop {
    pub(crate) store: Arc<Store>,
    pub(crate) runner: Arc<dyn AgentRunner>,
    pub(crate) senders: Arc<SenderPolicy>,
    pub(crate) delivery: Arc<Delivery>,
    pub(crate) channels: ChannelSet,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) ipc: Arc<IpcContext>,
    /// The typing state each chat should end up in, and a lock that keeps one chat's
    /// typing calls from overlapping. Calls run in their own tasks and may start in any
    /// order; each applies the latest wish, not its own, so the last one wins.
    pub(crate) typing_wanted: Arc<std::sync::Mutex<TypingWishes>>,
}

/// Per chat: whether it should show typing, and the lock its typing calls take.
pub(crate) type TypingWishes =
    std::collections::HashMap<String, (bool, Arc<tokio::sync::Mutex<()>>)>;

/// What a run needs to start, read from the store in one go.
struct Plan {
    group: RegisteredGroup,
    cursor: i64,
    messages: Vec<StoredMessage>,
    session_id: Option<String>,
}

/// Where a live run stands.
struct Progress {
    /// Highest seq given to the agent (first prompt and follow-ups).
    handed: i64,
    /// `inputs[n]`: the highest seq covered once the agent has read `n` follow-ups
    /// (`inputs[0]` is the first prompt). Lets a reply mark as answered only what the
    /// agent had read, not what was merely sent to it.
    inputs: Vec<i64>,
    /// Highest seq the persisted cursor covers (answered or handled).
    answered: i64,
    idle_deadline: Option<Instant>,
    last_error: Option<String>,
    /// `Close` was sent to the runner: follow-ups now wait for the next run.
    closing: bool,
    /// The agent reported an error retrying cannot fix.
    permanent: bool,
}

impl Progress {
    /// The highest seq the agent had read after `inputs` follow-ups. A count larger
    /// than what was sent (a confused agent) counts as everything sent.
    fn read_upto(&self, inputs: u32) -> i64 {
        let index = (inputs as usize).min(self.inputs.len() - 1);
        self.inputs[index]
    }
}

fn max_seq(messages: &[StoredMessage]) -> i64 {
    messages.iter().map(|m| m.seq).max().unwrap_or(0)
}

impl RunLoop {
    /// Sends the user a message from the assistant about its own state (not an answer).
    async fn tell(&self, chat_jid: &str, text: String) {
        let (jid, name) = (chat_jid.to_string(), self.config.assistant_name.clone());
        match self
            .store
            .call(move |s| s.commit_reply(&jid, &text, &name, None))
            .await
        {
            Ok(_) => self.delivery.notify(),
            Err(e) => tracing::error!(chat_jid, "cannot tell the user that the run failed: {e}"),
        }
    }

    /// Tells the chat that a token budget stopped its run (SPEC §15): a run's ceiling
    /// each time, the day's once a day (remembered in the store across restarts).
    pub(super) async fn budget_notice(&self, group: &RegisteredGroup, refusal: &Refusal) {
        let text = if refusal.is_daily() {
            format!("I have stopped for today: {}.", refusal.message())
        } else {
            format!("I had to stop: {}.", refusal.message())
        };
        tracing::warn!(group = %group.folder, "{}", refusal.message());
        if refusal.is_daily() {
            let today = jiff::Timestamp::now()
                .to_zoned_datetime(self.config.zone.tz.clone())
                .date()
                .to_string();
            let key = format!("budget_notice:{}", group.folder);
            let first = self
                .store
                .call(move |s| {
                    if s.state(&key)?.as_deref() == Some(today.as_str()) {
                        return Ok::<_, StoreError>(false);
                    }
                    s.set_state(&key, &today)?;
                    Ok(true)
                })
                .await;
            match first {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::error!("cannot remember the budget notice: {e}"),
            }
        }
        self.tell(&group.jid, text).await;
    }

    /// Writes the group's `current_tasks.json` and `available_groups.json` (SPEC §10).
    /// A failure is logged; the run goes ahead with whatever the agent finds.
    pub(super) async fn write_snapshots(&self, group: &RegisteredGroup) {
        let ipc = Arc::clone(&self.ipc);
        let (folder, is_main) = (group.folder.clone(), group.is_main);
        let written = tokio::task::spawn_blocking(move || {
            crate::ipc::snapshot::write_all(&ipc, &folder, is_main)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot write the IPC snapshots: {e}"),
            Err(e) => tracing::warn!("cannot write the IPC snapshots: {e}"),
        }
    }

    async fn plan(&self, chat_jid: &str) -> Result<Option<Plan>, StoreError> {
        let jid = chat_jid.to_string();
        let senders = Arc::clone(&self.senders);
        let default_trigger = self.config.default_trigger();
        self.store
            .call(move |s| {
                let Some(group) = s.registered_group(&jid)? else {
                    return Ok(None);
                };
                let Ok(folder) = group.folder() else {
                    return Ok(None);
                };
                let cursor = s.cursor(&jid)?;
                let messages = s.pending_messages(&jid, cursor, MAX_PROMPT_MESSAGES)?;
                if !wants_run(&group, &messages, &senders.current(), &default_trigger) {
                    return Ok(None);
                }
                let session_id = s.session(folder.as_str())?;
                Ok(Some(Plan {
                    group,
                    cursor,
                    messages,
                    session_id,
                }))
            })
            .await
    }

    fn prompt(&self, messages: &[StoredMessage]) -> String {
        format_prompt(messages, &self.config.zone.tz, &self.config.zone.name)
    }

    fn typing(&self, chat_jid: &str, typing: bool) {
        let Some(channel) = self.channels.for_jid(chat_jid) else {
            return;
        };
        let jid = chat_jid.to_string();
        let chat_lock = {
            let mut wishes = self.typing_wanted.lock().unwrap_or_else(|p| p.into_inner());
            let wish = wishes.entry(jid.clone()).or_default();
            wish.0 = typing;
            Arc::clone(&wish.1)
        };
        let wanted = Arc::clone(&self.typing_wanted);
        tokio::spawn(async move {
            let _one_at_a_time = chat_lock.lock().await;
            let typing = wanted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&jid)
                .is_some_and(|w| w.0);
            match tokio::time::timeout(TYPING_TIMEOUT, channel.set_typing(&jid, typing)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(chat_jid = %jid, "typing indicator failed: {e}"),
                Err(_) => tracing::debug!(chat_jid = %jid, "typing indicator timed out"),
            }
        });
    }

    async fn run(&self, plan: Plan, slot: &mut RunSlot) -> RunOutcome {
        let Plan {
            group,
            cursor,
            messages,
            session_id,
        } = plan;
        let chat_jid = group.jid.clone();
        let mut progress = Progress {
            handed: max_seq(&messages),
            inputs: vec![max_seq(&messages)],
            answered: cursor,
            idle_deadline: None,
            last_error: None,
            closing: false,
            permanent: false,
        };
        tracing::info!(
            messages = messages.len(),
            resume = session_id.is_some(),
            "starting agent run"
        );
        Metrics::inc(&self.metrics.runs_started);
        self.typing(&chat_jid, true);
        self.write_snapshots(&group).await;

        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (event_tx, mut event_rx) = mpsc::unbounded_channel();
        let request = RunRequest {
            run_id: crate::ids::run_id(),
            group: group.clone(),
            chat_jid: chat_jid.clone(),
            prompt: self.prompt(&messages),
            session_id,
            is_scheduled_task: false,
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
        let result = loop {
            let idle_deadline = progress.idle_deadline;
            tokio::select! {
                biased;
                Some(event) = event_rx.recv() => self.on_event(&group, event, &mut progress, slot).await,
                result = &mut run => break result,
                Some(signal) = slot.signals.recv() => match signal {
                    RunSignal::NewMessages => {
                        self.follow_up(&group, &input_tx, &mut progress, slot).await;
                    }
                    RunSignal::Close => {
                        progress.closing = true;
                        let _ = input_tx.send(RunInput::Close);
                    }
                },
                _ = sleep_until(idle_deadline), if idle_deadline.is_some() => {
                    tracing::info!("idle timeout reached; closing the run");
                    progress.idle_deadline = None;
                    progress.closing = true;
                    let _ = input_tx.send(RunInput::Close);
                }
            }
        };
        // Events the runner sent just before it returned.
        while let Ok(event) = event_rx.try_recv() {
            self.on_event(&group, event, &mut progress, slot).await;
        }
        self.typing(&chat_jid, false);
        slot.set_idle(false);

        if let Err(RunError {
            budget: Some(refusal),
            ..
        }) = &result
        {
            // Not retried (it would be refused again) and not a "Sorry" per message:
            // the chat hears about the day's ceiling once a day.
            self.budget_notice(&group, refusal).await;
            Metrics::inc(&self.metrics.runs_failed);
            return RunOutcome::Failed;
        }
        let permanent = progress.permanent || result.as_ref().is_err_and(|e| e.permanent);
        let failure = match result {
            Err(e) => Some(e.message),
            Ok(()) => progress.last_error.take(),
        };
        // The persisted cursor moved only when the agent answered (a reply) or said it
        // was done (idle). Anything handed to it after that is still unanswered.
        let unanswered = progress.handed > progress.answered;
        match (failure, unanswered) {
            (None, false) => {
                tracing::info!("agent run finished");
                RunOutcome::Done
            }
            (None, true) => {
                Metrics::inc(&self.metrics.runs_failed);
                tracing::warn!(
                    "agent run ended before answering its latest messages; they will be retried"
                );
                RunOutcome::Retry {
                    reason: "the assistant stopped before answering".into(),
                }
            }
            (Some(reason), true) if permanent => {
                Metrics::inc(&self.metrics.runs_failed);
                tracing::warn!(%reason, "agent run failed in a way retrying cannot fix; telling the user");
                RunOutcome::GiveUp { reason }
            }
            (Some(reason), true) => {
                Metrics::inc(&self.metrics.runs_failed);
                tracing::warn!(%reason, "agent run failed before answering; the messages will be retried");
                RunOutcome::Retry { reason }
            }
            (Some(reason), false) if permanent => {
                // Its messages were answered, but the user must know why it stopped (a
                // disk quota or memory limit hit, say) before asking for more.
                Metrics::inc(&self.metrics.runs_failed);
                tracing::warn!(%reason, "agent run stopped after its reply was sent; telling the user");
                self.tell(&chat_jid, format!("I had to stop: {reason}."))
                    .await;
                RunOutcome::Failed
            }
            (Some(reason), false) => {
                Metrics::inc(&self.metrics.runs_failed);
                tracing::warn!(%reason, "agent run failed after its reply was sent; not retrying, to avoid a duplicate reply");
                RunOutcome::Failed
            }
        }
    }

    async fn on_event(
        &self,
        group: &RegisteredGroup,
        event: AgentEvent,
        progress: &mut Progress,
        slot: &RunSlot,
    ) {
        match &event {
            AgentEvent::Tool { name } => slot.set_tool(Some(name)),
            AgentEvent::Session { .. } => {}
            _ => slot.set_tool(None),
        }
        match event {
            AgentEvent::Tool { .. } => {}
            AgentEvent::Result { text, inputs } => {
                let visible = strip_internal(&text);
                if visible.is_empty() {
                    tracing::debug!(
                        chars = text.len(),
                        "agent output was internal only; nothing sent"
                    );
                    return;
                }
                let read = progress.read_upto(inputs);
                let (jid, name) = (group.jid.clone(), self.config.assistant_name.clone());
                match self
                    .store
                    .call(move |s| s.commit_reply(&jid, &visible, &name, Some(read)))
                    .await
                {
                    Ok(_) => {
                        progress.answered = progress.answered.max(read);
                        Metrics::inc(&self.metrics.replies_committed);
                        self.delivery.notify();
                    }
                    Err(e) => {
                        tracing::error!("cannot store the agent's reply: {e}");
                        progress.last_error = Some("the reply could not be stored".into());
                    }
                }
            }
            AgentEvent::Session { session_id } => {
                let folder = group.folder.clone();
                if let Err(e) = self
                    .store
                    .call(move |s| s.set_session(&folder, &session_id))
                    .await
                {
                    tracing::error!("cannot store the session id: {e}");
                }
            }
            AgentEvent::Idle { inputs } => {
                let read = progress.read_upto(inputs);
                if inputs as usize + 1 >= progress.inputs.len() {
                    // Idle with everything read: the slot may go to another group.
                    slot.set_idle(true);
                    self.typing(&group.jid, false);
                    // Set when the run turns idle: repeating `idle` must not keep it alive.
                    if progress.idle_deadline.is_none() && !progress.closing {
                        progress.idle_deadline = Some(Instant::now() + self.config.idle_timeout);
                    }
                }
                if read > progress.answered {
                    // Handled without a visible reply (e.g. all <internal>): do not rerun.
                    let jid = group.jid.clone();
                    match self.store.call(move |s| s.advance_cursor(&jid, read)).await {
                        Ok(()) => progress.answered = read,
                        Err(e) => tracing::error!("cannot save the cursor: {e}"),
                    }
                }
            }
            AgentEvent::Error { message, permanent } => {
                tracing::warn!(%message, permanent, "agent reported an error");
                progress.last_error = Some(message);
                progress.permanent |= permanent;
            }
        }
    }

    /// Hands messages that arrived during the run to it, if they warrant the agent.
    async fn follow_up(
        &self,
        group: &RegisteredGroup,
        input: &mpsc::UnboundedSender<RunInput>,
        progress: &mut Progress,
        slot: &mut RunSlot,
    ) {
        if progress.closing {
            // The run is ending; a message handed now might never be read.
            slot.request_recheck();
            return;
        }
        let (jid, after) = (group.jid.clone(), progress.handed);
        let senders = Arc::clone(&self.senders);
        let default_trigger = self.config.default_trigger();
        let g = group.clone();
        let pending = self
            .store
            .call(move |s| {
                let pending = s.pending_messages(&jid, after, MAX_PROMPT_MESSAGES)?;
                let wanted = wants_run(&g, &pending, &senders.current(), &default_trigger);
                Ok::<_, StoreError>(wanted.then_some(pending))
            })
            .await;
        let messages = match pending {
            Ok(Some(messages)) => messages,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("cannot read follow-up messages: {e}");
                slot.request_recheck();
                return;
            }
        };
        if input
            .send(RunInput::Message(self.prompt(&messages)))
            .is_err()
        {
            slot.request_recheck();
            return;
        }
        tracing::info!(
            messages = messages.len(),
            "handed follow-up messages to the live run"
        );
        progress.handed = progress.handed.max(max_seq(&messages));
        progress.inputs.push(progress.handed);
        progress.idle_deadline = None;
        slot.set_idle(false);
        self.typing(&group.jid, true);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl GroupProcessor for RunLoop {
    async fn process_messages(&self, chat_jid: &str, slot: &mut RunSlot) -> RunOutcome {
        let plan = match self.plan(chat_jid).await {
            Ok(Some(plan)) => plan,
            Ok(None) => return RunOutcome::Done,
            Err(e) => {
                tracing::error!(chat_jid, "cannot prepare a run: {e}");
                return RunOutcome::Retry {
                    reason: format!("the store could not be read ({e})"),
                };
            }
        };
        let span = tracing::info_span!("run", group = %plan.group.folder, chat_jid);
        self.run(plan, slot).instrument(span).await
    }

    async fn run_task(&self, chat_jid: &str, task_id: &str, slot: &mut RunSlot) -> RunOutcome {
        let span = tracing::info_span!("task", task_id, chat_jid);
        self.task_run(chat_jid, task_id, slot)
            .instrument(span)
            .await
    }

    async fn gave_up(&self, chat_jid: &str, reason: &str) {
        let text = format!(
            "Sorry, I could not answer your last message: {reason}. I will try again when the next message \
             arrives or when I restart."
        );
        self.tell(chat_jid, text).await;
    }
}
