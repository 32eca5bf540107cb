//! `nanoclaw-agent mcp-server`: the NanoClaw tools over MCP stdio (SPEC §9.1), for a
//! harness such as Claude Code. The same definitions, limits and IPC files as our own
//! loop ([`crate::tools::ipc`]); the host authorizes every file exactly as it does for
//! our loop.
//!
//! stdin is the MCP channel, so the run's context comes from the sandbox environment the
//! host sets: `NANOCLAW_GROUP_FOLDER`, `NANOCLAW_CHAT_JID`, `NANOCLAW_IS_MAIN`. Nothing a
//! caller sends can change them: a non-main run's server neither lists nor runs the main
//! tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};

use super::{
    INVALID_PARAMS, INVALID_REQUEST, MAX_MESSAGE, METHOD_NOT_FOUND, PARSE_ERROR, PROTOCOL_VERSIONS,
    error_response, read_line, result_response,
};
use crate::tools::{self, ToolContext};

/// The run's context, from the environment.
pub fn context_from_env(get: impl Fn(&str) -> Option<String>) -> Result<ToolContext, String> {
    let need = |name: &str| {
        get(name).ok_or_else(|| {
            format!(
                "{name} is not set: `nanoclaw-agent mcp-server` runs inside a NanoClaw sandbox, \
                 whose environment names the group (NANOCLAW_GROUP_FOLDER, NANOCLAW_CHAT_JID, NANOCLAW_IS_MAIN)"
            )
        })
    };
    let folder = need("NANOCLAW_GROUP_FOLDER")?;
    let chat_jid = need("NANOCLAW_CHAT_JID")?;
    let is_main = match need("NANOCLAW_IS_MAIN")?.trim() {
        "1" => true,
        "0" => false,
        other => return Err(format!("NANOCLAW_IS_MAIN is {other:?}; it must be 1 or 0")),
    };
    let workspace = PathBuf::from(get("NANOCLAW_WORKSPACE").unwrap_or_else(|| "/workspace".into()));
    Ok(ToolContext {
        workdir: workspace.join("group"),
        ipc_dir: workspace.join("ipc"),
        chat_jid,
        group_folder: folder,
        is_main,
        bash_default_timeout: Duration::from_secs(120),
        home: PathBuf::from(get("HOME").unwrap_or_else(|| "/home/node".into())),
    })
}

/// The tools, in MCP's shape.
pub fn tool_list(is_main: bool) -> Vec<Value> {
    tools::ipc::definitions(is_main)
        .into_iter()
        .map(|t| json!({"name": t["name"], "description": t["description"], "inputSchema": t["input_schema"]}))
        .collect()
}

/// Answers one message; `None` for notifications and responses, which get no answer.
pub async fn handle(message: &Value, ctx: &ToolContext) -> Option<Value> {
    let Some(object) = message.as_object() else {
        return Some(error_response(
            Value::Null,
            INVALID_REQUEST,
            "a JSON-RPC message is an object",
        ));
    };
    let id = object.get("id").cloned();
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        // A response to something we never asked, or garbage with an id.
        return match (
            id,
            object.contains_key("result") || object.contains_key("error"),
        ) {
            (Some(id), false) => Some(error_response(id, INVALID_REQUEST, "`method` is missing")),
            _ => None,
        };
    };
    // Notifications (no id) need no answer: initialized, cancelled, progress.
    let id = id?;
    let params = object.get("params").cloned().unwrap_or(Value::Null);
    Some(match method {
        "initialize" => {
            let asked = params["protocolVersion"].as_str().unwrap_or_default();
            let version = PROTOCOL_VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&PROTOCOL_VERSIONS[0]);
            result_response(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "nanoclaw", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": "NanoClaw's tools: message the chat, and schedule and manage tasks for this group."
                }),
            )
        }
        "ping" => result_response(id, json!({})),
        "tools/list" => result_response(id, json!({"tools": tool_list(ctx.is_main)})),
        "tools/call" => {
            let Some(name) = params["name"].as_str() else {
                return Some(error_response(
                    id,
                    INVALID_PARAMS,
                    "tools/call needs `name`",
                ));
            };
            let offered = tools::ipc::definitions(ctx.is_main)
                .iter()
                .any(|t| t["name"] == name);
            if !offered {
                return Some(error_response(
                    id,
                    INVALID_PARAMS,
                    format!("unknown tool {name:?}"),
                ));
            }
            let arguments = match &params["arguments"] {
                Value::Null => json!({}),
                a @ Value::Object(_) => a.clone(),
                _ => {
                    return Some(error_response(
                        id,
                        INVALID_PARAMS,
                        "`arguments` must be an object",
                    ));
                }
            };
            let output = tools::run(name, &arguments, ctx).await;
            result_response(
                id,
                json!({"content": [{"type": "text", "text": output.content}], "isError": output.is_error}),
            )
        }
        other => error_response(id, METHOD_NOT_FOUND, format!("no method {other:?}")),
    })
}

/// Serves stdin/stdout until stdin ends.
pub async fn serve() -> ExitCode {
    let ctx =
        match context_from_env(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty())) {
            Ok(ctx) => ctx,
            Err(e) => {
                eprintln!("nanoclaw-agent mcp-server: {e}");
                return ExitCode::FAILURE;
            }
        };
    let mut input = BufReader::new(tokio::io::stdin());
    let mut output = tokio::io::stdout();
    loop {
        let line = match read_line(&mut input, MAX_MESSAGE).await {
            Ok(Some(line)) => line,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nanoclaw-agent mcp-server: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let answer = match serde_json::from_slice::<Value>(&line) {
            Err(e) => Some(error_response(
                Value::Null,
                PARSE_ERROR,
                format!("not JSON: {e}"),
            )),
            Ok(Value::Array(batch)) => {
                let mut answers = Vec::new();
                for message in &batch {
                    answers.extend(handle(message, &ctx).await);
                }
                (!answers.is_empty()).then_some(Value::Array(answers))
            }
            Ok(message) => handle(&message, &ctx).await,
        };
        if let Some(answer) = answer {
            let mut bytes = answer.to_string().into_bytes();
            bytes.push(b'\n');
            if output.write_all(&bytes).await.is_err() || output.flush().await.is_err() {
                // The client is gone.
                return ExitCode::SUCCESS;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::test_ctx;

    #[test]
    fn the_context_comes_from_the_environment_only() {
        let env = |main: &'static str| {
            move |name: &str| match name {
                "NANOCLAW_GROUP_FOLDER" => Some("team".to_string()),
                "NANOCLAW_CHAT_JID" => Some("tg:5".to_string()),
                "NANOCLAW_IS_MAIN" => Some(main.to_string()),
                _ => None,
            }
        };
        let ctx = context_from_env(env("0")).expect("context");
        assert!(!ctx.is_main);
        assert_eq!(ctx.ipc_dir, PathBuf::from("/workspace/ipc"));
        assert!(context_from_env(env("1")).is_ok_and(|c| c.is_main));
        let bad = context_from_env(env("yes")).err().unwrap_or_default();
        assert!(bad.contains("must be 1 or 0"), "{bad}");
        let missing = context_from_env(|_| None).err().unwrap_or_default();
        assert!(
            missing.contains("NANOCLAW_GROUP_FOLDER is not set"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn a_non_main_caller_can_neither_list_nor_call_the_main_tools() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = test_ctx::ctx(dir.path());
        let list = handle(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            &ctx,
        )
        .await
        .unwrap_or_default();
        let names: Vec<&str> = list["result"]["tools"]
            .as_array()
            .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            names.contains(&"send_message") && !names.contains(&"register_group"),
            "{names:?}"
        );
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "register_group", "arguments": {"jid": "x", "name": "x", "folder": "x", "trigger": "@x"}}});
        let answer = handle(&call, &ctx).await.unwrap_or_default();
        assert_eq!(answer["error"]["code"], INVALID_PARAMS, "{answer}");
        assert!(
            std::fs::read_dir(dir.path().join("ipc/tasks"))
                .map(|d| d.count())
                .unwrap_or(1)
                == 0
        );
    }

    #[tokio::test]
    async fn send_message_writes_one_ipc_file_and_notifications_get_no_answer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = test_ctx::ctx(dir.path());
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert!(handle(&note, &ctx).await.is_none());
        let call = json!({"jsonrpc": "2.0", "id": "a", "method": "tools/call",
            "params": {"name": "send_message", "arguments": {"text": "hello"}}});
        let answer = handle(&call, &ctx).await.unwrap_or_default();
        assert_eq!(answer["result"]["isError"], false, "{answer}");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("ipc/messages"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(files.len(), 1);
        let body: Value = std::fs::read(&files[0])
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        assert_eq!(body["text"], "hello");
        assert_eq!(body["chatJid"], "tg:1");
        let unknown = json!({"jsonrpc": "2.0", "id": 3, "method": "resources/list"});
        assert_eq!(
            handle(&unknown, &ctx).await.unwrap_or_default()["error"]["code"],
            METHOD_NOT_FOUND
        );
        let init = json!({"jsonrpc": "2.0", "id": 4, "method": "initialize",
            "params": {"protocolVersion": "2099-01-01", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        assert_eq!(
            handle(&init, &ctx).await.unwrap_or_default()["result"]["protocolVersion"],
            PROTOCOL_VERSIONS[0]
        );
    }
}
