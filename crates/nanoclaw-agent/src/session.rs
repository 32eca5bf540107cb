//! Conversation transcripts, kept per session in `~/.claude/nanoclaw/sessions/{id}.json`
//! (the group's `data/sessions/{folder}/.claude/` on the host), and compaction.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What an image block is counted as in [`Session::estimated_tokens`].
const IMAGE_TOKENS: usize = 1_600;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub created_at: String,
    /// Anthropic-format messages.
    pub messages: Vec<Value>,
    /// How many times this session was compacted.
    #[serde(default)]
    pub compactions: u32,
    #[serde(skip)]
    dir: PathBuf,
}

impl Session {
    fn path(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    pub fn new(dir: &Path) -> Session {
        Session {
            id: format!(
                "s{}{}",
                jiff::Timestamp::now().as_millisecond(),
                crate::tools::ipc::random_suffix()
            ),
            created_at: jiff::Timestamp::now().to_string(),
            messages: Vec::new(),
            compactions: 0,
            dir: dir.to_path_buf(),
        }
    }

    /// Resumes `id` if its transcript exists and is readable; otherwise starts a new
    /// session (and says why on stderr, which the host keeps in the run log).
    pub fn resume_or_new(dir: &Path, id: Option<&str>) -> Session {
        let Some(id) = id else {
            return Session::new(dir);
        };
        let safe = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !safe {
            eprintln!("session id {id:?} is not a valid id; starting a new session");
            return Session::new(dir);
        }
        match std::fs::read(Session::path(dir, id)).map(|b| serde_json::from_slice::<Session>(&b)) {
            Ok(Ok(mut s)) => {
                s.dir = dir.to_path_buf();
                s
            }
            Ok(Err(e)) => {
                eprintln!("session {id} is unreadable ({e}); starting a new session");
                Session::new(dir)
            }
            Err(e) => {
                eprintln!("session {id} not found ({e}); starting a new session");
                Session::new(dir)
            }
        }
    }

    pub fn push(&mut self, role: &str, content: Vec<Value>) {
        self.messages
            .push(json!({"role": role, "content": content}));
    }

    /// Writes the transcript (temp file, then rename).
    pub fn save(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = Session::path(&self.dir, &self.id);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }

    /// A rough token count (4 characters per token), enough to decide when to compact.
    pub fn estimated_tokens(&self) -> usize {
        // About four characters a token; an image costs what the API charges for one
        // at its largest (about 1600 tokens), not the length of its base64.
        let size = |block: &Value| match block["type"].as_str() {
            Some("image") => IMAGE_TOKENS * 4,
            _ => block.to_string().len(),
        };
        self.messages
            .iter()
            .map(|m| match m["content"].as_array() {
                Some(blocks) => blocks.iter().map(size).sum::<usize>() + 16,
                None => m.to_string().len(),
            })
            .sum::<usize>()
            / 4
    }

    /// The transcript as Markdown, for the archive in `conversations/`.
    pub fn to_markdown(&self, assistant: &str) -> String {
        let mut out = format!("# Conversation {} (started {})\n", self.id, self.created_at);
        for m in &self.messages {
            let who = if m["role"] == "assistant" {
                assistant
            } else {
                "User"
            };
            for block in m["content"].as_array().into_iter().flatten() {
                match block["type"].as_str().unwrap_or_default() {
                    "text" => out.push_str(&format!(
                        "\n## {who}\n\n{}\n",
                        block["text"].as_str().unwrap_or("")
                    )),
                    "tool_use" => out.push_str(&format!(
                        "\n### {who} used {}\n\n```json\n{}\n```\n",
                        block["name"].as_str().unwrap_or("a tool"),
                        block["input"]
                    )),
                    "tool_result" => {
                        let content = match &block["content"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        out.push_str(&format!("\n### Tool result\n\n```\n{content}\n```\n"));
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Replaces the history with a summary of it.
    pub fn compact_to(&mut self, summary: &str) {
        self.messages.clear();
        self.push(
            "user",
            vec![json!({"type": "text", "text": format!(
                "[The earlier conversation was compacted. Summary of it:]\n\n{summary}"
            )})],
        );
        self.push(
            "assistant",
            vec![json!({"type": "text", "text": "Understood; I will continue from that summary."})],
        );
        self.compactions += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_resumes_and_falls_back_to_a_new_session() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Session::new(dir.path());
        s.push("user", vec![json!({"type": "text", "text": "hi"})]);
        s.save().expect("save");
        let again = Session::resume_or_new(dir.path(), Some(&s.id));
        assert_eq!(again.id, s.id);
        assert_eq!(again.messages.len(), 1);
        for bad in ["missing", "../../etc/passwd", ""] {
            let fresh = Session::resume_or_new(dir.path(), Some(bad));
            assert_ne!(fresh.id, bad);
            assert!(fresh.messages.is_empty());
        }
    }

    #[test]
    fn compaction_keeps_a_summary_and_alternating_roles() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Session::new(dir.path());
        for i in 0..10 {
            s.push(
                "user",
                vec![json!({"type": "text", "text": format!("question {i}")})],
            );
            s.push(
                "assistant",
                vec![json!({"type": "text", "text": "x".repeat(1000)})],
            );
        }
        let before = s.estimated_tokens();
        let md = s.to_markdown("Andy");
        assert!(md.contains("## User\n\nquestion 3") && md.contains("## Andy"));
        s.compact_to("they asked ten questions");
        assert!(s.estimated_tokens() < before / 10);
        assert_eq!(s.messages[0]["role"], "user");
        assert_eq!(s.messages[1]["role"], "assistant");
        assert_eq!(s.compactions, 1);
    }
}
