//! The real [`AgentRunner`]: one agent run = one fresh sandbox running `nanoclaw-agent`.
//!
//! The host writes the [`AgentInput`] to the agent's stdin and reads [`AgentEvent`] lines
//! from its stdout. Follow-ups go in as files in the group's `input/` folder (written to a
//! temporary name, then renamed); `_close` asks the agent to finish. The host enforces
//! `CONTAINER_TIMEOUT` (reset by every event), the output cap, kills and removes the
//! sandbox on any failure, and writes a run log to `groups/{folder}/logs/` (no prompt
//! text).

use std::fmt::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use nanoclaw_protocol::{AgentInput, CLOSE_SENTINEL, FollowUp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use super::disk::DiskLimits;
use super::services::RunServices;
use super::{SandboxBackend, SandboxIds, group_spec};
use crate::config::Config;
use crate::layout::{Layout, open_dir_beneath};
use crate::proxy::RunTokens;
use crate::runner::{AgentEvent, AgentRunner, RunError, RunInput, RunIo, RunRequest};

/// The part of stderr kept for the run log.
const STDERR_TAIL: usize = 64 * 1024;
/// A stdout line longer than this ends the run (events are far smaller, and it stays
/// below the default output cap so it can matter).
const MAX_LINE: usize = 4 << 20;

pub struct SandboxRunner {
    config: Arc<Config>,
    layout: Layout,
    backend: Arc<dyn SandboxBackend>,
    tokens: Arc<RunTokens>,
    ids: SandboxIds,
    /// Removals of sandboxes whose runs were abandoned (see [`StopOnDrop`]).
    stopping: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Kept so the per-run egress listeners never see their shutdown channel close.
    egress_running: tokio::sync::watch::Sender<bool>,
    /// Image built / runtime detected; retried on the next run after a failure.
    prepared: Mutex<bool>,
    follow_up_seq: AtomicU64,
}

impl SandboxRunner {
    /// `tokens` are the credential proxy's: each run gets one for its lifetime.
    pub fn new(
        config: Arc<Config>,
        backend: Arc<dyn SandboxBackend>,
        tokens: Arc<RunTokens>,
    ) -> SandboxRunner {
        SandboxRunner {
            layout: Layout::new(&config.root),
            ids: SandboxIds::new(&config),
            stopping: Arc::default(),
            egress_running: tokio::sync::watch::channel(false).0,
            config,
            backend,
            tokens,
            prepared: Mutex::new(false),
            follow_up_seq: AtomicU64::new(0),
        }
    }

    pub fn backend(&self) -> &Arc<dyn SandboxBackend> {
        &self.backend
    }

    /// Stops sandboxes a crashed daemon left behind, and removes their socket folders
    /// and cgroups (call once at start).
    pub async fn remove_orphans(&self) {
        let mut removed = self
            .backend
            .remove_orphans(&super::root_label(self.layout.root()))
            .await;
        let layout = self.layout.clone();
        removed += tokio::task::spawn_blocking(move || {
            RunServices::remove_leftovers(&layout) + super::cgroup::remove_leftovers()
        })
        .await
        .unwrap_or(0);
        if removed > 0 {
            tracing::info!(
                removed,
                "stopped sandboxes left by a previous run of the daemon"
            );
        }
    }

    /// Writes a run's log into its group's `logs` folder.
    async fn write_run_log(&self, ran: Ran<'_>, outcome: &str, owner: Option<(u32, u32)>) {
        let log = run_log(
            ran.request,
            ran.spec,
            ran.plan,
            self.backend.kind().name(),
            ran.record,
            outcome,
        );
        let log_name = format!(
            "run-{}-{}.log",
            crate::clock::compact_now(),
            ran.request.run_id
        );
        let layout = self.layout.clone();
        let folder = ran.spec.group_folder.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let written = open_dir_beneath(&layout.groups_dir(), &[folder.as_str(), "logs"])
                .and_then(|dir| write_beneath(&dir, &log_name, log.as_bytes(), owner));
            if let Err(e) = written {
                tracing::warn!(group = %folder, "cannot write the run log: {e}");
            }
        })
        .await;
    }

    /// The image's backend, for podman and docker.
    fn oci(&self) -> Option<super::oci::Oci> {
        let flavor = match self.backend.kind() {
            crate::config::RuntimeKind::Podman => super::oci::Flavor::Podman,
            crate::config::RuntimeKind::Docker => super::oci::Flavor::Docker,
            crate::config::RuntimeKind::Bwrap => return None,
        };
        Some(super::oci::Oci::new(flavor, &self.config))
    }

    /// After a failed run: when the agent image is gone (someone deleted it while the
    /// daemon ran, which also removes the containers using it), the next run builds it
    /// again instead of failing on it for ever, and the failure says so.
    async fn note_missing_image(&self, why: String) -> String {
        match self.image_gone().await {
            true => format!(
                "{why} (the agent image {} was deleted while the daemon ran; it is built again before the next run)",
                self.config.container_image
            ),
            false => why,
        }
    }

    /// Whether the agent image is known to be gone; if so the next [`Self::prepare`]
    /// builds it again. A backend that cannot answer does not count as "gone".
    async fn image_gone(&self) -> bool {
        let Some(oci) = self.oci() else {
            return false;
        };
        match oci.image_exists().await {
            Ok(false) => {
                *self.prepared.lock().await = false;
                tracing::warn!(
                    image = oci.image(),
                    "the agent image is gone; building it again"
                );
                true
            }
            _ => false,
        }
    }

    /// Builds a missing or stale image and finds a working OCI runtime, once.
    pub async fn prepare(&self) -> Result<(), String> {
        let mut prepared = self.prepared.lock().await;
        if *prepared {
            return Ok(());
        }
        if let Some(oci) = self.oci() {
            let mut progress = super::image::LogProgress::default();
            super::image::ensure(&oci, &self.config, false, &mut progress).await?;
        }
        self.backend.probe().await?;
        *prepared = true;
        Ok(())
    }
}

/// Writes `content` as `name` in `dir` without following symlinks: to a fresh temporary
/// name first (`O_EXCL | O_NOFOLLOW`), then renamed, so readers never see half a file and
/// an agent cannot redirect the write. Owned by the sandbox user when that differs.
pub(crate) fn write_beneath(
    dir: &OwnedFd,
    name: &str,
    content: &[u8],
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    use rustix::fs::{Gid, Mode, OFlags, Uid, fchmod, fchown, openat, renameat};
    let tmp = format!(".{name}.{}.tmp", crate::ids::random_hex(6));
    let fd = openat(
        dir,
        tmp.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    if let Some((uid, gid)) = owner {
        fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    // 0644 whatever the daemon's umask (027 here): readable inside the folder's mount,
    // as files the sandbox writes itself are.
    fchmod(&fd, Mode::from_raw_mode(0o644))?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, content)?;
    file.sync_all()?;
    renameat(dir, tmp.as_str(), dir, name)?;
    Ok(())
}

/// Removes a stale `_close` and unread follow-ups of an earlier run.
fn clear_input(dir: &OwnedFd) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Dir, unlinkat};
    let entries = Dir::read_from(dir.as_fd())?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == CLOSE_SENTINEL || name.ends_with(".json") || name.ends_with(".tmp") {
            // A directory planted under such a name is not ours to delete: leave it.
            let _ = unlinkat(dir, entry.file_name(), AtFlags::empty());
        }
    }
    Ok(())
}

/// Removes the sandbox when a run is abandoned mid-way (the removal is awaited by
/// [`AgentRunner::finish`] at shutdown: killing podman's client leaves its container).
struct StopOnDrop {
    backend: Option<Arc<dyn SandboxBackend>>,
    name: String,
    stopping: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let (Some(backend), Ok(runtime)) =
            (self.backend.take(), tokio::runtime::Handle::try_current())
        {
            let name = std::mem::take(&mut self.name);
            let task = runtime.spawn(async move { backend.stop(&name).await });
            let mut stopping = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
            stopping.retain(|t| !t.is_finished());
            stopping.push(task);
        }
    }
}

/// A run, as its log describes it.
struct Ran<'a> {
    request: &'a RunRequest,
    spec: &'a super::SandboxSpec,
    plan: &'a crate::mounts::MountPlan,
    record: &'a RunRecord,
}

/// What the run log records.
struct RunRecord {
    started: Instant,
    started_at: String,
    events: usize,
    output_bytes: u64,
    stderr_tail: Vec<u8>,
    last_agent_error: Option<String>,
    /// The agent said retrying cannot help.
    permanent: bool,
}

#[async_trait]
impl AgentRunner for SandboxRunner {
    async fn run(&self, request: RunRequest, mut io: RunIo) -> Result<(), RunError> {
        self.prepare().await.map_err(|e| {
            RunError::new(format!(
                "the {} sandbox is not ready: {e}",
                self.backend.kind().name()
            ))
        })?;
        let prepared = {
            let (layout, group, kind) = (
                self.layout.clone(),
                request.group.clone(),
                self.backend.kind(),
            );
            let ids = self.ids.clone();
            tokio::task::spawn_blocking(move || {
                let all = ids
                    .registered_groups()
                    .map_err(super::SandboxError::Invalid)?;
                super::prepare(&layout, &group, &all, kind, |folder| ids.host_id(folder))
            })
            .await
            .map_err(|e| RunError::new(format!("preparing the sandbox failed: {e}")))?
            .map_err(|e| RunError::new(e.to_string()))?
        };
        let folder = prepared.folder.clone();
        let disk = DiskLimits::for_group(
            &self.layout,
            &folder,
            prepared.is_main,
            prepared.limits.disk_bytes,
            self.config.min_free_disk_bytes,
        );
        {
            let disk = disk.clone();
            if let Ok(Some(why)) = tokio::task::spawn_blocking(move || disk.refuse_start()).await {
                tracing::warn!(group = %folder, "{why}");
                return Err(RunError::permanent(why));
            }
        }
        let budget =
            crate::proxy::RunBudget::of(&prepared.container.budget, self.config.daily_token_budget);
        if let Some(refusal) = self.tokens.spending.refuse_start(folder.as_str(), budget) {
            tracing::warn!(group = %folder, "run refused: {}", refusal.message());
            return Err(RunError::budget(refusal));
        }
        // The run's token and sockets: valid exactly as long as this run.
        let services = RunServices::open(
            &self.layout,
            &prepared,
            &self.tokens,
            &request.run_id,
            budget,
            self.egress_running.subscribe(),
        )
        .map_err(|e| RunError::new(format!("cannot open the sandbox's proxy sockets: {e}")))?;
        let (spec, plan) = group_spec(
            &self.config,
            &self.layout,
            &prepared,
            &services.dir,
            services.token(),
            vec!["nanoclaw-agent".into()],
            false,
        );
        for rejection in &plan.rejected {
            tracing::warn!(group = %folder, "{rejection}");
        }
        let owner = prepared.identity.owner();
        let input_dir = open_dir_beneath(
            &self.layout.data_dir().join("ipc"),
            &[folder.as_str(), "input"],
        )
        .map_err(|e| RunError::new(format!("cannot open the group's input folder: {e}")))?;
        clear_input(&input_dir)
            .map_err(|e| RunError::new(format!("cannot clear the input folder: {e}")))?;

        let input = AgentInput {
            prompt: request.prompt.clone(),
            session_id: request.session_id.clone(),
            group_folder: folder.as_str().to_string(),
            chat_jid: request.chat_jid.clone(),
            is_main: request.group.is_main,
            is_scheduled_task: request.is_scheduled_task,
            assistant_name: request.assistant_name.clone(),
        };
        let mut stdin_bytes = serde_json::to_vec(&input)
            .map_err(|e| RunError::new(format!("cannot encode the input: {e}")))?;
        stdin_bytes.push(b'\n');

        let mut record = RunRecord {
            started: Instant::now(),
            started_at: crate::clock::now(),
            events: 0,
            output_bytes: 0,
            stderr_tail: Vec::new(),
            last_agent_error: None,
            permanent: false,
        };
        // Until the agent's first event the backend has not started it; a backend stuck
        // before that (a held storage lock, a hung runtime) is given up much sooner
        // than CONTAINER_TIMEOUT.
        let mut start_deadline = tokio::time::Instant::now() + self.config.sandbox_start_timeout;
        let not_started = || {
            let limit = self.config.sandbox_start_timeout;
            let limit = match limit.subsec_millis() {
                0 => format!("{} s", limit.as_secs()),
                _ => format!("{} ms", limit.as_millis()),
            };
            format!(
                "the {} sandbox did not start the agent within {limit} \
                 (NANOCLAW_SANDBOX_START_TIMEOUT_MS); the backend may be stuck: see `nanoclaw doctor`",
                self.backend.kind().name(),
            )
        };
        let mut made = tokio::time::timeout_at(start_deadline, self.backend.command(&spec)).await;
        if matches!(made, Ok(Err(_))) && self.image_gone().await {
            // Deleted while the daemon ran: built again now, this run waits for it.
            self.prepare().await.map_err(|e| {
                RunError::new(format!(
                    "the agent image was deleted and cannot be built again: {e}"
                ))
            })?;
            // The build took its own time: the start is counted afresh from here.
            start_deadline = tokio::time::Instant::now() + self.config.sandbox_start_timeout;
            made = tokio::time::timeout_at(start_deadline, self.backend.command(&spec)).await;
        }
        let mut sandbox = match made {
            Ok(made) => made.map_err(|e| RunError::new(e.to_string()))?,
            Err(_) => {
                let why = not_started();
                tracing::warn!(sandbox = %spec.name, group = %folder, "{why}");
                let ran = Ran {
                    request: &request,
                    spec: &spec,
                    plan: &plan,
                    record: &record,
                };
                self.write_run_log(ran, &format!("failed: {why}"), owner)
                    .await;
                return Err(RunError::new(why));
            }
        };
        sandbox
            .command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tracing::info!(sandbox = %spec.name, backend = self.backend.kind().name(), "sandbox starting");
        let mut running = sandbox.spawn().await.map_err(|e| {
            RunError::new(format!(
                "cannot start the {} sandbox: {e}",
                self.backend.kind().name()
            ))
        })?;
        let child = &mut running.child;
        // If this run is dropped (shutdown after the grace period), killing the client
        // process is not enough for podman/docker: the container must be removed too.
        let mut guard = StopOnDrop {
            backend: Some(Arc::clone(&self.backend)),
            name: spec.name.clone(),
            stopping: Arc::clone(&self.stopping),
        };
        let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(RunError::new("the sandbox process has no stdio pipes"));
        };
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&stdin_bytes).await;
            let _ = stdin.shutdown().await;
        });
        let mut stdout = stdout;
        let mut stdout_buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        let mut stderr_buf = [0u8; 8192];
        let (mut stdout_open, mut stderr_open) = (true, true);
        let timeout = self.config.container_timeout;
        let cap = self.config.container_max_output_size;
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut input_open = true;
        let mut close_deadline: Option<tokio::time::Instant> = None;
        let mut started = false;
        let disk_watch = disk.watch();
        tokio::pin!(disk_watch);
        // Stops that retrying cannot cure (the user must act), told to the chat.
        let mut stopped_for_good = false;

        let failure: Option<String> = loop {
            tokio::select! {
                read = stdout.read(&mut stdout_buf), if stdout_open => {
                    match read {
                        Ok(0) | Err(_) => stdout_open = false,
                        Ok(n) => {
                            // Counted as it arrives, in bounded chunks: a flood without
                            // newlines must hit the cap, not the daemon's memory.
                            record.output_bytes += n as u64;
                            if record.output_bytes > cap {
                                break Some(format!("the agent produced more than {cap} bytes of output"));
                            }
                            pending.extend_from_slice(&stdout_buf[..n]);
                            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                                let line: Vec<u8> = pending.drain(..=end).collect();
                                let text = String::from_utf8_lossy(&line);
                                match serde_json::from_str::<AgentEvent>(text.trim()) {
                                    Ok(event) => {
                                        record.events += 1;
                                        started = true;
                                        // A tool event says what the agent does, not that
                                        // it got anywhere: it does not extend the turn.
                                        if !matches!(event, AgentEvent::Tool { .. }) {
                                            deadline = tokio::time::Instant::now() + timeout;
                                        }
                                        if let AgentEvent::Error { message, permanent } = &event {
                                            record.last_agent_error = Some(message.clone());
                                            record.permanent |= *permanent;
                                        }
                                        let _ = io.events.send(event);
                                    }
                                    Err(_) if text.trim().is_empty() => {}
                                    Err(_) => tracing::debug!(sandbox = %spec.name, "agent stdout (not an event): {:?}", text.trim()),
                                }
                            }
                            if pending.len() > MAX_LINE {
                                break Some(format!("the agent wrote a line of more than {MAX_LINE} bytes"));
                            }
                        }
                    }
                }
                read = stderr.read(&mut stderr_buf), if stderr_open => {
                    match read {
                        Ok(0) | Err(_) => stderr_open = false,
                        Ok(n) => {
                            record.output_bytes += n as u64;
                            if record.output_bytes > cap {
                                break Some(format!("the agent produced more than {cap} bytes of output"));
                            }
                            record.stderr_tail.extend_from_slice(&stderr_buf[..n]);
                            if record.stderr_tail.len() > STDERR_TAIL {
                                let excess = record.stderr_tail.len() - STDERR_TAIL;
                                record.stderr_tail.drain(..excess);
                            }
                        }
                    }
                }
                received = io.input.recv(), if input_open => match received {
                    Some(RunInput::Message(text)) => {
                        let seq = self.follow_up_seq.fetch_add(1, Ordering::Relaxed);
                        let name = format!("{}-{seq:06}.json", crate::clock::millis_now());
                        let body = serde_json::to_vec(&FollowUp::Message { text }).unwrap_or_default();
                        if let Err(e) = write_beneath(&input_dir, &name, &body, owner) {
                            tracing::error!(sandbox = %spec.name, "cannot hand a follow-up to the agent: {e}");
                        }
                    }
                    Some(RunInput::Close) => {
                        if let Err(e) = write_beneath(&input_dir, CLOSE_SENTINEL, b"", owner) {
                            tracing::error!(sandbox = %spec.name, "cannot ask the agent to close: {e}");
                        }
                        // An agent that ignores the request is stopped: it must not keep
                        // its slot (and its group's next messages) for ever.
                        close_deadline.get_or_insert(tokio::time::Instant::now() + self.config.close_grace);
                    }
                    None => input_open = false,
                },
                why = &mut disk_watch => {
                    tracing::warn!(sandbox = %spec.name, group = %folder, "stopping the run: {why}");
                    stopped_for_good = true;
                    break Some(why);
                }
                _ = tokio::time::sleep_until(close_deadline.unwrap_or(deadline)), if close_deadline.is_some() => {
                    tracing::warn!(sandbox = %spec.name, group = %folder, "the agent did not end when asked to close; stopping its sandbox");
                    break Some(format!(
                        "the agent did not end within {} s of being asked to close",
                        self.config.close_grace.as_secs()
                    ));
                }
                _ = tokio::time::sleep_until(start_deadline), if !started => {
                    tracing::warn!(sandbox = %spec.name, group = %folder, "the sandbox did not start in time; stopping it");
                    break Some(not_started());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    break Some(format!(
                        "the agent produced no output for {} s (CONTAINER_TIMEOUT)",
                        timeout.as_secs()
                    ));
                }
                status = child.wait(), if !stdout_open && !stderr_open => {
                    break match status {
                        Ok(s) if s.success() => None,
                        Ok(s) => Some(match &record.last_agent_error {
                            Some(message) => message.clone(),
                            None => format!("the agent's sandbox exited with {s}"),
                        }),
                        Err(e) => Some(format!("cannot wait for the sandbox: {e}")),
                    };
                }
            }
        };
        if failure.is_some() {
            let _ = child.start_kill();
        }
        let _ = child.wait().await;
        let failure = match failure {
            Some(_) | None if running.oom_killed() => {
                stopped_for_good = true;
                let why = format!(
                    "the sandbox ran out of its {} MiB of memory and a process in it was killed \
                     (container_config.limits.memoryMb raises it)",
                    prepared.limits.memory_bytes >> 20
                );
                tracing::warn!(sandbox = %spec.name, group = %folder, "{why}");
                Some(why)
            }
            other => other,
        };
        writer.abort();
        guard.backend = None;
        self.backend.stop(&spec.name).await;
        let failure = match failure {
            Some(why) => Some(self.note_missing_image(why).await),
            None => None,
        };
        let outcome = match &failure {
            None => "ok".to_string(),
            Some(reason) => format!("failed: {reason}"),
        };
        tracing::info!(sandbox = %spec.name, duration_ms = record.started.elapsed().as_millis() as u64, %outcome, "sandbox ended");
        let ran = Ran {
            request: &request,
            spec: &spec,
            plan: &plan,
            record: &record,
        };
        self.write_run_log(ran, &outcome, owner).await;
        drop(services);
        if let Some(refusal) = self.tokens.spending.take_refusal(&request.run_id) {
            // The agent was told by the proxy; the chat is told by the router.
            return Err(RunError::budget(refusal));
        }
        match failure {
            None => Ok(()),
            Some(reason) if record.permanent || stopped_for_good => {
                Err(RunError::permanent(reason))
            }
            Some(reason) => Err(RunError::new(reason)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} sandboxes running nanoclaw-agent",
            self.backend.kind().name()
        )
    }

    async fn finish(&self) {
        let tasks = std::mem::take(&mut *self.stopping.lock().unwrap_or_else(|p| p.into_inner()));
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(std::time::Duration::from_secs(30), all)
            .await
            .is_err()
        {
            tracing::warn!("some sandboxes were still being removed at shutdown");
        }
    }
}

fn run_log(
    request: &RunRequest,
    spec: &super::SandboxSpec,
    plan: &crate::mounts::MountPlan,
    backend: &str,
    record: &RunRecord,
    outcome: &str,
) -> String {
    let mut log = String::new();
    let _ = writeln!(log, "run {}", request.run_id);
    let _ = writeln!(log, "group: {} ({})", spec.group_folder, request.chat_jid);
    let _ = writeln!(log, "sandbox: {} ({backend})", spec.name);
    let _ = writeln!(log, "started: {}", record.started_at);
    let _ = writeln!(log, "ended: {}", crate::clock::now());
    let _ = writeln!(log, "duration_ms: {}", record.started.elapsed().as_millis());
    let _ = writeln!(log, "scheduled_task: {}", request.is_scheduled_task);
    let _ = writeln!(log, "resumed_session: {}", request.session_id.is_some());
    let _ = writeln!(log, "events: {}", record.events);
    let _ = writeln!(log, "output_bytes: {}", record.output_bytes);
    let _ = writeln!(log, "outcome: {outcome}");
    let _ = writeln!(log, "network: {}", spec.network.name());
    let _ = writeln!(log, "limits: {}", spec.limits.describe());
    let _ = writeln!(log, "identity: {}", spec.identity.describe());
    let _ = writeln!(log, "mounts:");
    for m in &spec.mounts {
        let _ = writeln!(
            log,
            "  {} <- {} ({})",
            m.target,
            m.source.display(),
            if m.writable { "rw" } else { "ro" }
        );
    }
    for r in &plan.rejected {
        let _ = writeln!(log, "  refused: {r}");
    }
    let _ = writeln!(log, "stderr (last {} bytes):", record.stderr_tail.len());
    log.push_str(&String::from_utf8_lossy(&record.stderr_tail));
    log
}
