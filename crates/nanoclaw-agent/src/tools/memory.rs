//! `memory_search {query, limit?}`: the group's past, searched (see [`crate::memory`]).
//! When the host offers embeddings (`NANOCLAW_EMBEDDINGS=on`: `EMBEDDINGS_URL` is set),
//! the ranking is hybrid, by words and by meaning; the texts go to the credential proxy
//! on the run's socket, which adds the service's key, so no key is in the sandbox.

use serde_json::{Value, json};

use super::{ToolContext, ToolOutput, optional_u64, string};
use crate::memory::{self, Sources};

/// Texts per embeddings request (the proxy takes 128).
const BATCH: usize = 64;

pub fn definition() -> Value {
    json!({"name": "memory_search", "description": "Search this group's past: earlier conversations (also those archived long ago), the messages you were given, and the memory files. Full text, best matches first, each with its date and where it is. Use it before saying you do not know something the user told you before.",
           "input_schema": {"type": "object", "properties": {
               "query": {"type": "string", "description": "Words to look for"},
               "limit": {"type": "integer", "description": "Most results (default 5, at most 20)"}},
               "required": ["query"]}})
}

fn sources(ctx: &ToolContext) -> Sources {
    Sources {
        group: ctx.workdir.clone(),
        global: ctx
            .workdir
            .parent()
            .map(|w| w.join("global"))
            .unwrap_or_else(|| "/workspace/global".into()),
        sessions: ctx.home.join(".claude/nanoclaw/sessions"),
        index: ctx.home.join(".claude/nanoclaw/memory.db"),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ToolOutput> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ToolOutput::error(format!("the search stopped: {e}")))?
        .map_err(ToolOutput::error)
}

pub async fn search(input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let query = string(input, "query")?.to_string();
    let limit = optional_u64(input, "limit")?.unwrap_or(5) as usize;
    let sources = sources(ctx);
    if std::env::var("NANOCLAW_EMBEDDINGS").as_deref() == Ok("on") {
        match hybrid(&sources, &query, limit).await {
            Ok(hits) => return Ok(ToolOutput::ok(memory::describe(&query, &hits))),
            Err(why) => {
                // Words alone still find what was said in those words.
                let (s, q) = (sources.clone(), query.clone());
                let hits = blocking(move || memory::search(&s, &q, limit)).await?;
                return Ok(ToolOutput::ok(format!(
                    "{}\n(Ranked by words only: {why}.)",
                    memory::describe(&query, &hits)
                )));
            }
        }
    }
    let asked = query.clone();
    let hits = blocking(move || memory::search(&sources, &asked, limit)).await?;
    Ok(ToolOutput::ok(memory::describe(&query, &hits)))
}

/// Embeds what is new (at most [`memory::EMBED_PER_SEARCH`] chunks) and the query, then
/// ranks by both.
async fn hybrid(sources: &Sources, query: &str, limit: usize) -> Result<Vec<memory::Hit>, String> {
    let s = sources.clone();
    let pending =
        tokio::task::spawn_blocking(move || memory::unembedded(&s, memory::EMBED_PER_SEARCH))
            .await
            .map_err(|e| format!("the index stopped: {e}"))??;
    let client = Embedder::new()?;
    let mut vectors = Vec::new();
    for batch in pending.chunks(BATCH) {
        let texts: Vec<String> = batch.iter().map(|(_, t)| t.clone()).collect();
        let got = client.embed(&texts).await?;
        vectors.extend(batch.iter().map(|(id, _)| *id).zip(got));
    }
    let query_vector = client
        .embed(&[query.chars().take(2000).collect()])
        .await?
        .pop()
        .ok_or("no vector for the query")?;
    let (s, q) = (sources.clone(), query.to_string());
    tokio::task::spawn_blocking(move || {
        memory::store_vectors(&s, &vectors)?;
        memory::hybrid(&s, &q, &query_vector, limit)
    })
    .await
    .map_err(|e| format!("the search stopped: {e}"))?
}

/// The proxy's `/nanoclaw/embeddings`, reached like the model API.
struct Embedder {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Embedder {
    fn new() -> Result<Embedder, String> {
        let base = std::env::var("ANTHROPIC_BASE_URL").map_err(|_| "no proxy is configured")?;
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(90));
        if let Ok(socket) = std::env::var("NANOCLAW_PROXY_SOCKET")
            && std::path::Path::new(&socket).exists()
        {
            builder = builder.unix_socket(std::path::PathBuf::from(socket));
        }
        Ok(Embedder {
            client: builder
                .build()
                .map_err(|e| format!("cannot build a client: {e}"))?,
            url: format!("{}/nanoclaw/embeddings", base.trim_end_matches('/')),
            token: std::env::var("ANTHROPIC_API_KEY").unwrap_or_default(),
        })
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let response = self
            .client
            .post(&self.url)
            .header("x-api-key", &self.token)
            .json(&json!({"input": texts}))
            .send()
            .await
            .map_err(|e| format!("embeddings cannot be reached ({})", e.without_url()))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|_| format!("embeddings answered HTTP {status} unreadably"))?;
        if !status.is_success() {
            return Err(body["error"]["message"]
                .as_str()
                .map(|m| m.chars().take(300).collect())
                .unwrap_or_else(|| format!("embeddings answered HTTP {status}")));
        }
        let vectors: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"].clone())
            .map_err(|_| "embeddings gave no vectors".to_string())?;
        if vectors.len() != texts.len() {
            return Err("embeddings gave fewer vectors than texts".into());
        }
        Ok(vectors)
    }
}
