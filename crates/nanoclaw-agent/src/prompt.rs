//! The system prompt: who the assistant is, how its world works, and its memory
//! (`/workspace/global/CLAUDE.md`, `/workspace/group/CLAUDE.md`).

use std::path::Path;

const MAX_MEMORY_CHARS: usize = 40_000;

fn memory(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(if text.chars().count() > MAX_MEMORY_CHARS {
        format!(
            "{}\n… [memory file cut]",
            text.chars().take(MAX_MEMORY_CHARS).collect::<String>()
        )
    } else {
        text.to_string()
    })
}

/// Which loop the prompt is for: our own, or Claude Code (SPEC §9.2), which has its own
/// tools and gets NanoClaw's as `mcp__nanoclaw__*`. Both get both memories here (Claude
/// Code loads no settings or memory of its own: `claude_code.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Harness {
    Own,
    ClaudeCode,
}

pub struct PromptInput<'a> {
    pub harness: Harness,
    pub assistant_name: &'a str,
    pub workspace: &'a Path,
    pub is_main: bool,
    pub is_scheduled_task: bool,
    pub timezone: &'a str,
}

pub fn system_prompt(p: &PromptInput<'_>) -> String {
    let (tools, nanoclaw) = match p.harness {
        Harness::Own => (
            "You can use the tools Bash, Read, Write, Edit, Glob, Grep and WebFetch there.",
            "",
        ),
        Harness::ClaudeCode => (
            "Your own tools work there. NanoClaw's tools (messaging this chat, scheduled tasks) are the \
mcp__nanoclaw__ ones; use mcp__nanoclaw__schedule_task for anything that must happen later, since nothing \
of this run is left once it ends.",
            "mcp__nanoclaw__",
        ),
    };
    let mut out = format!(
        "You are {name}, a personal assistant. People talk to you in a chat; the text of your final \
answer is sent to that chat, so write it as a chat message.\n\n\
Your computer: a sandbox. Your working folder /workspace/group is this chat's folder and keeps its files \
between conversations. /workspace/global is shared by all chats{global_rw}. {tools}\n\n\
Memory: /workspace/group/CLAUDE.md is this chat's memory and /workspace/global/CLAUDE.md is the shared memory; \
both are shown to you. When asked to remember something, edit the right file.\n\n\
Text inside <internal>…</internal> is never sent; use it for notes to yourself. For long tasks, send a short \
progress update with {nanoclaw}send_message first. Messages reach you as <messages> with sender and local time; the \
user's time zone is {tz}.",
        name = p.assistant_name,
        global_rw = if p.is_main {
            " (you may edit it)"
        } else {
            " (read-only for you)"
        },
        tz = p.timezone,
    );
    if p.is_main {
        out.push_str(&format!(
            "\n\nThis is the main (admin) chat: you can register other chats ({nanoclaw}register_group), see every \
scheduled task, and read the whole nanoclaw folder at /workspace/project (read-only)."
        ));
    }
    if p.is_scheduled_task {
        out.push_str("\n\nThis run is a scheduled task. Your final answer is sent to the chat; answer only inside <internal> if there is nothing worth sending.");
    }
    if let Some(global) = memory(&p.workspace.join("global/CLAUDE.md")) {
        out.push_str(&format!(
            "\n\n# Shared memory (/workspace/global/CLAUDE.md)\n\n{global}"
        ));
    }
    if let Some(group) = memory(&p.workspace.join("group/CLAUDE.md")) {
        out.push_str(&format!(
            "\n\n# This chat's memory (/workspace/group/CLAUDE.md)\n\n{group}"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_name_and_both_memories() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("global")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("group")).expect("mkdir");
        std::fs::write(dir.path().join("global/CLAUDE.md"), "Owner likes tea.").expect("write");
        std::fs::write(
            dir.path().join("group/CLAUDE.md"),
            "This group plans trips.",
        )
        .expect("write");
        let input = |harness| PromptInput {
            harness,
            assistant_name: "Bob",
            workspace: dir.path(),
            is_main: false,
            is_scheduled_task: true,
            timezone: "Europe/Berlin",
        };
        let p = system_prompt(&input(Harness::Own));
        assert!(p.starts_with("You are Bob"));
        assert!(p.contains("Owner likes tea.") && p.contains("This group plans trips."));
        assert!(p.contains("scheduled task") && p.contains("Europe/Berlin"));
        assert!(!p.contains("main (admin)"));
        assert!(p.contains("with send_message first") && !p.contains("mcp__"));
        let p = system_prompt(&input(Harness::ClaudeCode));
        assert!(p.contains("Owner likes tea.") && p.contains("This group plans trips."));
        assert!(p.contains("mcp__nanoclaw__send_message") && !p.contains("Glob, Grep"));
    }
}
