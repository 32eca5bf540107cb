//! What the agent may read about the host (SPEC §10), written into its IPC folder before
//! each run and after each task change: `current_tasks.json` (main: every task; others:
//! their own) and `available_groups.json` (main: known group chats and whether each is
//! registered; others: an empty list). NanoClaw's formats.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use serde_json::json;

use super::IpcContext;
use crate::store::ScheduledTask;

/// Writes both snapshots for `folder`.
pub fn write_all(ctx: &IpcContext, folder: &str, is_main: bool) -> std::io::Result<()> {
    write_tasks(ctx, folder, is_main)?;
    write_groups(ctx, folder, is_main)
}

pub fn write_tasks(ctx: &IpcContext, folder: &str, is_main: bool) -> std::io::Result<()> {
    let tasks = if is_main {
        ctx.store.tasks()
    } else {
        ctx.store.tasks_for_folder(folder)
    }
    .map_err(std::io::Error::other)?;
    let view: Vec<_> = tasks.iter().map(task_view).collect();
    write_beneath(ctx, folder, "current_tasks.json", &json!(view))
}

pub fn write_groups(ctx: &IpcContext, folder: &str, is_main: bool) -> std::io::Result<()> {
    let groups = if is_main {
        let registered: std::collections::HashSet<String> = ctx
            .store
            .registered_groups()
            .map_err(std::io::Error::other)?
            .into_iter()
            .map(|g| g.jid)
            .collect();
        ctx.store
            .chats()
            .map_err(std::io::Error::other)?
            .into_iter()
            .filter(|c| c.is_group)
            .map(|c| {
                json!({
                    "jid": c.jid,
                    "name": c.name.clone().unwrap_or_else(|| c.jid.clone()),
                    "lastActivity": c.last_message_time,
                    "isRegistered": registered.contains(&c.jid),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    write_beneath(
        ctx,
        folder,
        "available_groups.json",
        &json!({"groups": groups, "lastSync": crate::clock::now()}),
    )
}

fn task_view(t: &ScheduledTask) -> serde_json::Value {
    json!({
        "id": t.id,
        "groupFolder": t.group_folder,
        "prompt": t.prompt,
        "schedule_type": t.schedule_type,
        "schedule_value": t.schedule_value,
        "context_mode": t.context_mode,
        "status": t.status,
        "next_run": t.next_run,
        "last_run": t.last_run,
    })
}

/// Writes `data/ipc/{folder}/{name}` without following any symlink the agent may have
/// put there: a fresh temp file, then renamed over the old one.
fn write_beneath(
    ctx: &IpcContext,
    folder: &str,
    name: &str,
    value: &serde_json::Value,
) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags, openat, renameat};
    let dir: OwnedFd =
        crate::layout::open_dir_beneath(&ctx.layout.data_dir().join("ipc"), &[folder])?;
    let tmp = format!(".{name}.{}.tmp", crate::ids::random_hex(4));
    let fd = openat(
        &dir,
        tmp.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    // The daemon's umask is 077; the sandbox user must be able to read this.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))?;
    let mut file = std::fs::File::from(fd);
    let written = file
        .write_all(value.to_string().as_bytes())
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) =
        written.and_then(|()| Ok(renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name)?))
    {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty());
        return Err(e);
    }
    Ok(())
}
