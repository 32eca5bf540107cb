//! `nanoclaw chat`: a terminal chat with the running daemon. Each line typed is posted
//! to `/api/messages`; replies arrive over `/api/events` and are printed as they come.
//! The event stream reconnects (with `Last-Event-ID`) if the daemon restarts.
//!
//! When stdin ends (e.g. `echo hi | nanoclaw chat`), it waits for a reply to the last
//! message (up to [`REPLY_WAIT`]) before exiting.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nanoclaw_protocol::sse::SseParser;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use super::{DaemonEndpoint, daemon_endpoint, runtime};
use crate::channels::web;
use crate::config::Config;

const REPLY_WAIT: Duration = Duration::from_secs(300);
const HISTORY: usize = 10;

pub fn chat(config: &Config, jid: String, name: Option<String>) -> Result<ExitCode> {
    web::check_jid(&jid).map_err(|e| anyhow::anyhow!("--jid: {e}"))?;
    let endpoint = daemon_endpoint(config)?;
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "you".into());
    let sender_name = name.unwrap_or_else(|| user.clone());
    let assistant = config.assistant_name.clone();
    runtime()?.block_on(async move {
        // The daemon is on loopback; a proxy would see the bearer token.
        let client = crate::tls::client()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot create an HTTP client")?;
        check_daemon(&client, &endpoint).await?;
        print_history(&client, &endpoint, &jid, &assistant).await?;

        let (replies_tx, mut replies_rx) = watch::channel(0u64);
        let events = tokio::spawn(follow_events(
            client.clone(),
            endpoint.base_url.clone(),
            endpoint.token.clone(),
            jid.clone(),
            assistant.clone(),
            replies_tx,
        ));

        eprintln!("Chatting in {jid} as {sender_name}. Type a message and press Enter; /quit or Ctrl-D to leave.");
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut replies_at_last_post: Option<u64> = None;
        while let Some(line) = lines.next_line().await.context("cannot read from stdin")? {
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            if text == "/quit" || text == "/exit" {
                replies_at_last_post = None;
                break;
            }
            let body = json!({ "chat_jid": jid, "sender": format!("cli:{user}"), "sender_name": sender_name, "text": text });
            match post(&client, &endpoint, &body).await {
                Ok(()) => replies_at_last_post = Some(*replies_rx.borrow()),
                Err(e) => eprintln!("! not sent: {e:#}"),
            }
        }
        if let Some(before) = replies_at_last_post {
            let waited = tokio::time::timeout(REPLY_WAIT, replies_rx.wait_for(|n| *n > before)).await;
            if waited.is_err() {
                eprintln!("! no reply within {}s; it will still appear in the chat later", REPLY_WAIT.as_secs());
            }
        }
        events.abort();
        Ok(ExitCode::SUCCESS)
    })
}

async fn check_daemon(client: &reqwest::Client, endpoint: &DaemonEndpoint) -> Result<()> {
    let health = client
        .get(format!("{}/healthz", endpoint.base_url))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    if health.is_err() {
        bail!(
            "the assistant is not answering at {}; start it with `nanoclaw run` (same --root) first",
            endpoint.base_url
        );
    }
    Ok(())
}

fn chat_url(base: &str, jid: &str) -> Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base).context("bad daemon address")?;
    url.path_segments_mut()
        .map_err(|_| anyhow::anyhow!("bad daemon address"))?
        .extend(["api", "chats", jid, "messages"]);
    Ok(url)
}

async fn print_history(
    client: &reqwest::Client,
    endpoint: &DaemonEndpoint,
    jid: &str,
    assistant: &str,
) -> Result<()> {
    let mut url = chat_url(&endpoint.base_url, jid)?;
    url.query_pairs_mut()
        .append_pair("limit", &HISTORY.to_string());
    let response = client.get(url).bearer_auth(&endpoint.token).send().await?;
    if !response.status().is_success() {
        bail!(
            "the assistant refused to show the chat: {}",
            error_text(response).await
        );
    }
    let messages: Vec<Value> = response.json().await.context("unexpected history format")?;
    for m in messages {
        let who = if m["is_bot_message"].as_bool() == Some(true) {
            assistant.to_string()
        } else {
            m["sender_name"].as_str().unwrap_or("?").to_string()
        };
        println!("{who}: {}", m["content"].as_str().unwrap_or(""));
    }
    Ok(())
}

async fn post(client: &reqwest::Client, endpoint: &DaemonEndpoint, body: &Value) -> Result<()> {
    let response = client
        .post(format!("{}/api/messages", endpoint.base_url))
        .bearer_auth(&endpoint.token)
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .context("the assistant did not answer")?;
    if response.status().is_success() {
        Ok(())
    } else {
        bail!("{}", error_text(response).await)
    }
}

async fn error_text(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match body["error"].as_str() {
        Some(e) => format!("{e} ({status})"),
        None => status.to_string(),
    }
}

/// Prints replies for `jid` as they arrive, reconnecting with backoff; counts replies.
async fn follow_events(
    client: reqwest::Client,
    base_url: String,
    token: String,
    jid: String,
    assistant: String,
    replies: watch::Sender<u64>,
) {
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(500);
    loop {
        let Ok(mut url) = reqwest::Url::parse(&format!("{base_url}/api/events")) else {
            return;
        };
        url.query_pairs_mut().append_pair("chat_jid", &jid);
        let mut request = client.get(url).bearer_auth(&token);
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        match request.send().await {
            Ok(mut response) if response.status().is_success() => {
                backoff = Duration::from_millis(500);
                let mut parser = SseParser::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    for event in parser.push(&chunk) {
                        if event.id.is_some() {
                            last_id = event.id.clone();
                        }
                        let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                            continue;
                        };
                        if let Some(text) = v["text"].as_str() {
                            println!("{assistant}: {text}");
                            let _ = std::io::stdout().flush();
                            replies.send_modify(|n| *n += 1);
                        }
                    }
                }
                eprintln!("! lost the connection to the assistant; reconnecting…");
            }
            Ok(response) => {
                eprintln!("! event stream refused: {}", error_text(response).await);
            }
            Err(_) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
