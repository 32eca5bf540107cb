//! IPC files (SPEC §10): JSON the agent writes to `/workspace/ipc/messages/` and
//! `/workspace/ipc/tasks/` (temp name, then renamed to `*.json`), in NanoClaw's formats.
//! The host learns who sent a file only from the folder it is in, never from its content.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IpcRequest {
    Message {
        #[serde(rename = "chatJid")]
        chat_jid: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
    },
    /// A file from the group's own folder, sent to a chat (`send_file`). `path` is
    /// relative to the group folder (`/workspace/group`); the host opens it there itself,
    /// never following a symlink, and copies it before it is delivered.
    File {
        #[serde(rename = "chatJid")]
        chat_jid: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    ScheduleTask {
        #[serde(rename = "taskId", default, skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
        prompt: String,
        schedule_type: String,
        schedule_value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context_mode: Option<String>,
        #[serde(rename = "targetJid")]
        target_jid: String,
    },
    PauseTask {
        #[serde(rename = "taskId")]
        task_id: String,
    },
    ResumeTask {
        #[serde(rename = "taskId")]
        task_id: String,
    },
    CancelTask {
        #[serde(rename = "taskId")]
        task_id: String,
    },
    UpdateTask {
        #[serde(rename = "taskId")]
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schedule_type: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schedule_value: Option<String>,
    },
    RegisterGroup {
        jid: String,
        name: String,
        folder: String,
        trigger: String,
        #[serde(
            rename = "requiresTrigger",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        requires_trigger: Option<bool>,
        #[serde(
            rename = "containerConfig",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        container_config: Option<Value>,
    },
    RefreshGroups,
}

impl IpcRequest {
    /// The folder under `/workspace/ipc/` this request is written to.
    pub fn folder(&self) -> &'static str {
        match self {
            IpcRequest::Message { .. } | IpcRequest::File { .. } => "messages",
            _ => "tasks",
        }
    }
}

/// `text` cut to `max` characters, with `…` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Where the group folder appears inside the sandbox.
pub const GROUP_DIR: &str = "/workspace/group";

/// Largest file `send_file` takes at all (each channel may allow less).
pub const MAX_SEND_FILE_BYTES: u64 = 50 << 20;

/// The components of a `send_file` path, relative to the group folder: a relative path,
/// or an absolute one under [`GROUP_DIR`]. Refuses anything else, `..`, and empty or NUL
/// components, saying why.
pub fn group_file_components(path: &str) -> Result<Vec<&str>, String> {
    let full = path;
    // Errors quote the path, at most this much of it (they reach the chat and logs).
    let path = &shorten(full, 100);
    let path = path.as_str();
    if full.contains('\0') {
        return Err("the path contains a NUL character".into());
    }
    let relative = if full.starts_with('/') {
        match full.strip_prefix(GROUP_DIR) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => {
                return Err(format!(
                    "`{path}` is outside {GROUP_DIR}: only files in the group's own folder can be sent (copy it there first)"
                ));
            }
        }
    } else {
        full
    };
    let parts: Vec<&str> = relative
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!(
            "`{path}` contains `..`: name the file by its path inside {GROUP_DIR}"
        ));
    }
    if parts.is_empty() {
        return Err(format!("`{path}` names no file"));
    }
    if parts.len() > 64 || relative.len() > 4096 {
        return Err(format!("`{path}` is too long"));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever an agent writes, parsing never panics, and what parses writes back to
    /// the same request.
    #[test]
    fn fuzz_ipc_requests_parse_or_refuse_and_round_trip() {
        nanoclaw_fuzz::fuzz(
            "ipc_request",
            nanoclaw_fuzz::Shape::Json,
            IPC_WORDS,
            |input| {
                if let Ok(request) = serde_json::from_slice::<IpcRequest>(input) {
                    let text = serde_json::to_string(&request).expect("serializes");
                    let again: IpcRequest = serde_json::from_str(&text).expect("parses again");
                    assert_eq!(again, request);
                }
            },
        );
    }

    pub(crate) const IPC_WORDS: &[&str] = &[
        "type",
        "message",
        "file",
        "path",
        "caption",
        "schedule_task",
        "register_group",
        "update_task",
        "chatJid",
        "targetJid",
        "taskId",
        "folder",
        "trigger",
        "containerConfig",
        "requiresTrigger",
        "schedule_type",
        "schedule_value",
        "cron",
        "interval",
        "once",
        "context_mode",
        "isolated",
        "group",
        "web:main",
        "tg:1",
        "../main",
        "main",
        "prompt",
        "text",
    ];
    use serde_json::json;

    #[test]
    fn send_file_paths_stay_in_the_group_folder() {
        assert_eq!(
            group_file_components("out/./report.pdf"),
            Ok(vec!["out", "report.pdf"])
        );
        assert_eq!(
            group_file_components("/workspace/group//a.txt"),
            Ok(vec!["a.txt"])
        );
        for (bad, why) in [
            ("/etc/passwd", "outside"),
            ("/workspace/groupies/a", "outside"),
            ("/workspace/project/.env", "outside"),
            ("../main/CLAUDE.md", "`..`"),
            ("a/../../b", "`..`"),
            ("/workspace/group", "names no file"),
            ("", "names no file"),
            ("a\0b", "NUL"),
        ] {
            let e = group_file_components(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        let huge = format!("/x{}", "A".repeat(1 << 20));
        let e = group_file_components(&huge).expect_err("outside");
        assert!(e.len() < 300, "errors quote a cut path: {} bytes", e.len());
        let long = "a/".repeat(3000);
        assert!(group_file_components(&long).expect_err("long").len() < 300);
    }

    #[test]
    fn formats_match_nanoclaw() {
        let cases = [
            (
                IpcRequest::Message {
                    chat_jid: "tg:1".into(),
                    text: "hi".into(),
                    sender: None,
                },
                json!({"type": "message", "chatJid": "tg:1", "text": "hi"}),
            ),
            (
                IpcRequest::File {
                    chat_jid: "tg:1".into(),
                    path: "out/report.pdf".into(),
                    caption: Some("the report".into()),
                },
                json!({"type": "file", "chatJid": "tg:1", "path": "out/report.pdf", "caption": "the report"}),
            ),
            (
                IpcRequest::ScheduleTask {
                    task_id: Some("t1".into()),
                    prompt: "p".into(),
                    schedule_type: "cron".into(),
                    schedule_value: "0 9 * * *".into(),
                    context_mode: Some("group".into()),
                    target_jid: "tg:1".into(),
                },
                json!({"type": "schedule_task", "taskId": "t1", "prompt": "p", "schedule_type": "cron",
                       "schedule_value": "0 9 * * *", "context_mode": "group", "targetJid": "tg:1"}),
            ),
            (
                IpcRequest::PauseTask {
                    task_id: "t1".into(),
                },
                json!({"type": "pause_task", "taskId": "t1"}),
            ),
            (
                IpcRequest::UpdateTask {
                    task_id: "t1".into(),
                    prompt: None,
                    schedule_type: Some("interval".into()),
                    schedule_value: Some("60000".into()),
                },
                json!({"type": "update_task", "taskId": "t1", "schedule_type": "interval", "schedule_value": "60000"}),
            ),
            (
                IpcRequest::RegisterGroup {
                    jid: "tg:2".into(),
                    name: "Fam".into(),
                    folder: "telegram_fam".into(),
                    trigger: "@Andy".into(),
                    requires_trigger: Some(false),
                    container_config: None,
                },
                json!({"type": "register_group", "jid": "tg:2", "name": "Fam", "folder": "telegram_fam",
                       "trigger": "@Andy", "requiresTrigger": false}),
            ),
            (IpcRequest::RefreshGroups, json!({"type": "refresh_groups"})),
        ];
        for (request, wire) in cases {
            assert_eq!(serde_json::to_value(&request).expect("serializes"), wire);
            assert_eq!(
                serde_json::from_value::<IpcRequest>(wire).expect("parses"),
                request
            );
        }
    }
}
