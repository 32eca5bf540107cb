//! `memory_search {query, limit?}`: the group's past, searched (see [`crate::memory`]).

use serde_json::{Value, json};

use super::{ToolContext, ToolOutput, optional_u64, string};
use crate::memory::{self, Sources};

pub fn definition() -> Value {
    json!({"name": "memory_search", "description": "Search this group's past: earlier conversations (also those archived long ago), the messages you were given, and the memory files. Full text, best matches first, each with its date and where it is. Use it before saying you do not know something the user told you before.",
           "input_schema": {"type": "object", "properties": {
               "query": {"type": "string", "description": "Words to look for"},
               "limit": {"type": "integer", "description": "Most results (default 5, at most 20)"}},
               "required": ["query"]}})
}

pub async fn search(input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let query = string(input, "query")?.to_string();
    let limit = optional_u64(input, "limit")?.unwrap_or(5) as usize;
    let sources = Sources {
        group: ctx.workdir.clone(),
        global: ctx
            .workdir
            .parent()
            .map(|w| w.join("global"))
            .unwrap_or_else(|| "/workspace/global".into()),
        sessions: ctx.home.join(".claude/nanoclaw/sessions"),
        index: ctx.home.join(".claude/nanoclaw/memory.db"),
    };
    let asked = query.clone();
    let found = tokio::task::spawn_blocking(move || memory::search(&sources, &asked, limit))
        .await
        .map_err(|e| ToolOutput::error(format!("the search stopped: {e}")))?;
    match found {
        Ok(hits) => Ok(ToolOutput::ok(memory::describe(&query, &hits))),
        Err(e) => Err(ToolOutput::error(e)),
    }
}
