//! Test-only support: waiting on conditions with a deadline, a client for the daemon's
//! HTTP API (including its event stream), and (as they are added) fakes of remote
//! services that speak the real wire protocols.

pub mod conformance;
pub mod fake_anthropic;
pub mod fake_discord;
pub mod fake_embeddings;
pub mod fake_openai;
pub mod fake_slack;
pub mod fake_telegram;
pub mod fake_transcribe;
pub mod mail_servers;
pub mod pty;
pub mod webdriver;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nanoclaw_protocol::sse::{SseEvent, SseParser};
use serde_json::{Value, json};

/// How long a test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, failing with `what` after `deadline`.
/// For conditions that have no notification to wait on (another process, a file).
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A reqwest client (rustls on ring; the provider is installed once).
pub fn http_client() -> reqwest::Client {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .build()
        .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"))
}

/// A client for the daemon's HTTP API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Api {
        Api {
            base: base.into(),
            token: token.into(),
            client: http_client(),
        }
    }

    /// Reads the token from `{root}/data/http-token`.
    pub fn for_root(base: impl Into<String>, root: &Path) -> Result<Api> {
        let token = std::fs::read_to_string(root.join("data/http-token"))
            .context("reading the HTTP token")?;
        Ok(Api::new(base, token.trim()))
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GET with the bearer token; returns status and JSON (or `Value::Null`).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// POST a raw body with the bearer token.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(u16, Value)> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Posts a web chat message; returns its id (fails unless the answer is 202).
    pub async fn send(
        &self,
        chat_jid: &str,
        sender: &str,
        sender_name: &str,
        text: &str,
    ) -> Result<String> {
        let body = json!({"chat_jid": chat_jid, "sender": sender, "sender_name": sender_name, "text": text});
        let (status, v) = self.post_raw("/api/messages", body.to_string()).await?;
        if status != 202 {
            bail!("POST /api/messages answered {status}: {v}");
        }
        v["id"]
            .as_str()
            .map(str::to_string)
            .context("no id in the answer")
    }

    /// The stored messages of a chat, oldest first.
    pub async fn messages(&self, chat_jid: &str) -> Result<Vec<Value>> {
        let (status, v) = self.get(&format!("/api/chats/{chat_jid}/messages")).await?;
        if status != 200 {
            bail!("GET messages answered {status}: {v}");
        }
        v.as_array().cloned().context("messages is not an array")
    }

    /// The texts of the assistant's messages in a chat.
    pub async fn bot_texts(&self, chat_jid: &str) -> Result<Vec<String>> {
        Ok(self
            .messages(chat_jid)
            .await?
            .iter()
            .filter(|m| m["is_bot_message"].as_bool() == Some(true))
            .filter_map(|m| m["content"].as_str().map(str::to_string))
            .collect())
    }

    /// Opens `GET /api/events` (optionally from `last_event_id`).
    pub async fn events(&self, query: &str, last_event_id: Option<&str>) -> Result<EventStream> {
        let mut request = self
            .client
            .get(format!("{}/api/events{query}", self.base))
            .bearer_auth(&self.token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await?;
        if response.status().as_u16() != 200 {
            bail!("GET /api/events answered {}", response.status());
        }
        Ok(EventStream {
            response,
            parser: SseParser::new(),
            ready: Default::default(),
        })
    }
}

/// A live SSE stream.
pub struct EventStream {
    response: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
}

impl EventStream {
    /// The next event, or an error if none arrives within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<SseEvent> {
        let fut = async {
            loop {
                if let Some(e) = self.ready.pop_front() {
                    return Ok(e);
                }
                match self.response.chunk().await? {
                    Some(bytes) => self.ready.extend(self.parser.push(&bytes)),
                    None => bail!("the event stream ended"),
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .context("no event arrived in time")?
    }
}

/// A TCP port that was free a moment ago (for processes that need a fixed port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

/// Serves `app` on a free loopback port; returns its base URL (`http://127.0.0.1:PORT`)
/// and the server task. `what` names the server in a failure.
pub async fn serve_on_loopback(
    app: axum::Router,
    what: &str,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{what} cannot listen: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{what} has no address: {e}"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), server)
}
