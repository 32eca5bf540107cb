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

pub struct Agent {
    pub llm: Box<dyn Llm>,
    pub tools: Vec<Value>,
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
        self.session.push("user", vec![text_block(user_text)]);
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
            let mut results = Vec::with_capacity(uses.len());
            for (id, name, input) in uses {
                let output = tools::run(&name, &input, &self.ctx).await;
                results.push(json!({
                    "type": "tool_result", "tool_use_id": id, "content": output.content, "is_error": output.is_error
                }));
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
