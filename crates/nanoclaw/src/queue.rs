//! The group queue (SPEC §6): at most one run per group, at most `max_concurrent` runs in
//! all, waiting groups served first come first served, new messages for a live run handed
//! to it instead of starting another, failed runs retried with backoff. Scheduled tasks
//! (SPEC §12) are queued per group too: a group's due tasks run before its messages, a
//! task is never queued or run twice at once, and a due task closes its group's idle run.
//!
//! The queue decides *when* a group runs; the [`GroupProcessor`] (the router's run loop)
//! decides *what* a run does. State lives behind a std mutex that is never held across an
//! `.await`.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// Queue → live run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSignal {
    /// New messages were stored for this group; pick them up.
    NewMessages,
    /// End the run (shutdown).
    Close,
}

/// What a processor hands back when a run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Everything handed to the agent was handled (or there was nothing to do).
    Done,
    /// Failed before answering: retry the same messages after a backoff.
    Retry { reason: String },
    /// Failed after the user already got an answer: retrying would duplicate it.
    Failed,
    /// Failed before answering, and retrying cannot help: tell the user now.
    GiveUp { reason: String },
}

/// A tool name from the sandbox as it may be shown: name characters only (MCP's
/// `mcp__server__tool` included), at most 64 of them.
fn tool_label(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_-.:".contains(*c))
        .take(64)
        .collect();
    if clean.is_empty() {
        "a tool".to_string()
    } else {
        clean
    }
}

/// The live side of a run, owned by the processor while it runs.
pub struct RunSlot {
    pub signals: mpsc::UnboundedReceiver<RunSignal>,
    idle: Arc<AtomicBool>,
    tool: Arc<Mutex<Option<String>>>,
    recheck: bool,
    queue: Weak<GroupQueue>,
}

impl RunSlot {
    /// The agent finished its work and waits for follow-ups (or the reverse). An idle
    /// run gives up its slot when other groups are waiting for one.
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Relaxed);
        if idle && let Some(queue) = self.queue.upgrade() {
            let mut st = queue.lock();
            // A due task of this very group waits for this run: end it now.
            for group in st.groups.values_mut() {
                let has_tasks = !group.pending_tasks.is_empty();
                if let Some(run) = group.run.as_mut()
                    && Arc::ptr_eq(&run.idle, &self.idle)
                    && has_tasks
                    && !run.closing
                {
                    run.closing = true;
                    let _ = run.signals.send(RunSignal::Close);
                }
            }
            queue.preempt_idle_locked(&mut st);
        }
    }

    /// The tool the agent runs now (`None`: none), for `status` and the web app. The
    /// name comes from the sandbox: only a short run of name characters is kept.
    pub fn set_tool(&self, name: Option<&str>) {
        // An idle run runs nothing, whatever its agent says.
        let name = name.filter(|_| !self.idle.load(Ordering::Relaxed));
        *self.tool.lock().unwrap_or_else(|p| p.into_inner()) = name.map(tool_label);
    }

    /// Messages were signalled but could not be handed to the run: look again after it.
    pub fn request_recheck(&mut self) {
        self.recheck = true;
    }
}

#[async_trait]
pub trait GroupProcessor: Send + Sync + 'static {
    /// Processes the group's pending messages, staying alive for follow-ups signalled
    /// through `slot` until the run ends.
    async fn process_messages(&self, chat_jid: &str, slot: &mut RunSlot) -> RunOutcome;

    /// Every retry failed; the messages stay pending. Tell the user.
    async fn gave_up(&self, chat_jid: &str, reason: &str);

    /// Runs scheduled task `task_id` in the group of `chat_jid`. Task runs are not
    /// retried; the processor records their outcome.
    async fn run_task(&self, chat_jid: &str, task_id: &str, slot: &mut RunSlot) -> RunOutcome;
}

/// SPEC §5.5: 5 s, doubling, at most 5 retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max_retries: u32,
}

impl RetryPolicy {
    pub fn new(base: Duration) -> RetryPolicy {
        RetryPolicy {
            base,
            max_retries: 5,
        }
    }

    /// Delay before retry number `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub max_concurrent: usize,
    pub active: Vec<ActiveRunInfo>,
    pub waiting: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActiveRunInfo {
    pub chat_jid: String,
    pub idle: bool,
    /// The tool the agent is running, if it is running one.
    pub tool: Option<String>,
    /// Set for a scheduled task's run.
    pub task_id: Option<String>,
}

struct ActiveRun {
    signals: mpsc::UnboundedSender<RunSignal>,
    task_id: Option<String>,
    idle: Arc<AtomicBool>,
    tool: Arc<Mutex<Option<String>>>,
    /// Asked to close to free its slot for a waiting group.
    closing: bool,
    task: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct GroupState {
    run: Option<ActiveRun>,
    pending_messages: bool,
    /// Due tasks waiting for this group's next run, oldest first.
    pending_tasks: VecDeque<String>,
    retries: u32,
    retry_timer: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct QueueState {
    groups: HashMap<String, GroupState>,
    active: usize,
    waiting: VecDeque<String>,
    shutting_down: bool,
}

pub struct GroupQueue {
    state: Mutex<QueueState>,
    max_concurrent: usize,
    retry: RetryPolicy,
    processor: Arc<dyn GroupProcessor>,
    run_ended: Notify,
    me: Weak<GroupQueue>,
}

impl GroupQueue {
    pub fn new(
        max_concurrent: usize,
        retry: RetryPolicy,
        processor: Arc<dyn GroupProcessor>,
    ) -> Arc<GroupQueue> {
        Arc::new_cyclic(|me| GroupQueue {
            state: Mutex::new(QueueState::default()),
            max_concurrent: max_concurrent.max(1),
            retry,
            processor,
            run_ended: Notify::new(),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New messages for `chat_jid` should be processed: hand them to its live run, or
    /// start a run, or wait for a slot.
    pub fn enqueue_messages(&self, chat_jid: &str) {
        let mut st = self.lock();
        if st.shutting_down {
            return;
        }
        let group = st.groups.entry(chat_jid.to_string()).or_default();
        if let Some(run) = &group.run {
            if run.signals.send(RunSignal::NewMessages).is_ok() {
                return;
            }
            group.pending_messages = true;
            return;
        }
        group.pending_messages = true;
        if st.active >= self.max_concurrent {
            if !st.waiting.iter().any(|j| j == chat_jid) {
                tracing::debug!(
                    chat_jid,
                    active = st.active,
                    "all run slots busy; group waits"
                );
                st.waiting.push_back(chat_jid.to_string());
            }
            self.preempt_idle_locked(&mut st);
            return;
        }
        self.start_locked(&mut st, chat_jid);
    }

    /// Asks the live run of `chat_jid`, if any, to finish.
    pub fn close(&self, chat_jid: &str) {
        if let Some(run) = self
            .lock()
            .groups
            .get(chat_jid)
            .and_then(|g| g.run.as_ref())
        {
            let _ = run.signals.send(RunSignal::Close);
        }
    }

    /// Queues scheduled task `task_id` for the group of `chat_jid`. Returns false if that
    /// task is already waiting or running (a task never runs twice at once).
    pub fn enqueue_task(&self, chat_jid: &str, task_id: &str) -> bool {
        let mut st = self.lock();
        if st.shutting_down {
            return false;
        }
        let taken = st.groups.values().any(|g| {
            g.pending_tasks.iter().any(|t| t == task_id)
                || g.run.as_ref().and_then(|r| r.task_id.as_deref()) == Some(task_id)
        });
        if taken {
            return false;
        }
        let group = st.groups.entry(chat_jid.to_string()).or_default();
        group.pending_tasks.push_back(task_id.to_string());
        if let Some(run) = group.run.as_mut() {
            // The task runs when this run ends; an idle run is asked to end now.
            if !run.closing && run.idle.load(Ordering::Relaxed) {
                tracing::info!(chat_jid, task_id, "closing the idle run for a due task");
                run.closing = true;
                let _ = run.signals.send(RunSignal::Close);
            }
            return true;
        }
        if st.active >= self.max_concurrent {
            if !st.waiting.iter().any(|j| j == chat_jid) {
                st.waiting.push_back(chat_jid.to_string());
            }
            self.preempt_idle_locked(&mut st);
            return true;
        }
        self.start_locked(&mut st, chat_jid);
        true
    }

    /// Every task that is waiting or running.
    pub fn queued_tasks(&self) -> std::collections::HashSet<String> {
        let st = self.lock();
        st.groups
            .values()
            .flat_map(|g| {
                g.pending_tasks
                    .iter()
                    .cloned()
                    .chain(g.run.as_ref().and_then(|r| r.task_id.clone()))
            })
            .collect()
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let st = self.lock();
        let mut active: Vec<ActiveRunInfo> = st
            .groups
            .iter()
            .filter_map(|(jid, g)| {
                g.run.as_ref().map(|r| ActiveRunInfo {
                    chat_jid: jid.clone(),
                    idle: r.idle.load(Ordering::Relaxed),
                    tool: r.tool.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    task_id: r.task_id.clone(),
                })
            })
            .collect();
        active.sort_by(|a, b| a.chat_jid.cmp(&b.chat_jid));
        QueueSnapshot {
            max_concurrent: self.max_concurrent,
            active,
            waiting: st.waiting.iter().cloned().collect(),
        }
    }

    fn start_locked(&self, st: &mut QueueState, chat_jid: &str) {
        let Some(me) = self.me.upgrade() else { return };
        let (tx, rx) = mpsc::unbounded_channel();
        let idle = Arc::new(AtomicBool::new(false));
        let tool = Arc::new(Mutex::new(None));
        st.active += 1;
        let group = st.groups.entry(chat_jid.to_string()).or_default();
        // Due tasks go before messages (which stay pending for the next run).
        let task_id = group.pending_tasks.pop_front();
        if task_id.is_none() {
            group.pending_messages = false;
        }
        let jid = chat_jid.to_string();
        let slot_idle = Arc::clone(&idle);
        let slot_tool = Arc::clone(&tool);
        let run_task_id = task_id.clone();
        let task = tokio::spawn(async move {
            let mut slot = RunSlot {
                signals: rx,
                idle: slot_idle,
                tool: slot_tool,
                recheck: false,
                queue: Arc::downgrade(&me),
            };
            let processor = Arc::clone(&me.processor);
            let outcome = match &run_task_id {
                Some(task_id) => AssertUnwindSafe(processor.run_task(&jid, task_id, &mut slot))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        tracing::error!(chat_jid = %jid, task_id, "the task run panicked");
                        RunOutcome::Done
                    }),
                None => AssertUnwindSafe(processor.process_messages(&jid, &mut slot))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        tracing::error!(chat_jid = %jid, "the run loop panicked; the messages will be retried");
                        RunOutcome::Retry {
                            reason: "an internal error interrupted the run".into(),
                        }
                    }),
            };
            me.finish(&jid, outcome, slot, run_task_id.is_some()).await;
        });
        group.run = Some(ActiveRun {
            signals: tx,
            task_id,
            idle,
            tool,
            closing: false,
            task: Some(task),
        });
    }

    async fn finish(&self, chat_jid: &str, outcome: RunOutcome, mut slot: RunSlot, was_task: bool) {
        let mut gave_up = None;
        let mut backing_off = false;
        {
            let mut st = self.lock();
            st.active = st.active.saturating_sub(1);
            let shutting_down = st.shutting_down;
            let group = st.groups.entry(chat_jid.to_string()).or_default();
            group.run = None;
            // Signals that arrived after the run stopped listening are not lost.
            while let Ok(signal) = slot.signals.try_recv() {
                if signal == RunSignal::NewMessages {
                    group.pending_messages = true;
                }
            }
            if slot.recheck {
                group.pending_messages = true;
            }
            match outcome {
                // A task run says nothing about the group's messages.
                _ if was_task => {}
                RunOutcome::Done | RunOutcome::Failed => group.retries = 0,
                RunOutcome::GiveUp { reason } => {
                    group.retries = 0;
                    gave_up = Some(reason);
                }
                RunOutcome::Retry { reason } if !shutting_down => {
                    group.retries += 1;
                    if group.retries > self.retry.max_retries {
                        tracing::error!(chat_jid, retries = self.retry.max_retries, %reason,
                            "giving up after retries; the messages stay pending until the next message or restart");
                        group.retries = 0;
                        gave_up = Some(reason);
                    } else {
                        let delay = self.retry.delay(group.retries);
                        tracing::warn!(chat_jid, retry = group.retries, delay_ms = delay.as_millis() as u64, %reason,
                            "run failed before answering; retrying");
                        let me = self.me.clone();
                        let jid = chat_jid.to_string();
                        if let Some(old) = group.retry_timer.take() {
                            old.abort();
                        }
                        backing_off = true;
                        group.retry_timer = Some(tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            if let Some(q) = me.upgrade() {
                                q.enqueue_messages(&jid);
                            }
                        }));
                    }
                }
                RunOutcome::Retry { .. } => {}
            }
            // While backing off, the retry timer brings the group back (with whatever
            // arrived meanwhile); re-queueing it now would skip the backoff.
            let pending =
                (group.pending_messages && !backing_off) || !group.pending_tasks.is_empty();
            if !shutting_down {
                // Back of the line: groups already waiting go first.
                if pending && !st.waiting.iter().any(|j| j == chat_jid) {
                    st.waiting.push_back(chat_jid.to_string());
                }
                self.drain_waiting_locked(&mut st);
            }
        }
        self.run_ended.notify_waiters();
        if let Some(reason) = gave_up {
            self.processor.gave_up(chat_jid, &reason).await;
        }
    }

    /// Asks idle runs to close while groups wait for a slot: a run waiting for follow-ups
    /// must not keep a group that has work out for up to `IDLE_TIMEOUT`.
    fn preempt_idle_locked(&self, st: &mut QueueState) {
        let QueueState {
            groups, waiting, ..
        } = st;
        let closing = groups
            .values()
            .filter(|g| g.run.as_ref().is_some_and(|r| r.closing))
            .count();
        if closing >= waiting.len() {
            return;
        }
        let idle = groups
            .iter_mut()
            .filter_map(|(jid, g)| g.run.as_mut().map(|r| (jid, r)))
            .find(|(_, r)| !r.closing && r.idle.load(Ordering::Relaxed));
        if let Some((jid, run)) = idle {
            tracing::info!(chat_jid = %jid, "closing an idle run to free its slot for a waiting group");
            run.closing = true;
            let _ = run.signals.send(RunSignal::Close);
        }
    }

    fn drain_waiting_locked(&self, st: &mut QueueState) {
        while st.active < self.max_concurrent {
            let Some(jid) = st.waiting.pop_front() else {
                break;
            };
            let ready = st.groups.get(&jid).is_some_and(|g| {
                g.run.is_none() && (g.pending_messages || !g.pending_tasks.is_empty())
            });
            if ready {
                self.start_locked(st, &jid);
            }
        }
    }

    /// Stops taking work, asks every live run to close, waits up to `grace`, then stops
    /// (drops) what is still running. Nothing stored is lost: unanswered messages stay
    /// behind the persisted cursor and run again after the restart.
    pub async fn shutdown(&self, grace: Duration) {
        {
            let mut st = self.lock();
            st.shutting_down = true;
            st.waiting.clear();
            for group in st.groups.values_mut() {
                if let Some(timer) = group.retry_timer.take() {
                    timer.abort();
                }
                if let Some(run) = &group.run {
                    let _ = run.signals.send(RunSignal::Close);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.run_ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let active = self.lock().active;
            if active == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let mut st = self.lock();
        tracing::warn!(
            runs = st.active,
            "runs did not finish within the shutdown grace period; stopping them"
        );
        for group in st.groups.values_mut() {
            if let Some(task) = group.run.as_mut().and_then(|r| r.task.take()) {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tool_names_from_the_sandbox_are_cleaned_before_they_are_shown() {
        assert_eq!(super::tool_label("Bash"), "Bash");
        assert_eq!(
            super::tool_label("mcp__github__create_issue"),
            "mcp__github__create_issue"
        );
        assert_eq!(super::tool_label("<img src=x>\u{1b}[31m"), "imgsrcx31m");
        assert_eq!(super::tool_label("\n\t "), "a tool");
        assert_eq!(super::tool_label(&"x".repeat(500)).len(), 64);
    }

    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Semaphore;

    /// A processor whose runs block until the test releases them.
    struct Gate {
        release: Semaphore,
        started: Mutex<Vec<String>>,
        signals_seen: Mutex<Vec<(String, RunSignal)>>,
        running: AtomicUsize,
        max_running: AtomicUsize,
        outcomes: Mutex<VecDeque<RunOutcome>>,
        gave_up: Mutex<Vec<String>>,
        started_notify: Notify,
    }

    impl Gate {
        fn new() -> Arc<Gate> {
            Arc::new(Gate {
                release: Semaphore::new(0),
                started: Mutex::new(vec![]),
                signals_seen: Mutex::new(vec![]),
                running: AtomicUsize::new(0),
                max_running: AtomicUsize::new(0),
                outcomes: Mutex::new(VecDeque::new()),
                gave_up: Mutex::new(vec![]),
                started_notify: Notify::new(),
            })
        }
        fn started(&self) -> Vec<String> {
            self.started.lock().expect("lock").clone()
        }
    }

    #[async_trait]
    impl GroupProcessor for Gate {
        async fn process_messages(&self, chat_jid: &str, slot: &mut RunSlot) -> RunOutcome {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            self.started
                .lock()
                .expect("lock")
                .push(chat_jid.to_string());
            self.started_notify.notify_waiters();
            loop {
                tokio::select! {
                    permit = self.release.acquire() => {
                        permit.expect("semaphore open").forget();
                        break;
                    }
                    Some(sig) = slot.signals.recv() => {
                        self.signals_seen.lock().expect("lock").push((chat_jid.to_string(), sig));
                        if sig == RunSignal::Close { break; }
                    }
                }
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.outcomes
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or(RunOutcome::Done)
        }
        async fn gave_up(&self, chat_jid: &str, _reason: &str) {
            self.gave_up
                .lock()
                .expect("lock")
                .push(chat_jid.to_string());
        }
        async fn run_task(&self, chat_jid: &str, task_id: &str, slot: &mut RunSlot) -> RunOutcome {
            // Recorded as `task:{id}@{group}`, blocking like a message run.
            self.process_messages(&format!("task:{task_id}@{chat_jid}"), slot)
                .await
        }
    }

    async fn wait_started(gate: &Gate, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = gate.started_notify.notified();
                if gate.started().len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("runs started in time");
    }

    #[tokio::test]
    async fn cap_and_fifo_order() {
        let gate = Gate::new();
        let q = GroupQueue::new(2, RetryPolicy::new(Duration::from_millis(10)), gate.clone());
        for i in 1..=5 {
            q.enqueue_messages(&format!("g{i}"));
        }
        wait_started(&gate, 2).await;
        assert_eq!(q.snapshot().waiting, ["g3", "g4", "g5"]);
        for n in 3..=5 {
            gate.release.add_permits(1);
            wait_started(&gate, n).await;
        }
        gate.release.add_permits(2);
        assert_eq!(gate.started(), ["g1", "g2", "g3", "g4", "g5"]);
        assert_eq!(gate.max_running.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn messages_for_a_live_run_are_signalled_not_started_twice() {
        let gate = Gate::new();
        let q = GroupQueue::new(3, RetryPolicy::new(Duration::from_millis(10)), gate.clone());
        q.enqueue_messages("g1");
        wait_started(&gate, 1).await;
        q.enqueue_messages("g1");
        q.enqueue_messages("g1");
        tokio::time::timeout(Duration::from_secs(5), async {
            while gate.signals_seen.lock().expect("lock").len() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("signals delivered");
        assert_eq!(gate.started(), ["g1"]);
        assert_eq!(gate.max_running.load(Ordering::SeqCst), 1);
        gate.release.add_permits(1);
    }

    #[tokio::test]
    async fn retries_back_off_then_give_up() {
        let gate = Gate::new();
        let policy = RetryPolicy {
            base: Duration::from_millis(5),
            max_retries: 2,
        };
        let q = GroupQueue::new(1, policy, gate.clone());
        for _ in 0..3 {
            gate.outcomes
                .lock()
                .expect("lock")
                .push_back(RunOutcome::Retry {
                    reason: "boom".into(),
                });
        }
        gate.release.add_permits(3);
        let started = tokio::time::Instant::now();
        q.enqueue_messages("g1");
        tokio::time::timeout(Duration::from_secs(5), async {
            while gate.gave_up.lock().expect("lock").is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("gave up");
        assert_eq!(
            gate.started(),
            ["g1", "g1", "g1"],
            "one run and two retries"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(5 + 10),
            "the retries waited 5 ms, then 10 ms"
        );
    }

    /// Goes idle (at once, or once `hold` gives a permit) and stays until closed.
    struct IdleUntilClosed {
        closed: Mutex<Vec<String>>,
        tasks_run: Mutex<Vec<String>>,
        hold: Option<Semaphore>,
    }

    impl IdleUntilClosed {
        fn new(hold: bool) -> Arc<IdleUntilClosed> {
            Arc::new(IdleUntilClosed {
                closed: Mutex::new(vec![]),
                tasks_run: Mutex::new(vec![]),
                hold: hold.then(|| Semaphore::new(0)),
            })
        }
    }

    #[async_trait]
    impl GroupProcessor for IdleUntilClosed {
        async fn run_task(&self, chat_jid: &str, task_id: &str, _: &mut RunSlot) -> RunOutcome {
            self.tasks_run
                .lock()
                .expect("lock")
                .push(format!("{task_id}@{chat_jid}"));
            RunOutcome::Done
        }
        async fn process_messages(&self, chat_jid: &str, slot: &mut RunSlot) -> RunOutcome {
            if let Some(hold) = &self.hold {
                hold.acquire().await.expect("open").forget();
            }
            slot.set_idle(true);
            while let Some(sig) = slot.signals.recv().await {
                if sig == RunSignal::Close {
                    self.closed.lock().expect("lock").push(chat_jid.to_string());
                    break;
                }
            }
            RunOutcome::Done
        }
        async fn gave_up(&self, _: &str, _: &str) {}
    }

    #[tokio::test]
    async fn an_idle_run_yields_its_slot_to_a_waiting_group() {
        let p = IdleUntilClosed::new(false);
        let q = GroupQueue::new(1, RetryPolicy::new(Duration::from_millis(10)), p.clone());
        q.enqueue_messages("g1");
        tokio::time::timeout(Duration::from_secs(5), async {
            while !q.snapshot().active.iter().any(|r| r.idle) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("g1 idle");
        q.enqueue_messages("g2");
        tokio::time::timeout(Duration::from_secs(5), async {
            while q
                .snapshot()
                .active
                .iter()
                .map(|r| r.chat_jid.as_str())
                .collect::<Vec<_>>()
                != ["g2"]
            {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("g2 got the slot");
        assert_eq!(*p.closed.lock().expect("lock"), ["g1"]);
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test]
    async fn a_task_is_never_queued_or_run_twice_and_goes_before_messages() {
        let gate = Gate::new();
        let q = GroupQueue::new(1, RetryPolicy::new(Duration::from_millis(10)), gate.clone());
        q.enqueue_messages("g1");
        wait_started(&gate, 1).await;
        assert!(q.enqueue_task("g1", "t1"));
        assert!(!q.enqueue_task("g1", "t1"), "already waiting");
        assert!(
            !q.enqueue_task("g2", "t1"),
            "a task id is queued once, anywhere"
        );
        q.enqueue_messages("g1"); // signalled to the live run
        assert_eq!(q.queued_tasks().len(), 1);
        gate.release.add_permits(1);
        wait_started(&gate, 2).await;
        assert_eq!(gate.started()[1], "task:t1@g1", "the task runs next");
        assert!(!q.enqueue_task("g1", "t1"), "already running");
        assert_eq!(
            q.snapshot().active[0].task_id.as_deref(),
            Some("t1"),
            "status shows the task run"
        );
        gate.release.add_permits(1);
        until("the task run ended", || q.queued_tasks().is_empty()).await;
        gate.release.add_permits(1);
    }

    #[tokio::test]
    async fn a_due_task_closes_its_groups_idle_run() {
        let p = IdleUntilClosed::new(false);
        let q = GroupQueue::new(5, RetryPolicy::new(Duration::from_millis(10)), p.clone());
        q.enqueue_messages("g1");
        until("g1 idle", || q.snapshot().active.iter().any(|r| r.idle)).await;
        assert!(q.enqueue_task("g1", "t1"));
        until("the task ran", || {
            !p.tasks_run.lock().expect("lock").is_empty()
        })
        .await;
        assert_eq!(*p.closed.lock().expect("lock"), ["g1"]);
        assert_eq!(*p.tasks_run.lock().expect("lock"), ["t1@g1"]);
    }

    #[tokio::test]
    async fn a_busy_run_is_closed_for_a_due_task_once_it_goes_idle() {
        let p = IdleUntilClosed::new(true);
        let q = GroupQueue::new(5, RetryPolicy::new(Duration::from_millis(10)), p.clone());
        q.enqueue_messages("g1");
        until("g1 running", || !q.snapshot().active.is_empty()).await;
        assert!(q.enqueue_task("g1", "t1"));
        assert!(
            p.closed.lock().expect("lock").is_empty(),
            "a busy run is not interrupted"
        );
        p.hold.as_ref().expect("hold").add_permits(1);
        until("the task ran", || {
            !p.tasks_run.lock().expect("lock").is_empty()
        })
        .await;
        assert_eq!(*p.closed.lock().expect("lock"), ["g1"]);
    }

    #[test]
    fn retry_delays_double_from_the_base() {
        let p = RetryPolicy::new(Duration::from_secs(5));
        let delays: Vec<u64> = (1..=5).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80]);
        assert_eq!(p.max_retries, 5);
    }

    #[tokio::test]
    async fn shutdown_closes_live_runs() {
        let gate = Gate::new();
        let q = GroupQueue::new(2, RetryPolicy::new(Duration::from_millis(10)), gate.clone());
        q.enqueue_messages("g1");
        wait_started(&gate, 1).await;
        q.shutdown(Duration::from_secs(5)).await;
        assert!(
            gate.signals_seen
                .lock()
                .expect("lock")
                .contains(&("g1".to_string(), RunSignal::Close))
        );
        assert!(
            q.snapshot().active.is_empty(),
            "the run ended within the grace period"
        );
        q.enqueue_messages("g2");
        let after = q.snapshot();
        assert!(
            after.active.is_empty() && after.waiting.is_empty(),
            "no new work after shutdown: {after:?}"
        );
    }
}
