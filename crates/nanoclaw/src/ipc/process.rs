//! Carrying out one IPC request for a source group, after authorization.

use jiff::Timestamp;
use nanoclaw_protocol::ipc::IpcRequest;

use super::authorize::{Source, Target, authorize};
use super::{IpcContext, snapshot};
use crate::schedule::Schedule;
use crate::store::{ScheduledTask, StoreError, TaskStatus};

/// Why a request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpcError {
    /// Not allowed for this source (logged, file deleted).
    Denied { reason: String, target: String },
    /// Cannot be carried out as written (file moved to `data/ipc/errors/`).
    Invalid(String),
    /// The store failed; the file stays and is tried again later.
    Retry(String),
}

impl From<StoreError> for IpcError {
    fn from(e: StoreError) -> IpcError {
        match e {
            StoreError::Conflict(m) | StoreError::NotFound(m) => IpcError::Invalid(m),
            other => IpcError::Retry(other.to_string()),
        }
    }
}

/// The operation's name, for logs.
pub fn operation(request: &IpcRequest) -> &'static str {
    match request {
        IpcRequest::Message { .. } => "message",
        IpcRequest::File { .. } => "file",
        IpcRequest::ScheduleTask { .. } => "schedule_task",
        IpcRequest::PauseTask { .. } => "pause_task",
        IpcRequest::ResumeTask { .. } => "resume_task",
        IpcRequest::CancelTask { .. } => "cancel_task",
        IpcRequest::UpdateTask { .. } => "update_task",
        IpcRequest::RegisterGroup { .. } => "register_group",
        IpcRequest::RefreshGroups => "refresh_groups",
    }
}

fn check(source: &Source, target: Target<'_>, what: &str) -> Result<(), IpcError> {
    authorize(source, target).map_err(|reason| IpcError::Denied {
        reason: reason.to_string(),
        target: what.to_string(),
    })
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, IpcError> {
    let v = value.trim();
    if v.is_empty() {
        Err(IpcError::Invalid(format!("`{field}` must not be empty")))
    } else {
        Ok(v)
    }
}

/// The folder of the group registered for `jid`, if any.
fn folder_of(ctx: &IpcContext, jid: &str) -> Result<Option<String>, IpcError> {
    Ok(ctx.store.registered_group(jid)?.map(|g| g.folder))
}

/// A task that exists and that `source` may manage.
fn manageable_task(ctx: &IpcContext, source: &Source, id: &str) -> Result<ScheduledTask, IpcError> {
    let Some(task) = ctx.store.task(id.trim())? else {
        return Err(IpcError::Invalid(format!("no task with id `{id}`")));
    };
    check(
        source,
        Target::ManageTask {
            task_folder: &task.group_folder,
        },
        &format!("task {id} of {}", task.group_folder),
    )?;
    Ok(task)
}

fn valid_task_id(id: &str) -> Result<(), IpcError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(IpcError::Invalid(format!(
            "taskId `{id}` must be 1-64 letters, digits, - or _"
        )))
    }
}

/// The channel for a message from `source` to `jid`, once allowed (authorization, the
/// rate limit) and possible.
fn message_target(
    ctx: &IpcContext,
    source: &Source,
    jid: &str,
) -> Result<std::sync::Arc<dyn crate::channels::Channel>, IpcError> {
    let chat_folder = folder_of(ctx, jid)?;
    check(
        source,
        Target::Message {
            chat_folder: chat_folder.as_deref(),
        },
        jid,
    )?;
    if !ctx.guard.allow_message(&source.folder) {
        return Err(IpcError::Denied {
            reason: format!(
                "more than {} chat messages in a minute",
                ctx.guard.limits.messages_per_minute
            ),
            target: jid.to_string(),
        });
    }
    ctx.channels
        .for_jid(jid)
        .ok_or_else(|| IpcError::Invalid(format!("no connected channel handles {jid}")))
}

/// A file from the source group's folder, copied and queued for `jid`. A file that
/// cannot go (not a regular file, too large for the chat, a chat that takes no files)
/// is refused, and the chat is told so, since the agent cannot hear it.
fn send_file(
    ctx: &IpcContext,
    source: &Source,
    jid: &str,
    path: &str,
    caption: Option<&str>,
) -> Result<String, IpcError> {
    let channel = message_target(ctx, source, jid)?;
    let caption = caption.map(crate::router::prompt::strip_internal);
    let caption = caption.as_deref().unwrap_or("").trim();
    if caption.len() > ctx.guard.limits.max_message_bytes {
        return Err(IpcError::Invalid(format!(
            "the caption is {} bytes; a message may have at most {}",
            caption.len(),
            ctx.guard.limits.max_message_bytes
        )));
    }
    let folder = crate::layout::GroupFolder::parse(&source.folder)
        .map_err(|e| IpcError::Invalid(format!("the group's folder: {e}")))?;
    let copied = nanoclaw_protocol::ipc::group_file_components(path).and_then(|parts| {
        let Some(max) = channel.max_file_bytes() else {
            return Err(format!(
                "{} chats cannot receive files from the assistant yet",
                channel.name()
            ));
        };
        let max = max.min(nanoclaw_protocol::ipc::MAX_SEND_FILE_BYTES);
        super::files::copy_from_group(
            &ctx.layout,
            &folder,
            &parts,
            max,
            ctx.guard.limits.min_free_disk_bytes,
        )
    });
    let file = match copied {
        Ok(file) => file,
        Err(why) => {
            let notice = format!(
                "(A file could not be sent: {}.)",
                nanoclaw_protocol::ipc::shorten(&why, 400)
            );
            ctx.store
                .commit_reply(jid, &notice, &ctx.assistant_name, None)?;
            if let Some(delivery) = &ctx.delivery {
                delivery.notify();
            }
            return Err(IpcError::Invalid(why));
        }
    };
    if let Err(e) = ctx
        .store
        .commit_file(jid, caption, &file, &ctx.assistant_name)
    {
        let _ = std::fs::remove_file(&file.path);
        return Err(e.into());
    }
    if let Some(delivery) = &ctx.delivery {
        delivery.notify();
    }
    Ok(format!(
        "file {} ({} bytes) queued for {jid}",
        file.name, file.size
    ))
}

/// Carries out `request` from `source`; returns what was done, for the log.
pub fn process(ctx: &IpcContext, source: &Source, request: IpcRequest) -> Result<String, IpcError> {
    match request {
        IpcRequest::Message { chat_jid, text, .. } => {
            let jid = required(&chat_jid, "chatJid")?;
            message_target(ctx, source, jid)?;
            if text.len() > ctx.guard.limits.max_message_bytes {
                return Err(IpcError::Invalid(format!(
                    "the text is {} bytes; a message may have at most {}",
                    text.len(),
                    ctx.guard.limits.max_message_bytes
                )));
            }
            let text = crate::router::prompt::strip_internal(&text);
            if text.is_empty() {
                return Ok(format!(
                    "nothing to send to {jid} (empty or all <internal>)"
                ));
            }
            if source.is_main {
                ctx.store
                    .commit_explicit_message(jid, &text, &ctx.assistant_name)?;
            } else {
                ctx.store
                    .commit_reply(jid, &text, &ctx.assistant_name, None)?;
            }
            if let Some(delivery) = &ctx.delivery {
                delivery.notify();
            }
            Ok(format!("message queued for {jid}"))
        }
        IpcRequest::File {
            chat_jid,
            path,
            caption,
        } => send_file(
            ctx,
            source,
            required(&chat_jid, "chatJid")?,
            &path,
            caption.as_deref(),
        ),
        IpcRequest::ScheduleTask {
            task_id,
            prompt,
            schedule_type,
            schedule_value,
            context_mode,
            target_jid,
        } => {
            let jid = required(&target_jid, "targetJid")?;
            let target = ctx.store.registered_group(jid)?;
            check(
                source,
                Target::ScheduleTask {
                    target_folder: target.as_ref().map(|g| g.folder.as_str()),
                },
                jid,
            )?;
            let Some(target) = target else {
                return Err(IpcError::Invalid(format!("{jid} is not registered")));
            };
            target.folder().map_err(|e| {
                IpcError::Invalid(format!("the group's folder cannot run tasks: {e}"))
            })?;
            let prompt = required(&prompt, "prompt")?;
            let schedule = Schedule::parse(&schedule_type, &schedule_value, &ctx.tz)
                .map_err(IpcError::Invalid)?;
            check_often(ctx, &schedule)?;
            let kept = ctx
                .store
                .tasks_for_folder(&target.folder)?
                .iter()
                .filter(|t| matches!(t.status.as_str(), "active" | "paused"))
                .count();
            if kept >= ctx.guard.limits.max_tasks_per_group {
                return Err(IpcError::Invalid(format!(
                    "{} already has {kept} tasks, the most a group may have; cancel some first",
                    target.folder
                )));
            }
            if !ctx.guard.allow_task(&target.folder) {
                return Err(IpcError::Invalid(format!(
                    "{} has had {} tasks created in the last hour, the most allowed",
                    target.folder, ctx.guard.limits.tasks_per_hour
                )));
            }
            let id = match task_id {
                Some(id) => {
                    valid_task_id(id.trim())?;
                    id.trim().to_string()
                }
                None => format!(
                    "task-{}-{}",
                    crate::clock::millis_now(),
                    crate::ids::random_hex(3)
                ),
            };
            let context_mode = match context_mode.as_deref() {
                Some("group") => "group",
                _ => "isolated",
            };
            let next_run = schedule
                .first_run(Timestamp::now(), &ctx.tz)
                .map(crate::clock::format_utc);
            ctx.store.insert_task(&ScheduledTask {
                id: id.clone(),
                group_folder: target.folder.clone(),
                chat_jid: target.jid.clone(),
                prompt: prompt.to_string(),
                schedule_type: schedule_type.trim().to_string(),
                schedule_value: schedule_value.trim().to_string(),
                context_mode: context_mode.to_string(),
                next_run: next_run.clone(),
                last_run: None,
                last_result: None,
                status: "active".into(),
                created_at: crate::clock::now(),
            })?;
            ctx.tasks_changed.notify_one();
            Ok(format!(
                "task {id} scheduled for {} ({context_mode}), next run {}",
                target.folder,
                next_run.as_deref().unwrap_or("never")
            ))
        }
        IpcRequest::PauseTask { task_id } => set_status(ctx, source, &task_id, TaskStatus::Paused),
        IpcRequest::ResumeTask { task_id } => set_status(ctx, source, &task_id, TaskStatus::Active),
        IpcRequest::CancelTask { task_id } => {
            set_status(ctx, source, &task_id, TaskStatus::Cancelled)
        }
        IpcRequest::UpdateTask {
            task_id,
            prompt,
            schedule_type,
            schedule_value,
        } => {
            let task = manageable_task(ctx, source, &task_id)?;
            if prompt.is_none() && schedule_type.is_none() && schedule_value.is_none() {
                return Err(IpcError::Invalid(
                    "update_task needs a prompt, schedule_type or schedule_value".into(),
                ));
            }
            let prompt = match &prompt {
                Some(p) => required(p, "prompt")?.to_string(),
                None => task.prompt.clone(),
            };
            let kind = schedule_type
                .as_deref()
                .map(str::trim)
                .unwrap_or(&task.schedule_type)
                .to_string();
            let value = schedule_value
                .as_deref()
                .map(str::trim)
                .unwrap_or(&task.schedule_value)
                .to_string();
            let next_run = if schedule_type.is_some() || schedule_value.is_some() {
                let schedule =
                    Schedule::parse(&kind, &value, &ctx.tz).map_err(IpcError::Invalid)?;
                check_often(ctx, &schedule)?;
                schedule
                    .first_run(Timestamp::now(), &ctx.tz)
                    .map(crate::clock::format_utc)
            } else {
                task.next_run.clone()
            };
            ctx.store.update_task_definition(
                &task.id,
                &prompt,
                &kind,
                &value,
                next_run.as_deref(),
            )?;
            ctx.tasks_changed.notify_one();
            Ok(format!("task {} updated", task.id))
        }
        IpcRequest::RegisterGroup {
            jid,
            name,
            folder,
            trigger,
            requires_trigger,
            container_config,
        } => {
            check(source, Target::Admin, &format!("register {jid}"))?;
            let group = crate::store::GroupRequest {
                jid: &jid,
                name: &name,
                folder: &folder,
                trigger: Some(required(&trigger, "trigger")?),
                requires_trigger: requires_trigger.unwrap_or(true),
                container_config: match container_config {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => Some(v.to_string()),
                },
                // Never: there is one main group, chosen by the user.
                is_main: false,
            }
            .check(&format!("@{}", ctx.assistant_name))
            .map_err(IpcError::Invalid)?;
            // An HTTP MCP server is reached by the host with secrets from .env: only the
            // user (the CLI or the HTTP API) may add one, never an agent, which could
            // otherwise point the host's requests and secrets wherever it likes.
            let http_mcp = crate::mounts::ContainerConfig::parse(group.container_config.as_deref())
                .map(|c| {
                    c.mcp_servers
                        .values()
                        .any(|s| matches!(s, crate::mounts::mcp::McpServer::Http(_)))
                })
                .unwrap_or(false);
            if http_mcp {
                return Err(IpcError::Invalid(
                    "containerConfig.mcpServers: HTTP MCP servers are added by the user (nanoclaw's HTTP API or web app), not by an agent; register the group without them".into(),
                ));
            }
            let folder = group
                .folder()
                .map_err(|e| IpcError::Invalid(e.to_string()))?;
            ctx.store.register_group(&group)?;
            if let Err(e) = ctx.layout.create_group_dirs(&folder) {
                // Not fatal: a run creates them too.
                tracing::warn!(
                    folder = folder.as_str(),
                    "IPC: cannot create the new group's folders yet: {e}"
                );
            }
            Ok(format!("registered {jid} as `{}`", folder.as_str()))
        }
        IpcRequest::RefreshGroups => {
            check(source, Target::Admin, "groups")?;
            // Invalid, not Retry: the agent controls that folder and could make the
            // write fail forever.
            snapshot::write_groups(ctx, &source.folder, true)
                .map_err(|e| IpcError::Invalid(format!("writing available_groups.json: {e}")))?;
            Ok("available_groups.json refreshed".into())
        }
    }
}

/// Refuses recurring schedules shorter than the configured minimum: every run is a
/// sandbox and model calls, paid by the user.
fn check_often(ctx: &IpcContext, schedule: &Schedule) -> Result<(), IpcError> {
    let min = ctx.guard.limits.min_task_interval;
    let too_often = |gap_ms: u128, what: &str| {
        Err(IpcError::Invalid(format!(
            "{what} of {gap_ms} ms is shorter than the minimum of {} ms (NANOCLAW_MIN_TASK_INTERVAL_MS)",
            min.as_millis()
        )))
    };
    match schedule {
        Schedule::Interval(ms) if u128::from(*ms) < min.as_millis() => {
            too_often(u128::from(*ms), "an interval")
        }
        Schedule::Cron(_) => {
            // The shortest gap among the next few runs (cron repeats at least daily, so
            // a day's worth of runs shows it; 25 covers every-minute expressions).
            let now = Timestamp::now();
            let mut shortest: Option<u128> = None;
            let mut prev = schedule.first_run(now, &ctx.tz);
            for _ in 0..25 {
                let Some(at) = prev else { break };
                let Some(next) = schedule.next_after(at, at, &ctx.tz) else {
                    break;
                };
                let gap = next.as_millisecond().saturating_sub(at.as_millisecond());
                let gap = u128::try_from(gap).unwrap_or(0);
                shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
                prev = Some(next);
            }
            match shortest {
                Some(gap) if gap < min.as_millis() => too_often(gap, "a cron schedule with runs"),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

fn set_status(
    ctx: &IpcContext,
    source: &Source,
    task_id: &str,
    to: TaskStatus,
) -> Result<String, IpcError> {
    let task = manageable_task(ctx, source, task_id)?;
    ctx.store.set_task_status(&task.id, to)?;
    ctx.tasks_changed.notify_one();
    Ok(format!("task {} set to {}", task.id, to.as_str()))
}
