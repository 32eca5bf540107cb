//! The conversation engine: one user turn = model calls and tool runs until the model
//! answers without asking for tools; the answer is reported as a `result` event.

use std::path::PathBuf;

use nanoclaw_protocol::AgentEvent;
use serde_json::{Value, json};

use crate::llm::{ChatRequest, Llm, LlmError};
use crate::session::Session;
use crate::tools::{self, ToolContext};

/// Model calls per user turn before the agent gives up on the task.
const MAX_STEPS: usize = 60;
/// The same tool calls (names and inputs) this many times in a row is a loop (small
/// local models fall into them): the model is told so, once; if it makes the same
/// calls once more, the turn ends with a message to the chat.
const LOOP_REPEATS: usize = 3;

/// Consecutive identical tool calls within one turn.
#[derive(Default)]
struct LoopWatch {
    last: String,
    repeats: usize,
    nudged: bool,
}

/// What to do about the calls the model just asked for.
#[derive(Debug, PartialEq, Eq)]
enum LoopVerdict {
    Go,
    /// Run them, and tell the model it is repeating itself.
    Nudge,
    /// Do not run them: it ignored the nudge.
    Stop,
}

impl LoopWatch {
    fn see(&mut self, uses: &[(String, String, Value)]) -> LoopVerdict {
        // serde_json's maps are ordered, so equal inputs serialize equally.
        let key = uses
            .iter()
            .map(|(_, name, input)| format!("{name}:{input}"))
            .collect::<Vec<_>>()
            .join("\n");
        if key == self.last {
            self.repeats += 1;
        } else {
            self.last = key;
            self.repeats = 1;
        }
        match (self.repeats >= LOOP_REPEATS, self.nudged) {
            (false, _) => LoopVerdict::Go,
            (true, false) => {
                self.nudged = true;
                LoopVerdict::Nudge
            }
            (true, true) => LoopVerdict::Stop,
        }
    }
}

pub struct Agent {
    pub llm: Box<dyn Llm>,
    pub tools: Vec<Value>,
    /// The group's MCP servers, whose tools are among `tools`.
    pub mcp: crate::mcp::client::McpTools,
    pub ctx: ToolContext,
    pub system: String,
    pub session: Session,
    pub max_tokens: u32,
    /// Compact when the transcript is estimated above this many tokens.
    pub compact_at: usize,
    pub assistant_name: String,
    /// Where full transcripts are archived before compaction.
    pub conversations_dir: PathBuf,
    /// Follow-ups read so far (reported with every event).
    pub inputs_read: u32,
    pub emit: Box<dyn FnMut(AgentEvent) + Send>,
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

impl Agent {
    /// Handles one user message (the first prompt or a follow-up).
    pub async fn turn(&mut self, user_text: &str) -> Result<(), LlmError> {
        self.compact_if_needed().await?;
        // Only the newest user turn carries its images: earlier ones stay in the inbox
        // for the tools, not in every later request (a group that sends many photos
        // would otherwise outgrow the API's request size for good).
        for message in self.session.messages.iter_mut() {
            for block in message["content"].as_array_mut().into_iter().flatten() {
                if block["type"] == "image" {
                    *block = text_block(
                        "(An image was shown here; its file is still in /workspace/group/inbox/ for the tools.)",
                    );
                }
            }
        }
        let mut content = vec![text_block(user_text)];
        content.extend(crate::images::blocks_for(user_text, &self.ctx.workdir));
        self.session.push("user", content);
        let mut watch = LoopWatch::default();
        for _ in 0..MAX_STEPS {
            let response = self
                .llm
                .complete(&ChatRequest {
                    system: &self.system,
                    messages: &self.session.messages,
                    tools: &self.tools,
                    max_tokens: self.max_tokens,
                })
                .await?;
            let u = &response.usage;
            eprintln!(
                "model call: {} input, {} output, {} cache read, {} cache write tokens",
                u.input_tokens,
                u.output_tokens,
                u.cache_read_input_tokens,
                u.cache_creation_input_tokens
            );
            if response.content.is_empty() {
                self.session
                    .push("assistant", vec![text_block("(no answer)")]);
            } else {
                self.session.push("assistant", response.content.clone());
            }
            let uses = response.tool_uses();
            if response.stop_reason == "pause_turn" {
                self.save();
                continue;
            }
            if uses.is_empty() {
                self.save();
                let text = response.text();
                if !text.trim().is_empty() {
                    (self.emit)(AgentEvent::Result {
                        text,
                        inputs: self.inputs_read,
                    });
                }
                return Ok(());
            }
            let verdict = watch.see(&uses);
            let names: Vec<String> = uses.iter().map(|(_, name, _)| name.clone()).collect();
            if verdict == LoopVerdict::Stop {
                eprintln!("the model repeated the same tool calls after a nudge; ending the turn");
                // The unanswered tool use must not stay last in the transcript.
                let results = uses
                    .iter()
                    .map(|(id, _, _)| {
                        json!({"type": "tool_result", "tool_use_id": id, "is_error": true,
                               "content": "not run: the same call again"})
                    })
                    .collect();
                self.session.push("user", results);
                self.save();
                (self.emit)(AgentEvent::Result {
                    text: format!(
                        "I stopped because I kept repeating the same step ({}) without getting anywhere. Tell me what to try differently.",
                        names.join(", ")
                    ),
                    inputs: self.inputs_read,
                });
                return Ok(());
            }
            let mut results = Vec::with_capacity(uses.len() + 1);
            for (id, name, input) in uses {
                (self.emit)(AgentEvent::Tool { name: name.clone() });
                let mut output = if self.mcp.owns(&name) {
                    self.mcp.call(&name, &input).await
                } else {
                    tools::run(&name, &input, &self.ctx).await
                };
                // Whatever a tool (or an MCP server) says, the transcript gets at most this.
                output.content = tools::truncate_middle(&output.content, tools::MAX_OUTPUT_CHARS);
                results.push(json!({
                    "type": "tool_result", "tool_use_id": id, "content": output.content, "is_error": output.is_error
                }));
            }
            if verdict == LoopVerdict::Nudge {
                results.push(text_block(&format!(
                    "Note: you have now made exactly the same call ({}) with the same input {LOOP_REPEATS} times in a row. Repeating it will not give a different result: change your approach, or answer with what you have.",
                    names.join(", ")
                )));
            }
            self.session.push("user", results);
            self.save();
        }
        self.save();
        (self.emit)(AgentEvent::Result {
            text: format!(
                "I stopped after {MAX_STEPS} steps without finishing; please tell me how to continue."
            ),
            inputs: self.inputs_read,
        });
        Ok(())
    }

    fn save(&self) {
        if let Err(e) = self.session.save() {
            eprintln!("cannot save the session: {e}");
        }
    }

    /// Summarises the conversation when it grows too long, after archiving it whole as
    /// Markdown in the group's `conversations/` folder.
    async fn compact_if_needed(&mut self) -> Result<(), LlmError> {
        if self.session.messages.len() < 2 || self.session.estimated_tokens() < self.compact_at {
            return Ok(());
        }
        let transcript = self.session.to_markdown(&self.assistant_name);
        let instruction = format!(
            "Summarise the conversation below so that you can continue it without the full text: who is \
involved, what was asked and decided, facts and preferences learned, open tasks and their state, and \
anything you promised. Be concise but complete.\n\n{transcript}"
        );
        let messages = [json!({"role": "user", "content": [text_block(&instruction)]})];
        let summary = self
            .llm
            .complete(&ChatRequest {
                system: "You write faithful, compact summaries of conversations.",
                messages: &messages,
                tools: &[],
                max_tokens: self.max_tokens,
            })
            .await?
            .text();
        let stamp = jiff::Timestamp::now()
            .strftime("%Y-%m-%d-%H%M%S")
            .to_string();
        let archive = self
            .conversations_dir
            .join(format!("{stamp}-{}.md", self.session.id));
        let written = std::fs::create_dir_all(&self.conversations_dir)
            .and_then(|()| std::fs::write(&archive, transcript));
        if let Err(e) = written {
            // Without the archive, compacting would lose the full text: keep it as is.
            eprintln!("cannot archive the conversation ({e}); not compacting");
            return Ok(());
        }
        eprintln!(
            "compacted the session; full transcript in {}",
            archive.display()
        );
        self.session.compact_to(&summary);
        self.save();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, input: Value) -> Vec<(String, String, Value)> {
        vec![("id".into(), name.into(), input)]
    }

    #[test]
    fn the_same_call_three_times_is_nudged_once_then_stopped() {
        let mut w = LoopWatch::default();
        let ls = || call("Bash", json!({"command": "ls", "timeout": 5}));
        assert_eq!(w.see(&ls()), LoopVerdict::Go);
        assert_eq!(w.see(&ls()), LoopVerdict::Go);
        assert_eq!(w.see(&ls()), LoopVerdict::Nudge);
        // Key order does not make a call different.
        let reordered = call("Bash", json!({"timeout": 5, "command": "ls"}));
        assert_eq!(w.see(&reordered), LoopVerdict::Stop);
    }

    #[test]
    fn different_inputs_or_a_change_of_course_are_no_loop() {
        let mut w = LoopWatch::default();
        for i in 0..10 {
            assert_eq!(
                w.see(&call("Read", json!({"path": format!("f{i}")}))),
                LoopVerdict::Go
            );
        }
        let a = || call("Bash", json!({"command": "a"}));
        let b = || call("Bash", json!({"command": "b"}));
        for _ in 0..5 {
            assert_eq!(w.see(&a()), LoopVerdict::Go);
            assert_eq!(w.see(&a()), LoopVerdict::Go);
            assert_eq!(w.see(&b()), LoopVerdict::Go);
        }
    }
}
