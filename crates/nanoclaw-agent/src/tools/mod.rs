//! The tools the model can call (SPEC §9), named and shaped as Claude Code names them,
//! plus the NanoClaw tools that write IPC files (SPEC §10).
//!
//! A tool never crashes the loop: every failure becomes a tool result with
//! `is_error: true` and a message the model can act on. The sandbox, not these tools, is
//! the security boundary; paths may point anywhere the sandbox can see.

mod bash;
mod browser;
mod files;
pub mod ipc;
mod memory;
pub mod schedule;
mod search;
mod send_file;
mod web;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// Longest text a tool returns to the model.
pub const MAX_OUTPUT_CHARS: usize = 30_000;

/// What tools need to know about the run.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The working directory (`/workspace/group`).
    pub workdir: PathBuf,
    /// The IPC namespace (`/workspace/ipc`).
    pub ipc_dir: PathBuf,
    pub chat_jid: String,
    pub group_folder: String,
    pub is_main: bool,
    /// Longest a `Bash` command may run when it asks for no timeout.
    pub bash_default_timeout: Duration,
    /// `HOME` (`/home/node`): the group's `~/.claude`, with its transcripts and memory
    /// index.
    pub home: PathBuf,
}

impl ToolContext {
    /// A path given by the model, relative ones taken from the working directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.workdir.join(p)
        }
    }
}

/// A tool's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: false,
        }
    }

    pub fn error(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: true,
        }
    }
}

/// Shortens text to `max` characters, keeping the start and the end.
pub fn truncate_middle(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let keep = max / 2;
    let head: String = text.chars().take(keep).collect();
    let tail: String = text.chars().skip(count - keep).collect();
    format!(
        "{head}\n… [{} characters omitted] …\n{tail}",
        count - 2 * keep
    )
}

fn string<'a>(input: &'a Value, key: &str) -> Result<&'a str, ToolOutput> {
    input[key]
        .as_str()
        .ok_or_else(|| ToolOutput::error(format!("`{key}` is required and must be a string")))
}

fn optional_u64(input: &Value, key: &str) -> Result<Option<u64>, ToolOutput> {
    match &input[key] {
        Value::Null => Ok(None),
        v => v.as_u64().map(Some).ok_or_else(|| {
            ToolOutput::error(format!("`{key}` must be a non-negative whole number"))
        }),
    }
}

/// Runs the tool `name` with `input`.
pub async fn run(name: &str, input: &Value, ctx: &ToolContext) -> ToolOutput {
    let result = match name {
        "Bash" => bash::run(input, ctx).await,
        "Read" => files::read(input, ctx).await,
        "Write" => files::write(input, ctx).await,
        "Edit" => files::edit(input, ctx).await,
        "Glob" => search::glob(input, ctx).await,
        "Grep" => search::grep(input, ctx).await,
        "WebFetch" => web::fetch(input).await,
        "memory_search" => memory::search(input, ctx).await,
        "Browser" => browser::run(input, ctx).await,
        other => ipc::run(other, input, ctx).await,
    };
    match result {
        Ok(output) | Err(output) => output,
    }
}

/// Closes the run's browser, if one was started (at the end of the run).
pub async fn close_browser() {
    browser::close().await;
}

/// The tool definitions offered to the model. Main gets the admin tools too.
pub fn definitions(is_main: bool, web_search: bool) -> Vec<Value> {
    let mut tools = vec![
        json!({"name": "Bash", "description": "Run a bash command in /workspace/group (the group's folder). Returns stdout and stderr. Default timeout 120 s, at most 600 s.",
               "input_schema": {"type": "object", "properties": {
                   "command": {"type": "string", "description": "The command to run"},
                   "timeout": {"type": "integer", "description": "Timeout in milliseconds (max 600000)"}},
                   "required": ["command"]}}),
        json!({"name": "Read", "description": "Read a text file, with line numbers. Use offset/limit (lines) for large files.",
               "input_schema": {"type": "object", "properties": {
                   "file_path": {"type": "string"}, "offset": {"type": "integer", "description": "First line (1-based)"},
                   "limit": {"type": "integer", "description": "Number of lines"}}, "required": ["file_path"]}}),
        json!({"name": "Write", "description": "Write a file (creating folders as needed), replacing its content.",
               "input_schema": {"type": "object", "properties": {
                   "file_path": {"type": "string"}, "content": {"type": "string"}}, "required": ["file_path", "content"]}}),
        json!({"name": "Edit", "description": "Replace old_string with new_string in a file. old_string must occur exactly once unless replace_all is true.",
               "input_schema": {"type": "object", "properties": {
                   "file_path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"},
                   "replace_all": {"type": "boolean"}}, "required": ["file_path", "old_string", "new_string"]}}),
        json!({"name": "Glob", "description": "Find files by glob pattern (e.g. **/*.md), newest first.",
               "input_schema": {"type": "object", "properties": {
                   "pattern": {"type": "string"}, "path": {"type": "string", "description": "Folder to search (default: /workspace/group)"}},
                   "required": ["pattern"]}}),
        json!({"name": "Grep", "description": "Search file contents with a regular expression. Returns path:line:text.",
               "input_schema": {"type": "object", "properties": {
                   "pattern": {"type": "string"}, "path": {"type": "string"},
                   "glob": {"type": "string", "description": "Only files matching this glob"}}, "required": ["pattern"]}}),
        json!({"name": "WebFetch", "description": "Fetch a web page (http or https) and return it as text.",
               "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}}),
    ];
    // Only where there is a Chromium to drive.
    if crate::browser::binary().is_some() {
        tools.push(browser::definition());
    }
    tools.push(memory::definition());
    tools.extend(ipc::definitions(is_main));
    if web_search {
        tools.push(json!({"type": "web_search_20250305", "name": "web_search", "max_uses": 5}));
    }
    tools
}

#[cfg(test)]
pub(crate) mod test_ctx {
    use super::*;

    pub fn ctx(dir: &Path) -> ToolContext {
        std::fs::create_dir_all(dir.join("ipc/messages")).expect("ipc");
        std::fs::create_dir_all(dir.join("ipc/tasks")).expect("ipc");
        ToolContext {
            workdir: dir.to_path_buf(),
            ipc_dir: dir.join("ipc"),
            chat_jid: "tg:1".into(),
            group_folder: "team".into(),
            is_main: false,
            bash_default_timeout: Duration::from_secs(120),
            home: dir.join("home"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_both_ends() {
        let t = truncate_middle(&"a".repeat(50).to_string().replace("aa", "ab"), 10);
        assert!(t.contains("omitted"));
        assert_eq!(truncate_middle("short", 10), "short");
    }

    #[tokio::test]
    async fn unknown_tools_are_an_error_not_a_crash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = run("Teleport", &json!({}), &test_ctx::ctx(dir.path())).await;
        assert!(out.is_error && out.content.contains("Teleport"));
    }

    #[test]
    fn main_only_tools_are_offered_only_to_main() {
        let names = |main| -> Vec<String> {
            definitions(main, false)
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        };
        assert!(names(true).contains(&"register_group".to_string()));
        assert!(!names(false).contains(&"register_group".to_string()));
        assert!(!names(false).contains(&"refresh_groups".to_string()));
        for tool in [
            "Bash",
            "Read",
            "Write",
            "Edit",
            "Glob",
            "Grep",
            "WebFetch",
            "memory_search",
            "send_message",
            "send_file",
            "schedule_task",
            "list_tasks",
        ] {
            assert!(names(false).contains(&tool.to_string()), "{tool}");
        }
    }
}
