//! The NanoClaw tools (SPEC §9): each writes one IPC file (SPEC §10) for the host, which
//! decides, from the folder alone, what this group may do. `list_tasks` reads the
//! snapshot the host wrote before the run.

use std::path::Path;

use nanoclaw_protocol::ipc::IpcRequest;
use serde_json::{Value, json};

use super::{ToolContext, ToolOutput, string};

pub fn definitions(is_main: bool) -> Vec<Value> {
    let mut tools = vec![
        json!({"name": "send_message", "description": "Send a message to the chat right away (e.g. a progress update before a long task).",
               "input_schema": {"type": "object", "properties": {
                   "text": {"type": "string"}, "sender": {"type": "string", "description": "Optional display name of a sub-agent"}},
                   "required": ["text"]}}),
        super::send_file::definition(),
        json!({"name": "schedule_task", "description": "Schedule a recurring or one-time task that runs as a full agent and can message the chat. \
cron: 5-field expression in local time (\"0 9 * * *\" daily at 9). interval: milliseconds (\"3600000\" hourly). \
once: local time without timezone, like 2026-02-01T15:30:00. context_mode: \"group\" continues this conversation, \"isolated\" starts fresh.",
               "input_schema": {"type": "object", "properties": {
                   "prompt": {"type": "string"},
                   "schedule_type": {"type": "string", "enum": ["cron", "interval", "once"]},
                   "schedule_value": {"type": "string"},
                   "context_mode": {"type": "string", "enum": ["group", "isolated"]},
                   "target_group_jid": {"type": "string", "description": "Main only: schedule for another registered group"}},
                   "required": ["prompt", "schedule_type", "schedule_value"]}}),
        json!({"name": "list_tasks", "description": "List scheduled tasks (main sees all groups' tasks).",
               "input_schema": {"type": "object", "properties": {}}}),
        json!({"name": "pause_task", "description": "Pause a scheduled task.",
               "input_schema": {"type": "object", "properties": {"task_id": {"type": "string"}}, "required": ["task_id"]}}),
        json!({"name": "resume_task", "description": "Resume a paused task.",
               "input_schema": {"type": "object", "properties": {"task_id": {"type": "string"}}, "required": ["task_id"]}}),
        json!({"name": "cancel_task", "description": "Cancel a scheduled task.",
               "input_schema": {"type": "object", "properties": {"task_id": {"type": "string"}}, "required": ["task_id"]}}),
        json!({"name": "update_task", "description": "Change a task's prompt or schedule.",
               "input_schema": {"type": "object", "properties": {
                   "task_id": {"type": "string"}, "prompt": {"type": "string"},
                   "schedule_type": {"type": "string", "enum": ["cron", "interval", "once"]},
                   "schedule_value": {"type": "string"}}, "required": ["task_id"]}}),
    ];
    if is_main {
        tools.push(json!({"name": "register_group", "description": "Register a chat so the assistant works in it. The folder is created under groups/ (letters, digits, _ and -; convention: {channel}_{name}).",
            "input_schema": {"type": "object", "properties": {
                "jid": {"type": "string"}, "name": {"type": "string"}, "folder": {"type": "string"},
                "trigger": {"type": "string", "description": "e.g. @Andy"}}, "required": ["jid", "name", "folder", "trigger"]}}));
        tools.push(json!({"name": "refresh_groups", "description": "Ask the host to refresh the list of known chats (/workspace/ipc/available_groups.json).",
            "input_schema": {"type": "object", "properties": {}}}));
    }
    tools
}

/// Writes `request` atomically: a temp name first, then renamed to `*.json`.
pub fn write_request(ipc_dir: &Path, request: &IpcRequest) -> std::io::Result<String> {
    let dir = ipc_dir.join(request.folder());
    std::fs::create_dir_all(&dir)?;
    let millis = jiff::Timestamp::now().as_millisecond();
    let name = format!("{millis}-{}.json", random_suffix());
    let tmp = dir.join(format!(".{name}.tmp"));
    let body = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, dir.join(&name))?;
    Ok(name)
}

/// 8 random hex characters (names only need to differ, not to be secret).
pub fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = jiff::Timestamp::now().subsec_nanosecond();
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn task_id(input: &Value) -> Result<String, ToolOutput> {
    Ok(string(input, "task_id")?.to_string())
}

fn send(ctx: &ToolContext, request: IpcRequest, done: String) -> Result<ToolOutput, ToolOutput> {
    write_request(&ctx.ipc_dir, &request)
        .map(|_| ToolOutput::ok(done))
        .map_err(|e| ToolOutput::error(format!("cannot hand the request to the host: {e}")))
}

pub async fn run(name: &str, input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    match name {
        "send_message" => {
            let text = string(input, "text")?;
            if text.trim().is_empty() {
                return Err(ToolOutput::error("`text` is empty"));
            }
            let sender = input["sender"].as_str().map(str::to_string);
            send(
                ctx,
                IpcRequest::Message {
                    chat_jid: ctx.chat_jid.clone(),
                    text: text.to_string(),
                    sender,
                },
                "Message sent.".into(),
            )
        }
        "send_file" => {
            let (request, done) = super::send_file::request(input, ctx)?;
            send(ctx, request, done)
        }
        "schedule_task" => {
            let prompt = string(input, "prompt")?;
            let schedule_type = string(input, "schedule_type")?;
            let schedule_value = string(input, "schedule_value")?;
            super::schedule::check(schedule_type, schedule_value).map_err(ToolOutput::error)?;
            let context_mode = match input["context_mode"].as_str() {
                Some("isolated") => "isolated",
                _ => "group",
            };
            // Other groups can only schedule for themselves (the host enforces it too).
            let target = match input["target_group_jid"].as_str() {
                Some(jid) if ctx.is_main && !jid.is_empty() => jid.to_string(),
                _ => ctx.chat_jid.clone(),
            };
            let id = format!(
                "task-{}-{}",
                jiff::Timestamp::now().as_millisecond(),
                random_suffix()
            );
            send(
                ctx,
                IpcRequest::ScheduleTask {
                    task_id: Some(id.clone()),
                    prompt: prompt.to_string(),
                    schedule_type: schedule_type.to_string(),
                    schedule_value: schedule_value.to_string(),
                    context_mode: Some(context_mode.into()),
                    target_jid: target,
                },
                format!("Task {id} scheduled: {schedule_type} {schedule_value}."),
            )
        }
        "list_tasks" => list_tasks(ctx),
        "pause_task" => {
            let id = task_id(input)?;
            send(
                ctx,
                IpcRequest::PauseTask {
                    task_id: id.clone(),
                },
                format!("Pause of task {id} requested."),
            )
        }
        "resume_task" => {
            let id = task_id(input)?;
            send(
                ctx,
                IpcRequest::ResumeTask {
                    task_id: id.clone(),
                },
                format!("Resume of task {id} requested."),
            )
        }
        "cancel_task" => {
            let id = task_id(input)?;
            send(
                ctx,
                IpcRequest::CancelTask {
                    task_id: id.clone(),
                },
                format!("Cancellation of task {id} requested."),
            )
        }
        "update_task" => {
            let id = task_id(input)?;
            let schedule_type = input["schedule_type"].as_str().map(str::to_string);
            let schedule_value = input["schedule_value"].as_str().map(str::to_string);
            match (&schedule_type, &schedule_value) {
                (Some(t), Some(v)) => super::schedule::check(t, v).map_err(ToolOutput::error)?,
                (Some(_), None) | (None, Some(_)) => {
                    return Err(ToolOutput::error(
                        "give schedule_type and schedule_value together",
                    ));
                }
                (None, None) => {}
            }
            send(
                ctx,
                IpcRequest::UpdateTask {
                    task_id: id.clone(),
                    prompt: input["prompt"].as_str().map(str::to_string),
                    schedule_type,
                    schedule_value,
                },
                format!("Update of task {id} requested."),
            )
        }
        "register_group" | "refresh_groups" if !ctx.is_main => Err(ToolOutput::error(format!(
            "{name} is only available in the main group"
        ))),
        "register_group" => {
            let request = IpcRequest::RegisterGroup {
                jid: string(input, "jid")?.to_string(),
                name: string(input, "name")?.to_string(),
                folder: string(input, "folder")?.to_string(),
                trigger: string(input, "trigger")?.to_string(),
                requires_trigger: None,
                container_config: None,
            };
            send(ctx, request, "Registration requested.".into())
        }
        "refresh_groups" => send(
            ctx,
            IpcRequest::RefreshGroups,
            "Refresh requested; read /workspace/ipc/available_groups.json in a moment.".into(),
        ),
        other => Err(ToolOutput::error(format!(
            "there is no tool named `{other}`"
        ))),
    }
}

fn list_tasks(ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let path = ctx.ipc_dir.join("current_tasks.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ToolOutput::ok("No scheduled tasks found."));
        }
        Err(e) => return Err(ToolOutput::error(format!("cannot read the task list: {e}"))),
    };
    let tasks: Vec<Value> = serde_json::from_str(&text)
        .map_err(|e| ToolOutput::error(format!("the task list is unreadable: {e}")))?;
    let visible: Vec<&Value> = tasks
        .iter()
        .filter(|t| ctx.is_main || t["groupFolder"].as_str() == Some(ctx.group_folder.as_str()))
        .collect();
    if visible.is_empty() {
        return Ok(ToolOutput::ok("No scheduled tasks found."));
    }
    let lines: Vec<String> = visible
        .iter()
        .map(|t| {
            format!(
                "- [{}] {} ({} {}) status={} next={}{}",
                t["id"].as_str().unwrap_or("?"),
                t["prompt"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect::<String>(),
                t["schedule_type"].as_str().unwrap_or("?"),
                t["schedule_value"].as_str().unwrap_or("?"),
                t["status"].as_str().unwrap_or("?"),
                t["next_run"].as_str().unwrap_or("-"),
                if ctx.is_main {
                    format!(" group={}", t["groupFolder"].as_str().unwrap_or("?"))
                } else {
                    String::new()
                }
            )
        })
        .collect();
    Ok(ToolOutput::ok(format!(
        "Scheduled tasks:\n{}",
        lines.join("\n")
    )))
}

#[cfg(test)]
mod tests {
    use super::super::test_ctx::ctx;
    use super::*;

    fn files(dir: &Path) -> Vec<IpcRequest> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("read")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                assert_eq!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json"),
                    "no temp files left"
                );
                serde_json::from_slice(&std::fs::read(p).expect("read")).expect("valid request")
            })
            .collect()
    }

    #[tokio::test]
    async fn tools_write_nanoclaw_ipc_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        run("send_message", &json!({"text": "on it"}), &c)
            .await
            .expect("send");
        let sent = files(&c.ipc_dir.join("messages"));
        assert_eq!(
            sent,
            [IpcRequest::Message {
                chat_jid: "tg:1".into(),
                text: "on it".into(),
                sender: None
            }]
        );
        let out = run(
            "schedule_task",
            &json!({"prompt": "water plants", "schedule_type": "interval", "schedule_value": "3600000",
                    "target_group_jid": "tg:other"}),
            &c,
        )
        .await
        .expect("schedule");
        let tasks = files(&c.ipc_dir.join("tasks"));
        let IpcRequest::ScheduleTask {
            task_id,
            target_jid,
            context_mode,
            ..
        } = &tasks[0]
        else {
            panic!("{tasks:?}");
        };
        assert_eq!(
            target_jid, "tg:1",
            "a non-main group schedules for itself only"
        );
        assert_eq!(context_mode.as_deref(), Some("group"));
        assert!(out.content.contains(task_id.as_deref().unwrap_or("none")));
    }

    #[tokio::test]
    async fn invalid_schedules_and_main_only_tools_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        for (t, v) in [
            ("cron", "every day"),
            ("interval", "0"),
            ("once", "2026-02-01T10:00:00Z"),
            ("weekly", "x"),
        ] {
            let e = run(
                "schedule_task",
                &json!({"prompt": "p", "schedule_type": t, "schedule_value": v}),
                &c,
            )
            .await
            .expect_err(t);
            assert!(e.is_error, "{t} {v}");
        }
        let e = run(
            "register_group",
            &json!({"jid": "x", "name": "n", "folder": "f", "trigger": "@A"}),
            &c,
        )
        .await
        .expect_err("not main");
        assert!(e.content.contains("only available in the main group"));
        assert!(
            std::fs::read_dir(c.ipc_dir.join("tasks"))
                .expect("read")
                .next()
                .is_none(),
            "nothing written"
        );
    }

    #[tokio::test]
    async fn list_tasks_shows_only_this_groups_tasks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = ctx(dir.path());
        std::fs::write(
            c.ipc_dir.join("current_tasks.json"),
            r#"[{"id":"t1","groupFolder":"team","prompt":"mine","schedule_type":"cron","schedule_value":"0 9 * * *","status":"active","next_run":"2026-01-01T09:00:00.000Z"},
                {"id":"t2","groupFolder":"other","prompt":"theirs","schedule_type":"once","schedule_value":"2026-01-01T10:00:00","status":"active","next_run":null}]"#,
        )
        .expect("write");
        let out = run("list_tasks", &json!({}), &c).await.expect("list");
        assert!(
            out.content.contains("t1") && !out.content.contains("t2"),
            "{}",
            out.content
        );
        c.is_main = true;
        let out = run("list_tasks", &json!({}), &c).await.expect("list");
        assert!(out.content.contains("t1") && out.content.contains("t2"));
    }
}
