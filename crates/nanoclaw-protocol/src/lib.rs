//! The wire formats shared by the host (`nanoclaw`) and the agent (`nanoclaw-agent`).
//!
//! Everything that crosses the sandbox boundary is defined here, once, so the two sides
//! cannot drift apart:
//!
//! * [`AgentInput`]: the single JSON object the host writes to the agent's stdin;
//! * [`AgentEvent`]: the JSON lines the agent writes to stdout;
//! * [`FollowUp`]: the files the host drops into `/workspace/ipc/input/` while a run is
//!   alive, and [`CLOSE_SENTINEL`], the file that asks the agent to finish;
//! * [`ipc`]: the request files agents write for the host (SPEC §10);
//! * [`schedule`]: task schedule validation both sides apply;
//! * [`sse`]: the Server-Sent Events parser every SSE reader in the project uses.

/// Where a Chromium for the `Browser` tool may be, in order: the binary itself first
/// (Debian's `/usr/bin/chromium` is a script reading `/etc/chromium.d`, which a bwrap
/// sandbox does not show). The agent looks here; `doctor` says which one bwrap agents
/// get from the host.
pub const BROWSER_CANDIDATES: &[&str] = &[
    "/usr/lib/chromium/chromium",
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
];

/// The Claude Code release the `claude-code` harness is built and tested with (SPEC §9.2):
/// the one `nanoclaw image build` installs, and the one `doctor` expects on a bwrap host.
pub const CLAUDE_CODE_VERSION: &str = "2.1.197";
/// Where every sandbox finds Claude Code (the image's copy, or the host's bound there).
pub const CLAUDE_CODE_IN_SANDBOX: &str = "/opt/claude-code/claude";

pub mod ipc;
pub mod schedule;
pub mod sse;

use serde::{Deserialize, Serialize};

/// The object the host writes to the agent's stdin when a run starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInput {
    /// The formatted conversation (or a scheduled task's prompt).
    pub prompt: String,
    /// Resume this session; `None` starts a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub group_folder: String,
    pub chat_jid: String,
    pub is_main: bool,
    #[serde(default)]
    pub is_scheduled_task: bool,
    pub assistant_name: String,
}

/// One line of the agent's stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Text meant for the chat. The host strips `<internal>…</internal>` and sends the rest.
    ///
    /// `inputs` is how many follow-up messages ([`FollowUp`]) the agent had read when it
    /// produced this (0: only the first prompt). The host marks as answered only what the
    /// agent had actually read, so a follow-up that arrives just before a crash is retried.
    Result {
        text: String,
        #[serde(default)]
        inputs: u32,
    },
    /// The session the agent is now using; the host stores it for the group.
    Session { session_id: String },
    /// The agent is about to run this tool: shown to the user as what it is doing
    /// (until the next result or idle). Untrusted text: the host cleans it.
    Tool { name: String },
    /// The agent has handled everything it read (`inputs` follow-ups, as for `Result`)
    /// and waits for more.
    Idle {
        #[serde(default)]
        inputs: u32,
    },
    /// The run failed; `message` is safe to show to the user (no secrets). `permanent`
    /// failures (rejected credentials, an invalid request) are not worth retrying.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        permanent: bool,
    },
}

impl AgentEvent {
    /// Encodes the event as one stdout line (without the trailing newline).
    pub fn to_line(&self) -> String {
        // Serializing these plain enums cannot fail: every field is a string.
        serde_json::to_string(self)
            .unwrap_or_else(|_| String::from("{\"type\":\"idle\",\"inputs\":0}"))
    }
}

/// A follow-up message for a live run: `/workspace/ipc/input/{ts}-{rand}.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FollowUp {
    Message { text: String },
}

/// The file name in `/workspace/ipc/input/` that asks the agent to end its run.
pub const CLOSE_SENTINEL: &str = "_close";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_use_the_documented_shapes() {
        let cases = [
            (
                AgentEvent::Result {
                    text: "hi".into(),
                    inputs: 2,
                },
                r#"{"type":"result","text":"hi","inputs":2}"#,
            ),
            (
                AgentEvent::Session {
                    session_id: "s1".into(),
                },
                r#"{"type":"session","session_id":"s1"}"#,
            ),
            (
                AgentEvent::Tool {
                    name: "Bash".into(),
                },
                r#"{"type":"tool","name":"Bash"}"#,
            ),
            (
                AgentEvent::Idle { inputs: 0 },
                r#"{"type":"idle","inputs":0}"#,
            ),
            (
                AgentEvent::Error {
                    message: "boom".into(),
                    permanent: false,
                },
                r#"{"type":"error","message":"boom"}"#,
            ),
            (
                AgentEvent::Error {
                    message: "bad key".into(),
                    permanent: true,
                },
                r#"{"type":"error","message":"bad key","permanent":true}"#,
            ),
        ];
        for (event, line) in cases {
            assert_eq!(event.to_line(), line);
            let parsed: AgentEvent = serde_json::from_str(line).expect("valid line");
            assert_eq!(parsed, event);
        }
    }

    #[test]
    fn inputs_default_to_the_first_prompt_only() {
        let idle: AgentEvent = serde_json::from_str(r#"{"type":"idle"}"#).expect("parses");
        assert_eq!(idle, AgentEvent::Idle { inputs: 0 });
        let result: AgentEvent =
            serde_json::from_str(r#"{"type":"result","text":"x"}"#).expect("parses");
        assert_eq!(
            result,
            AgentEvent::Result {
                text: "x".into(),
                inputs: 0
            }
        );
    }

    #[test]
    fn follow_up_matches_nanoclaw_input_files() {
        let f = FollowUp::Message {
            text: "more".into(),
        };
        assert_eq!(
            serde_json::to_string(&f).expect("serializes"),
            r#"{"type":"message","text":"more"}"#
        );
    }

    #[test]
    fn input_round_trips_and_session_is_optional() {
        let raw = r#"{"prompt":"p","group_folder":"main","chat_jid":"web:main","is_main":true,"assistant_name":"Andy"}"#;
        let input: AgentInput = serde_json::from_str(raw).expect("parses");
        assert_eq!(input.session_id, None);
        assert!(!input.is_scheduled_task);
        let back = serde_json::to_string(&input).expect("serializes");
        let again: AgentInput = serde_json::from_str(&back).expect("parses");
        assert_eq!(again, input);
    }
}
